/**
 * What a milter's verdict, or its failure, means for the SMTP client: the
 * outcome the chain answers with. Postfix milter8.c's single mapping, as
 * data. Pure: the chain applies the side effects (retiring a milter,
 * keeping a refusal).
 */
import type { DefaultAction } from '../config'
import type { Verdict } from '../session/types'
import { REPLIES, type Outcome } from './replies'

/** CONNECT and HELO concern the whole connection; the rest one message. */
export function isConnectionStage(stage: string): boolean {
  return stage === 'connect' || stage === 'helo'
}

/** The outcome of a verdict at a stage. */
export function outcomeOf(stage: string, v: Verdict, milter: string): Outcome {
  switch (v.kind) {
    case 'continue':
    case 'skip':
    case 'accept':
      return { action: 'continue' }
    case 'discard':
      // DISCARD at CONNECT/HELO is meaningless: carry on
      return isConnectionStage(stage) ? { action: 'continue' } : { action: 'discard', milter }
    case 'reject': {
      const reply =
        stage === 'eom'
          ? REPLIES.rejectEom
          : stage === 'connect'
            ? REPLIES.rejectConnect
            : REPLIES.reject
      return { action: 'reject', reply, milter, cause: 'verdict' }
    }
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

/** The outcome of a failure under a milter's default_action. */
export function failureOutcome(action: DefaultAction, milter: string): Outcome {
  switch (action) {
    case 'accept':
    case 'quarantine':
      return { action: 'continue' }
    case 'tempfail':
      return { action: 'tempfail', reply: REPLIES.tempfail, milter, cause: 'failure' }
    case 'reject':
      return { action: 'reject', reply: REPLIES.failReject, milter, cause: 'failure' }
    case 'shutdown':
      return { action: 'shutdown', reply: REPLIES.failShutdown, milter, cause: 'failure' }
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
