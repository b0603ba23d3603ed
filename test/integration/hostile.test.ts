/**
 * A real MilterSession (openSession over TCP or a unix socket) against
 * in-process milters that misbehave in ways libmilter never does, plus
 * checks of the exact bytes the session puts on the wire.
 */
import assert from 'node:assert/strict'
import { inspect } from 'node:util'

import { isMilterError, type MilterError } from '../../lib/errors'
import type { Command, ConnectAddress } from '../../lib/protocol/commands'
import { MacroStage } from '../../lib/protocol/constants'
import { openSession } from '../../lib/session/open'
import type { MilterSession, SessionOptions } from '../../lib/session/session'
import { parseSocketSpec } from '../../lib/transport/spec'
import { ch, cstr, frame, hex, toHex, u32 } from '../helpers/bytes'
import {
  CONTINUE,
  optnegReply,
  scripted,
  startFakeMilter,
  type FakeConn,
  type FakeMilter,
  type Handler,
} from '../helpers/hostile-server'
import {
  ADDHEADER_XTEST,
  OPTNEG_REPLY_ADDHDRS,
  OPTNEG_REPLY_SYMLIST,
  WORKED_EXAMPLE_CLIENT,
} from '../unit/protocol/vectors'

const INET: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }
/** What we offer at v6: actions 0x1FF, protocol 0x1FFFFF without RCPT_REJ (0x800). */
const OUR_OFFER = frame('O', u32(6), u32(0x1ff), u32(0x1ff7ff))

const NR_HDR = 0x80
const NR_BODY = 0x80000
const NOHELO = 0x2
const NOHDRS = 0x20

let milters: FakeMilter[] = []
let sessions: MilterSession[] = []

afterEach(async () => {
  for (const s of sessions) s.destroy()
  sessions = []
  await Promise.all(milters.map((m) => m.close()))
  milters = []
})

async function milter(handler: Handler, unix = false): Promise<FakeMilter> {
  const m = await startFakeMilter(handler, { unix })
  milters.push(m)
  return m
}

function options(over: Partial<SessionOptions> = {}): SessionOptions {
  return {
    name: 'hostile',
    timeouts: { connectMs: 300, commandMs: 300, contentMs: 300 },
    macros: new Map(),
    ...over,
  }
}

async function open(m: FakeMilter, over: Partial<SessionOptions> = {}): Promise<MilterSession> {
  const s = await openSession(parseSocketSpec(m.spec), options(over))
  sessions.push(s)
  return s
}

/** The MilterError a promise rejects with (fails the test if it resolves or throws another). */
async function failure(p: Promise<unknown>): Promise<MilterError> {
  try {
    await p
  } catch (e) {
    assert.ok(isMilterError(e), `expected a MilterError, got ${String(e)}`)
    return e
  }
  return assert.fail('expected a rejection')
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(t))
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Runs CONNECT .. DATA with CONTINUE everywhere. */
async function toData(s: MilterSession): Promise<void> {
  assert.equal((await s.connect('client.example.com', INET)).kind, 'continue')
  assert.equal((await s.helo('client.example.com')).kind, 'continue')
  assert.equal((await s.mail(['<alice@example.com>'])).kind, 'continue')
  assert.equal((await s.rcpt(['<bob@example.net>'])).kind, 'continue')
  assert.equal((await s.data()).kind, 'continue')
}

const names = (cmds: readonly Command[]): string[] =>
  cmds.map((c) => (c.cmd === 'macro' ? `macro:${String.fromCharCode(c.stageCmd)}` : c.cmd))

/** Asserts a sticky failure: same error again, nothing more written, socket closed. */
async function assertSticky(s: MilterSession, conn: FakeConn, err: MilterError): Promise<void> {
  assert.strictEqual(s.error, err)
  await within(conn.closed, 1000, 'server seeing the socket closed')
  const written = conn.bytes().length
  const again = await failure(s.helo('again.example'))
  assert.strictEqual(again, err, 'the next call rejects with the very same error')
  const mail = await failure(s.mail(['<x@y>']))
  assert.strictEqual(mail, err)
  s.abort()
  s.quit()
  await sleep(20)
  assert.equal(conn.bytes().length, written, 'nothing written after the failure')
}

describe('hostile milters', function () {
  this.timeout(5000)

  it('times out in phase connect when OPTNEG is never answered', async () => {
    const m = await milter(scripted({ optneg: 'hang' }))
    const started = Date.now()
    const err = await failure(
      open(m, { timeouts: { connectMs: 250, commandMs: 5000, contentMs: 5000 } }),
    )
    const took = Date.now() - started
    assert.equal(err.code, 'MILTER_ERR_TIMEOUT')
    assert.equal((err as MilterError & { phase: string }).phase, 'connect')
    assert.ok(took >= 200 && took < 1500, `took ${took} ms`)
    const conn = await m.connection()
    await within(conn.closed, 1000, 'server seeing the socket closed')
  })

  it('times out in phase command when CONNECT is never answered', async () => {
    const m = await milter(scripted({ connect: 'hang' }))
    const s = await open(m, { timeouts: { connectMs: 5000, commandMs: 250, contentMs: 5000 } })
    const started = Date.now()
    const err = await failure(s.connect('client.example.com', INET))
    const took = Date.now() - started
    assert.equal(err.code, 'MILTER_ERR_TIMEOUT')
    assert.equal((err as MilterError & { phase: string }).phase, 'command')
    assert.ok(took >= 200 && took < 1500, `took ${took} ms`)
    await assertSticky(s, await m.connection(), err)
  })

  it('times out in phase content when BODYEOB is never answered', async () => {
    const m = await milter(scripted({ eob: 'hang' }))
    const s = await open(m, { timeouts: { connectMs: 5000, commandMs: 5000, contentMs: 250 } })
    await toData(s)
    assert.equal((await s.eoh()).kind, 'continue')
    const started = Date.now()
    const err = await failure(s.endOfMessage())
    const took = Date.now() - started
    assert.equal(err.code, 'MILTER_ERR_TIMEOUT')
    assert.equal((err as MilterError & { phase: string }).phase, 'content')
    assert.ok(took >= 200 && took < 1500, `took ${took} ms`)
    await assertSticky(s, await m.connection(), err)
  })

  it('lets PROGRESS every 100 ms for 1 s re-arm a 300 ms content timeout', async () => {
    const m = await milter(
      scripted({
        eob: (_cmd, conn) => {
          let n = 0
          const t = setInterval(() => {
            if (conn.isClosed) return clearInterval(t)
            n++
            if (n <= 10) conn.send(frame('p'))
            else {
              clearInterval(t)
              conn.send(frame('h', cstr('X-Slow'), cstr('yes')), CONTINUE)
            }
          }, 100)
        },
      }),
    )
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 300 } })
    await toData(s)
    await s.eoh()
    const started = Date.now()
    const res = await s.endOfMessage()
    const took = Date.now() - started
    assert.equal(res.verdict.kind, 'continue')
    assert.equal(res.modifications.length, 1)
    assert.ok(took >= 1000, `finished after ${took} ms, before the PROGRESS run ended`)
    assert.equal(s.error, undefined)
  })

  it('eom_timeout cuts off a milter that sends PROGRESS forever (PROGRESS cannot extend it)', async () => {
    const m = await milter(
      scripted({
        eob: (_cmd, conn) => {
          const t = setInterval(() => {
            if (conn.isClosed) return clearInterval(t)
            conn.send(frame('p'))
          }, 50)
        },
      }),
    )
    const s = await open(m, {
      timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 300, eomMs: 800 },
    })
    await toData(s)
    await s.eoh()
    const started = Date.now()
    const err = await failure(s.endOfMessage())
    const took = Date.now() - started
    assert.equal(err.code, 'MILTER_ERR_TIMEOUT')
    assert.match(err.message, /eom_timeout/)
    assert.ok(took >= 700 && took < 3000, `took ${took} ms`)
    await assertSticky(s, await m.connection(), err)
  })

  it('fails with CLOSED or PROTOCOL when the milter closes mid-frame', async () => {
    const m = await milter(
      scripted({
        connect: (_cmd, conn) => {
          conn.socket.end(CONTINUE.subarray(0, 3))
        },
      }),
    )
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 3000, contentMs: 1000 } })
    const started = Date.now()
    const err = await failure(s.connect('client.example.com', INET))
    assert.ok(
      err.code === 'MILTER_ERR_CLOSED' || err.code === 'MILTER_ERR_PROTOCOL',
      `got ${err.code}`,
    )
    assert.ok(Date.now() - started < 2000, 'noticed the close, not a timeout')
    await assertSticky(s, await m.connection(), err)
  })

  it('fails with CLOSED when the milter closes between frames', async () => {
    const m = await milter(scripted({ helo: 'close' }))
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 3000, contentMs: 1000 } })
    await s.connect('client.example.com', INET)
    const err = await failure(s.helo('x'))
    assert.equal(err.code, 'MILTER_ERR_CLOSED')
    await assertSticky(s, await m.connection(), err)
  })

  const garbage: Array<[string, Buffer]> = [
    ['an HTTP error page', Buffer.from('HTTP/1.0 400 Bad Request\r\n\r\n')],
    ['a zero length', hex('00 00 00 00 63')],
    ['an unknown reply code', frame('Z')],
    ['CONTINUE with a payload', frame('c', Buffer.from('!'))],
    ['a stray SETSYMLIST packet', frame('l', u32(0), cstr('j'))],
    ['an OPTNEG after negotiation', optnegReply()],
  ]
  for (const [what, bytes] of garbage) {
    it(`fails with MILTER_ERR_PROTOCOL on ${what}`, async () => {
      const m = await milter(scripted({ connect: bytes }))
      const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 3000, contentMs: 1000 } })
      const started = Date.now()
      const err = await failure(s.connect('client.example.com', INET))
      assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
      assert.ok(Date.now() - started < 2000, 'noticed at once, not by timeout')
      await assertSticky(s, await m.connection(), err)
    })
  }

  it('refuses a 4 GiB announced frame at once, without allocating it', async () => {
    const m = await milter(scripted({ connect: hex('ff ff ff ff') }))
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 5000, contentMs: 1000 } })
    const before = process.memoryUsage().rss
    const started = Date.now()
    const err = await failure(s.connect('client.example.com', INET))
    const took = Date.now() - started
    const grew = process.memoryUsage().rss - before
    assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
    assert.ok(took < 1000, `took ${took} ms`)
    assert.ok(grew < 8 * 1024 * 1024, `rss grew by ${grew} bytes`)
    await assertSticky(s, await m.connection(), err)
  })

  it('reports a close right after OPTNEG as a negotiation failure naming the offer in hex', async () => {
    const m = await milter(scripted({ optneg: 'close' }))
    const err = await failure(open(m))
    assert.equal(err.code, 'MILTER_ERR_NEGOTIATE')
    assert.match(err.message, /actions=0x1ff\b/)
    assert.match(err.message, /protocol=0x1ff7ff\b/)
  })

  it('reports a reset right after OPTNEG as a negotiation failure', async () => {
    const m = await milter(scripted({ optneg: (_c, conn) => conn.socket.resetAndDestroy() }))
    const err = await failure(open(m))
    assert.equal(err.code, 'MILTER_ERR_NEGOTIATE')
    assert.match(err.message, /0x1ff7ff/)
  })

  const badOptneg: Array<[string, Buffer, Partial<SessionOptions>, RegExp]> = [
    ['version 7', optnegReply(7, 0x1, 0), {}, /\b7\b/],
    ['version 1', optnegReply(1, 0x1, 0), {}, /\b1\b/],
    ['extra action bits (0x200)', optnegReply(6, 0x201, 0), {}, /0x201/],
    ['actions beyond a reduced offer', optnegReply(6, 0x3f, 0), { actions: 0x33 }, /0x33/],
    ['extra protocol bits (RCPT_REJ)', optnegReply(6, 0x1, 0x800), {}, /0x800/],
    ['a v6 protocol bit from a v2 offer', optnegReply(2, 0x1, NR_HDR), { version: 2 }, /0x80/],
    ['a CONTINUE instead of OPTNEG', CONTINUE, {}, /continue/],
    ['a short OPTNEG', frame('O', u32(6), u32(1)), {}, /OPTNEG/],
  ]
  for (const [what, reply, over, mentions] of badOptneg) {
    it(`refuses ${what} in the OPTNEG reply`, async () => {
      const m = await milter(scripted({ optneg: reply }))
      const err = await failure(open(m, over))
      assert.ok(
        err.code === 'MILTER_ERR_NEGOTIATE' || err.code === 'MILTER_ERR_PROTOCOL',
        `got ${err.code}: ${err.message}`,
      )
      assert.match(err.message, mentions)
      const conn = await m.connection()
      await within(conn.closed, 1000, 'server seeing the socket closed')
    })
  }

  it('refuses mask and version conflicts with MILTER_ERR_NEGOTIATE', async () => {
    for (const reply of [optnegReply(7, 1, 0), optnegReply(6, 0x400, 0)]) {
      const m = await milter(scripted({ optneg: reply }))
      const err = await failure(open(m))
      assert.equal(err.code, 'MILTER_ERR_NEGOTIATE')
    }
  })

  it('refuses a modification in reply to RCPT with MILTER_ERR_PROTOCOL', async () => {
    const m = await milter(scripted({ rcpt: frame('h', cstr('X-Early'), cstr('no')) }))
    const s = await open(m)
    await s.connect('client.example.com', INET)
    await s.helo('x')
    await s.mail(['<alice@example.com>'])
    const err = await failure(s.rcpt(['<bob@example.net>']))
    assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
    assert.match(err.message, /RCPT/)
    await assertSticky(s, await m.connection(), err)
  })

  it('refuses a malformed REPLYCODE (250 ok) with MILTER_ERR_PROTOCOL', async () => {
    const m = await milter(scripted({ mail: frame('y', cstr('250 ok')) }))
    const s = await open(m)
    await s.connect('client.example.com', INET)
    const err = await failure(s.mail(['<alice@example.com>']))
    assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
    await assertSticky(s, await m.connection(), err)
  })

  it('refuses a modification of an action we never offered', async () => {
    const m = await milter(
      scripted({ optneg: optnegReply(6, 0x1, 0), eob: [frame('b', Buffer.from('x')), CONTINUE] }),
    )
    const s = await open(m, { actions: 0x1 })
    await toData(s)
    await s.eoh()
    const err = await failure(s.endOfMessage())
    assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
  })

  it('passes a well-formed REPLYCODE through as a verdict', async () => {
    const m = await milter(scripted({ rcpt: frame('y', cstr('450 4.2.0 %%busy')) }))
    const s = await open(m)
    await s.connect('client.example.com', INET)
    await s.mail(['<alice@example.com>'])
    const v = await s.rcpt(['<bob@example.net>'])
    assert.equal(v.kind, 'replycode')
    if (v.kind === 'replycode') {
      assert.equal(v.reply.code, 450)
      assert.equal(v.reply.lines[0]?.text, '%busy')
    }
    assert.equal(s.error, undefined)
  })
})

describe('bytes the session sends', function () {
  this.timeout(5000)

  for (const unix of [false, true]) {
    it(`replays the §9 worked example byte for byte (${unix ? 'unix socket' : 'TCP'})`, async () => {
      const m = await milter(
        scripted({ optneg: OPTNEG_REPLY_ADDHDRS, eob: [ADDHEADER_XTEST, CONTINUE] }),
        unix,
      )
      const s = await open(m, { macros: new Map([[MacroStage.CONNECT, ['j']]]) })
      const j = (name: string): string | undefined => (name === 'j' ? 'mx.example.org' : undefined)
      assert.equal(s.negotiated.actions, 0x1)
      assert.equal((await s.connect('client.example.com', INET, j)).kind, 'continue')
      assert.equal((await s.helo('client.example.com')).kind, 'continue')
      assert.equal((await s.mail(['<alice@example.com>', 'SIZE=1234'])).kind, 'continue')
      assert.equal((await s.rcpt(['<bob@example.net>'])).kind, 'continue')
      assert.equal((await s.data()).kind, 'continue')
      assert.equal((await s.header('From', Buffer.from(' alice@example.com'))).kind, 'continue')
      assert.equal((await s.header('Subject', Buffer.from(' Hi'))).kind, 'continue')
      assert.equal((await s.eoh()).kind, 'continue')
      assert.equal((await s.body(Buffer.from('Hello\r\n'))).kind, 'continue')
      const eom = await s.endOfMessage()
      assert.equal(eom.verdict.kind, 'continue')
      assert.deepStrictEqual(eom.modifications, [
        { kind: 'addheader', name: Buffer.from('X-Test'), value: Buffer.from('yes') },
      ])
      assert.equal(eom.bodyReplaced, false)
      s.quit()
      const conn = await m.connection()
      await within(conn.closed, 1000, 'server seeing QUIT and the close')
      // Sendmail offers protocol 0x1FFFFF; we leave out RCPT_REJ, so only packet 1 differs.
      const expected = Buffer.concat([OUR_OFFER, ...WORKED_EXAMPLE_CLIENT.slice(1)])
      assert.equal(toHex(conn.bytes()), toHex(expected))
    })
  }

  it('sends each stage macro packet right before its command', async () => {
    const m = await milter(scripted())
    const macros = new Map<MacroStage, string[]>([
      [MacroStage.CONNECT, ['j']],
      [MacroStage.HELO, ['{tls_version}']],
      [MacroStage.ENVFROM, ['i']],
      [MacroStage.ENVRCPT, ['{rcpt_addr}']],
      [MacroStage.DATA, ['i']],
      [MacroStage.EOH, ['i']],
      [MacroStage.EOM, ['{msg_id}']],
    ])
    const s = await open(m, { macros })
    const all = (name: string): string => `v-${name}`
    await s.connect('h', INET, all)
    await s.helo('h', all)
    await s.mail(['<a@b>'], all)
    await s.rcpt(['<c@d>'], all)
    await s.data(all)
    await s.header('Subject', Buffer.from(' x'))
    await s.eoh(all)
    await s.body(Buffer.from('x\r\n'))
    await s.endOfMessage(all)
    s.quit()
    const conn = await m.connection()
    await within(conn.closed, 1000, 'close')
    assert.deepStrictEqual(names(conn.commands), [
      'optneg',
      'macro:C',
      'connect',
      'macro:H',
      'helo',
      'macro:M',
      'mail',
      'macro:R',
      'rcpt',
      'macro:T',
      'data',
      'header',
      'macro:N',
      'eoh',
      'body',
      'macro:E',
      'eob',
      'quit',
    ])
    const mailMacro = conn.commands[5]
    assert.ok(mailMacro?.cmd === 'macro')
    assert.deepStrictEqual(mailMacro.pairs, [[Buffer.from('i'), Buffer.from('v-i')]])
  })

  it('uses the symlist, HDR_LEADSPC and NR_HDR of the §4.7 capture', async () => {
    const m = await milter(scripted({ optneg: OPTNEG_REPLY_SYMLIST, header: 'hang' }))
    const s = await open(m, {
      macros: new Map([
        [MacroStage.CONNECT, ['v']],
        [MacroStage.ENVRCPT, ['i']],
      ]),
      timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 3000 },
    })
    const lookup = (name: string): string => `<${name}>`
    await s.connect('h', INET, lookup)
    await s.mail(['<a@b>'])
    await s.rcpt(['<c@d>'], lookup)
    await s.data()
    const started = Date.now()
    assert.equal((await s.header('Subject', Buffer.from('  two spaces'))).kind, 'continue')
    assert.equal((await s.header('X-A', Buffer.from(' b'))).kind, 'continue')
    assert.ok(Date.now() - started < 1000, 'did not wait for HEADER replies')
    assert.equal((await s.eoh()).kind, 'continue')
    const conn = await m.connection()
    const macroPackets = conn.commands.filter((c) => c.cmd === 'macro')
    assert.deepStrictEqual(macroPackets, [
      {
        cmd: 'macro',
        stageCmd: ch('C'),
        pairs: [
          [Buffer.from('j'), Buffer.from('<j>')],
          [Buffer.from('{daemon_name}'), Buffer.from('<{daemon_name}>')],
        ],
      },
      {
        cmd: 'macro',
        stageCmd: ch('R'),
        pairs: [[Buffer.from('{rcpt_addr}'), Buffer.from('<{rcpt_addr}>')]],
      },
    ])
    const headers = conn.commands.filter((c) => c.cmd === 'header')
    assert.deepStrictEqual(headers, [
      { cmd: 'header', name: Buffer.from('Subject'), value: Buffer.from('  two spaces') },
      { cmd: 'header', name: Buffer.from('X-A'), value: Buffer.from(' b') },
    ])
  })

  it('strips exactly one leading space and turns CRLF folds into LF without HDR_LEADSPC', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    await s.header('Subject', Buffer.from('  two'))
    await s.header('X-Tab', Buffer.from('\tx'))
    await s.header('X-Fold', Buffer.from(' a\r\n\tb'))
    const conn = await m.connection()
    const values = conn.commands.flatMap((c) => (c.cmd === 'header' ? [c.value.toString()] : []))
    assert.deepStrictEqual(values, [' two', '\tx', 'a\n\tb'])
  })

  it('sends an empty body as no BODY packet at all', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    await s.eoh()
    assert.equal((await s.body(Buffer.alloc(0))).kind, 'continue')
    await s.endOfMessage()
    const conn = await m.connection()
    await conn.waitFor((c) => c.cmd === 'eob')
    assert.equal(conn.commands.filter((c) => c.cmd === 'body').length, 0)
    assert.deepStrictEqual(names(conn.commands).slice(-2), ['eoh', 'eob'])
  })

  it('cuts a 150000-byte body into chunks of 65535, 65535 and 18930', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    await s.eoh()
    const body = Buffer.alloc(150000)
    for (let i = 0; i < body.length; i++) body[i] = 0x41 + (i % 26)
    assert.equal((await s.body(body)).kind, 'continue')
    await s.endOfMessage()
    const conn = await m.connection()
    await conn.waitFor((c) => c.cmd === 'eob')
    const chunks = conn.commands.flatMap((c) => (c.cmd === 'body' ? [c.chunk] : []))
    assert.deepStrictEqual(
      chunks.map((c) => c.length),
      [65535, 65535, 18930],
    )
    assert.ok(Buffer.concat(chunks).equals(body))
  })

  it('stops sending body chunks after SKIP and still sends BODYEOB', async () => {
    const m = await milter(scripted({ body: frame('s') }))
    const s = await open(m)
    await toData(s)
    await s.eoh()
    assert.equal((await s.body(Buffer.alloc(150000, 0x61))).kind, 'continue')
    assert.equal(s.wantsBody, false)
    assert.equal((await s.body(Buffer.alloc(10, 0x61))).kind, 'continue')
    await s.endOfMessage()
    const conn = await m.connection()
    await conn.waitFor((c) => c.cmd === 'eob')
    assert.equal(conn.commands.filter((c) => c.cmd === 'body').length, 1)
  })

  it('does not wait for HEADER replies under NR_HDR', async () => {
    const m = await milter(scripted({ optneg: optnegReply(6, 0x1ff, NR_HDR), header: 'hang' }))
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 3000 } })
    await toData(s)
    const started = Date.now()
    for (let i = 0; i < 5; i++) {
      assert.equal((await s.header(`X-${i}`, Buffer.from(' v'))).kind, 'continue')
    }
    assert.ok(Date.now() - started < 1000, 'did not wait for HEADER replies')
    assert.equal((await s.eoh()).kind, 'continue')
    const conn = await m.connection()
    assert.equal(conn.commands.filter((c) => c.cmd === 'header').length, 5)
    assert.equal(s.error, undefined)
  })

  it('does not wait for BODY replies under NR_BODY', async () => {
    const m = await milter(scripted({ optneg: optnegReply(6, 0x1ff, NR_BODY), body: 'hang' }))
    const s = await open(m, { timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 3000 } })
    await toData(s)
    await s.eoh()
    const started = Date.now()
    assert.equal((await s.body(Buffer.alloc(150000, 0x62))).kind, 'continue')
    assert.ok(Date.now() - started < 1000, 'did not wait for BODY replies')
    assert.equal((await s.endOfMessage()).verdict.kind, 'continue')
  })

  it('sends ABORT before HELO when a message is open', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await s.connect('h', INET)
    await s.helo('first')
    await s.mail(['<a@b>'])
    await s.rcpt(['<c@d>'])
    assert.equal((await s.helo('second')).kind, 'continue')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), [
      'optneg',
      'connect',
      'helo',
      'mail',
      'rcpt',
      'abort',
      'helo',
    ])
  })

  it('sends no ABORT before HELO when no message is open', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await s.connect('h', INET)
    await s.helo('first')
    await s.helo('second')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'helo', 'helo'])
  })

  it('omits NO* steps but still sends their macros', async () => {
    const m = await milter(scripted({ optneg: optnegReply(6, 0x1ff, NOHELO | NOHDRS) }))
    const s = await open(m, { macros: new Map([[MacroStage.HELO, ['{cipher}']]]) })
    await s.connect('h', INET)
    assert.equal((await s.helo('x', () => 'TLS_AES')).kind, 'continue')
    await s.mail(['<a@b>'])
    await s.rcpt(['<c@d>'])
    await s.data()
    assert.equal((await s.header('Subject', Buffer.from(' x'))).kind, 'continue')
    await s.eoh()
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), [
      'optneg',
      'connect',
      'macro:H',
      'mail',
      'rcpt',
      'data',
      'eoh',
    ])
  })

  it('sends no DATA and no UNKNOWN to a milter that answered version 2', async () => {
    const m = await milter(scripted({ optneg: optnegReply(2, 0x3f, 0) }))
    const s = await open(m)
    assert.equal(s.negotiated.version, 2)
    await s.connect('h', INET)
    assert.equal((await s.unknown('XFOO')).kind, 'continue')
    await s.mail(['<a@b>'])
    await s.rcpt(['<c@d>'])
    assert.equal((await s.data()).kind, 'continue')
    await s.eoh()
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'mail', 'rcpt', 'eoh'])
  })

  it('sends QUIT and closes on quit()', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await s.connect('h', INET)
    s.quit()
    const conn = await m.connection()
    await within(conn.closed, 1000, 'close')
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'quit'])
  })
})

describe('verdicts, limits and connection errors', function () {
  this.timeout(5000)

  /** A reaction that answers the n-th command of its kind with replies[n]. */
  function inTurn(...replies: Buffer[]): (cmd: Command, conn: FakeConn) => void {
    let n = 0
    return (_cmd, conn) => conn.send(replies[Math.min(n++, replies.length - 1)]!)
  }

  it('refuses to send a HEADER over 65535 data bytes: MILTER_ERR_SIZE, nothing sent', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    const conn = await m.connection()
    const before = conn.bytes().length
    const err = await failure(s.header('X-Big', Buffer.alloc(70000, 0x61)))
    assert.equal(err.code, 'MILTER_ERR_SIZE')
    await assertSticky(s, conn, err)
    assert.equal(before, conn.bytes().length)
  })

  it('sends a HEADER of exactly 65535 data bytes', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    // 'X\0' + value + '\0' = 65535 bytes of data; the leading space is stripped first
    const value = Buffer.concat([Buffer.from(' '), Buffer.alloc(65532, 0x61)])
    assert.equal((await s.header('X', value)).kind, 'continue')
    const conn = await m.connection()
    const h = conn.commands.find((c) => c.cmd === 'header')
    assert.ok(h?.cmd === 'header')
    assert.equal(h.value.length, 65532)
  })

  it('sends QUIT and nothing more after ACCEPT at CONNECT', async () => {
    const m = await milter(scripted({ connect: frame('a') }))
    const s = await open(m)
    assert.equal((await s.connect('h', INET)).kind, 'accept')
    const conn = await m.connection()
    await within(conn.closed, 1000, 'close after ACCEPT')
    assert.equal((await s.helo('x')).kind, 'continue')
    assert.equal((await s.mail(['<a@b>'])).kind, 'continue')
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'quit'])
  })

  it('ends the message after REJECT at MAIL, then sends the next MAIL', async () => {
    const m = await milter(scripted({ mail: inTurn(frame('r'), CONTINUE) }))
    const s = await open(m)
    await s.connect('h', INET)
    assert.equal((await s.mail(['<a@b>'])).kind, 'reject')
    assert.equal((await s.rcpt(['<c@d>'])).kind, 'continue')
    assert.equal((await s.mail(['<a@b>'])).kind, 'continue')
    assert.equal((await s.rcpt(['<c@d>'])).kind, 'continue')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'mail', 'mail', 'rcpt'])
  })

  it('refuses only one recipient on REJECT, TEMPFAIL or REPLYCODE at RCPT', async () => {
    const m = await milter(
      scripted({
        rcpt: inTurn(frame('r'), frame('t'), frame('y', cstr('550 5.1.1 no')), CONTINUE),
      }),
    )
    const s = await open(m)
    await s.connect('h', INET)
    await s.mail(['<a@b>'])
    const kinds = []
    for (const r of ['<1@d>', '<2@d>', '<3@d>', '<4@d>']) kinds.push((await s.rcpt([r])).kind)
    assert.deepStrictEqual(kinds, ['reject', 'tempfail', 'replycode', 'continue'])
    assert.equal((await s.data()).kind, 'continue')
    const conn = await m.connection()
    assert.equal(conn.commands.filter((c) => c.cmd === 'rcpt').length, 4)
    assert.equal(conn.commands.at(-1)?.cmd, 'data')
  })

  it('ends the whole message on DISCARD at RCPT', async () => {
    const m = await milter(scripted({ rcpt: frame('d') }))
    const s = await open(m)
    await s.connect('h', INET)
    await s.mail(['<a@b>'])
    assert.equal((await s.rcpt(['<c@d>'])).kind, 'discard')
    assert.equal((await s.rcpt(['<e@f>'])).kind, 'continue')
    assert.equal((await s.data()).kind, 'continue')
    assert.equal((await s.endOfMessage()).verdict.kind, 'continue')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'mail', 'rcpt'])
  })

  it('closes with QUIT on SHUTDOWN at RCPT', async () => {
    const m = await milter(scripted({ rcpt: frame('4') }))
    const s = await open(m)
    await s.connect('h', INET)
    await s.mail(['<a@b>'])
    assert.equal((await s.rcpt(['<c@d>'])).kind, 'shutdown')
    const conn = await m.connection()
    await within(conn.closed, 1000, 'close after SHUTDOWN')
    assert.equal(conn.commands.at(-1)?.cmd, 'quit')
  })

  it('concatenates REPLBODY chunks, an empty one included', async () => {
    const m = await milter(
      scripted({
        eob: [
          frame('b', Buffer.from('new\r\n')),
          frame('b'),
          frame('b', Buffer.from('more')),
          CONTINUE,
        ],
      }),
    )
    const s = await open(m)
    await toData(s)
    await s.eoh()
    const res = await s.endOfMessage()
    assert.equal(res.bodyReplaced, true)
    assert.equal(res.replacementBody?.toString(), 'new\r\nmore')
  })

  it('reports an empty replacement body for a single empty REPLBODY', async () => {
    const m = await milter(scripted({ eob: [frame('b'), frame('a')] }))
    const s = await open(m)
    await toData(s)
    await s.eoh()
    const res = await s.endOfMessage()
    assert.equal(res.verdict.kind, 'accept')
    assert.equal(res.bodyReplaced, true)
    assert.equal(res.replacementBody?.length, 0)
  })

  it('sends ABORT without waiting for a reply, then accepts a new MAIL', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await s.connect('h', INET)
    await s.mail(['<a@b>'])
    await s.rcpt(['<c@d>'])
    s.abort()
    s.abort()
    assert.equal((await s.mail(['<e@f>'])).kind, 'continue')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), [
      'optneg',
      'connect',
      'mail',
      'rcpt',
      'abort',
      'mail',
    ])
  })

  it('keeps the connection with QUIT_NC after EOB and reconnects without OPTNEG', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await toData(s)
    await s.eoh()
    await s.endOfMessage()
    assert.equal(s.reusable, true)
    assert.equal(s.quitNc(), true)
    assert.equal((await s.connect('h2', { family: 'unknown' })).kind, 'continue')
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands).slice(-3), ['eob', 'quit_nc', 'connect'])
    assert.equal(conn.commands.filter((c) => c.cmd === 'optneg').length, 1)
  })

  it('refuses QUIT_NC outside a completed EOB and sends nothing', async () => {
    const m = await milter(scripted())
    const s = await open(m)
    await s.connect('h', INET)
    await s.mail(['<a@b>'])
    assert.equal(s.quitNc(), false)
    const conn = await m.connection()
    assert.deepStrictEqual(names(conn.commands), ['optneg', 'connect', 'mail'])
  })

  it('fails with MILTER_ERR_CONNECT when nothing listens on the port', async () => {
    const m = await milter(scripted())
    const spec = m.spec
    await m.close()
    milters = milters.filter((x) => x !== m)
    const err = await failure(openSession(parseSocketSpec(spec), options()))
    assert.equal(err.code, 'MILTER_ERR_CONNECT')
  })

  it('fails with MILTER_ERR_CONNECT when the unix socket does not exist', async () => {
    const err = await failure(
      openSession(parseSocketSpec('unix:/nonexistent/milter-hostile.sock'), options()),
    )
    assert.equal(err.code, 'MILTER_ERR_CONNECT')
  })

  for (const [what, call] of [
    ['ESMTP parameter of MAIL', (s: MilterSession) => s.mail(['<a@b>', 'X-P=a\0b'], () => 'v')],
    ['UNKNOWN command line', (s: MilterSession) => s.unknown('XFOO a\0b')],
  ] as const) {
    it(`handles a NUL byte in a client-supplied ${what} without a stray error or orphan MACRO`, async () => {
      const m = await milter(scripted())
      const s = await open(m, {
        macros: new Map([
          [MacroStage.HELO, ['j']],
          [MacroStage.ENVFROM, ['j']],
        ]),
      })
      await s.connect('h', INET)
      await s.helo('ok')
      let thrown: unknown
      try {
        await call(s)
      } catch (e) {
        thrown = e
      }
      // Either outcome is fine: a MilterError (typed, sticky), or the command is sent without the NUL.
      if (thrown !== undefined) {
        assert.ok(isMilterError(thrown), `threw a plain ${inspect(thrown)}, not a MilterError`)
      }
      await sleep(20)
      const conn = await m.connection()
      const last = conn.commands.at(-1)
      assert.notEqual(last?.cmd, 'macro', 'a MACRO packet was sent without its command')
    })
  }
})
