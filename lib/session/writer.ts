/**
 * The writing side of one milter connection: packets gathered until the
 * next wait for a reply and written then in one write (a stage's macros and
 * command; under no-reply flags every command up to the next one answered),
 * a body chunk written after its header without a copy (one writev), and a
 * timed wait for the socket to drain. Knows nothing of the protocol's
 * meaning; the session decides what to send and when. The reading side is
 * reader.ts.
 */
import type { MilterStream } from './types'

/**
 * Gathered packets are written at once when they reach this size: a body under NR_BODY goes out
 * in writes of 16 chunks (one corked writev each) instead of one write per 64 KiB chunk, since
 * each write to a milter costs a system call whatever its size. The chunks are views of the
 * captured message, so gathering them holds no copy.
 */
const FLUSH_BYTES = 1024 * 1024

/**
 * Gathered pieces up to this many bytes in all are joined into one buffer for the write;
 * above it (a body chunk) they are written corked, as they are, in one writev.
 */
const JOIN_MAX = 4 * 1024

/** Gathers and writes the packets of one connection. */
export class PacketWriter {
  private pieces: Buffer[] = []
  private bytes = 0

  constructor(private readonly stream: MilterStream) {}

  /** Gathers `packet`, then `tail` (the rest of its payload); writes when FLUSH_BYTES are gathered. */
  push(packet: Buffer, tail?: readonly Buffer[]): void {
    this.pieces.push(packet)
    this.bytes += packet.length
    if (tail) {
      for (const t of tail) {
        this.pieces.push(t)
        this.bytes += t.length
      }
    }
    if (this.bytes >= FLUSH_BYTES) this.flush()
  }

  /** Drops what is gathered (the connection is going away). */
  discard(): void {
    this.pieces = []
    this.bytes = 0
  }

  /**
   * Writes what was gathered in one write. `written` runs once the bytes
   * are in the kernel: at once when the write went through synchronously
   * (the usual case), else when it completes.
   */
  flush(written?: () => void): void {
    const n = this.pieces.length
    if (n === 0) return
    const pieces = this.pieces
    const bytes = this.bytes
    this.discard()
    const s = this.stream
    let queued = false
    const done = written
      ? () => {
          if (queued) written()
        }
      : undefined
    if (n === 1 || bytes <= JOIN_MAX || !s.cork || !s.uncork) {
      // small: one copy is cheaper than a writev of many pieces
      const data = n === 1 ? (pieces[0] as Buffer) : Buffer.concat(pieces, bytes)
      s.write(data, done)
    } else {
      // a body chunk (and what was gathered before it): one writev, no copy of the chunk
      s.cork()
      for (let i = 0; i < n - 1; i++) s.write(pieces[i] as Buffer)
      s.write(pieces[n - 1] as Buffer, done)
      s.uncork()
    }
    if (!written) return
    if ((s.writableLength ?? 0) > 0) queued = true
    else written()
  }

  /**
   * Resolves once the socket has drained what was written (pipelined NR_BODY chunks);
   * what is still gathered is under FLUSH_BYTES, so only that. After `ms`, `onTimeout`'s
   * error rejects; a socket that closes first (no drain will come) rejects at once with
   * `onClose`'s.
   */
  drained(ms: number, onTimeout: () => Error, onClose: () => Error): Promise<void> {
    const s = this.stream as MilterStream & { writableNeedDrain?: boolean }
    if (!s.writableNeedDrain) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const settle = (err?: Error): void => {
        clearTimeout(t)
        s.removeListener('drain', onDrain)
        s.removeListener('close', onClosed)
        if (err) reject(err)
        else resolve()
      }
      const onDrain = (): void => settle()
      const onClosed = (): void => settle(onClose())
      const t = setTimeout(() => settle(onTimeout()), ms)
      s.once('drain', onDrain)
      s.once('close', onClosed)
    })
  }
}
