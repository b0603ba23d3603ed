/**
 * `haraka-milter check`: run one message through one milter, all stages in
 * order, and report what it did. The operator's answer to "what does this
 * milter do to this mail?".
 */
import * as os from 'node:os'
import type { MilterDef } from '../config'
import { isMilterError } from '../errors'
import { formatHeaderBlock, parseMessage, type HeaderField } from '../message/headers'
import {
  modificationReport,
  packetReport,
  stagesFromPackets,
  type ModificationReport,
  type PacketReport,
  type StagePacketsReport,
} from '../debug/packet-trace'
import { MilterChain, type MessageResult, type Outcome } from '../policy/chain'
import { answerAt, type ReplyCodeMode } from '../policy/smtp-replies'
import type { Stage } from '../policy/stage'
import {
  actionNames,
  hex,
  MacroStage,
  MACRO_STAGE_NAMES,
  protocolNames,
} from '../protocol/constants'
import type { Frame } from '../protocol/frame'
import { formatSmtpReply, type SmtpReply } from '../protocol/replycode'
import { canonicalMacroName, type MacroLookup } from '../session/macros'
import { openMilter } from '../pool'
import type { MilterSession, Verdict } from '../session/session'
import { connectAddressFor } from '../transport/address'

/** Options of one check run. */
export interface CheckOptions {
  /** How the report names the milter (its socket, or its name in milter.ini). */
  milter: string
  /** The milter as the configuration parser made it (from milter.ini, or from the flags). */
  def: MilterDef
  message: Buffer
  from: string
  rcpts: string[]
  clientIp: string
  clientName: string
  helo: string
  macros: Record<string, string>
  trace: boolean
  /** [main] reply_code of the configuration (default milter). */
  replyCode?: ReplyCodeMode
  /** [main] daemon_name, the {daemon_name} macro (default haraka-milter). */
  daemonName?: string
}

/** One stage's outcome, as the text report shows it. */
export interface StageReport {
  stage: Stage
  /** At rcpt: the recipient (`<a@b>`) the verdict is about. */
  recipient?: string
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
  error?: { code: string; message: string; defaultAction?: string }
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
  error?: { code: string; message: string; defaultAction?: string }
  trace?: PacketReport[]
  outputBytes?: number
}

function describe(v: Verdict): StageReport['verdict'] {
  return v.kind === 'replycode' ? `replycode ${v.reply.code}` : v.kind
}

function bracket(a: string): string {
  return a.startsWith('<') ? a : `<${a}>`
}

function bare(a: string): string {
  return a.replace(/^<|>$/g, '')
}

/** Macro values for each stage, from the options. */
function macroLookup(opts: CheckOptions, extra: Record<string, string>): MacroLookup {
  const from = bare(opts.from)
  const base: Record<string, string> = {
    j: os.hostname(),
    '{daemon_name}': opts.daemonName ?? 'haraka-milter',
    '{daemon_addr}': '127.0.0.1',
    v: 'haraka-milter check',
    _: `${opts.clientName} [${opts.clientIp}]`,
    i: 'CHECK0000001',
    '{client_addr}': opts.clientIp,
    '{client_name}': opts.clientName,
    '{client_ptr}': opts.clientName,
    '{client_port}': '0',
    '{mail_addr}': from,
    '{mail_mailer}': 'smtp',
    '{mail_host}': from.split('@')[1] ?? '',
  }
  const all = { ...base, ...extra }
  for (const [k, v] of Object.entries(opts.macros)) all[canonicalMacroName(k)] = v
  return (name) => all[name]
}

export function negotiatedReport(s: MilterSession): NegotiatedReport {
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

/** The milter with the --macro names added to what it is sent at CONNECT. */
function withMacros(opts: CheckOptions): MilterDef {
  const names = Object.keys(opts.macros).map(canonicalMacroName)
  if (names.length === 0) return opts.def
  const connect = opts.def.macros.get(MacroStage.CONNECT) ?? []
  return {
    ...opts.def,
    macros: new Map([...opts.def.macros, [MacroStage.CONNECT, [...connect, ...names]]]),
  }
}

/**
 * Whether a failure stops the check: not when the milter's default_action
 * (or shadow mode) lets the mail go on without it, as the plugin does.
 */
function stops(error: CheckReport['error']): boolean {
  return (
    error !== undefined &&
    error.defaultAction !== 'accept' &&
    error.defaultAction !== 'none (shadow)'
  )
}

/** Records what the client is told at `stage`; true when the transaction ends there. */
function answered(report: CheckReport, stage: Stage, o: Outcome, mode: ReplyCodeMode): boolean {
  const a = answerAt(stage, o, mode)
  switch (a.action) {
    case 'continue':
      return false
    case 'discard':
      report.verdict = 'discard'
      return false
    case 'reject':
    case 'tempfail':
    case 'shutdown':
      report.verdict = a.action
      report.reply = formatSmtpReply(a.reply)
      return true
  }
}

/**
 * Runs the check through the same MilterChain, reply policy and edit
 * application as the plugin; never throws (errors land in the report with
 * verdict 'error').
 */
export async function runCheck(opts: CheckOptions): Promise<CheckReport> {
  const report: CheckReport = {
    milter: opts.milter,
    stages: [],
    exchange: [],
    modifications: [],
    verdict: 'error',
  }
  const mode = opts.replyCode ?? 'milter'
  const packets: Array<{ dir: 'send' | 'recv'; frame: Frame }> = []
  let chain: MilterChain | undefined
  let result: MessageResult | undefined
  /** The recipient whose RCPT is in flight (the text report shows each RCPT's own). */
  let recipient: string | undefined
  try {
    const def = withMacros(opts)
    chain = new MilterChain({
      milters: [def],
      open: async (d) => {
        const s = await openMilter(d, undefined, {
          trace: (dir: 'send' | 'recv', frame: Frame) => packets.push({ dir, frame }),
        })
        report.negotiated = negotiatedReport(s)
        return s
      },
      onVerdict: (_m, stage, v) => {
        const s: StageReport = { stage, verdict: describe(v) }
        if (stage === 'rcpt' && recipient !== undefined) s.recipient = recipient
        if (v.kind === 'replycode') s.reply = formatSmtpReply(v.reply)
        report.stages.push(s)
      },
      onEvent: (e) => {
        if (e.failure && !report.error) {
          const { error, defaultAction } = e.failure
          report.error = { code: error.code, message: error.message, defaultAction }
        }
      },
    })
    const macros = macroLookup(opts, {})
    const ended = (stage: Stage, o: Outcome): boolean =>
      stops(report.error) || answered(report, stage, o, mode)
    report.verdict = 'accept'
    if (
      ended(
        'connect',
        await chain.connect(opts.clientName, connectAddressFor(opts.clientIp, 0), macros),
      )
    )
      return report
    if (ended('helo', await chain.helo(opts.helo, macros))) return report
    if (ended('mail', await chain.mail([bracket(opts.from)], macros))) return report
    const accepted: string[] = []
    /** The last recipient's refusal: what the client was told when none is left. */
    let refused: Outcome | undefined
    for (const rcpt of opts.rcpts) {
      const addr = bare(rcpt)
      recipient = bracket(rcpt)
      const o = await chain.rcpt(
        [bracket(rcpt)],
        macroLookup(opts, {
          '{rcpt_addr}': addr,
          '{rcpt_host}': addr.split('@')[1] ?? '',
          '{rcpt_mailer}': 'smtp',
        }),
      )
      recipient = undefined
      if (stops(report.error)) return report
      if (o.action === 'shutdown') return (answered(report, 'rcpt', o, mode), report)
      if (o.action === 'continue' || o.action === 'discard') accepted.push(addr)
      else refused = o // this recipient only
    }
    if (accepted.length === 0) {
      // Haraka answered each RCPT with its refusal and has no transaction to go on with:
      // the verdict is the last recipient's, with the reply the client got for it
      if (refused) answered(report, 'rcpt', refused, mode)
      return report
    }
    report.verdict = chain.discarded ? 'discard' : 'accept'
    delete report.reply
    if (ended('data', await chain.data(macros))) return report
    const parsed = parseMessage(opts.message, 'utf8')
    const body = parsed.body
    // The MTA's own trace header, as Haraka adds it: not shown to the milter, but INSHEADER
    // indexes count it (0 = above it), so the edits land where Haraka would put them.
    const trace: HeaderField = {
      name: 'Received',
      value: ` from ${opts.helo} (${opts.clientName} [${opts.clientIp}]) by haraka-milter check`,
      hidden: true,
    }
    const headers = [trace, ...parsed.headers]
    const msgId = headers.find((h) => h.name.toLowerCase() === 'message-id')?.value.trim()
    result = await chain.message({
      headers,
      envelope: {
        from: { address: bare(opts.from) },
        rcpts: accepted.map((address) => ({ address })),
      },
      body: () => once(body),
      eohMacros: macros,
      eomMacros: (n) => (n === '{msg_id}' ? msgId : macros(n)),
    })
    for (const e of result.edits)
      report.modifications.push(...e.modifications.map(modificationReport))
    if (result.body) report.modifications.push({ kind: 'replbody', bytes: result.body.bytes })
    if (ended('eom', result.outcome)) return report
    if (result.outcome.action === 'discard') report.verdict = 'discard'
    if (result.quarantine.length > 0) {
      // one milter here: its name (the socket) before each reason says nothing
      report.quarantine = result.quarantine
        .map((q) => (q.startsWith(`${def.name}: `) ? q.slice(def.name.length + 2) : q))
        .join('; ')
    }
    report.envelope = {
      from: `<${result.envelope.from.address}>`,
      rcpts: result.envelope.rcpts.map((r) => `<${r.address}>`),
    }
    const newBody = result.body ? await collect(result.body.lines()) : body
    report.output = Buffer.concat([
      Buffer.from(formatHeaderBlock(result.headers.filter((h) => !h.hidden)), 'utf8'),
      Buffer.from('\r\n'),
      newBody,
    ])
    return report
  } catch (e) {
    report.verdict = 'error'
    report.error = isMilterError(e)
      ? { code: e.code, message: e.message }
      : { code: 'ERROR', message: e instanceof Error ? e.message : String(e) }
    return report
  } finally {
    if (stops(report.error)) {
      report.verdict = 'error'
      delete report.reply
    }
    await result?.dispose()
    chain?.close()
    report.exchange = stagesFromPackets(packets)
    if (opts.trace) report.trace = packets.map(({ dir, frame }) => packetReport(dir, frame))
  }
}

/** One buffer as an async iterable (the content phase reads the body that way). */
function once(b: Buffer): AsyncIterable<Buffer> {
  return {
    [Symbol.asyncIterator]: () => {
      let done = false
      return {
        next: () => {
          const r: IteratorResult<Buffer> = done
            ? { done: true, value: undefined }
            : { done: false, value: b }
          done = true
          return Promise.resolve(r)
        },
      }
    },
  }
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const b of it) parts.push(b)
  return Buffer.concat(parts)
}
