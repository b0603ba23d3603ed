/**
 * IP addresses as SMTP servers report them, parsed with ipaddr.js: literal
 * checks, normal form, and the address a milter's CONNECT carries.
 */
import ipaddr from 'ipaddr.js'
import type { ConnectAddress } from '../protocol/commands'

/** Text that may be an IP literal: IPv6 has a colon, dotted-quad IPv4 only digits and dots. */
const LITERAL_CHARS = /:|^[\d.]+$/

/**
 * An IP address in the forms SMTP servers report (dotted-quad IPv4 or IPv6
 * text), parsed with ipaddr.js; an IPv4-mapped IPv6 address becomes the IPv4
 * address, as Haraka itself reports remote.ip (ipaddr.process). Undefined
 * for anything else, including IPv4 in the hex, octal or short forms
 * inet_aton would take.
 */
function parseIp(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  // ipaddr.js rejects a host name by throwing inside isValid (costly per connection), so names
  // (no colon, not only digits and dots) are told apart first
  if (!LITERAL_CHARS.test(text)) return undefined
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text)
  if (ipaddr.IPv6.isValid(text)) return ipaddr.process(text)
  return undefined
}

/** True for an IPv4 or IPv6 address literal. */
export function isIpLiteral(text: string): boolean {
  return parseIp(text) !== undefined
}

/** True for a loopback address literal (127.0.0.0/8, ::1, and 127.x mapped in IPv6). */
export function isLoopbackIp(text: string): boolean {
  return parseIp(text)?.range() === 'loopback'
}

/**
 * An address in its canonical text: IPv4-mapped IPv6 as IPv4, IPv6
 * compressed and lower-case. Text that is no IP address comes back as is.
 */
export function normalizeIp(text: string): string {
  return parseIp(text)?.toString() ?? text
}

/**
 * The CONNECT address of an SMTP client (milter-protocol.md §2.4): IPv4 dotted quad (an
 * IPv4-mapped IPv6 address counts as IPv4, as Sendmail reports it), IPv6
 * text, or family unknown when there is no usable address.
 */
export function connectAddressFor(ip: string | undefined, port: number): ConnectAddress {
  const a = parseIp(ip ?? '')
  if (a === undefined) return { family: 'unknown' }
  return a.kind() === 'ipv4'
    ? { family: 'inet', address: a.toString(), port }
    : { family: 'inet6', address: a.toString(), port }
}

/** 4 or 6 for an IP literal, 0 for anything else (a host name). */
export function ipFamily(text: string): 4 | 6 | 0 {
  if (!LITERAL_CHARS.test(text)) return 0
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return 4
  if (ipaddr.IPv6.isValid(text)) return 6
  return 0
}

/** An address block (`192.0.2.0/24`, `2001:db8::/32`, or one address), parsed once. */
export interface Network {
  text: string
  range: [ipaddr.IPv4 | ipaddr.IPv6, number]
}

/** A network in CIDR notation (a bare address is a /32 or /128); undefined when malformed. */
export function parseNetwork(text: string): Network | undefined {
  const slash = text.indexOf('/')
  const addr = parseIp(slash < 0 ? text : text.slice(0, slash))
  if (addr === undefined) return undefined
  const max = addr.kind() === 'ipv4' ? 32 : 128
  const bitsText = slash < 0 ? String(max) : text.slice(slash + 1)
  if (!/^[0-9]{1,3}$/.test(bitsText)) return undefined
  const bits = Number(bitsText)
  if (bits > max) return undefined
  return { text, range: [addr, bits] }
}

/** The first of `networks` holding `ip` (IPv4-mapped IPv6 counts as IPv4), if any. */
export function networkOf(ip: string, networks: readonly Network[]): Network | undefined {
  const a = parseIp(ip)
  if (a === undefined) return undefined
  return networks.find((n) => n.range[0].kind() === a.kind() && a.match(n.range))
}
