/**
 * Metrics end to end: a real Haraka with the plugin, real SMTP, a real
 * libmilter filter (pymilter) that rejects one recipient and adds a header
 * to every message, and a second milter whose port nothing listens on (its
 * circuit breaker opens after the first refused connection). The
 * Prometheus endpoint is scraped after the traffic and every figure is
 * checked exactly: in one process (nodes=0), and with two cluster workers
 * (nodes=2), where the master serves the sum of both workers' figures
 * (each worker has its own breaker: one MILTER_ERR_CONNECT per worker that
 * took mail). The summary line (summary_interval = 1) adds up to the
 * messages sent; a reload that moves the endpoint closes the old one.
 */
import assert from 'node:assert/strict'
import * as http from 'node:http'

import { setIniKeys, startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { sample, scrape } from '../helpers/scrape'
import { startSink, type Sink } from '../helpers/sink'
import { sendMailTo } from '../helpers/smtp-client'

/** A Haraka plugin that logs the worker's pid per connection, to see both workers take mail. */
const PIDLOG = `
exports.hook_connect = function (next, connection) {
  connection.loginfo(this, 'pid=' + process.pid)
  next()
}
`

async function until<T>(what: () => Promise<T | undefined>, ms: number, why: string): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = await what()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${why}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

function milterIni(milterPort: number, downPort: number, metricsPort: number): string {
  return `
[main]
milters = one, down
connect_timeout = 2
command_timeout = 5
content_timeout = 5

[metrics]
listen = 127.0.0.1:${metricsPort}
summary_interval = 1

[milter.one]
socket = inet:${milterPort}@127.0.0.1

[milter.down]
socket = inet:${downPort}@127.0.0.1
default_action = accept
failure_scope = session
breaker_failures = 1
breaker_backoff = 3600
breaker_backoff_max = 3600
`
}

/** The summary lines' message counts for a milter, added up. */
function summarised(log: string, milter: string): number {
  let n = 0
  for (const m of log.matchAll(
    new RegExp(`milter summary \\(last \\d+ s\\): .*?\\b${milter}: (\\d+) msgs`, 'g'),
  ))
    n += Number(m[1])
  return n
}

describe('metrics end to end (real Haraka, real libmilter, Prometheus scrape)', function () {
  this.timeout(90000)
  let sink: Sink
  let milter: StartedMilter
  let milterPort: number
  let downPort: number

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    milterPort = await freePort()
    downPort = await freePort() // nothing listens there
    milter = await startScriptedMilter(
      {
        reply: { rcpt: { '<spam@example.com>': 'reject', '*': 'continue' }, eom: 'accept' },
        eom: [{ op: 'addheader', name: 'X-Checked', value: 'yes' }],
      },
      { port: milterPort },
    )
  })

  afterEach(async () => {
    await stopAllHarakas()
    sink.clear()
  })

  after(async () => {
    await stopAllMilters()
    await sink?.stop()
  })

  /** Haraka with the milters, `nodes` workers (0: one process) and the metrics on a free port. */
  async function haraka(
    nodes: number,
    smtp: Record<string, string> = {},
  ): Promise<{ h: RunningHaraka; metricsPort: number }> {
    const metricsPort = await freePort()
    const listen = await freePort()
    const h = await startHaraka({
      listeners: [`127.0.0.1:${listen}`],
      plugins: ['pidlog', 'milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      pluginFiles: { pidlog: PIDLOG },
      sinkPort: sink.port,
      logLevel: 'info',
      config: {
        'milter.ini': milterIni(milterPort, downPort, metricsPort),
        'smtp.ini': setIniKeys(`listen=127.0.0.1:${listen}\n`, {
          main: { nodes: String(nodes), ...smtp },
        }),
      },
    })
    return { h, metricsPort }
  }

  /** `n` messages, each on its own SMTP connection; the first one to spam@, which the milter rejects. */
  async function traffic(h: RunningHaraka, n: number): Promise<void> {
    const seen = milter.eventsOf('eom').length
    for (let i = 0; i < n; i++) {
      const r = await sendMailTo('127.0.0.1', h.port, {
        helo: 'client.example.org',
        from: 'alice@example.org',
        rcpts: [i === 0 ? 'spam@example.com' : 'bob@example.com'],
        data: `Subject: metrics ${i}\r\n\r\nhello\r\n`,
      })
      assert.equal(r.accepted, i !== 0, JSON.stringify(r.replies))
      if (i === 0) assert.equal(r.replies.rcpts[0]?.code, 550)
    }
    // what the milter itself saw: every accepted message's end
    assert.equal(milter.eventsOf('eom').length - seen, n - 1)
  }

  /** Scrapes until messages_total of `one` is `n` (reports are counted at the end of each connection). */
  async function settled(port: number, n: number): Promise<string> {
    return until(
      async () => {
        const r = await scrape(port).catch(() => undefined)
        if (r?.status !== 200) return undefined
        return sample(r.body, 'haraka_milter_messages_total', { milter: 'one' }) === n
          ? r.body
          : undefined
      },
      20000,
      `haraka_milter_messages_total{milter="one"} reaches ${n}`,
    )
  }

  /** Every figure of `n` messages (one rejected at RCPT) over `workers` processes that took mail. */
  function assertFigures(text: string, n: number, workers: number): void {
    const one = { milter: 'one', mode: 'enforce' }
    const ep = `inet:${milterPort}@127.0.0.1`
    assert.equal(
      sample(text, 'haraka_milter_messages_total', { ...one, endpoint: ep }),
      n,
      'every message, the rejected one too',
    )
    assert.equal(
      sample(text, 'haraka_milter_verdicts_total', { ...one, stage: 'rcpt', verdict: 'reject' }),
      1,
    )
    assert.equal(
      sample(text, 'haraka_milter_verdicts_total', { ...one, stage: 'eom', verdict: 'accept' }),
      n - 1,
    )
    assert.equal(sample(text, 'haraka_milter_edits_total', { ...one, kind: 'addheader' }), n - 1)
    const count = (stage: string) =>
      sample(text, 'haraka_milter_stage_duration_seconds_count', {
        milter: 'one',
        endpoint: ep,
        stage,
      })
    assert.equal(count('connect'), n)
    assert.equal(count('rcpt'), n)
    assert.equal(count('eom'), n - 1)
    assert.equal(
      sample(text, 'haraka_milter_stage_duration_seconds_bucket', {
        milter: 'one',
        stage: 'eom',
        le: '+Inf',
      }),
      n - 1,
    )
    assert.equal(sample(text, 'haraka_milter_message_wait_seconds_count', { milter: 'one' }), n)
    assert.ok((sample(text, 'haraka_milter_message_wait_seconds_sum', { milter: 'one' }) ?? 0) > 0)
    // the milter that is down: refused once per worker, then skipped by its open breaker
    const down = { milter: 'down', stage: 'connect', mode: 'enforce' }
    assert.equal(
      sample(text, 'haraka_milter_failures_total', { ...down, code: 'MILTER_ERR_CONNECT' }),
      workers,
    )
    assert.equal(
      sample(text, 'haraka_milter_failures_total', { ...down, code: 'MILTER_ERR_UNAVAILABLE' }),
      n - workers,
    )
    assert.equal(sample(text, 'haraka_milter_messages_total', { milter: 'down' }), undefined)
    assert.equal(sample(text, 'haraka_milter_endpoint_up', { milter: 'one', endpoint: ep }), 1)
    assert.equal(
      sample(text, 'haraka_milter_endpoint_up', {
        milter: 'down',
        endpoint: `inet:${downPort}@127.0.0.1`,
      }),
      0,
    )
    // every SMTP connection ended: its milter session was closed, none is pooled (reuse off)
    assert.equal(sample(text, 'haraka_milter_sessions_open', { milter: 'one', endpoint: ep }), 0)
    assert.equal(sample(text, 'haraka_milter_sessions_pooled', { milter: 'one' }), 0)
  }

  /** The summary lines add up to `n` messages of `one`, and stay there. */
  async function assertSummaries(h: RunningHaraka, n: number): Promise<void> {
    await until(
      () => Promise.resolve(summarised(h.log(), 'one') === n ? true : undefined),
      10000,
      `summary lines add up to ${n} messages`,
    )
    await new Promise((r) => setTimeout(r, 2500))
    assert.equal(summarised(h.log(), 'one'), n, 'later summaries count nothing twice')
    assert.match(
      h.log(),
      /\[INFO\].*milter summary \(last \d+ s\): one: \d+ msgs \((?:accept \d+, )?reject 1\), 0 failures, wait p50 [\d.]+ ms(?: \(\d+ samples?\)| p9[09] [\d.]+ ms); down: 0 msgs, \d+ failures/,
    )
  }

  it('one process (nodes=0): exact counts after traffic, summary lines, endpoint moved by a reload', async () => {
    const { h, metricsPort } = await haraka(0)
    await h.waitForLog(`metrics: Prometheus endpoint at http://127.0.0.1:${metricsPort}/metrics`)
    const n = 5
    await traffic(h, n)
    assertFigures(await settled(metricsPort, n), n, 1)
    await assertSummaries(h, n)

    // a reload that moves the endpoint: the old port is closed, the new one serves the same figures
    const moved = await freePort()
    const since = h.log().length
    await h.writeConfig('milter.ini', milterIni(milterPort, downPort, moved), {
      waitForReload: true,
    })
    await h.waitForLog(
      `metrics: Prometheus endpoint at http://127.0.0.1:${moved}/metrics`,
      10000,
      since,
    )
    assertFigures(await settled(moved, n), n, 1)
    await assert.rejects(scrape(metricsPort), /ECONNREFUSED/)
  })

  it('two workers (nodes=2): the master serves the sum of both workers', async () => {
    const { h, metricsPort } = await haraka(2)
    await h.waitForLog(`metrics: Prometheus endpoint at http://127.0.0.1:${metricsPort}/metrics`)
    const n = 6
    await traffic(h, n)
    const pids = new Set([...h.log().matchAll(/\[pidlog\] pid=(\d+)/g)].map((m) => m[1]))
    assert.equal(pids.size, 2, 'both workers took mail')
    assertFigures(await settled(metricsPort, n), n, 2)
    await assertSummaries(h, n)
    // one endpoint, in the master only: the workers never bind it
    assert.equal(h.log().split('metrics: Prometheus endpoint at').length - 1, 1)
    assert.doesNotMatch(h.log(), /metrics: cannot listen/)
  })

  for (const nodes of [0, 2]) {
    it(`graceful shutdown (nodes=${nodes}) is not held by the endpoint, a kept-alive scrape or the timer`, async () => {
      const { h, metricsPort } = await haraka(nodes, { graceful_shutdown: 'true' })
      await h.waitForLog('milter summary (last')
      const agent = new http.Agent({ keepAlive: true })
      try {
        assert.equal((await scrape(metricsPort, agent)).status, 200)
        const started = Date.now()
        process.kill(h.pid, 'SIGINT')
        const exit = await h.exited
        assert.deepEqual(exit, { code: 0, signal: null })
        // Haraka's force_shutdown_timeout (30 s) did not have to end it
        assert.ok(Date.now() - started < 4000, `exited after ${Date.now() - started} ms`)
        assert.doesNotMatch(h.log(), /Failed to shutdown naturally/)
      } finally {
        agent.destroy()
      }
    })
  }
})
