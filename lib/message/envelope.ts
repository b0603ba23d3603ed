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
function checkAddress(raw: string, what: string): string {
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

/**
 * Applies envelope edits one at a time, each in O(1): recipients are kept
 * in order with an index by addressKey, so an ADDRCPT checks for a
 * duplicate without a scan and a DELRCPT removes without refiltering the
 * list. Same result as applying them to the plain list in order.
 */
export class EnvelopeEditor {
  private from: EnvelopeAddress
  /** Recipients in order; a deleted one leaves a hole. */
  private readonly slots: Array<EnvelopeAddress | undefined>
  /** addressKey -> the slots holding it (several when the input had duplicates). */
  private readonly index = new Map<string, number[]>()
  private live = 0

  constructor(env: Envelope) {
    this.from = env.from
    this.slots = []
    for (const r of env.rcpts) this.add(addressKey(r.address), r)
  }

  /** Recipients left. */
  get recipients(): number {
    return this.live
  }

  /** Applies one edit; throws EnvelopeEditError for an invalid one. */
  apply(e: EnvelopeEdit): void {
    switch (e.kind) {
      case 'chgfrom': {
        const a =
          e.sender.trim() === '<>' || e.sender.trim() === '' ? '' : checkAddress(e.sender, 'sender')
        this.from = withArgs(a, cleanArgs(e.args))
        break
      }
      case 'addrcpt': {
        const a = checkAddress(e.rcpt, 'recipient')
        if (a === '') throw new EnvelopeEditError('milter added an empty recipient')
        const key = addressKey(a)
        if (!this.index.has(key)) this.add(key, withArgs(a, cleanArgs(e.args)))
        break
      }
      case 'delrcpt': {
        const key = addressKey(e.rcpt)
        const at = this.index.get(key)
        if (!at) break
        for (const i of at) this.slots[i] = undefined
        this.live -= at.length
        this.index.delete(key)
        break
      }
    }
  }

  /** The envelope as the edits left it. */
  result(): Envelope {
    return { from: this.from, rcpts: this.slots.filter((r) => r !== undefined) }
  }

  private add(key: string, r: EnvelopeAddress): void {
    const at = this.index.get(key)
    if (at) at.push(this.slots.length)
    else this.index.set(key, [this.slots.length])
    this.slots.push(r)
    this.live++
  }
}

/** Applies the edits in order; returns a new envelope. */
export function applyEnvelopeEdits(env: Envelope, edits: readonly EnvelopeEdit[]): Envelope {
  const editor = new EnvelopeEditor(env)
  for (const e of edits) editor.apply(e)
  return editor.result()
}
