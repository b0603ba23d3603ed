/**
 * A replacement body (REPLBODY chunks) spooled to a temporary file, so a
 * large body is never held whole in memory, and read back as CRLF lines.
 *
 * Every operation may race with dispose(): a milter can fail in the middle
 * of its REPLBODY while a chunk is still being written. The write stream
 * therefore always has an 'error' listener, a write waits for 'drain' or
 * 'close' (never for a 'drain' that cannot come), and dispose() waits for
 * the stream to close before it removes the file.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'

/** Raised when the spool is used after dispose() or after its file failed. */
export class BodySpoolError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'BodySpoolError'
  }
}

/** Spools one replacement body. */
export class BodySpool {
  private stream: WriteStream | undefined
  private opening: Promise<WriteStream> | undefined
  private dir: string | undefined
  private file: string | undefined
  private failure: Error | undefined
  private disposed = false
  bytes = 0

  /** `parentDir`: where the temporary directory goes (default os.tmpdir(), looked up when first written). */
  constructor(private readonly parentDir?: string) {}

  private async open(): Promise<WriteStream> {
    if (this.stream) return this.stream
    this.opening ??= (async () => {
      const dir = await mkdtemp(path.join(this.parentDir ?? os.tmpdir(), 'milter-body-'))
      this.dir = dir
      if (this.disposed) {
        await rm(dir, { recursive: true, force: true })
        throw new BodySpoolError('body spool disposed')
      }
      this.file = path.join(dir, 'body')
      const s = createWriteStream(this.file)
      // Always listened to: an error (or a write after destroy) must never be uncaught.
      s.on('error', (e) => {
        this.failure ??= e
      })
      this.stream = s
      return s
    })()
    return this.opening
  }

  private check(): void {
    if (this.disposed) throw new BodySpoolError('body spool disposed')
    if (this.failure) {
      throw new BodySpoolError(`cannot spool the replacement body: ${this.failure.message}`, {
        cause: this.failure,
      })
    }
  }

  /** Appends one REPLBODY chunk (back-pressure aware). */
  async write(chunk: Buffer): Promise<void> {
    this.check()
    const s = await this.open()
    this.check()
    if (s.destroyed) throw new BodySpoolError('body spool closed')
    this.bytes += chunk.length
    if (s.write(chunk)) return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        s.removeListener('drain', done)
        s.removeListener('close', done)
        resolve()
      }
      s.once('drain', done)
      s.once('close', done)
    })
    this.check()
  }

  /** Finishes writing; safe to call more than once. */
  async finish(): Promise<void> {
    this.check()
    if (this.opening) await this.opening
    const s = this.stream
    if (!s || s.writableFinished || s.closed) return
    await new Promise<void>((resolve) => {
      s.once('close', resolve)
      s.end()
    })
    this.check()
  }

  /** The body as CRLF-terminated lines (LF -> CRLF, CRLF split across chunks kept whole, last line finished). */
  async *lines(): AsyncGenerator<Buffer> {
    await this.finish()
    if (!this.file) return
    let carry: Buffer = Buffer.alloc(0)
    for await (const raw of createReadStream(this.file, { highWaterMark: 64 * 1024 })) {
      const chunk = raw as Buffer
      let buf = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk
      let start = 0
      for (let i = buf.indexOf(0x0a); i >= 0; i = buf.indexOf(0x0a, start)) {
        // a CRLF line is handed out as it is (no copy: a 50 MB body is not re-allocated line by
        // line); only a bare LF line gets its CR
        yield i > start && buf[i - 1] === 0x0d
          ? buf.subarray(start, i + 1)
          : Buffer.concat([buf.subarray(start, i), CRLF])
        start = i + 1
      }
      buf = buf.subarray(start)
      carry = Buffer.from(buf)
    }
    if (carry.length > 0) yield Buffer.concat([carry, CRLF])
  }

  /** The body in CRLF form as chunks (for the next milter in the chain). */
  async *chunks(): AsyncGenerator<Buffer> {
    const batch: Buffer[] = []
    let size = 0
    for await (const line of this.lines()) {
      batch.push(line)
      size += line.length
      if (size >= 65535) {
        yield Buffer.concat(batch)
        batch.length = 0
        size = 0
      }
    }
    if (size > 0) yield Buffer.concat(batch)
  }

  /** Stops any write in flight and removes the temporary file; safe to call at any time, more than once. */
  async dispose(): Promise<void> {
    this.disposed = true
    if (this.opening) await this.opening.catch(() => undefined)
    const s = this.stream
    if (s && !s.closed) {
      await new Promise<void>((resolve) => {
        s.once('close', resolve)
        s.destroy()
      })
    }
    if (this.dir) await rm(this.dir, { recursive: true, force: true })
    this.dir = undefined
    this.file = undefined
  }
}

const CRLF = Buffer.from('\r\n')
