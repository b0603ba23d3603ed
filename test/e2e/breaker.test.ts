/**
 * The circuit breaker and failure_scope through a real Haraka with a real
 * libmilter filter (pymilter): a milter that is down is dialled only until
 * the breaker opens, the change is logged once, and the milter is used again
 * once it is back; a failure on one message of an SMTP session does not
 * refuse the next one.
 */
import assert from 'node:assert/strict'

import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { SmtpClient, sendMailTo } from '../helpers/smtp-client'

function count(text: string, re: RegExp): number {
  return text.match(new RegExp(re.source, 'g'))?.length ?? 0
}

describe('breaker and failure_scope end to end (real Haraka, real libmilter)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let milterPort: number
  let smtpPort: number
  let milter: StartedMilter | undefined

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    milterPort = await freePort()
    smtpPort = await freePort()
    haraka = await startHaraka({
      listeners: [`127.0.0.1:${smtpPort}`],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `[main]
milters = flaky

[milter.flaky]
socket = inet:${milterPort}@127.0.0.1
default_action = tempfail
connect_timeout = 2
command_timeout = 2
content_timeout = 2
breaker_failures = 2
breaker_backoff = 1
breaker_backoff_max = 1
`,
      },
    })
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
  })

  afterEach(async () => {
    await milter?.stop()
    milter = undefined
    sink.clear()
  })

  function send(): ReturnType<typeof sendMailTo> {
    return sendMailTo('127.0.0.1', smtpPort, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: 'Subject: breaker\r\n\r\nbody\r\n',
    })
  }

  it('a milter that is down: dialled until the breaker opens, logged once, used again when back', async () => {
    const since = haraka.log().length
    for (let i = 0; i < 6; i++) {
      const r = await send()
      assert.equal(r.replies.mail?.code, 451, `message ${i}`)
      assert.equal(r.accepted, false)
    }
    const log = haraka.log().slice(since)
    // two real connect attempts, then refused at once without dialling
    // one ERROR line per failure (the results entry), two real connect attempts
    assert.equal(count(log, /\[ERROR\].*flaky\(\w+:MILTER_ERR_CONNECT\) cannot connect/), 2, log)
    assert.equal(count(log, /flaky: marked down after 2 consecutive connect failure/), 1, log)
    // each refusal names the milter, its endpoint, the stage and the enhanced code
    assert.equal(
      count(log, /flaky \(inet:\d+@127\.0\.0\.1\) tempfail at mail: 451 4\.7\.1 /),
      6,
      log,
    )
    // sessions refused while it is down log nothing at ERROR
    assert.equal(count(log, /\[ERROR\].*(?:MILTER_ERR_UNAVAILABLE|unavailable)/), 0, log)

    milter = await startScriptedMilter(
      { eom: [{ op: 'addheader', name: 'X-Back', value: 'yes' }] },
      { port: milterPort },
    )
    await new Promise((r) => setTimeout(r, 1200)) // the back-off ends; the next session probes
    const r = await send()
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.deepEqual(headerValues(m!, 'X-Back'), ['yes'])
    await haraka.waitForLog(/flaky: inet:\d+@127\.0\.0\.1 is back up/, since)
    assert.equal(count(haraka.log().slice(since), /is back up/), 1)
  })

  it('failure_scope = message: a milter failing one message does not refuse the next on the same connection', async () => {
    // the milter dies while it holds the first message (it sleeps at end of
    // message), and is back for the second
    milter = await startScriptedMilter({ sleepMs: { eom: 1500 } }, { port: milterPort })
    const c = await SmtpClient.connect('127.0.0.1', smtpPort)
    assert.equal(c.greeting.code, 220)
    await c.command('EHLO client.example.org')
    assert.equal((await c.command('MAIL FROM:<alice@example.org>')).code, 250)
    assert.equal((await c.command('RCPT TO:<bob@example.com>')).code, 250)
    assert.equal((await c.command('DATA')).code, 354)
    const pending = c.sendData('Subject: first\r\n\r\nfirst\r\n')
    await new Promise((r) => setTimeout(r, 300))
    await milter.stop() // the milter dies in the middle of the first message
    const first = await pending
    assert.equal(first.code, 451)
    milter = await startScriptedMilter(
      { eom: [{ op: 'addheader', name: 'X-Second', value: 'yes' }] },
      { port: milterPort },
    )
    assert.equal((await c.command('MAIL FROM:<alice@example.org>')).code, 250)
    assert.equal((await c.command('RCPT TO:<bob@example.com>')).code, 250)
    assert.equal((await c.command('DATA')).code, 354)
    const second = await c.sendData('Subject: second\r\n\r\nsecond\r\n')
    assert.equal(second.code, 250)
    await c.command('QUIT')
    const [m] = await sink.waitForMessages(1, 10000)
    assert.deepEqual(headerValues(m!, 'Subject'), ['second'])
    assert.deepEqual(headerValues(m!, 'X-Second'), ['yes'])
    assert.equal(sink.messages.length, 1)
  })
})
