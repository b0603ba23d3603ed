/**
 * Prompt acknowledgements on a TCP socket to a milter (Linux TCP_QUICKACK).
 *
 * Why (docs/benchmarks.md, "The end-of-message stall"): libmilter writes each reply packet
 * with its own write(), so a milter that returns a modification at end of message writes it,
 * then the verdict; with Nagle on the milter's socket the verdict waits until we acknowledge
 * the modification, and our kernel delays that ACK (about 40 ms) because we have nothing to
 * send. One setsockopt(TCP_QUICKACK) after SMFIC_BODYEOB is written makes our kernel
 * acknowledge at once (quick-ack mode is not sticky: it ends when we send data again, so it
 * is set again for each message). It changes no byte on the wire, only when ACKs leave.
 *
 * Node has no API for it: libc's setsockopt is called through koffi (an optional dependency
 * that ships prebuilt binaries). Anywhere that cannot work (not Linux, koffi missing, a
 * socket without a file descriptor, a unix socket, which has no delayed ACK) it is a no-op.
 */
import { createRequire } from 'node:module'
import type * as net from 'node:net'

/** Linux <netinet/in.h> IPPROTO_TCP. */
const IPPROTO_TCP = 6
/** Linux <netinet/tcp.h> TCP_QUICKACK: acknowledge at once (not sticky). */
const TCP_QUICKACK = 12

type SetSockOpt = (
  fd: number,
  level: number,
  name: number,
  value: Int32Array,
  len: number,
) => number

/** undefined: not tried yet; null: not available here. */
let setsockopt: SetSockOpt | null | undefined
/** Why prompt ACKs are off, when they are (for the log). */
let unavailable: string | undefined

const ONE = Int32Array.of(1)

/** setsockopt(TCP_QUICKACK) calls that succeeded in this process (tests, diagnostics). */
let acked = 0

interface KoffiLike {
  load(path: string | null): { func(decl: string): SetSockOpt }
}

function loadSetSockOpt(): SetSockOpt | null {
  if (process.platform !== 'linux') {
    unavailable = `TCP_QUICKACK is Linux only (platform ${process.platform})`
    return null
  }
  try {
    // optional dependency: absent or unloadable means no prompt ACKs, nothing else
    const koffi = createRequire(__filename)('koffi') as KoffiLike
    return koffi.load(null).func('int setsockopt(int, int, int, const void *, uint32_t)')
  } catch (e) {
    unavailable = `koffi not loadable: ${e instanceof Error ? e.message : String(e)}`
    return null
  }
}

/** The socket's file descriptor (a TLS socket's too), or undefined. */
function fdOf(sock: net.Socket): number | undefined {
  const h = (sock as unknown as { _handle?: { fd?: unknown; _parent?: { fd?: unknown } } })._handle
  const fd = h?.fd ?? h?._parent?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/**
 * A function that asks the kernel to acknowledge the next packets from the milter at once,
 * or undefined where that cannot be done (see the file comment). Cheap: one system call
 * (under a microsecond through koffi).
 */
export function promptAcks(sock: net.Socket): (() => void) | undefined {
  if (sock.remoteFamily !== 'IPv4' && sock.remoteFamily !== 'IPv6') return undefined
  setsockopt ??= loadSetSockOpt()
  const call = setsockopt
  if (call === null) return undefined
  return () => {
    const fd = fdOf(sock)
    // a failed call (socket closing) costs one delayed ACK at most: nothing to report
    if (fd !== undefined && call(fd, IPPROTO_TCP, TCP_QUICKACK, ONE, ONE.byteLength) === 0) acked++
  }
}

/** How many prompt-ACK requests the kernel took in this process. */
export function promptAckCount(): number {
  return acked
}

/** Why promptAcks() returns undefined for TCP sockets on this host, if it does. */
export function promptAcksUnavailable(): string | undefined {
  setsockopt ??= loadSetSockOpt()
  return setsockopt === null ? unavailable : undefined
}
