import assert from 'node:assert/strict'
import { inspect } from 'node:util'

import { MilterProtocolError } from '../../../lib/errors'
import { FrameDecoder } from '../../../lib/protocol/frame'
import { decodeReply, type Reply } from '../../../lib/protocol/replies'
import { ch, cstr, frame, u32 } from '../../helpers/bytes'

function asFrame(bytes: Buffer): { code: number; data: Buffer } {
  return { code: bytes[4]!, data: bytes.subarray(5) }
}

/** Throws unless fn throws a MilterProtocolError (and nothing else). */
function assertProtocolError(fn: () => unknown, what: string): void {
  let thrown: unknown
  try {
    fn()
  } catch (e) {
    thrown = e
  }
  assert.ok(thrown !== undefined, `${what}: expected an error`)
  assert.ok(
    thrown instanceof MilterProtocolError,
    `${what}: expected MilterProtocolError, got ${inspect(thrown)}`,
  )
  assert.equal(thrown.code, 'MILTER_ERR_PROTOCOL', what)
}

const MALFORMED: Array<[string, Buffer]> = [
  // missing NUL
  ['REPLYCODE without NUL', frame('y', Buffer.from('550 5.7.1 no'))],
  ['QUARANTINE without NUL', frame('q', Buffer.from('why'))],
  ['ADDHEADER value without NUL', frame('h', cstr('X'), Buffer.from('v'))],
  ['ADDHEADER name without NUL', frame('h', Buffer.from('X'))],
  ['ADDHEADER with no payload', frame('h')],
  ['INSHEADER value without NUL', frame('i', u32(0), cstr('X'), Buffer.from('v'))],
  ['CHGHEADER with only the index', frame('m', u32(1))],
  ['ADDRCPT without NUL', frame('+', Buffer.from('<a@b>'))],
  ['ADDRCPT with no payload', frame('+')],
  ['DELRCPT without NUL', frame('-', Buffer.from('<a@b>'))],
  ['ADDRCPT_PAR args without NUL', frame('2', cstr('<a@b>'), Buffer.from('NOTIFY=NEVER'))],
  ['CHGFROM without NUL', frame('e', Buffer.from('<a@b>'))],
  ['CHGFROM with no payload', frame('e')],
  ['REPLYCODE with no payload', frame('y')],
  // short uint32
  ['INSHEADER with a 3-byte index', frame('i', Buffer.from([0, 0, 1]))],
  ['CHGHEADER with a 2-byte index', frame('m', Buffer.from([0, 1]))],
  ['OPTNEG with 11 bytes', frame('O', Buffer.alloc(11))],
  ['OPTNEG with 4 bytes', frame('O', u32(6))],
  ['OPTNEG with no payload', frame('O')],
  // trailing bytes
  ['REPLYCODE with bytes after its NUL', frame('y', cstr('550 no'), Buffer.from('x'))],
  ['ADDHEADER with a third string', frame('h', cstr('X'), cstr('v'), cstr('w'))],
  ['INSHEADER with a trailing byte', frame('i', u32(0), cstr('X'), cstr('v'), Buffer.from([1]))],
  ['CHGHEADER with a third string', frame('m', u32(1), cstr('X'), cstr('v'), cstr('w'))],
  ['ADDRCPT with a second string', frame('+', cstr('<a@b>'), cstr('NOTIFY=NEVER'))],
  ['DELRCPT with a second string', frame('-', cstr('<a@b>'), cstr('x'))],
  ['ADDRCPT_PAR with three strings', frame('2', cstr('<a@b>'), cstr('A=1'), cstr('B=2'))],
  ['CHGFROM with three strings', frame('e', cstr('<a@b>'), cstr('A=1'), cstr('B=2'))],
  ['QUARANTINE with a second string', frame('q', cstr('why'), cstr('more'))],
  // unknown and never-as-a-packet codes
  ['SETSYMLIST as a packet', frame('l', u32(0), cstr('j'))],
  ['an unknown code Z', frame('Z')],
  ['an unknown code 0x00', frame(0x00)],
  ['an unknown code 0xff with data', frame(0xff, Buffer.from('x'))],
  ['a command code (HELO) as a reply', frame('H', cstr('x'))],
]

// data on any reply that must be empty: c a r t d s p 4 f
for (const letter of ['c', 'a', 'r', 't', 'd', 's', 'p', '4', 'f']) {
  MALFORMED.push([`'${letter}' with one byte of data`, frame(letter, Buffer.from([0]))])
  MALFORMED.push([`'${letter}' with a string`, frame(letter, cstr('x'))])
}

describe('decodeReply on malformed replies', () => {
  for (const [name, bytes] of MALFORMED) {
    it(`refuses ${name} with MilterProtocolError`, () => {
      assertProtocolError(() => decodeReply(asFrame(bytes)), name)
    })
  }

  it('names the reply in the message of an unknown code', () => {
    assert.throws(
      () => decodeReply(asFrame(frame('Z'))),
      (e: unknown) => e instanceof MilterProtocolError && /0x5a/.test(e.message),
    )
  })
})

/** mulberry32: a tiny fixed-seed PRNG, so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const REPLY_KINDS = new Set<Reply['kind']>([
  'continue',
  'accept',
  'reject',
  'tempfail',
  'discard',
  'skip',
  'progress',
  'shutdown',
  'conn_fail',
  'replycode',
  'addheader',
  'insheader',
  'chgheader',
  'replbody',
  'addrcpt',
  'addrcpt_par',
  'delrcpt',
  'chgfrom',
  'quarantine',
  'optneg',
])

/** Codes worth hitting often: every reply code, plus a few that are not replies. */
const INTERESTING = [...'+-24abcdefhilmOpqrsty'].map(ch).concat([0x00, 0x41, 0x7f, 0xff])

describe('decodeReply fuzz (fixed seed)', () => {
  it('returns a Reply or throws MilterProtocolError for 5000 random frames, nothing else', () => {
    const rnd = prng(0x6d696c74)
    const seen = { ok: 0, refused: 0 }
    for (let i = 0; i < 5000; i++) {
      const code =
        rnd() < 0.8 ? INTERESTING[Math.floor(rnd() * INTERESTING.length)]! : Math.floor(rnd() * 256)
      const len = Math.floor(rnd() * rnd() * 64)
      const data = Buffer.alloc(len)
      for (let j = 0; j < len; j++) {
        // lots of NULs and small values so strings and uint32s sometimes parse
        const r = rnd()
        data[j] = r < 0.25 ? 0 : r < 0.5 ? Math.floor(rnd() * 8) : Math.floor(rnd() * 256)
      }
      let reply: Reply
      try {
        reply = decodeReply({ code, data })
      } catch (e) {
        assert.ok(
          e instanceof MilterProtocolError,
          `code 0x${code.toString(16)} data ${data.toString('hex')}: threw ${String(e)}`,
        )
        seen.refused++
        continue
      }
      assert.ok(REPLY_KINDS.has(reply.kind), `unexpected kind ${reply.kind}`)
      seen.ok++
    }
    // the fuzz must exercise both outcomes, or it proves nothing
    assert.ok(seen.ok > 100, `only ${seen.ok} frames decoded`)
    assert.ok(seen.refused > 100, `only ${seen.refused} frames refused`)
  })

  it('FrameDecoder yields frames or throws MilterProtocolError on random byte streams', () => {
    const rnd = prng(42)
    for (let i = 0; i < 2000; i++) {
      const d = new FrameDecoder()
      const len = Math.floor(rnd() * 40)
      const bytes = Buffer.alloc(len)
      for (let j = 0; j < len; j++) bytes[j] = rnd() < 0.6 ? 0 : Math.floor(rnd() * 256)
      try {
        for (const f of d.push(bytes)) {
          assert.equal(typeof f.code, 'number')
          assert.ok(Buffer.isBuffer(f.data))
        }
      } catch (e) {
        assert.ok(e instanceof MilterProtocolError, `threw ${String(e)}`)
      }
    }
  })
})
