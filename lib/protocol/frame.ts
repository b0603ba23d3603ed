/**
 * Framing: `uint32 len | code | data`, where len counts the code byte.
 * The decoder takes any chunking and refuses a bad length before
 * allocating anything for the payload.
 */
import { MilterProtocolError } from '../errors'
import { LEN_BYTES, MDS_1M } from './constants'

/** One packet: its code and its payload (without the length or the code). */
export interface Frame {
  readonly code: number
  readonly data: Buffer
}

/** Largest reply payload we accept by default: generous, as Postfix is (§1.6). */
export const DEFAULT_MAX_FRAME_DATA = 64 * 1024 * 1024

/** Encodes one packet. */
export function encodeFrame(code: number, data?: Buffer): Buffer {
  const n = data?.length ?? 0
  const out = Buffer.allocUnsafe(LEN_BYTES + 1 + n)
  out.writeUInt32BE(n + 1, 0)
  out.writeUInt8(code, LEN_BYTES)
  if (data) data.copy(out, LEN_BYTES + 1)
  return out
}

/**
 * Reassembles frames from a byte stream cut anywhere. After an error the
 * decoder is poisoned: the stream cannot be trusted again (§1.6.5).
 */
export class FrameDecoder {
  private chunks: Buffer[] = []
  private buffered = 0
  private poisoned: MilterProtocolError | undefined

  /** @param maxDataBytes largest payload (len - 1) accepted; at least 1 MiB - 1. */
  constructor(readonly maxDataBytes: number = DEFAULT_MAX_FRAME_DATA) {
    if (maxDataBytes < MDS_1M) throw new RangeError(`maxDataBytes must be >= ${MDS_1M}`)
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.buffered
  }

  /** Adds bytes and returns every frame now complete, in order. */
  push(chunk: Buffer): Frame[] {
    if (this.poisoned) throw this.poisoned
    if (chunk.length > 0) {
      this.chunks.push(chunk)
      this.buffered += chunk.length
    }
    const frames: Frame[] = []
    for (;;) {
      const frame = this.next()
      if (!frame) return frames
      frames.push(frame)
    }
  }

  private next(): Frame | undefined {
    if (this.buffered < LEN_BYTES + 1) {
      if (this.buffered >= LEN_BYTES) this.checkLength(this.peekLength())
      return undefined
    }
    const len = this.peekLength()
    this.checkLength(len)
    if (this.buffered < LEN_BYTES + len) return undefined
    const whole = this.take(LEN_BYTES + len)
    return { code: whole.readUInt8(LEN_BYTES), data: whole.subarray(LEN_BYTES + 1) }
  }

  private checkLength(len: number): void {
    if (len === 0) this.poison('frame length 0')
    if (len - 1 > this.maxDataBytes) {
      this.poison(`frame length ${len} exceeds the limit of ${this.maxDataBytes + 1}`)
    }
  }

  private poison(msg: string): never {
    this.poisoned = new MilterProtocolError(msg)
    this.chunks = []
    this.buffered = 0
    throw this.poisoned
  }

  private peekLength(): number {
    const first = this.chunks[0]
    if (first && first.length >= LEN_BYTES) return first.readUInt32BE(0)
    return this.take(LEN_BYTES, true).readUInt32BE(0)
  }

  /** Removes n bytes from the front (or only copies them when peeking). */
  private take(n: number, peek = false): Buffer {
    const first = this.chunks[0]
    if (first && first.length >= n) {
      if (!peek) this.consume(n)
      return first.subarray(0, n)
    }
    const out = Buffer.allocUnsafe(n)
    let off = 0
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - off)
      c.copy(out, off, 0, k)
      off += k
      if (off === n) break
    }
    if (!peek) this.consume(n)
    return out
  }

  private consume(n: number): void {
    this.buffered -= n
    while (n > 0) {
      const c = this.chunks[0]
      if (!c) break
      if (c.length <= n) {
        this.chunks.shift()
        n -= c.length
      } else {
        this.chunks[0] = c.subarray(n)
        n = 0
      }
    }
  }
}
