/**
 * One milter's place in one SMTP connection, as an explicit state:
 *
 *   idle ──open──▶ open ──accept at CONNECT/HELO──▶ done
 *    ▲ │            │ └──refuse at CONNECT/HELO──▶ refused
 *    │ │            └──failure──▶ failed ──(scope message: next message)──▶ idle
 *    └─┼───────────────────────────────────────────────┘
 *      └──client condition at CONNECT──▶ skipped
 *
 * `idle` is a rule milter before its first recipient, or a milter whose
 * failure (failure_scope = message) ended with its message: it is opened
 * (CONNECT and HELO replayed) when next needed.
 */
import type { FailureScope, MilterDef } from '../config'
import type { MilterSession } from '../session/session'
import type { Outcome } from './smtp-replies'
import { hasMessageConditions } from './conditions'
import { dependsOnRecipient } from './routing'

export type SlotState =
  | { kind: 'idle' }
  | { kind: 'open'; session: MilterSession }
  /** Accepted the connection (or failed open for the session): not consulted again. */
  | { kind: 'done' }
  /** Left out of the whole connection by a client condition (skip_clients, skip_private_clients): never contacted. */
  | { kind: 'skipped'; reason: string }
  /** Refused the client at (replayed) CONNECT or HELO. */
  | { kind: 'refused'; outcome: Outcome }
  /** Failed: its default_action's outcome, and a quarantine reason under `quarantine`. */
  | { kind: 'failed'; outcome: Outcome; quarantine: string | undefined; scope: FailureScope }

/** What an answer or a failure does: the outcome, a line for the log, the state the milter moves to. */
export interface SlotEffect {
  outcome: Outcome
  event?: { level: 'info' | 'notice' | 'warn' | 'error'; message: string; code?: string }
  /** The state the milter leaves for (its session dropped); absent: it stays as it is. */
  next?: SlotState
}

/** One milter of the chain. */
export class Slot {
  state: SlotState = { kind: 'idle' }
  /** Depends on the recipient (rules, skip_recipient_domains): contacted from the first RCPT needing it. */
  readonly lazy: boolean
  /** Has message conditions (skip_authenticated...): contacted at the first MAIL not skipped. */
  readonly deferred: boolean
  /** Shadow mode: consulted at every stage, nothing it says or fails is enforced. */
  readonly shadow: boolean
  /** Why the milter sits out the current message (a skip_* condition), if it does. */
  skipped: string | undefined

  constructor(readonly def: MilterDef) {
    this.lazy = dependsOnRecipient(def)
    this.deferred = hasMessageConditions(def.skip)
    this.shadow = def.mode === 'shadow'
  }

  get name(): string {
    return this.def.name
  }

  /** Opened at CONNECT (neither recipient-dependent nor waiting for MAIL's conditions). */
  get eager(): boolean {
    return !this.lazy && !this.deferred
  }

  /** The open session, if any. */
  get session(): MilterSession | undefined {
    return this.state.kind === 'open' ? this.state.session : undefined
  }

  /** Drops the session (without QUIT) and moves to `next`. */
  leave(next: SlotState): void {
    this.session?.destroy()
    this.state = next
  }

  /** A new message: a failure that belonged to the last one is forgotten. */
  newMessage(): void {
    this.skipped = undefined
    if (this.state.kind === 'failed' && this.state.scope === 'message')
      this.state = { kind: 'idle' }
  }
}
