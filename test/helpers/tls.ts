/**
 * TLS for milter tests: certificates made with the machine's openssl into a
 * temporary directory (a CA, a server certificate for a name and 127.0.0.1,
 * a client certificate, and an unrelated CA), and a TLS terminator on
 * loopback that forwards each connection to a plain milter (pymilter cannot
 * speak TLS itself, as stunnel would sit in front of a real one).
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'

export interface TestCerts {
  dir: string
  /** The CA that signed server and client. */
  ca: string
  /** An unrelated self-signed CA. */
  otherCa: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** The DNS name in the server certificate (with IP 127.0.0.1). */
  serverName: string
  remove(): void
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e)
    throw new Error(
      /ENOENT/.test(msg)
        ? 'openssl is not installed: apt-get install openssl (the TLS tests make their certificates with it)'
        : `openssl ${args[0]} failed: ${msg}`,
      { cause: e },
    )
  }
}

/** A CA, a server certificate (DNS:serverName, IP:127.0.0.1), a client certificate, another CA. */
export function makeCerts(serverName = 'milter.test'): TestCerts {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-tls-'))
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  const ca = (name: string, subject: string): void =>
    openssl(dir, [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-subj',
      subject,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ])
  const leaf = (name: string, cn: string, ext: string): void => {
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext)
    openssl(dir, [
      'req',
      '-new',
      ...ec,
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.csr`,
      '-subj',
      `/CN=${cn}`,
    ])
    openssl(dir, [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ])
  }
  ca('ca', '/CN=Milter Test CA')
  ca('other-ca', '/CN=Some Other CA')
  leaf(
    'server',
    serverName,
    `subjectAltName=DNS:${serverName},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n`,
  )
  leaf('client', 'haraka.test', 'extendedKeyUsage=clientAuth\n')
  const f = (n: string): string => path.join(dir, n)
  return {
    dir,
    ca: f('ca.pem'),
    otherCa: f('other-ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
    serverName,
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  }
}

export interface TlsProxy {
  port: number
  /** Handshakes that failed on the proxy's side, with the reason. */
  tlsErrors: string[]
  /** Connections whose handshake succeeded. */
  secured: number
  stop(): Promise<void>
}

/**
 * A TLS server on 127.0.0.1 that forwards each connection to `target`
 * (a plain TCP port on 127.0.0.1); with `clientCa` it requires a client
 * certificate signed by that CA.
 */
export async function startTlsProxy(opts: {
  cert: string
  key: string
  target: number
  clientCa?: string
  /** The highest TLS version the proxy speaks (TLS 1.2: a missing client certificate fails the handshake itself). */
  maxVersion?: tls.SecureVersion
}): Promise<TlsProxy> {
  const sockets = new Set<net.Socket>()
  const proxy: TlsProxy = { port: 0, tlsErrors: [], secured: 0, stop: () => Promise.resolve() }
  const server = tls.createServer(
    {
      cert: fs.readFileSync(opts.cert),
      key: fs.readFileSync(opts.key),
      ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
      ...(opts.clientCa
        ? { ca: fs.readFileSync(opts.clientCa), requestCert: true, rejectUnauthorized: true }
        : {}),
    },
    (client) => {
      proxy.secured++
      const upstream = net.connect({ host: '127.0.0.1', port: opts.target })
      sockets.add(client)
      sockets.add(upstream)
      client.pipe(upstream).pipe(client)
      const close = (): void => {
        client.destroy()
        upstream.destroy()
        sockets.delete(client)
        sockets.delete(upstream)
      }
      client.on('error', close).on('close', close)
      upstream.on('error', close).on('close', close)
    },
  )
  server.on('tlsClientError', (err) => proxy.tlsErrors.push(err.message))
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const addr = server.address()
  proxy.port = typeof addr === 'object' && addr !== null ? addr.port : 0
  proxy.stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    })
  return proxy
}

/** A TCP server that accepts connections and never says a word (a hung milter). */
export async function startSilentServer(): Promise<{
  port: number
  accepted: number
  stop(): Promise<void>
}> {
  const sockets = new Set<net.Socket>()
  const out = { port: 0, accepted: 0, stop: () => Promise.resolve() }
  const server = net.createServer((s) => {
    out.accepted++
    sockets.add(s)
    s.on('error', () => undefined)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const addr = server.address()
  out.port = typeof addr === 'object' && addr !== null ? addr.port : 0
  out.stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    })
  return out
}
