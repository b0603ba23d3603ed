/**
 * Cursor primitives over packet payloads. The Reader throws a typed
 * MilterProtocolError on any short or unterminated field, so decoders read
 * like the spec and never throw anything else.
 */
import { MilterProtocolError } from '../errors'

/** Reads big-endian integers and NUL-terminated strings from one payload. */
export class Reader {
  private pos = 0

  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}

  /** Bytes not yet read. */
  get remaining(): number {
    return this.buf.length - this.pos
  }

  u8(field: string): number {
    this.need(1, field)
    const v = this.buf.readUInt8(this.pos)
    this.pos += 1
    return v
  }

  u16(field: string): number {
    this.need(2, field)
    const v = this.buf.readUInt16BE(this.pos)
    this.pos += 2
    return v
  }

  u32(field: string): number {
    this.need(4, field)
    const v = this.buf.readUInt32BE(this.pos)
    this.pos += 4
    return v
  }

  /** A `str\0` field, returned without its NUL. */
  cstring(field: string): Buffer {
    const end = this.buf.indexOf(0, this.pos)
    if (end < 0) throw this.error(`${field} has no terminating NUL`)
    const v = this.buf.subarray(this.pos, end)
    this.pos = end + 1
    return v
  }

  /** Everything left. */
  rest(): Buffer {
    const v = this.buf.subarray(this.pos)
    this.pos = this.buf.length
    return v
  }

  /** Fails when bytes are left over after the expected fields. */
  end(): void {
    if (this.remaining !== 0) throw this.error(`${this.remaining} unexpected trailing bytes`)
  }

  private need(n: number, field: string): void {
    if (this.remaining < n) throw this.error(`${field} needs ${n} bytes, ${this.remaining} left`)
  }

  private error(detail: string): MilterProtocolError {
    return new MilterProtocolError(`malformed ${this.what}: ${detail}`)
  }
}

/** A `str\0` field's value may not hold NUL itself (the caller strips or refuses it). */
export function assertNoNul(v: string | Buffer): void {
  if (typeof v === 'string' ? v.includes('\0') : v.includes(0))
    throw new RangeError('a milter string field cannot contain NUL')
}

/** Builds one payload from big-endian integers, strings and raw bytes. */
export class Writer {
  private readonly parts: Buffer[] = []
  private size = 0

  u8(v: number): this {
    return this.push(Buffer.of(v & 0xff))
  }

  u16(v: number): this {
    const b = Buffer.allocUnsafe(2)
    b.writeUInt16BE(v & 0xffff)
    return this.push(b)
  }

  u32(v: number): this {
    const b = Buffer.allocUnsafe(4)
    b.writeUInt32BE(v >>> 0)
    return this.push(b)
  }

  /** A `str\0` field. The value must not contain NUL itself. */
  cstring(v: string | Buffer): this {
    const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v
    assertNoNul(b)
    this.push(b)
    return this.push(Buffer.of(0))
  }

  bytes(v: Buffer): this {
    return this.push(v)
  }

  get length(): number {
    return this.size
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts, this.size)
  }

  private push(b: Buffer): this {
    this.parts.push(b)
    this.size += b.length
    return this
  }
}
