/**
 * Why a quarantine operation failed, in words for the operator, with a
 * code to branch on.
 */

/** What went wrong. */
export type QuarantineErrorCode =
  | 'QUARANTINE_ERR_INVALID' // a malformed id, or a sidecar that is not an entry
  | 'QUARANTINE_ERR_NOT_FOUND' // no such entry (never held, or released or deleted since)
  | 'QUARANTINE_ERR_CLAIMED' // a live process is releasing or deleting it
  | 'QUARANTINE_ERR_UNSAFE' // a symbolic link or other non-regular file where a store file belongs
  | 'QUARANTINE_ERR_NO_RECIPIENTS' // a release with nobody to send to

/** A quarantine operation that cannot be done; the message is for the operator. */
export class QuarantineError extends Error {
  constructor(
    message: string,
    readonly code: QuarantineErrorCode = 'QUARANTINE_ERR_INVALID',
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'QuarantineError'
  }
}
