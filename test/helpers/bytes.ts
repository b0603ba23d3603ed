/**
 * A naive, independent byte builder for golden vectors (in the spirit of
 * pg-protocol's testing/buffer-list.ts). It deliberately does not import
 * lib/protocol/bytes.ts or frame.ts, so the encoder under test is checked
 * against a second, obviously correct writer.
 */

/** Bytes from a hex string; spaces, newlines and `|` separators are ignored. */
export function hex(text: string): Buffer {
  const clean = text.replace(/[\s|]+/g, '')
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`bad hex string: ${text}`)
  const out: number[] = []
  for (let i = 0; i < clean.length; i += 2) out.push(parseInt(clean.slice(i, i + 2), 16))
  return Buffer.from(out)
}

/** One byte. */
export function u8(v: number): Buffer {
  return Buffer.from([v & 0xff])
}

/** A big-endian uint16, byte by byte. */
export function u16(v: number): Buffer {
  return Buffer.from([(v >>> 8) & 0xff, v & 0xff])
}

/** A big-endian uint32, byte by byte. */
export function u32(v: number): Buffer {
  return Buffer.from([(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
}

/** A `str\0` field: latin1 text (or raw bytes) and one NUL. */
export function cstr(v: string | Buffer): Buffer {
  const b = typeof v === 'string' ? Buffer.from(v, 'latin1') : v
  return Buffer.concat([b, Buffer.from([0])])
}

/** Raw latin1 bytes, no terminator. */
export function raw(v: string): Buffer {
  return Buffer.from(v, 'latin1')
}

/** The code byte of a letter: ch('O') === 0x4f. */
export function ch(letter: string): number {
  if (letter.length !== 1) throw new Error(`one letter, not ${JSON.stringify(letter)}`)
  return letter.charCodeAt(0)
}

/** A whole packet: uint32 length (code + data), the code, then the data parts. */
export function frame(code: number | string, ...parts: Buffer[]): Buffer {
  const c = typeof code === 'string' ? ch(code) : code
  const data = Buffer.concat(parts)
  return Buffer.concat([u32(data.length + 1), u8(c), data])
}

/** Hex text of a buffer, bytes separated by spaces (for readable assertion failures). */
export function toHex(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(' ')
}
