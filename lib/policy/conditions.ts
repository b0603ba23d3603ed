/**
 * Conditions (`skip_*` in milter.ini): when a milter is not contacted at
 * all, decided before it would be. Each check answers with the reason (for
 * Haraka's results and the per-message log line), or undefined to go on.
 * Pure: the adapter supplies the facts (address classes from
 * haraka-net-utils, AUTH and relaying from Haraka).
 *
 *   client (at CONNECT)    skip_private_clients, skip_clients
 *   message (at MAIL)      skip_authenticated, skip_relaying, skip_sender_domains,
 *                          skip_larger_than (the SIZE= the client declared)
 *   recipient (at RCPT)    skip_recipient_domains
 *   content (after DATA)   skip_larger_than (the size received)
 */
import type { SkipRules } from '../config'
import { networkOf } from '../transport/address'

/** What is known of the client at CONNECT. */
export interface ClientFacts {
  /** Its address in normal form (IPv4-mapped IPv6 as IPv4); undefined when unknown. */
  ip: string | undefined
  /** Private, loopback or link-local. */
  private: boolean
}

/** What is known of a message at MAIL. */
export interface MessageFacts {
  authenticated: boolean
  relaying: boolean
  /** The envelope sender's domain, lower case ('' for the null sender). */
  senderDomain: string
  /** The SIZE= the client declared, if any. */
  declaredSize: number | undefined
}

/** True when `domain` is listed: `example.com` itself, or under a listed `.example.com`. */
export function domainListed(domain: string, list: readonly string[]): boolean {
  if (domain === '') return false
  const d = domain.toLowerCase()
  return list.some((e) => (e.startsWith('.') ? d.endsWith(e) : d === e))
}

/** Skip the milter for this whole connection? */
export function clientSkip(rules: SkipRules | undefined, f: ClientFacts): string | undefined {
  if (!rules || f.ip === undefined) return undefined
  if (rules.privateClients && f.private) return `private client ${f.ip}`
  const n = networkOf(f.ip, rules.clients)
  return n ? `client ${f.ip} in ${n.text}` : undefined
}

/** Skip the milter for this message (decided at MAIL)? */
export function messageSkip(rules: SkipRules | undefined, f: MessageFacts): string | undefined {
  if (!rules) return undefined
  if (rules.authenticated && f.authenticated) return 'authenticated'
  if (rules.relaying && f.relaying) return 'relaying'
  if (domainListed(f.senderDomain, rules.senderDomains)) return `sender domain ${f.senderDomain}`
  return f.declaredSize === undefined ? undefined : sizeSkip(rules, f.declaredSize, 'declared')
}

/** Skip the milter for a recipient in this domain? */
export function recipientSkip(rules: SkipRules | undefined, domain: string): string | undefined {
  return rules && domainListed(domain, rules.recipientDomains)
    ? `recipient domain ${domain.toLowerCase()}`
    : undefined
}

/** Skip the milter's content phase for a message of this size? */
export function sizeSkip(
  rules: SkipRules | undefined,
  size: number,
  what: 'declared' | 'received' = 'received',
): string | undefined {
  return rules?.largerThan !== undefined && size > rules.largerThan
    ? `${what} size ${size} > ${rules.largerThan}`
    : undefined
}

/** Message conditions make a milter wait for MAIL instead of being contacted at CONNECT. */
export function hasMessageConditions(rules: SkipRules | undefined): boolean {
  return (
    rules !== undefined &&
    (rules.authenticated ||
      rules.relaying ||
      rules.senderDomains.length > 0 ||
      rules.largerThan !== undefined)
  )
}
