/**
 * Framing: `uint32 len | code | data`, where len counts the code byte.
 * The decoder takes any chunking and refuses a bad length before
 * allocating anything for the payload.
 */
import { MilterProtocolError, type MilterError } from '../errors'
import { LEN_BYTES, MDS_1M } from './constants'

/** One packet: its code and its payload (without the length or the code). */
export interface Frame {
  readonly code: number
  readonly data: Buffer
}

/** Largest reply payload we accept by default: generous, as Postfix is (milter-protocol.md §1.6). */
export const DEFAULT_MAX_FRAME_DATA = 64 * 1024 * 1024

/**
 * A frame spanning pushes gets a buffer of its exact size up to this len
 * (the largest negotiable packet, MDS_1M data + the code byte); above it the
 * buffer grows by doubling from this size.
 */
const EXACT_ALLOC_MAX = MDS_1M + 1

/** Pieces up to this size are copied byte by byte rather than with Buffer#copy. */
const SMALL_COPY = 16

/**
 * The 5 bytes before a packet's payload (length and code) for `dataLength` bytes of data: a
 * large payload is written after it as it is (socket writev), without copying it into a packet.
 */
export function frameHead(code: number, dataLength: number): Buffer {
  const out = Buffer.allocUnsafe(LEN_BYTES + 1)
  out.writeUInt32BE(dataLength + 1, 0)
  out.writeUInt8(code, LEN_BYTES)
  return out
}

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
 * Reassembles frames from a byte stream cut anywhere, in time linear in the
 * bytes whatever the cutting. After an error the decoder is poisoned: the
 * stream cannot be trusted again (milter-protocol.md §1.6.5).
 *
 * A frame that lies whole inside one pushed chunk is returned as a subarray
 * of that chunk (no copy). A frame that spans pushes is copied, piece by
 * piece, into one buffer of its own once its length is known, so each byte
 * is copied at most a bounded number of times and no chunk list is kept.
 * That buffer is allocated whole for frames up to the largest negotiable
 * packet (1 MiB); a larger frame's buffer starts at 1 MiB and doubles as
 * bytes arrive, so memory follows what the milter sent, not what it
 * announced.
 */
export class FrameDecoder {
  /** Length bytes of the next frame received so far (0-4) and their value. */
  private lenHave = 0
  private lenValue = 0
  /** Once the length is known (lenHave === 4): the frame's len, code byte included. */
  private frameLen = 0
  /** The code and data of a frame spanning pushes, and how many of its bytes are in. */
  private body: Buffer | undefined
  private bodyHave = 0
  private poisoned: MilterError | undefined
  /** A tighter bound for the frames of one phase (capFrames), with the error it gives. */
  private cap: { max: number; error: (dataBytes: number) => MilterError } | undefined

  /** @param maxDataBytes largest payload (len - 1) accepted; at least 1 MiB - 1. */
  constructor(readonly maxDataBytes: number = DEFAULT_MAX_FRAME_DATA) {
    if (maxDataBytes < MDS_1M) throw new RangeError(`maxDataBytes must be >= ${MDS_1M}`)
  }

  /**
   * Until uncap(): a frame announcing more than `max` payload bytes fails with
   * error(bytes), before anything is allocated for it. For a phase whose reply
   * has a known bound (the OPTNEG reply: the macro limits bound its symlist).
   */
  capFrames(max: number, error: (dataBytes: number) => MilterError): void {
    this.cap = { max, error }
  }

  uncap(): void {
    this.cap = undefined
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.lenHave + this.bodyHave
  }

  /** Adds bytes and returns every frame now complete, in order. */
  push(chunk: Buffer): Frame[] {
    if (this.poisoned) throw this.poisoned
    const frames: Frame[] = []
    const end = chunk.length
    let off = this.lenHave > 0 ? this.resume(chunk, frames) : 0
    while (off < end) {
      if (end - off < LEN_BYTES) {
        this.readLength(chunk, off)
        break
      }
      const len = chunk.readUInt32BE(off)
      this.checkLength(len)
      const start = off + LEN_BYTES
      const stop = start + len
      if (stop > end) {
        this.lenHave = LEN_BYTES
        this.frameLen = len
        this.append(chunk, start, end)
        break
      }
      frames.push({ code: chunk.readUInt8(start), data: chunk.subarray(start + 1, stop) })
      off = stop
    }
    return frames
  }

  /** Continues the frame begun in earlier pushes; returns where the next one starts. */
  private resume(chunk: Buffer, frames: Frame[]): number {
    let off = 0
    if (this.lenHave < LEN_BYTES) {
      off = this.readLength(chunk, 0)
      if (this.lenHave < LEN_BYTES) return off
      this.checkLength(this.lenValue)
      this.frameLen = this.lenValue
      const stop = off + this.frameLen
      if (stop <= chunk.length) {
        // only the length was split: the frame itself is whole in this chunk
        frames.push({ code: chunk.readUInt8(off), data: chunk.subarray(off + 1, stop) })
        this.reset()
        return stop
      }
    }
    off = this.append(chunk, off, Math.min(chunk.length, off + this.frameLen - this.bodyHave))
    if (this.bodyHave === this.frameLen && this.body) {
      const body = this.body
      frames.push({ code: body.readUInt8(0), data: body.subarray(1, this.frameLen) })
      this.reset()
    }
    return off
  }

  /** Takes up to the missing length bytes from chunk[from..]; returns the offset after them. */
  private readLength(chunk: Buffer, from: number): number {
    let off = from
    while (this.lenHave < LEN_BYTES && off < chunk.length) {
      this.lenValue = this.lenValue * 256 + chunk.readUInt8(off)
      this.lenHave++
      off++
    }
    return off
  }

  /** Copies chunk[from, to) into the frame being assembled; returns `to`. */
  private append(chunk: Buffer, from: number, to: number): number {
    const n = to - from
    if (n <= 0) return to
    const need = this.bodyHave + n
    const cap = this.body?.length ?? 0
    if (need > cap) {
      const size =
        this.frameLen <= EXACT_ALLOC_MAX
          ? this.frameLen
          : Math.min(this.frameLen, Math.max(need, 2 * cap, EXACT_ALLOC_MAX))
      const grown = Buffer.allocUnsafe(size)
      if (this.body) this.body.copy(grown, 0, 0, this.bodyHave)
      this.body = grown
    }
    const body = this.body as Buffer
    if (n <= SMALL_COPY) {
      // a byte loop beats Buffer#copy's native call on the tiny pieces of a dribbled frame
      for (let i = 0; i < n; i++) body[this.bodyHave + i] = chunk[from + i] as number
    } else {
      chunk.copy(body, this.bodyHave, from, to)
    }
    this.bodyHave = need
    return to
  }

  private checkLength(len: number): void {
    if (len === 0) this.poison('frame length 0')
    if (this.cap && len - 1 > this.cap.max) this.poison(this.cap.error(len - 1))
    if (len - 1 > this.maxDataBytes) {
      this.poison(`frame length ${len} exceeds the limit of ${this.maxDataBytes + 1}`)
    }
  }

  /** Fails this and every later push with `why` (a protocol error when given as text). */
  private poison(why: string | MilterError): never {
    this.poisoned = typeof why === 'string' ? new MilterProtocolError(why) : why
    this.reset()
    throw this.poisoned
  }

  /** Back to a frame boundary, holding nothing. */
  private reset(): void {
    this.lenHave = 0
    this.lenValue = 0
    this.frameLen = 0
    this.body = undefined
    this.bodyHave = 0
  }
}
