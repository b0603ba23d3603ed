/**
 * Debug levels switched by a config reload, end to end: a real Haraka
 * (logging at INFO, as in production: the lines must show without Haraka's
 * global DEBUG) with a real libmilter filter, real SMTP in and delivery to a
 * receiving server. milter.ini is rewritten in Haraka's config directory and
 * Haraka reloads it by itself: 0 is silent, 1 logs one line per stage with
 * verdict and ms (also on a connection opened before the reload), 2 adds
 * the packet trace both ways, and back to 0 is silent again. Every message
 * is delivered.
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
import { startSink, type Sink } from '../helpers/sink'
import { SmtpClient, sendMailTo } from '../helpers/smtp-client'

/** A body longer than the 64 bytes a trace shows; its end must never be logged. */
const BODY = `Hello Bob,\r\n${'0123456789'.repeat(10)}\r\nTAIL-NOT-IN-THE-LOG\r\n`
const MESSAGE = `From: alice@example.org\r\nTo: bob@example.com\r\nSubject: debug levels\r\n\r\n${BODY}`

/** The debug and trace lines of the log from `since`. */
function debugLines(h: RunningHaraka, since: number): string[] {
  return h
    .log()
    .slice(since)
    .split('\n')
    .filter((l) => / milter (debug|trace) /.test(l))
}

describe('debug levels per milter, switched by reload (real Haraka, real libmilter)', function () {
  this.timeout(120000)
  let haraka: RunningHaraka
  let sink: Sink
  let milter: StartedMilter
  let port: number
  let milterPort: number

  function ini(main: string, scan = ''): string {
    return `
[main]
milters = scan
connect_timeout = 3
command_timeout = 3
content_timeout = 5
${main}

[milter.scan]
socket = inet:${milterPort}@127.0.0.1
${scan}
`
  }

  /** Rewrites milter.ini and waits until the plugin has loaded it (its "milters:" line again). */
  async function reload(text: string): Promise<void> {
    const before = haraka.log().length
    await haraka.writeConfig('milter.ini', text, { waitForReload: true })
    await haraka.waitForLog(/\[milter\] milters: scan=/, 10000, before)
  }

  /** Sends MESSAGE, checks it is delivered, and waits for the milter's per-message INFO line. */
  async function sendOne(): Promise<void> {
    const since = haraka.log().length
    sink.clear()
    const r = await sendMailTo('127.0.0.1', port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: MESSAGE,
      mailParams: 'SIZE=300',
    })
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.equal(m?.body.toString(), BODY)
    await haraka.waitForLog(/\[milter\] scan \(inet:\d+@127\.0\.0\.1\): stages /, 10000, since)
  }

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    port = await freePort()
    milterPort = await freePort()
    milter = await startScriptedMilter(
      { eom: [{ op: 'addheader', name: 'X-Debug', value: 'seen' }] },
      { port: milterPort },
    )
    haraka = await startHaraka({
      listeners: [`127.0.0.1:${port}`],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      logLevel: 'info',
      config: { 'milter.ini': ini('') },
    })
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllMilters()
    await sink?.stop()
  })

  it('0 (the default): no debug or trace line', async () => {
    const since = haraka.log().length
    await sendOne()
    assert.deepEqual(debugLines(haraka, since), [])
    assert.equal(milter.eventsOf('eom').length, 1, 'the milter saw the message')
  })

  it('1: one line per stage with verdict and ms, no packets; also on a connection opened before the reload', async () => {
    // a connection opened at level 0 ...
    const c = await SmtpClient.connect('127.0.0.1', port)
    try {
      assert.equal((await c.command('EHLO client.example.org')).code, 250)
      const since = haraka.log().length
      // ... and the level raised for this milter only, by a reload
      await reload(ini('', 'debug = 1'))
      const r = await c.sendMail({
        from: 'alice@example.org',
        rcpts: ['bob@example.com'],
        data: MESSAGE,
      })
      assert.equal(r.accepted, true)
      await sink.waitForMessages(1, 10000)
      const lines = debugLines(haraka, since)
      const stages = lines.map(
        (l) => / milter debug scan \(inet:\d+@127\.0\.0\.1\) (\w+): /.exec(l)?.[1],
      )
      // CONNECT and HELO went by at level 0: from MAIL on, each stage once
      assert.deepEqual(stages, ['mail', 'rcpt', 'data', 'eom'], lines.join('\n'))
      await c.quit()
    } finally {
      await c.close()
    }

    const since = haraka.log().length
    await sendOne()
    const lines = debugLines(haraka, since)
    assert.equal(lines.length, 6, lines.join('\n'))
    const want = ['connect', 'helo', 'mail', 'rcpt', 'data', 'eom']
    for (const [i, stage] of want.entries()) {
      // at INFO, from the milter plugin: stage, verdict, time waited
      assert.match(
        lines[i] ?? '',
        new RegExp(
          `\\[INFO\\] .*\\[milter\\] milter debug scan \\(inet:${milterPort}@127\\.0\\.0\\.1\\) ${stage}: ${stage === 'eom' ? '(?:continue|accept)' : 'continue'} \\d+\\.\\d ms$`,
        ),
      )
    }
    assert.ok(!lines.some((l) => l.includes('milter trace')))
  })

  it('2 (from [main]): the stage lines and every packet both ways, decoded, the body cut short', async () => {
    await reload(ini('debug = 2'))
    const since = haraka.log().length
    await sendOne()
    await haraka.waitForLog(/milter trace scan > SMFIC_QUIT$/m, 10000, since)
    const lines = debugLines(haraka, since)
    const trace = lines.filter((l) => l.includes(' milter trace scan '))
    const has = (re: RegExp): void =>
      assert.ok(
        trace.some((l) => re.test(l)),
        `${String(re)} in the trace:\n${trace.join('\n')}`,
      )
    has(/ > SMFIC_OPTNEG version=6 /)
    has(/ < SMFIC_OPTNEG reply version=6 /)
    // macros with their names and values
    has(/ > SMFIC_MACRO stage=SMFIC_CONNECT macros=\{.*"\{client_addr\}":"127\.0\.0\.1".*\}$/)
    has(/ > SMFIC_MACRO stage=SMFIC_MAIL macros=\{.*"\{mail_addr\}":"alice@example\.org".*\}$/)
    has(/ > SMFIC_CONNECT hostname=\S+ family=inet port=\d+ address=127\.0\.0\.1$/)
    has(/ > SMFIC_HELO helo=client\.example\.org$/)
    has(/ > SMFIC_MAIL args=\["<alice@example\.org>","SIZE=300"\]$/)
    has(/ > SMFIC_RCPT args=\["<bob@example\.com>"\]$/)
    has(/ > SMFIC_HEADER name=Subject value="debug levels"$/)
    // the body: its size and its first 64 bytes only
    const body = Buffer.from(BODY)
    const preview = JSON.stringify(body.subarray(0, 64).toString())
    has(new RegExp(` > SMFIC_BODY bytes=${body.length} preview=${escape(preview)}$`))
    assert.ok(!lines.some((l) => l.includes('TAIL-NOT-IN-THE-LOG')))
    has(/ > SMFIC_BODYEOB$/)
    // the milter's side: replies and its modification
    has(/ < SMFIR_CONTINUE$/)
    has(/ < SMFIR_ADDHEADER name=X-Debug value=seen$/)
    // and the stage lines are still there
    for (const stage of ['connect', 'helo', 'mail', 'rcpt', 'data', 'eom'])
      assert.ok(
        lines.some((l) =>
          new RegExp(` milter debug scan \\(.*\\) ${stage}: \\S+ \\d+\\.\\d ms$`).test(l),
        ),
        `${stage} line`,
      )
  })

  it('back to 0: silent again, mail still delivered', async () => {
    await reload(ini(''))
    const since = haraka.log().length
    await sendOne()
    assert.deepEqual(debugLines(haraka, since), [])
  })
})

/** A literal string inside a RegExp. */
function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
