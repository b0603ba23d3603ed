import assert from 'node:assert/strict'

import { MilterProtocolError } from '../../../lib/errors'
import { Rep } from '../../../lib/protocol/constants'
import { decodeReply, encodeReply, type Reply } from '../../../lib/protocol/replies'
import { cstr, frame, toHex, u32 } from '../../helpers/bytes'
import { OPTNEG_UNKNOWN_STAGE, REPLY_VECTORS } from './vectors'

function asFrame(bytes: Buffer): { code: number; data: Buffer } {
  assert.equal(bytes.readUInt32BE(0), bytes.length - 4, 'vector length field must match its size')
  return { code: bytes[4]!, data: bytes.subarray(5) }
}

function decode(bytes: Buffer): Reply {
  return decodeReply(asFrame(bytes))
}

describe('decodeReply (golden vectors)', () => {
  it('has a vector for every SMFIR_* code except SETSYMLIST', () => {
    const codes = new Set(REPLY_VECTORS.map((v) => v.bytes[4]))
    for (const [name, code] of Object.entries(Rep)) {
      if (code === Rep.SETSYMLIST) continue
      assert.ok(codes.has(code), `no vector for ${name}`)
    }
  })

  for (const v of REPLY_VECTORS) {
    it(`decodes ${v.name}`, () => {
      assert.deepStrictEqual(decode(v.bytes), v.reply)
    })
  }

  for (const v of REPLY_VECTORS) {
    it(`encodeReply gives back the bytes of ${v.name}`, () => {
      assert.equal(toHex(encodeReply(v.reply)), toHex(v.bytes))
    })
  }

  it('refuses SETSYMLIST as a packet, with or without payload', () => {
    for (const bytes of [frame('l'), frame('l', u32(0), cstr('j'))]) {
      assert.throws(
        () => decode(bytes),
        (e: unknown) => e instanceof MilterProtocolError && e.code === 'MILTER_ERR_PROTOCOL',
      )
    }
  })

  it('skips a symlist entry with an unknown stage and keeps the entries after it', () => {
    const r = decode(OPTNEG_UNKNOWN_STAGE)
    assert.equal(r.kind, 'optneg')
    if (r.kind !== 'optneg') return
    assert.deepStrictEqual(
      r.symlist,
      new Map([
        [1, ['{cipher}']],
        [6, ['i']],
      ]),
    )
    assert.equal(r.symlistWarnings.length, 1)
    assert.match(r.symlistWarnings[0]!, /unknown stage 9/)
  })

  it('stops parsing a symlist at a truncated entry and warns', () => {
    const r = decode(frame('O', u32(6), u32(0), u32(0), u32(2), cstr('i'), Buffer.from([0, 0])))
    assert.equal(r.kind, 'optneg')
    if (r.kind !== 'optneg') return
    assert.deepStrictEqual(r.symlist, new Map([[2, ['i']]]))
    assert.equal(r.symlistWarnings.length, 1)
  })

  it('stops parsing a symlist at an entry without NUL and warns', () => {
    const r = decode(frame('O', u32(6), u32(0), u32(0), u32(2), Buffer.from('i {x}')))
    assert.equal(r.kind, 'optneg')
    if (r.kind !== 'optneg') return
    assert.equal(r.symlist.size, 0)
    assert.equal(r.symlistWarnings.length, 1)
  })

  it('reads the OPTNEG words as unsigned 32-bit values', () => {
    const r = decode(frame('O', u32(6), u32(0x80000000), u32(0xffffffff)))
    assert.equal(r.kind, 'optneg')
    if (r.kind !== 'optneg') return
    assert.equal(r.actions, 0x80000000)
    assert.equal(r.protocol, 0xffffffff)
  })

  it('keeps 8-bit bytes in header values untouched', () => {
    const value = Buffer.from([0xc3, 0xa9, 0xff, 0x0a, 0x09, 0x41])
    const r = decode(frame('h', cstr('X-8bit'), cstr(value)))
    assert.deepStrictEqual(r, { kind: 'addheader', name: Buffer.from('X-8bit'), value })
  })

  // found by npm run fuzz: the encoder wrote names as UTF-8, the decoder reads latin1
  it('encodes symlist macro names as latin1, the way it decodes them', () => {
    const bytes = frame(
      'O',
      u32(6),
      u32(0),
      u32(0),
      u32(0),
      cstr(Buffer.from([0x7b, 0xe9, 0x80, 0x7d])),
    )
    const r = decode(bytes)
    assert.equal(r.kind, 'optneg')
    if (r.kind !== 'optneg') return
    assert.deepStrictEqual(r.symlist, new Map([[0, ['{\u00e9\u0080}']]]))
    assert.equal(toHex(encodeReply(r)), toHex(bytes))
  })
})
