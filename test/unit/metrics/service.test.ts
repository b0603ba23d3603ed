/**
 * The metrics service of a single process: the endpoint on loopback
 * (Prometheus text, 404 elsewhere), a taken port as one ERROR line, a
 * reload that moves or removes the endpoint without leaking it, the
 * summary timer, and close().
 */
import assert from 'node:assert/strict'
import cluster, { type Worker } from 'node:cluster'
import * as http from 'node:http'
import * as net from 'node:net'

import { MetricsService } from '../../../lib/metrics/service'
import { freePort } from '../../helpers/paths'
import * as path from 'node:path'
import { report } from './reports'

function get(
  port: number,
  path = '/metrics',
): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: 5000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }),
      )
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
  })
}

function refused(port: number): Promise<boolean> {
  return get(port).then(
    () => false,
    (e: NodeJS.ErrnoException) => e.code === 'ECONNREFUSED',
  )
}

async function until(what: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!(await what())) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 20))
  }
}

function logger() {
  const lines: Array<[string, string]> = []
  return {
    lines,
    log: {
      info: (t: string) => lines.push(['info', t]),
      warn: (t: string) => lines.push(['warn', t]),
      error: (t: string) => lines.push(['error', t]),
    },
  }
}

const REPORT = report('one', 2)

describe('metrics: the service of one process', function () {
  this.timeout(20000)
  const services: MetricsService[] = []
  afterEach(async () => {
    await Promise.all(services.splice(0).map((s) => s.close()))
  })

  function service(log: ReturnType<typeof logger>['log']): MetricsService {
    const s = new MetricsService(log)
    services.push(s)
    return s
  }

  it('serves nothing before Haraka says which process serves (init_master)', async () => {
    const { log } = logger()
    const port = await freePort()
    const s = service(log)
    s.configure(
      { listen: { host: '127.0.0.1', port, text: `127.0.0.1:${port}` }, summaryIntervalMs: 0 },
      [],
    )
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(await refused(port), true)
    s.start('single')
    await until(async () => !(await refused(port)))
  })

  it('answers /metrics in Prometheus text, 404 elsewhere, and moves on reload without leaking', async () => {
    const { log, lines } = logger()
    const [p1, p2] = [await freePort(), await freePort()]
    const s = service(log)
    s.start('single')
    s.configure(
      { listen: { host: '127.0.0.1', port: p1, text: `127.0.0.1:${p1}` }, summaryIntervalMs: 0 },
      ['one'],
    )
    s.recorder.record([REPORT, REPORT])
    await until(async () => !(await refused(p1)))
    const r = await get(p1)
    assert.equal(r.status, 200)
    assert.match(r.type, /^text\/plain; version=0\.0\.4/)
    assert.match(
      r.body,
      /^haraka_milter_messages_total\{milter="one",endpoint="inet:1@127\.0\.0\.1",mode="enforce"\} 2$/m,
    )
    assert.equal((await get(p1, '/')).status, 404)
    assert.ok(
      lines.some(
        ([l, t]) =>
          l === 'info' && t === `metrics: Prometheus endpoint at http://127.0.0.1:${p1}/metrics`,
      ),
    )
    // the same address again: nothing moves
    s.configure(
      { listen: { host: '127.0.0.1', port: p1, text: `127.0.0.1:${p1}` }, summaryIntervalMs: 0 },
      ['one'],
    )
    assert.equal((await get(p1)).status, 200)
    // another port: the first one is closed
    s.configure(
      { listen: { host: '127.0.0.1', port: p2, text: `127.0.0.1:${p2}` }, summaryIntervalMs: 0 },
      ['one'],
    )
    await until(async () => (await refused(p1)) && !(await refused(p2)))
    // no listen: no endpoint
    s.configure({ summaryIntervalMs: 0 }, ['one'])
    await until(() => refused(p2))
  })

  it('a taken port is one ERROR line, not a crash', async () => {
    const { log, lines } = logger()
    const taken = net.createServer()
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r))
    const port = (taken.address() as net.AddressInfo).port
    try {
      const s = service(log)
      s.start('single')
      s.configure(
        { listen: { host: '127.0.0.1', port, text: `127.0.0.1:${port}` }, summaryIntervalMs: 0 },
        [],
      )
      await until(() => lines.some(([l]) => l === 'error'))
      const errors = lines.filter(([l]) => l === 'error')
      assert.equal(errors.length, 1)
      assert.match(
        errors[0]![1],
        new RegExp(
          `^metrics: cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE.*; no metrics endpoint$`,
        ),
      )
    } finally {
      taken.close()
    }
  })

  it('logs the summary line each interval, and stops at close()', async () => {
    const { log, lines } = logger()
    const s = service(log)
    s.start('single')
    s.configure({ summaryIntervalMs: 20 }, ['one'])
    s.recorder.record([REPORT, REPORT, REPORT])
    await until(() => lines.some(([, t]) => t.startsWith('milter summary')))
    const first = lines.find(([, t]) => t.startsWith('milter summary'))!
    assert.equal(first[0], 'info')
    assert.match(
      first[1],
      /^milter summary \(last 0 s\): one: 3 msgs, 0 failures, wait p50 \d+\.\d ms \(3 samples\)$/,
    )
    await until(() => lines.some(([, t]) => /^milter summary .*: one: 0 msgs, 0 failures$/.test(t)))
    await s.close()
    const n = lines.length
    await new Promise((r) => setTimeout(r, 100)) // five intervals
    assert.equal(lines.length, n)
  })
})

describe('metrics: the cluster primary sums its workers', function () {
  this.timeout(30000)
  const workers: Worker[] = []
  let s: MetricsService | undefined

  afterEach(async () => {
    await s?.close()
    s = undefined
    for (const w of workers.splice(0)) w.process.kill()
  })

  /** A worker running test/helpers/metrics-worker.js in `mode`, once it said ready. */
  function fork(mode: 'answer' | 'silent'): Promise<Worker> {
    cluster.setupPrimary({
      exec: path.join(__dirname, '..', '..', 'helpers', 'metrics-worker.js'),
      args: [mode],
      silent: true,
    })
    const w = cluster.fork()
    workers.push(w)
    return new Promise((resolve, reject) => {
      w.once('message', (m: unknown) => (m === 'ready' ? resolve(w) : reject(new Error(String(m)))))
      w.once('exit', (code) => reject(new Error(`worker exited with ${code}`)))
    })
  }

  it('a worker that does not answer in time makes the scrape a 503, not a short sum', async () => {
    await fork('answer')
    const silent = await fork('silent')
    const { log, lines } = logger()
    const port = await freePort()
    s = new MetricsService(log, { gatherMs: 500 })
    s.start('master')
    s.configure(
      { listen: { host: '127.0.0.1', port, text: `127.0.0.1:${port}` }, summaryIntervalMs: 0 },
      ['one'],
    )
    // listening (a probe by GET would itself wait for the workers)
    await until(() => lines.some(([, t]) => t.startsWith('metrics: Prometheus endpoint at')))
    const started = Date.now()
    const r = await get(port)
    assert.equal(r.status, 503)
    assert.equal(r.body, 'metrics unavailable: 1 of 2 Haraka workers answered in time\n')
    assert.ok(
      Date.now() - started < 3000,
      'bounded by the gather wait (500 ms here, 4 s by default)',
    )
    // the stuck worker gone: the sum of the ones left
    await new Promise((resolve) => {
      silent.once('exit', resolve)
      silent.process.kill()
    })
    const ok = await get(port)
    assert.equal(ok.status, 200)
    assert.match(
      ok.body,
      /^haraka_milter_messages_total\{milter="one",endpoint="inet:1@127\.0\.0\.1",mode="enforce"\} 2$/m,
    )
  })
})
