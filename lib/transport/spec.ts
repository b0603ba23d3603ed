/**
 * Socket specs in Sendmail/Postfix syntax (pure: no sockets here, so the
 * configuration can be parsed without node:net).
 *
 *   inet:PORT@HOST    inet6:PORT@HOST    (Sendmail)
 *   inet:HOST:PORT    unix:/path  local:/path   (Postfix)
 *   HOST:PORT         [V6ADDR]:PORT            (shorthands)
 */
import { MilterConfigError } from '../errors'
import { ipFamily } from './address'

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
  const ipFam = ipFamily(h)
  if (h.includes(':') && ipFam !== 6) {
    throw new MilterConfigError(`invalid IPv6 address "${h}" in milter socket "${spec}"`)
  }
  // Postfix writes IPv6 as inet:[::1]:PORT: a bracketed IPv6 literal is fine after inet:
  if (want === 4 && ipFam === 6 && host.startsWith('[')) want = 6
  if (want === 4 && ipFam === 6)
    throw new MilterConfigError(`inet: needs an IPv4 host, not "${h}" ("${spec}")`)
  if (want === 6 && ipFam === 4)
    throw new MilterConfigError(`inet6: needs an IPv6 host, not "${h}" ("${spec}")`)
  const family = ipFam === 4 ? 4 : ipFam === 6 ? 6 : want
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
