/**
 * Greylisting through Haraka (milter-greylist is not packaged for Debian 12):
 * a libmilter greylisting filter tempfails the first RCPT of an unknown
 * (client, sender, recipient) triplet and accepts it on a retry after the
 * delay, adding X-Greylist.
 */
import assert from 'node:assert/strict'
import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startGreylistMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { sendMailTo } from '../helpers/smtp-client'

const MESSAGE = 'From: alice@example.org\r\nSubject: greylisted\r\n\r\nhello\r\n'

describe('greylisting through Haraka (libmilter greylist filter)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let grey: StartedMilter

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    grey = await startGreylistMilter({ delaySec: 1 })
    haraka = await startHaraka({
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `[main]\nmilters = grey\n\n[milter.grey]\nsocket = ${grey.socket}\n`,
      },
    })
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllMilters()
    await sink?.stop()
  })

  const send = () =>
    sendMailTo('127.0.0.1', haraka.port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: MESSAGE,
    })

  it('tempfails the first attempt, again too early, and accepts the retry after the delay', async () => {
    const first = await send()
    assert.equal(first.replies.rcpts[0]?.code, 451)
    assert.match(first.replies.rcpts[0]?.text ?? '', /^4\.7\.1 Greylisted/)
    assert.equal(first.accepted, false)
    const early = await send()
    assert.equal(early.replies.rcpts[0]?.code, 451)
    await new Promise((r) => setTimeout(r, 1200))
    const retry = await send()
    assert.equal(retry.accepted, true, JSON.stringify(retry.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    assert.deepEqual(m.rcptTo, ['bob@example.com'])
    assert.equal(headerValues(m, 'X-Greylist').length, 1)
    assert.match(headerValues(m, 'X-Greylist')[0] ?? '', /^delayed \d+ seconds$/)
    const decisions = grey.eventsOf('envrcpt').map((e) => e.decision)
    assert.deepEqual(decisions, ['greylisted', 'greylisted', 'passed'])
  })
})
