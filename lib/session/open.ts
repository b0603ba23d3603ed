/**
 * Dial a milter (TLS handshake included, when asked) and negotiate, all
 * under the connect timeout.
 */
import { MilterTimeoutError } from '../errors'
import { dial } from '../transport/dial'
import { promptAcks } from '../transport/quickack'
import type { SocketSpec, TlsSettings } from '../transport/spec'
import { MilterSession, type SessionOptions } from './session'

/** Opens a negotiated session; rejects with a MilterError. */
export async function openSession(
  spec: SocketSpec,
  opts: SessionOptions,
  tls?: TlsSettings,
): Promise<MilterSession> {
  const started = Date.now()
  const sock = await dial(spec, opts.timeouts.connectMs, tls)
  const left = Math.max(1, opts.timeouts.connectMs - (Date.now() - started))
  try {
    return await MilterSession.negotiate(sock, {
      ...opts,
      timeouts: { ...opts.timeouts, connectMs: left },
      ackPromptly: promptAcks(sock),
    })
  } catch (e) {
    sock.destroy()
    if (e instanceof MilterTimeoutError) {
      throw new MilterTimeoutError('connect', opts.timeouts.connectMs, e.step, { cause: e })
    }
    throw e
  }
}
