/**
 * End to end: per-recipient filtering (milters enabled by recipient rules).
 *
 * One real Haraka for the suite with three real libmilter filters:
 * - `base`: no rules, runs for every message, adds `X-Base: yes`;
 * - `spam`: `optin = spam`, adds `X-Spam-Checked: yes`;
 * - `chan`: `destination_channels = tcp_partner`, adds `X-Chan: yes`.
 *
 * Recipients opt in through `[optin] optin@example.com = spam`, or through
 * the fixture plugin `optin_directory` (test/fixtures/plugins), which plays a
 * directory lookup: in its rcpt hook it sets
 * `transaction.notes.milter_optin[addr] = 'spam'` for local parts `dir-*` and
 * `transaction.notes.milter_destination_channel[addr] = 'tcp_partner'` for
 * `partner-*`. example.net is mapped to `tcp_partner` by
 * `[destination_channel]`. The filters are restarted on the same ports for
 * every test; their event logs show who saw what.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'
import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type MilterEvent,
  type MilterScript,
  type StartedMilter,
} from '../helpers/milter-process'
import { REPO_ROOT, freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { SmtpClient, sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const MESSAGE = [
  'From: Alice <alice@example.org>',
  'To: undisclosed-recipients:;',
  'Subject: per recipient',
  'Message-Id: <per-rcpt@example.org>',
  '',
  'Hello,',
  '',
].join('\r\n')

const OPTIN = 'optin@example.com' // opted in by [optin]
const DIR = 'dir-carol@example.com' // opted in by the directory plugin's note
const DIR2 = 'dir-dave@example.com'
const OTHER = 'bob@example.com' // no rule
const OTHER2 = 'erin@example.org'
const PARTNER = 'carol@example.net' // tcp_partner by [destination_channel]
const PARTNER_NOTE = 'partner-frank@example.com' // tcp_partner by the directory plugin's note

interface Ports {
  base: number
  spam: number
  chan: number
}

function milterIni(p: Ports, mixed: 'defer' | 'union' | undefined): string {
  return `
[main]
milters = base, spam, chan
default_action = tempfail
connect_timeout = 3
command_timeout = 2
content_timeout = 5
source_channel = tcp_test
${mixed ? `mixed_recipients = ${mixed}` : ''}

[milter.base]
socket = inet:${p.base}@127.0.0.1

[milter.spam]
socket = inet:${p.spam}@127.0.0.1
optin = spam

[milter.chan]
socket = inet:${p.chan}@127.0.0.1
destination_channels = tcp_partner

[destination_channel]
example.net = tcp_partner

[optin]
${OPTIN} = spam
`
}

const BASE_SCRIPT: MilterScript = { eom: [{ op: 'addheader', name: 'X-Base', value: 'yes' }] }
const SPAM_SCRIPT: MilterScript = {
  eom: [{ op: 'addheader', name: 'X-Spam-Checked', value: 'yes' }],
}
const CHAN_SCRIPT: MilterScript = { eom: [{ op: 'addheader', name: 'X-Chan', value: 'yes' }] }

/** The events a filter logged about SMTP traffic (not its own start). */
function traffic(m: StartedMilter): MilterEvent[] {
  return m.events().filter((e) => e.event !== 'ready' && e.event !== 'stopped')
}

function rcptsSeen(m: StartedMilter): string[] {
  return m.eventsOf('envrcpt').map((e) => e.rcpt)
}

describe('per-recipient filtering end to end (recipient rules, lazy milters)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let ports: Ports
  let base: StartedMilter
  let spam: StartedMilter
  let chan: StartedMilter

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    ports = { base: await freePort(), spam: await freePort(), chan: await freePort() }
    haraka = await startHaraka({
      plugins: ['optin_directory', 'milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      pluginFiles: {
        optin_directory: readFileSync(
          path.join(REPO_ROOT, 'test', 'fixtures', 'plugins', 'optin_directory.js'),
          'utf8',
        ),
      },
      sinkPort: sink.port,
      config: { 'milter.ini': milterIni(ports, undefined) },
    })
  })

  beforeEach(async () => {
    base = await startScriptedMilter(BASE_SCRIPT, { port: ports.base })
    spam = await startScriptedMilter(SPAM_SCRIPT, { port: ports.spam })
    chan = await startScriptedMilter(CHAN_SCRIPT, { port: ports.chan })
  })

  afterEach(async () => {
    await stopAllMilters()
    sink.clear()
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
  })

  /** Restart the spam filter with another script. */
  async function spamScript(script: MilterScript): Promise<StartedMilter> {
    await spam.stop()
    spam = await startScriptedMilter(script, { port: ports.spam })
    return spam
  }

  function send(rcpts: string[]): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', haraka.port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts,
      data: MESSAGE,
    })
  }

  function codes(r: SendMailResult): number[] {
    return r.replies.rcpts.map((x) => x.code)
  }

  async function delivered(n = 1): Promise<SinkMessage[]> {
    const msgs = await sink.waitForMessages(n, 10000)
    return msgs.slice(0, n)
  }

  function checked(m: SinkMessage): { base: string[]; spam: string[]; chan: string[] } {
    return {
      base: headerValues(m, 'X-Base'),
      spam: headerValues(m, 'X-Spam-Checked'),
      chan: headerValues(m, 'X-Chan'),
    }
  }

  /**
   * A rule milter was brought in late: CONNECT, HELO and MAIL replayed as base saw them live on
   * its `nth` SMTP connection (0-based; one message per connection).
   */
  function assertReplayed(m: StartedMilter, nth = 0): void {
    const kinds = traffic(m).map((e) => e.event)
    assert.deepEqual(kinds.slice(0, 5), ['negotiate', 'connect', 'helo', 'envfrom', 'envrcpt'])
    const conn = m.eventsOf('connect')[0]!
    const baseConn = base.eventsOf('connect')[nth]!
    assert.equal(conn.macros['{source_channel}'], 'tcp_test')
    assert.equal(conn.macros['{client_addr}'], '127.0.0.1')
    assert.equal(conn.macros['{client_port}'], baseConn.macros['{client_port}'])
    assert.deepEqual(conn.hostaddr, baseConn.hostaddr)
    assert.equal(m.eventsOf('helo')[0]?.helo, 'client.example.org')
    const from = m.eventsOf('envfrom')[0]!
    assert.deepEqual(from.args, ['<alice@example.org>'])
    assert.equal(from.macros['{mail_addr}'], 'alice@example.org')
    // the same transaction id as the milter that saw MAIL live
    assert.ok(from.macros['i'])
    assert.equal(from.macros['i'], base.eventsOf('envfrom')[nth]?.macros['i'])
  }

  it('only opted-in recipients: both milters apply, spam gets CONNECT/HELO/MAIL replayed', async () => {
    const r = await send([OPTIN, DIR])
    assert.deepEqual(codes(r), [250, 250])
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [msg] = await delivered()
    assert.deepEqual(msg!.rcptTo, [OPTIN, DIR])
    assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })

    assertReplayed(spam)
    assert.deepEqual(rcptsSeen(spam), [`<${OPTIN}>`, `<${DIR}>`])
    const [r1, r2] = spam.eventsOf('envrcpt')
    assert.equal(r1?.macros['{optin}'], 'spam')
    assert.equal(r1?.macros['{destination_channel}'], 'local')
    assert.equal(r1?.macros['{rcpt_addr}'], OPTIN)
    assert.equal(r2?.macros['{optin}'], 'spam')
    assert.equal(spam.eventsOf('eom').length, 1)
    // Postfix order: spam comes after base and sees its edit
    assert.ok(spam.eventsOf('eom')[0]?.headers.some(([n, v]) => n === 'X-Base' && v === 'yes'))
    // base saw everything live; chan was never contacted
    assert.equal(base.eventsOf('connect')[0]?.macros['{source_channel}'], 'tcp_test')
    assert.deepEqual(rcptsSeen(base), [`<${OPTIN}>`, `<${DIR}>`])
    assert.deepEqual(traffic(chan), [])
  })

  it('only other recipients: base applies, the spam milter is never contacted', async () => {
    const r = await send([OTHER, OTHER2])
    assert.deepEqual(codes(r), [250, 250])
    assert.equal(r.accepted, true)
    const [msg] = await delivered()
    assert.deepEqual(msg!.rcptTo, [OTHER, OTHER2])
    assert.deepEqual(checked(msg!), { base: ['yes'], spam: [], chan: [] })
    assert.deepEqual(traffic(spam), [])
    assert.equal(spam.eventsOf('connect').length, 0)
    assert.deepEqual(traffic(chan), [])
    const [b1, b2] = base.eventsOf('envrcpt')
    assert.equal(b1?.macros['{destination_channel}'], 'local')
    assert.equal(b1?.macros['{optin}'], undefined)
    assert.equal(b2?.macros['{rcpt_addr}'], OTHER2)
    assert.equal(b2?.macros['{optin}'], undefined)
  })

  describe('mixed recipients, default policy (defer)', () => {
    it('opted-in first, other second: 452 4.5.3 for the other, who is then sent in its own transaction', async () => {
      const c = await SmtpClient.connect('127.0.0.1', haraka.port)
      try {
        const r1 = await c.sendMail({
          helo: 'client.example.org',
          from: 'alice@example.org',
          rcpts: [OPTIN, OTHER],
          data: MESSAGE,
        })
        assert.deepEqual(codes(r1), [250, 452])
        assert.equal(r1.replies.rcpts[1]?.enhanced, '4.5.3')
        assert.equal(
          r1.replies.rcpts[1]?.text,
          '4.5.3 Recipient needs different filtering - send it in a separate transaction',
        )
        assert.equal(r1.accepted, true)
        const [first] = await delivered(1)
        assert.deepEqual(first!.rcptTo, [OPTIN])
        assert.deepEqual(checked(first!), { base: ['yes'], spam: ['yes'], chan: [] })

        // the deferred recipient, in a new transaction on the same connection
        const r2 = await c.sendMail({ from: 'alice@example.org', rcpts: [OTHER], data: MESSAGE })
        assert.deepEqual(codes(r2), [250])
        assert.equal(r2.accepted, true)
        await c.quit()
      } finally {
        await c.close()
      }
      const [, second] = await delivered(2)
      assert.deepEqual(second!.rcptTo, [OTHER])
      assert.deepEqual(checked(second!), { base: ['yes'], spam: [], chan: [] })

      assert.deepEqual(rcptsSeen(spam), [`<${OPTIN}>`])
      assert.equal(spam.eventsOf('envfrom').length, 1)
      assert.equal(spam.eventsOf('eom').length, 1)
      assert.equal(spam.eventsOf('connect').length, 1)
      assert.deepEqual(rcptsSeen(base), [`<${OPTIN}>`, `<${OTHER}>`])
      assert.equal(base.eventsOf('eom').length, 2)
    })

    it('other first, opted-in second: the opted-in one is deferred, then filtered on its own', async () => {
      const c = await SmtpClient.connect('127.0.0.1', haraka.port)
      try {
        const r1 = await c.sendMail({
          helo: 'client.example.org',
          from: 'alice@example.org',
          rcpts: [OTHER, DIR],
          data: MESSAGE,
        })
        assert.deepEqual(codes(r1), [250, 452])
        assert.equal(r1.replies.rcpts[1]?.enhanced, '4.5.3')
        assert.equal(r1.accepted, true)
        const [first] = await delivered(1)
        assert.deepEqual(first!.rcptTo, [OTHER])
        assert.deepEqual(checked(first!), { base: ['yes'], spam: [], chan: [] })
        // spam was not needed by the message: not contacted at all so far
        assert.deepEqual(traffic(spam), [])

        const r2 = await c.sendMail({ from: 'alice@example.org', rcpts: [DIR], data: MESSAGE })
        assert.deepEqual(codes(r2), [250])
        assert.equal(r2.accepted, true)
        await c.quit()
      } finally {
        await c.close()
      }
      const [, second] = await delivered(2)
      assert.deepEqual(second!.rcptTo, [DIR])
      assert.deepEqual(checked(second!), { base: ['yes'], spam: ['yes'], chan: [] })

      // brought in at the second transaction: the connection's CONNECT/HELO replayed, then
      // that transaction's MAIL
      const kinds = traffic(spam).map((e) => e.event)
      assert.deepEqual(kinds.slice(0, 5), ['negotiate', 'connect', 'helo', 'envfrom', 'envrcpt'])
      assert.equal(spam.eventsOf('connect')[0]?.macros['{source_channel}'], 'tcp_test')
      assert.equal(
        spam.eventsOf('envfrom')[0]?.macros['i'],
        base.eventsOf('envfrom')[1]?.macros['i'],
      )
      assert.deepEqual(rcptsSeen(spam), [`<${DIR}>`])
      assert.equal(spam.eventsOf('envrcpt')[0]?.macros['{optin}'], 'spam')
    })

    it('a recipient refused by a milter does not fix the set of milters', async () => {
      await base.stop()
      base = await startScriptedMilter(
        {
          ...BASE_SCRIPT,
          reply: { rcpt: { '<nobody@example.com>': 'reject', '*': 'continue' } },
        },
        { port: ports.base },
      )
      const r = await send(['nobody@example.com', OPTIN])
      assert.deepEqual(codes(r), [550, 250], JSON.stringify(r.replies.rcpts))
      assert.equal(r.accepted, true)
      const [msg] = await delivered()
      assert.deepEqual(msg!.rcptTo, [OPTIN])
      assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
    })

    it('a per-recipient REJECT by the spam milter refuses just that recipient', async () => {
      await spamScript({
        ...SPAM_SCRIPT,
        reply: {
          rcpt: {
            [`<${OPTIN}>`]: { code: '550', xcode: '5.7.1', text: 'not for you' },
            '*': 'continue',
          },
        },
      })
      const r = await send([OPTIN, DIR, OTHER])
      // OPTIN refused by spam (it does not fix the set); DIR fixes {spam}; OTHER is deferred
      assert.deepEqual(codes(r), [550, 250, 452])
      assert.equal(r.replies.rcpts[0]?.text, '5.7.1 not for you')
      assert.equal(r.accepted, true)
      const [msg] = await delivered()
      assert.deepEqual(msg!.rcptTo, [DIR])
      assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
      assert.deepEqual(rcptsSeen(spam), [`<${OPTIN}>`, `<${DIR}>`])
      assert.equal(spam.eventsOf('eom').length, 1)
    })
  })

  it('a spam milter that refuses the client at its (replayed) CONNECT refuses every recipient needing it', async () => {
    await spamScript({ ...SPAM_SCRIPT, reply: { connect: 'reject' } })
    const r = await send([OPTIN, DIR, OTHER])
    // the milter is consulted once per SMTP connection: its refusal of the client must hold for
    // every later recipient that needs it, not let them through unfiltered
    assert.deepEqual(codes(r), [550, 550, 250], JSON.stringify(r.replies.rcpts))
    assert.equal(r.accepted, true)
    const [msg] = await delivered()
    assert.deepEqual(msg!.rcptTo, [OTHER])
    assert.deepEqual(checked(msg!), { base: ['yes'], spam: [], chan: [] })
    assert.equal(spam.eventsOf('connect').length, 1)
  })

  it('opt-in from the directory plugin’s transaction note: {optin} = spam', async () => {
    const r = await send([DIR])
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [msg] = await delivered()
    assert.deepEqual(msg!.rcptTo, [DIR])
    assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
    assertReplayed(spam)
    const rcpt = spam.eventsOf('envrcpt')[0]
    assert.equal(rcpt?.rcpt, `<${DIR}>`)
    assert.equal(rcpt?.macros['{optin}'], 'spam')
    assert.equal(rcpt?.macros['{destination_channel}'], 'local')
    assert.equal(base.eventsOf('envrcpt')[0]?.macros['{optin}'], 'spam')
    assert.match(haraka.log(), /directory: dir-carol@example\.com opted in to spam/)
  })

  it('destination channel rule: chan runs only for tcp_partner recipients (config or note)', async () => {
    // example.com: local channel, chan not contacted
    const r0 = await send([OTHER])
    assert.equal(r0.accepted, true)
    const [m0] = await delivered(1)
    assert.deepEqual(checked(m0!), { base: ['yes'], spam: [], chan: [] })
    assert.deepEqual(traffic(chan), [])

    // example.net -> tcp_partner by [destination_channel]
    const r1 = await send([PARTNER])
    assert.equal(r1.accepted, true, JSON.stringify(r1.replies))
    const [, m1] = await delivered(2)
    assert.deepEqual(m1!.rcptTo, [PARTNER])
    assert.deepEqual(checked(m1!), { base: ['yes'], spam: [], chan: ['yes'] })
    assertReplayed(chan, 1)
    const cr = chan.eventsOf('envrcpt')[0]
    assert.equal(cr?.rcpt, `<${PARTNER}>`)
    assert.equal(cr?.macros['{destination_channel}'], 'tcp_partner')
    assert.equal(cr?.macros['{optin}'], undefined)

    // the directory plugin's note puts an example.com address on tcp_partner
    const r2 = await send([PARTNER_NOTE])
    assert.equal(r2.accepted, true, JSON.stringify(r2.replies))
    const [, , m2] = await delivered(3)
    assert.deepEqual(checked(m2!), { base: ['yes'], spam: [], chan: ['yes'] })
    const cr2 = chan.eventsOf('envrcpt')[1]
    assert.equal(cr2?.rcpt, `<${PARTNER_NOTE}>`)
    assert.equal(cr2?.macros['{destination_channel}'], 'tcp_partner')

    // mixed local + partner: deferred under the default policy
    const r3 = await send([PARTNER, OTHER])
    assert.deepEqual(codes(r3), [250, 452])
    const [, , , m3] = await delivered(4)
    assert.deepEqual(m3!.rcptTo, [PARTNER])
    assert.deepEqual(traffic(spam), [])
  })

  it('DELRCPT/ADDRCPT by the spam milter: the added recipient gets the same, edited message', async () => {
    await spamScript({
      eom: [
        { op: 'addheader', name: 'X-Spam-Checked', value: 'yes' },
        { op: 'delrcpt', rcpt: `<${OPTIN}>` },
        { op: 'addrcpt', rcpt: '<added@example.org>' },
      ],
    })
    const r = await send([OPTIN, DIR])
    assert.deepEqual(codes(r), [250, 250])
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [msg] = await delivered()
    assert.deepEqual([...msg!.rcptTo].sort(), ['added@example.org', DIR].sort())
    assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
    assert.equal(msg!.body.toString(), 'Hello,\r\n')
    // one delivery for everyone
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.equal(sink.messages.length, 1)
    assert.deepEqual(traffic(chan), [])
  })

  describe('mixed recipients, union policy', () => {
    before(async () => {
      await haraka.writeConfig('milter.ini', milterIni(ports, 'union'), { waitForReload: true })
    })

    after(async () => {
      await haraka.writeConfig('milter.ini', milterIni(ports, undefined), { waitForReload: true })
    })

    it('other first, opted-in second: one message to both, spam applied and shown both recipients', async () => {
      const r = await send([OTHER, OPTIN])
      assert.deepEqual(codes(r), [250, 250])
      assert.equal(r.accepted, true)
      const [msg] = await delivered()
      assert.deepEqual(msg!.rcptTo, [OTHER, OPTIN])
      assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
      await new Promise((resolve) => setTimeout(resolve, 300))
      assert.equal(sink.messages.length, 1)

      assertReplayed(spam)
      // the earlier recipient replayed (with its own macros), then the one that brought spam in
      assert.deepEqual(rcptsSeen(spam), [`<${OTHER}>`, `<${OPTIN}>`])
      const [s1, s2] = spam.eventsOf('envrcpt')
      assert.equal(s1?.macros['{rcpt_addr}'], OTHER)
      assert.equal(s1?.macros['{optin}'], undefined)
      assert.equal(s2?.macros['{rcpt_addr}'], OPTIN)
      assert.equal(s2?.macros['{optin}'], 'spam')
      assert.equal(spam.eventsOf('envfrom').length, 1)
      assert.equal(spam.eventsOf('eom').length, 1)
    })

    it('opted-in first, other second: the other recipient is shown to spam too', async () => {
      const r = await send([DIR, OTHER, PARTNER])
      assert.deepEqual(codes(r), [250, 250, 250])
      assert.equal(r.accepted, true)
      const [msg] = await delivered()
      assert.deepEqual(msg!.rcptTo, [DIR, OTHER, PARTNER])
      assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: ['yes'] })
      assert.deepEqual(rcptsSeen(spam), [`<${DIR}>`, `<${OTHER}>`, `<${PARTNER}>`])
      // chan brought in at the third recipient: the two earlier ones replayed
      assert.deepEqual(rcptsSeen(chan), [`<${DIR}>`, `<${OTHER}>`, `<${PARTNER}>`])
      assert.equal(chan.eventsOf('envrcpt')[2]?.macros['{destination_channel}'], 'tcp_partner')
    })

    it('a per-recipient REJECT by the spam milter refuses just that recipient', async () => {
      await spamScript({
        ...SPAM_SCRIPT,
        reply: {
          rcpt: {
            [`<${OPTIN}>`]: { code: '550', xcode: '5.7.1', text: 'not for you' },
            '*': 'continue',
          },
        },
      })
      const r = await send([OTHER, OPTIN, DIR2])
      assert.deepEqual(codes(r), [250, 550, 250])
      assert.equal(r.replies.rcpts[1]?.text, '5.7.1 not for you')
      assert.equal(r.accepted, true)
      const [msg] = await delivered()
      assert.deepEqual(msg!.rcptTo, [OTHER, DIR2])
      assert.deepEqual(checked(msg!), { base: ['yes'], spam: ['yes'], chan: [] })
      assert.equal(spam.eventsOf('eom').length, 1)
      // the refused recipient is not among those the message was filtered for
      const last = spam.eventsOf('envrcpt').map((e) => e.rcpt)
      assert.equal(last[last.length - 1], `<${DIR2}>`)
    })
  })
})
