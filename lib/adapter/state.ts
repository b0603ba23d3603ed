/**
 * The plugin's state on a Haraka connection and on a transaction: one typed
 * object each, kept beside Haraka's objects (not in their notes), so one
 * module says what the plugin remembers between hooks.
 *
 * Notes stay the interface with other plugins only: they may set
 * `transaction.notes.milter_optin` / `milter_destination_channel` (input),
 * and queue plugins may read `transaction.notes.milter_envelope_args`.
 */
import type { MilterConfig } from '../config'
import type { MilterChain, Outcome, Stage } from '../policy/chain'
import type { HarakaConnection, HarakaTransaction, LocalDomain } from './haraka'

/** What happens to an accepted message at queue time. */
export type Disposition =
  { kind: 'discard'; milter: string } | { kind: 'hold'; reason: string; milters: string[] }

/**
 * A refusal given in the current transaction, for the report lines: who
 * decided it, at which stage, and the recipient it concerned (at RCPT: the
 * message may still be delivered to the others).
 */
export interface Refusal {
  milter: string
  stage: Stage
  /** The reply line, e.g. `452 4.5.3 Recipient needs different filtering ...`. */
  reply: string
  recipient?: string
}

/** Per connection. */
export type ConnectionState =
  | {
      kind: 'milters'
      cfg: MilterConfig
      chain: MilterChain
      sourceChannel: string
      isLocal: LocalDomain
      /** The refusals given in the current transaction, for the report lines. */
      refusals: Refusal[]
    }
  /** The configuration was broken when the connection came: every MAIL is refused. */
  | { kind: 'broken'; reason: string }

/** Per transaction. */
export interface TransactionState {
  /** MAIL FROM's ESMTP parameters (Haraka keeps them nowhere). */
  mailArgs: Record<string, string | null>
  /** Each RCPT TO's ESMTP parameters, by addressKey (Haraka keeps them nowhere either). */
  rcptArgs?: Map<string, Record<string, string | null>>
  /** Discarded or held by a milter: taken at queue. */
  disposition?: Disposition
  /** Authentication-Results headers milters added, restored at queue if Haraka dropped them. */
  authResults?: string[]
}

const CONNECTIONS = new WeakMap<object, ConnectionState>()
const TRANSACTIONS = new WeakMap<object, TransactionState>()

export function connectionState(c: HarakaConnection): ConnectionState | undefined {
  return CONNECTIONS.get(c)
}

export function setConnectionState(c: HarakaConnection, st: ConnectionState): void {
  CONNECTIONS.set(c, st)
}

export function dropConnectionState(c: HarakaConnection): ConnectionState | undefined {
  const st = CONNECTIONS.get(c)
  CONNECTIONS.delete(c)
  return st
}

/** A discard the client was answered 250 for: the queue hook takes the message (the first one counts). */
export function noteDiscard(st: TransactionState, answered: Outcome): void {
  if (answered.action === 'discard') st.disposition ??= { kind: 'discard', milter: answered.milter }
}

/** The transaction's state, made on first use. */
export function transactionState(t: HarakaTransaction): TransactionState {
  let st = TRANSACTIONS.get(t)
  if (!st) {
    st = { mailArgs: {} }
    TRANSACTIONS.set(t, st)
  }
  return st
}
