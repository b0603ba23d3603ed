/**
 * The session's states and legal transitions, as data (libmilter's
 * `next_states` seen from the client). A state names the last stage
 * completed, whether its command was sent or omitted by a NO* flag, so the
 * sequence we send always matches what libmilter accepts (§5.3).
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
