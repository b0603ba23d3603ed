import assert from 'node:assert/strict'

import { MilterProtocolError } from '../../../lib/errors'
import { MDS_1M } from '../../../lib/protocol/constants'
import {
  DEFAULT_MAX_FRAME_DATA,
  FrameDecoder,
  encodeFrame,
  type Frame,
} from '../../../lib/protocol/frame'
import { frame, hex, toHex, u32 } from '../../helpers/bytes'
import { COMMAND_VECTORS, REPLY_VECTORS } from './vectors'

interface PlainFrame {
  code: number
  data: string
}

const plain = (f: Frame): PlainFrame => ({ code: f.code, data: toHex(f.data) })

/** The frames of a vector, read from its bytes without the decoder. */
function expectedOf(bytes: readonly Buffer[]): PlainFrame[] {
  return bytes.map((b) => ({ code: b[4]!, data: toHex(b.subarray(5)) }))
}

const STREAM = Buffer.concat(REPLY_VECTORS.map((v) => v.bytes))
const EXPECTED = expectedOf(REPLY_VECTORS.map((v) => v.bytes))

function isProtocolError(e: unknown): boolean {
  return e instanceof MilterProtocolError && e.code === 'MILTER_ERR_PROTOCOL'
}

describe('FrameDecoder', () => {
  it('decodes the concatenation of every reply vector pushed at once', () => {
    const d = new FrameDecoder()
    assert.deepStrictEqual(d.push(STREAM).map(plain), EXPECTED)
    assert.equal(d.pending, 0)
  })

  it('decodes the same frames when the stream is split in two at every byte offset', () => {
    for (let cut = 0; cut <= STREAM.length; cut++) {
      const d = new FrameDecoder()
      const got = [...d.push(STREAM.subarray(0, cut)), ...d.push(STREAM.subarray(cut))]
      assert.deepStrictEqual(got.map(plain), EXPECTED, `cut at ${cut}`)
      assert.equal(d.pending, 0, `cut at ${cut}`)
    }
  })

  it('decodes the same frames when fed one byte at a time', () => {
    const d = new FrameDecoder()
    const got: Frame[] = []
    for (let i = 0; i < STREAM.length; i++) got.push(...d.push(STREAM.subarray(i, i + 1)))
    assert.deepStrictEqual(got.map(plain), EXPECTED)
    assert.equal(d.pending, 0)
  })

  it('decodes the command vectors too, split at every offset', () => {
    const stream = Buffer.concat(COMMAND_VECTORS.map((v) => v.bytes))
    const expected = expectedOf(COMMAND_VECTORS.map((v) => v.bytes))
    for (let cut = 0; cut <= stream.length; cut += 1) {
      const d = new FrameDecoder()
      const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))]
      assert.deepStrictEqual(got.map(plain), expected, `cut at ${cut}`)
    }
  })

  it('counts the bytes of an incomplete frame as pending and returns nothing yet', () => {
    const d = new FrameDecoder()
    const f = frame('h', Buffer.from('X\0y\0'))
    assert.deepStrictEqual(d.push(f.subarray(0, 6)), [])
    assert.equal(d.pending, 6)
    assert.deepStrictEqual(d.push(f.subarray(6)).map(plain), expectedOf([f]))
    assert.equal(d.pending, 0)
  })

  it('accepts an empty chunk without effect', () => {
    const d = new FrameDecoder()
    assert.deepStrictEqual(d.push(Buffer.alloc(0)), [])
    assert.equal(d.pending, 0)
  })

  it('refuses a frame length of 0 as soon as the 4 length bytes are in', () => {
    const d = new FrameDecoder()
    const zero = hex('00 00 00 00')
    assert.deepStrictEqual(d.push(zero.subarray(0, 3)), [])
    assert.throws(() => d.push(zero.subarray(3)), isProtocolError)
    assert.equal(d.pending, 0)
  })

  it('refuses a frame length of 0 after a good frame in the same chunk', () => {
    const d = new FrameDecoder()
    assert.throws(() => d.push(Buffer.concat([frame('c'), hex('00 00 00 00 63')])), isProtocolError)
  })

  it('refuses a 4 GiB announced length with only 5 bytes pushed, holding nothing', () => {
    const d = new FrameDecoder()
    assert.throws(() => d.push(hex('ff ff ff ff 62')), isProtocolError)
    assert.equal(d.pending, 0)
  })

  it('refuses an oversized length before the code byte arrives', () => {
    const d = new FrameDecoder()
    const big = u32(0xffffffff)
    for (let i = 0; i < 3; i++) assert.deepStrictEqual(d.push(big.subarray(i, i + 1)), [])
    assert.throws(() => d.push(big.subarray(3)), isProtocolError)
    assert.equal(d.pending, 0)
  })

  it('accepts exactly the configured limit and refuses one byte more', () => {
    const ok = new FrameDecoder(MDS_1M)
    assert.deepStrictEqual(ok.push(u32(MDS_1M + 1)), [])
    assert.equal(ok.pending, 4)
    const over = new FrameDecoder(MDS_1M)
    assert.throws(() => over.push(u32(MDS_1M + 2)), isProtocolError)
  })

  it('uses a generous default limit (at least 1 MiB + 1, §1.6)', () => {
    assert.ok(DEFAULT_MAX_FRAME_DATA >= MDS_1M)
    const d = new FrameDecoder()
    assert.equal(d.maxDataBytes, DEFAULT_MAX_FRAME_DATA)
    assert.deepStrictEqual(d.push(u32(DEFAULT_MAX_FRAME_DATA + 1)), [])
    assert.throws(() => new FrameDecoder().push(u32(DEFAULT_MAX_FRAME_DATA + 2)), isProtocolError)
  })

  it('refuses a limit below 1 MiB - 1', () => {
    assert.throws(() => new FrameDecoder(65535), RangeError)
  })

  it('stays poisoned after an error: later pushes throw the same error', () => {
    const d = new FrameDecoder()
    let first: unknown
    try {
      d.push(hex('00 00 00 00'))
    } catch (e) {
      first = e
    }
    assert.ok(isProtocolError(first))
    assert.throws(
      () => d.push(frame('c')),
      (e: unknown) => e === first,
    )
    assert.throws(
      () => d.push(Buffer.alloc(0)),
      (e: unknown) => e === first,
    )
  })
})

/** A payload whose every byte depends on its offset, so a misplaced byte shows. */
function patterned(size: number): Buffer {
  const b = Buffer.allocUnsafe(size)
  for (let i = 0; i < size; i++) b[i] = (i * 31 + (i >>> 8)) & 0xff
  return b
}

/** Pushes bytes one at a time; returns every frame and checks nothing comes early. */
function pushByteByByte(d: FrameDecoder, bytes: Buffer): Frame[] {
  const got: Frame[] = []
  for (let i = 0; i < bytes.length; i++) {
    const frames = d.push(bytes.subarray(i, i + 1))
    if (frames.length > 0 && i !== bytes.length - 1) assert.fail(`a frame came out at byte ${i}`)
    got.push(...frames)
  }
  return got
}

describe('FrameDecoder on large frames cut small (linear in bytes)', () => {
  it('decodes a 256 KiB frame fed in 1-byte pieces, counting every byte as pending', () => {
    const data = patterned(256 * 1024)
    const bytes = encodeFrame(0x62, data)
    const d = new FrameDecoder()
    const got: Frame[] = []
    for (let i = 0; i < bytes.length; i++) {
      got.push(...d.push(bytes.subarray(i, i + 1)))
      if (i < bytes.length - 1) assert.equal(d.pending, i + 1)
    }
    assert.equal(got.length, 1)
    assert.equal(got[0]!.code, 0x62)
    assert.ok(got[0]!.data.equals(data))
    assert.equal(d.pending, 0)
  })

  it('decodes a 4 MiB REPLBODY frame fed in 1-byte pieces', () => {
    const data = patterned(4 * 1024 * 1024)
    const d = new FrameDecoder()
    const got = pushByteByByte(d, encodeFrame(0x62, data))
    assert.equal(got.length, 1)
    assert.equal(got[0]!.code, 0x62)
    assert.equal(got[0]!.data.length, data.length)
    assert.ok(got[0]!.data.equals(data))
    assert.equal(d.pending, 0)
  })

  it('decodes a 3 MiB frame in uneven pieces, then the frames after it in the last piece', () => {
    const data = patterned(3 * 1024 * 1024 + 7)
    const stream = Buffer.concat([
      encodeFrame(0x62, data),
      frame('c'),
      frame('y', Buffer.from('550 no\0')),
    ])
    const d = new FrameDecoder()
    const got: Frame[] = []
    let off = 0
    for (let step = 1; off < stream.length; step = (step * 7 + 3) % 70001) {
      got.push(...d.push(stream.subarray(off, off + step)))
      off += step
      assert.ok(d.pending <= off, 'pending never exceeds what was pushed')
    }
    assert.deepStrictEqual(
      got.map((f) => f.code),
      [0x62, 0x63, 0x79],
    )
    assert.ok(got[0]!.data.equals(data))
    assert.equal(toHex(got[2]!.data), toHex(Buffer.from('550 no\0')))
    assert.equal(d.pending, 0)
  })

  it('holds the length of a frame above 1 MiB without allocating it whole', () => {
    const d = new FrameDecoder()
    const before = process.memoryUsage().arrayBuffers
    const head = Buffer.concat([u32(DEFAULT_MAX_FRAME_DATA + 1), hex('62 00')])
    assert.deepStrictEqual(d.push(head), [])
    assert.equal(d.pending, 6)
    // 64 MiB announced, 2 bytes sent: the decoder holds about 1 MiB, not 64
    const grown = process.memoryUsage().arrayBuffers - before
    assert.ok(grown < 16 * 1024 * 1024, `array buffers grew by ${grown} bytes`)
  })
})

describe('FrameDecoder zero-copy', () => {
  it('returns frames that lie whole in one chunk as subarrays of that chunk', () => {
    const chunk = Buffer.concat([
      frame('h', Buffer.from('X\0y\0')),
      frame('b', Buffer.from('body')),
    ])
    const [a, b] = new FrameDecoder().push(chunk)
    assert.equal(a!.data.buffer, chunk.buffer)
    assert.equal(a!.data.byteOffset, chunk.byteOffset + 5)
    assert.equal(b!.data.buffer, chunk.buffer)
    assert.equal(b!.data.byteOffset, chunk.byteOffset + 9 + 5)
  })

  it('does not copy a frame when only its length prefix was split', () => {
    const f = frame('b', Buffer.from('body'))
    const d = new FrameDecoder()
    assert.deepStrictEqual(d.push(f.subarray(0, 2)), [])
    const rest = f.subarray(2)
    const [got] = d.push(rest)
    assert.equal(got!.data.toString(), 'body')
    assert.equal(got!.data.buffer, rest.buffer)
  })
})

describe('encodeFrame', () => {
  it('writes len = 1 + data length, then the code, then the data', () => {
    assert.equal(toHex(encodeFrame(0x63)), '00 00 00 01 63')
    const data = Buffer.from('abc')
    assert.equal(toHex(encodeFrame(0x62, data)), toHex(frame('b', data)))
  })
})
