/**
 * MilterChain with real MilterSessions negotiated over TCP with in-process
 * fake milters (the `open` option): ordering, retirement, default_action,
 * discard, and the content phase handing each milter the previous one's
 * edits.
 */
import assert from 'node:assert/strict'

import {
  MilterChain,
  type ChainEvent,
  type MessageInput,
  type Outcome,
} from '../../../lib/policy/chain'
import { parseMilterConfig, type MilterDef } from '../../../lib/config'
import { MilterConnectError } from '../../../lib/errors'
import type { ConnectAddress } from '../../../lib/protocol/commands'
import type { MilterSession } from '../../../lib/session/session'
import { FakeMilter, R, addheader, chgheader, replycode, type Script } from './fake-milter'

const ADDR: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }

let fakes: FakeMilter[] = []
let chains: MilterChain[] = []

afterEach(async () => {
  for (const c of chains) c.close()
  chains = []
  await Promise.all(fakes.map((f) => f.close()))
  fakes = []
})

/**
 * Definitions for milters named in order, each with its default_action, or
 * `action;key=value;...` for more milter.ini keys.
 */
function defs(spec: Record<string, string>): MilterDef[] {
  const names = Object.keys(spec)
  const ini: Record<string, Record<string, unknown>> = { main: { milters: names.join(' ') } }
  for (const n of names) {
    const [action, ...extra] = (spec[n] ?? '').split(';')
    ini[`milter.${n}`] = {
      ...Object.fromEntries(extra.map((kv) => kv.split('='))),
      socket: 'inet:1@127.0.0.1', // never dialled: `open` is injected
      default_action: action,
      connect_timeout: 2,
      command_timeout: 2,
      content_timeout: 2,
    }
  }
  return [...parseMilterConfig(ini).milters.values()]
}

interface Setup {
  chain: MilterChain
  fake: Record<string, FakeMilter>
  events: ChainEvent[]
}

/**
 * A chain over `milters` (name -> default_action). Names in `scripts` get
 * a fake milter with that script; the others cannot be opened
 * (MilterConnectError).
 */
async function setup(
  milters: Record<string, string>,
  scripts: Record<string, Script>,
  mixedRecipients: 'defer' | 'union' = 'defer',
): Promise<Setup> {
  const fake: Record<string, FakeMilter> = {}
  for (const [name, script] of Object.entries(scripts)) {
    const f = await FakeMilter.start(script)
    fakes.push(f)
    fake[name] = f
  }
  const events: ChainEvent[] = []
  const chain = new MilterChain({
    milters: defs(milters),
    open: (def): Promise<MilterSession> => {
      const f = fake[def.name]
      if (!f) return Promise.reject(new MilterConnectError(`${def.name}: connect ECONNREFUSED`))
      return f.open(def)
    },
    onEvent: (e) => events.push(e),
    mixedRecipients,
  })
  chains.push(chain)
  return { chain, fake, events }
}

const pass: Script = () => undefined

function only(cmd: string, answer: ReturnType<Script>): Script {
  return (c) => (c.cmd === cmd ? answer : undefined)
}

const CONTINUE: Outcome = { action: 'continue' }

/** CONNECT, HELO, MAIL, RCPT, DATA, each expected to continue. */
async function toData(chain: MilterChain): Promise<void> {
  assert.deepEqual(await chain.connect('client.example.net', ADDR), CONTINUE)
  assert.deepEqual(await chain.helo('client.example.net'), CONTINUE)
  assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
  assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
  assert.deepEqual(await chain.data(), CONTINUE)
}

function message(over: Partial<MessageInput> = {}): MessageInput {
  return {
    headers: [
      { name: 'Received', value: ' from us by us id X', hidden: true },
      { name: 'From', value: ' s@example.org' },
      { name: 'Subject', value: ' hello' },
    ],
    envelope: { from: { address: 's@example.org' }, rcpts: [{ address: 'r@example.com' }] },
    body: async function* () {
      yield await Promise.resolve(Buffer.from('line one\r\n'))
      yield Buffer.from('line two\r\n')
    },
    ...over,
  }
}

/** `name: value` of the HEADER commands a milter received. */
function headersSeen(f: FakeMilter): string[] {
  return f.last.all('header').map((h) => `${h.name.toString()}: ${h.value.toString()}`)
}

describe('chain: MilterChain', function () {
  this.timeout(5000)

  describe('order', () => {
    it('the first non-continue wins and later milters do not see that command', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        { a: only('mail', R.reject), b: pass },
      )
      assert.deepEqual(await chain.connect('client.example.net', ADDR), CONTINUE)
      const o = await chain.mail(['<s@example.org>'])
      assert.deepEqual(o, {
        action: 'reject',
        milter: 'a',
        cause: 'verdict',
        reply: {
          code: 550,
          enhanced: '5.7.1',
          lines: [{ enhanced: '5.7.1', text: 'Command rejected' }],
        },
      })
      assert.deepEqual(fake['a']?.last.names, ['optneg', 'connect', 'mail'])
      assert.deepEqual(fake['b']?.last.names, ['optneg', 'connect'])
    })

    it('a later milter can still refuse when the earlier ones continue', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        {
          a: pass,
          b: (c) =>
            c.cmd === 'rcpt' && c.args[0]?.toString() === '<nobody@example.com>'
              ? replycode('550 5.1.1 No such user')
              : undefined,
        },
      )
      await chain.connect('h', ADDR)
      await chain.mail(['<s@example.org>'])
      const o = await chain.rcpt(['<nobody@example.com>'])
      assert.equal(o.action, 'reject')
      assert.ok(o.action === 'reject')
      assert.equal(o.milter, 'b')
      assert.deepEqual(o.reply, {
        code: 550,
        enhanced: '5.1.1',
        lines: [{ enhanced: '5.1.1', text: 'No such user' }],
      })
      // Only this recipient: the next one is asked again, of both milters.
      assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
      assert.equal(fake['a']?.last.all('rcpt').length, 2)
      assert.equal(fake['b']?.last.all('rcpt').length, 2)
    })

    it('reply codes: 4xx is a tempfail, 421 a shutdown', async () => {
      const { chain } = await setup(
        { a: 'tempfail' },
        {
          a: (c) =>
            c.cmd === 'mail' && c.args[0]?.toString() === '<tf@example.org>'
              ? replycode('452-4.3.1 out of space', '452 4.3.1 try later')
              : c.cmd === 'rcpt'
                ? replycode('421 4.7.0 going away')
                : undefined,
        },
      )
      await chain.connect('h', ADDR)
      const t = await chain.mail(['<tf@example.org>'])
      assert.equal(t.action, 'tempfail')
      assert.ok(t.action === 'tempfail')
      assert.deepEqual(t.reply.lines, [
        { enhanced: '4.3.1', text: 'out of space' },
        { enhanced: '4.3.1', text: 'try later' },
      ])
      await chain.mail(['<s@example.org>'])
      const s = await chain.rcpt(['<r@example.com>'])
      assert.equal(s.action, 'shutdown')
      assert.ok(s.action === 'shutdown')
      assert.equal(s.reply.code, 421)
    })
  })

  describe('ACCEPT at connect', () => {
    it('retires only that milter', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        { a: only('connect', R.accept), b: pass },
      )
      assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
      assert.deepEqual(await chain.helo('h'), CONTINUE)
      assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
      const a = fake['a']?.last
      assert.ok(a)
      await a.waitFor((c) => c.cmd === 'quit')
      assert.deepEqual(a.names, ['optneg', 'connect', 'quit'])
      assert.deepEqual(fake['b']?.last.names, ['optneg', 'connect', 'helo', 'mail'])
    })
  })

  describe('default_action when a milter cannot be opened', () => {
    it('accept: carry on without it', async () => {
      const { chain, fake, events } = await setup({ down: 'accept', up: 'tempfail' }, { up: pass })
      assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
      assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
      assert.deepEqual(fake['up']?.last.names, ['optneg', 'connect', 'mail'])
      const err = events.find((e) => e.level === 'error')
      assert.ok(err)
      assert.equal(err.milter, 'down')
      assert.equal(err.stage, 'connect')
      assert.equal(err.code, 'MILTER_ERR_CONNECT')
      assert.match(err.message, /default_action=accept/)
    })

    const sticky: Array<[string, Outcome]> = [
      [
        'tempfail',
        {
          action: 'tempfail',
          milter: 'down',
          cause: 'failure',
          reply: {
            code: 451,
            enhanced: '4.7.1',
            lines: [{ enhanced: '4.7.1', text: 'Service unavailable - try again later' }],
          },
        },
      ],
      [
        'reject',
        {
          action: 'reject',
          milter: 'down',
          cause: 'failure',
          reply: {
            code: 550,
            enhanced: '5.5.0',
            lines: [{ enhanced: '5.5.0', text: 'Service unavailable' }],
          },
        },
      ],
      [
        'shutdown',
        {
          action: 'shutdown',
          milter: 'down',
          cause: 'failure',
          reply: {
            code: 421,
            enhanced: '4.7.1',
            lines: [{ enhanced: '4.7.1', text: 'Service unavailable - try again later' }],
          },
        },
      ],
    ]
    for (const [action, want] of sticky) {
      it(`${action}: the same outcome at every later stage (sticky)`, async () => {
        const { chain, fake } = await setup(
          { up: 'accept', down: `${action};failure_scope=session` },
          { up: pass },
        )
        assert.deepEqual(await chain.connect('h', ADDR), want)
        assert.deepEqual(await chain.helo('h'), want)
        assert.deepEqual(await chain.mail(['<s@example.org>']), want)
        assert.deepEqual(await chain.rcpt(['<r@example.com>']), want)
        assert.deepEqual(await chain.data(), want)
        const r = await chain.message(message())
        assert.deepEqual(r.outcome, want)
        // The milter before it was consulted; the failed one stops everything after.
        assert.deepEqual(fake['up']?.last.names.slice(0, 2), ['optneg', 'connect'])
      })
    }

    it('quarantine: the connection goes on, every message is quarantined', async () => {
      const { chain, fake } = await setup({ down: 'quarantine', up: 'tempfail' }, { up: pass })
      await toData(chain)
      const r = await chain.message(message())
      assert.deepEqual(r.outcome, CONTINUE)
      assert.deepEqual(r.quarantine, ['down: milter failed (MILTER_ERR_CONNECT)'])
      assert.ok(fake['up']?.last.names.includes('eob'))
      // And the next message too.
      chain.abort()
      assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
      await chain.rcpt(['<r@example.com>'])
      await chain.data()
      assert.deepEqual((await chain.message(message())).quarantine, [
        'down: milter failed (MILTER_ERR_CONNECT)',
      ])
    })

    it('a milter that fails at a later stage gets its default_action there, sticky', async () => {
      const { chain, fake, events } = await setup(
        { a: 'tempfail', b: 'accept' },
        { a: only('helo', 'close'), b: pass },
      )
      assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
      const o = await chain.helo('h')
      assert.equal(o.action, 'tempfail')
      assert.ok(o.action === 'tempfail')
      assert.equal(o.cause, 'failure')
      assert.equal(o.milter, 'a')
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
      assert.deepEqual(fake['b']?.last.names, ['optneg', 'connect'])
      assert.equal(events.find((e) => e.level === 'error')?.code, 'MILTER_ERR_CLOSED')
    })
  })

  describe('failure_scope = message (the default)', () => {
    it('a failure costs the message in flight; the next one reopens the milter with CONNECT and HELO replayed', async () => {
      let first = true
      const { chain, fake, events } = await setup(
        { a: 'tempfail' },
        {
          a: (c) => {
            if (c.cmd !== 'eob' || !first) return undefined
            first = false
            return 'close'
          },
        },
      )
      await toData(chain)
      const r1 = await chain.message(message())
      assert.equal(r1.outcome.action, 'tempfail')
      assert.equal(events.find((e) => e.level === 'error')?.code, 'MILTER_ERR_CLOSED')
      chain.abort()
      assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
      assert.equal(fake['a']?.conns.length, 2, 'a second milter connection')
      assert.deepEqual(fake['a']?.last.names, ['optneg', 'connect', 'helo', 'mail'])
      assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
      assert.deepEqual(await chain.data(), CONTINUE)
      const r2 = await chain.message(message())
      assert.deepEqual(r2.outcome, CONTINUE)
    })

    it('the failure holds for the rest of its message (RCPT, DATA, end of message)', async () => {
      const { chain } = await setup({ a: 'reject' }, { a: only('mail', 'close') })
      await chain.connect('h', ADDR)
      await chain.helo('h')
      const o = await chain.mail(['<s@example.org>'])
      assert.equal(o.action, 'reject')
      assert.deepEqual(await chain.rcpt(['<r@example.com>']), o)
      assert.deepEqual(await chain.data(), o)
      assert.deepEqual((await chain.message(message())).outcome, o)
    })

    it('a milter that cannot be opened is tried again at every MAIL', async () => {
      const { chain, events } = await setup({ down: 'tempfail' }, {})
      const o = await chain.connect('h', ADDR)
      assert.equal(o.action, 'tempfail')
      // HELO is not refused: the failure belonged to no message
      assert.deepEqual(await chain.helo('h'), CONTINUE)
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
      chain.abort()
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
      assert.deepEqual(
        events.filter((e) => e.code === 'MILTER_ERR_CONNECT').map((e) => e.stage),
        ['connect', 'mail', 'mail'],
      )
    })

    it('failure_scope = session keeps the failure for the SMTP session (Postfix)', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail;failure_scope=session' },
        { a: only('eob', 'close') },
      )
      await toData(chain)
      const r = await chain.message(message())
      assert.equal(r.outcome.action, 'tempfail')
      chain.abort()
      assert.deepEqual(await chain.mail(['<s@example.org>']), r.outcome)
      assert.equal(fake['a']?.conns.length, 1, 'not reopened')
    })

    it('default_action quarantine under message scope: only the failed message is quarantined', async () => {
      let first = true
      const { chain } = await setup(
        { a: 'quarantine' },
        {
          a: (c) => {
            if (c.cmd !== 'eob' || !first) return undefined
            first = false
            return 'close'
          },
        },
      )
      await toData(chain)
      const r1 = await chain.message(message())
      assert.deepEqual(r1.quarantine, ['a: milter failed (MILTER_ERR_CLOSED)'])
      chain.abort()
      await chain.mail(['<s@example.org>'])
      await chain.rcpt(['<r@example.com>'])
      await chain.data()
      assert.deepEqual((await chain.message(message())).quarantine, [])
    })
  })

  describe('a refusal at CONNECT or HELO holds for the connection', () => {
    it('tempfail at CONNECT: every later MAIL gets it (the plugin greets 220 and answers it there)', async () => {
      const { chain } = await setup({ a: 'accept' }, { a: only('connect', R.tempfail) })
      const o = await chain.connect('h', ADDR)
      assert.equal(o.action, 'tempfail')
      assert.deepEqual(await chain.helo('h'), o)
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
      chain.abort()
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
    })

    it('reject at HELO: a second HELO and MAIL get it too', async () => {
      const { chain } = await setup({ a: 'accept' }, { a: only('helo', R.reject) })
      assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
      const o = await chain.helo('h')
      assert.equal(o.action, 'reject')
      assert.deepEqual(await chain.helo('h2'), o)
      assert.deepEqual(await chain.mail(['<s@example.org>']), o)
    })
  })

  describe('DISCARD at RCPT', () => {
    it('marks the message discarded: no milter sees the rest of it', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        { a: only('rcpt', R.discard), b: pass },
      )
      await chain.connect('h', ADDR)
      await chain.mail(['<s@example.org>'])
      assert.deepEqual(await chain.rcpt(['<r@example.com>']), { action: 'discard', milter: 'a' })
      assert.equal(chain.discarded, true)
      assert.deepEqual(await chain.rcpt(['<r2@example.com>']), CONTINUE)
      assert.deepEqual(await chain.data(), CONTINUE)
      const r = await chain.message(message())
      assert.deepEqual(r.outcome, CONTINUE)
      assert.equal(r.headersChanged, false)
      assert.deepEqual(fake['a']?.last.names, ['optneg', 'connect', 'mail', 'rcpt'])
      assert.deepEqual(fake['b']?.last.names, ['optneg', 'connect', 'mail'])
    })

    it('the next MAIL starts a fresh message for every milter', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        { a: only('rcpt', R.discard), b: pass },
      )
      await chain.connect('h', ADDR)
      await chain.mail(['<s@example.org>'])
      await chain.rcpt(['<r@example.com>'])
      chain.abort()
      assert.equal(chain.discarded, false)
      fake['a']!.script = pass
      assert.deepEqual(await chain.mail(['<s2@example.org>']), CONTINUE)
      assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
      assert.equal(fake['b']?.last.all('mail').length, 2)
      assert.equal(fake['b']?.last.all('rcpt').length, 1)
    })
  })

  describe('message()', () => {
    it("the second milter sees the first one's header edits; the trace header is hidden", async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        {
          a: only('eob', [
            addheader('X-A', 'from a'),
            chgheader(1, 'Subject', 'changed by a'),
            R.continue,
          ]),
          b: only('eob', [addheader('X-B', 'from b'), R.continue]),
        },
      )
      await toData(chain)
      const r = await chain.message(message())
      assert.deepEqual(r.outcome, CONTINUE)
      assert.deepEqual(headersSeen(fake['a']!), ['From: s@example.org', 'Subject: hello'])
      assert.deepEqual(headersSeen(fake['b']!), [
        'From: s@example.org',
        'Subject: changed by a',
        'X-A: from a',
      ])
      assert.equal(r.headersChanged, true)
      assert.deepEqual(
        r.headers.map((h) => `${h.name}:${h.value}`),
        [
          'Received: from us by us id X',
          'From: s@example.org',
          'Subject: changed by a',
          'X-A: from a',
          'X-B: from b',
        ],
      )
      assert.equal(r.headers[0]?.hidden, true)
      assert.deepEqual(
        r.edits.map(({ milter, count, bodyReplaced, modifications }) => ({
          milter,
          count,
          bodyReplaced,
          kinds: modifications.map((m) => m.kind),
        })),
        [
          { milter: 'a', count: 2, bodyReplaced: false, kinds: ['addheader', 'chgheader'] },
          { milter: 'b', count: 1, bodyReplaced: false, kinds: ['addheader'] },
        ],
      )
      assert.equal(r.envelopeChanged, false)
    })

    it("the second milter gets the first one's replacement body", async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        {
          a: only('eob', [
            { kind: 'replbody', chunk: Buffer.from('new body\n.dot line') },
            R.continue,
          ]),
          b: pass,
        },
      )
      await toData(chain)
      const r = await chain.message(message())
      try {
        assert.deepEqual(r.outcome, CONTINUE)
        assert.ok(r.body)
        const bodyB = Buffer.concat(fake['b']!.last.all('body').map((b) => b.chunk)).toString()
        assert.equal(bodyB, 'new body\r\n.dot line\r\n')
        const bodyA = Buffer.concat(fake['a']!.last.all('body').map((b) => b.chunk)).toString()
        assert.equal(bodyA, 'line one\r\nline two\r\n')
        assert.deepEqual(r.edits, [
          { milter: 'a', modifications: [], count: 0, bodyReplaced: true },
        ])
      } finally {
        await r.body?.dispose()
      }
    })

    it('envelope edits accumulate across milters', async () => {
      const { chain } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        {
          a: only('eob', [
            { kind: 'addrcpt', rcpt: Buffer.from('<added@example.com>') },
            R.continue,
          ]),
          b: only('eob', [
            { kind: 'delrcpt', rcpt: Buffer.from('<r@example.com>') },
            {
              kind: 'chgfrom',
              sender: Buffer.from('<new@example.org>'),
              args: Buffer.from('SIZE=1'),
            },
            R.continue,
          ]),
        },
      )
      await toData(chain)
      const r = await chain.message(message())
      assert.equal(r.envelopeChanged, true)
      assert.deepEqual(r.envelope, {
        from: { address: 'new@example.org', args: 'SIZE=1' },
        rcpts: [{ address: 'added@example.com' }],
      })
    })

    it('a reject at end of message stops the chain: 554 5.7.1, later milters not asked', async () => {
      const { chain, fake } = await setup(
        { a: 'tempfail', b: 'tempfail' },
        { a: only('eob', [addheader('X-A', 'v'), R.reject]), b: pass },
      )
      await toData(chain)
      const r = await chain.message(message())
      assert.equal(r.outcome.action, 'reject')
      assert.ok(r.outcome.action === 'reject')
      assert.equal(r.outcome.reply.code, 554)
      assert.equal(r.headersChanged, false)
      assert.ok(!fake['b']!.last.names.includes('header'))
    })

    it('QUARANTINE is reported with the milter name', async () => {
      const { chain } = await setup(
        { a: 'tempfail' },
        { a: only('eob', [{ kind: 'quarantine', reason: Buffer.from('looks odd') }, R.continue]) },
      )
      await toData(chain)
      const r = await chain.message(message())
      assert.deepEqual(r.quarantine, ['a: looks odd'])
    })

    describe('an invalid header name from a milter', () => {
      const bad: Script = only('eob', [
        addheader('X-Good', 'kept?'),
        chgheader(1, 'Subject', 'changed?'),
        addheader('Bad Name', 'v'),
        R.continue,
      ])

      it('default_action accept: none of its edits, and the next milter sees the original', async () => {
        const { chain, fake, events } = await setup(
          { a: 'accept', b: 'tempfail' },
          { a: bad, b: pass },
        )
        await toData(chain)
        const input = message()
        const r = await chain.message(input)
        assert.deepEqual(r.outcome, CONTINUE)
        assert.equal(r.headersChanged, false)
        assert.deepEqual(r.headers, input.headers)
        assert.deepEqual(r.edits, [])
        assert.deepEqual(headersSeen(fake['b']!), ['From: s@example.org', 'Subject: hello'])
        const err = events.find((e) => e.level === 'error')
        assert.ok(err)
        assert.equal(err.milter, 'a')
        assert.equal(err.stage, 'eom')
        assert.equal(err.code, 'MILTER_ERR_PROTOCOL')
        assert.match(err.message, /Bad Name/)
        await fake['a']!.last.closed
      })

      it('default_action tempfail: 451, none of its edits, sticky for the connection', async () => {
        const { chain, fake } = await setup(
          { a: 'tempfail;failure_scope=session', b: 'tempfail' },
          { a: bad, b: pass },
        )
        await toData(chain)
        const r = await chain.message(message())
        assert.equal(r.outcome.action, 'tempfail')
        assert.ok(r.outcome.action === 'tempfail')
        assert.equal(r.outcome.cause, 'failure')
        assert.equal(r.outcome.milter, 'a')
        assert.equal(r.outcome.reply.code, 451)
        assert.equal(r.headersChanged, false)
        assert.ok(!fake['b']!.last.names.includes('header'))
        assert.deepEqual(await chain.mail(['<s@example.org>']), r.outcome)
      })

      it('an invalid recipient address is treated the same way', async () => {
        const { chain } = await setup(
          { a: 'reject' },
          {
            a: only('eob', [
              addheader('X-Good', 'v'),
              { kind: 'addrcpt', rcpt: Buffer.from('<bad address@example.com>') },
              R.continue,
            ]),
          },
        )
        await toData(chain)
        const r = await chain.message(message())
        assert.equal(r.outcome.action, 'reject')
        assert.ok(r.outcome.action === 'reject')
        assert.equal(r.outcome.cause, 'failure')
        assert.equal(r.headersChanged, false)
        assert.equal(r.envelopeChanged, false)
      })
    })
  })

  describe('per-recipient milters (destination_channels / optin)', () => {
    const LOCAL = { destinationChannel: 'local', optin: undefined }
    const SPAM = { destinationChannel: 'relay', optin: 'spam' }

    it('join at the first matching RCPT, with CONNECT, HELO and MAIL replayed', async () => {
      const { chain, fake } = await setup(
        { all: 'tempfail', spam: 'tempfail;optin=spam' },
        { all: pass, spam: pass },
      )
      assert.deepEqual(await chain.connect('client.example.net', ADDR), CONTINUE)
      assert.deepEqual(await chain.helo('client.example.net'), CONTINUE)
      assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
      assert.equal(fake['spam']!.conns.length, 0, 'not opened before a recipient needs it')
      assert.deepEqual(await chain.rcpt(['<r@example.com>'], undefined, SPAM), CONTINUE)
      assert.deepEqual(fake['spam']!.last.names, ['optneg', 'connect', 'helo', 'mail', 'rcpt'])
      assert.equal(fake['spam']!.last.all('connect')[0]?.hostname.toString(), 'client.example.net')
      assert.deepEqual(chain.messageMilters, ['all', 'spam'])
    })

    it('defer: a recipient needing other milters gets 452 4.5.3', async () => {
      const { chain, fake } = await setup(
        { all: 'tempfail', spam: 'tempfail;optin=spam' },
        { all: pass, spam: pass },
      )
      await chain.connect('h', ADDR)
      await chain.mail(['<s@example.org>'])
      assert.deepEqual(await chain.rcpt(['<a@example.com>'], undefined, LOCAL), CONTINUE)
      const o = await chain.rcpt(['<b@example.com>'], undefined, SPAM)
      assert.equal(o.action, 'tempfail')
      assert.ok(o.action === 'tempfail')
      assert.equal(o.reply.code, 452)
      assert.equal(o.reply.enhanced, '4.5.3')
      assert.equal(fake['spam']!.conns.length, 0)
      assert.equal(
        fake['all']!.last.all('rcpt').length,
        1,
        'the deferred recipient is not reported',
      )
    })

    it('union: a milter joining later learns the recipients accepted before', async () => {
      const { chain, fake } = await setup(
        { all: 'tempfail', spam: 'tempfail;optin=spam' },
        { all: pass, spam: pass },
        'union',
      )
      await chain.connect('h', ADDR)
      await chain.mail(['<s@example.org>'])
      assert.deepEqual(await chain.rcpt(['<a@example.com>'], undefined, LOCAL), CONTINUE)
      assert.deepEqual(await chain.rcpt(['<b@example.com>'], undefined, SPAM), CONTINUE)
      assert.deepEqual(
        fake['spam']!.last.all('rcpt').map((r) => r.args[0]?.toString()),
        ['<a@example.com>', '<b@example.com>'],
      )
    })
  })

  describe('close()', () => {
    it('QUITs every open milter', async () => {
      const { chain, fake } = await setup({ a: 'tempfail', b: 'tempfail' }, { a: pass, b: pass })
      await chain.connect('h', ADDR)
      chain.close()
      await fake['a']!.last.waitFor((c) => c.cmd === 'quit')
      await fake['b']!.last.waitFor((c) => c.cmd === 'quit')
    })
  })
})
