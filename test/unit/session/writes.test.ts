/**
 * Write coalescing: a stage's macros and command go out in one write, and
 * under no-reply flags everything up to the next answered command does,
 * so a message through a milter that answers only end of message costs one
 * write and one round trip. Checked with a stream that counts writes.
 */
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'

import { decodeCommand, encodeBody } from '../../../lib/protocol/commands'
import { Proto } from '../../../lib/protocol/constants'
import { FrameDecoder } from '../../../lib/protocol/frame'
import { encodeReply } from '../../../lib/protocol/replies'
import { DEFAULT_MACROS } from '../../../lib/session/macros'
import { sendContent } from '../../../lib/session/content'
import { MilterSession, type MilterStream } from '../../../lib/session/session'

/** A stream that records each write (as the commands it holds) and answers from a script. */
class CountingStream extends EventEmitter implements MilterStream {
  readonly writes: string[][] = []
  private readonly decoder = new FrameDecoder()
  constructor(private readonly answer: (cmd: string) => Buffer | undefined) {
    super()
  }
  write(data: Uint8Array): boolean {
    const cmds = this.decoder.push(Buffer.from(data)).map((f) => decodeCommand(f).cmd)
    this.writes.push(cmds)
    for (const c of cmds) {
      const a = this.answer(c)
      if (a) setImmediate(() => this.emit('data', a))
    }
    return true
  }
  destroy(): void {
    this.emit('close')
  }
  end(): void {
    this.emit('close')
  }
}

const ALL_NR =
  Proto.NR_CONN |
  Proto.NR_HELO |
  Proto.NR_MAIL |
  Proto.NR_RCPT |
  Proto.NR_DATA |
  Proto.NR_HDR |
  Proto.NR_EOH |
  Proto.NR_BODY

function optneg(protocol: number): Buffer {
  return encodeReply({
    kind: 'optneg',
    version: 6,
    actions: 0x1ff,
    protocol,
    symlist: new Map(),
    symlistWarnings: [],
  })
}

async function message(s: MilterSession): Promise<void> {
  const m = (n: string): string | undefined => (n === 'i' ? 'Q1' : n === 'j' ? 'mx' : undefined)
  assert.equal(
    (await s.connect('client', { family: 'inet', address: '192.0.2.1', port: 1 }, m)).kind,
    'continue',
  )
  assert.equal((await s.helo('client', m)).kind, 'continue')
  assert.equal((await s.mail(['<a@example.org>'], m)).kind, 'continue')
  assert.equal((await s.rcpt(['<b@example.com>'], m)).kind, 'continue')
  assert.equal((await s.data(m)).kind, 'continue')
  const eom = await sendContent(s, {
    headers: [
      { name: 'Subject', value: Buffer.from(' hi') },
      { name: 'From', value: Buffer.from(' a@example.org') },
    ],
    body: [Buffer.from('line 1\r\n'), Buffer.from('line 2\r\n')],
    eomMacros: m,
  })
  assert.equal(eom.verdict.kind, 'continue')
}

const OPTS = {
  name: 'counting',
  timeouts: { connectMs: 1000, commandMs: 1000, contentMs: 1000 },
  macros: DEFAULT_MACROS,
}

describe('session: writes', () => {
  it('a milter that answers only end of message: the whole message in one write', async () => {
    const stream = new CountingStream((c) =>
      c === 'optneg' ? optneg(ALL_NR) : c === 'eob' ? encodeReply({ kind: 'continue' }) : undefined,
    )
    const s = await MilterSession.negotiate(stream, OPTS)
    await message(s)
    s.quit()
    assert.deepEqual(stream.writes[0], ['optneg'])
    // (HELO has no macro packet: none of its macros has a value here)
    assert.deepEqual(stream.writes.slice(1, 2), [
      [
        'macro',
        'connect',
        'helo',
        'macro',
        'mail',
        'macro',
        'rcpt',
        'macro',
        'data',
        'header',
        'header',
        'eoh',
        'body',
        'macro',
        'eob',
      ],
    ])
    assert.deepEqual(stream.writes.slice(2), [['quit']])
  })

  it('a milter that answers every step: one write per stage (macros with their command)', async () => {
    const stream = new CountingStream((c) =>
      c === 'optneg'
        ? optneg(0)
        : c === 'macro' || c === 'quit'
          ? undefined
          : encodeReply({ kind: 'continue' }),
    )
    const s = await MilterSession.negotiate(stream, OPTS)
    await message(s)
    s.quit()
    assert.deepEqual(stream.writes, [
      ['optneg'],
      ['macro', 'connect'],
      ['helo'],
      ['macro', 'mail'],
      ['macro', 'rcpt'],
      ['macro', 'data'],
      ['header'],
      ['header'],
      ['eoh'],
      ['body'],
      ['macro', 'eob'],
      ['quit'],
    ])
  })

  for (const nr of [false, true]) {
    it(`a body chunk is written after its 5-byte head as it is, in one corked write (${nr ? 'no-reply' : 'answered'})`, async () => {
      const stream = new CorkingStream((c) =>
        c === 'optneg'
          ? optneg(nr ? ALL_NR : 0)
          : c === 'macro' || c === 'quit' || (nr && c !== 'eob')
            ? undefined
            : encodeReply({ kind: 'continue' }),
      )
      const s = await MilterSession.negotiate(stream, OPTS)
      await s.connect('client', { family: 'inet', address: '192.0.2.1', port: 1 }, () => undefined)
      await s.helo('client', () => undefined)
      await s.mail(['<a@example.org>'], () => undefined)
      await s.rcpt(['<b@example.com>'], () => undefined)
      await s.data(() => undefined)
      const body = Buffer.alloc(3 * 65535 + 10, 'x\r\n')
      const eom = await sendContent(s, { headers: [], body: [body] })
      assert.equal(eom.verdict.kind, 'continue')
      s.quit()
      // every whole 65535-byte chunk left as a view of `body` itself (no copy); the 10-byte
      // tail was joined with its head when written alone (small pieces are copied into one
      // write), and is a view too under no-reply flags, gathered with the chunks before it
      const views = stream.pieces.filter((p) => p.buffer === body.buffer)
      assert.deepEqual(
        views.map((p) => p.length),
        nr ? [65535, 65535, 65535, 10] : [65535, 65535, 65535],
      )
      // and the wire carries the same packets as encodeBody would have built
      const wire = Buffer.concat(stream.pieces)
      const expected = Buffer.concat([
        encodeBody(body.subarray(0, 65535)),
        encodeBody(body.subarray(65535, 2 * 65535)),
        encodeBody(body.subarray(2 * 65535, 3 * 65535)),
        encodeBody(body.subarray(3 * 65535)),
      ])
      assert.ok(wire.includes(expected), 'the BODY packets are on the wire, in order')
      // each chunk went out corked: the head and the chunk in one group; under no-reply flags
      // the unanswered chunks are gathered and go out in one writev with the end of message
      for (const g of stream.corked) assert.ok(g.length >= 2)
      assert.equal(stream.corked.length, nr ? 1 : 3)
    })
  }
})

describe('session: the packet trace', () => {
  for (const on of [false, true]) {
    it(`sent packets go to trace() only while tracing() says so (${on ? 'on' : 'off'}): no body joined for a trace that is off`, async () => {
      const stream = new CountingStream((c) =>
        c === 'optneg'
          ? optneg(0)
          : c === 'macro' || c === 'quit'
            ? undefined
            : encodeReply({ kind: 'continue' }),
      )
      const sent: Array<{ code: number; bytes: number }> = []
      const s = await MilterSession.negotiate(stream, {
        ...OPTS,
        observer: {
          trace: (dir, f) => {
            if (dir === 'send') sent.push({ code: f.code, bytes: f.data.length })
          },
          tracing: () => on,
        },
      })
      await s.connect('client', { family: 'inet', address: '192.0.2.1', port: 1 }, () => undefined)
      await s.helo('client', () => undefined)
      await s.mail(['<a@example.org>'], () => undefined)
      await s.rcpt(['<b@example.com>'], () => undefined)
      await s.data(() => undefined)
      const body = Buffer.alloc(65535 + 10, 'x\r\n')
      assert.equal((await sendContent(s, { headers: [], body: [body] })).verdict.kind, 'continue')
      s.quit()
      const bodies = sent.filter((x) => x.code === 0x42) // 'B'
      if (on)
        assert.deepEqual(
          bodies.map((x) => x.bytes),
          [65535, 10],
        )
      else assert.deepEqual(sent, [])
    })
  }
})

describe('session: body packets from pieces of any size', () => {
  for (const seed of [1, 2, 3]) {
    it(`pieces of 1 byte to 150 KB become packets of 65535 bytes, the same bytes (seed ${seed})`, async () => {
      let x = seed * 7919
      const rnd = (n: number): number => {
        x = (x * 1103515245 + 12345) % 2147483648
        return x % n
      }
      const pieces: Buffer[] = []
      let total = 0
      while (total < 1_000_000) {
        const n = 1 + rnd(rnd(4) === 0 ? 150_000 : 300)
        const b = Buffer.alloc(n)
        for (let i = 0; i < n; i++) b[i] = 0x41 + ((total + i) % 26)
        pieces.push(b)
        total += n
      }
      const chunks: Buffer[] = []
      const decoder = new FrameDecoder()
      const stream = new CorkingStream((c) =>
        c === 'optneg'
          ? optneg(0)
          : c === 'macro' || c === 'quit'
            ? undefined
            : encodeReply({ kind: 'continue' }),
      )
      const write = stream.write.bind(stream)
      stream.write = (data: Uint8Array): boolean => {
        for (const f of decoder.push(Buffer.from(data)))
          if (f.code === 0x42) chunks.push(Buffer.from(f.data))
        return write(data)
      }
      const s = await MilterSession.negotiate(stream, OPTS)
      await s.connect('client', { family: 'inet', address: '192.0.2.1', port: 1 }, () => undefined)
      await s.helo('client', () => undefined)
      await s.mail(['<a@example.org>'], () => undefined)
      await s.rcpt(['<b@example.com>'], () => undefined)
      await s.data(() => undefined)
      const eom = await sendContent(s, { headers: [], body: pieces })
      assert.equal(eom.verdict.kind, 'continue')
      s.quit()
      assert.deepEqual(Buffer.concat(chunks), Buffer.concat(pieces))
      chunks.forEach((c, i) => {
        if (i < chunks.length - 1) assert.equal(c.length, 65535, `packet ${i} is full`)
        else assert.ok(c.length > 0 && c.length <= 65535)
      })
    })
  }
})

/** A stream with cork()/uncork() that keeps every written piece as given. */
class CorkingStream extends CountingStream {
  readonly pieces: Buffer[] = []
  readonly corked: Buffer[][] = []
  private group: Buffer[] | undefined
  cork(): void {
    this.group = []
  }
  uncork(): void {
    if (this.group) this.corked.push(this.group)
    this.group = undefined
  }
  override write(data: Uint8Array): boolean {
    const b = data as Buffer
    this.pieces.push(b)
    this.group?.push(b)
    return super.write(data)
  }
}
