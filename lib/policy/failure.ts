/**
 * A milter's failure (it could not be reached, timed out, broke the
 * protocol, sent an invalid edit) as one decision: the error it counts as,
 * the outcome its default_action gives, the state the milter is left in,
 * the log line and what the per-message report records. Pure: the chain
 * applies it (milter-protocol.md §7; Postfix milter8.c's def_action).
 *
 * With failure_scope = session the outcome holds for the rest of the SMTP
 * connection (Postfix); with message it holds for the message in flight,
 * and the milter is opened again for the next one.
 */
import type { DefaultAction, MilterDef } from '../config'
import {
  MilterProtocolError,
  MilterStateError,
  MilterUnavailableError,
  isMilterError,
  type MilterError,
} from '../errors'
import { EnvelopeEditError } from '../message/envelope'
import { HeaderEditError } from '../message/headers'
import { REPLIES, type Outcome } from './smtp-replies'
import { enforced, SHADOW_FAILURE_ACTION, shadowFailure } from './shadow'
import type { SlotEffect } from './slot'

/** A failure as the chain applies it. */
export interface Failure extends SlotEffect {
  /** The error it counts as (its `code` goes to the step trace, the report and the log). */
  error: MilterError
  /** The action reported for it: the default_action, or none for a shadow milter. */
  action: DefaultAction | typeof SHADOW_FAILURE_ACTION
}

/** Any error thrown while a milter was asked, as a MilterError. */
export function asMilterError(milter: string, e: unknown): MilterError {
  if (isMilterError(e)) return e
  if (e instanceof HeaderEditError || e instanceof EnvelopeEditError)
    return new MilterProtocolError(`${milter}: ${e.message}`, { cause: e })
  return new MilterStateError(`unexpected: ${String(e)}`, { cause: e })
}

/** The outcome of a failure under a milter's default_action. */
function failureOutcome(action: DefaultAction, milter: string): Outcome {
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

/** A milter's failure, `endpoint` being where its session was (or its configured sockets). */
export function failureOf(def: MilterDef, e: unknown, endpoint: string): Failure {
  const error = asMilterError(def.name, e)
  const where = `endpoint=${endpoint}`
  if (!enforced(def))
    return { ...shadowFailure(def, error, where), error, action: SHADOW_FAILURE_ACTION }
  const action = def.defaultAction
  const outcome = failureOutcome(action, def.name)
  const scope = action === 'shutdown' ? 'session' : def.failureScope
  const quarantine =
    action === 'quarantine' ? `${def.name}: milter failed (${error.code})` : undefined
  return {
    error,
    action,
    outcome,
    event: {
      // A milter marked down was logged once when it was; each session notes it quietly.
      level: error instanceof MilterUnavailableError ? 'info' : 'error',
      message: `${error.message}; ${where}; default_action=${action}`,
      code: error.code,
    },
    // accept: carry on without it, for the message or for the session
    next:
      outcome.action === 'continue' && quarantine === undefined && scope === 'session'
        ? { kind: 'done' }
        : { kind: 'failed', outcome, quarantine, scope },
  }
}
