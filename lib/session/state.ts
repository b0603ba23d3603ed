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
export const AFTER: Readonly<Partial<Record<Step, State>>> = {
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
  /** An UNKNOWN answered: the state before it stands. */
  | { kind: 'restored'; state: State }
  /** QUIT sent, SHUTDOWN, or the connection went away. */
  | { kind: 'closed' }
  /** An error: the socket is destroyed. */
  | { kind: 'failed' }

/** The state an event leads to from `from`; undefined when the event is not legal there. */
export function transition(from: State, e: Event): State | undefined {
  if (from === 'failed') return e.kind === 'failed' ? 'failed' : undefined
  if (from === 'closed') return e.kind === 'closed' || e.kind === 'failed' ? from : undefined
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
      return e.state
    case 'closed':
      // a milter that ended the connection stays answered-without-I/O after its socket closes
      return from === 'connectionDone' ? from : 'closed'
    case 'failed':
      return 'failed'
  }
}
