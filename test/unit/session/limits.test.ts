/**
 * The bounds on what a milter sends (limits.ts), each at exactly the limit
 * (accepted) and one past (MILTER_ERR_LIMIT), checked while the answer is
 * read: the answers here never end with a final reply after the packet
 * that goes over, so a check made after reading everything would wait for
 * ever (and fail with a timeout, not the limit).
 */
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import { Readable } from 'node:stream'

import { MilterLimitError, type MilterError } from '../../../lib/errors'
import { startResult, runMilterContent, type MessageInput } from '../../../lib/policy/message'
import { decodeCommand } from '../../../lib/protocol/commands'
import { MacroStage, Proto } from '../../../lib/protocol/constants'
import { FrameDecoder } from '../../../lib/protocol/frame'
import { FrameReader } from '../../../lib/session/reader'
import { encodeReply, type Reply, type SymList } from '../../../lib/protocol/replies'
import { sendContent } from '../../../lib/session/content'
import {
  DEFAULT_LIMITS,
  checkHeaderBlock,
  eomLimits,
  headerBlockSize,
  optnegReplyBound,
  optnegTooLarge,
  type Limits,
} from '../../../lib/session/limits'
import { DEFAULT_MACROS } from '../../../lib/session/macros'
import { MilterSession, type EomResult, type MilterStream } from '../../../lib/session/session'

const ALL_NR =
  Proto.NR_CONN |
  Proto.NR_HELO |
  Proto.NR_MAIL |
  Proto.NR_RCPT |
  Proto.NR_DATA |
  Proto.NR_HDR |
  Proto.NR_EOH |
  Proto.NR_BODY

/** A milter in memory: OPTNEG with `symlist`, then, at end of message, `eob` in one piece. */
class ScriptedStream extends EventEmitter implements MilterStream {
  private readonly decoder = new FrameDecoder()
  constructor(
    private readonly eob: Buffer,
    private readonly symlist: SymList = new Map(),
  ) {
    super()
  }
  write(data: Uint8Array): boolean {
    for (const f of this.decoder.push(Buffer.from(data))) {
      const c = decodeCommand(f).cmd
      const answer =
        c === 'optneg'
          ? encodeReply({
              kind: 'optneg',
              version: 6,
              actions: 0x1ff,
              protocol: ALL_NR,
              symlist: this.symlist,
              symlistWarnings: [],
            })
          : c === 'eob'
            ? this.eob
            : undefined
      if (answer) setImmediate(() => this.emit('data', answer))
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

function opts(limits: Partial<Limits> = {}): {
  name: string
  timeouts: { connectMs: number; commandMs: number; contentMs: number }
  macros: typeof DEFAULT_MACROS
  limits: Limits
} {
  return {
    name: 'm1',
    // long enough never to fire here: a test that waited for it would show a bug
    timeouts: { connectMs: 20_000, commandMs: 20_000, contentMs: 20_000 },
    macros: DEFAULT_MACROS,
    limits: { ...DEFAULT_LIMITS, ...limits },
  }
}

const CONTINUE = encodeReply({ kind: 'continue' })

function answer(replies: readonly Reply[], final = true): Buffer {
  return Buffer.concat([...replies.map(encodeReply), ...(final ? [CONTINUE] : [])])
}

async function open(eob: Buffer, limits: Partial<Limits> = {}): Promise<MilterSession> {
  const s = await MilterSession.negotiate(new ScriptedStream(eob), opts(limits))
  const none = (): undefined => undefined
  await s.connect('client', { family: 'inet', address: '192.0.2.1', port: 1 }, none)
  await s.helo('client', none)
  await s.mail(['<a@example.org>'], none)
  await s.rcpt(['<b@example.com>'], none)
  await s.data(none)
  return s
}

async function eom(
  eob: Buffer,
  limits: Partial<Limits> = {},
  mta?: { maxMessageBytes?: number; maxHeaderLines?: number },
): Promise<EomResult> {
  const s = await open(eob, limits)
  try {
    return await sendContent(s, {
      headers: [{ name: 'Subject', value: Buffer.from(' hi') }],
      body: [Buffer.from('body\r\n')],
      eomLimits: eomLimits({ ...DEFAULT_LIMITS, ...limits }, mta),
    })
  } finally {
    s.destroy()
  }
}

function isLimit(limit: string, figure: number, max: number): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof MilterLimitError, `not a limit error: ${String(e)}`)
    assert.equal((e as MilterError).code, 'MILTER_ERR_LIMIT')
    assert.equal(e.limit, limit)
    assert.equal(e.figure, figure)
    assert.equal(e.max, max)
    assert.match(e.message, /^m1: /)
    assert.ok(e.message.includes(`${figure} is over ${limit} = ${max}`), e.message)
    return true
  }
}

const rcpt = (i: number): Reply => ({ kind: 'addrcpt', rcpt: Buffer.from(`<u${i}@example.com>`) })
const header = (i: number, value = 'v'): Reply => ({
  kind: 'addheader',
  name: Buffer.from(`X-${i}`),
  value: Buffer.from(value),
})

describe('limits: while the end-of-message answer is read', () => {
  it('max_modifications: exactly the limit is accepted', async () => {
    const r = await eom(answer(Array.from({ length: 5 }, (_, i) => rcpt(i))), {
      maxModifications: 5,
    })
    assert.equal(r.verdict.kind, 'continue')
    assert.equal(r.modifications.length, 5)
  })

  it('max_modifications: one past is MILTER_ERR_LIMIT, without waiting for the final reply', async () => {
    const replies = Array.from({ length: 6 }, (_, i) => rcpt(i))
    await assert.rejects(
      eom(answer(replies, false), { maxModifications: 5 }),
      isLimit('max_modifications', 6, 5),
    )
  })

  it('max_added_headers: exactly the limit, then one past (INSHEADER counts too)', async () => {
    const three = [header(1), header(2), { ...header(3), kind: 'insheader', index: 0 } as Reply]
    assert.equal((await eom(answer(three), { maxAddedHeaders: 3 })).modifications.length, 3)
    await assert.rejects(
      eom(answer([...three, header(4)], false), { maxAddedHeaders: 3 }),
      isLimit('max_added_headers', 4, 3),
    )
  })

  it('Haraka’s max_lines bounds added headers as they are read: exactly, then one past', async () => {
    const lines = { maxHeaderLines: 3 }
    const three = [header(1), header(2), header(3)]
    // three added headers are read (the block after the edits is checked later, as a whole)
    assert.equal((await eom(answer(three), {}, lines)).modifications.length, 3)
    await assert.rejects(
      eom(answer([...three, header(4)], false), {}, lines),
      isLimit('connection.ini [headers] max_lines', 4, 3),
    )
  })

  it('max_added_headers: CHGHEADER adds nothing to the count', async () => {
    const change: Reply = {
      kind: 'chgheader',
      index: 1,
      name: Buffer.from('Subject'),
      value: Buffer.from('x'),
    }
    const r = await eom(answer([header(1), change, change]), { maxAddedHeaders: 1 })
    assert.equal(r.modifications.length, 3)
  })

  it('max_header_bytes: names and values sent, exactly and one past', async () => {
    // X-1 + 7 bytes = 10 bytes each
    const two = [header(1, '1234567'), header(2, '1234567')]
    assert.equal((await eom(answer(two), { maxHeaderBytes: 20 })).modifications.length, 2)
    await assert.rejects(
      eom(answer([header(1, '1234567'), header(2, '12345678')], false), { maxHeaderBytes: 20 }),
      isLimit('max_header_bytes', 21, 20),
    )
  })

  const body = (n: number): Reply => ({ kind: 'replbody', chunk: Buffer.alloc(n, 0x61) })

  it("max_replacement_body: Haraka's max message size bounds it by default", async () => {
    const mta = { maxMessageBytes: 100 }
    const ok = await eom(answer([body(60), body(40)]), {}, mta)
    assert.equal(ok.replacementBody?.length, 100)
    await assert.rejects(
      eom(answer([body(60), body(41)], false), {}, mta),
      isLimit('connection.ini [max] bytes', 101, 100),
    )
  })

  it('max_replacement_body: the key lowers it, and cannot raise it over Haraka’s', async () => {
    await assert.rejects(
      eom(answer([body(51)], false), { maxReplacementBody: 50 }, { maxMessageBytes: 100 }),
      isLimit('max_replacement_body', 51, 50),
    )
    assert.equal((await eom(answer([body(50)]), { maxReplacementBody: 50 })).bodyReplaced, true)
    await assert.rejects(
      eom(answer([body(101)], false), { maxReplacementBody: 1000 }, { maxMessageBytes: 100 }),
      isLimit('connection.ini [max] bytes', 101, 100),
    )
  })

  it('a long answer already queued is read over several turns of the event loop', async () => {
    const order: string[] = []
    const replies = Array.from({ length: 5000 }, (_, i) => rcpt(i))
    const s = await open(answer(replies), { maxModifications: 10_000 })
    // The whole answer arrives in one piece: without yielding, readEom would take every
    // frame in microtasks and finish before any setImmediate queued alongside it.
    const stream = (s as unknown as { stream: EventEmitter }).stream
    stream.prependListener('data', () => setImmediate(() => order.push('other work')))
    const r = await sendContent(s, { headers: [], body: [Buffer.from('x\r\n')] })
    order.push('eom read')
    s.destroy()
    assert.equal(r.modifications.length, 5000)
    assert.deepEqual(order, ['other work', 'eom read'])
  })
})

describe('limits: macro names asked for in negotiation (SETSYMLIST)', () => {
  const names = (n: number): string[] => Array.from({ length: n }, (_, i) => `{m${i}}`)

  async function negotiate(symlist: SymList, limits: Partial<Limits>): Promise<MilterSession> {
    return MilterSession.negotiate(new ScriptedStream(CONTINUE, symlist), opts(limits))
  }

  it('max_macro_names: exactly the limit per stage negotiates', async () => {
    const s = await negotiate(new Map([[MacroStage.CONNECT, names(4)]]), { maxMacroNames: 4 })
    assert.equal(s.negotiated.symlist.get(MacroStage.CONNECT)?.length, 4)
    s.destroy()
  })

  it('max_macro_names: one past fails negotiation with MILTER_ERR_LIMIT', async () => {
    await assert.rejects(
      negotiate(new Map([[MacroStage.EOM, names(5)]]), { maxMacroNames: 4 }),
      isLimit('max_macro_names', 5, 4),
    )
  })

  it('max_macro_names_total: exactly, then one past over all stages', async () => {
    const three = (n: number): SymList =>
      new Map([
        [MacroStage.CONNECT, names(3)],
        [MacroStage.HELO, names(3)],
        [MacroStage.EOM, names(n)],
      ])
    const s = await negotiate(three(3), { maxMacroNamesTotal: 9 })
    s.destroy()
    await assert.rejects(negotiate(three(4), { maxMacroNamesTotal: 9 }), (e: unknown) => {
      assert.ok(e instanceof MilterLimitError)
      assert.equal(e.stage, 'negotiate')
      return isLimit('max_macro_names_total', 10, 9)(e)
    })
  })
})

describe('limits: the size of the OPTNEG reply', () => {
  const two = { ...DEFAULT_LIMITS, maxMacroNamesTotal: 2 }
  const bound = optnegReplyBound(two)

  function isTooLarge(e: unknown, bytes: number): boolean {
    assert.ok(e instanceof MilterLimitError, `not a limit error: ${String(e)}`)
    assert.equal(e.code, 'MILTER_ERR_LIMIT')
    assert.equal(e.limit, 'max_macro_names_total')
    assert.equal(e.stage, 'negotiate')
    assert.equal(e.figure, bytes)
    assert.equal(e.max, bound)
    assert.match(
      e.message,
      /^m1?: an OPTNEG reply of \d+ bytes at negotiate is more than max_macro_names_total = 2 names can take/,
    )
    return true
  }

  it('is bounded by max_macro_names_total: 12 bytes, 7 stage headers, 256 bytes a name', () => {
    assert.equal(bound, 12 + 7 * 5 + 2 * 256)
  })

  it('a frame of exactly the bound is read; one byte more fails on its length alone', () => {
    const errors: unknown[] = []
    const reader = new FrameReader({}, 'm', undefined, (e) => errors.push(e))
    reader.capFrames(bound, (n) => optnegTooLarge('m', two, n))
    const head = (dataBytes: number): Buffer => {
      const b = Buffer.alloc(5)
      b.writeUInt32BE(dataBytes + 1, 0)
      b[4] = 0x4f
      return b
    }
    reader.push(Buffer.concat([head(bound), Buffer.alloc(bound)]))
    assert.equal(reader.queued, 1)
    assert.deepEqual(errors, [])
    reader.push(head(bound + 1).subarray(0, 4)) // the length, nothing of the payload
    assert.equal(errors.length, 1)
    assert.ok(isTooLarge(errors[0], bound + 1))
  })

  it('a session whose milter asks for 10,000 names fails negotiation with MILTER_ERR_LIMIT', async () => {
    const many = new Map([
      [MacroStage.CONNECT, Array.from({ length: 10_000 }, (_, i) => `{x${i}}`)],
    ])
    await assert.rejects(
      MilterSession.negotiate(new ScriptedStream(CONTINUE, many), opts({ maxMacroNamesTotal: 2 })),
      (e: unknown) => {
        assert.ok(e instanceof MilterLimitError)
        assert.ok(e.figure > bound)
        return isTooLarge(e, e.figure)
      },
    )
  })
})

describe('limits: the header block after edits', () => {
  const limits = eomLimits(DEFAULT_LIMITS, { maxHeaderLines: 4 })
  const block = (n: number): Array<{ name: string; value: string }> =>
    Array.from({ length: n }, (_, i) => ({ name: `X-${i}`, value: ' v' }))

  it('counts lines (a folded field counts each line) and bytes as delivered', () => {
    assert.deepEqual(headerBlockSize([{ name: 'A', value: ' b\r\n c' }]), { lines: 2, bytes: 10 })
  })

  it("Haraka's max_lines: exactly is accepted, one past is MILTER_ERR_LIMIT", () => {
    checkHeaderBlock('m1', limits, headerBlockSize(block(1)), headerBlockSize(block(4)))
    assert.throws(
      () => checkHeaderBlock('m1', limits, headerBlockSize(block(1)), headerBlockSize(block(5))),
      isLimit('connection.ini [headers] max_lines', 5, 4),
    )
  })

  it('a message already over the line limit is not failed for edits that do not grow it', () => {
    checkHeaderBlock('m1', limits, headerBlockSize(block(9)), headerBlockSize(block(9)))
  })

  it('through the content phase: ADDHEADER up to max_lines delivered, one more fails', async () => {
    const input = (): MessageInput => ({
      headers: [{ name: 'Subject', value: ' hi' }],
      envelope: { from: { address: 'a@example.org' }, rcpts: [{ address: 'b@example.com' }] },
      body: () => Readable.from([Buffer.from('x\r\n')]),
      mta: { maxHeaderLines: 4 },
    })
    const run = async (added: number): Promise<number> => {
      const s = await open(answer(Array.from({ length: added }, (_, i) => header(i))))
      const result = startResult(input())
      try {
        await runMilterContent(
          'm1',
          s,
          input(),
          result,
          { spoolDir: undefined, headerFolds: 'flatten' },
          (v) => v.kind === 'continue',
        )
        return result.headers.length
      } finally {
        s.destroy()
      }
    }
    assert.equal(await run(3), 4)
    await assert.rejects(run(4), isLimit('connection.ini [headers] max_lines', 5, 4))
  })
})

describe('content phase: edits that delete every recipient', () => {
  const input = (): MessageInput => ({
    headers: [{ name: 'Subject', value: ' hi' }],
    envelope: {
      from: { address: 'a@example.org' },
      rcpts: [{ address: 'b@example.com' }, { address: 'c@example.com' }],
    },
    body: () => Readable.from([Buffer.from('x\r\n')]),
  })
  const del = (a: string): Reply => ({ kind: 'delrcpt', rcpt: Buffer.from(`<${a}>`) })
  const add = (a: string): Reply => ({ kind: 'addrcpt', rcpt: Buffer.from(`<${a}>`) })

  async function run(
    result: ReturnType<typeof startResult>,
    name: string,
    replies: Reply[],
  ): Promise<void> {
    const s = await open(answer(replies))
    try {
      await runMilterContent(
        name,
        s,
        input(),
        result,
        { spoolDir: undefined, headerFolds: 'flatten' },
        (v) => v.kind === 'continue',
      )
    } finally {
      s.destroy()
    }
  }

  it('names the milter that left no recipient', async () => {
    const result = startResult(input())
    await run(result, 'm1', [del('b@example.com'), del('c@EXAMPLE.COM')])
    assert.deepEqual(result.envelope.rcpts, [])
    assert.equal(result.recipientsDeletedBy, 'm1')
  })

  it('deleting some recipients, or a later milter adding one back, leaves none named', async () => {
    const result = startResult(input())
    await run(result, 'm1', [del('b@example.com')])
    assert.equal(result.recipientsDeletedBy, undefined)
    await run(result, 'm2', [del('c@example.com')])
    assert.equal(result.recipientsDeletedBy, 'm2')
    await run(result, 'm3', [add('d@example.com')])
    assert.equal(result.recipientsDeletedBy, undefined)
    assert.deepEqual(result.envelope.rcpts, [{ address: 'd@example.com' }])
  })
})
