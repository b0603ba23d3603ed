/**
 * What a milter's verdict, or its failure, means for the SMTP client: the
 * outcome the chain answers with. Postfix milter8.c's single mapping, as
 * data, and what an enforced verdict does to the milter's part in the
 * connection. Pure: the chain applies the effects (retiring a milter,
 * keeping a refusal). Failures: failure.ts; shadow milters: shadow.ts.
 */
import type { Verdict } from '../session/types'
import type { MilterDef } from '../config'
import type { SmtpReply } from '../protocol/replycode'
import { REPLIES, type Outcome } from './smtp-replies'
import { enforced, shadowVerdict } from './shadow'
import type { SlotEffect } from './slot'
import { isConnectionStage, type Stage } from './stage'

/** A reject without text of its own: the greeting's 554, end of message's 554, else 550. */
const REJECT_REPLY = {
  connect: REPLIES.rejectConnect,
  helo: REPLIES.reject,
  mail: REPLIES.reject,
  rcpt: REPLIES.reject,
  data: REPLIES.reject,
  eom: REPLIES.rejectEom,
  unknown: REPLIES.reject,
  abort: REPLIES.reject,
} as const satisfies Record<Stage, SmtpReply>

/** The outcome of a verdict at a stage. */
export function outcomeOf(stage: Stage, v: Verdict, milter: string): Outcome {
  switch (v.kind) {
    case 'continue':
    case 'skip':
    case 'accept':
      return { action: 'continue' }
    case 'discard':
      // DISCARD at CONNECT/HELO is meaningless: carry on
      return isConnectionStage(stage) ? { action: 'continue' } : { action: 'discard', milter }
    case 'reject':
      return { action: 'reject', reply: REJECT_REPLY[stage], milter, cause: 'verdict' }
    case 'tempfail':
      return { action: 'tempfail', reply: REPLIES.tempfail, milter, cause: 'verdict' }
    case 'replycode': {
      const action = v.reply.code === 421 ? 'shutdown' : v.reply.code >= 500 ? 'reject' : 'tempfail'
      return { action, reply: v.reply, milter, cause: 'verdict' }
    }
    case 'shutdown':
    case 'conn_fail':
      return { action: 'shutdown', reply: REPLIES.shutdown, milter, cause: 'verdict' }
  }
}

/**
 * A refusal of the client given after the greeting (at MAIL, or at the
 * recipient that brought a late milter in): a 554, legal only as the
 * greeting or after DATA, becomes 550.
 */
export function laterRefusal(o: Outcome): Outcome {
  if (o.action === 'reject' && o.cause === 'verdict' && o.reply.code === 554) {
    return { ...o, reply: REPLIES.reject }
  }
  return o
}

/**
 * What a milter's verdict does besides its outcome: an accept at
 * CONNECT/HELO retires the milter for the connection; a refusal there holds
 * for every later MAIL; SHUTDOWN and CONN_FAIL end its part. A shadow
 * milter's verdict is only logged (shadow.ts).
 */
export function verdictEffect(def: MilterDef, stage: Stage, v: Verdict, o: Outcome): SlotEffect {
  if (!enforced(def)) return shadowVerdict(stage, v, o)
  const connection = isConnectionStage(stage)
  switch (v.kind) {
    case 'accept':
      return {
        outcome: o,
        event: {
          level: 'info',
          message: connection ? 'accepted the connection' : 'accepted the message',
        },
        ...(connection ? { next: { kind: 'done' } } : {}),
      }
    case 'discard':
      return {
        outcome: o,
        event: {
          level: 'info',
          message: connection ? 'discard at CONNECT/HELO ignored' : 'discard',
        },
      }
    case 'reject':
    case 'tempfail':
    case 'replycode':
      // the milter is done with this connection; its refusal holds for every later MAIL
      if (!connection) return { outcome: o }
      return {
        outcome: o,
        next: o.action === 'shutdown' ? { kind: 'done' } : { kind: 'refused', outcome: o },
      }
    case 'shutdown':
    case 'conn_fail':
      return {
        outcome: o,
        event: {
          level: 'warn',
          message: `${v.kind === 'shutdown' ? 'SMFIR_SHUTDOWN' : 'SMFIR_CONN_FAIL'}: closing the SMTP session`,
        },
        next: { kind: 'done' },
      }
    case 'continue':
    case 'skip':
      return { outcome: o }
  }
}
