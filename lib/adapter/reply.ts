/**
 * Outcomes -> Haraka hook results: the return constant and the exact SMTP
 * reply (code, enhanced status code, every line). Which code is legal at
 * which stage, and reply_code = enhanced_only, are decided before this, in
 * lib/policy/smtp-replies.ts (answerAt).
 */
import type { Outcome } from '../policy/smtp-replies'
import type { Next } from './haraka'
import { replyTexts, smtpLines, type SmtpReply } from '../protocol/replycode'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const constants = require('haraka-constants') as Record<string, number>

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
    return smtpLines(this.code, this.reply).join(' / ')
  }
}

/** What a hook returns. */
export type HookResult =
  | { kind: 'cont' }
  | { kind: 'deny' | 'denysoft' | 'denysoftdisconnect' | 'denydisconnect'; msg: DSN }

/** The reply lines as Haraka will send them after the code. */
export function toDsn(reply: SmtpReply): DSN {
  const lines = replyTexts(reply)
  return new DSN(reply.code, lines.length > 0 ? lines : [''])
}

/** Outcome (as answerAt made it) -> hook result. Discard is a 250: the caller records it. */
export function toHookResult(o: Outcome): HookResult {
  switch (o.action) {
    case 'continue':
    case 'discard':
      return { kind: 'cont' }
    case 'reject':
      return { kind: 'deny', msg: toDsn(o.reply) }
    case 'tempfail':
      return { kind: 'denysoft', msg: toDsn(o.reply) }
    case 'shutdown':
      return { kind: 'denysoftdisconnect', msg: toDsn(o.reply) }
  }
}

/** Answers the hook with the outcome (as answerAt made it): `next()`, or its code and DSN. */
export function respond(next: Next, o: Outcome): void {
  const r = toHookResult(o)
  if (r.kind === 'cont') next()
  else next(hookCode(r.kind), r.msg)
}

/** Haraka's return constant for a hook result kind (or `ok`). */
export function hookCode(kind: HookResult['kind'] | 'ok'): number {
  const v = constants[kind]
  if (v === undefined) throw new Error(`haraka-constants has no ${kind}`)
  return v
}
