/**
 * Write coalescing: a stage's macros and command go out in one write, and
 * under no-reply flags everything up to the next answered command does,
 * so a message through a milter that answers only end of message costs one
 * write and one round trip. Checked with a stream that counts writes.
 */
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'

import { decodeCommand } from '../../../lib/protocol/commands'
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
})
