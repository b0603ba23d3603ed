/**
 * End to end, the outcomes of edits that cannot be delivered as asked: a
 * real Haraka with the plugin, a real libmilter filter (pymilter,
 * scripted.py), delivery through smtp_forward to a receiving sink.
 *
 * - A milter that deletes every recipient: the message is discarded (250 to
 *   the client, nothing sent on), with a WARN naming the milter.
 * - A milter over a limit (max_added_headers): MILTER_ERR_LIMIT, its
 *   default_action (tempfail here), nothing delivered.
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
import { sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const MESSAGE = ['From: alice@example.org', 'Subject: edits', '', 'Hello', ''].join('\r\n')

describe('edits end to end (real Haraka, real libmilter)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let milterPort: number
  let milter: StartedMilter | undefined

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    milterPort = await freePort()
    haraka = await startHaraka({
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `
[main]
milters = one
default_action = tempfail
connect_timeout = 3
command_timeout = 5
content_timeout = 10

[milter.one]
socket = inet:${milterPort}@127.0.0.1
max_added_headers = 3
`,
      },
    })
  })

  afterEach(async () => {
    await milter?.stop()
    milter = undefined
    sink.clear()
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
  })

  async function start(script: MilterScript): Promise<void> {
    milter = await startScriptedMilter(script, { port: milterPort })
  }

  function send(rcpts: string[], data = MESSAGE): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', haraka.port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts,
      data,
    })
  }

  /** Proves nothing was delivered: a message sent afterwards is the first to arrive. */
  async function assertNothingDelivered(): Promise<void> {
    await milter?.stop()
    await start({})
    const r = await send(['bob@example.com'], 'Subject: marker\r\n\r\nmarker\r\n')
    assert.equal(r.accepted, true)
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    assert.deepEqual(headerValues(m, 'Subject'), ['marker'])
    assert.equal(sink.messages.length, 1)
  }

  it('a milter that deletes every recipient: 250, nothing delivered, a WARN naming it', async () => {
    await start({
      eom: [
        { op: 'delrcpt', rcpt: '<bob@example.com>' },
        { op: 'delrcpt', rcpt: '<carol@example.net>' },
      ],
    })
    const since = haraka.log().length
    const r = await send(['bob@example.com', 'carol@example.net'])
    assert.equal(r.replies.message?.code, 250, JSON.stringify(r.replies))
    await haraka.waitForLog(
      /\[WARN\].*\[milter\] one deleted every recipient: message discarded/,
      10000,
      since,
    )
    await assertNothingDelivered()
  })

  it('deleting one recipient of two delivers to the other', async () => {
    await start({ eom: [{ op: 'delrcpt', rcpt: '<carol@example.net>' }] })
    const r = await send(['bob@example.com', 'carol@example.net'])
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.deepEqual(m?.rcptTo, ['bob@example.com'])
  })

  it('over max_added_headers: MILTER_ERR_LIMIT, default_action tempfail, nothing delivered', async () => {
    const add = (i: number): { op: 'addheader'; name: string; value: string } => ({
      op: 'addheader',
      name: `X-Add-${i}`,
      value: 'x',
    })
    await start({ eom: [add(1), add(2), add(3), add(4)] })
    const since = haraka.log().length
    const r = await send(['bob@example.com'])
    assert.equal(r.replies.message?.code, 451, JSON.stringify(r.replies))
    const [line] = await haraka.waitForLog(/.*MILTER_ERR_LIMIT.*/, 10000, since)
    assert.match(line, /one: too many added headers at eom: 4 is over max_added_headers = 3/)
    await assertNothingDelivered()
  })

  it('exactly max_added_headers: delivered with every header', async () => {
    await start({
      eom: [1, 2, 3].map((i) => ({ op: 'addheader', name: `X-Add-${i}`, value: 'x' })),
    })
    const r = await send(['bob@example.com'])
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    for (const i of [1, 2, 3]) assert.deepEqual(headerValues(m, `X-Add-${i}`), ['x'])
  })
  // last: the failure counts towards the endpoint's breaker
  it('a milter asking for more macro names than max_macro_names fails negotiation (MILTER_ERR_LIMIT)', async () => {
    const names = Array.from({ length: 101 }, (_, i) => `{m${i}}`)
    await start({ actions: ['SETSYMLIST'], symlist: { connect: names } })
    const since = haraka.log().length
    const r = await send(['bob@example.com'])
    assert.equal(r.accepted, false, JSON.stringify(r.replies))
    const [line] = await haraka.waitForLog(/.*MILTER_ERR_LIMIT.*/, 10000, since)
    assert.match(line, /101 is over max_macro_names = 100/)
    assert.equal(sink.messages.length, 0)
  })
})
