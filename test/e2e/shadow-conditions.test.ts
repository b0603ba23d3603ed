/**
 * End to end: `mode = shadow` and the skip_* conditions, with a real Haraka
 * receiving real SMTP (AUTH PLAIN through Haraka's auth/flat_file), real
 * libmilter filters (pymilter) and delivery to a receiving server.
 *
 * The conditions are tried against a filter that rejects every message at
 * end of data: a message that gets through was not shown to it, and the
 * same message without the condition is rejected, so each test shows both
 * sides. Haraka's results are read by a small probe plugin that logs them
 * at the queue hook.
 */
import assert from 'node:assert/strict'

import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type MilterScript,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { SmtpClient, sendMailTo, type SendMailResult } from '../helpers/smtp-client'

/** Logs the milter plugin's connection and transaction results when a message is queued. */
const PROBE = `
exports.register = function () {
  this.register_hook('queue', 'probe', -50)
  this.register_hook('queue_outbound', 'probe', -50)
}
exports.probe = function (next, connection) {
  const t = connection.transaction
  const skips = [
    ...((connection.results.get('milter') || {}).skip || []),
    ...((t && t.results.get('milter') || {}).skip || []),
  ]
  connection.loginfo(this, 'PROBE skips=' + JSON.stringify(skips))
  next()
}
`

/** Every condition on its own listener, all against the same rejecting filter. */
const CONDITIONS = {
  priv: 'skip_private_clients = true',
  nets: 'skip_clients = 192.0.2.0/24, 127.0.0.0/8',
  auth: 'skip_authenticated = true',
  relay: 'skip_relaying = true',
  sender: 'skip_sender_domains = .lists.example.org',
  rcpt: 'skip_recipient_domains = example.net',
  size: 'skip_larger_than = 1K',
} as const
type Condition = keyof typeof CONDITIONS

const MESSAGE = 'From: alice@example.org\r\nSubject: conditions\r\n\r\nshort body\r\n'

describe('shadow mode and skip_* conditions end to end (real Haraka, real libmilter)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let guardPort: number
  let shadowPort: number
  let downPort: number
  const port: Partial<Record<Condition | 'shadow', number>> = {}
  let guard: StartedMilter | undefined
  let shadow: StartedMilter | undefined

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    guardPort = await freePort()
    shadowPort = await freePort()
    downPort = await freePort() // nothing listens: the shadow milter that is down
    const sections: string[] = []
    for (const name of [...Object.keys(CONDITIONS), 'shadow'] as Array<Condition | 'shadow'>)
      port[name] = await freePort()
    for (const [name, line] of Object.entries(CONDITIONS)) {
      sections.push(
        `[milter.${name}]\nsocket = inet:${guardPort}@127.0.0.1\n${line}\n`,
        `[listener.${name}]\nlisten = 127.0.0.1:${port[name as Condition]}\nmilters = ${name}\n`,
      )
    }
    const ini = `
[main]
milters = ${Object.keys(CONDITIONS).join(' ')} watch watchdown
default_action = tempfail
connect_timeout = 3
command_timeout = 5
content_timeout = 10

[milter.watch]
socket = inet:${shadowPort}@127.0.0.1
mode = shadow

[milter.watchdown]
socket = inet:${downPort}@127.0.0.1
mode = shadow
default_action = reject

[listener.shadow]
listen = 127.0.0.1:${port.shadow}
milters = watch watchdown

${sections.join('\n')}
`
    haraka = await startHaraka({
      listeners: Object.values(port).map((p) => `127.0.0.1:${p}`),
      plugins: ['auth/flat_file', 'milter', 'rcpt_to.in_host_list', 'probe', 'queue/smtp_forward'],
      pluginFiles: { probe: PROBE },
      sinkPort: sink.port,
      config: {
        'milter.ini': ini,
        'auth_flat_file.ini': '[core]\nmethods=PLAIN\n\n[users]\nmatt=secret\n',
        'smtp_forward.ini': `[main]\nhost=127.0.0.1\nport=${sink.port}\nenable_tls=false\nenable_outbound=true\n`,
      },
    })
  })

  beforeEach(async () => {
    guard = await startScriptedMilter({ reply: { eom: 'reject' } }, { port: guardPort })
  })

  afterEach(async () => {
    await guard?.stop()
    await shadow?.stop()
    guard = undefined
    shadow = undefined
    sink.clear()
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
  })

  function send(
    listener: Condition | 'shadow',
    over: { from?: string; rcpts?: string[]; data?: string; mailParams?: string } = {},
  ): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', port[listener] ?? 0, {
      helo: 'client.example.org',
      from: over.from ?? 'alice@example.org',
      rcpts: over.rcpts ?? ['bob@example.com'],
      data: over.data ?? MESSAGE,
      ...(over.mailParams ? { mailParams: over.mailParams } : {}),
    })
  }

  /** One message with AUTH PLAIN as matt (auth/flat_file: loopback needs no TLS). */
  async function sendAuthenticated(listener: Condition): Promise<SendMailResult> {
    const c = await SmtpClient.connect('127.0.0.1', port[listener] ?? 0)
    try {
      assert.equal((await c.command('EHLO client.example.org')).code, 250)
      const token = Buffer.from('\0matt\0secret').toString('base64')
      assert.equal((await c.command(`AUTH PLAIN ${token}`)).code, 235)
      return await c.sendMail({
        from: 'matt@example.org',
        rcpts: ['bob@example.com'],
        data: MESSAGE,
      })
    } finally {
      await c.close()
    }
  }

  /** Waits for the probe line of the next queued message and returns its skips. */
  async function probed(since: number): Promise<string[]> {
    const m = await haraka.waitForLog(/PROBE skips=(\[.*\])$/m, 10000, since)
    return JSON.parse(m[1] ?? '[]') as string[]
  }

  /** The message was refused by the guard, which therefore applies without the condition. */
  async function assertGuarded(r: Promise<SendMailResult>): Promise<void> {
    const res = await r
    assert.equal(res.accepted, false)
    assert.equal(res.last?.code, 554)
  }

  it('skip_private_clients: a loopback client never reaches the milter; the skip is in the results and the log', async () => {
    const since = haraka.log().length
    const r = await send('priv')
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(await probed(since), ['priv: private client 127.0.0.1'])
    await haraka.waitForLog(
      /\[milter\] priv \(inet:\d+@127\.0\.0\.1\): stages -; verdict skipped \(private client 127\.0\.0\.1\)@connect/,
      10000,
      since,
    )
    assert.equal(guard?.eventsOf('connect').length, 0, 'never contacted')
    assert.equal((await sink.waitForMessages(1, 10000)).length, 1)
  })

  it('skip_clients: every message of the connection gets its line, not only the first', async () => {
    const since = haraka.log().length
    const c = await SmtpClient.connect('127.0.0.1', port.nets ?? 0)
    try {
      for (const helo of ['client.example.org', undefined]) {
        const r = await c.sendMail({
          ...(helo ? { helo } : {}),
          from: 'alice@example.org',
          rcpts: ['bob@example.com'],
          data: MESSAGE,
        })
        assert.equal(r.accepted, true, JSON.stringify(r.replies))
      }
      await c.quit()
    } finally {
      await c.close()
    }
    await sink.waitForMessages(2, 10000)
    const line = String.raw`\[milter\] nets \(inet:\d+@127\.0\.0\.1\): stages -; verdict skipped \(client 127\.0\.0\.1 in 127\.0\.0\.0\/8\)@connect; edits none; waited 0 ms$`
    // one line per message: two
    await haraka.waitForLog(new RegExp(`${line}[\\s\\S]*${line}`, 'm'), 10000, since)
  })

  it('skip_clients: a listed network', async () => {
    const since = haraka.log().length
    assert.equal((await send('nets')).accepted, true)
    assert.deepEqual(await probed(since), ['nets: client 127.0.0.1 in 127.0.0.0/8'])
    assert.equal(guard?.eventsOf('connect').length, 0)
  })

  it('skip_authenticated: an AUTH session skips it, the same message without AUTH does not', async () => {
    const since = haraka.log().length
    const r = await sendAuthenticated('auth')
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(await probed(since), ['auth: authenticated'])
    assert.equal(guard?.eventsOf('connect').length, 0, 'not contacted: it waits for MAIL')
    await sink.waitForMessages(1, 10000)
    await assertGuarded(send('auth'))
  })

  it('skip_relaying: an authenticated session relays and skips it', async () => {
    const since = haraka.log().length
    assert.equal((await sendAuthenticated('relay')).accepted, true)
    assert.deepEqual(await probed(since), ['relay: relaying'])
    await assertGuarded(send('relay'))
  })

  it('skip_sender_domains: a subdomain under a leading dot', async () => {
    const since = haraka.log().length
    assert.equal((await send('sender', { from: 'news@a.lists.example.org' })).accepted, true)
    assert.deepEqual(await probed(since), ['sender: sender domain a.lists.example.org'])
    await assertGuarded(send('sender', { from: 'news@lists.example.org' }))
  })

  it('skip_recipient_domains: a recipient there is not shown to the milter; another one is', async () => {
    const since = haraka.log().length
    assert.equal((await send('rcpt', { rcpts: ['carol@example.net'] })).accepted, true)
    assert.deepEqual(await probed(since), ['rcpt: recipient domain example.net'])
    assert.equal(guard?.eventsOf('connect').length, 0)
    await assertGuarded(send('rcpt', { rcpts: ['bob@example.com'] }))
  })

  it('skip_recipient_domains, a recipient deferred (452): the delivered message’s line names that recipient, as deferred', async () => {
    const since = haraka.log().length
    const r = await send('rcpt', { rcpts: ['carol@example.net', 'bob@example.com'] })
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(
      r.replies.rcpts.map((x) => x.code),
      [250, 452],
    )
    const [m] = await sink.waitForMessages(1, 10000)
    assert.deepEqual(m?.rcptTo, ['carol@example.net'])
    const [line] = await haraka.waitForLog(
      /\[milter\] rcpt \(inet:\d+@127\.0\.0\.1\): stages -; verdict skipped \(recipient domain example\.net\)@rcpt; edits none; waited 0 ms; recipient <bob@example\.com> deferred: 452 4\.5\.3 Recipient needs different filtering - send it in a separate transaction$/m,
      10000,
      since,
    )
    assert.doesNotMatch(line, /reply|message (refused|deferred)/)
  })

  it('skip_larger_than: by the SIZE= declared at MAIL, else by the size received', async () => {
    const big = `${MESSAGE}${'x'.repeat(70)}\r\n`.repeat(30)
    let since = haraka.log().length
    assert.equal((await send('size', { mailParams: 'SIZE=5000' })).accepted, true)
    assert.deepEqual(await probed(since), ['size: declared size 5000 > 1024'])
    since = haraka.log().length
    const r = await send('size', { data: big })
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [skip] = await probed(since)
    assert.match(skip ?? '', /^size: received size \d+ > 1024$/)
    assert.equal(guard?.eventsOf('eom').length, 0, 'it saw the envelope, never the content')
    assert.ok((guard?.eventsOf('envfrom').length ?? 0) > 0)
    await assertGuarded(send('size'))
  })

  describe('with mixed_recipients = union', () => {
    let union: RunningHaraka
    let unionPort: number

    before(async () => {
      unionPort = await freePort()
      union = await startHaraka({
        listeners: [`127.0.0.1:${unionPort}`],
        plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
        sinkPort: sink.port,
        config: {
          'milter.ini': `[main]\nmilters = rcpt\nmixed_recipients = union\n\n[milter.rcpt]\nsocket = inet:${guardPort}@127.0.0.1\n${CONDITIONS.rcpt}\n`,
        },
      })
    })

    it('a recipient in skip_recipient_domains shown to the milter is logged as shown, not as skipped', async () => {
      const r = await sendMailTo('127.0.0.1', unionPort, {
        helo: 'client.example.org',
        from: 'alice@example.org',
        rcpts: ['carol@example.net', 'bob@example.com'],
        data: MESSAGE,
      })
      assert.deepEqual(
        r.replies.rcpts.map((x) => x.code),
        [250, 250],
      )
      assert.equal(r.last?.code, 554, 'the milter had the message, and refused it')
      assert.deepEqual(
        guard?.eventsOf('envrcpt').map((e) => e.rcpt),
        ['<carol@example.net>', '<bob@example.com>'],
      )
      await union.waitForLog(
        /\[INFO\].*\[milter\] rcpt rcpt: <carol@example\.net> shown although skip_recipient_domains lists it \(recipient domain example\.net\): with mixed_recipients = union/,
        10000,
      )
      const [line] = await union.waitForLog(
        /\[milter\] rcpt \(inet:\d+@127\.0\.0\.1\): stages [a-z,]+; verdict reject@eom; edits none; waited \d+ ms; message refused at eom: 554 5\.7\.1 .*$/m,
        10000,
      )
      assert.doesNotMatch(line, /skipped/)
    })
  })

  it('shadow: delivered unmodified to every recipient while the log shows what the milter wanted', async () => {
    const script: MilterScript = {
      reply: { rcpt: { '<carol@example.net>': 'reject', '*': 'continue' }, eom: 'reject' },
      eom: [{ op: 'addheader', name: 'X-Shadow', value: 'would add' }],
    }
    shadow = await startScriptedMilter(script, { port: shadowPort })
    const since = haraka.log().length
    const r = await send('shadow', { rcpts: ['bob@example.com', 'carol@example.net'] })
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(
      r.replies.rcpts.map((x) => x.code),
      [250, 250],
    )
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    assert.deepEqual(m.rcptTo, ['bob@example.com', 'carol@example.net'])
    assert.deepEqual(headerValues(m, 'X-Shadow'), [])
    assert.equal(m.body.toString(), 'short body\r\n')
    // the milter had everything: both recipients and the message
    assert.equal(shadow.eventsOf('envrcpt').length, 2)
    assert.equal(shadow.eventsOf('eom')[0]?.body, 'short body\r\n')
    await haraka.waitForLog(
      /\[INFO\].*\[milter\] watch rcpt: shadow: would reject with 550 5\.7\.1/,
      10000,
      since,
    )
    await haraka.waitForLog(
      /\[INFO\].*\[milter\] watch eom: shadow: would reject with 554 5\.7\.1/,
      10000,
      since,
    )
    await haraka.waitForLog(
      /\[INFO\].*\[milter\] watch \[shadow\] \(inet:\d+@127\.0\.0\.1\): stages connect,helo,mail,rcpt,data,eom; verdict reject@rcpt, reject@eom/,
      10000,
      since,
    )
    // the shadow milter that is down: a warning, default_action=reject not applied
    await haraka.waitForLog(/\[WARN\].*watchdown.*shadow: not enforced/, 10000, since)
    const errors = haraka
      .log()
      .slice(since)
      .split('\n')
      .filter((l) => /\[ERROR\].*\[milter\]/.test(l))
    assert.deepEqual(errors, [])
  })
})
