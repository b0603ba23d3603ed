/**
 * Envelope edits at end of message (ADDRCPT, ADDRCPT_PAR, DELRCPT,
 * CHGFROM), applied in order to a plain envelope. Pure code, shared by the
 * adapter and the CLI.
 */

/** One envelope address with its ESMTP arguments (`NOTIFY=NEVER ...`). */
export interface EnvelopeAddress {
  /** Without angle brackets; '' for the null sender. */
  address: string
  args?: string
}

/** Sender and recipients. */
export interface Envelope {
  from: EnvelopeAddress
  rcpts: EnvelopeAddress[]
}

/** Envelope edits, decoded to text. */
export type EnvelopeEdit =
  | { kind: 'addrcpt'; rcpt: string; args?: string }
  | { kind: 'delrcpt'; rcpt: string }
  | { kind: 'chgfrom'; sender: string; args?: string }

/** Why an envelope edit cannot be applied. */
export class EnvelopeEditError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'EnvelopeEditError'
  }
}

/** `<User@Example.COM>` -> `User@Example.COM` (brackets, quotes of a plain local part, spaces). */
export function stripAddress(raw: string): string {
  let a = raw.trim()
  if (a.startsWith('<') && a.endsWith('>')) a = a.slice(1, -1).trim()
  const q = /^"([^"\\]*)"@(.+)$/.exec(a)
  if (q && /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(q[1] ?? '')) a = `${q[1]}@${q[2]}`
  return a
}

/** The comparison key (milter-protocol.md §3.5 DELRCPT): local part exact, domain case-insensitive. */
export function addressKey(raw: string): string {
  const a = stripAddress(raw)
  const at = a.lastIndexOf('@')
  return at < 0 ? a : `${a.slice(0, at)}@${a.slice(at + 1).toLowerCase()}`
}

// eslint-disable-next-line no-control-regex
const BAD_CHARS = /[\x00-\x1f\x7f<>\s]/

/** Checks an address a milter sent: no control characters, spaces or brackets inside. */
export function checkAddress(raw: string, what: string): string {
  const a = stripAddress(raw)
  if (BAD_CHARS.test(a))
    throw new EnvelopeEditError(`invalid ${what} address ${JSON.stringify(raw)} from milter`)
  return a
}

// eslint-disable-next-line no-control-regex
const BAD_ARGS = /[\x00-\x1f\x7f]/

function cleanArgs(args: string | undefined): string | undefined {
  if (args === undefined) return undefined
  if (BAD_ARGS.test(args))
    throw new EnvelopeEditError(`invalid ESMTP arguments ${JSON.stringify(args)} from milter`)
  const t = args.trim()
  return t === '' ? undefined : t
}

function withArgs(address: string, args: string | undefined): EnvelopeAddress {
  return args === undefined ? { address } : { address, args }
}

/** Applies the edits in order; returns a new envelope. */
export function applyEnvelopeEdits(env: Envelope, edits: readonly EnvelopeEdit[]): Envelope {
  let from = env.from
  let rcpts = [...env.rcpts]
  for (const e of edits) {
    switch (e.kind) {
      case 'chgfrom': {
        const a =
          e.sender.trim() === '<>' || e.sender.trim() === '' ? '' : checkAddress(e.sender, 'sender')
        from = withArgs(a, cleanArgs(e.args))
        break
      }
      case 'addrcpt': {
        const a = checkAddress(e.rcpt, 'recipient')
        if (a === '') throw new EnvelopeEditError('milter added an empty recipient')
        const key = addressKey(a)
        if (!rcpts.some((r) => addressKey(r.address) === key))
          rcpts.push(withArgs(a, cleanArgs(e.args)))
        break
      }
      case 'delrcpt': {
        const key = addressKey(e.rcpt)
        rcpts = rcpts.filter((r) => addressKey(r.address) !== key)
        break
      }
    }
  }
  return { from, rcpts }
}
