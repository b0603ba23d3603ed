/**
 * The error hierarchy of the milter client. Every error carries a fixed
 * `code` to branch on (as undici does); verdicts from a milter are values,
 * never errors.
 */

/** The phase a timeout or failure happened in. */
export type Phase = 'connect' | 'command' | 'content'

/** Base class: branch on `code`, never on the message text. */
export abstract class MilterError extends Error {
  abstract readonly code: `MILTER_ERR_${string}`

  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
  }
}

/** Dialling the milter failed (refused, unreachable, no such socket). */
export class MilterConnectError extends MilterError {
  readonly code = 'MILTER_ERR_CONNECT'
}

/** No reply (or no progress) within the phase's time limit. */
export class MilterTimeoutError extends MilterError {
  readonly code = 'MILTER_ERR_TIMEOUT'
  constructor(
    readonly phase: Phase,
    readonly ms: number,
    readonly step: string,
    options?: ErrorOptions,
  ) {
    super(`milter ${phase} timeout after ${ms} ms waiting for the reply to ${step}`, options)
  }
}

/** The milter broke the protocol: bad length, unknown or malformed reply, leftover bytes. */
export class MilterProtocolError extends MilterError {
  readonly code = 'MILTER_ERR_PROTOCOL'
}

/** Option negotiation failed: version conflict, masks not a subset of the offer, EOF. */
export class MilterNegotiationError extends MilterError {
  readonly code = 'MILTER_ERR_NEGOTIATE'
}

/** We tried to send a command the session state does not allow: a bug on our side. */
export class MilterStateError extends MilterError {
  readonly code = 'MILTER_ERR_STATE'
}

/** The connection closed (EOF, reset) or was already destroyed. */
export class MilterClosedError extends MilterError {
  readonly code = 'MILTER_ERR_CLOSED'
}

/** A command would exceed the negotiated packet size; it is not sent. */
export class MilterSizeError extends MilterError {
  readonly code = 'MILTER_ERR_SIZE'
}

/** The milter is marked down (circuit breaker open): not dialled, default_action at once. */
export class MilterUnavailableError extends MilterError {
  readonly code = 'MILTER_ERR_UNAVAILABLE'
}

/** A configuration value is invalid (socket spec, option, macro list). */
export class MilterConfigError extends MilterError {
  readonly code = 'MILTER_ERR_CONFIG'
}

/**
 * The milter went over a stated bound (milter.ini max_* keys, or Haraka's
 * own header and size limits): too many modifications, added headers or
 * header bytes, too large a replacement body, too many macro names asked
 * for. Detected while its answer is read; handled by its default_action.
 */
export class MilterLimitError extends MilterError {
  readonly code = 'MILTER_ERR_LIMIT'
  constructor(
    /** The milter.ini key (or Haraka setting) that bounds it. */
    readonly limit: string,
    /** What the milter sent (or asked for) when it went over. */
    readonly figure: number,
    /** The bound in force. */
    readonly max: number,
    /** Where: negotiate or eom. */
    readonly stage: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}

/** True for any error of this hierarchy. */
export function isMilterError(e: unknown): e is MilterError {
  return e instanceof MilterError
}
