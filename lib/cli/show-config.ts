/**
 * `haraka-milter config`: the effective configuration of a milter.ini after
 * defaults, every warning and error the plugin would log, and (--probe)
 * each endpoint's option negotiation, without sending mail. Like `postfix
 * check` or `nginx -t`: exit 1 on an error (or an endpoint that failed its
 * probe), else 0.
 */
import type { ListenerDef, MilterConfig, MilterDef } from '../config'
import { isMilterError } from '../errors'
import { openMilter } from '../pool'
import { MACRO_STAGE_NAMES } from '../protocol/constants'
import { DEFAULT_LIMITS } from '../session/limits'
import type { Endpoint } from '../transport/spec'
import { negotiatedReport, type NegotiatedReport } from './check'
import type { LoadedConfig } from './config-file'

/** One listener's selection (the entry named `*` is every other listen address). */
export interface ListenerView {
  name: string
  listen: string[]
  milters: string[]
  /** True when the section has no `milters` key and runs [main]'s default_milters. */
  inherited: boolean
  sourceChannel: string
}

/** One milter after defaults. */
export interface MilterView {
  name: string
  endpoints: string[]
  balance: string
  tls:
    false | { ca: boolean; clientCert: boolean; servername?: string; rejectUnauthorized: boolean }
  protocol: number
  defaultAction: string
  failureScope: string
  mode: string
  timeouts: { connect: number; command: number; content: number; eom: number }
  headerFolds: string
  debug: number
  breaker: { failures: number; backoff: number; backoffMax: number }
  macros: Record<string, string[]>
  conditions: Record<string, unknown>
  recipientRules: { destinationChannels: string[]; optin: string[] }
  /** The max_* limits by their milter.ini keys, then any setting this view does not know by name. */
  limits: Record<string, unknown>
}

/** One endpoint's probe. */
export interface ProbeResult {
  milter: string
  endpoint: string
  ok: boolean
  negotiated?: NegotiatedReport
  error?: { code: string; message: string }
}

/** The --json document. */
export interface ConfigView {
  file: string
  ok: boolean
  error?: string
  warnings: string[]
  listeners: ListenerView[]
  milters: MilterView[]
  /** [main], [quarantine] and [metrics] settings, by key. */
  sections?: Record<string, Record<string, string | number | boolean>>
  probes?: ProbeResult[]
}

/** The MilterDef fields this view shows by name; any other is shown under limits. */
const SHOWN = new Set<string>([
  'name',
  'socketText',
  'endpoints',
  'balance',
  'tls',
  'protocol',
  'defaultAction',
  'timeouts',
  'macros',
  'destinationChannels',
  'optin',
  'headerFolds',
  'failureScope',
  'debug',
  'breaker',
  'mode',
  'skip',
])

const seconds = (ms: number | undefined): number => (ms ?? 0) / 1000

function listenText(l: ListenerDef['listen'][number]): string {
  const ip = l.ip === undefined ? '' : l.ip.includes(':') ? `[${l.ip}]` : l.ip
  return `${ip}:${l.port}`
}

function milterView(d: MilterDef): MilterView {
  const macros: Record<string, string[]> = {}
  for (const [stage, names] of d.macros) macros[MACRO_STAGE_NAMES[stage]] = [...names]
  const conditions: Record<string, unknown> = {}
  const s = d.skip
  if (s) {
    if (s.authenticated) conditions['skip_authenticated'] = true
    if (s.relaying) conditions['skip_relaying'] = true
    if (s.privateClients) conditions['skip_private_clients'] = true
    if (s.clients.length) conditions['skip_clients'] = s.clients.map((n) => n.text)
    if (s.senderDomains.length) conditions['skip_sender_domains'] = s.senderDomains
    if (s.recipientDomains.length) conditions['skip_recipient_domains'] = s.recipientDomains
    if (s.largerThan !== undefined) conditions['skip_larger_than'] = s.largerThan
  }
  const l = d.limits ?? DEFAULT_LIMITS
  const limits: Record<string, unknown> = {
    max_modifications: l.maxModifications,
    max_added_headers: l.maxAddedHeaders,
    max_header_bytes: l.maxHeaderBytes,
    max_replacement_body: l.maxReplacementBody ?? "Haraka's connection.ini [max] bytes",
    max_macro_names: l.maxMacroNames,
    max_macro_names_total: l.maxMacroNamesTotal,
  }
  for (const [k, v] of Object.entries(d)) if (!SHOWN.has(k) && k !== 'limits') limits[k] = v
  return {
    name: d.name,
    endpoints: d.endpoints.map((e) => e.text),
    balance: d.balance ?? 'failover',
    tls: d.tls
      ? {
          ca: d.tls.ca !== undefined,
          clientCert: d.tls.cert !== undefined,
          ...(d.tls.servername !== undefined ? { servername: d.tls.servername } : {}),
          rejectUnauthorized: d.tls.rejectUnauthorized,
        }
      : false,
    protocol: d.protocol,
    defaultAction: d.defaultAction,
    failureScope: d.failureScope,
    mode: d.mode ?? 'enforce',
    timeouts: {
      connect: seconds(d.timeouts.connectMs),
      command: seconds(d.timeouts.commandMs),
      content: seconds(d.timeouts.contentMs),
      eom: seconds(d.timeouts.eomMs),
    },
    headerFolds: d.headerFolds,
    debug: d.debug ?? 0,
    breaker: {
      failures: d.breaker.failures,
      backoff: seconds(d.breaker.backoffMs),
      backoffMax: seconds(d.breaker.backoffMaxMs),
    },
    macros,
    conditions,
    recipientRules: { destinationChannels: d.destinationChannels, optin: d.optin },
    limits,
  }
}

/** The sections of settings for the whole plugin, by their milter.ini names. */
function mainView(cfg: MilterConfig): Record<string, Record<string, string | number | boolean>> {
  return {
    main: {
      reply_code: cfg.replyCode,
      discard: cfg.discard,
      reuse_connections: cfg.reuseConnections,
      daemon_name: cfg.daemonName,
      mixed_recipients: cfg.mixedRecipients,
    },
    quarantine: {
      action: cfg.quarantine.action,
      dir: cfg.quarantine.dir,
      tag_header: cfg.quarantine.tagHeader,
      hold_reply: cfg.quarantine.holdReply,
    },
    metrics: {
      listen: cfg.metrics.listen?.text ?? 'none',
      summary_interval: cfg.metrics.summaryIntervalMs / 1000,
    },
  }
}

/** The effective configuration of a loaded file. */
export function configView(loaded: LoadedConfig): ConfigView {
  const cfg = loaded.cfg
  const view: ConfigView = {
    file: loaded.file,
    ok: loaded.error === undefined,
    ...(loaded.error !== undefined ? { error: loaded.error } : {}),
    warnings: loaded.warnings,
    listeners: [],
    milters: [],
  }
  if (!cfg) return view
  view.listeners = [
    ...cfg.listeners.map((l) => ({
      name: l.name,
      listen: l.listen.map(listenText),
      milters: l.milters,
      inherited: l.miltersFrom === 'main',
      sourceChannel: l.sourceChannel,
    })),
    {
      name: '*',
      listen: [],
      milters: cfg.defaultMilters,
      inherited: false,
      sourceChannel: cfg.defaultSourceChannel,
    },
  ]
  view.milters = [...cfg.milters.values()].map(milterView)
  view.sections = mainView(cfg)
  return view
}

/** Opens, negotiates and quits one endpoint. */
async function probeOne(def: MilterDef, ep: Endpoint): Promise<ProbeResult> {
  try {
    const s = await openMilter(def, ep)
    const negotiated = negotiatedReport(s)
    s.quit()
    return { milter: def.name, endpoint: ep.text, ok: true, negotiated }
  } catch (e) {
    return {
      milter: def.name,
      endpoint: ep.text,
      ok: false,
      error: isMilterError(e)
        ? { code: e.code, message: e.message }
        : { code: 'ERROR', message: e instanceof Error ? e.message : String(e) },
    }
  }
}

/** --probe: every endpoint of every milter, in turn. */
export async function probeAll(cfg: MilterConfig): Promise<ProbeResult[]> {
  const out: ProbeResult[] = []
  for (const def of cfg.milters.values())
    for (const ep of def.endpoints) out.push(await probeOne(def, ep))
  return out
}

/** 1 when the file has an error or an endpoint failed its probe, else 0. */
export function configExitCode(v: ConfigView): number {
  return !v.ok || (v.probes ?? []).some((p) => !p.ok) ? 1 : 0
}

const list = (xs: readonly string[]): string => (xs.length ? xs.join(', ') : '(none)')

/** The human-readable report. */
export function formatConfigView(v: ConfigView): string {
  const out: string[] = []
  out.push(`${v.file}: ${v.ok ? 'ok' : 'error'}`)
  if (v.ok) {
    for (const l of v.listeners) {
      const where = l.name === '*' ? '* (any other address)' : `${l.name} (${l.listen.join(' ')})`
      const from = l.inherited ? ' (inherited from [main])' : ''
      out.push(
        `listener ${where}: milters ${list(l.milters)}${from}; source_channel ${l.sourceChannel}`,
      )
    }
    if (v.milters.length === 0) out.push('milters: (none)')
    for (const m of v.milters) {
      const t = m.timeouts
      out.push(`milter ${m.name}:`)
      out.push(
        `  endpoints: ${m.endpoints.join(', ')}${m.endpoints.length > 1 ? ` (${m.balance})` : ''}`,
      )
      if (m.tls)
        out.push(
          `  tls: on; ca ${m.tls.ca ? 'configured' : "Node's"}; client certificate ${m.tls.clientCert ? 'yes' : 'no'}${m.tls.servername ? `; servername ${m.tls.servername}` : ''}${m.tls.rejectUnauthorized ? '' : '; any certificate accepted'}`,
        )
      else out.push('  tls: off')
      out.push(`  protocol: ${m.protocol}; mode: ${m.mode}`)
      out.push(`  default_action: ${m.defaultAction}; failure_scope: ${m.failureScope}`)
      out.push(
        `  timeouts: connect ${t.connect}s, command ${t.command}s, content ${t.content}s, eom ${t.eom}s`,
      )
      out.push(
        `  breaker: ${m.breaker.failures ? `${m.breaker.failures} failures, backoff ${m.breaker.backoff}s to ${m.breaker.backoffMax}s` : 'off'}`,
      )
      out.push(`  header_folds: ${m.headerFolds}; debug: ${m.debug}`)
      for (const [stage, names] of Object.entries(m.macros))
        out.push(`  macros at ${stage}: ${names.join(' ')}`)
      const conds = Object.entries(m.conditions)
      out.push(
        `  conditions: ${conds.length ? conds.map(([k, x]) => `${k} ${Array.isArray(x) ? x.join(',') : JSON.stringify(x)}`).join('; ') : 'none (always contacted)'}`,
      )
      const r = m.recipientRules
      if (r.destinationChannels.length || r.optin.length)
        out.push(
          `  recipient rules: destination_channels ${list(r.destinationChannels)}; optin ${list(r.optin)}`,
        )
      out.push(
        `  limits: ${Object.entries(m.limits)
          .map(([k, x]) => `${k} ${typeof x === 'string' ? x : JSON.stringify(x)}`)
          .join('; ')}`,
      )
    }
    for (const [name, keys] of Object.entries(v.sections ?? {}))
      out.push(
        `[${name}] ${Object.entries(keys)
          .map(([k, x]) => `${k} ${String(x)}`)
          .join('; ')}`,
      )
  }
  for (const p of v.probes ?? []) {
    if (!p.ok) {
      out.push(`probe ${p.milter} ${p.endpoint}: FAILED ${p.error?.code}: ${p.error?.message}`)
      continue
    }
    const n = p.negotiated
    if (!n) continue
    out.push(
      `probe ${p.milter} ${p.endpoint}: ok, version ${n.version}, actions ${n.actionsHex} [${n.actions.join(' ')}], protocol ${n.protocolHex} [${n.protocol.join(' ')}]`,
    )
    for (const [stage, names] of Object.entries(n.macrosRequested))
      out.push(`  macros requested at ${stage}: ${names.join(' ')}`)
  }
  for (const w of v.warnings) out.push(`warning: ${w}`)
  if (v.error !== undefined) out.push(`error: ${v.error}`)
  return out.join('\n') + '\n'
}
