/**
 * milter.ini -> a validated MilterConfig (takes the parsed ini object; the
 * only I/O is reading the TLS PEM files a milter names, so that a missing
 * or unreadable file is a configuration error, not a failure per message).
 * Every error names the file, section and key.
 *
 * Why this file is longer than the others: it reads every section of
 * milter.ini ([main], [macros], [milter.*], [listener.*], [quarantine],
 * [destination_channel], [optin]) with one Reader, which takes each key's
 * default, range and allowed values from the key table (config-keys.ts), so
 * the error wording stays in one place; the warnings about unknown keys are
 * in config-lint.ts.
 */
import * as fs from 'node:fs'

import { keyDef, sectionKind, type KeyDef, type SectionKind } from './config-keys'
import { lintMilterIni } from './config-lint'
import { MilterConfigError } from './errors'
import type { HeaderFolds } from './message/headers'
import { MacroStage } from './protocol/constants'
import { DEFAULT_LIMITS, type Limits } from './session/limits'
import { canonicalMacroName, DEFAULT_MACROS, type MacroLists } from './session/macros'

import type { Timeouts } from './session/types'
import { ipFamily, isLoopbackIp, parseNetwork, type Network } from './transport/address'
import { parseSocketList, type Endpoint, type TlsSettings } from './transport/spec'

/** What to do when a milter cannot be used (unreachable, timeout, protocol error). */
export type DefaultAction = 'accept' | 'tempfail' | 'reject' | 'quarantine' | 'shutdown'

/** How a session picks among a milter's endpoints. */
export type Balance = 'failover' | 'round_robin'

/** One milter. */
export interface MilterDef {
  name: string
  /** The `socket =` value as configured (one endpoint, or the list). */
  socketText: string
  /** Every endpoint, in the configured order (at least one): where, and as written. */
  endpoints: readonly Endpoint[]
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
  quarantine: {
    action: 'hold' | 'tag' | 'reject'
    dir: string
    tagHeader: string
    /** The text of the 250 for a held message. */
    holdReply: string
  }
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

/** One section's values, read through the key table: its defaults, ranges and allowed values. */
class Reader {
  constructor(
    private readonly file: string,
    private readonly section: string,
    private readonly kind: SectionKind,
    private readonly values: Record<string, unknown>,
  ) {}

  err(key: string, msg: string): MilterConfigError {
    return new MilterConfigError(`${this.file} [${this.section}] ${key}: ${msg}`)
  }

  /** The key's row; a key missing from the table is a programming error. */
  row(key: string): KeyDef {
    const row = keyDef(this.kind, key)
    if (!row) throw new Error(`config-keys.ts has no [${this.kind}] ${key}`)
    return row
  }

  has(key: string): boolean {
    return this.values[key] !== undefined && this.values[key] !== ''
  }

  /** The value as text: as set, else the table's default. */
  str(key: string): string {
    const v = this.values[key]
    if (v === undefined || v === '') return this.row(key).default
    if (typeof v !== 'string' && typeof v !== 'number')
      throw this.err(key, 'must be a single value')
    return String(v).trim()
  }

  list(key: string): string[] {
    return this.str(key)
      .split(/[\s,]+/)
      .filter(Boolean)
  }

  /** One of the row's values (T: the type that lists them). */
  oneOf<T extends string>(key: string): T {
    const allowed = this.row(key).values ?? []
    const v = this.str(key).toLowerCase()
    if (!allowed.includes(v))
      throw this.err(key, `must be one of ${allowed.join(', ')}, not "${v}"`)
    return v as T
  }

  /** Seconds, as milliseconds. */
  seconds(key: string): number {
    const raw = this.str(key)
    const n = Number(raw.replace(/s$/, ''))
    if (!Number.isFinite(n) || n <= 0 || n > 3600)
      throw this.err(key, `must be a number of seconds (0 < n <= 3600), not "${raw}"`)
    return Math.round(n * 1000)
  }

  int(key: string): number {
    const { min = 0, max = Number.MAX_SAFE_INTEGER } = this.row(key)
    const raw = this.str(key)
    const n = Number(raw)
    if (!Number.isInteger(n) || n < min || n > max)
      throw this.err(key, `must be an integer from ${min} to ${max}, not "${raw}"`)
    return n
  }

  /** A size in bytes: `10485760`, `512K`, `10M`, `1G` (powers of 1024); undefined when unset. */
  bytes(key: string): number | undefined {
    const raw = this.str(key)
    if (raw === '') return undefined
    const m = /^([0-9]+)\s*([kmg]?)b?$/i.exec(raw)
    const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m?.[2] ?? '').toLowerCase()]
    const n = m && unit !== undefined ? Number(m[1]) * unit : NaN
    if (!Number.isSafeInteger(n) || n <= 0)
      throw this.err(key, `must be a size in bytes (e.g. 10485760, 512K, 10M), not "${raw}"`)
    return n
  }

  bool(key: string): boolean {
    const v = this.values[key]
    if (typeof v === 'boolean') return v
    if (v !== undefined && typeof v !== 'string' && typeof v !== 'number')
      throw this.err(key, 'must be true or false')
    const s = this.str(key).toLowerCase()
    if (['true', 'yes', 'on', '1', 'enabled'].includes(s)) return true
    if (['false', 'no', 'off', '0', 'disabled'].includes(s)) return false
    throw this.err(key, `must be true or false, not "${s}"`)
  }

  /** `macros.connect = j {daemon_name}` style keys (prefix `macros.`, or none in [macros]), over a base. */
  macros(prefix: string, base: MacroLists): MacroLists {
    const out = new Map(base)
    for (const [key, stage] of STAGE_KEYS) {
      const k = `${prefix}${key}`
      if (this.values[k] === undefined) continue
      const names = this.list(k)
      for (const n of names) {
        if (!/^(\{[A-Za-z0-9_]+\}|[A-Za-z0-9_]+)$/.test(n))
          throw this.err(k, `invalid macro name "${n}"`)
      }
      out.set(stage, names.map(canonicalMacroName))
    }
    return out
  }
}

const STAGE_KEYS: ReadonlyArray<[string, MacroStage]> = [
  ['connect', MacroStage.CONNECT],
  ['helo', MacroStage.HELO],
  ['mail', MacroStage.ENVFROM],
  ['rcpt', MacroStage.ENVRCPT],
  ['data', MacroStage.DATA],
  ['eoh', MacroStage.EOH],
  ['eom', MacroStage.EOM],
]

/** A section's reader (the section kind from its name). */
function reader(file: string, ini: Ini, name: string): Reader {
  return new Reader(file, name, sectionKind(name) ?? 'main', ini[name] ?? {})
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

/**
 * One [milter.NAME] section. Each key [main] also takes is read from the
 * milter's section when set there, else from [main], else the table's
 * default.
 */
function parseMilter(
  file: string,
  ini: Ini,
  name: string,
  main: Reader,
  macros: MacroLists,
): MilterDef {
  const sec = `milter.${name}`
  if (!ini[sec]) throw main.err('milters', `lists "${name}" but there is no [${sec}] section`)
  const r = reader(file, ini, sec)
  /** The reader a key comes from: the milter's section, else [main] when [main] takes it. */
  const from = (key: string): Reader => (r.has(key) || !keyDef('main', key) ? r : main)
  const socketText = r.str('socket')
  if (socketText === '')
    throw r.err('socket', 'is required (e.g. inet:8891@127.0.0.1 or unix:/run/milter.sock)')
  let endpoints: Endpoint[]
  try {
    endpoints = parseSocketList(socketText)
  } catch (e) {
    throw r.err('socket', e instanceof Error ? e.message : String(e))
  }
  const tls = tlsOf(r, from, endpoints)
  return {
    name,
    socketText: endpoints.map((e) => e.text).join(', '),
    endpoints,
    balance: from('balance').oneOf<Balance>('balance'),
    ...(tls ? { tls } : {}),
    protocol: from('protocol').int('protocol'),
    defaultAction: from('default_action').oneOf<DefaultAction>('default_action'),
    timeouts: {
      connectMs: from('connect_timeout').seconds('connect_timeout'),
      commandMs: from('command_timeout').seconds('command_timeout'),
      contentMs: from('content_timeout').seconds('content_timeout'),
      eomMs: from('eom_timeout').seconds('eom_timeout'),
    },
    failureScope: from('failure_scope').oneOf<FailureScope>('failure_scope'),
    breaker: breakerOf(r, from),
    debug: from('debug').int('debug') as DebugLevel,
    macros: r.macros('macros.', macros),
    headerFolds: from('header_folds').oneOf<HeaderFolds>('header_folds'),
    destinationChannels: r.list('destination_channels'),
    optin: r.list('optin'),
    ...(r.has('mode') ? { mode: r.oneOf<MilterMode>('mode') } : {}),
    ...skipOf(from),
    limits: limitsOf(from),
  }
}

/** The max_* keys of a milter, each defaulting to [main]'s (config-keys.ts). */
function limitsOf(from: (key: string) => Reader): Limits {
  const d = DEFAULT_LIMITS
  return {
    maxModifications: from('max_modifications').int('max_modifications'),
    maxAddedHeaders: from('max_added_headers').int('max_added_headers'),
    maxHeaderBytes: from('max_header_bytes').bytes('max_header_bytes') ?? d.maxHeaderBytes,
    maxReplacementBody: from('max_replacement_body').bytes('max_replacement_body'),
    maxMacroNames: from('max_macro_names').int('max_macro_names'),
    maxMacroNamesTotal: from('max_macro_names_total').int('max_macro_names_total'),
  }
}

/** A domain list: lower case, without a trailing dot; `.example.com` keeps its leading dot. */
function domains(r: Reader, key: string): string[] {
  const out = r.list(key).map((d) => d.toLowerCase().replace(/\.$/, ''))
  for (const d of out)
    if (!/^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(d))
      throw r.err(key, `"${d}" is not a domain (or .domain for its subdomains)`)
  return out
}

/** The text of an SMTP reply line: printable ASCII, at most 400 characters (RFC 5321 4.5.3.1.5: 512 a line). */
function replyText(r: Reader, key: string): string {
  const v = r.str(key)
  if (!/^[\x20-\x7e]{1,400}$/.test(v))
    throw r.err(key, 'must be one line of printable ASCII, at most 400 characters')
  return v
}

/** The skip_* keys of a milter (each defaulting to [main]'s); nothing when none is set. */
function skipOf(from: (key: string) => Reader): { skip?: SkipRules } {
  const clients = from('skip_clients')
    .list('skip_clients')
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
    authenticated: from('skip_authenticated').bool('skip_authenticated'),
    relaying: from('skip_relaying').bool('skip_relaying'),
    privateClients: from('skip_private_clients').bool('skip_private_clients'),
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

function tlsOf(
  r: Reader,
  from: (key: string) => Reader,
  endpoints: readonly Endpoint[],
): TlsSettings | undefined {
  const on = from('tls').bool('tls')
  if (!on) {
    for (const k of TLS_KEYS)
      if (r.has(k)) throw r.err(k, 'is set but tls is not true (set tls = true to use TLS)')
    return undefined
  }
  const unix = endpoints.find((e) => e.spec.kind === 'unix')
  if (unix) throw r.err('tls', `TLS needs TCP endpoints, not "${unix.text}"`)
  const out: TlsSettings = {
    rejectUnauthorized: from('tls_reject_unauthorized').bool('tls_reject_unauthorized'),
  }
  const read = (key: string, kind: RegExp, what: string): string | undefined => {
    const rd = from(key)
    const path = rd.str(key)
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
  const servername = r.str('tls_servername')
  if (servername !== '') {
    if (ipFamily(servername) !== 0)
      throw r.err('tls_servername', `must be a host name, not an IP address ("${servername}")`)
    out.servername = servername
  }
  return out
}

function breakerOf(r: Reader, from: (key: string) => Reader): BreakerSettings {
  const failures = from('breaker_failures').int('breaker_failures')
  const backoffMs = from('breaker_backoff').seconds('breaker_backoff')
  const backoffMaxMs = from('breaker_backoff_max').seconds('breaker_backoff_max')
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
    const r = reader(file, ini, sec)
    const name = sec.slice('listener.'.length)
    const listenText = r.str('listen')
    if (listenText === '')
      throw r.err('listen', 'is required (e.g. 127.0.0.1:2525, [::1]:2525 or :587)')
    // no `milters` key: [main]'s; only an explicit empty `milters =` means none
    const own = ini[sec]?.['milters'] !== undefined
    const milters = own ? r.list('milters') : [...defaultMilters]
    for (const m of milters)
      if (!known.has(m)) throw r.err('milters', `names "${m}", which has no [milter.${m}] section`)
    out.push({
      name,
      listen: parseListen(r, 'listen', listenText),
      milters,
      miltersFrom: own ? 'listener' : 'main',
      sourceChannel: r.has('source_channel') ? r.str('source_channel') : name,
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

/** The data keys of [destination_channel] or [optin] (the keys the table does not declare). */
function parseMap(
  file: string,
  ini: Ini,
  sec: 'destination_channel' | 'optin',
): Map<string, string> {
  const out = new Map<string, string>()
  const r = reader(file, ini, sec)
  for (const k of Object.keys(ini[sec] ?? {})) {
    if (keyDef(sec, k)) continue
    const v = (ini[sec] ?? {})[k]
    if (typeof v !== 'string' && typeof v !== 'number') throw r.err(k, 'must be a single value')
    out.set(k.toLowerCase(), String(v).trim())
  }
  return out
}

/** [metrics]; a listen address that is not loopback is allowed, with a warning. */
function metricsOf(file: string, ini: Ini, warnings: string[]): MetricsSettings {
  const r = reader(file, ini, 'metrics')
  const summaryIntervalMs = r.int('summary_interval') * 1000
  const text = r.str('listen')
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

/**
 * The haraka-config options milter.ini is read with: the plugin passes them
 * to config.get, the CLI to lib/ini.ts, so both see the same values.
 */
export const INI_OPTIONS = { booleans: ['main.reuse_connections'] }

/** Validates milter.ini; throws MilterConfigError naming file, section and key. */
export function parseMilterConfig(ini: Ini, file = 'milter.ini'): MilterConfig {
  const main = reader(file, ini, 'main')
  const macros = reader(file, ini, 'macros').macros('', DEFAULT_MACROS)
  const names = main.list('milters')
  const milters = new Map<string, MilterDef>()
  for (const name of names) {
    if (!/^[A-Za-z0-9_-]+$/.test(name)) throw main.err('milters', `invalid milter name "${name}"`)
    if (milters.has(name)) throw main.err('milters', `lists "${name}" twice`)
    milters.set(name, parseMilter(file, ini, name, main, macros))
  }
  const q = reader(file, ini, 'quarantine')
  const dc = reader(file, ini, 'destination_channel')
  const opt = reader(file, ini, 'optin')
  const optinEntries = parseMap(file, ini, 'optin')
  const warnings = lintMilterIni(ini, file, names)
  const metrics = metricsOf(file, ini, warnings)
  const defaultMilters = main.has('default_milters') ? main.list('default_milters') : names
  for (const m of defaultMilters) {
    if (!milters.has(m))
      throw main.err('default_milters', `names "${m}", which has no [milter.${m}] section`)
  }
  return {
    milters,
    defaultMilters,
    defaultSourceChannel: main.str('source_channel'),
    listeners: parseListeners(file, ini, milters, defaultMilters),
    replyCode: main.oneOf<MilterConfig['replyCode']>('reply_code'),
    discard: main.oneOf<MilterConfig['discard']>('discard'),
    quarantine: {
      action: q.oneOf<MilterConfig['quarantine']['action']>('action'),
      dir: q.str('dir'),
      tagHeader: q.str('tag_header'),
      holdReply: replyText(q, 'hold_reply'),
    },
    reuseConnections: main.bool('reuse_connections'),
    daemonName: main.str('daemon_name'),
    mixedRecipients: main.oneOf<MilterConfig['mixedRecipients']>('mixed_recipients'),
    destinationChannel: {
      local: dc.str('local'),
      relay: dc.str('relay'),
      domains: parseMap(file, ini, 'destination_channel'),
    },
    optin: {
      default: opt.has('default') ? opt.str('default') : undefined,
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
