/**
 * The session's states and legal transitions, as data (libmilter's
 * `next_states` seen from the client). A state names the last stage
 * completed, whether its command was sent or omitted by a NO* flag, so the
 * sequence we send always matches what libmilter accepts (milter-protocol.md §5.3).
 */

/** Where one milter connection stands. */
export type State =
  | 'negotiated' //        OPTNEG done (or QUIT_NC): CONNECT next
  | 'ready' //             connection reported, no message open: HELO, MAIL, UNKNOWN
  | 'mail' //              MAIL continued: RCPT next
  | 'rcpt' //              at least one RCPT: RCPT or DATA
  | 'data' //              DATA done: headers next
  | 'header' //            headers being sent
  | 'eoh' //               end of headers: body next
  | 'body' //              body chunks being sent
  | 'messageDone' //       the milter ended this message (accept, reject, discard...): nothing until MAIL
  | 'connectionDone' //    the milter answered the whole connection: nothing more at all
  | 'failed' //            error: socket destroyed
  | 'closed' //            QUIT sent, or closed

/** The steps of a session, in protocol order. */
export type Step =
  | 'connect'
  | 'helo'
  | 'mail'
  | 'rcpt'
  | 'data'
  | 'header'
  | 'eoh'
  | 'body'
  | 'eom'
  | 'unknown'
  | 'abort'
  | 'quit_nc'

/** From which states each step may be taken. */
export const FROM: Readonly<Record<Step, readonly State[]>> = {
  connect: ['negotiated'],
  helo: ['ready', 'messageDone', 'mail', 'rcpt', 'data', 'header', 'eoh', 'body'],
  mail: ['ready', 'messageDone'],
  rcpt: ['mail', 'rcpt'],
  data: ['rcpt'],
  header: ['data', 'header'],
  eoh: ['data', 'header'],
  body: ['eoh', 'body'],
  eom: ['eoh', 'body'],
  unknown: ['ready', 'messageDone', 'mail', 'rcpt'],
  abort: ['mail', 'rcpt', 'data', 'header', 'eoh', 'body', 'messageDone'],
  quit_nc: ['ready', 'messageDone'],
}

/** The state reached by completing a step with CONTINUE (or by omitting it). */
const AFTER: Readonly<Partial<Record<Step, State>>> = {
  connect: 'ready',
  helo: 'ready',
  mail: 'mail',
  rcpt: 'rcpt',
  data: 'data',
  header: 'header',
  eoh: 'eoh',
  body: 'body',
}

/** States inside a message transaction. */
export const IN_MESSAGE: ReadonlySet<State> = new Set<State>([
  'mail',
  'rcpt',
  'data',
  'header',
  'eoh',
  'body',
])

/** True when the step is legal from the state. */
export function allowed(step: Step, state: State): boolean {
  return FROM[step].includes(state)
}

/**
 * Everything that moves a session from one state to another. Every state
 * change goes through transition(); nothing assigns a state directly.
 */
export type Event =
  /** A step completed with CONTINUE (or was omitted by a NO* flag, or unanswered under NR_*). */
  | { kind: 'continued'; step: Step }
  /** SKIP: like continue for the state; the caller remembers what to skip. */
  | { kind: 'skipped'; step: Step }
  /** The milter ended the message (accept, reject, tempfail, discard, reply code). */
  | { kind: 'messageEnded' }
  /** The milter ended the connection at CONNECT/HELO (accept, reject, tempfail, reply code). */
  | { kind: 'connectionEnded' }
  /** The final reply to end of message: ready for the next message. */
  | { kind: 'eomAnswered' }
  /** SMFIC_ABORT sent, or a decided message left behind (new MAIL, HELO): ready. */
  | { kind: 'reset' }
  /** SMFIC_QUIT_NC: the next SMTP session starts at CONNECT. */
  | { kind: 'quitNc' }
  /** An UNKNOWN answered: the state before it stands (legal only if it is the state UNKNOWN was sent in). */
  | { kind: 'restored'; state: State }
  /** QUIT sent, SHUTDOWN, or the connection went away. */
  | { kind: 'closed' }
  /** An error: the socket is destroyed. */
  | { kind: 'failed' }

/** The state an event leads to from `from`; undefined when the event is not legal there. */
export function transition(from: State, e: Event): State | undefined {
  // any state may fail, a closed one too (a late error on a closing socket)
  if (e.kind === 'failed') return 'failed'
  if (from === 'failed') return undefined
  if (from === 'closed') return e.kind === 'closed' ? from : undefined
  switch (e.kind) {
    case 'continued':
    case 'skipped':
      return allowed(e.step, from) ? (AFTER[e.step] ?? from) : undefined
    case 'messageEnded':
      // at MAIL the message ends before it began (from ready)
      return IN_MESSAGE.has(from) || from === 'ready' || from === 'messageDone'
        ? 'messageDone'
        : undefined
    case 'connectionEnded':
      return from === 'negotiated' || from === 'ready' ? 'connectionDone' : undefined
    case 'eomAnswered':
      return from === 'eoh' || from === 'body' ? 'ready' : undefined
    case 'reset':
      return IN_MESSAGE.has(from) || from === 'messageDone' || from === 'ready'
        ? 'ready'
        : undefined
    case 'quitNc':
      return allowed('quit_nc', from) ? 'negotiated' : undefined
    case 'restored':
      return e.state === from && allowed('unknown', from) ? from : undefined
    case 'closed':
      // a milter that ended the connection stays answered-without-I/O after its socket closes
      return from === 'connectionDone' ? from : 'closed'
  }
}

/** The steps that repeat within a message, which SKIP can cut short. */
export type Skippable = 'rcpt' | 'header' | 'body'

function isSkippable(step: Step): step is Skippable {
  return step === 'rcpt' || step === 'header' || step === 'body'
}

/**
 * A session's whole state: where it stands, and the two facts about how it
 * got there that change what it may do next. Both are set and cleared by
 * next() alone, from the same events, so no flag outside the table can
 * disagree with the state.
 */
export interface SessionState {
  readonly at: State
  /**
   * The milter answered SKIP at this step: later ones of the kind are
   * answered without I/O until another step (Postfix skips further events
   * of that type; milter-protocol.md §3.3).
   */
  readonly skipping?: Skippable
  /**
   * `ready` reached by a completed end of message (and UNKNOWN since): the
   * only point where QUIT_NC may be sent (milter-protocol.md §5.6). A HELO
   * ends it: libmilter takes HELO after EOB only by falling back to its
   * HELO state, whose row (§5.3) has no QUIT_NC, so it drops the QUIT_NC
   * and the CONNECT after it, and the client waits for a reply that never
   * comes.
   */
  readonly afterEob?: true
}

/** A fresh session: negotiated, nothing skipped, no message finished. */
export const NEGOTIATED: SessionState = { at: 'negotiated' }

/** The state an event leads to, qualifiers included; undefined when the event is not legal. */
export function next(from: SessionState, e: Event): SessionState | undefined {
  const at = transition(from.at, e)
  if (at === undefined) return undefined
  if (e.kind === 'restored') return from
  const to: { at: State; skipping?: Skippable; afterEob?: true } = { at }
  if (e.kind === 'skipped' && isSkippable(e.step)) to.skipping = e.step
  // HELO ends afterEob even when NOHELO omits it (then libmilter never saw it): reuse is only an optimisation
  const helo = (e.kind === 'continued' || e.kind === 'skipped') && e.step === 'helo'
  if (e.kind === 'eomAnswered' || (from.afterEob && at === 'ready' && !helo)) to.afterEob = true
  return to
}
