/**
 * Metrics recorded from per-message MilterReports (as the chain makes
 * them), the gauges read from a real pool at scrape time, and the cluster
 * sum of two workers' registries.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { parseMilterConfig } from '../../../lib/config'
import { MilterConnectError } from '../../../lib/errors'
import { aggregate } from '../../../lib/metrics/cluster'
import { poolFigures } from '../../../lib/metrics/figures'
import { CACHE_MS, QuarantineReader } from '../../../lib/metrics/quarantine-figures'
import { METRIC, MilterMetrics, type MetricJson } from '../../../lib/metrics/recorder'
import { MilterReports, type MilterReport } from '../../../lib/policy/milter-reports'
import { MilterPool } from '../../../lib/pool'
import { appendEvent } from '../../../lib/quarantine/events'
import type { MilterSession } from '../../../lib/session/session'

const cfg = parseMilterConfig({
  main: { milters: 'a b' },
  'milter.a': { socket: 'inet:8891@127.0.0.1' },
  'milter.b': {
    socket: 'inet:1@127.0.0.1, inet:2@127.0.0.1',
    breaker_failures: '1',
    connect_timeout: '1',
  },
})
const A = cfg.milters.get('a')!
const B = cfg.milters.get('b')!

/** A value of a metric, by labels (all given labels must match). */
function value(json: MetricJson[], name: string, labels: Record<string, string | number>): number {
  const m = json.find((x) => x.name === name)
  assert.ok(m, `${name} is registered`)
  const v = m.values.find((x) =>
    Object.entries(labels).every(([k, want]) => (x.labels as Record<string, unknown>)[k] === want),
  )
  return v?.value ?? 0
}

/** The reports of one message as the chain records them. */
function message(): MilterReport[] {
  const r = new MilterReports()
  for (const stage of ['connect', 'helo', 'mail', 'rcpt', 'rcpt', 'data'] as const)
    r.waited(A, stage, 0.3)
  r.waited(A, 'eom', 4)
  r.edits(A, {
    milter: 'a',
    count: 2,
    bodyReplaced: false,
    modifications: [
      { kind: 'addheader', name: Buffer.from('X'), value: Buffer.from('1') },
      { kind: 'addheader', name: Buffer.from('Y'), value: Buffer.from('2') },
    ],
  })
  r.verdict(A, 'eom', { kind: 'accept' })
  r.failure(B, 'connect', 'MILTER_ERR_CONNECT', 'accept')
  return r.take([A, B])
}

describe('metrics: recording from reports', () => {
  it('counts messages, verdicts, failures by code, edits and latency', async () => {
    const m = new MilterMetrics()
    m.record(message())
    m.record(message())
    // a reply code counts as the reject or tempfail it is; a connection-only report is no message
    const r = new MilterReports()
    r.waited(A, 'connect', 1)
    r.verdict(A, 'connect', {
      kind: 'replycode',
      reply: { code: 421, lines: [{ enhanced: '4.7.0', text: 'later' }] },
    })
    r.waited(A, 'mail', 1)
    r.verdict(A, 'mail', {
      kind: 'replycode',
      reply: { code: 550, lines: [{ enhanced: '5.7.1', text: 'no' }] },
    })
    m.record(r.take([A]))
    const r2 = new MilterReports()
    r2.waited(A, 'connect', 1)
    r2.verdict(A, 'connect', { kind: 'reject' })
    // b could not be reached again at MAIL (failure_scope = message): no answer, no message
    r2.failure(B, 'mail', 'MILTER_ERR_UNAVAILABLE', 'accept')
    m.record(r2.take([A, B]))

    const json = await m.registry.getMetricsAsJSON()
    const ep = 'inet:8891@127.0.0.1'
    assert.equal(value(json, METRIC.messages, { milter: 'a', endpoint: ep, mode: 'enforce' }), 3)
    // b was never reached: no message, but its failures count
    assert.equal(value(json, METRIC.messages, { milter: 'b' }), 0)
    assert.equal(
      value(json, METRIC.failures, { milter: 'b', stage: 'mail', code: 'MILTER_ERR_UNAVAILABLE' }),
      1,
    )
    assert.equal(
      value(json, METRIC.failures, { milter: 'b', stage: 'connect', code: 'MILTER_ERR_CONNECT' }),
      2,
    )
    assert.equal(value(json, METRIC.verdicts, { milter: 'a', stage: 'eom', verdict: 'accept' }), 2)
    assert.equal(
      value(json, METRIC.verdicts, { milter: 'a', stage: 'connect', verdict: 'tempfail' }),
      1,
    )
    assert.equal(value(json, METRIC.verdicts, { milter: 'a', stage: 'mail', verdict: 'reject' }), 1)
    assert.equal(
      value(json, METRIC.verdicts, { milter: 'a', stage: 'connect', verdict: 'reject' }),
      1,
    )
    assert.equal(value(json, METRIC.edits, { milter: 'a', kind: 'addheader' }), 4)
    const count = `${METRIC.stageDuration}_count`
    const stage = (s: string) =>
      json
        .find((x) => x.name === METRIC.stageDuration)!
        .values.find((v) => 'metricName' in v && v.metricName === count && v.labels['stage'] === s)
        ?.value
    assert.equal(stage('rcpt'), 4) // each recipient's answer is one observation
    assert.equal(stage('eom'), 2)
    // 4 ms at eom falls in the 5 ms bucket, not the 2.5 ms one
    const eomBucket = (le: number) =>
      json
        .find((x) => x.name === METRIC.stageDuration)!
        .values.find((v) => v.labels['stage'] === 'eom' && v.labels['le'] === le)?.value
    assert.equal(eomBucket(0.0025), 0)
    assert.equal(eomBucket(0.005), 2)
    const waits = json.find((x) => x.name === METRIC.messageWait)!
    const wcount = waits.values.find(
      (v) => 'metricName' in v && v.metricName === `${METRIC.messageWait}_count`,
    )
    assert.equal(wcount?.value, 4)
  })

  it('labels a shadow report with its mode', async () => {
    const m = new MilterMetrics()
    const [r] = message()
    const shadow: MilterReport = Object.assign({}, r!, { mode: 'shadow' })
    m.record([shadow])
    const json = await m.registry.getMetricsAsJSON()
    assert.equal(value(json, METRIC.messages, { milter: 'a', mode: 'shadow' }), 1)
    assert.equal(value(json, METRIC.messages, { milter: 'a', mode: 'enforce' }), 0)
  })

  it('counts a skip_* condition as a skipped verdict at the stage it was decided', async () => {
    const m = new MilterMetrics()
    const r = new MilterReports()
    r.skipped(A, 'mail', 'authenticated')
    m.record(r.take([A]))
    const json = await m.registry.getMetricsAsJSON()
    assert.equal(
      value(json, METRIC.verdicts, { milter: 'a', stage: 'mail', verdict: 'skipped' }),
      1,
    )
    assert.equal(value(json, METRIC.messages, { milter: 'a' }), 0, 'not asked about the message')
  })

  it('reads open and pooled sessions and endpoint health from the pool when scraped', async () => {
    let dials = 0
    const sessions: MilterSession[] = []
    const pool = new MilterPool({ reuse: true }, (def, ep) => {
      dials++
      if (def.name === 'b') return Promise.reject(new MilterConnectError(`refused ${ep.text}`))
      let state = 'negotiated'
      const s = {
        get currentState() {
          return state
        },
        error: undefined,
        observe: () => undefined,
        quitNc: () => true,
        quit: () => {
          state = 'closed'
        },
        destroy: () => {
          state = 'closed'
        },
      } as unknown as MilterSession
      sessions.push(s)
      return Promise.resolve(s)
    })
    const m = new MilterMetrics()
    m.gauges(() => poolFigures(cfg, pool))
    const s1 = await pool.acquire(A)
    await pool.acquire(A)
    await pool.acquire(A)
    pool.release(A, s1) // kept for reuse
    sessions[1]!.destroy() // gone
    await assert.rejects(pool.acquire(B)) // both endpoints fail: each breaker opens (failures = 1)
    assert.equal(dials, 5)
    const json = await m.registry.getMetricsAsJSON()
    const ep = 'inet:8891@127.0.0.1'
    assert.equal(value(json, METRIC.sessionsOpen, { milter: 'a', endpoint: ep }), 2)
    assert.equal(value(json, METRIC.sessionsPooled, { milter: 'a' }), 1)
    assert.equal(value(json, METRIC.sessionsPooled, { milter: 'b' }), 0)
    assert.equal(value(json, METRIC.endpointUp, { milter: 'a', endpoint: ep }), 1)
    for (const e of ['inet:1@127.0.0.1', 'inet:2@127.0.0.1']) {
      assert.equal(value(json, METRIC.endpointUp, { milter: 'b', endpoint: e }), 0)
      assert.equal(value(json, METRIC.sessionsOpen, { milter: 'b', endpoint: e }), 0)
    }
    pool.close()
  })

  it('sums two workers: counters and histograms added, endpoint_up the lowest', async () => {
    const w1 = new MilterMetrics()
    const w2 = new MilterMetrics()
    w1.gauges(() => ({
      open: [{ milter: 'a', endpoint: 'e', open: 2 }],
      pooled: [],
      endpoints: [{ milter: 'a', endpoint: 'e', up: true }],
    }))
    w2.gauges(() => ({
      open: [{ milter: 'a', endpoint: 'e', open: 3 }],
      pooled: [],
      endpoints: [{ milter: 'a', endpoint: 'e', up: false }],
    }))
    w1.record(message())
    w2.record(message())
    w2.record(message())
    const registry = aggregate({
      asked: 2,
      workers: new Map([
        [101, await w1.registry.getMetricsAsJSON()],
        [102, await w2.registry.getMetricsAsJSON()],
      ]),
    })
    const json = await registry.getMetricsAsJSON()
    assert.equal(value(json, METRIC.messages, { milter: 'a' }), 3)
    assert.equal(value(json, METRIC.failures, { milter: 'b', code: 'MILTER_ERR_CONNECT' }), 3)
    assert.equal(value(json, METRIC.sessionsOpen, { milter: 'a' }), 5)
    assert.equal(value(json, METRIC.endpointUp, { milter: 'a' }), 0)
    const text = await registry.metrics()
    assert.match(text, /^haraka_milter_message_wait_seconds_count\{milter="a"\} 3$/m)
  })
})

describe('metrics: the quarantine', () => {
  const released = new Map([['scan', 2]])
  const deleted = new Map([['scan', 1]])

  it('held per milter as recorded; released, deleted and entries read from the store when scraped', async () => {
    const m = new MilterMetrics()
    let scrapes = 0
    m.quarantine(() => {
      scrapes += 1
      return Promise.resolve({ entries: 4, released, deleted })
    })
    m.recordHeld(['scan', 'av'])
    m.recordHeld(['scan'])
    const json = await m.registry.getMetricsAsJSON()
    assert.equal(value(json, METRIC.quarantineHeld, { milter: 'scan' }), 2)
    assert.equal(value(json, METRIC.quarantineHeld, { milter: 'av' }), 1)
    assert.equal(value(json, METRIC.quarantineReleased, { milter: 'scan' }), 2)
    assert.equal(value(json, METRIC.quarantineDeleted, { milter: 'scan' }), 1)
    assert.equal(value(json, METRIC.quarantineEntries, {}), 4)
    assert.ok(scrapes > 0)
    const text = await m.registry.metrics()
    assert.match(text, /^haraka_milter_quarantine_entries 4$/m)
  })

  it('nothing to read (no configuration, an unreadable store): 0 and no milter, the scrape goes on', async () => {
    const m = new MilterMetrics()
    m.quarantine(() => Promise.resolve(undefined))
    const json = await m.registry.getMetricsAsJSON()
    assert.equal(value(json, METRIC.quarantineEntries, {}), 0)
    assert.equal(json.find((x) => x.name === METRIC.quarantineReleased)?.values.length, 0)
  })

  it('a cluster: figures read from the one store are not multiplied by the workers; held is summed', async () => {
    const workers = [new MilterMetrics(), new MilterMetrics(), new MilterMetrics()]
    for (const w of workers) {
      w.quarantine(() => Promise.resolve({ entries: 4, released, deleted }))
      w.recordHeld(['scan'])
    }
    const registry = aggregate({
      asked: 3,
      workers: new Map(
        await Promise.all(
          workers.map(async (w, i) => [100 + i, await w.registry.getMetricsAsJSON()] as const),
        ),
      ),
    })
    const json = await registry.getMetricsAsJSON()
    assert.equal(value(json, METRIC.quarantineEntries, {}), 4)
    assert.equal(value(json, METRIC.quarantineReleased, { milter: 'scan' }), 2)
    assert.equal(value(json, METRIC.quarantineDeleted, { milter: 'scan' }), 1)
    assert.equal(value(json, METRIC.quarantineHeld, { milter: 'scan' }), 3)
  })

  it('QuarantineReader: reads the store at most once per CACHE_MS, again after', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-qreader-'))
    try {
      let now = 1000
      const r = new QuarantineReader(() => now)
      await appendEvent(dir, { time: 't', op: 'release', id: 'A.1', milters: ['scan'] })
      const [a, b] = await Promise.all([r.read(dir), r.read(dir)])
      assert.equal(a, b, 'two scrapes at once share one reading')
      assert.deepEqual([...(a?.released ?? [])], [['scan', 1]])
      assert.equal(a?.entries, 0)
      await appendEvent(dir, { time: 't', op: 'release', id: 'B.1', milters: ['scan'] })
      now += CACHE_MS - 1
      assert.equal((await r.read(dir)).released.get('scan'), 1, 'cached')
      now += 1
      assert.equal((await r.read(dir)).released.get('scan'), 2, 'read again')
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
