/**
 * Turns the modifications of one end-of-message answer (bytes) into header
 * edits, envelope edits and a quarantine reason, keeping their order.
 */
import type { Modification } from '../protocol/replies'
import type { EnvelopeEdit } from './envelope'
import { headerValueText, type HeaderEdit } from './headers'

/** The modifications of one answer, by what they touch. */
export interface SortedModifications {
  headerEdits: HeaderEdit[]
  envelopeEdits: EnvelopeEdit[]
  /** The last QUARANTINE reason (one line, at most 200 characters). */
  quarantine?: string
}

/** Header values and addresses are UTF-8 (SMTPUTF8); invalid bytes become U+FFFD. */
function text(b: Buffer): string {
  return b.toString('utf8')
}

/** A quarantine reason made safe for logs and headers. */
export function cleanReason(b: Buffer): string {
  return (
    text(b)
      // eslint-disable-next-line no-control-regex
      .replace(/[\x00-\x1f\x7f]+/g, ' ')
      .trim()
      .slice(0, 200) || 'quarantined by milter'
  )
}

function optionalArgs(args: Buffer | undefined): { args: string } | Record<string, never> {
  return args === undefined ? {} : { args: text(args) }
}

/** Sorts modifications (body chunks are handled by the caller). */
export function sortModifications(mods: readonly Modification[]): SortedModifications {
  const out: SortedModifications = { headerEdits: [], envelopeEdits: [] }
  for (const m of mods) {
    switch (m.kind) {
      case 'addheader':
        out.headerEdits.push({
          kind: 'addheader',
          name: text(m.name),
          value: headerValueText(m.value),
        })
        break
      case 'insheader':
      case 'chgheader':
        out.headerEdits.push({
          kind: m.kind,
          index: m.index,
          name: text(m.name),
          value: headerValueText(m.value),
        })
        break
      case 'addrcpt':
        out.envelopeEdits.push({ kind: 'addrcpt', rcpt: text(m.rcpt) })
        break
      case 'addrcpt_par':
        out.envelopeEdits.push({ kind: 'addrcpt', rcpt: text(m.rcpt), ...optionalArgs(m.args) })
        break
      case 'delrcpt':
        out.envelopeEdits.push({ kind: 'delrcpt', rcpt: text(m.rcpt) })
        break
      case 'chgfrom':
        out.envelopeEdits.push({ kind: 'chgfrom', sender: text(m.sender), ...optionalArgs(m.args) })
        break
      case 'quarantine':
        out.quarantine = cleanReason(m.reason)
        break
      case 'replbody':
        break
    }
  }
  return out
}

/** One line per modification, for logs and the CLI. */
export function describeModification(m: Modification): string {
  switch (m.kind) {
    case 'addheader':
      return `add header ${text(m.name)}: ${JSON.stringify(text(m.value))}`
    case 'insheader':
      return `insert header at ${m.index} ${text(m.name)}: ${JSON.stringify(text(m.value))}`
    case 'chgheader':
      return m.value.length === 0
        ? `delete header ${text(m.name)} #${m.index}`
        : `change header ${text(m.name)} #${m.index}: ${JSON.stringify(text(m.value))}`
    case 'replbody':
      return `replace body chunk (${m.chunk.length} bytes)`
    case 'addrcpt':
      return `add recipient ${text(m.rcpt)}`
    case 'addrcpt_par':
      return `add recipient ${text(m.rcpt)}${m.args ? ` ${text(m.args)}` : ''}`
    case 'delrcpt':
      return `delete recipient ${text(m.rcpt)}`
    case 'chgfrom':
      return `change sender to ${text(m.sender)}${m.args ? ` ${text(m.args)}` : ''}`
    case 'quarantine':
      return `quarantine: ${cleanReason(m.reason)}`
  }
}
