/**
 * The content phase for one milter (milter-protocol.md §5.7): headers, EOH, body chunks and
 * end of message, stopping at the first verdict that ends the message.
 */
import type { MacroLookup } from './macros'
import type { EomResult, MilterSession } from './session'

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
  for await (const chunk of content.body) {
    if (!session.wantsBody) break
    const v = await session.body(chunk)
    if (v.kind !== 'continue') return { verdict: v, ...none }
  }
  return session.endOfMessage(content.eomMacros, content.onReplaceBody)
}
