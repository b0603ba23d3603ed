/**
 * Chain outcomes -> Haraka hook results: the return constant and the exact
 * SMTP reply (code, enhanced status code, every line).
 */
import type { Outcome } from '../chain'
import type { SmtpReply } from '../protocol/replycode'

/**
 * Haraka sends `code` and `reply` verbatim for an object whose constructor
 * is named DSN (connection.js respond()); this keeps a milter's multi-line
 * reply and per-line enhanced codes exactly. (haraka-dsn's DSN cannot: it
 * puts one enhanced code on every line and rewrites the text.)
 */
export class DSN {
  constructor(
    readonly code: number,
    readonly reply: string[],
  ) {}

  /**
   * The reply as the client sees it, lines joined with " / ", for the log
   * lines where Haraka formats the hook's message as a string (e.g. its
   * `sender ... msg=` and `recipient ... msg=` notices).
   */
  toString(): string {
    const last = this.reply.length - 1
    return this.reply
      .map((line, i) => `${this.code}${i < last ? '-' : ' '}${line}`.trimEnd())
      .join(' / ')
  }
}

/** What a hook returns. */
export type HookResult =
  | { kind: 'cont' }
  | { kind: 'deny' | 'denysoft' | 'denysoftdisconnect' | 'denydisconnect'; msg: DSN }

/** `milter`: the milter's code as sent; `enhanced_only`: 550/451 with the milter's enhanced code and text (Sun). */
export type ReplyCodeMode = 'milter' | 'enhanced_only'

/** The reply lines as Haraka will send them after the code. */
export function toDsn(reply: SmtpReply, mode: ReplyCodeMode): DSN {
  let code = reply.code
  if (mode === 'enhanced_only' && code !== 421) code = code >= 500 ? 550 : 451
  const lines = reply.lines.map((l) =>
    [l.enhanced, l.text].filter((s) => s !== undefined && s !== '').join(' '),
  )
  return new DSN(code, lines.length > 0 ? lines : [''])
}

/** Outcome -> hook result. Discard is handled by the caller (it is a 250). */
export function toHookResult(o: Outcome, mode: ReplyCodeMode): HookResult {
  switch (o.action) {
    case 'continue':
    case 'discard':
      return { kind: 'cont' }
    case 'reject':
      return { kind: 'deny', msg: toDsn(o.reply, mode) }
    case 'tempfail':
      return { kind: 'denysoft', msg: toDsn(o.reply, mode) }
    case 'shutdown':
      return { kind: 'denysoftdisconnect', msg: toDsn(o.reply, mode) }
  }
}
