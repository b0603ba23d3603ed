/**
 * milter.ini -> a validated MilterConfig (takes the parsed ini object; the
 * only I/O is reading the TLS PEM files a milter names, so that a missing
 * or unreadable file is a configuration error, not a failure per message).
 * Every error names the file, section and key.
 *
 * Why this file is longer than the others: it reads every section of
 * milter.ini ([main], [macros], [milter.*], [listener.*], [quarantine],
 * [destination_channel], [optin]) with one Reader, so each key's default,
 * range and error wording stay in one place; the table of known keys and
 * the warnings about unknown ones are in config-lint.ts.
 */
import * as fs from 'node:fs'

import { lintMilterIni } from './config-lint'
import { MilterConfigError } from './errors'
import type { HeaderFolds } from './message/headers'
import { MacroStage } from './protocol/constants'
import { DEFAULT_LIMITS, type Limits } from './session/limits'
import { canonicalMacroName, DEFAULT_MACROS, type MacroLists } from './session/macros'

import type { Timeouts } from './session/types'
import { ipFamily, isLoopbackIp, parseNetwork, type Network } from './transport/address'
import { parseSocketList, type Endpoint, type SocketSpec, type TlsSettings } from './transport/spec'

/** What to do when a milter cannot be used (unreachable, timeout, protocol error). */
export type DefaultAction = 'accept' | 'tempfail' | 'reject' | 'quarantine' | 'shutdown'

/** How a session picks among a milter's endpoints. */
export type Balance = 'failover' | 'round_robin'

/** One milter. */
export interface MilterDef {
  name: string
  /** The `socket =` value as configured (one endpoint, or the list). */
  socketText: string
  /** The first endpoint (what a single-endpoint milter always used). */
  socket: SocketSpec
  /**
   * Every endpoint, in the configured order, and each one's text (same
   * order). Absent in hand-built definitions: then `socket` alone.
   */
  endpoints?: SocketSpec[]
  endpointTexts?: string[]
  /** failover (default): endpoints in order; round_robin: the first one rotates per session. */
  balance?: Balance
  /** TLS over TCP to every endpoint; absent: plain TCP (or unix). */
  tls?: TlsSettings
  protocol: number
  defaultAction: DefaultAction
  timeouts: Timeouts
  macros: MacroLists
  /** Recipient rules (per-recipient filtering): enabled only for these channels / opt-in values. */
  destinationChannels: string[]
  optin: string[]
  /** Header values from this milter: one line (flatten) or proper folds kept (keep). */
  headerFolds: HeaderFolds
  /** How long a failure's default_action lasts: the message in flight, or the SMTP session. */
  failureScope: FailureScope
  /** Debug output, read when a line would be logged (a reload changes it at once); absent: 0. */
  debug?: DebugLevel
  /** Fail-fast after consecutive connect failures: threshold and back-off. */
  breaker: BreakerSettings
  /** `shadow`: consulted at every stage, nothing it says or fails is enforced. Absent: enforce. */
  mode?: MilterMode
  /** When not to contact the milter at all (absent: always). */
  skip?: SkipRules
  /** Bounds on what it may send and ask for (the max_* keys); absent: DEFAULT_LIMITS. */
  limits?: Limits
}

/** Whether a milter's verdicts and edits count (enforce) or are only logged and counted (shadow). */
export type MilterMode = 'enforce' | 'shadow'

/**
 * Conditions under which a milter is not contacted, checked before it
 * would be (lib/policy/conditions.ts): for the connection (client address),
 * for a message (AUTH, relaying, sender domain, size) or for a recipient
 * (its domain).
 */
export interface SkipRules {
  /** The client authenticated (SMTP AUTH). */
  authenticated: boolean
  /** The session relays (Haraka's connection.relaying: AUTH, relay ACL...). */
  relaying: boolean
  /** The client address is private, loopback or link-local (haraka-net-utils is_private_ip). */
  privateClients: boolean
  /** The client address is in one of these networks. */
  clients: Network[]
  /** The envelope sender's domain is one of these (`.example.com`: any subdomain). */
  senderDomains: string[]
  /** A recipient's domain is one of these: the milter is not asked about that recipient. */
  recipientDomains: string[]
  /** The message is larger than this many bytes (SIZE= at MAIL, else the size received). */
  largerThan: number | undefined
}

/** 0 off; 1 one line per stage (verdict, ms); 2 also every packet both ways, decoded. */
export type DebugLevel = 0 | 1 | 2

/** `message`: a failed milter is reopened for the next transaction; `session`: Postfix's sticky failure. */
export type FailureScope = 'message' | 'session'

/** Circuit breaker settings of one milter endpoint. */
export interface BreakerSettings {
  /** Consecutive connect failures that open the breaker; 0 disables it. */
  failures: number
  /** First back-off before a probe, doubled after each failed probe up to backoffMaxMs. */
  backoffMs: number
  backoffMaxMs: number
}

/** One listener's selection. */
export interface ListenerDef {
  name: string
  listen: Array<{ ip: string | undefined; port: number }>
  /** The milters that run, in order: the section's `milters`, else `[main]`'s default_milters. */
  milters: string[]
  /** Where `milters` came from: the section's own key, or inherited from [main]. */
  miltersFrom: 'listener' | 'main'
  sourceChannel: string
}

/** The whole plugin configuration. */
export interface MilterConfig {
  milters: ReadonlyMap<string, MilterDef>
  defaultMilters: string[]
  defaultSourceChannel: string
  listeners: ListenerDef[]
  replyCode: 'milter' | 'enhanced_only'
  discard: 'drop' | 'quarantine'
  quarantine: { action: 'hold' | 'tag' | 'reject'; dir: string; tagHeader: string }
  reuseConnections: boolean
  daemonName: string
  mixedRecipients: 'defer' | 'union'
  destinationChannel: { local: string; relay: string; domains: ReadonlyMap<string, string> }
  optin: {
    default: string | undefined
    addresses: ReadonlyMap<string, string>
    domains: ReadonlyMap<string, string>
  }
  /** [metrics]: the Prometheus endpoint (none when absent) and the summary line's period (0: off). */
  metrics: MetricsSettings
  /** Mistakes that are not errors (unknown keys or sections, unlisted milters), one line each. */
  warnings: string[]
}

/** [metrics] of milter.ini. */
export interface MetricsSettings {
  listen?: { host: string; port: number; text: string }
  summaryIntervalMs: number
}

/** A parsed ini file: sections of key -> value. */
export type Ini = Record<string, Record<string, unknown> | undefined>

const STAGE_KEYS: ReadonlyArray<[string, MacroStage]> = [
  ['connect', MacroStage.CONNECT],
  ['helo', MacroStage.HELO],
  ['mail', MacroStage.ENVFROM],
  ['rcpt', MacroStage.ENVRCPT],
  ['data', MacroStage.DATA],
  ['eoh', MacroStage.EOH],
  ['eom', MacroStage.EOM],
]

const FOLDS = ['flatten', 'keep'] as const
const BALANCES = ['failover', 'round_robin'] as const
const SCOPES = ['message', 'session'] as const
const MODES = ['enforce', 'shadow'] as const

const DEFAULT_ACTIONS: readonly DefaultAction[] = [
  'accept',
  'tempfail',
  'reject',
  'quarantine',
  'shutdown',
]

class Reader {
  constructor(
    private readonly file: string,
    private readonly section: string,
    private readonly values: Record<string, unknown>,
  ) {}

  err(key: string, msg: string): MilterConfigError {
    return new MilterConfigError(`${this.file} [${this.section}] ${key}: ${msg}`)
  }

  has(key: string): boolean {
    return this.values[key] !== undefined && this.values[key] !== ''
  }

  str(key: string, dflt: string): string {
    const v = this.values[key]
    if (v === undefined || v === '') return dflt
    if (typeof v !== 'string' && typeof v !== 'number')
      throw this.err(key, 'must be a single value')
    return String(v).trim()
  }

  list(key: string, dflt: string[]): string[] {
    if (!this.has(key)) return dflt
    return this.str(key, '')
      .split(/[\s,]+/)
      .filter(Boolean)
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], dflt: T): T {
    const v = this.str(key, dflt).toLowerCase()
    if (!(allowed as readonly string[]).includes(v))
      throw this.err(key, `must be one of ${allowed.join(', ')}, not "${v}"`)
    return v as T
  }

  seconds(key: string, dflt: number): number {
    const raw = this.str(key, String(dflt))
    const n = Number(raw.replace(/s$/, ''))
    if (!Number.isFinite(n) || n <= 0 || n > 3600)
      throw this.err(key, `must be a number of seconds (0 < n <= 3600), not "${raw}"`)
    return Math.round(n * 1000)
  }

  int(key: string, dflt: number, min: number, max: number): number {
    const raw = this.str(key, String(dflt))
    const n = Number(raw)
    if (!Number.isInteger(n) || n < min || n > max)
      throw this.err(key, `must be an integer from ${min} to ${max}, not "${raw}"`)
    return n
  }

  /** A size in bytes: `10485760`, `512K`, `10M`, `1G` (powers of 1024). */
  bytes(key: string): number | undefined {
    if (!this.has(key)) return undefined
    const raw = this.str(key, '')
    const m = /^([0-9]+)\s*([kmg]?)b?$/i.exec(raw)
    const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m?.[2] ?? '').toLowerCase()]
    const n = m && unit !== undefined ? Number(m[1]) * unit : NaN
    if (!Number.isSafeInteger(n) || n <= 0)
      throw this.err(key, `must be a size in bytes (e.g. 10485760, 512K, 10M), not "${raw}"`)
    return n
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.values[key]
    if (v === undefined || v === '') return dflt
    if (typeof v === 'boolean') return v
    if (typeof v !== 'string' && typeof v !== 'number') throw this.err(key, 'must be true or false')
    const s = String(v).toLowerCase()
    if (['true', 'yes', 'on', '1', 'enabled'].includes(s)) return true
    if (['false', 'no', 'off', '0', 'disabled'].includes(s)) return false
    throw this.err(key, `must be true or false, not "${s}"`)
  }

  /** `macros.connect = j {daemon_name}` style keys, over a base. */
  macros(prefix: string, base: MacroLists): MacroLists {
    const out = new Map(base)
    for (const [key, stage] of STAGE_KEYS) {
      const k = `${prefix}${key}`
      if (this.values[k] === undefined) continue
      const names = this.list(k, [])
      for (const n of names) {
        if (!/^(\{[A-Za-z0-9_]+\}|[A-Za-z0-9_]+)$/.test(n))
          throw this.err(k, `invalid macro name "${n}"`)
      }
      out.set(stage, names.map(canonicalMacroName))
    }
    return out
  }
}

function section(ini: Ini, name: string): Record<string, unknown> {
  return ini[name] ?? {}
}

function parseListen(
  r: Reader,
  key: string,
  text: string,
): Array<{ ip: string | undefined; port: number }> {
  return text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((item) => {
      const m = /^(?:\[([^\]]+)\]|([^:[\]]*))?:([0-9]{1,5})$/.exec(item)
      if (!m) throw r.err(key, `"${item}" is not IP:PORT, [IPV6]:PORT or :PORT`)
      const ip = m[1] ?? m[2]
      const port = Number(m[3])
      if (port < 1 || port > 65535) throw r.err(key, `port ${port} out of range`)
      return { ip: ip === '' || ip === '*' || ip === undefined ? undefined : ip, port }
    })
}

function parseMilter(
  file: string,
  ini: Ini,
  name: string,
  main: Reader,
  macros: MacroLists,
): MilterDef {
  const sec = `milter.${name}`
  if (!ini[sec]) throw main.err('milters', `lists "${name}" but there is no [${sec}] section`)
  const r = new Reader(file, sec, section(ini, sec))
  const socketText = r.str('socket', '')
  if (socketText === '')
    throw r.err('socket', 'is required (e.g. inet:8891@127.0.0.1 or unix:/run/milter.sock)')
  let endpoints: Endpoint[]
  try {
    endpoints = parseSocketList(socketText)
  } catch (e) {
    throw r.err('socket', e instanceof Error ? e.message : String(e))
  }
  const first = endpoints[0]
  if (first === undefined) throw r.err('socket', 'is required')
  const tls = tlsOf(r, main, endpoints)
  return {
    name,
    socketText: endpoints.map((e) => e.text).join(', '),
    socket: first.spec,
    endpoints: endpoints.map((e) => e.spec),
    endpointTexts: endpoints.map((e) => e.text),
    balance: r.oneOf('balance', BALANCES, main.oneOf('balance', BALANCES, 'failover')),
    ...(tls ? { tls } : {}),
    protocol: r.int('protocol', main.int('protocol', 6, 2, 6), 2, 6),
    defaultAction: r.oneOf(
      'default_action',
      DEFAULT_ACTIONS,
      main.oneOf('default_action', DEFAULT_ACTIONS, 'tempfail'),
    ),
    timeouts: {
      connectMs: r.seconds('connect_timeout', main.seconds('connect_timeout', 10) / 1000),
      commandMs: r.seconds('command_timeout', main.seconds('command_timeout', 30) / 1000),
      contentMs: r.seconds('content_timeout', main.seconds('content_timeout', 300) / 1000),
      eomMs: r.seconds('eom_timeout', main.seconds('eom_timeout', 300) / 1000),
    },
    failureScope: r.oneOf('failure_scope', SCOPES, main.oneOf('failure_scope', SCOPES, 'message')),
    breaker: breakerOf(r, main),
    debug: r.int('debug', main.int('debug', 0, 0, 2), 0, 2) as DebugLevel,
    macros: r.macros('macros.', macros),
    headerFolds: r.oneOf('header_folds', FOLDS, main.oneOf('header_folds', FOLDS, 'flatten')),
    destinationChannels: r.list('destination_channels', []),
    optin: r.list('optin', []),
    ...(r.has('mode') ? { mode: r.oneOf('mode', MODES, 'enforce') } : {}),
    ...skipOf(r, main),
    limits: limitsOf(r, main),
  }
}

/** The max_* keys of a milter, each defaulting to [main]'s. */
function limitsOf(r: Reader, main: Reader): Limits {
  const from = (key: string): Reader => (r.has(key) ? r : main)
  const count = (key: string, dflt: number, max: number): number => from(key).int(key, dflt, 1, max)
  const size = (key: string, dflt: number | undefined): number | undefined =>
    from(key).bytes(key) ?? dflt
  const d = DEFAULT_LIMITS
  return {
    maxModifications: count('max_modifications', d.maxModifications, 10_000_000),
    maxAddedHeaders: count('max_added_headers', d.maxAddedHeaders, 1_000_000),
    maxHeaderBytes: size('max_header_bytes', d.maxHeaderBytes) ?? d.maxHeaderBytes,
    maxReplacementBody: size('max_replacement_body', d.maxReplacementBody),
    maxMacroNames: count('max_macro_names', d.maxMacroNames, 100_000),
    maxMacroNamesTotal: count('max_macro_names_total', d.maxMacroNamesTotal, 1_000_000),
  }
}

/** A domain list: lower case, without a trailing dot; `.example.com` keeps its leading dot. */
function domains(r: Reader, key: string): string[] {
  const out = r.list(key, []).map((d) => d.toLowerCase().replace(/\.$/, ''))
  for (const d of out)
    if (!/^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(d))
      throw r.err(key, `"${d}" is not a domain (or .domain for its subdomains)`)
  return out
}

/** The skip_* keys of a milter (each defaulting to [main]'s); nothing when none is set. */
function skipOf(r: Reader, main: Reader): { skip?: SkipRules } {
  const from = (key: string): Reader => (r.has(key) ? r : main)
  const clients = from('skip_clients')
    .list('skip_clients', [])
    .map((text) => {
      const n = parseNetwork(text)
      if (!n)
        throw from('skip_clients').err(
          'skip_clients',
          `"${text}" is not an address or CIDR network`,
        )
      return n
    })
  const skip: SkipRules = {
    authenticated: from('skip_authenticated').bool('skip_authenticated', false),
    relaying: from('skip_relaying').bool('skip_relaying', false),
    privateClients: from('skip_private_clients').bool('skip_private_clients', false),
    clients,
    senderDomains: domains(from('skip_sender_domains'), 'skip_sender_domains'),
    recipientDomains: domains(from('skip_recipient_domains'), 'skip_recipient_domains'),
    largerThan: from('skip_larger_than').bytes('skip_larger_than'),
  }
  const any =
    skip.authenticated ||
    skip.relaying ||
    skip.privateClients ||
    skip.clients.length > 0 ||
    skip.senderDomains.length > 0 ||
    skip.recipientDomains.length > 0 ||
    skip.largerThan !== undefined
  return any ? { skip } : {}
}

/** The TLS keys that mean nothing without `tls = true` (so are an error then). */
const TLS_KEYS = ['tls_ca', 'tls_cert', 'tls_key', 'tls_servername']

/** A PEM file named by `key`, read now; errors name the section, key and file. */
function pemFile(r: Reader, key: string, path: string, kind: RegExp, what: string): string {
  let text: string
  try {
    text = fs.readFileSync(path, 'utf8')
  } catch (e) {
    throw r.err(key, `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`)
  }
  if (!kind.test(text)) throw r.err(key, `${path} holds no PEM ${what}`)
  return text
}

function tlsOf(r: Reader, main: Reader, endpoints: readonly Endpoint[]): TlsSettings | undefined {
  /** The reader a key comes from: the milter's section, else [main]. */
  const from = (key: string): Reader => (r.has(key) ? r : main)
  const on = from('tls').bool('tls', false)
  if (!on) {
    for (const k of TLS_KEYS)
      if (r.has(k)) throw r.err(k, 'is set but tls is not true (set tls = true to use TLS)')
    return undefined
  }
  const unix = endpoints.find((e) => e.spec.kind === 'unix')
  if (unix) throw r.err('tls', `TLS needs TCP endpoints, not "${unix.text}"`)
  const out: TlsSettings = {
    rejectUnauthorized: from('tls_reject_unauthorized').bool('tls_reject_unauthorized', true),
  }
  const read = (key: string, kind: RegExp, what: string): string | undefined => {
    const rd = from(key)
    const path = rd.str(key, '')
    return path === '' ? undefined : pemFile(rd, key, path, kind, what)
  }
  const ca = read('tls_ca', /-----BEGIN [A-Z0-9 ]*CERTIFICATE-----/, 'certificate')
  const cert = read('tls_cert', /-----BEGIN [A-Z0-9 ]*CERTIFICATE-----/, 'certificate')
  const key = read('tls_key', /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/, 'private key')
  if ((cert === undefined) !== (key === undefined))
    throw r.err(
      key === undefined ? 'tls_key' : 'tls_cert',
      'is missing: tls_cert and tls_key go together',
    )
  if (ca !== undefined) out.ca = ca
  if (cert !== undefined && key !== undefined) {
    out.cert = cert
    out.key = key
  }
  const servername = r.str('tls_servername', '')
  if (servername !== '') {
    if (ipFamily(servername) !== 0)
      throw r.err('tls_servername', `must be a host name, not an IP address ("${servername}")`)
    out.servername = servername
  }
  return out
}

function breakerOf(r: Reader, main: Reader): BreakerSettings {
  const failures = r.int('breaker_failures', main.int('breaker_failures', 3, 0, 1000), 0, 1000)
  const backoffMs = r.seconds('breaker_backoff', main.seconds('breaker_backoff', 5) / 1000)
  const backoffMaxMs = r.seconds(
    'breaker_backoff_max',
    main.seconds('breaker_backoff_max', 60) / 1000,
  )
  if (backoffMaxMs < backoffMs)
    throw r.err('breaker_backoff_max', `must not be less than breaker_backoff`)
  return { failures, backoffMs, backoffMaxMs }
}

/**
 * The [listener.*] sections. A section without a `milters` key runs [main]'s
 * default_milters: adding a section only to set `source_channel` must not
 * switch filtering off. Only an explicit, empty `milters =` means "no milter
 * on this listener".
 */
function parseListeners(
  file: string,
  ini: Ini,
  known: ReadonlyMap<string, MilterDef>,
  defaultMilters: readonly string[],
): ListenerDef[] {
  const out: ListenerDef[] = []
  for (const sec of Object.keys(ini)) {
    if (!sec.startsWith('listener.')) continue
    const values = section(ini, sec)
    const r = new Reader(file, sec, values)
    const listenText = r.str('listen', '')
    if (listenText === '')
      throw r.err('listen', 'is required (e.g. 127.0.0.1:2525, [::1]:2525 or :587)')
    const own = values['milters'] !== undefined
    const milters = own ? r.list('milters', []) : [...defaultMilters]
    for (const m of milters)
      if (!known.has(m)) throw r.err('milters', `names "${m}", which has no [milter.${m}] section`)
    out.push({
      name: sec.slice('listener.'.length),
      listen: parseListen(r, 'listen', listenText),
      milters,
      miltersFrom: own ? 'listener' : 'main',
      sourceChannel: r.str('source_channel', sec.slice('listener.'.length)),
    })
  }
  return out
}

/** One line per listener (and the default) naming the milters that run there, for the startup log. */
export function describeListeners(cfg: MilterConfig): string[] {
  const list = (names: readonly string[]): string =>
    names.length === 0 ? 'no milters (unfiltered)' : `milters ${names.join(', ')}`
  const lines = cfg.listeners.map((l) => {
    const where = l.listen
      .map((x) => `${x.ip?.includes(':') ? `[${x.ip}]` : (x.ip ?? '*')}:${x.port}`)
      .join(', ')
    const from = l.miltersFrom === 'main' ? ' (inherited from [main])' : ''
    return `listener ${l.name} (${where}): ${list(l.milters)}${from}; source_channel ${l.sourceChannel}`
  })
  lines.push(
    `other listeners: ${list(cfg.defaultMilters)}; source_channel ${cfg.defaultSourceChannel}`,
  )
  return lines
}

function parseMap(
  file: string,
  ini: Ini,
  sec: string,
  skip: readonly string[],
): Map<string, string> {
  const out = new Map<string, string>()
  for (const [k, v] of Object.entries(section(ini, sec))) {
    if (skip.includes(k)) continue
    out.set(k.toLowerCase(), new Reader(file, sec, section(ini, sec)).str(k, String(v)))
  }
  return out
}

/** [metrics]; a listen address that is not loopback is allowed, with a warning. */
function metricsOf(file: string, ini: Ini, warnings: string[]): MetricsSettings {
  const r = new Reader(file, 'metrics', section(ini, 'metrics'))
  const summaryIntervalMs = r.int('summary_interval', 0, 0, 86400) * 1000
  const text = r.str('listen', '')
  if (text === '') return { summaryIntervalMs }
  const [one, ...more] = parseListen(r, 'listen', text)
  if (!one || more.length > 0) throw r.err('listen', 'takes one address (e.g. 127.0.0.1:9145)')
  const host = one.ip ?? '0.0.0.0'
  if (host !== 'localhost' && ipFamily(host) === 0)
    throw r.err('listen', `"${host}" is not an IP address`)
  if (host !== 'localhost' && !isLoopbackIp(host))
    warnings.push(
      `${file} [metrics] listen: ${text} is not a loopback address: anyone who can reach it reads the metrics`,
    )
  return { listen: { host, port: one.port, text }, summaryIntervalMs }
}

/** Validates milter.ini; throws MilterConfigError naming file, section and key. */
export function parseMilterConfig(ini: Ini, file = 'milter.ini'): MilterConfig {
  const main = new Reader(file, 'main', section(ini, 'main'))
  const macros = new Reader(file, 'macros', section(ini, 'macros')).macros('', DEFAULT_MACROS)
  const names = main.list('milters', [])
  const milters = new Map<string, MilterDef>()
  for (const name of names) {
    if (!/^[A-Za-z0-9_-]+$/.test(name)) throw main.err('milters', `invalid milter name "${name}"`)
    if (milters.has(name)) throw main.err('milters', `lists "${name}" twice`)
    milters.set(name, parseMilter(file, ini, name, main, macros))
  }
  const q = new Reader(file, 'quarantine', section(ini, 'quarantine'))
  const dc = new Reader(file, 'destination_channel', section(ini, 'destination_channel'))
  const opt = new Reader(file, 'optin', section(ini, 'optin'))
  const optinEntries = parseMap(file, ini, 'optin', ['default'])
  const warnings = lintMilterIni(ini, file, names)
  const metrics = metricsOf(file, ini, warnings)
  const defaultMilters = main.list('default_milters', names)
  for (const m of defaultMilters) {
    if (!milters.has(m))
      throw main.err('default_milters', `names "${m}", which has no [milter.${m}] section`)
  }
  return {
    milters,
    defaultMilters,
    defaultSourceChannel: main.str('source_channel', 'tcp_local'),
    listeners: parseListeners(file, ini, milters, defaultMilters),
    replyCode: main.oneOf('reply_code', ['milter', 'enhanced_only'] as const, 'milter'),
    discard: main.oneOf('discard', ['drop', 'quarantine'] as const, 'drop'),
    quarantine: {
      action: q.oneOf('action', ['hold', 'tag', 'reject'] as const, 'hold'),
      dir: q.str('dir', '/var/spool/haraka/milter-quarantine'),
      tagHeader: q.str('tag_header', 'X-Milter-Quarantine'),
    },
    reuseConnections: main.bool('reuse_connections', false),
    daemonName: main.str('daemon_name', 'Haraka'),
    mixedRecipients: main.oneOf('mixed_recipients', ['defer', 'union'] as const, 'defer'),
    destinationChannel: {
      local: dc.str('local', 'local'),
      relay: dc.str('relay', 'relay'),
      domains: parseMap(file, ini, 'destination_channel', ['local', 'relay']),
    },
    optin: {
      default: opt.has('default') ? opt.str('default', '') : undefined,
      addresses: new Map([...optinEntries].filter(([k]) => k.includes('@'))),
      domains: new Map([...optinEntries].filter(([k]) => !k.includes('@'))),
    },
    metrics,
    warnings,
  }
}

/** The listener a local address belongs to, if any (exact IP first, then port-only). */
export function findListener(cfg: MilterConfig, ip: string, port: number): ListenerDef | undefined {
  const norm = (a: string): string => a.replace(/^::ffff:/i, '').toLowerCase()
  const exact = cfg.listeners.find((l) =>
    l.listen.some((x) => x.port === port && x.ip !== undefined && norm(x.ip) === norm(ip)),
  )
  return (
    exact ?? cfg.listeners.find((l) => l.listen.some((x) => x.port === port && x.ip === undefined))
  )
}
