import assert from 'node:assert/strict'

import { MilterProtocolError } from '../../../lib/errors'
import {
  decodeCommand,
  encodeBare,
  encodeBody,
  encodeConnect,
  encodeHeader,
  encodeHelo,
  encodeMacro,
  encodeMail,
  encodeOptneg,
  encodeRcpt,
  encodeUnknown,
} from '../../../lib/protocol/commands'
import { Cmd, MacroStage } from '../../../lib/protocol/constants'
import { ch, cstr, frame, toHex, u16, u8 } from '../../helpers/bytes'
import { COMMAND_VECTORS, type CommandVector } from './vectors'

/** How our encoder builds each golden vector, by vector name. */
const ENCODERS: Readonly<Record<string, () => Buffer>> = {
  'OPTNEG v6 default offer': () => encodeOptneg(6, 0x1ff, 0x1fffff),
  'OPTNEG v2 dialect': () => encodeOptneg(2, 0x3f, 0x7f),
  'MACRO connect j': () => encodeMacro(MacroStage.CONNECT, [['j', 'mx.example.org']]),
  'MACRO eom with two pairs': () =>
    encodeMacro(MacroStage.EOM, [
      ['i', '4XyZ1'],
      ['{msg_id}', Buffer.from('<a@b>')],
    ]),
  'MACRO eoh with no pairs (§6.2: 00 00 00 02 44 <cmd>)': () => encodeMacro(MacroStage.EOH, []),
  'MACRO with an empty value': () => encodeMacro(MacroStage.HELO, [['{tls_version}', '']]),
  'CONNECT family unknown (no port, no address)': () =>
    encodeConnect('localhost', { family: 'unknown' }),
  'CONNECT family unix (port 0, path)': () =>
    encodeConnect('localhost', { family: 'unix', path: '/run/smtp.sock' }),
  'CONNECT family inet (§2.4 example)': () =>
    encodeConnect('client.example.com', { family: 'inet', address: '192.0.2.10', port: 52100 }),
  'CONNECT family inet6 (bare address)': () =>
    encodeConnect('[2001:db8::1]', { family: 'inet6', address: '2001:db8::1', port: 0xfffe }),
  'HELO client.example.com (§9 #6)': () => encodeHelo('client.example.com'),
  'HELO mx.example (style.md)': () => encodeHelo('mx.example'),
  'MAIL with SIZE (§9 #8)': () => encodeMail(['<alice@example.com>', 'SIZE=1234']),
  'MAIL null sender with two ESMTP args': () => encodeMail(['<>', 'BODY=8BITMIME', 'SMTPUTF8']),
  'RCPT without args (§9 #10)': () => encodeRcpt(['<bob@example.net>']),
  'RCPT with NOTIFY and ORCPT': () =>
    encodeRcpt(['<bob@example.net>', 'NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;bob@example.net']),
  DATA: () => encodeBare(Cmd.DATA),
  'HEADER From (§9 #14)': () => encodeHeader('From', 'alice@example.com'),
  'HEADER Subject (§2.8)': () => encodeHeader('Subject', 'Hi'),
  'HEADER with an empty value': () => encodeHeader('X-Empty', ''),
  'HEADER folded with bare LF, 8-bit bytes kept': () =>
    encodeHeader('X-Fold', Buffer.from([0x61, 0x0a, 0x09, 0xe9])),
  EOH: () => encodeBare(Cmd.EOH),
  'BODY Hello (§9 #20)': () => encodeBody(Buffer.from('Hello\r\n')),
  'BODY with NUL and CR bytes kept raw': () => encodeBody(Buffer.from([0x00, 0x0d, 0x41, 0x00])),
  BODYEOB: () => encodeBare(Cmd.BODYEOB),
  ABORT: () => encodeBare(Cmd.ABORT),
  QUIT: () => encodeBare(Cmd.QUIT),
  QUIT_NC: () => encodeBare(Cmd.QUIT_NC),
  UNKNOWN: () => encodeUnknown('XFOO bar baz'),
}

function asFrame(bytes: Buffer): { code: number; data: Buffer } {
  const len = bytes.readUInt32BE(0)
  assert.equal(len, bytes.length - 4, 'vector length field must match its size')
  return { code: bytes[4]!, data: bytes.subarray(5) }
}

function assertProtocolError(fn: () => unknown): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof MilterProtocolError, `expected MilterProtocolError, got ${String(e)}`)
    assert.equal(e.code, 'MILTER_ERR_PROTOCOL')
    return true
  })
}

describe('command encoders (golden vectors)', () => {
  it('has an encoder for every command vector and a vector for every encoder', () => {
    assert.deepEqual(COMMAND_VECTORS.map((v) => v.name).sort(), Object.keys(ENCODERS).sort())
  })

  it('covers every SMFIC_* command code', () => {
    const codes = new Set(COMMAND_VECTORS.map((v) => v.bytes[4]))
    for (const [name, code] of Object.entries(Cmd))
      assert.ok(codes.has(code), `no vector for ${name}`)
  })

  for (const v of COMMAND_VECTORS) {
    it(`encodes ${v.name} byte for byte`, () => {
      const encode = ENCODERS[v.name]
      assert.ok(encode, `no encoder for ${v.name}`)
      assert.equal(toHex(encode()), toHex(v.bytes))
    })
  }

  it('puts the right command byte in a MACRO packet for each of the seven stages', () => {
    const expected: Array<[MacroStage, string]> = [
      [MacroStage.CONNECT, 'C'],
      [MacroStage.HELO, 'H'],
      [MacroStage.ENVFROM, 'M'],
      [MacroStage.ENVRCPT, 'R'],
      [MacroStage.DATA, 'T'],
      [MacroStage.EOM, 'E'],
      [MacroStage.EOH, 'N'],
    ]
    for (const [stage, letter] of expected) {
      assert.equal(
        toHex(encodeMacro(stage, [['j', 'x']])),
        toHex(frame('D', u8(ch(letter)), cstr('j'), cstr('x'))),
        `stage ${stage}`,
      )
    }
  })

  it('sends text fields as UTF-8 and Buffer fields byte for byte', () => {
    assert.equal(
      toHex(encodeHelo('münchen.example')),
      toHex(frame('H', cstr(Buffer.from('münchen.example', 'utf8')))),
    )
    const latin1 = Buffer.from([0x6d, 0xfc, 0x6e])
    assert.equal(toHex(encodeHelo(latin1)), toHex(frame('H', cstr(latin1))))
    // MACRO with text only (written as one string) and with a Buffer value: the same bytes
    const utf8 = Buffer.from('münchen.example', 'utf8')
    assert.equal(
      toHex(
        encodeMacro(MacroStage.CONNECT, [
          ['j', 'münchen.example'],
          ['v', 'Haraka'],
        ]),
      ),
      toHex(frame('D', u8(ch('C')), cstr('j'), cstr(utf8), cstr('v'), cstr('Haraka'))),
    )
    assert.equal(
      toHex(
        encodeMacro(MacroStage.CONNECT, [
          ['j', utf8],
          ['v', 'Haraka'],
        ]),
      ),
      toHex(frame('D', u8(ch('C')), cstr('j'), cstr(utf8), cstr('v'), cstr('Haraka'))),
    )
  })

  it('writes the CONNECT port in network order', () => {
    const out = encodeConnect('h', { family: 'inet', address: '192.0.2.1', port: 25 })
    assert.equal(toHex(out), toHex(frame('C', cstr('h'), u8(ch('4')), u16(25), cstr('192.0.2.1'))))
  })

  it('refuses an empty BODY packet (it kills libmilter sessions)', () => {
    assert.throws(() => encodeBody(Buffer.alloc(0)), RangeError)
  })

  it('refuses MAIL and RCPT without an address', () => {
    assert.throws(() => encodeMail([]), RangeError)
    assert.throws(() => encodeRcpt([]), RangeError)
  })

  it('refuses a string field that contains NUL instead of truncating it', () => {
    assert.throws(() => encodeHelo('a\0b'), RangeError)
    assert.throws(() => encodeHeader('X', Buffer.from([0x61, 0x00])), RangeError)
    assert.throws(() => encodeMail(['<a@b>', 'X=\0']), RangeError)
    assert.throws(() => encodeMacro(MacroStage.HELO, [['{cipher}', 'a\0b']]), RangeError)
  })
})

describe('decodeCommand', () => {
  for (const v of COMMAND_VECTORS) {
    it(`decodes ${v.name}`, () => {
      assert.deepStrictEqual(decodeCommand(asFrame(v.bytes)), v.decoded)
    })
  }

  it('round-trips what the encoders produce', () => {
    const check = (v: CommandVector): void => {
      const encode = ENCODERS[v.name]!
      assert.deepStrictEqual(decodeCommand(asFrame(encode())), v.decoded, v.name)
    }
    COMMAND_VECTORS.forEach(check)
  })

  const malformed: Array<[string, Buffer]> = [
    ['HELO without its NUL', frame('H', Buffer.from('mx'))],
    ['HELO with trailing bytes', frame('H', cstr('mx'), Buffer.from('x'))],
    ['HEADER with one string', frame('L', cstr('Subject'))],
    ['CONNECT with a short port', frame('C', cstr('h'), u8(ch('4')), u8(1))],
    ['CONNECT unknown family with trailing bytes', frame('C', cstr('h'), u8(ch('U')), u16(0))],
    ['CONNECT without a family', frame('C', cstr('h'))],
    ['OPTNEG with 8 bytes', frame('O', Buffer.alloc(8))],
    ['OPTNEG with 13 bytes', frame('O', Buffer.alloc(13))],
    ['MACRO with an odd number of strings', frame('D', u8(ch('C')), cstr('j'))],
    ['MACRO without a stage byte', frame('D')],
    ['MAIL with an unterminated argument', frame('M', cstr('<a@b>'), Buffer.from('SIZE'))],
    ['DATA with a payload', frame('T', Buffer.from('x'))],
    ['EOB with a payload', frame('E', Buffer.from('x'))],
    ['UNKNOWN without NUL', frame('U', Buffer.from('XFOO'))],
    ['an unknown command code', frame('Z')],
  ]
  for (const [name, bytes] of malformed) {
    it(`refuses ${name} with MILTER_ERR_PROTOCOL`, () => {
      assertProtocolError(() => decodeCommand(asFrame(bytes)))
    })
  }
})
