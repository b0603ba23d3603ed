/**
 * Dialling a milter: the only module that imports node:net.
 */
import * as net from 'node:net'
import { MilterConnectError, MilterTimeoutError } from '../errors'
import { formatSocketSpec, type SocketSpec } from './spec'

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
