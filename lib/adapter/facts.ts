/**
 * Haraka connection and transaction state -> milter macro values and
 * CONNECT facts (plain data).
 */
import type { RecipientFacts } from '../policy/routing'
import type { MilterConfig } from '../config'
import type { ConnectAddress } from '../protocol/commands'
import { connectAddressFor, isIpLiteral, normalizeIp } from '../transport/address'
import type { MacroLookup } from '../session/macros'
import type { HarakaAddress, HarakaConnection, HarakaTransaction, LocalDomain } from './haraka'
import { transactionState } from './state'

/** The client's address and rDNS name, worked out once per connection (ipaddr.js parsing is not free). */
interface Client {
  /** remote.ip and remote.host they were worked out from (rDNS may fill host in later). */
  fromIp: string | undefined
  fromHost: string | null | undefined
  ip: string | undefined
  name: string | undefined
}

const CLIENTS = new WeakMap<object, Client>()

function client(c: HarakaConnection): Client {
  const known = CLIENTS.get(c)
  if (known && known.fromIp === c.remote.ip && known.fromHost === c.remote.host) return known
  const h = c.remote.host
  const v: Client = {
    fromIp: c.remote.ip,
    fromHost: h,
    ip: c.remote.ip ? normalizeIp(c.remote.ip) : undefined,
    // a name from rDNS, or undefined for Haraka's NXDOMAIN/DNSERROR sentinels
    name: !h || h === 'NXDOMAIN' || h === 'DNSERROR' || isIpLiteral(h) ? undefined : h,
  }
  CLIENTS.set(c, v)
  return v
}

function rdnsName(c: HarakaConnection): string | undefined {
  return client(c).name
}

/** The client IP with an IPv4-mapped IPv6 prefix removed. */
export function clientIp(c: HarakaConnection): string | undefined {
  return client(c).ip
}

/** The CONNECT hostname: the client name, or `[addr]` when there is none (milter-protocol.md §2.4). */
export function connectHostname(c: HarakaConnection): string {
  const ip = clientIp(c)
  return rdnsName(c) ?? (ip ? `[${ip}]` : 'localhost')
}

/** The CONNECT address: IPv4 dotted quad, bare IPv6 text, or unknown. */
export function connectAddress(c: HarakaConnection): ConnectAddress {
  return connectAddressFor(clientIp(c), c.remote.port ?? 0)
}

function cipherBits(name: string | undefined): string | undefined {
  if (!name) return undefined
  if (/CHACHA20|AES_?256/i.test(name)) return '256'
  if (/AES_?128/i.test(name)) return '128'
  return undefined
}

export type { RecipientFacts } from '../policy/routing'

/** Transaction note keys other plugins may set in their rcpt hook (documented in the README). */
export const NOTE_OPTIN = 'milter_optin'
export const NOTE_DESTINATION_CHANNEL = 'milter_destination_channel'

function noteFor(t: HarakaTransaction | null, key: string, addr: string): string | undefined {
  const table = t?.notes[key]
  if (!table || typeof table !== 'object') return undefined
  const v = (table as Record<string, unknown>)[addr.toLowerCase()]
  return typeof v === 'string' ? v : undefined
}

/** {destination_channel} and {optin} for a recipient: notes first, then config rules. */
export function recipientFacts(
  cfg: MilterConfig,
  c: HarakaConnection,
  rcpt: HarakaAddress,
  isLocal: LocalDomain,
): RecipientFacts {
  const addr = rcpt.address.toLowerCase()
  const domain = (rcpt.host ?? '').toLowerCase()
  const t = c.transaction
  const destinationChannel =
    noteFor(t, NOTE_DESTINATION_CHANNEL, addr) ??
    cfg.destinationChannel.domains.get(domain) ??
    (isLocal(domain)
      ? cfg.destinationChannel.local
      : c.relaying
        ? cfg.destinationChannel.relay
        : cfg.destinationChannel.local)
  const optin =
    noteFor(t, NOTE_OPTIN, addr) ??
    cfg.optin.addresses.get(addr) ??
    cfg.optin.domains.get(domain) ??
    cfg.optin.default
  return { destinationChannel, optin, domain }
}

/**
 * Everything known at a stage, as a macro lookup: each value is worked out
 * only when a milter's macro list asks for it, from the connection and
 * transaction as they are then (STARTTLS and AUTH change them). `extra`
 * (the RCPT values) comes first.
 */
export function macroLookup(
  cfg: MilterConfig,
  c: HarakaConnection,
  sourceChannel: string,
  isLocal: LocalDomain,
  extra: Record<string, string | undefined> = {},
): MacroLookup {
  return (n) => (Object.hasOwn(extra, n) ? extra[n] : stageMacro(n, cfg, c, sourceChannel, isLocal))
}

function stageMacro(
  n: string,
  cfg: MilterConfig,
  c: HarakaConnection,
  sourceChannel: string,
  isLocal: LocalDomain,
): string | undefined {
  const t = c.transaction
  switch (n) {
    case 'j':
      return c.local.host
    case '_': {
      const { ip, name } = client(c)
      return ip ? `${name ?? 'unknown'} [${ip}]` : undefined
    }
    case 'v':
      return c.local.info ?? 'Haraka'
    case '{daemon_name}':
      return cfg.daemonName
    case '{daemon_addr}':
      return c.local.ip
    case '{daemon_port}':
      return c.local.port === undefined ? undefined : String(c.local.port)
    case '{client_addr}':
      return client(c).ip
    case '{client_port}':
      return c.remote.port === undefined ? undefined : String(c.remote.port)
    case '{client_name}':
    case '{client_ptr}':
      return client(c).name ?? 'unknown'
    case '{client_resolve}':
      return client(c).name ? 'OK' : 'FAIL'
    case '{source_channel}':
      return sourceChannel
    case '{tls_version}':
      return c.tls.enabled ? c.tls.cipher?.version : undefined
    case '{cipher}':
      return c.tls.enabled ? c.tls.cipher?.name : undefined
    case '{cipher_bits}':
      return c.tls.enabled
        ? cipherBits(c.tls.cipher?.standardName ?? c.tls.cipher?.name)
        : undefined
    case '{cert_subject}':
      return c.tls.verified ? c.tls.peerCertificate?.subject?.CN : undefined
    case '{cert_issuer}':
      return c.tls.verified ? c.tls.peerCertificate?.issuer?.CN : undefined
    case '{auth_type}':
      return authUser(c) ? (c.notes['auth_method'] as string | undefined) : undefined
    case '{auth_authen}':
      return authUser(c)
    case 'i':
      return t?.uuid
    case '{mail_addr}':
      return t?.mail_from ? t.mail_from.address : undefined
    case '{mail_host}':
      return t?.mail_from ? (t.mail_from.host ?? '') : undefined
    case '{mail_mailer}': {
      const from = t?.mail_from
      if (!from) return undefined
      return from.isNull() || isLocal((from.host ?? '').toLowerCase()) ? 'local' : 'smtp'
    }
    case '{auth_author}': {
      if (!t?.mail_from) return undefined
      const a = transactionState(t).mailArgs['AUTH']
      return a && a !== '<>' ? a : undefined
    }
    default:
      return undefined
  }
}

/** The user an AUTH plugin authenticated (connection.notes.auth_user), if any. */
export function authUser(c: HarakaConnection): string | undefined {
  return (c.notes['auth_user'] as string | undefined) ?? undefined
}

/** The RCPT-stage extras: {rcpt_addr} {rcpt_host} {rcpt_mailer} {destination_channel} {optin}. */
export function rcptExtras(
  rcpt: HarakaAddress,
  facts: RecipientFacts,
  isLocal: LocalDomain,
): Record<string, string | undefined> {
  const host = (rcpt.host ?? '').toLowerCase()
  return {
    '{rcpt_addr}': rcpt.address,
    '{rcpt_host}': rcpt.host ?? '',
    '{rcpt_mailer}': isLocal(host) ? 'local' : 'smtp',
    '{destination_channel}': facts.destinationChannel,
    '{optin}': facts.optin,
  }
}

/** ESMTP parameters object (upper-cased keys, null for bare keywords) -> argv strings. */
export function esmtpArgs(params: Record<string, string | null | undefined> | undefined): string[] {
  if (!params) return []
  return Object.entries(params).map(([k, v]) => (v === null || v === undefined ? k : `${k}=${v}`))
}
