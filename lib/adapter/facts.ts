/**
 * Haraka connection and transaction state -> milter macro values and
 * CONNECT facts (plain data).
 */
import type { RecipientFacts } from '../policy/routing'
import type { MilterConfig } from '../config'
import type { ConnectAddress } from '../protocol/commands'
import { connectAddressFor, isIpLiteral, normalizeIp } from '../transport/address'
import type { MacroLookup } from '../session/macros'
import type { HarakaAddress, HarakaConnection, HarakaTransaction } from './haraka'
import { transactionState } from './state'

/** A name from rDNS, or undefined for Haraka's NXDOMAIN/DNSERROR sentinels. */
function rdnsName(c: HarakaConnection): string | undefined {
  const h = c.remote.host
  if (!h || h === 'NXDOMAIN' || h === 'DNSERROR' || isIpLiteral(h)) return undefined
  return h
}

/** The client IP, canonical (an IPv4-mapped IPv6 address as IPv4). */
export function clientIp(c: HarakaConnection): string | undefined {
  return c.remote.ip ? normalizeIp(c.remote.ip) : undefined
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

/** Is the domain one of ours (Haraka's host_list)? */
export type LocalDomain = (domain: string) => boolean

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
  return { destinationChannel, optin }
}

/** Everything known at a stage, as a macro lookup. */
export function macroLookup(
  cfg: MilterConfig,
  c: HarakaConnection,
  sourceChannel: string,
  isLocal: LocalDomain,
  extra: Record<string, string | undefined> = {},
): MacroLookup {
  const t = c.transaction
  const name = rdnsName(c)
  const ip = clientIp(c)
  const auth = (c.notes['auth_user'] as string | undefined) ?? undefined
  const values: Record<string, string | undefined> = {
    j: c.local.host,
    _: ip ? `${name ?? 'unknown'} [${ip}]` : undefined,
    v: c.local.info ?? 'Haraka',
    '{daemon_name}': cfg.daemonName,
    '{daemon_addr}': c.local.ip,
    '{daemon_port}': c.local.port === undefined ? undefined : String(c.local.port),
    '{client_addr}': ip,
    '{client_port}': c.remote.port === undefined ? undefined : String(c.remote.port),
    '{client_name}': name ?? 'unknown',
    '{client_ptr}': name ?? 'unknown',
    '{client_resolve}': name ? 'OK' : 'FAIL',
    '{source_channel}': sourceChannel,
    '{tls_version}': c.tls.enabled ? c.tls.cipher?.version : undefined,
    '{cipher}': c.tls.enabled ? c.tls.cipher?.name : undefined,
    '{cipher_bits}': c.tls.enabled
      ? cipherBits(c.tls.cipher?.standardName ?? c.tls.cipher?.name)
      : undefined,
    '{cert_subject}': c.tls.verified ? c.tls.peerCertificate?.subject?.CN : undefined,
    '{cert_issuer}': c.tls.verified ? c.tls.peerCertificate?.issuer?.CN : undefined,
    '{auth_type}': auth ? (c.notes['auth_method'] as string | undefined) : undefined,
    '{auth_authen}': auth,
    i: t?.uuid,
  }
  if (t?.mail_from) {
    const from = t.mail_from
    values['{mail_addr}'] = from.address
    values['{mail_host}'] = from.host ?? ''
    values['{mail_mailer}'] = from.isNull()
      ? 'local'
      : isLocal((from.host ?? '').toLowerCase())
        ? 'local'
        : 'smtp'
    const auth = transactionState(t).mailArgs['AUTH']
    if (auth && auth !== '<>') values['{auth_author}'] = auth
  }
  Object.assign(values, extra)
  return (n) => values[n]
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
