/**
 * The content phase for one milter (milter-protocol.md §5.7): headers, EOH, body chunks and
 * end of message, stopping at the first verdict that ends the message.
 */
import type { EomLimits } from './limits'
import type { MacroLookup } from './macros'
import { CHUNK_SIZE } from '../protocol/constants'
import type { EomResult, MilterSession, Verdict } from './session'

/** A header as sent to the milter: name and raw value after the colon. */
export interface ContentHeader {
  name: string | Buffer
  value: Buffer
}

/** What the content phase needs. */
export interface Content {
  headers: Iterable<ContentHeader>
  /** The body, unstuffed, CRLF line ends, in any chunking. */
  body: AsyncIterable<Buffer> | Iterable<Buffer>
  eohMacros?: MacroLookup
  eomMacros?: MacroLookup
  onReplaceBody?: (chunk: Buffer) => void | Promise<void>
  /** The bounds on the end-of-message answer (default: the session's configured ones). */
  eomLimits?: EomLimits
}

/** Runs headers..EOB; an early non-continue verdict returns with no modifications. */
export async function sendContent(session: MilterSession, content: Content): Promise<EomResult> {
  const none = { modifications: [], bodyReplaced: false }
  for (const h of content.headers) {
    const v = await session.header(h.name, h.value)
    if (v.kind !== 'continue') return { verdict: v, ...none }
  }
  const eoh = await session.eoh(content.eohMacros)
  if (eoh.kind !== 'continue') return { verdict: eoh, ...none }
  // The body goes in packets of the largest size the protocol allows (65535 bytes), whatever
  // pieces the message stream yields (Haraka's are about 16 KiB): fewer round trips per message.
  let pending: Buffer[] = []
  let size = 0
  /** Sends whole packets' worth of what is pending (all of it at the end), keeping the rest. */
  const sendPending = async (all: boolean): Promise<Verdict> => {
    const bytes = pending.length === 1 ? (pending[0] as Buffer) : Buffer.concat(pending, size)
    const cut = all ? bytes.length : bytes.length - (bytes.length % CHUNK_SIZE)
    const rest = bytes.subarray(cut)
    pending = rest.length > 0 ? [rest] : []
    size = rest.length
    return session.body(bytes.subarray(0, cut))
  }
  for await (const chunk of content.body) {
    if (!session.wantsBody) break
    pending.push(chunk)
    size += chunk.length
    if (size < CHUNK_SIZE) continue
    const v = await sendPending(false)
    if (v.kind !== 'continue') return { verdict: v, ...none }
  }
  if (size > 0 && session.wantsBody) {
    const v = await sendPending(true)
    if (v.kind !== 'continue') return { verdict: v, ...none }
  }
  return session.endOfMessage(content.eomMacros, content.onReplaceBody, content.eomLimits)
}
