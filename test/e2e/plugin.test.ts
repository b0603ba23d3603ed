/**
 * End to end: a real Haraka with the plugin, real SMTP sent to it, delivery
 * through queue/smtp_forward to a receiving SMTP server, and real libmilter
 * filters (pymilter) that perform every verdict and edit. One Haraka runs
 * for the suite; each test restarts the filters on the same ports with its
 * own script.
 */
import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type MilterScript,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { SmtpClient, sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const MESSAGE = [
  'From: Alice <alice@example.org>',
  'To: bob@example.com',
  'Subject: end to end',
  'Message-Id: <e2e-1@example.org>',
  'X-Del: remove me',
  'X-Dup: one',
  'X-Dup: two',
  '',
  'Hello Bob,',
  '.leading dot line',
  '',
].join('\r\n')

interface Ports {
  milterOne: number
  milterTwo: number
  a: number
  b: number
  c: number
  /** A listener section that sets only source_channel (no `milters` key). */
  d: number
}

function milterIni(p: Ports, quarantineDir: string, extraMain = ''): string {
  return `
[main]
milters = one, two
default_action = tempfail
connect_timeout = 3
command_timeout = 2
content_timeout = 5
${extraMain}

[quarantine]
dir = ${quarantineDir}

[milter.one]
socket = inet:${p.milterOne}@127.0.0.1

[milter.two]
socket = inet:${p.milterTwo}@127.0.0.1

[listener.a]
listen = 127.0.0.1:${p.a}
milters = one
source_channel = chan_a

[listener.b]
listen = 127.0.0.1:${p.b}
milters = one, two
source_channel = chan_b

[listener.c]
listen = 127.0.0.1:${p.c}
milters = two
source_channel = chan_c

[listener.d]
listen = 127.0.0.1:${p.d}
source_channel = chan_d
`
}

describe('plugin end to end (real Haraka, real libmilter, real SMTP delivery)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let ports: Ports
  let quarantineDir: string
  let one: StartedMilter | undefined
  let two: StartedMilter | undefined

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    quarantineDir = await mkdtemp(path.join(os.tmpdir(), 'milter-quarantine-'))
    ports = {
      milterOne: await freePort(),
      milterTwo: await freePort(),
      a: await freePort(),
      b: await freePort(),
      c: await freePort(),
      d: await freePort(),
    }
    haraka = await startHaraka({
      listeners: [
        `127.0.0.1:${ports.a}`,
        `127.0.0.1:${ports.b}`,
        `127.0.0.1:${ports.c}`,
        `127.0.0.1:${ports.d}`,
      ],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: { 'milter.ini': milterIni(ports, quarantineDir) },
    })
  })

  afterEach(async () => {
    await one?.stop()
    await two?.stop()
    one = undefined
    two = undefined
    sink.clear()
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
    if (quarantineDir) await rm(quarantineDir, { recursive: true, force: true })
  })

  async function milterOne(script: MilterScript): Promise<StartedMilter> {
    one = await startScriptedMilter(script, { port: ports.milterOne })
    return one
  }

  async function milterTwo(script: MilterScript): Promise<StartedMilter> {
    two = await startScriptedMilter(script, { port: ports.milterTwo })
    return two
  }

  function send(
    port: number,
    rcpts = ['bob@example.com'],
    data = MESSAGE,
  ): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts,
      data,
      mailParams: 'SIZE=400 BODY=8BITMIME',
    })
  }

  async function delivered(): Promise<SinkMessage> {
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    return m
  }

  function headerNames(m: SinkMessage): string[] {
    return m.headers.map(([n]) => n)
  }

  /** Proves nothing was delivered: a message sent afterwards is the first to arrive. */
  async function assertNothingDelivered(): Promise<void> {
    await one?.stop()
    await milterOne({})
    const r = await send(ports.a, ['bob@example.com'], 'Subject: marker\r\n\r\nmarker\r\n')
    assert.equal(r.accepted, true)
    const m = await delivered()
    assert.deepEqual(headerValues(m, 'Subject'), ['marker'])
    assert.equal(sink.messages.length, 1)
  }

  it('passes mail through unchanged, hiding Haraka’s Received header and sending the macros', async () => {
    const m1 = await milterOne({})
    const r = await send(ports.a)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const msg = await delivered()
    assert.equal(msg.mailFrom, 'alice@example.org')
    assert.deepEqual(msg.rcptTo, ['bob@example.com'])
    assert.equal(msg.body.toString(), 'Hello Bob,\r\n.leading dot line\r\n')
    assert.equal(headerNames(msg)[0], 'Received')
    const headers = m1.eventsOf('header')
    assert.deepEqual(
      headers.map((h) => h.name),
      ['From', 'To', 'Subject', 'Message-Id', 'X-Del', 'X-Dup', 'X-Dup'],
    )
    assert.equal(headers[2]?.value, 'end to end')
    const conn = m1.eventsOf('connect')[0]
    assert.ok(conn)
    assert.equal(conn.macros['{client_addr}'], '127.0.0.1')
    assert.equal(conn.macros['{source_channel}'], 'chan_a')
    assert.equal(conn.macros['{daemon_addr}'], '127.0.0.1')
    assert.equal(conn.macros['j'], 'haraka.test')
    const from = m1.eventsOf('envfrom')[0]
    assert.deepEqual(from?.args, ['<alice@example.org>', 'SIZE=400', 'BODY=8BITMIME'])
    assert.equal(from?.macros['{mail_addr}'], 'alice@example.org')
    assert.match(from?.macros['i'] ?? '', /^[0-9A-F-]{36}\.1$/)
    const rcpt = m1.eventsOf('envrcpt')[0]
    assert.equal(rcpt?.macros['{rcpt_addr}'], 'bob@example.com')
    assert.equal(rcpt?.macros['{destination_channel}'], 'local')
    const eom = m1.eventsOf('eom')[0]
    assert.equal(eom?.body, 'Hello Bob,\r\n.leading dot line\r\n')
    assert.equal(eom?.macros['{msg_id}'], '<e2e-1@example.org>')
  })

  it('rejects at CONNECT with the milter’s reply', async () => {
    await milterOne({ reply: { connect: 'reject' } })
    const c = await SmtpClient.connect('127.0.0.1', ports.a)
    assert.equal(c.greeting.code, 554)
    await c.close()
    assert.equal(sink.messages.length, 0)
  })

  it('tempfails at HELO: HELO gets 250 (451 is not a HELO reply), MAIL gets the 451', async () => {
    await milterOne({ reply: { helo: 'tempfail' } })
    const r = await send(ports.a)
    assert.equal(r.replies.helo?.code, 250)
    assert.equal(r.replies.mail?.code, 451)
    assert.equal(r.replies.mail?.enhanced, '4.7.1')
    assert.equal(r.accepted, false)
  })

  it('rejects at HELO with 550, and a second HELO cannot get past it', async () => {
    await milterOne({ reply: { helo: 'reject' } })
    const c = await SmtpClient.connect('127.0.0.1', ports.a)
    assert.equal(c.greeting.code, 220)
    assert.equal((await c.command('EHLO client.example.org')).code, 550)
    assert.equal((await c.command('EHLO client.example.org')).code, 550)
    assert.equal((await c.command('MAIL FROM:<alice@example.org>')).code, 503)
    await c.close()
  })

  it('logs one INFO line per milter per message: stages, verdict, edits, time waited, the reply when not 250', async () => {
    await milterOne({ eom: [{ op: 'addheader', name: 'X-Logged', value: 'yes' }] })
    const since = haraka.log().length
    assert.equal((await send(ports.a)).accepted, true)
    await haraka.waitForLog(
      /\[INFO\].*\[milter\] one \(inet:\d+@127\.0\.0\.1\): stages connect,helo,mail,rcpt,data,eom; verdict (?:continue|accept@eom); edits addheader=1; waited \d+ ms$/m,
      10000,
      since,
    )
    await one?.stop()
    await milterOne({ reply: { eom: 'reject' } })
    const before = haraka.log().length
    assert.equal((await send(ports.a)).accepted, false)
    await haraka.waitForLog(
      /\[milter\] one \(inet:\d+@127\.0\.0\.1\): stages .*eom; verdict reject@eom; edits none; waited \d+ ms; message refused at eom: 554 5\.7\.1 Message rejected$/m,
      10000,
      before,
    )
  })

  it('rejects MAIL with a multi-line reply code, every line kept', async () => {
    await milterOne({
      reply: { mail: { code: '550', xcode: '5.7.1', lines: ['first line', 'second line'] } },
    })
    const since = haraka.log().length
    const r = await send(ports.a)
    assert.equal(r.replies.mail?.code, 550)
    assert.deepEqual(r.replies.mail?.lines, ['5.7.1 first line', '5.7.1 second line'])
    assert.equal(r.accepted, false)
    // Haraka's own notice formats the hook message as a string: the reply, not [object Object]
    await haraka.waitForLog(
      /sender <alice@example\.org> code=DENY msg="550-5\.7\.1 first line \/ 550 5\.7\.1 second line"/,
      5000,
      since,
    )
    assert.doesNotMatch(haraka.log().slice(since), /\[object Object\]/)
  })

  it('refuses one recipient only at RCPT; the message goes to the others', async () => {
    const m1 = await milterOne({
      reply: {
        rcpt: {
          '<nobody@example.com>': { code: '550', xcode: '5.1.1', text: 'no such user' },
          '*': 'continue',
        },
      },
    })
    const r = await send(ports.a, ['bob@example.com', 'nobody@example.com', 'carol@example.net'])
    assert.deepEqual(
      r.replies.rcpts.map((x) => x.code),
      [250, 550, 250],
    )
    assert.equal(r.replies.rcpts[1]?.text, '5.1.1 no such user')
    assert.equal(r.accepted, true)
    const msg = await delivered()
    assert.deepEqual(msg.rcptTo, ['bob@example.com', 'carol@example.net'])
    assert.equal(m1.eventsOf('eom').length, 1)
  })

  it('tempfails a recipient with TEMPFAIL at RCPT', async () => {
    await milterOne({ reply: { rcpt: { '<later@example.com>': 'tempfail', '*': 'continue' } } })
    const r = await send(ports.a, ['later@example.com', 'bob@example.com'])
    assert.deepEqual(
      r.replies.rcpts.map((x) => x.code),
      [451, 250],
    )
    assert.equal(r.accepted, true)
    assert.deepEqual((await delivered()).rcptTo, ['bob@example.com'])
  })

  it('tempfails DATA', async () => {
    await milterOne({ reply: { data: 'tempfail' } })
    const r = await send(ports.a)
    assert.equal(r.replies.data?.code, 451)
    assert.equal(r.accepted, false)
  })

  it('rejects the message at end of message with the milter’s code and text', async () => {
    await milterOne({ reply: { eom: { code: '554', xcode: '5.7.1', text: 'spam detected' } } })
    const r = await send(ports.a)
    assert.equal(r.replies.message?.code, 554)
    assert.equal(r.replies.message?.text, '5.7.1 spam detected')
    await assertNothingDelivered()
  })

  it('tempfails the message at end of message (plain t)', async () => {
    await milterOne({ reply: { eom: 'tempfail' } })
    const r = await send(ports.a)
    assert.equal(r.replies.message?.code, 451)
    assert.equal(r.replies.message?.enhanced, '4.7.1')
    await assertNothingDelivered()
  })

  it('rejects in the content phase (HEADER, EOH, BODY)', async () => {
    for (const stage of ['header', 'eoh', 'body'] as const) {
      const m = await milterOne({ reply: { [stage]: 'reject' } })
      const r = await send(ports.a)
      assert.equal(r.replies.message?.code, 554, stage)
      assert.equal(m.eventsOf('eom').length, 0, stage)
      await m.stop()
    }
    await assertNothingDelivered()
  })

  it('DISCARD: answers 250 and delivers nothing', async () => {
    await milterOne({ reply: { eom: 'discard' } })
    const r = await send(ports.a)
    assert.equal(r.replies.message?.code, 250)
    await assertNothingDelivered()
  })

  it('DISCARD at RCPT discards the whole message', async () => {
    const m = await milterOne({ reply: { rcpt: 'discard' } })
    const r = await send(ports.a)
    assert.equal(r.replies.message?.code, 250)
    assert.equal(m.eventsOf('eom').length, 0)
    await assertNothingDelivered()
  })

  it('ACCEPT at MAIL: the milter is not consulted again for the message, which is delivered', async () => {
    const m = await milterOne({
      reply: { mail: 'accept' },
      eom: [{ op: 'addheader', name: 'X-Never', value: 'x' }],
    })
    const r = await send(ports.a)
    assert.equal(r.accepted, true)
    const msg = await delivered()
    assert.deepEqual(headerValues(msg, 'X-Never'), [])
    assert.equal(m.eventsOf('envrcpt').length, 0)
    assert.equal(m.eventsOf('header').length, 0)
  })

  it('QUARANTINE: holds a copy with the reason and does not deliver', async () => {
    await milterOne({ eom: [{ op: 'quarantine', reason: 'suspicious attachment' }] })
    const r = await send(ports.a)
    assert.equal(r.replies.message?.code, 250)
    const days = readdirSync(quarantineDir)
    assert.equal(days.length, 1)
    const files = readdirSync(path.join(quarantineDir, days[0] as string)).sort()
    assert.equal(files.length, 2, files.join(' '))
    const [eml, json] = files.map((f) => path.join(quarantineDir, days[0] as string, f))
    const held = readFileSync(eml as string, 'utf8')
    assert.match(held, /^Received: /)
    assert.match(held, /Subject: end to end/)
    assert.equal(
      JSON.parse(readFileSync(json as string, 'utf8')).reason,
      'one: suspicious attachment',
    )
    await rm(path.join(quarantineDir, days[0] as string), { recursive: true })
    await assertNothingDelivered()
  })

  it('applies every edit in order: headers, envelope and a body larger than 64 KiB', async () => {
    const line = 'replaced body line with some text to make it long enough.\r\n'
    await milterOne({
      eom: [
        { op: 'addheader', name: 'X-Added', value: 'added value' },
        { op: 'insheader', index: 0, name: 'X-Top', value: 'top' },
        { op: 'insheader', index: 2, name: 'X-Second', value: 'below received' },
        { op: 'chgheader', name: 'Subject', index: 1, value: 'changed subject' },
        { op: 'chgheader', name: 'X-Del', index: 1, value: '' },
        { op: 'chgheader', name: 'X-Dup', index: 2, value: 'second changed' },
        { op: 'addheader', name: 'X-Folded', value: 'line one\n\tline two\r\nInjected: evil' },
        { op: 'addrcpt', rcpt: '<added@example.net>' },
        { op: 'addrcpt_par', rcpt: '<param@example.net>', params: 'NOTIFY=NEVER' },
        { op: 'delrcpt', rcpt: '<bob@example.com>' },
        { op: 'chgfrom', sender: '<bounce@example.org>', params: 'RET=HDRS' },
        { op: 'replacebody', repeat: { text: line, times: 2000 } },
      ],
    })
    const r = await send(ports.a)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const msg = await delivered()
    assert.equal(msg.mailFrom, 'bounce@example.org')
    assert.deepEqual(msg.rcptTo, ['added@example.net', 'param@example.net'])
    assert.deepEqual(headerNames(msg), [
      'X-Top',
      'Received',
      'X-Second',
      'From',
      'To',
      'Subject',
      'Message-Id',
      'X-Dup',
      'X-Dup',
      'X-Added',
      'X-Folded',
    ])
    assert.deepEqual(headerValues(msg, 'Subject'), ['changed subject'])
    assert.deepEqual(headerValues(msg, 'X-Dup'), ['one', 'second changed'])
    assert.deepEqual(headerValues(msg, 'X-Folded'), ['line one line two Injected: evil'])
    assert.deepEqual(headerValues(msg, 'Injected'), [])
    assert.equal(msg.body.length, line.length * 2000)
    assert.equal(msg.body.toString(), line.repeat(2000))
  })

  it('closes the SMTP session with 421 on SMFIR_REPLYCODE 421', async () => {
    await milterOne({ reply: { mail: { code: '421', xcode: '4.7.0', text: 'going away' } } })
    const c = await SmtpClient.connect('127.0.0.1', ports.a)
    await c.command('EHLO client.example.org')
    const r = await c.command('MAIL FROM:<alice@example.org>')
    assert.equal(r.code, 421)
    assert.equal(r.text, '4.7.0 going away')
    await c.closed
  })

  it('applies default_action=tempfail when the milter times out, and logs it', async () => {
    await milterOne({ sleepMs: { rcpt: 3000 } })
    const r = await send(ports.a)
    assert.equal(r.replies.rcpts[0]?.code, 451)
    assert.match(
      haraka.log(),
      // milter, stage, code, message and the endpoint it was waiting for
      /\[ERROR\].*one\(rcpt:MILTER_ERR_TIMEOUT\) milter command timeout after 2000 ms.*; endpoint=inet:\d+@127\.0\.0\.1; default_action=tempfail$/m,
    )
  })

  it('applies default_action=tempfail when the milter is not listening: 220 greeting, 451 at MAIL', async () => {
    const c = await SmtpClient.connect('127.0.0.1', ports.a)
    // RFC 5321 4.3.2: a greeting is 220, 421 or 554 only
    assert.equal(c.greeting.code, 220)
    assert.equal((await c.command('EHLO client.example.org')).code, 250)
    const mail = await c.command('MAIL FROM:<alice@example.org>')
    assert.equal(mail.code, 451)
    assert.match(mail.lines.join(' '), /4\.7\.1/)
    await c.close()
    assert.match(
      haraka.log(),
      /\[ERROR\].*one\(connect:MILTER_ERR_CONNECT\) cannot connect to milter at inet:\d+@127\.0\.0\.1/,
    )
  })

  it('chains milters: the second sees the first milter’s edit (Postfix semantics)', async () => {
    await milterOne({ eom: [{ op: 'addheader', name: 'X-First', value: 'from one' }] })
    const m2 = await milterTwo({ eom: [{ op: 'addheader', name: 'X-Second', value: 'from two' }] })
    const r = await send(ports.b)
    assert.equal(r.accepted, true)
    const msg = await delivered()
    assert.deepEqual(headerValues(msg, 'X-First'), ['from one'])
    assert.deepEqual(headerValues(msg, 'X-Second'), ['from two'])
    const seen = m2.eventsOf('header').map((h) => h.name)
    assert.equal(seen[seen.length - 1], 'X-First')
    assert.equal(m2.eventsOf('connect')[0]?.macros['{source_channel}'], 'chan_b')
  })

  it('chains milters: a reject by the first means the second never sees the message', async () => {
    await milterOne({ reply: { eom: 'reject' } })
    const m2 = await milterTwo({})
    const r = await send(ports.b)
    assert.equal(r.replies.message?.code, 554)
    assert.equal(m2.eventsOf('header').length, 0)
  })

  it('selects milters per listener', async () => {
    const m1 = await milterOne({})
    const m2 = await milterTwo({ eom: [{ op: 'addheader', name: 'X-Two', value: 'yes' }] })
    const r = await send(ports.c)
    assert.equal(r.accepted, true)
    const msg = await delivered()
    assert.deepEqual(headerValues(msg, 'X-Two'), ['yes'])
    assert.equal(m1.eventsOf('connect').length, 0)
    assert.equal(m2.eventsOf('connect')[0]?.macros['{source_channel}'], 'chan_c')
  })

  it('a listener section without `milters` runs [main]’s milters, never passes mail unfiltered', async () => {
    const m1 = await milterOne({ reply: { eom: 'reject' } })
    const m2 = await milterTwo({})
    const r = await send(ports.d)
    assert.equal(r.accepted, false, 'the [main] milter refused it')
    assert.equal(r.replies.message?.code, 554)
    assert.equal(m1.eventsOf('connect')[0]?.macros['{source_channel}'], 'chan_d')
    assert.equal(m2.eventsOf('connect')[0]?.macros['{source_channel}'], 'chan_d')
    assert.equal(m2.eventsOf('header').length, 0, 'two comes after one’s refusal')
    assert.equal(sink.messages.length, 0)
    assert.match(
      haraka.log(),
      /listener d \(127\.0\.0\.1:\d+\): milters one, two \(inherited from \[main\]\); source_channel chan_d/,
    )
  })

  it('sends ABORT on RSET and reuses the milter connection for the next message', async () => {
    const m1 = await milterOne({})
    const c = await SmtpClient.connect('127.0.0.1', ports.a)
    await c.command('EHLO client.example.org')
    await c.command('MAIL FROM:<alice@example.org>')
    await c.command('RCPT TO:<bob@example.com>')
    assert.equal((await c.command('RSET')).code, 250)
    const r = await c.sendMail({
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: MESSAGE,
    })
    assert.equal(r.accepted, true)
    await c.quit()
    await delivered()
    await m1.waitForEvent((e) => e.event === 'close')
    assert.equal(m1.eventsOf('connect').length, 1)
    assert.equal(m1.eventsOf('envfrom').length, 2)
    assert.ok(m1.eventsOf('abort').length >= 1)
  })

  it('reloads milter.ini without a restart: reply_code = enhanced_only', async () => {
    await haraka.writeConfig(
      'milter.ini',
      milterIni(ports, quarantineDir, 'reply_code = enhanced_only'),
      {
        waitForReload: true,
      },
    )
    try {
      await milterOne({ reply: { mail: { code: '553', xcode: '5.7.1', text: 'sender refused' } } })
      const r = await send(ports.a)
      assert.equal(r.replies.mail?.code, 550)
      assert.equal(r.replies.mail?.text, '5.7.1 sender refused')
    } finally {
      await haraka.writeConfig('milter.ini', milterIni(ports, quarantineDir), {
        waitForReload: true,
      })
    }
  })

  it('keeps the previous configuration when milter.ini becomes invalid, naming section and key', async () => {
    const bad = milterIni(ports, quarantineDir).replace(
      `socket = inet:${ports.milterOne}@127.0.0.1`,
      'socket = tcp://nowhere',
    )
    await haraka.writeConfig('milter.ini', bad, { waitForReload: true })
    try {
      assert.match(
        haraka.log(),
        /milter\.ini \[milter\.one\] socket: unrecognised milter socket "tcp:\/\/nowhere"/,
      )
      await milterOne({})
      assert.equal((await send(ports.a)).accepted, true)
      await delivered()
    } finally {
      await haraka.writeConfig('milter.ini', milterIni(ports, quarantineDir), {
        waitForReload: true,
      })
    }
  })

  it('spools nothing in the quarantine dir for normal mail', () => {
    assert.equal(existsSync(quarantineDir) ? readdirSync(quarantineDir).length : 0, 0)
  })
})
