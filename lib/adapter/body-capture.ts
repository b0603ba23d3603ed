/**
 * The message body as Haraka stored it, captured while DATA arrives, so the content phase
 * reads it without haraka-message-stream's pipe(): that read runs a JavaScript loop over every
 * byte and one stream push per line (about 130,000 for a 10 MB message), most of the plugin's
 * cost per byte (shared docs/haraka-message-read.md, docs/benchmarks.md).
 *
 * At DATA the transaction's message stream gets an own `add_line` that notes each line before
 * Haraka's stores it. Haraka hands over lines that are views of its socket buffers, one after
 * the other, so consecutive lines are kept as one view (a few hundred views for 10 MB, no copy).
 * Reading applies what pipe(dest, { skip_headers: true }) does (Haraka 3.3,
 * haraka-message-stream 2.0): everything up to the first empty line is left out, then a
 * leading ".." loses one dot on every line, found with Buffer.indexOf over whole views, and the
 * bytes come out in pieces of exactly `size` bytes (the last one shorter), each built by at
 * most a few large copies.
 *
 * The capture holds the stored bytes only while Haraka holds them too: past Haraka's own
 * `connection.ini [main] spool_after` (haraka-message-stream's 25 MiB when unset; -1: never),
 * where Haraka moves the message to disk to save memory, the views are dropped, so the capture
 * never keeps in memory what Haraka chose not to.
 *
 * Anything unusual (a string line, headers over HEADERS_LIMIT, a body past spool_after, a stream
 * replaced since DATA, no capture) makes bodyPieces() return undefined and the caller reads through pipe() as before,
 * so the bytes are the same either way; test/unit/adapter/body-capture.test.ts compares both.
 */
import type { HarakaMessageStream, HarakaTransaction } from './haraka'

const LF = 0x0a
const CR = 0x0d
const DOT = 0x2e
/** "\n..": a line in the body that starts with a stuffed dot. */
const STUFFED = Buffer.from('\n..', 'latin1')
/** Header bytes past which the capture gives up (pipe() refuses headers over 1 MiB itself). */
const HEADERS_LIMIT = 512 * 1024

/** Views of the stored body bytes (after the empty line), consecutive lines merged. */
class Capture {
  views: Buffer[] = []
  private bodyBytes = 0
  private ab: ArrayBufferLike | undefined
  private start = 0
  private end = 0
  private inHeaders = true
  private headerBytes = 0
  usable = true

  /** @param maxBodyBytes Haraka's spool_after: past it the capture gives way (see above). */
  constructor(private readonly maxBodyBytes: number) {}

  add(line: Buffer | string): void {
    if (!this.usable) return
    if (typeof line === 'string') {
      this.usable = false
      return
    }
    if (this.inHeaders) {
      this.headerBytes += line.length
      if (this.headerBytes > HEADERS_LIMIT) this.usable = false
      const n = line.length
      if ((n === 2 && line[0] === CR && line[1] === LF) || (n === 1 && line[0] === LF))
        this.inHeaders = false
      return
    }
    if (line.length === 0) return
    this.bodyBytes += line.length
    if (this.bodyBytes > this.maxBodyBytes) {
      this.usable = false
      this.views = []
      this.ab = undefined
      return
    }
    if (line.buffer === this.ab && line.byteOffset === this.end) {
      this.end += line.length
      return
    }
    this.close()
    this.ab = line.buffer
    this.start = line.byteOffset
    this.end = line.byteOffset + line.length
  }

  /** Ends the view being extended. */
  close(): void {
    if (this.ab !== undefined && this.end > this.start)
      this.views.push(Buffer.from(this.ab, this.start, this.end - this.start))
    this.ab = undefined
  }
}

const CAPTURES = new WeakMap<HarakaMessageStream, Capture>()

/** haraka-message-stream's default spool_after (bytes kept in memory before spooling to disk). */
const SPOOL_AFTER_DEFAULT = 25 * 1024 * 1024

/** Haraka's `connection.ini [main] spool_after`, resolved as haraka-message-stream does. */
export function spoolAfter(cfg: unknown): number {
  const main = (cfg as { main?: { spool_after?: unknown } } | undefined)?.main
  const raw = main?.spool_after
  if (raw === undefined || raw === null || raw === '') return SPOOL_AFTER_DEFAULT
  const n = typeof raw === 'number' ? raw : Number(raw)
  if (n === -1) return Infinity
  return Number.isFinite(n) && n >= 0 ? n : SPOOL_AFTER_DEFAULT
}

/** Starts capturing the lines Haraka stores for this transaction (call at DATA). */
export function captureBody(t: HarakaTransaction): void {
  const ms = t.message_stream
  if (CAPTURES.has(ms) || typeof ms.add_line !== 'function') return
  const cap = new Capture(spoolAfter(t.cfg))
  const store = ms.add_line.bind(ms)
  ms.add_line = (line: Buffer | string): void => {
    cap.add(line)
    store(line)
  }
  CAPTURES.set(ms, cap)
}

/**
 * The body, unstuffed, or undefined when it must be read through pipe() (see the file
 * comment): with `size`, in pieces of exactly `size` bytes (the last one shorter, copies where
 * a piece spans views); without, as views of the stored bytes (no copy; any sizes, none empty),
 * which the content phase cuts into packets itself.
 */
export function bodyPieces(t: HarakaTransaction, size?: number): AsyncIterable<Buffer> | undefined {
  const cap = CAPTURES.get(t.message_stream)
  if (!cap?.usable) return undefined
  cap.close()
  return eachOf(size === undefined ? unstuffed(cap.views) : pieces(cap.views, size))
}

// eslint-disable-next-line @typescript-eslint/require-await -- the content phase takes async iterables
async function* eachOf(it: Iterable<Buffer>): AsyncGenerator<Buffer> {
  yield* it
}

/** The byte after position `p` of views[v], looking into the next views. */
function byteAfter(views: readonly Buffer[], v: number, p: number): number | undefined {
  const b = views[v] as Buffer
  if (p + 1 < b.length) return b[p + 1]
  for (let w = v + 1; w < views.length; w++) {
    const next = views[w] as Buffer
    if (next.length > 0) return next[0]
  }
  return undefined
}

/** The kept parts of the views: each stuffed dot (a ".." opening a line) left out. */
function* unstuffed(views: readonly Buffer[]): Generator<Buffer> {
  let lineStart = true
  for (let v = 0; v < views.length; v++) {
    const b = views[v] as Buffer
    let from = 0
    // a line that starts this view (the previous one ended with LF, or the body starts)
    let cut = lineStart && b[0] === DOT && byteAfter(views, v, 0) === DOT ? 0 : -1
    let search = 0
    for (;;) {
      if (cut < 0) {
        const i = b.indexOf(STUFFED, search)
        if (i >= 0) cut = i + 1
        else {
          // "\n." at the very end, its second dot in the next view
          const n = b.length
          const last = n - 1
          if (last >= search && last >= 1 && b[last - 1] === LF && b[last] === DOT)
            if (byteAfter(views, v, last) === DOT) cut = last
          // "\n" "." at the end of the view only: the check at the next view's start covers it
        }
      }
      if (cut < 0) break
      if (cut > from) yield b.subarray(from, cut)
      from = cut + 1
      search = cut + 1
      cut = -1
    }
    if (from < b.length) yield b.subarray(from)
    lineStart = b.length > 0 ? b[b.length - 1] === LF : lineStart
  }
}

/** The kept parts regrouped into pieces of exactly `size` bytes. */
function* pieces(views: readonly Buffer[], size: number): Generator<Buffer> {
  let piece: Buffer | undefined
  let filled = 0
  for (const part of unstuffed(views)) {
    let off = 0
    while (off < part.length) {
      if (filled === 0 && part.length - off >= size) {
        yield part.subarray(off, off + size) // a whole piece inside one view: no copy
        off += size
        continue
      }
      piece ??= Buffer.allocUnsafe(size)
      const n = part.copy(piece, filled, off, Math.min(part.length, off + size - filled))
      filled += n
      off += n
      if (filled === size) {
        yield piece
        piece = undefined
        filled = 0
      }
    }
  }
  if (piece && filled > 0) yield piece.subarray(0, filled)
}
