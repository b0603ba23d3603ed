/**
 * The reading side of one milter connection: bytes -> frames (FrameDecoder),
 * a queue of frames nobody waits for yet, flow control (the socket is paused
 * while replies pile up, e.g. REPLBODY chunks faster than the spool writes),
 * and one timed wait for the next frame. Knows nothing of the protocol's
 * meaning; the session decides what a frame is.
 */
import {
  MilterClosedError,
  MilterProtocolError,
  MilterTimeoutError,
  isMilterError,
  type MilterError,
  type Phase,
} from '../errors'
import { FrameDecoder, type Frame } from '../protocol/frame'
import { Queue } from '../util/queue'

/** Frames queued before the socket is paused, and the level at which it resumes. */
const QUEUE_HIGH = 16
const QUEUE_LOW = 4

/** What the reader needs of the stream: flow control, if it has it. */
export interface Pausable {
  pause?(): unknown
  resume?(): unknown
}

/** Reassembles and hands out the frames of one connection. */
export class FrameReader {
  private readonly decoder: FrameDecoder
  private readonly frames = new Queue<Frame>()
  private waiter: { resolve: (f: Frame) => void; reject: (e: MilterError) => void } | undefined
  private timer: NodeJS.Timeout | undefined
  private paused = false
  private stopped = false
  /** Why it stopped; undefined after a plain close until someone asks (an Error's stack is not free). */
  private stopError: MilterError | undefined

  /**
   * @param onError called once with a decoding error or a timeout; the
   *   session then fails (and calls stop()).
   */
  constructor(
    private readonly stream: Pausable,
    private readonly name: string,
    maxReplyBytes: number | undefined,
    private readonly onError: (e: MilterError) => void,
    private readonly onFrame?: (f: Frame) => void,
  ) {
    this.decoder = new FrameDecoder(maxReplyBytes)
  }

  /** A bound on the next frames' size, with its error (FrameDecoder.capFrames); uncap() lifts it. */
  capFrames(max: number, error: (dataBytes: number) => MilterError): void {
    this.decoder.capFrames(max, error)
  }

  uncap(): void {
    this.decoder.uncap()
  }

  /** Frames received and not yet taken. */
  get queued(): number {
    return this.frames.length
  }

  /** Bytes from the stream. */
  push(chunk: Buffer): void {
    if (this.stopped) return
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (e) {
      this.onError(isMilterError(e) ? e : new MilterProtocolError(String(e)))
      return
    }
    for (const f of frames) {
      this.onFrame?.(f)
      const w = this.waiter
      if (w) {
        this.waiter = undefined
        this.clearTimer()
        w.resolve(f)
      } else {
        this.frames.push(f)
      }
    }
    if (!this.paused && this.frames.length >= QUEUE_HIGH && this.stream.pause) {
      this.paused = true
      this.stream.pause()
    }
  }

  /** The next frame, waiting at most `ms` (a timeout reports through onError). */
  next(phase: Phase, label: string, ms: number): Promise<Frame> {
    const f = this.frames.shift()
    if (this.paused && this.frames.length <= QUEUE_LOW) {
      this.paused = false
      this.stream.resume?.()
    }
    if (f) return Promise.resolve(f)
    if (this.stopped) return Promise.reject(this.reason())
    return new Promise<Frame>((resolve, reject) => {
      this.waiter = { resolve, reject }
      this.timer = setTimeout(() => {
        this.onError(new MilterTimeoutError(phase, ms, `${label} from ${this.name}`))
      }, ms)
    })
  }

  /** No more frames: a waiting reader gets `err` (default: closed), later ones too. */
  stop(err?: MilterError): void {
    if (!this.stopped) this.stopError = err
    this.stopped = true
    this.clearTimer()
    const w = this.waiter
    this.waiter = undefined
    w?.reject(err ?? this.reason())
  }

  private reason(): MilterError {
    return (this.stopError ??= new MilterClosedError(`${this.name}: session is closed`))
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
  }
}
