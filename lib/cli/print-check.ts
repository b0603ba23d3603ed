/**
 * What `haraka-milter check` prints: the text report, the --json document,
 * and the exit status.
 */
import { parseReplyCode } from '../protocol/replycode'
import type { CheckJson, CheckReport } from './check'
import { formatPacket, type ModificationReport } from '../debug/packet-trace'

/** Exit status: 0 accepted (or discarded), 1 rejected or temp-failed, 2 error. */
export function exitCode(r: CheckReport): number {
  if (r.verdict === 'error') return 2
  return r.verdict === 'accept' || r.verdict === 'discard' ? 0 : 1
}

/** The --json document. */
export function jsonReport(r: CheckReport): CheckJson {
  const out: CheckJson = {
    milter: r.milter,
    verdict: r.verdict,
    stages: r.exchange,
    modifications: r.modifications,
  }
  if (r.reply) {
    const parsed = parseReplyCode(r.reply.join('\r\n'))
    if (parsed.ok) out.reply = parsed.reply
  }
  if (r.negotiated) out.negotiated = r.negotiated
  if (r.quarantine !== undefined) out.quarantine = r.quarantine
  if (r.envelope) out.envelope = r.envelope
  if (r.error) out.error = r.error
  if (r.trace) out.trace = r.trace
  if (r.output) out.outputBytes = r.output.length
  return out
}

/** One line per modification, for the text report. */
function describeModificationReport(m: ModificationReport): string {
  switch (m.kind) {
    case 'addheader':
      return `add header ${m.name}: ${JSON.stringify(m.value)}`
    case 'insheader':
      return `insert header at ${m.index} ${m.name}: ${JSON.stringify(m.value)}`
    case 'chgheader':
      return m.value === ''
        ? `delete header ${m.name} #${m.index}`
        : `change header ${m.name} #${m.index}: ${JSON.stringify(m.value)}`
    case 'addrcpt':
      return `add recipient ${m.rcpt}`
    case 'addrcpt_par':
      return `add recipient ${m.rcpt}${m.args !== undefined ? ` ${m.args}` : ''}`
    case 'delrcpt':
      return `delete recipient ${m.rcpt}`
    case 'chgfrom':
      return `change sender to ${m.sender}${m.args !== undefined ? ` ${m.args}` : ''}`
    case 'quarantine':
      return `quarantine: ${m.reason}`
    case 'replbody':
      return `replace body (${m.bytes} bytes)`
  }
}

/** The human-readable report. */
export function formatReport(r: CheckReport): string {
  const out: string[] = [`milter: ${r.milter}`]
  const n = r.negotiated
  if (n) {
    out.push(
      `negotiated: version ${n.version}, actions ${n.actionsHex} [${n.actions.join(' ')}], protocol ${n.protocolHex} [${n.protocol.join(' ')}]`,
    )
    for (const [stage, names] of Object.entries(n.macrosRequested))
      out.push(`  macros requested at ${stage}: ${names.join(' ')}`)
  }
  for (const p of r.trace ?? []) out.push(formatPacket(p))
  for (const s of r.stages) {
    out.push(`${s.recipient === undefined ? s.stage : `${s.stage} ${s.recipient}`}: ${s.verdict}`)
    for (const line of s.reply ?? []) out.push(`  ${line}`)
  }
  if (r.modifications.length > 0) {
    out.push('modifications:')
    for (const m of r.modifications) out.push(`  ${describeModificationReport(m)}`)
  }
  if (r.quarantine !== undefined) out.push(`quarantine: ${r.quarantine}`)
  if (r.envelope) out.push(`envelope: from ${r.envelope.from} to ${r.envelope.rcpts.join(' ')}`)
  if (r.error) {
    const then = r.error.defaultAction
    out.push(
      `error: ${r.error.code}: ${r.error.message}${then === undefined ? '' : ` (default_action=${then}${r.verdict === 'error' ? '' : ': the mail goes on without it'})`}`,
    )
  }
  out.push(`verdict: ${r.verdict}${r.reply ? ` (${r.reply.join(' / ')})` : ''}`)
  return out.join('\n') + '\n'
}
