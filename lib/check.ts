/**
 * `haraka-milter check`: run one message through one milter, all stages in
 * order, and report what it did. The operator's answer to "what does this
 * milter do to this mail?".
 */
import * as os from 'node:os'
import { DEFAULT_MACROS } from './config'
import { isMilterError } from './errors'
import { applyEnvelopeEdits, type Envelope } from './message/envelope'
import {
  applyHeaderEdits,
  formatHeaderBlock,
  parseMessage,
  type HeaderField,
} from './message/headers'
import { sortModifications } from './message/modifications'
import {
  formatPacket,
  modificationReport,
  packetReport,
  stagesFromPackets,
  type ModificationReport,
  type PacketReport,
  type StagePacketsReport,
} from './packet-report'
import {
  actionNames,
  hex,
  MacroStage,
  MACRO_STAGE_NAMES,
  protocolNames,
  Proto,
} from './protocol/constants'
import type { Frame } from './protocol/frame'
import { formatSmtpReply, parseReplyCode, type SmtpReply } from './protocol/replycode'
import { sendContent } from './session/content'
import { canonicalMacroName, type MacroLookup } from './session/macros'
import { openSession } from './session/open'
import type { EomResult, MilterSession, Verdict } from './session/session'
import { connectAddressFor, parseSocketSpec } from './transport'

/** Options of one check run. */
export interface CheckOptions {
  milter: string
  message: Buffer
  from: string
  rcpts: string[]
  clientIp: string
  clientName: string
  helo: string
  macros: Record<string, string>
  protocol: number
  timeoutMs: number
  trace: boolean
}

/** One stage's outcome, as the text report shows it. */
export interface StageReport {
  stage: string
  verdict: string
  reply?: string[]
}

/** The options in force, for the report. */
export interface NegotiatedReport {
  version: number
  actions: string[]
  protocol: string[]
  actionsHex: string
  protocolHex: string
  macrosRequested: Record<string, string[]>
}

/** Everything a check run found. */
export interface CheckReport {
  milter: string
  negotiated?: NegotiatedReport
  /** Each stage's verdict, for the text report. */
  stages: StageReport[]
  /** Each command sent with its macros and the reply it got, from the packets. */
  exchange: StagePacketsReport[]
  /** The end-of-message modifications in order; a replaced body last, as one entry. */
  modifications: ModificationReport[]
  verdict: 'accept' | 'reject' | 'tempfail' | 'discard' | 'shutdown' | 'error'
  /** The SMTP reply lines an MTA would send for the verdict. */
  reply?: string[]
  quarantine?: string
  envelope?: { from: string; rcpts: string[] }
  error?: { code: string; message: string }
  /** Every packet both ways (--trace). */
  trace?: PacketReport[]
  /** The message as the milter's edits leave it (CRLF). */
  output?: Buffer
}

/** The --json document: every field as data, none preformatted. */
export interface CheckJson {
  milter: string
  verdict: CheckReport['verdict']
  /** The SMTP reply for the verdict: code, and each line's enhanced code and text. */
  reply?: SmtpReply
  negotiated?: NegotiatedReport
  stages: StagePacketsReport[]
  modifications: ModificationReport[]
  quarantine?: string
  envelope?: { from: string; rcpts: string[] }
  error?: { code: string; message: string }
  trace?: PacketReport[]
  outputBytes?: number
}

function describe(v: Verdict): StageReport['verdict'] {
  return v.kind === 'replycode' ? `replycode ${v.reply.code}` : v.kind
}

function stageReport(stage: string, v: Verdict): StageReport {
  return v.kind === 'replycode'
    ? { stage, verdict: describe(v), reply: formatSmtpReply(v.reply) }
    : { stage, verdict: describe(v) }
}

/** Is this verdict the end of the message (or of the connection)? */
function final(v: Verdict): boolean {
  return v.kind !== 'continue' && v.kind !== 'accept' && v.kind !== 'skip'
}

function settle(report: CheckReport, v: Verdict): void {
  switch (v.kind) {
    case 'reject':
      report.verdict = 'reject'
      report.reply = ['550 5.7.1 Command rejected']
      break
    case 'tempfail':
      report.verdict = 'tempfail'
      report.reply = ['451 4.7.1 Service unavailable - try again later']
      break
    case 'replycode':
      report.verdict = v.reply.code >= 500 ? 'reject' : 'tempfail'
      report.reply = formatSmtpReply(v.reply)
      break
    case 'discard':
      report.verdict = 'discard'
      break
    case 'shutdown':
    case 'conn_fail':
      report.verdict = 'shutdown'
      report.reply = ['421 4.7.0 Server closing connection']
      break
    default:
      report.verdict = 'accept'
  }
}

function bracket(a: string): string {
  return a.startsWith('<') ? a : `<${a}>`
}

/** Macro values for each stage, from the options. */
function macroLookup(opts: CheckOptions, extra: Record<string, string>): MacroLookup {
  const base: Record<string, string> = {
    j: os.hostname(),
    '{daemon_name}': 'haraka-milter',
    '{daemon_addr}': '127.0.0.1',
    v: 'haraka-milter check',
    _: `${opts.clientName} [${opts.clientIp}]`,
    i: 'CHECK0000001',
    '{client_addr}': opts.clientIp,
    '{client_name}': opts.clientName,
    '{client_ptr}': opts.clientName,
    '{client_port}': '0',
    '{mail_addr}': opts.from.replace(/^<|>$/g, ''),
    '{mail_mailer}': 'smtp',
    '{mail_host}': opts.from.replace(/^<|>$/g, '').split('@')[1] ?? '',
  }
  const all = { ...base, ...extra }
  for (const [k, v] of Object.entries(opts.macros)) all[canonicalMacroName(k)] = v
  return (name) => all[name]
}

async function envelopeStages(
  s: MilterSession,
  opts: CheckOptions,
  report: CheckReport,
): Promise<string[] | undefined> {
  const macros = macroLookup(opts, {})
  const steps: Array<[string, () => Promise<Verdict>]> = [
    ['connect', () => s.connect(opts.clientName, connectAddressFor(opts.clientIp, 0), macros)],
    ['helo', () => s.helo(opts.helo, macros)],
    ['mail', () => s.mail([bracket(opts.from)], macros)],
  ]
  for (const [stage, run] of steps) {
    const v = await run()
    report.stages.push(stageReport(stage, v))
    if (final(v)) return (settle(report, v), undefined)
  }
  const accepted: string[] = []
  for (const rcpt of opts.rcpts) {
    const addr = rcpt.replace(/^<|>$/g, '')
    const v = await s.rcpt(
      [bracket(rcpt)],
      macroLookup(opts, {
        '{rcpt_addr}': addr,
        '{rcpt_host}': addr.split('@')[1] ?? '',
        '{rcpt_mailer}': 'smtp',
      }),
    )
    report.stages.push(stageReport(`rcpt ${bracket(rcpt)}`, v))
    if (v.kind === 'discard' || v.kind === 'shutdown' || v.kind === 'conn_fail')
      return (settle(report, v), undefined)
    if (v.kind === 'continue' || v.kind === 'accept') accepted.push(addr)
    if (v.kind === 'accept') break
  }
  if (accepted.length === 0) {
    report.verdict = 'reject'
    report.reply = ['554 5.5.1 No valid recipients']
    return undefined
  }
  const d = await s.data(macros)
  report.stages.push(stageReport('data', d))
  if (final(d)) return (settle(report, d), undefined)
  return accepted
}

function negotiatedReport(s: MilterSession): NegotiatedReport {
  const n = s.negotiated
  const macrosRequested: Record<string, string[]> = {}
  for (const [stage, names] of n.symlist) macrosRequested[MACRO_STAGE_NAMES[stage]] = names
  return {
    version: n.version,
    actions: actionNames(n.actions),
    protocol: protocolNames(n.protocol),
    actionsHex: hex(n.actions),
    protocolHex: hex(n.protocol),
    macrosRequested,
  }
}

function buildOutput(
  headers: HeaderField[],
  body: Buffer,
  eom: EomResult,
  leadspc: boolean,
  report: CheckReport,
  env: Envelope,
): void {
  const sorted = sortModifications(eom.modifications)
  const newHeaders = applyHeaderEdits(headers, sorted.headerEdits, leadspc)
  const newEnv = applyEnvelopeEdits(env, sorted.envelopeEdits)
  if (sorted.quarantine !== undefined) report.quarantine = sorted.quarantine
  report.envelope = {
    from: `<${newEnv.from.address}>`,
    rcpts: newEnv.rcpts.map((r) => `<${r.address}>`),
  }
  const newBody = eom.bodyReplaced ? (eom.replacementBody ?? Buffer.alloc(0)) : body
  report.output = Buffer.concat([
    Buffer.from(formatHeaderBlock(newHeaders), 'utf8'),
    Buffer.from('\r\n'),
    newBody,
  ])
}

/** Runs the check; never throws (errors land in the report with verdict 'error'). */
export async function runCheck(opts: CheckOptions): Promise<CheckReport> {
  const report: CheckReport = {
    milter: opts.milter,
    stages: [],
    exchange: [],
    modifications: [],
    verdict: 'error',
  }
  const packets: Array<{ dir: 'send' | 'recv'; frame: Frame }> = []
  let session: MilterSession | undefined
  try {
    const spec = parseSocketSpec(opts.milter)
    session = await openSession(spec, {
      name: opts.milter,
      version: opts.protocol,
      timeouts: { connectMs: opts.timeoutMs, commandMs: opts.timeoutMs, contentMs: opts.timeoutMs },
      macros: new Map([
        ...DEFAULT_MACROS,
        [
          MacroStage.CONNECT,
          [...(DEFAULT_MACROS.get(MacroStage.CONNECT) ?? []), ...Object.keys(opts.macros)],
        ],
      ]),
      observer: { trace: (dir, frame) => packets.push({ dir, frame }) },
    })
    report.negotiated = negotiatedReport(session)
    const rcpts = await envelopeStages(session, opts, report)
    if (!rcpts) return report
    const { headers, body } = parseMessage(opts.message, 'utf8')
    const eom = await sendContent(session, {
      headers: headers.map((h) => ({ name: h.name, value: Buffer.from(h.value, 'utf8') })),
      body: [body],
      eomMacros: macroLookup(opts, {}),
    })
    report.stages.push(stageReport('eom', eom.verdict))
    report.modifications = eom.modifications.map(modificationReport)
    if (eom.bodyReplaced)
      report.modifications.push({ kind: 'replbody', bytes: eom.replacementBody?.length ?? 0 })
    settle(report, eom.verdict)
    const leadspc = (session.negotiated.protocol & Proto.HDR_LEADSPC) !== 0
    if (report.verdict === 'accept' || report.verdict === 'discard') {
      buildOutput(headers, body, eom, leadspc, report, {
        from: { address: opts.from.replace(/^<|>$/g, '') },
        rcpts: rcpts.map((address) => ({ address })),
      })
    }
    return report
  } catch (e) {
    report.verdict = 'error'
    report.error = isMilterError(e)
      ? { code: e.code, message: e.message }
      : { code: 'ERROR', message: e instanceof Error ? e.message : String(e) }
    return report
  } finally {
    session?.quit()
    report.exchange = stagesFromPackets(packets)
    if (opts.trace) report.trace = packets.map(({ dir, frame }) => packetReport(dir, frame))
  }
}

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
export function describeModificationReport(m: ModificationReport): string {
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
    out.push(`${s.stage}: ${s.verdict}`)
    for (const line of s.reply ?? []) out.push(`  ${line}`)
  }
  if (r.modifications.length > 0) {
    out.push('modifications:')
    for (const m of r.modifications) out.push(`  ${describeModificationReport(m)}`)
  }
  if (r.quarantine !== undefined) out.push(`quarantine: ${r.quarantine}`)
  if (r.envelope) out.push(`envelope: from ${r.envelope.from} to ${r.envelope.rcpts.join(' ')}`)
  if (r.error) out.push(`error: ${r.error.code}: ${r.error.message}`)
  out.push(`verdict: ${r.verdict}${r.reply ? ` (${r.reply.join(' / ')})` : ''}`)
  return out.join('\n') + '\n'
}
