/**
 * The header block as a milter sees and edits it (milter-protocol.md §3.6, §8). Pure code,
 * shared by the Haraka adapter and the CLI.
 *
 * - CHGHEADER counts only the headers sent to the milter (the MTA's own
 *   trace header is hidden), by case-insensitive name, from 1; 0 means 1;
 *   an index past the end appends, unless the value is empty (a no-op).
 * - INSHEADER is a 0-based position among all headers as delivered,
 *   including the hidden trace header; past the end appends.
 * - Each index is resolved against the list as the earlier edits of the
 *   same answer left it (Postfix semantics).
 * - Every value a milter sends is flattened onto one line: runs of CR/LF
 *   (with the whitespace after them) become one space, NUL is removed. A
 *   milter can neither inject a header nor break the message. Any other
 *   control character but HTAB (0x01-0x08, 0x0B, 0x0C, 0x0E-0x1F, 0x7F)
 *   makes the edit invalid.
 * - Every line stays within RFC 5322's 998 octets: a long value is folded at
 *   its spaces; a word that cannot be folded that short, or a value over
 *   64 KiB, makes the edit invalid (the milter fails, all or none).
 * - Bytes are kept: a value in UTF-8 goes out as sent (RFC 6532); a word
 *   that is not UTF-8 (raw 8-bit in another charset), which Haraka's header
 *   store (UTF-8 text) cannot hold, becomes RFC 2047 encoded-words in the
 *   charset `unknown-8bit` (RFC 1428), from which every byte is recoverable.
 */
import { OrderTree, type OrderNode } from './order-tree'

/** One header field: its name and everything after the colon, raw. */
export interface HeaderField {
  name: string
  /** The value after the colon, with its leading whitespace and folds (LF or CRLF). */
  value: string
  /** The MTA's own trace header: never sent to milters, counted by INSHEADER. */
  hidden?: boolean
}

/** Header edits, as decoded from the milter (names and values as text). */
export type HeaderEdit =
  | { kind: 'addheader'; name: string; value: string }
  | { kind: 'insheader'; index: number; name: string; value: string }
  | { kind: 'chgheader'; index: number; name: string; value: string }

/** Why an edit cannot be applied. */
export class HeaderEditError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'HeaderEditError'
  }
}

/** RFC 5322 field name: printable US-ASCII except colon. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/

/** Checks a header name a milter sent. */
export function checkHeaderName(name: string): void {
  if (!FIELD_NAME.test(name)) {
    const shown = JSON.stringify(name.slice(0, 60))
    throw new HeaderEditError(`invalid header name ${shown} from milter`)
  }
}

/** Largest header value a milter may set (bytes). */
const MAX_HEADER_VALUE = 64 * 1024

const UTF8 = new TextDecoder('utf-8', { fatal: true })

function utf8OrUndefined(b: Buffer): string | undefined {
  try {
    return UTF8.decode(b)
  } catch {
    return undefined
  }
}

/** Encoded-words of at most 75 characters: `=?unknown-8bit?B?` + 56 base64 characters + `?=`. */
function encodedWords(word: Buffer): string {
  const out: string[] = []
  for (let i = 0; i < word.length; i += 42) {
    out.push(`=?unknown-8bit?B?${word.subarray(i, i + 42).toString('base64')}?=`)
  }
  return out.join(' ')
}

/**
 * A header value as a milter sent it (bytes) -> text: UTF-8 as is; each
 * whitespace-separated word that is not valid UTF-8 becomes encoded-words.
 */
export function headerValueText(b: Buffer): string {
  const whole = utf8OrUndefined(b)
  if (whole !== undefined) return whole
  const parts: string[] = []
  let start = 0
  const flush = (end: number): void => {
    if (end <= start) return
    const word = b.subarray(start, end)
    parts.push(utf8OrUndefined(word) ?? encodedWords(word))
  }
  for (let i = 0; i < b.length; i++) {
    const c = b[i]
    if (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) {
      flush(i)
      parts.push(String.fromCharCode(c))
      start = i + 1
    }
  }
  flush(b.length)
  return parts.join('')
}

/** Flattens a milter's header value onto one line and removes NUL and stray CR. */
export function flattenHeaderValue(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\r\n]+[ \t]*/g, ' ').replace(/\x00/g, '')
}

/**
 * Control characters a header value may not carry: all of C0 and DEL but
 * HTAB, CR and LF (flattened or kept as folds) and NUL (removed).
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]/

/**
 * The stored form of a value the milter sent: flattened, and with one space
 * after the colon unless the milter negotiated HDR_LEADSPC (milter-protocol.md §8.3).
 */
export function milterValueToField(
  value: string,
  leadingSpace: boolean,
  nameLength = 0,
  folds: HeaderFolds = 'flatten',
): string {
  if (Buffer.byteLength(value) > MAX_HEADER_VALUE) {
    throw new HeaderEditError(
      `a ${Buffer.byteLength(value)}-byte header value exceeds the limit of ${MAX_HEADER_VALUE}`,
    )
  }
  const control = CONTROL.exec(value)
  if (control) {
    const code = (control[0].codePointAt(0) ?? 0).toString(16).padStart(2, '0')
    throw new HeaderEditError(`header value with control character 0x${code} refused`)
  }
  if (folds === 'keep') {
    const kept = keepFolds(value)
    const lines = (leadingSpace ? kept : ` ${kept}`).split('\n')
    return lines.map((l, i) => foldLongValue(l, i === 0 ? nameLength + 1 : 0)).join('\n')
  }
  const flat = flattenHeaderValue(value)
  return foldLongValue(leadingSpace ? flat : ` ${flat}`, nameLength + 1)
}

/**
 * `flatten` (the default, as the seed does): every value on one line.
 * `keep`: a line break followed by a space or tab stays a fold (what the
 * milter signed, e.g. a DKIM-Signature under simple header
 * canonicalization); any other line break still becomes a space.
 */
export type HeaderFolds = 'flatten' | 'keep'

/**
 * Keeps proper folds (stored with LF, as Haraka stores parsed headers);
 * neutralises the rest. A continuation line of only whitespace (which some
 * parsers take for the end of the header block) is removed.
 */
export function keepFolds(value: string): string {
  return (
    value
      // eslint-disable-next-line no-control-regex
      .replace(/\x00/g, '')
      .replace(/(?:\r\n|\r|\n)+(?=[ \t])/g, '\n')
      .replace(/[\r\n]+[ \t]*/g, (m) => (m.startsWith('\n') && /[ \t]$/.test(m) ? m : ' '))
      .replace(/\n(?![ \t])/g, ' ')
      .replace(/\n[ \t]*(?=\n|$)/g, '')
  )
}

/** RFC 5322 2.1.1: a line must not exceed 998 characters. */
const MAX_LINE = 998

/**
 * A flattened value whose line would exceed 998 octets is folded at
 * spaces (CRLF + the space), lines kept near 78 characters. Each
 * continuation starts with whitespace and holds a word, so no header can be
 * injected and no line is whitespace only. A word (with the blanks before
 * it) too long to fit in 998 octets cannot be folded: HeaderEditError.
 */
function foldLongValue(value: string, prefix: number): string {
  if (prefix + Buffer.byteLength(value) <= MAX_LINE) return value
  const out: string[] = []
  let line = ''
  let width = prefix
  // Each piece is a run of blanks with the word after it: a fold goes before the run,
  // never inside it, so no continuation line is blanks only (which some parsers take for
  // the end of the header block). Trailing blanks stay on the last line.
  for (const word of value.split(/(?<=[^ \t])(?=[ \t])/)) {
    if (line !== '' && width + word.length > 78 && /[^ \t]/.test(word)) {
      out.push(line)
      line = ''
      width = 0
    }
    line += word
    width += word.length
  }
  out.push(line)
  for (const [i, l] of out.entries()) {
    const octets = Buffer.byteLength(l) + (i === 0 ? prefix : 0)
    if (octets > MAX_LINE) {
      throw new HeaderEditError(
        `a header line of ${octets} octets has no space to fold at; RFC 5322 allows 998`,
      )
    }
  }
  return out.join('\r\n')
}

/** One header in the editor: the field, and its node among the visible headers of its name. */
interface Entry {
  field: HeaderField
  named?: OrderNode<OrderNode<Entry>>
}

/**
 * Applies header edits one at a time against an index built once: all
 * headers in order (INSHEADER's positions) and, per lower-cased name, the
 * visible ones in order (CHGHEADER's n-th). Each edit costs O(log² n), so
 * an answer of any size and mix costs O(n log² n) in all; the result is the
 * same as applying the edits to the plain list in order (Postfix semantics).
 */
export class HeaderEditor {
  private readonly all = new OrderTree<Entry>()
  private readonly byName = new Map<string, OrderTree<OrderNode<Entry>>>()

  constructor(
    input: readonly HeaderField[],
    private readonly leadingSpace: boolean,
    private readonly folds: HeaderFolds = 'flatten',
  ) {
    for (const f of input) this.append({ ...f })
  }

  /** Number of header fields now. */
  get size(): number {
    return this.all.size
  }

  /** Applies one edit; throws HeaderEditError for an invalid one (nothing changed then). */
  apply(e: HeaderEdit): void {
    checkHeaderName(e.name)
    const value = milterValueToField(e.value, this.leadingSpace, e.name.length, this.folds)
    switch (e.kind) {
      case 'addheader':
        this.append({ name: e.name, value })
        break
      case 'insheader': {
        const at = Math.min(Math.max(0, e.index), this.all.size)
        const entry: Entry = { field: { name: e.name, value } }
        const node = this.all.insertAt(at, entry)
        const named = this.named(e.name)
        const rank = named.countWhile((n) => this.all.indexOf(n) < at)
        entry.named = named.insertAt(rank, node)
        break
      }
      case 'chgheader': {
        const named = this.byName.get(e.name.toLowerCase())
        const target = named?.at(Math.max(1, e.index) - 1)
        const deleting = e.value === ''
        if (!named || !target) {
          if (!deleting) this.append({ name: e.name, value })
        } else if (deleting) {
          this.all.remove(target.value)
          named.remove(target)
        } else {
          target.value.value.field = { name: e.name, value }
        }
        break
      }
    }
  }

  /** The header list as the edits left it. */
  result(): HeaderField[] {
    return this.all.values().map((e) => e.field)
  }

  private named(name: string): OrderTree<OrderNode<Entry>> {
    const key = name.toLowerCase()
    let t = this.byName.get(key)
    if (!t) {
      t = new OrderTree<OrderNode<Entry>>()
      this.byName.set(key, t)
    }
    return t
  }

  private append(field: HeaderField): void {
    const entry: Entry = { field }
    const node = this.all.push(entry)
    if (!field.hidden) entry.named = this.named(field.name).push(node)
  }
}

/** Applies the edits in order and returns the new list (the input is not changed). */
export function applyHeaderEdits(
  input: readonly HeaderField[],
  edits: readonly HeaderEdit[],
  leadingSpace: boolean,
  folds: HeaderFolds = 'flatten',
): HeaderField[] {
  const editor = new HeaderEditor(input, leadingSpace, folds)
  for (const e of edits) editor.apply(e)
  return editor.result()
}

/** `Name:value` lines joined with CRLF, folds normalised to CRLF (for output). */
export function formatHeaderBlock(fields: readonly HeaderField[]): string {
  return fields.map((f) => `${f.name}:${f.value.replace(/\r?\n/g, '\r\n')}\r\n`).join('')
}

/** Splits a raw message into header fields and body (CRLF or LF line ends). */
export function parseMessage(
  raw: Buffer,
  encoding: 'latin1' | 'utf8' = 'latin1',
): { headers: HeaderField[]; body: Buffer } {
  let end = -1
  let sepLen = 0
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 0x0a) continue
    if (i === 0 || (i === 1 && raw[0] === 0x0d)) {
      end = 0
      sepLen = i + 1
      break
    }
    if (raw[i + 1] === 0x0a) {
      end = i + 1
      sepLen = 1
      break
    }
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) {
      end = i + 1
      sepLen = 2
      break
    }
  }
  const headerText = (end < 0 ? raw : raw.subarray(0, end)).toString(encoding)
  const body = end < 0 ? Buffer.alloc(0) : raw.subarray(end + sepLen)
  const headers: HeaderField[] = []
  for (const line of headerText.split(/(?<=\n)/)) {
    if (line === '') continue
    const last = headers[headers.length - 1]
    if ((line.startsWith(' ') || line.startsWith('\t')) && last) {
      last.value += line
      continue
    }
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const name = line.slice(0, colon).trimEnd()
    // an mbox "From " line or other junk is not a header field
    if (!FIELD_NAME.test(name)) continue
    headers.push({ name, value: line.slice(colon + 1) })
  }
  for (const h of headers) h.value = h.value.replace(/\r?\n$/, '')
  return { headers, body: toCrlf(body) }
}

/** Bare LF -> CRLF, existing CRLF kept, bare CR kept (Sendmail's rule, milter-protocol.md §8.2). */
export function toCrlf(body: Buffer): Buffer {
  const parts: Buffer[] = []
  let start = 0
  let i = body.indexOf(0x0a)
  while (i >= 0) {
    if (i === 0 || body[i - 1] !== 0x0d) {
      parts.push(body.subarray(start, i), CRLF)
      start = i + 1
    }
    i = body.indexOf(0x0a, i + 1)
  }
  if (parts.length === 0) return body
  parts.push(body.subarray(start))
  return Buffer.concat(parts)
}

const CRLF = Buffer.from('\r\n')
