/**
 * The content phase for one milter (milter-protocol.md §5.7): headers, EOH, body chunks and
 * end of message, stopping at the first verdict that ends the message.
 */
import type { EomLimits } from './limits'
import type { MacroLookup } from './macros'
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
  // pieces the body yields: fewer round trips per message. A packet is made of views of those
  // pieces (cut with subarray, never copied here), written after its head in one writev.
  const max = session.bodyChunkSize
  let pending: Buffer[] = []
  let size = 0
  /** Sends the first `n` pending bytes as one packet. */
  const sendPacket = (n: number): Promise<Verdict> => {
    const parts: Buffer[] = []
    let need = n
    let i = 0
    while (need > 0) {
      const p = pending[i] as Buffer
      if (p.length <= need) {
        parts.push(p)
        need -= p.length
        i++
      } else {
        parts.push(p.subarray(0, need))
        pending[i] = p.subarray(need)
        need = 0
      }
    }
    pending = i === 0 ? pending : pending.slice(i)
    size -= n
    return session.bodyParts(parts)
  }
  for await (const chunk of content.body) {
    if (!session.wantsBody) break
    if (chunk.length === 0) continue
    pending.push(chunk)
    size += chunk.length
    while (size >= max) {
      const v = await sendPacket(max)
      if (v.kind !== 'continue') return { verdict: v, ...none }
      if (!session.wantsBody) break
    }
  }
  if (size > 0 && session.wantsBody) {
    const v = await sendPacket(size)
    if (v.kind !== 'continue') return { verdict: v, ...none }
  }
  return session.endOfMessage(content.eomMacros, content.onReplaceBody, content.eomLimits)
}
