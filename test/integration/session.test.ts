/**
 * MilterSession against a real libmilter filter (test/milters/scripted.py,
 * pymilter on Debian's libmilter): one protocol flow per test. Every test
 * checks both sides: what our session returned, and what the filter logged.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import * as net from 'node:net'

import { MilterTimeoutError, isMilterError } from '../../lib/errors'
import type { ConnectAddress } from '../../lib/protocol/commands'
import { MacroStage, Proto } from '../../lib/protocol/constants'
import type { Modification } from '../../lib/protocol/replies'
import { sendContent } from '../../lib/session/content'
import type { MacroLists, MacroLookup } from '../../lib/session/macros'
import { openSession } from '../../lib/session/open'
import type {
  EomResult,
  MilterSession,
  SessionOptions,
  Timeouts,
  Verdict,
} from '../../lib/session/session'
import { parseSocketSpec } from '../../lib/transport/spec'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type EventOf,
  type MilterEventName,
  type MilterScript,
  type ScriptReply,
  type StartedMilter,
  type Transport,
} from '../helpers/milter-process'

// ---------------------------------------------------------------------------
// Fixtures

const TIMEOUTS: Timeouts = { connectMs: 5000, commandMs: 5000, contentMs: 5000 }

/** Macro values our "MTA" knows; a stage sends only the names configured (or requested). */
const MACRO_VALUES: Readonly<Record<string, string>> = {
  j: 'mx.example.org',
  '{daemon_name}': 'haraka-test',
  '{client_addr}': '192.0.2.10',
  '{client_name}': 'client.example.com',
  '{tls_version}': 'TLSv1.3',
  i: 'QID0001',
  '{mail_addr}': 'alice@example.com',
  '{msg_id}': '<m1@example.com>',
}

/** The configured lists, per stage. */
const MACROS: MacroLists = new Map<MacroStage, readonly string[]>([
  [MacroStage.CONNECT, ['j', '{daemon_name}', '{client_addr}', '{client_name}']],
  [MacroStage.HELO, ['{tls_version}']],
  [MacroStage.ENVFROM, ['i', '{mail_addr}']],
  [MacroStage.ENVRCPT, ['{rcpt_addr}']],
  [MacroStage.DATA, ['i']],
  [MacroStage.EOH, ['i']],
  [MacroStage.EOM, ['{msg_id}']],
])

function lookup(extra: Record<string, string> = {}): MacroLookup {
  const all: Record<string, string> = { ...MACRO_VALUES, ...extra }
  return (name) => all[name]
}

/** `<bob@example.net>` -> its {rcpt_addr} value. */
function rcptMacros(rcpt: string): MacroLookup {
  return lookup({ '{rcpt_addr}': rcpt.replace(/^<|>$/g, '') })
}

const INET: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }
const INET6: ConnectAddress = { family: 'inet6', address: '2001:db8::10', port: 52101 }

interface Message {
  /** `<addr>` then ESMTP parameters. */
  from: string[]
  rcpts: string[][]
  /** name, raw value after the colon (leading space and CRLF folds included). */
  headers: Array<[string, string]>
  body: Buffer
}

const BODY = Buffer.from('Hello,\r\n\r\nthis is the body.\r\n.leading dot\r\n')

const MSG: Message = {
  from: ['<alice@example.com>', 'SIZE=1234', 'BODY=8BITMIME'],
  rcpts: [['<bob@example.net>']],
  headers: [
    ['From', ' Alice <alice@example.com>'],
    ['Subject', '  x'],
    ['X-Folded', ' first\r\n\tsecond\r\n  third'],
    ['X-Tab', '\ttabbed'],
  ],
  body: BODY,
}

/** What the filter must see for MSG's headers (§8.1). */
const MSG_HEADERS_SEEN: Array<[string, string]> = [
  ['From', 'Alice <alice@example.com>'],
  ['Subject', ' x'],
  ['X-Folded', 'first\n\tsecond\n  third'],
  ['X-Tab', '\ttabbed'],
]

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

function replycode(code: number, enhanced: string | undefined, ...texts: string[]): Verdict {
  const lines = texts.map((text) => (enhanced ? { enhanced, text } : { text }))
  return { kind: 'replycode', reply: enhanced ? { code, enhanced, lines } : { code, lines } }
}

const CONTINUE: Verdict = { kind: 'continue' }

// ---------------------------------------------------------------------------
// Session plumbing

const sessions: MilterSession[] = []

async function open(
  milter: StartedMilter | string,
  extra: Partial<Omit<SessionOptions, 'name' | 'timeouts' | 'macros'>> & {
    timeouts?: Partial<Timeouts>
    macros?: MacroLists
  } = {},
): Promise<MilterSession> {
  const spec = typeof milter === 'string' ? milter : milter.socket
  const { timeouts, macros, ...rest } = extra
  const s = await openSession(parseSocketSpec(spec), {
    name: 'scripted',
    timeouts: { ...TIMEOUTS, ...timeouts },
    macros: macros ?? MACROS,
    ...rest,
  })
  sessions.push(s)
  return s
}

async function start(script: MilterScript, transport: Transport = 'inet'): Promise<StartedMilter> {
  return startScriptedMilter(script, { transport })
}

type Stage = 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' | 'eom'

/** Where a flow stopped, with which verdict. */
interface Outcome {
  stage: Stage
  verdict: Verdict
  /** One verdict per RCPT sent. */
  rcptVerdicts: Verdict[]
  eom?: EomResult
}

/** CONNECT then HELO; the first verdict other than continue, or undefined. */
async function runConnection(
  s: MilterSession,
  addr: ConnectAddress = INET,
): Promise<{ stage: Stage; verdict: Verdict } | undefined> {
  const c = await s.connect('client.example.com', addr, lookup())
  if (c.kind !== 'continue') return { stage: 'connect', verdict: c }
  const h = await s.helo('client.example.com', lookup())
  if (h.kind !== 'continue') return { stage: 'helo', verdict: h }
  return undefined
}

/** MAIL .. EOB, stopping at the first verdict that ends the message (RCPT refusals do not). */
async function runMessage(s: MilterSession, msg: Message = MSG): Promise<Outcome> {
  const rcptVerdicts: Verdict[] = []
  const stop = (stage: Stage, verdict: Verdict): Outcome => ({ stage, verdict, rcptVerdicts })
  const m = await s.mail(msg.from, lookup())
  if (m.kind !== 'continue') return stop('mail', m)
  for (const r of msg.rcpts) {
    const v = await s.rcpt(r, rcptMacros(r[0] ?? ''))
    rcptVerdicts.push(v)
    if (v.kind === 'accept' || v.kind === 'discard') return stop('rcpt', v)
  }
  const d = await s.data(lookup())
  if (d.kind !== 'continue') return stop('data', d)
  for (const [name, value] of msg.headers) {
    const h = await s.header(name, Buffer.from(value, 'utf8'))
    if (h.kind !== 'continue') return stop('header', h)
  }
  const e = await s.eoh(lookup())
  if (e.kind !== 'continue') return stop('eoh', e)
  if (s.wantsBody) {
    const b = await s.body(msg.body)
    if (b.kind !== 'continue') return stop('body', b)
  }
  const eom = await s.endOfMessage(lookup())
  return { stage: 'eom', verdict: eom.verdict, rcptVerdicts, eom }
}

/** CONNECT, HELO and one message, all expected to continue up to EOB. */
async function fullFlow(
  s: MilterSession,
  msg: Message = MSG,
  addr: ConnectAddress = INET,
): Promise<EomResult> {
  assert.equal(await runConnection(s, addr), undefined)
  const out = await runMessage(s, msg)
  assert.equal(out.stage, 'eom', `flow stopped at ${out.stage}: ${JSON.stringify(out.verdict)}`)
  assert.ok(out.eom)
  return out.eom
}

function one<K extends MilterEventName>(m: StartedMilter, kind: K): EventOf<K> {
  const list = m.eventsOf(kind)
  assert.equal(list.length, 1, `expected one ${kind} event, got ${list.length}`)
  return list[0]!
}

/** Asserts the filter's side of a normal MSG flow. */
function assertFilterSawMsg(m: StartedMilter): void {
  const from = one(m, 'envfrom')
  assert.equal(from.sender, '<alice@example.com>')
  assert.deepEqual(from.args, ['<alice@example.com>', 'SIZE=1234', 'BODY=8BITMIME'])
  const rcpt = one(m, 'envrcpt')
  assert.deepEqual(rcpt.args, ['<bob@example.net>'])
  one(m, 'data')
  const headers = m.eventsOf('header')
  assert.deepEqual(
    headers.map((h) => [h.name, h.value]),
    MSG_HEADERS_SEEN,
  )
  assert.equal(Buffer.from(headers[1]!.valueB64, 'base64').toString('latin1'), ' x')
  assert.equal(one(m, 'eoh').headerCount, 4)
  const eom = one(m, 'eom')
  assert.equal(eom.bodyLength, BODY.length)
  assert.equal(eom.bodySha256, sha256(BODY))
  assert.equal(Buffer.from(eom.bodyB64 ?? '', 'base64').toString('latin1'), BODY.toString('latin1'))
  assert.deepEqual(eom.headers, MSG_HEADERS_SEEN)
  const bodies = m.eventsOf('body')
  assert.equal(bodies.length, 1)
  assert.equal(bodies[0]!.length, BODY.length)
  // the order of the stage events on the wire
  const order = m
    .events()
    .map((e) => e.event)
    .filter((e) => e !== 'ready' && e !== 'negotiate' && e !== 'header' && e !== 'close')
  assert.deepEqual(order, ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'eoh', 'body', 'eom'])
}

// ---------------------------------------------------------------------------
// A proxy that rewrites the version in the milter's OPTNEG reply

interface Proxy {
  spec: string
  close(): Promise<void>
}

const proxies: Proxy[] = []

/** Sits between us and the filter and replaces the version word of its OPTNEG reply. */
async function versionProxy(target: StartedMilter, version: number): Promise<Proxy> {
  const m = /^inet:(\d+)@(.+)$/.exec(target.socket)
  assert.ok(m, `versionProxy needs an inet milter, not ${target.socket}`)
  const port = Number(m[1])
  const host = m[2]!
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.createConnection({ host, port })
    sockets.add(client).add(upstream)
    let head = Buffer.alloc(0)
    let rewritten = false
    upstream.on('data', (chunk: Buffer) => {
      if (rewritten) {
        client.write(chunk)
        return
      }
      head = Buffer.concat([head, chunk])
      if (head.length < 9) return
      assert.equal(head[4], 0x4f, 'the first reply is OPTNEG')
      head.writeUInt32BE(version, 5)
      rewritten = true
      client.write(head)
    })
    client.on('data', (chunk: Buffer) => upstream.write(chunk))
    const end = (): void => {
      client.destroy()
      upstream.destroy()
    }
    client.on('close', end).on('error', end)
    upstream.on('close', end).on('error', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address() as net.AddressInfo
  const proxy: Proxy = {
    spec: `inet:${addr.port}@127.0.0.1`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
  proxies.push(proxy)
  return proxy
}

// ---------------------------------------------------------------------------

describe('MilterSession against libmilter (scripted.py)', function () {
  this.timeout(30000)

  before(function () {
    // A missing pymilter must fail the suite, never skip it.
    assertPymilterInstalled()
  })

  afterEach(async function () {
    for (const s of sessions.splice(0)) s.quit()
    for (const p of proxies.splice(0)) await p.close()
    await stopAllMilters()
  })

  after(async function () {
    await stopAllMilters()
  })

  // -------------------------------------------------------------------------
  describe('a normal flow', function () {
    it('over TCP IPv4: CONNECT inet, HELO, MAIL with ESMTP args, RCPT, DATA, headers, EOH, body, EOB', async function () {
      const m = await start({})
      const s = await open(m)
      assert.equal(s.negotiated.version, 6)
      assert.equal(s.negotiated.actions, 0x1ff, 'the filter requests everything offered')
      assert.equal(s.negotiated.protocol, 0)
      const eom = await fullFlow(s)
      assert.deepEqual(eom, { verdict: CONTINUE, modifications: [], bodyReplaced: false })
      assert.equal(s.currentState, 'ready')

      const neg = one(m, 'negotiate')
      assert.equal(neg.offered.actions, 0x1ff)
      // libmilter adds every NR_* bit to what it hands xxfi_negotiate
      assert.equal(neg.offered.protocol & ~0xff000, 0x1ff7ff & ~0xff000)
      const c = one(m, 'connect')
      assert.equal(c.hostname, 'client.example.com')
      assert.equal(c.familyName, 'inet')
      assert.equal(c.family, 2)
      assert.deepEqual(c.hostaddr, ['192.0.2.10', 52100])
      assert.equal(one(m, 'helo').helo, 'client.example.com')
      assertFilterSawMsg(m)
    })

    it('over TCP IPv6 (::1): CONNECT inet6 with the bare IPv6 address', async function () {
      const m = await start({}, 'inet6')
      assert.match(m.socket, /^inet6:\d+@::1$/)
      const s = await open(m)
      const eom = await fullFlow(s, MSG, INET6)
      assert.equal(eom.verdict.kind, 'continue')
      const c = one(m, 'connect')
      assert.equal(c.familyName, 'inet6')
      assert.equal(c.family, 10)
      assert.ok(Array.isArray(c.hostaddr))
      assert.equal(c.hostaddr[0], '2001:db8::10')
      assert.equal(c.hostaddr[1], 52101)
      assertFilterSawMsg(m)
    })

    it('over a unix socket: CONNECT with family L and a path', async function () {
      const m = await start({}, 'unix')
      assert.match(m.socket, /^unix:\//)
      const s = await open(m)
      const eom = await fullFlow(s, MSG, { family: 'unix', path: '/run/smtp.sock' })
      assert.equal(eom.verdict.kind, 'continue')
      const c = one(m, 'connect')
      assert.equal(c.familyName, 'unix')
      assert.equal(c.family, 1)
      assert.equal(c.hostaddr, '/run/smtp.sock')
      assertFilterSawMsg(m)
    })

    it('sends family U (no address) when the client address is unknown', async function () {
      const m = await start({}, 'unix')
      const s = await open(m)
      await fullFlow(s, MSG, { family: 'unknown' })
      const c = one(m, 'connect')
      assert.equal(c.family, 0)
      assert.equal(c.hostaddr, null)
    })

    it('sends HDR_LEADSPC header values byte-exact when the filter asks for it', async function () {
      const m = await start({ protocol: { headerLeadingSpace: true } })
      const s = await open(m)
      assert.notEqual(s.negotiated.protocol & Proto.HDR_LEADSPC, 0)
      await fullFlow(s)
      assert.deepEqual(
        m.eventsOf('header').map((h) => h.value),
        [' Alice <alice@example.com>', '  x', ' first\n\tsecond\n  third', '\ttabbed'],
      )
    })

    it('QUIT: the filter runs its close callback', async function () {
      const m = await start({})
      const s = await open(m)
      await fullFlow(s)
      s.quit()
      assert.equal(s.currentState, 'closed')
      const close = await m.waitForEvent((e) => e.event === 'close')
      assert.equal(close.conn, 1)
      assert.equal(m.eventsOf('abort').length, 0)
      s.quit() // idempotent
    })

    it('body bytes are sent exactly: 8-bit, NUL, bare CR, cut at 65535', async function () {
      const m = await start({})
      const s = await open(m)
      const body = Buffer.alloc(65536, 0x61)
      body.set([0x00, 0xff, 0x0d, 0xe9, 0x0d, 0x0a], 0)
      body.set([0xc3, 0xa9], 65534) // a UTF-8 sequence split across the two packets
      const eom = await fullFlow(s, { ...MSG, body })
      assert.equal(eom.verdict.kind, 'continue')
      assert.deepEqual(
        m.eventsOf('body').map((b) => b.length),
        [65535, 1],
      )
      const e = one(m, 'eom')
      assert.equal(e.bodyLength, 65536)
      assert.equal(e.bodyChunks, 2)
      assert.equal(e.bodySha256, sha256(body))
    })

    it('an 8-bit header value given as bytes arrives byte-exact', async function () {
      const m = await start({})
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      await s.mail(MSG.from)
      await s.rcpt(['<bob@example.net>'])
      await s.data()
      const raw = Buffer.from([0x20, 0x63, 0x61, 0x66, 0xe9, 0x0d, 0x0a, 0x09, 0xff])
      assert.deepEqual(await s.header('X-Raw', raw), CONTINUE)
      await s.eoh()
      assert.deepEqual(await s.body(Buffer.alloc(0)), CONTINUE, 'an empty body sends nothing')
      const eom = await s.endOfMessage()
      assert.equal(eom.verdict.kind, 'continue')
      const h = one(m, 'header')
      assert.ok(
        Buffer.from(h.valueB64, 'base64').equals(
          Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0a, 0x09, 0xff]),
        ),
        `got ${Buffer.from(h.valueB64, 'base64').toString('hex')}`,
      )
      assert.equal(m.eventsOf('body').length, 0)
      assert.equal(one(m, 'eom').bodyLength, 0)
    })
  })
  // -------------------------------------------------------------------------
  describe('macros', function () {
    it('sends the configured lists before each stage and the filter sees them', async function () {
      const m = await start({})
      const s = await open(m)
      await fullFlow(s, { ...MSG, rcpts: [['<bob@example.net>'], ['<carol@example.net>']] })
      const c = one(m, 'connect').macros
      assert.equal(c['j'], 'mx.example.org')
      assert.equal(c['{daemon_name}'], 'haraka-test')
      assert.equal(c['{client_addr}'], '192.0.2.10')
      assert.equal(c['{client_name}'], 'client.example.com')
      assert.equal(c['i'], undefined, 'i is not configured for CONNECT')
      assert.equal(one(m, 'helo').macros['{tls_version}'], 'TLSv1.3')
      const from = one(m, 'envfrom').macros
      assert.equal(from['i'], 'QID0001')
      assert.equal(from['{mail_addr}'], 'alice@example.com')
      assert.equal(from['{rcpt_addr}'], undefined)
      const rcpts = m.eventsOf('envrcpt')
      assert.deepEqual(
        rcpts.map((r) => r.macros['{rcpt_addr}']),
        ['bob@example.net', 'carol@example.net'],
      )
      assert.equal(one(m, 'data').macros['i'], 'QID0001')
      assert.equal(one(m, 'eoh').macros['i'], 'QID0001')
      const eom = one(m, 'eom').macros
      assert.equal(eom['{msg_id}'], '<m1@example.com>')
      assert.equal(
        m.eventsOf('envrcpt')[0]!.macros['{msg_id}'],
        undefined,
        '{msg_id} is only configured for EOM',
      )
    })

    it('a macro with no value is left out, and a stage with no values sends no MACRO', async function () {
      const m = await start({})
      const s = await open(m, {
        macros: new Map<MacroStage, readonly string[]>([
          [MacroStage.CONNECT, ['j', '{no_such_macro}', '{auth_type}']],
        ]),
      })
      await fullFlow(s)
      const c = one(m, 'connect').macros
      assert.deepEqual(c, { j: 'mx.example.org' })
      assert.deepEqual(one(m, 'eom').macros, { j: 'mx.example.org' })
    })

    it('a filter symlist overrides the configured list for that stage only', async function () {
      const m = await start({
        symlist: { connect: 'j', rcpt: ['{rcpt_addr}', 'i'], eom: '{daemon_name}' },
      })
      const s = await open(m)
      assert.deepEqual(s.negotiated.symlist.get(MacroStage.CONNECT), ['j'])
      assert.deepEqual(s.negotiated.symlist.get(MacroStage.ENVRCPT), ['{rcpt_addr}', 'i'])
      assert.deepEqual(s.negotiated.symlist.get(MacroStage.EOM), ['{daemon_name}'])
      assert.equal(s.negotiated.symlist.has(MacroStage.ENVFROM), false)
      await fullFlow(s)
      // CONNECT: only j; the configured {daemon_name} {client_addr} {client_name} are not sent
      assert.deepEqual(one(m, 'connect').macros, { j: 'mx.example.org' })
      // MAIL: no symlist entry, so the configured list
      const from = one(m, 'envfrom').macros
      assert.equal(from['i'], 'QID0001')
      assert.equal(from['{mail_addr}'], 'alice@example.com')
      // RCPT: the requested list (i and {rcpt_addr}), in place of the configured one
      const rcpt = one(m, 'envrcpt').macros
      assert.equal(rcpt['{rcpt_addr}'], 'bob@example.net')
      assert.equal(rcpt['i'], 'QID0001')
      // EOM: {daemon_name} requested, the configured {msg_id} not sent
      const eom = one(m, 'eom').macros
      assert.equal(eom['{daemon_name}'], 'haraka-test')
      assert.equal(eom['{msg_id}'], undefined)
    })

    it('an empty symlist entry means no macros at that stage', async function () {
      const m = await start({ symlist: { mail: '' } })
      const s = await open(m)
      assert.deepEqual(s.negotiated.symlist.get(MacroStage.ENVFROM), [])
      await fullFlow(s)
      const from = one(m, 'envfrom').macros
      assert.equal(from['i'], undefined)
      assert.equal(from['{mail_addr}'], undefined)
      assert.equal(one(m, 'data').macros['i'], 'QID0001', 'DATA still gets its configured list')
    })
  })

  // -------------------------------------------------------------------------
  describe('replies at every stage', function () {
    const SINGLE_5XX: ScriptReply = { code: '554', xcode: '5.7.1', text: 'Go away' }
    const SINGLE_4XX: ScriptReply = { code: '451', xcode: '4.7.1', text: 'Come back later' }
    const MULTI: ScriptReply = { code: '550', xcode: '5.7.1', lines: ['first', 'second'] }
    const V_SINGLE_5XX = replycode(554, '5.7.1', 'Go away')
    const V_SINGLE_4XX = replycode(451, '4.7.1', 'Come back later')
    const V_MULTI = replycode(550, '5.7.1', 'first', 'second')

    /** The events of each stage, in order; later ones must be absent once a stage ends things. */
    const STAGE_EVENT: Record<Stage, MilterEventName> = {
      connect: 'connect',
      helo: 'helo',
      mail: 'envfrom',
      rcpt: 'envrcpt',
      data: 'data',
      header: 'header',
      eoh: 'eoh',
      body: 'body',
      eom: 'eom',
    }
    const ORDER: Stage[] = [
      'connect',
      'helo',
      'mail',
      'rcpt',
      'data',
      'header',
      'eoh',
      'body',
      'eom',
    ]

    function assertNothingAfter(m: StartedMilter, stage: Stage): void {
      for (const later of ORDER.slice(ORDER.indexOf(stage) + 1)) {
        assert.equal(
          m.eventsOf(STAGE_EVENT[later]).length,
          0,
          `the filter got ${later} after a final answer at ${stage}`,
        )
      }
    }

    const SIMPLE: Array<[string, ScriptReply, Verdict]> = [
      ['reject', 'reject', { kind: 'reject' }],
      ['tempfail', 'tempfail', { kind: 'tempfail' }],
      ['accept', 'accept', { kind: 'accept' }],
      ['a single-line 5xx reply code', SINGLE_5XX, V_SINGLE_5XX],
      ['a single-line 4xx reply code', SINGLE_4XX, V_SINGLE_4XX],
      ['a multi-line reply code', MULTI, V_MULTI],
    ]

    for (const stage of ['connect', 'helo'] as const) {
      for (const [title, reply, expected] of SIMPLE) {
        it(`${stage}: ${title} ends the session (state connectionDone)`, async function () {
          const m = await start({ reply: { [stage]: reply } })
          const s = await open(m)
          const stopped = await runConnection(s)
          assert.deepEqual(stopped, { stage, verdict: expected })
          assert.equal(s.currentState, 'connectionDone')
          assert.equal(s.error, undefined)
          // later steps are answered without I/O
          const out = await runMessage(s)
          assert.deepEqual(out.verdict, CONTINUE)
          assert.deepEqual(out.eom, { verdict: CONTINUE, modifications: [], bodyReplaced: false })
          assertNothingAfter(m, stage)
          const ev = stage === 'connect' ? one(m, 'connect') : one(m, 'helo')
          assert.deepEqual(
            ev.reply,
            typeof reply === 'string'
              ? reply
              : {
                  action: reply.code.startsWith('4') ? 'tempfail' : 'reject',
                  code: reply.code,
                  xcode: reply.xcode,
                  lines: reply.lines ?? [reply.text],
                },
          )
          // QUIT was sent: the filter closes the connection
          await m.waitForEvent((e) => e.event === 'close')
        })
      }
      it(`${stage}: discard is meaningless there and treated as continue`, async function () {
        const m = await start({ reply: { [stage]: 'discard' } })
        const warnings: string[] = []
        const s = await open(m, { observer: { warn: (w) => warnings.push(w) } })
        const eom = await fullFlow(s)
        assert.equal(eom.verdict.kind, 'continue')
        assert.equal(warnings.length, 1)
        assert.match(warnings[0]!, /DISCARD at/)
        one(m, 'eom')
      })
    }

    for (const stage of ['mail', 'data', 'header', 'eoh', 'body'] as const) {
      const cases: Array<[string, ScriptReply, Verdict]> = [
        ...SIMPLE,
        ['discard', 'discard', { kind: 'discard' }],
      ]
      for (const [title, reply, expected] of cases) {
        it(`${stage}: ${title} ends the message; the next MAIL works`, async function () {
          const m = await start({ reply: { [stage]: reply } })
          const s = await open(m)
          assert.equal(await runConnection(s), undefined)
          const out = await runMessage(s)
          assert.equal(out.stage, stage)
          assert.deepEqual(out.verdict, expected)
          assert.equal(s.currentState, 'messageDone')
          // the rest of the message is not sent
          assert.deepEqual(await s.endOfMessage(lookup()), {
            verdict: CONTINUE,
            modifications: [],
            bodyReplaced: false,
          })
          assertNothingAfter(m, stage)
          assert.equal(m.eventsOf(STAGE_EVENT[stage]).length, 1)
          // a second message on the same connection gets the same answer
          const again = await runMessage(s)
          assert.equal(again.stage, stage)
          assert.deepEqual(again.verdict, expected)
          assert.deepEqual(
            m.eventsOf('envfrom').map((e) => [e.conn, e.message]),
            [
              [1, 1],
              [1, 2],
            ],
          )
          assertNothingAfter(m, stage)
          assert.equal(s.error, undefined)
        })
      }
    }

    for (const [title, reply, expected] of [
      ['reject', 'reject', { kind: 'reject' }],
      ['tempfail', 'tempfail', { kind: 'tempfail' }],
      ['a single-line reply code', SINGLE_5XX, V_SINGLE_5XX],
      ['a multi-line reply code', MULTI, V_MULTI],
      ['a 4xx reply code', SINGLE_4XX, V_SINGLE_4XX],
    ] as Array<[string, ScriptReply, Verdict]>) {
      it(`rcpt: ${title} refuses that recipient only; the message goes on`, async function () {
        const m = await start({
          reply: { rcpt: { '<bad@example.com>': reply, '*': 'continue' } },
          eom: [{ op: 'addheader', name: 'X-Seen', value: 'yes' }],
        })
        const s = await open(m)
        assert.equal(await runConnection(s), undefined)
        const out = await runMessage(s, {
          ...MSG,
          rcpts: [['<bad@example.com>'], ['<bob@example.net>']],
        })
        assert.deepEqual(out.rcptVerdicts, [expected, CONTINUE])
        assert.equal(out.stage, 'eom')
        assert.deepEqual(out.eom?.verdict, CONTINUE)
        assert.deepEqual(out.eom?.modifications, [
          { kind: 'addheader', name: Buffer.from('X-Seen'), value: Buffer.from('yes') },
        ])
        assert.deepEqual(
          m.eventsOf('envrcpt').map((e) => e.rcpt),
          ['<bad@example.com>', '<bob@example.net>'],
        )
        one(m, 'data')
        assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
      })
    }

    for (const [title, reply, expected] of [
      ['accept', 'accept', { kind: 'accept' }],
      ['discard', 'discard', { kind: 'discard' }],
    ] as Array<[string, ScriptReply, Verdict]>) {
      it(`rcpt: ${title} ends the whole message`, async function () {
        const m = await start({ reply: { rcpt: reply } })
        const s = await open(m)
        assert.equal(await runConnection(s), undefined)
        const out = await runMessage(s, {
          ...MSG,
          rcpts: [['<a@example.com>'], ['<b@example.com>']],
        })
        assert.equal(out.stage, 'rcpt')
        assert.deepEqual(out.verdict, expected)
        assert.equal(s.currentState, 'messageDone')
        // a later RCPT, DATA and EOB are answered without I/O
        assert.deepEqual(await s.rcpt(['<c@example.com>']), CONTINUE)
        assert.deepEqual(await s.data(), CONTINUE)
        assert.deepEqual((await s.endOfMessage()).verdict, CONTINUE)
        assert.deepEqual(
          m.eventsOf('envrcpt').map((e) => e.rcpt),
          ['<a@example.com>'],
        )
        assertNothingAfter(m, 'rcpt')
        // the next message starts afresh
        const again = await runMessage(s)
        assert.equal(again.stage, 'rcpt')
        assert.equal(m.eventsOf('envfrom').length, 2)
      })
    }

    for (const [title, reply, expected] of [
      ['reject', 'reject', { kind: 'reject' }],
      ['tempfail', 'tempfail', { kind: 'tempfail' }],
      ['accept', 'accept', { kind: 'accept' }],
      ['discard', 'discard', { kind: 'discard' }],
      ['a single-line 5xx reply code', SINGLE_5XX, V_SINGLE_5XX],
      ['a single-line 4xx reply code', SINGLE_4XX, V_SINGLE_4XX],
      ['a multi-line reply code', MULTI, V_MULTI],
    ] as Array<[string, ScriptReply, Verdict]>) {
      it(`eom: ${title} is the final verdict`, async function () {
        const m = await start({ reply: { eom: reply } })
        const s = await open(m)
        const eom = await fullFlow(s)
        assert.deepEqual(eom, { verdict: expected, modifications: [], bodyReplaced: false })
        assert.equal(s.currentState, 'ready')
        assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
        // the connection goes on with a second message
        const again = await runMessage(s)
        assert.deepEqual(again.verdict, expected)
        assert.equal(m.eventsOf('eom').length, 2)
      })
    }

    it('a multi-line reply code: code 550, two lines each with enhanced 5.7.1', async function () {
      const m = await start({ reply: { mail: MULTI } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      const v = await s.mail(MSG.from)
      assert.equal(v.kind, 'replycode')
      assert.ok(v.kind === 'replycode')
      assert.equal(v.reply.code, 550)
      assert.equal(v.reply.enhanced, '5.7.1')
      assert.deepEqual(v.reply.lines, [
        { enhanced: '5.7.1', text: 'first' },
        { enhanced: '5.7.1', text: 'second' },
      ])
    })

    it('a reply code without xcode keeps only the code and text', async function () {
      const m = await start({ reply: { mail: { code: '451', text: 'Try later' } } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      // libmilter sends "451 Try later": no enhanced code is made up for one line
      assert.deepEqual(await s.mail(MSG.from), replycode(451, undefined, 'Try later'))
    })

    it("a multi-line reply code without xcode gets libmilter's default enhanced code", async function () {
      // smfi_setmlreply fills in 5.0.0 (4.0.0 for 4xx) when xcode is NULL
      const m = await start({ reply: { mail: { code: '550', lines: ['a', 'b'] } } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.mail(MSG.from), replycode(550, '5.0.0', 'a', 'b'))
    })

    it('a reply code whose class does not match the decision arrives as a plain reject', async function () {
      // libmilter only sends 'y' when 4xx goes with TEMPFAIL and 5xx with REJECT
      const m = await start({ reply: { mail: { code: '450', text: 'Nope', action: 'reject' } } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.mail(MSG.from), { kind: 'reject' })
    })
  })

  // -------------------------------------------------------------------------
  describe('modifications', function () {
    it('every modification arrives in order with exact values; a > 64 KiB body is reassembled', async function () {
      const line = 'x'.repeat(100) + '\r\n'
      const replacement = Buffer.from(line.repeat(1500))
      const m = await start({
        eom: [
          { op: 'addheader', name: 'X-Added', value: 'added value' },
          { op: 'insheader', index: 0, name: 'X-Top', value: 'top' },
          { op: 'chgheader', name: 'Subject', index: 1, value: 'changed subject' },
          { op: 'chgheader', name: 'X-Tab', index: 1, value: '' },
          { op: 'replacebody', repeat: { text: line, times: 1500 } },
          { op: 'addrcpt', rcpt: '<added@example.org>' },
          { op: 'addrcpt_par', rcpt: '<par@example.org>', params: 'NOTIFY=NEVER ORCPT=rfc822;x@y' },
          { op: 'delrcpt', rcpt: '<bob@example.net>' },
          { op: 'chgfrom', sender: '<bounce@example.org>', params: 'BODY=8BITMIME' },
          { op: 'quarantine', reason: 'held for review' },
        ],
      })
      const s = await open(m)
      const eom = await fullFlow(s)
      assert.equal(eom.verdict.kind, 'continue')
      const b = (t: string): Buffer => Buffer.from(t)
      const expected: Modification[] = [
        { kind: 'addheader', name: b('X-Added'), value: b('added value') },
        { kind: 'insheader', index: 0, name: b('X-Top'), value: b('top') },
        { kind: 'chgheader', index: 1, name: b('Subject'), value: b('changed subject') },
        { kind: 'chgheader', index: 1, name: b('X-Tab'), value: b('') },
        { kind: 'addrcpt', rcpt: b('<added@example.org>') },
        {
          kind: 'addrcpt_par',
          rcpt: b('<par@example.org>'),
          args: b('NOTIFY=NEVER ORCPT=rfc822;x@y'),
        },
        { kind: 'delrcpt', rcpt: b('<bob@example.net>') },
        { kind: 'chgfrom', sender: b('<bounce@example.org>'), args: b('BODY=8BITMIME') },
        { kind: 'quarantine', reason: b('held for review') },
      ]
      assert.deepEqual(eom.modifications, expected)
      assert.equal(eom.bodyReplaced, true)
      assert.ok(eom.replacementBody)
      assert.equal(eom.replacementBody.length, 153000)
      assert.ok(eom.replacementBody.equals(replacement), 'the replacement body is reassembled')
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
      assert.equal(m.eventsOf('error').length, 0)
    })

    it('REPLBODY chunks go to the onReplaceBody sink in libmilter packets of at most 65535 bytes', async function () {
      const m = await start({
        eom: [{ op: 'replacebody', repeat: { text: '0123456789abcdef\r\n', times: 8000 } }],
      })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      assert.equal((await s.mail(MSG.from)).kind, 'continue')
      assert.equal((await s.rcpt(['<bob@example.net>'])).kind, 'continue')
      assert.equal((await s.data()).kind, 'continue')
      const chunks: number[] = []
      const parts: Buffer[] = []
      const eom = await sendContent(s, {
        headers: [{ name: 'Subject', value: Buffer.from(' hi') }],
        body: [Buffer.from('a\r\n'), Buffer.from('b\r\n')],
        onReplaceBody: (c) => {
          chunks.push(c.length)
          parts.push(c)
        },
      })
      assert.equal(eom.verdict.kind, 'continue')
      assert.equal(eom.bodyReplaced, true)
      assert.equal(eom.replacementBody, undefined)
      assert.deepEqual(chunks, [65535, 65535, 12930])
      assert.ok(Buffer.concat(parts).equals(Buffer.from('0123456789abcdef\r\n'.repeat(8000))))
      // two small pieces of body: gathered into one BODY packet
      const bodies = m.eventsOf('body')
      assert.deepEqual(
        bodies.map((e) => e.length),
        [6],
      )
      assert.equal(one(m, 'eom').body, 'a\r\nb\r\n')
    })

    it('modifications followed by a reject are returned with the reject verdict', async function () {
      const m = await start({
        reply: { eom: 'reject' },
        eom: [{ op: 'addheader', name: 'X-Moot', value: '1' }],
      })
      const s = await open(m)
      const eom = await fullFlow(s)
      assert.deepEqual(eom.verdict, { kind: 'reject' })
      assert.equal(eom.modifications.length, 1)
    })
  })

  // -------------------------------------------------------------------------
  describe('negotiation', function () {
    it('version 2: the filter answers 2, no DATA and no UNKNOWN are sent, the flow works', async function () {
      const m = await start({ eom: [{ op: 'addheader', name: 'X-V2', value: 'ok' }] })
      const s = await open(m, { version: 2 })
      assert.equal(s.negotiated.version, 2)
      assert.equal(s.negotiated.offer.actions, 0x3f)
      assert.equal(s.negotiated.offer.protocol, 0x7f)
      assert.equal(s.negotiated.actions, 0x3f)
      assert.notEqual(s.negotiated.protocol & Proto.NODATA, 0)
      assert.notEqual(s.negotiated.protocol & Proto.NOUNKNOWN, 0)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.unknown('XFOO'), CONTINUE)
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      assert.deepEqual(out.eom?.modifications, [
        { kind: 'addheader', name: Buffer.from('X-V2'), value: Buffer.from('ok') },
      ])
      assert.equal(m.eventsOf('data').length, 0, 'no DATA at version 2')
      assert.equal(m.eventsOf('unknown').length, 0, 'no UNKNOWN at version 2')
      const neg = one(m, 'negotiate')
      assert.equal(neg.offered.actions, 0x3f)
      assert.deepEqual(
        m.eventsOf('header').map((h) => h.value),
        MSG_HEADERS_SEEN.map(([, v]) => v),
      )
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })

    it('a filter that answers a lower version than offered (3 for 6): NODATA and NOUNKNOWN are forced', async function () {
      const m = await start({})
      const proxy = await versionProxy(m, 3)
      const s = await open(proxy.spec)
      assert.equal(s.negotiated.version, 3)
      assert.equal(s.negotiated.offer.version, 6)
      assert.notEqual(s.negotiated.protocol & Proto.NODATA, 0)
      assert.equal(s.negotiated.protocol & Proto.NOUNKNOWN, 0, 'UNKNOWN exists at version 3')
      const eom = await fullFlow(s)
      assert.equal(eom.verdict.kind, 'continue')
      assert.equal(m.eventsOf('data').length, 0, 'DATA is not sent to a version-3 milter')
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })

    it('a filter that answers a higher version than offered is refused', async function () {
      const m = await start({})
      const proxy = await versionProxy(m, 6)
      await assert.rejects(open(proxy.spec, { version: 4 }), (e: unknown) => {
        assert.ok(isMilterError(e))
        assert.equal(e.code, 'MILTER_ERR_NEGOTIATE')
        assert.match(e.message, /version/)
        return true
      })
    })

    it('a filter requiring an action we do not offer hangs up: MILTER_ERR_NEGOTIATE names our masks', async function () {
      const m = await start({ actions: ['CHGBODY'] })
      await assert.rejects(open(m, { actions: 0x1 }), (e: unknown) => {
        assert.ok(isMilterError(e), String(e))
        assert.equal(e.code, 'MILTER_ERR_NEGOTIATE')
        assert.match(e.message, /actions=0x1\b/)
        assert.match(e.message, /protocol=0x1ff7ff\b/)
        return true
      })
      const neg = one(m, 'negotiate')
      assert.equal(neg.offered.actions, 0x1)
      assert.equal(neg.requested.actions, 0x2)
      assert.equal(m.eventsOf('connect').length, 0)
    })

    it('NR flags: the session does not wait for replies the filter will not send', async function () {
      const m = await start({
        protocol: { noreply: ['header', 'body', 'rcpt'] },
        // would refuse every recipient and header if it could answer
        reply: { rcpt: 'reject', header: 'reject' },
        sleepMs: { header: 300 },
        eom: [{ op: 'addheader', name: 'X-NR', value: 'done' }],
      })
      const s = await open(m)
      const nr = Proto.NR_HDR | Proto.NR_BODY | Proto.NR_RCPT
      assert.equal(s.negotiated.protocol & nr, nr)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.mail(MSG.from), CONTINUE)
      assert.deepEqual(await s.rcpt(['<bob@example.net>']), CONTINUE)
      assert.deepEqual(await s.data(), CONTINUE)
      const t0 = Date.now()
      for (const [name, value] of MSG.headers) {
        assert.deepEqual(await s.header(name, Buffer.from(value)), CONTINUE)
      }
      const headersMs = Date.now() - t0
      assert.ok(headersMs < 250, `4 headers took ${headersMs} ms: the session waited for replies`)
      assert.deepEqual(await s.eoh(), CONTINUE)
      const eohMs = Date.now() - t0
      assert.ok(eohMs >= 1000, `EOH came after ${eohMs} ms: its reply waits for the 4 headers`)
      assert.deepEqual(await s.body(BODY), CONTINUE)
      const eom = await s.endOfMessage()
      assert.deepEqual(eom.modifications, [
        { kind: 'addheader', name: Buffer.from('X-NR'), value: Buffer.from('done') },
      ])
      assert.equal(one(m, 'envrcpt').reply, 'noreply')
      assert.deepEqual(
        m.eventsOf('header').map((h) => h.reply),
        ['noreply', 'noreply', 'noreply', 'noreply'],
      )
      assert.equal(one(m, 'body').reply, 'noreply')
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })

    it('NO flags: no HELO and no BODY are sent, their macros still are, EOB still works', async function () {
      const m = await start({
        protocol: { no: ['body', 'helo'] },
        eom: [{ op: 'addheader', name: 'X-No', value: 'body' }],
      })
      const s = await open(m)
      assert.equal(
        s.negotiated.protocol & (Proto.NOBODY | Proto.NOHELO),
        Proto.NOBODY | Proto.NOHELO,
      )
      assert.equal(await runConnection(s), undefined)
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      assert.deepEqual(out.eom?.modifications, [
        { kind: 'addheader', name: Buffer.from('X-No'), value: Buffer.from('body') },
      ])
      assert.equal(s.wantsBody, false)
      assert.equal(m.eventsOf('helo').length, 0)
      assert.equal(m.eventsOf('body').length, 0)
      const eom = one(m, 'eom')
      assert.equal(eom.bodyLength, 0)
      assert.equal(eom.bodyChunks, 0)
      // the HELO macros were sent although HELO was not (libmilter keeps them)
      assert.equal(one(m, 'envfrom').macros['{tls_version}'], 'TLSv1.3')
    })

    it('NR on every step: everything up to EOB is pipelined, only EOB is answered', async function () {
      const all = [
        'connect',
        'helo',
        'mail',
        'rcpt',
        'data',
        'header',
        'eoh',
        'body',
        'unknown',
      ] as const
      const m = await start({
        protocol: { noreply: [...all] },
        reply: { connect: 'reject', mail: 'reject', eoh: 'reject' },
        eom: [{ op: 'addheader', name: 'X-All-NR', value: '1' }],
      })
      const s = await open(m)
      assert.equal(s.negotiated.protocol, 0xff080)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.unknown('XFOO'), CONTINUE)
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      assert.deepEqual(out.eom?.modifications, [
        { kind: 'addheader', name: Buffer.from('X-All-NR'), value: Buffer.from('1') },
      ])
      for (const kind of [
        'connect',
        'helo',
        'envfrom',
        'envrcpt',
        'data',
        'eoh',
        'body',
        'unknown',
      ] as const) {
        const evs = m.eventsOf(kind)
        assert.equal(evs.length, 1, kind)
        assert.equal(evs[0]!.reply, 'noreply', kind)
      }
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })

    it('NO on every step but EOB: libmilter accepts the gaps and EOB still works', async function () {
      const m = await start({
        protocol: {
          no: ['connect', 'helo', 'mail', 'rcpt', 'data', 'header', 'eoh', 'body', 'unknown'],
        },
        eom: [{ op: 'addheader', name: 'X-Only-EOB', value: '1' }],
      })
      const s = await open(m)
      assert.equal(s.negotiated.protocol, 0x37f)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.unknown('XFOO'), CONTINUE)
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      assert.equal(out.eom?.modifications.length, 1)
      const kinds = m
        .events()
        .map((e) => e.event)
        .filter((e) => e !== 'ready' && e !== 'negotiate')
      assert.deepEqual(kinds, ['eom'])
      // the macros of every omitted stage were still sent
      const macros = one(m, 'eom').macros
      assert.equal(macros['j'], 'mx.example.org')
      assert.equal(macros['{tls_version}'], 'TLSv1.3')
      assert.equal(macros['{mail_addr}'], 'alice@example.com')
      assert.equal(macros['{rcpt_addr}'], 'bob@example.net')
      assert.equal(macros['{msg_id}'], '<m1@example.com>')
    })

    it('SKIP: the body stops after the first chunk and EOB modifications still arrive', async function () {
      const m = await start({
        protocol: { skip: true },
        reply: { body: 'skip' },
        eom: [{ op: 'addheader', name: 'X-Skipped', value: 'yes' }],
      })
      const s = await open(m)
      assert.notEqual(s.negotiated.protocol & Proto.SKIP, 0)
      const big = Buffer.alloc(200_000, 'y')
      for (let i = 100; i < big.length; i += 100) big.write('\r\n', i - 2)
      assert.equal(await runConnection(s), undefined)
      assert.equal((await s.mail(MSG.from)).kind, 'continue')
      assert.equal((await s.rcpt(['<bob@example.net>'])).kind, 'continue')
      assert.equal((await s.data()).kind, 'continue')
      const chunks: Buffer[] = []
      for (let off = 0; off < big.length; off += 50_000)
        chunks.push(big.subarray(off, off + 50_000))
      const eom = await sendContent(s, {
        headers: [{ name: 'Subject', value: Buffer.from(' big') }],
        body: chunks,
      })
      assert.deepEqual(eom.verdict, CONTINUE)
      assert.deepEqual(eom.modifications, [
        { kind: 'addheader', name: Buffer.from('X-Skipped'), value: Buffer.from('yes') },
      ])
      const bodies = m.eventsOf('body')
      assert.equal(bodies.length, 1, 'one BODY packet, then SKIP')
      assert.ok(bodies.length < chunks.length)
      // the 50,000-byte pieces are sent in full 65535-byte packets
      assert.equal(bodies[0]!.length, 65535)
      assert.equal(one(m, 'eom').bodyLength, 65535)
    })

    it('SKIP after a header: the remaining headers are not sent (Postfix style), EOH and EOB are', async function () {
      const m = await start({
        protocol: { skip: true },
        reply: { header: { Subject: 'skip', '*': 'continue' } },
      })
      const s = await open(m)
      const eom = await fullFlow(s)
      assert.deepEqual(eom.verdict, CONTINUE)
      assert.deepEqual(
        m.eventsOf('header').map((h) => h.name),
        ['From', 'Subject'],
      )
      assert.equal(one(m, 'eoh').headerCount, 2)
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })

    it('SKIP inside one large body() call stops the remaining 64 KiB packets', async function () {
      const m = await start({ protocol: { skip: true }, reply: { body: 'skip' } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      await s.mail(MSG.from)
      await s.rcpt(['<bob@example.net>'])
      await s.data()
      await s.eoh()
      assert.deepEqual(await s.body(Buffer.alloc(200_000, 'z')), CONTINUE)
      assert.equal(s.wantsBody, false)
      assert.deepEqual(await s.body(Buffer.alloc(10, 'z')), CONTINUE)
      const eom = await s.endOfMessage()
      assert.deepEqual(eom.verdict, CONTINUE)
      assert.deepEqual(
        m.eventsOf('body').map((b) => b.length),
        [65535],
      )
    })
  })

  // -------------------------------------------------------------------------
  describe('timeouts and PROGRESS', function () {
    it('PROGRESS re-arms the content timer: 5 progress 150 ms apart under a 400 ms timeout', async function () {
      const m = await start({
        progress: { eom: 5 },
        progressIntervalMs: 150,
        eom: [{ op: 'addheader', name: 'X-Slow', value: 'ok' }],
      })
      const s = await open(m, { timeouts: { contentMs: 400 } })
      const t0 = Date.now()
      const eom = await fullFlow(s)
      assert.ok(Date.now() - t0 >= 700, 'the filter took at least 5 x 150 ms')
      assert.deepEqual(eom.verdict, CONTINUE)
      assert.equal(eom.modifications.length, 1)
      assert.equal(s.error, undefined)
    })

    it('PROGRESS is honoured at other stages too (libmilter sends it at RCPT and EOH)', async function () {
      const m = await start({ progress: { rcpt: 2, eoh: 2 }, progressIntervalMs: 150 })
      const s = await open(m, { timeouts: { commandMs: 250, contentMs: 250 } })
      const t0 = Date.now()
      const eom = await fullFlow(s)
      assert.ok(Date.now() - t0 >= 600, 'RCPT and EOH each took 300 ms')
      assert.deepEqual(eom.verdict, CONTINUE)
      assert.equal(s.error, undefined)
      one(m, 'eom')
    })

    it('without PROGRESS the same wait times out (phase content)', async function () {
      const m = await start({ sleepMs: { eom: 750 } })
      const s = await open(m, { timeouts: { contentMs: 400 } })
      await assert.rejects(fullFlow(s), (e: unknown) => {
        assert.ok(e instanceof MilterTimeoutError, String(e))
        assert.equal(e.code, 'MILTER_ERR_TIMEOUT')
        assert.equal(e.phase, 'content')
        assert.equal(e.ms, 400)
        return true
      })
    })

    it('a filter sleeping 1500 ms at RCPT under a 300 ms command timeout: MILTER_ERR_TIMEOUT, sticky', async function () {
      const m = await start({ sleepMs: { rcpt: 1500 } })
      const s = await open(m, { timeouts: { commandMs: 300 } })
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.mail(MSG.from), CONTINUE)
      const t0 = Date.now()
      let err: unknown
      try {
        await s.rcpt(['<bob@example.net>'])
      } catch (e) {
        err = e
      }
      const took = Date.now() - t0
      assert.ok(err instanceof MilterTimeoutError, String(err))
      assert.equal(err.code, 'MILTER_ERR_TIMEOUT')
      assert.equal(err.phase, 'command')
      assert.equal(err.ms, 300)
      assert.match(err.message, /SMFIC_RCPT/)
      assert.ok(took >= 290 && took < 1200, `timed out after ${took} ms`)
      // sticky: the same error, every later step fails with it
      assert.equal(s.error, err)
      assert.equal(s.currentState, 'failed')
      await assert.rejects(s.data(), (e: unknown) => e === err)
      await assert.rejects(s.endOfMessage(), (e: unknown) => e === err)
      assert.equal(s.quitNc(), false)
      // the filter did receive the RCPT
      await m.waitForEvent((e) => e.event === 'envrcpt')
    })
  })

  // -------------------------------------------------------------------------
  describe('several messages, ABORT, QUIT_NC, UNKNOWN', function () {
    it('MAIL..EOB twice, then MAIL..RCPT, abort(), and MAIL..EOB again on one connection', async function () {
      const m = await start({ eom: [{ op: 'addheader', name: 'X-N', value: 'n' }] })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      const first = await runMessage(s)
      const second = await runMessage(s, {
        ...MSG,
        from: ['<second@example.com>'],
        body: Buffer.from('second\r\n'),
      })
      assert.equal(first.stage, 'eom')
      assert.equal(second.stage, 'eom')
      assert.equal(second.eom?.modifications.length, 1)
      assert.deepEqual(await s.mail(['<third@example.com>']), CONTINUE)
      assert.deepEqual(await s.rcpt(['<bob@example.net>']), CONTINUE)
      assert.equal(s.inMessage, true)
      s.abort()
      assert.equal(s.inMessage, false)
      assert.equal(s.currentState, 'ready')
      const fourth = await runMessage(s, { ...MSG, from: ['<fourth@example.com>'] })
      assert.equal(fourth.stage, 'eom')
      assert.equal(fourth.eom?.modifications.length, 1)

      const abort = one(m, 'abort')
      assert.equal(abort.headerCount, 0)
      const froms = m.eventsOf('envfrom')
      assert.deepEqual(
        froms.map((e) => [e.conn, e.message, e.sender]),
        [
          [1, 1, '<alice@example.com>'],
          [1, 2, '<second@example.com>'],
          [1, 3, '<third@example.com>'],
          [1, 4, '<fourth@example.com>'],
        ],
      )
      const eoms = m.eventsOf('eom')
      assert.deepEqual(
        eoms.map((e) => e.bodySha256),
        [sha256(BODY), sha256(Buffer.from('second\r\n')), sha256(BODY)],
      )
      assert.equal(m.eventsOf('connect').length, 1)
      assert.ok(abort.seq > froms[2]!.seq && abort.seq < froms[3]!.seq)
      assert.ok(m.events().every((e) => e.conn === 0 || e.conn === 1))
    })

    it('abort() after a message-level reject and before the next MAIL is harmless', async function () {
      const m = await start({ reply: { header: { Subject: 'reject', '*': 'continue' } } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      const out = await runMessage(s)
      assert.equal(out.stage, 'header')
      s.abort()
      assert.equal(s.currentState, 'ready')
      const again = await runMessage(s, {
        ...MSG,
        headers: [['From', ' a@b']],
      })
      assert.equal(again.stage, 'eom')
      assert.equal(one(m, 'eom').headers.length, 1)
    })

    it('QUIT_NC after a completed EOB: CONNECT again on the same connection and a second message', async function () {
      const m = await start({ eom: [{ op: 'addheader', name: 'X-Reuse', value: 'r' }] })
      const s = await open(m)
      await fullFlow(s)
      assert.equal(s.reusable, true)
      assert.equal(s.quitNc(), true)
      assert.equal(s.currentState, 'negotiated')
      await m.waitForEvent((e) => e.event === 'close')
      // no OPTNEG: CONNECT straight away
      const eom = await fullFlow(s, MSG, {
        family: 'inet',
        address: '198.51.100.7',
        port: 2525,
      })
      assert.equal(eom.modifications.length, 1)
      assert.equal(m.eventsOf('negotiate').length, 1, 'one OPTNEG for both sessions')
      const connects = m.eventsOf('connect')
      assert.equal(connects.length, 2)
      assert.deepEqual(connects[1]!.hostaddr, ['198.51.100.7', 2525])
      const close = one(m, 'close')
      assert.equal(close.messages, 1)
      assert.ok(close.seq > connects[0]!.seq && close.seq < connects[1]!.seq)
      // libmilter cleared the macros and pymilter made a new filter object
      assert.notEqual(connects[1]!.conn, connects[0]!.conn)
      assert.equal(m.eventsOf('eom')[0]!.macros['{mail_addr}'], 'alice@example.com')
      assert.deepEqual(
        Object.keys(connects[1]!.macros).sort(),
        ['j', '{client_addr}', '{client_name}', '{daemon_name}'],
        'no macro of the first SMTP session is left at the second CONNECT',
      )
      assert.equal(m.eventsOf('eom').length, 2)
      assert.equal(m.eventsOf('eom')[1]!.bodySha256, sha256(BODY))
    })

    it('QUIT_NC is refused (false, nothing sent) after an abort, mid-message, and after a HELO that follows EOB', async function () {
      const m = await start({})
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      assert.equal(s.quitNc(), false, 'not after HELO')
      await s.mail(MSG.from)
      assert.equal(s.quitNc(), false, 'not inside a message')
      await s.rcpt(['<bob@example.net>'])
      s.abort()
      assert.equal(s.reusable, false)
      assert.equal(s.quitNc(), false, 'not after an abort')
      assert.equal(s.currentState, 'ready')
      // the connection is still usable
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      await m.waitForEvent((e) => e.event === 'abort')
      assert.equal(m.eventsOf('close').length, 0)
      assert.equal(m.eventsOf('connect').length, 1)
      // libmilter takes HELO after EOB through its HELO state, which has no QUIT_NC (§5.3)
      assert.equal(s.reusable, true, 'after the completed EOB')
      assert.equal((await s.helo('client.example.com', lookup())).kind, 'continue')
      assert.equal(s.reusable, false)
      assert.equal(s.quitNc(), false, 'not after a HELO that follows EOB')
    })

    it('HELO inside a message sends ABORT first, then HELO; the next message flows', async function () {
      const m = await start({})
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      await s.mail(MSG.from)
      await s.rcpt(['<bob@example.net>'])
      assert.deepEqual(await s.helo('again.example.com', lookup()), CONTINUE)
      assert.equal(s.currentState, 'ready')
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      const kinds = m
        .events()
        .map((e) => e.event)
        .filter((e) => e !== 'ready' && e !== 'negotiate' && e !== 'header')
      assert.deepEqual(kinds, [
        'connect',
        'helo',
        'envfrom',
        'envrcpt',
        'abort',
        'helo',
        'envfrom',
        'envrcpt',
        'data',
        'eoh',
        'body',
        'eom',
      ])
      assert.equal(m.eventsOf('helo')[1]!.helo, 'again.example.com')
    })

    it('unknown(): the command line reaches the filter and its reject comes back', async function () {
      const m = await start({ reply: { unknown: 'reject' } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      assert.deepEqual(await s.unknown('XFOO bar baz'), { kind: 'reject' })
      assert.equal(s.currentState, 'ready')
      assert.equal(one(m, 'unknown').command, 'XFOO bar baz')
      // the session goes on
      const out = await runMessage(s)
      assert.equal(out.stage, 'eom')
      one(m, 'eom')
    })

    it('unknown() with a reply code inside a message keeps the message going', async function () {
      const m = await start({ reply: { unknown: { code: '502', xcode: '5.5.2', text: 'What?' } } })
      const s = await open(m)
      assert.equal(await runConnection(s), undefined)
      await s.mail(MSG.from)
      assert.deepEqual(await s.unknown('VRFY bob'), replycode(502, '5.5.2', 'What?'))
      assert.equal(s.currentState, 'mail')
      await s.rcpt(['<bob@example.net>'])
      await s.data()
      const eom = await sendContent(s, { headers: [], body: [BODY] })
      assert.equal(eom.verdict.kind, 'continue')
      assert.equal(one(m, 'unknown').command, 'VRFY bob')
      assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    })
  })
})
