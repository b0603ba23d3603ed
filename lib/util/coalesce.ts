/**
 * A Transform that joins small chunks into pieces of exactly `size` bytes
 * (the last one may be shorter). Haraka's message stream yields the body one
 * line per chunk; read line by line, a 100 KB body costs some 1,300 stream
 * writes and async-iterator steps, joined it costs two. With `size` the
 * milter protocol's largest body packet, each piece goes out as one packet
 * without being copied again; a chunk larger than `size` is cut into views.
 */
import { Transform, type TransformCallback } from 'node:stream'

export class Coalescer extends Transform {
  private parts: Buffer[] = []
  private bytes = 0

  constructor(private readonly size: number) {
    super()
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    let rest = chunk
    while (this.bytes + rest.length >= this.size) {
      const head = rest.subarray(0, this.size - this.bytes)
      rest = rest.subarray(head.length)
      if (this.parts.length === 0) {
        this.push(head)
      } else {
        this.parts.push(head)
        this.push(Buffer.concat(this.parts, this.size))
        this.parts = []
      }
      this.bytes = 0
    }
    if (rest.length > 0) {
      this.parts.push(rest)
      this.bytes += rest.length
    }
    done()
  }

  override _flush(done: TransformCallback): void {
    if (this.bytes > 0) {
      const parts = this.parts
      this.push(parts.length === 1 ? parts[0] : Buffer.concat(parts, this.bytes))
      this.parts = []
      this.bytes = 0
    }
    done()
  }
}
