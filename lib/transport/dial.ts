/**
 * Dialling a milter: the only module that imports node:net (and node:tls).
 */
import * as net from 'node:net'
import * as tls from 'node:tls'
import { describeTlsError, isTlsError } from './tls-error'
import { MilterConnectError, MilterTimeoutError } from '../errors'
import { ipFamily } from './address'
import { formatSocketSpec, type SocketSpec, type TlsSettings } from './spec'

/** node:tls options for a TCP endpoint: the certificate is checked against servername or host. */
function tlsOptions(
  spec: Extract<SocketSpec, { kind: 'tcp' }>,
  settings: TlsSettings,
): tls.ConnectionOptions {
  // tls.connect hands the socket options (family too) to net.connect; its type omits family
  const o: tls.ConnectionOptions & { family: number } = {
    host: spec.host,
    port: spec.port,
    family: spec.family,
    rejectUnauthorized: settings.rejectUnauthorized,
  }
  // SNI and the name checked: the configured name, else the host when it is a name
  // (an IP address is checked against the certificate's IP SANs, and is no SNI)
  const servername = settings.servername ?? (ipFamily(spec.host) === 0 ? spec.host : undefined)
  if (servername !== undefined) o.servername = servername
  if (settings.ca !== undefined) o.ca = settings.ca
  if (settings.cert !== undefined) o.cert = settings.cert
  if (settings.key !== undefined) o.key = settings.key
  return o
}

/**
 * Opens a stream to the milter within `timeoutMs`; with `tlsSettings` (TCP
 * only) the TLS handshake, certificate check included, is part of it.
 */
export function dial(
  spec: SocketSpec,
  timeoutMs: number,
  tlsSettings?: TlsSettings,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const where = formatSocketSpec(spec)
    let sock: net.Socket
    let ready: 'connect' | 'secureConnect' = 'connect'
    if (spec.kind === 'unix') {
      if (tlsSettings) {
        reject(new MilterConnectError(`TLS to milter at ${where}: TLS needs a TCP endpoint`))
        return
      }
      sock = net.createConnection({ path: spec.path })
    } else if (tlsSettings) {
      sock = tls.connect(tlsOptions(spec, tlsSettings))
      ready = 'secureConnect'
    } else {
      sock = net.createConnection({ host: spec.host, port: spec.port, family: spec.family })
    }
    let tcpUp = false
    if (ready === 'secureConnect') sock.once('connect', () => (tcpUp = true))
    const timer = setTimeout(() => {
      sock.destroy()
      const step = tcpUp ? `the TLS handshake with ${where}` : `connection to ${where}`
      reject(new MilterTimeoutError('connect', timeoutMs, step))
    }, timeoutMs)
    sock.once(ready, () => {
      clearTimeout(timer)
      sock.removeAllListeners('error')
      sock.setNoDelay(true)
      resolve(sock)
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      sock.destroy()
      const tlsFailed = tcpUp || (ready === 'secureConnect' && isTlsError(err))
      const code = err.code !== undefined && !err.message.includes(err.code) ? ` (${err.code})` : ''
      const text = tlsFailed
        ? `TLS handshake with milter at ${where} failed: ${describeTlsError(err)}`
        : `cannot connect to milter at ${where}: ${err.message}${code}`
      reject(new MilterConnectError(text, { cause: err }))
    })
  })
}
