/**
 * The stages of an SMTP session a milter takes part in: the one list every
 * stage-keyed table in the policy, the adapter and the metrics is checked
 * against (`satisfies Record<Stage, ...>`, and switch-exhaustiveness-check
 * for switches), so a stage added here is a compile error wherever it is
 * not yet handled. ABORT is a stage too: a milter can fail there.
 */

/** Every stage, in protocol order. */
export const STAGES = [
  'connect',
  'helo',
  'mail',
  'rcpt',
  'data',
  'eom',
  'unknown',
  'abort',
] as const

/** One stage of the SMTP session, as milters see it. */
export type Stage = (typeof STAGES)[number]

/** What a stage concerns: the whole connection, the message in flight, or only itself. */
export type StageScope = 'connection' | 'message' | 'command'

/**
 * CONNECT and HELO concern the connection (a refusal there holds for it,
 * a DISCARD means nothing); UNKNOWN only its own command; the rest the
 * message.
 */
export const SCOPE = {
  connect: 'connection',
  helo: 'connection',
  mail: 'message',
  rcpt: 'message',
  data: 'message',
  eom: 'message',
  unknown: 'command',
  abort: 'message',
} as const satisfies Record<Stage, StageScope>

/** CONNECT and HELO concern the whole connection; the rest one message or command. */
export function isConnectionStage(stage: Stage): boolean {
  return SCOPE[stage] === 'connection'
}
