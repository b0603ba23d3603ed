/**
 * Socket specs in Sendmail/Postfix syntax, and dialling them. The only
 * module that imports node:net.
 *
 *   inet:PORT@HOST    inet6:PORT@HOST    (Sendmail)
 *   inet:HOST:PORT    unix:/path  local:/path   (Postfix)
 *   HOST:PORT         [V6ADDR]:PORT            (shorthands)
 */
import * as net from 'node:net'
import ipaddr from 'ipaddr.js'
import { MilterConfigError, MilterConnectError, MilterTimeoutError } from './errors'
import type { ConnectAddress } from './protocol/commands'

/** Where a milter listens. */
export type SocketSpec =
  { kind: 'tcp'; host: string; port: number; family: 4 | 6 | 0 } | { kind: 'unix'; path: string }

function parsePort(text: string, spec: string): number {
  if (!/^[0-9]{1,5}$/.test(text))
    throw new MilterConfigError(`invalid port "${text}" in milter socket "${spec}"`)
  const port = Number(text)
  if (port < 1 || port > 65535)
    throw new MilterConfigError(`port ${port} out of range in milter socket "${spec}"`)
  return port
}

function tcp(host: string, port: string, spec: string, want: 4 | 6 | 0): SocketSpec {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  if (h === '') throw new MilterConfigError(`missing host in milter socket "${spec}"`)
  if (h.includes(':') && net.isIPv6(h) === false) {
    throw new MilterConfigError(`invalid IPv6 address "${h}" in milter socket "${spec}"`)
  }
  const ipFamily = net.isIP(h)
  // Postfix writes IPv6 as inet:[::1]:PORT: a bracketed IPv6 literal is fine after inet:
  if (want === 4 && ipFamily === 6 && host.startsWith('[')) want = 6
  if (want === 4 && ipFamily === 6)
    throw new MilterConfigError(`inet: needs an IPv4 host, not "${h}" ("${spec}")`)
  if (want === 6 && ipFamily === 4)
    throw new MilterConfigError(`inet6: needs an IPv6 host, not "${h}" ("${spec}")`)
  const family = ipFamily === 4 ? 4 : ipFamily === 6 ? 6 : want
  return { kind: 'tcp', host: h, port: parsePort(port, spec), family }
}

/** `PORT@HOST` (Sendmail) or `HOST:PORT` (Postfix). */
function inetBody(body: string, spec: string, want: 4 | 6 | 0): SocketSpec {
  const at = body.indexOf('@')
  if (at >= 0) return tcp(body.slice(at + 1), body.slice(0, at), spec, want)
  const colon = body.lastIndexOf(':')
  if (colon < 0) throw new MilterConfigError(`milter socket "${spec}" needs PORT@HOST or HOST:PORT`)
  return tcp(body.slice(0, colon), body.slice(colon + 1), spec, want)
}

/** Parses a socket spec; throws MilterConfigError with the reason. */
export function parseSocketSpec(spec: string): SocketSpec {
  const s = spec.trim()
  const m = /^(inet6?|unix|local):(.*)$/i.exec(s)
  if (m) {
    const scheme = (m[1] ?? '').toLowerCase()
    const body = m[2] ?? ''
    if (scheme === 'unix' || scheme === 'local') {
      if (!body.startsWith('/'))
        throw new MilterConfigError(`unix socket path must be absolute in "${spec}"`)
      return { kind: 'unix', path: body }
    }
    return inetBody(body, spec, scheme === 'inet6' ? 6 : 4)
  }
  if (s.startsWith('/')) return { kind: 'unix', path: s }
  const v6 = /^\[([^\]]+)\]:([0-9]+)$/.exec(s)
  if (v6) return tcp(v6[1] ?? '', v6[2] ?? '', spec, 6)
  const hp = /^([^:\s]+):([0-9]+)$/.exec(s)
  if (hp) return tcp(hp[1] ?? '', hp[2] ?? '', spec, 0)
  throw new MilterConfigError(
    `unrecognised milter socket "${spec}": use inet:PORT@HOST, inet6:PORT@HOST, unix:/path, HOST:PORT or [V6ADDR]:PORT`,
  )
}

/** The spec back as text, for logs. */
export function formatSocketSpec(s: SocketSpec): string {
  if (s.kind === 'unix') return `unix:${s.path}`
  return s.family === 6 || s.host.includes(':')
    ? `inet6:${s.port}@${s.host}`
    : `inet:${s.port}@${s.host}`
}

/** Opens a stream to the milter within `timeoutMs`. */
export function dial(spec: SocketSpec, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock =
      spec.kind === 'unix'
        ? net.createConnection({ path: spec.path })
        : net.createConnection({ host: spec.host, port: spec.port, family: spec.family })
    const where = formatSocketSpec(spec)
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new MilterTimeoutError('connect', timeoutMs, `connection to ${where}`))
    }, timeoutMs)
    sock.once('connect', () => {
      clearTimeout(timer)
      sock.removeAllListeners('error')
      sock.setNoDelay(true)
      resolve(sock)
    })
    sock.once('error', (err) => {
      clearTimeout(timer)
      reject(
        new MilterConnectError(`cannot connect to milter at ${where}: ${err.message}`, {
          cause: err,
        }),
      )
    })
  })
}

/**
 * An IP address in the forms SMTP servers report (dotted-quad IPv4 or IPv6
 * text), parsed with ipaddr.js; an IPv4-mapped IPv6 address becomes the IPv4
 * address, as Haraka itself reports remote.ip (ipaddr.process). Undefined
 * for anything else, including IPv4 in the hex, octal or short forms
 * inet_aton would take.
 */
function parseIp(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text)
  if (ipaddr.IPv6.isValid(text)) return ipaddr.process(text)
  return undefined
}

/** True for an IPv4 or IPv6 address literal. */
export function isIpLiteral(text: string): boolean {
  return parseIp(text) !== undefined
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
