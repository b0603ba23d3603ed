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
}

/** Dialling the milter failed (refused, unreachable, no such socket). */
export class MilterConnectError extends MilterError {
  readonly code = 'MILTER_ERR_CONNECT'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterConnectError'
  }
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
    this.name = 'MilterTimeoutError'
  }
}

/** The milter broke the protocol: bad length, unknown or malformed reply, leftover bytes. */
export class MilterProtocolError extends MilterError {
  readonly code = 'MILTER_ERR_PROTOCOL'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterProtocolError'
  }
}

/** Option negotiation failed: version conflict, masks not a subset of the offer, EOF. */
export class MilterNegotiationError extends MilterError {
  readonly code = 'MILTER_ERR_NEGOTIATE'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterNegotiationError'
  }
}

/** We tried to send a command the session state does not allow: a bug on our side. */
export class MilterStateError extends MilterError {
  readonly code = 'MILTER_ERR_STATE'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterStateError'
  }
}

/** The connection closed (EOF, reset) or was already destroyed. */
export class MilterClosedError extends MilterError {
  readonly code = 'MILTER_ERR_CLOSED'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterClosedError'
  }
}

/** A command would exceed the negotiated packet size; it is not sent. */
export class MilterSizeError extends MilterError {
  readonly code = 'MILTER_ERR_SIZE'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterSizeError'
  }
}

/** A configuration value is invalid (socket spec, option, macro list). */
export class MilterConfigError extends MilterError {
  readonly code = 'MILTER_ERR_CONFIG'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'MilterConfigError'
  }
}

/** True for any error of this hierarchy. */
export function isMilterError(e: unknown): e is MilterError {
  return e instanceof MilterError
}
