/**
 * Shadow mode (`mode = shadow`): a milter consulted at every stage whose
 * verdicts, edits and failures are logged and counted, never enforced. The
 * one home of what shadow means; the chain asks `enforced` where an answer
 * could decide, and takes each effect from here.
 */
import type { MilterDef } from '../config'
import { MilterUnavailableError, type MilterError } from '../errors'
import { formatReplyLine } from '../protocol/replycode'
import type { Verdict } from '../session/types'
import type { MilterEdits } from './message'
import type { Outcome } from './smtp-replies'
import type { SlotEffect } from './slot'
import { isConnectionStage, type Stage } from './stage'

const CONTINUE: Outcome = { action: 'continue' }

/** Whether a milter's answers count: false for a shadow milter. */
export function enforced(def: MilterDef): boolean {
  return def.mode !== 'shadow'
}

/**
 * A shadow milter's verdict: logged, never the outcome. It ends the
 * milter's part as it would have (the whole connection at CONNECT/HELO,
 * or the message), so it is not asked what it has already decided.
 */
export function shadowVerdict(stage: Stage, v: Verdict, o: Outcome): SlotEffect {
  if (v.kind === 'continue' || v.kind === 'skip') return { outcome: CONTINUE }
  const would =
    o.action === 'continue'
      ? v.kind === 'accept'
        ? 'accept'
        : `${v.kind} (no effect here)`
      : o.action === 'discard'
        ? 'discard'
        : `${o.action} with ${formatReplyLine(o.reply)}`
  const fx: SlotEffect = {
    outcome: CONTINUE,
    event: { level: 'notice', message: `shadow: would ${would}; not enforced` },
  }
  if (isConnectionStage(stage) || v.kind === 'shutdown' || v.kind === 'conn_fail')
    fx.next = { kind: 'done' }
  return fx
}

/**
 * A shadow milter's failure never touches the mail: a warning (info for a
 * milter marked down), and the chain carries on without it, for the
 * session or, with failure_scope = message, for the message.
 */
export function shadowFailure(def: MilterDef, err: MilterError, where: string): SlotEffect {
  return {
    outcome: CONTINUE,
    event: {
      level: err instanceof MilterUnavailableError ? 'info' : 'warn',
      message: `${err.message}; ${where}; shadow: not enforced`,
      code: err.code,
    },
    next:
      def.failureScope === 'session'
        ? { kind: 'done' }
        : { kind: 'failed', outcome: CONTINUE, quarantine: undefined, scope: 'message' },
  }
}

/** What a shadow milter's failure is reported as having done. */
export const SHADOW_FAILURE_ACTION = 'none (shadow)' as const

/** What a shadow milter would have changed, for the log; undefined when nothing. */
export function shadowEdits(
  edits: MilterEdits | undefined,
  quarantine: string | undefined,
): string | undefined {
  const kinds = new Map<string, number>()
  for (const m of edits?.modifications ?? []) kinds.set(m.kind, (kinds.get(m.kind) ?? 0) + 1)
  if (edits?.bodyReplaced) kinds.set('replbody', 1)
  const what = [...kinds].map(([k, n]) => `${k}=${n}`)
  if (quarantine !== undefined) what.push(`quarantine (${quarantine})`)
  return what.length > 0 ? `shadow: would edit ${what.join(' ')}; not applied` : undefined
}
