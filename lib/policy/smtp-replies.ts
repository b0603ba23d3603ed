/**
 * What the SMTP client is told: the chain's outcomes, the fixed replies for
 * verdicts without text and for failures (default_action), and the rules
 * that keep every reply legal where it is given (RFC 5321 §4.3.2). Knows
 * nothing of Haraka; the plugin and the CLI both answer through it.
 */
import type { SmtpReply } from '../protocol/replycode'
import { isConnectionStage, type Stage } from './stage'

/** What the chain decided for one SMTP command. */
export type Outcome =
  | { action: 'continue' }
  | {
      action: 'reject' | 'tempfail' | 'shutdown'
      reply: SmtpReply
      milter: string
      cause: 'verdict' | 'failure'
    }
  | { action: 'discard'; milter: string }

function fixed(code: number, enhanced: string, text: string): SmtpReply {
  return { code, enhanced, lines: [{ enhanced, text }] }
}

/** The replies given when the milter sent no text of its own, and for failures. */
export const REPLIES = {
  reject: fixed(550, '5.7.1', 'Command rejected'),
  rejectConnect: fixed(554, '5.7.1', 'Service refused'),
  rejectEom: fixed(554, '5.7.1', 'Message rejected'),
  tempfail: fixed(451, '4.7.1', 'Service unavailable - try again later'),
  failReject: fixed(550, '5.5.0', 'Service unavailable'),
  shutdown: fixed(421, '4.7.0', 'Server closing connection'),
  failShutdown: fixed(421, '4.7.1', 'Service unavailable - try again later'),
  defer: fixed(
    452,
    '4.5.3',
    'Recipient needs different filtering - send it in a separate transaction',
  ),
  quarantined: fixed(550, '5.7.1', 'Message quarantined'),
  configError: fixed(451, '4.3.5', 'Server configuration problem - try again later'),
  internal: fixed(451, '4.3.0', 'Temporary milter failure - try again later'),
  internalShutdown: fixed(421, '4.3.0', 'Temporary milter failure - try again later'),
} satisfies Record<string, SmtpReply>

/** `milter`: the milter's code as sent; `enhanced_only`: 550/451 with the milter's enhanced code and text (Sun). */
export type ReplyCodeMode = 'milter' | 'enhanced_only'

function withCode(reply: SmtpReply, code: number): SmtpReply {
  return code === reply.code ? reply : { ...reply, code }
}

/**
 * The outcome as the client must be told at this stage:
 *
 * - `reply_code = enhanced_only` turns the code into 550 or 451 (421 kept);
 * - the greeting may only be 220, 421 or 554: a milter's reject gives 554,
 *   a tempfail (or a failure's tempfail or reject) greets 220 and is given
 *   at MAIL instead (the chain keeps it for that);
 * - HELO/EHLO may only be refused with 550 (or 421): a reject gives 550, a
 *   tempfail or a failure is given at MAIL.
 */
export function answerAt(stage: Stage, o: Outcome, mode: ReplyCodeMode): Outcome {
  if (o.action === 'continue' || o.action === 'discard') return o
  let reply = o.reply
  if (mode === 'enhanced_only' && reply.code !== 421) {
    reply = withCode(reply, reply.code >= 500 ? 550 : 451)
  }
  if (o.action !== 'shutdown' && isConnectionStage(stage)) {
    if (o.action === 'tempfail' || o.cause === 'failure') return { action: 'continue' }
    reply = withCode(reply, stage === 'connect' ? 554 : 550)
  }
  return reply === o.reply ? o : { ...o, reply }
}
