/**
 * A replacement body (REPLBODY chunks) spooled to a temporary file, so a
 * large body is never held whole in memory, and read back as CRLF lines.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'

/** Spools one replacement body. */
export class BodySpool {
  private stream: WriteStream | undefined
  private dir: string | undefined
  private file: string | undefined
  bytes = 0

  constructor(private readonly parentDir: string = os.tmpdir()) {}

  /** Appends one REPLBODY chunk (back-pressure aware). */
  async write(chunk: Buffer): Promise<void> {
    if (!this.stream) {
      this.dir = await mkdtemp(path.join(this.parentDir, 'milter-body-'))
      this.file = path.join(this.dir, 'body')
      this.stream = createWriteStream(this.file)
    }
    this.bytes += chunk.length
    if (!this.stream.write(chunk)) {
      const s = this.stream
      await new Promise<void>((resolve, reject) => {
        const onError = (e: Error): void => reject(e)
        s.once('error', onError)
        s.once('drain', () => {
          s.removeListener('error', onError)
          resolve()
        })
      })
    }
  }

  /** Finishes writing; safe to call more than once. */
  async finish(): Promise<void> {
    const s = this.stream
    if (!s || s.writableFinished) return
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.end(resolve)
    })
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
        const end = i > start && buf[i - 1] === 0x0d ? i - 1 : i
        yield Buffer.concat([buf.subarray(start, end), CRLF])
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

  /** Removes the temporary file. */
  async dispose(): Promise<void> {
    this.stream?.destroy()
    if (this.dir) await rm(this.dir, { recursive: true, force: true })
    this.dir = undefined
    this.file = undefined
  }
}

const CRLF = Buffer.from('\r\n')
