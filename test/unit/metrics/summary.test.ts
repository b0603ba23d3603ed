/**
 * The summary line: figures of an interval as differences of two snapshots
 * per source (a restarted worker counts from zero), percentiles estimated
 * from the histogram buckets, and the wording.
 */
import assert from 'node:assert/strict'

import { MilterMetrics } from '../../../lib/metrics/recorder'
import {
  addFigures,
  figuresOf,
  quantile,
  since,
  summaryLine,
  waitText,
} from '../../../lib/metrics/summary'
import { report } from './reports'

describe('metrics: the summary line', () => {
  it('estimates percentiles from cumulative buckets as histogram_quantile does', () => {
    const buckets = new Map([
      [0.001, 0],
      [0.005, 50],
      [0.01, 100],
      [Infinity, 100],
    ])
    assert.equal(quantile(buckets, 0.5), 0.005)
    assert.ok(Math.abs(quantile(buckets, 0.25)! - 0.003) < 1e-12) // halfway into (1, 5] ms
    assert.ok(Math.abs(quantile(buckets, 0.99)! - 0.0099) < 1e-12)
    assert.equal(
      quantile(
        new Map([
          [0.01, 0],
          [Infinity, 0],
        ]),
        0.5,
      ),
      undefined,
    )
    // beyond the highest finite bound: that bound
    assert.equal(
      quantile(
        new Map([
          [0.01, 0],
          [Infinity, 4],
        ]),
        0.5,
      ),
      0.01,
    )
  })

  it('reports an interval: only what happened since the last snapshot, milters in order, verdicts sorted', async () => {
    const m = new MilterMetrics()
    m.record([report('one', 2), report('two', 20)])
    const first = figuresOf(await m.registry.getMetricsAsJSON())
    m.record([report('one', 3, { verdict: { kind: 'reject' } })])
    for (let i = 0; i < 9; i++) m.record([report('one', 3, { verdict: { kind: 'accept' } })])
    m.record([report('two', 1, { failure: { stage: 'connect', code: 'MILTER_ERR_CONNECT' } })])
    const now = figuresOf(await m.registry.getMetricsAsJSON())
    const line = summaryLine(since(now, first), 300, ['one', 'two', 'three'])
    assert.equal(
      line,
      'milter summary (last 300 s): one: 10 msgs (accept 9, reject 1), 0 failures, wait p50 3.8 ms (10 samples); ' +
        'two: 1 msgs, 1 failures, wait p50 0.8 ms (1 sample); three: 0 msgs, 0 failures',
    )
  })

  it('shows a tail percentile only when there are samples enough for it: p90 from 20, p99 from 100', () => {
    const buckets = (n: number, slow: number): Map<number, number> =>
      new Map([
        [0.001, 0],
        [0.005, n - slow],
        [0.1, n],
        [Infinity, n],
      ])
    assert.equal(waitText(new Map()), '')
    assert.equal(waitText(buckets(19, 2)), ', wait p50 3.2 ms (19 samples)')
    assert.equal(waitText(buckets(20, 2)), ', wait p50 3.2 ms p90 5.0 ms')
    assert.equal(waitText(buckets(99, 2)), ', wait p50 3.0 ms p90 4.7 ms')
    assert.equal(waitText(buckets(100, 2)), ', wait p50 3.0 ms p99 53 ms')
  })

  it('sums workers; a worker whose counters went down (restarted) counts from zero', async () => {
    const w1 = new MilterMetrics()
    const w2 = new MilterMetrics()
    w1.record([report('one', 1), report('one', 1), report('one', 1)])
    w2.record([report('one', 1), report('one', 1)])
    const before1 = figuresOf(await w1.registry.getMetricsAsJSON())
    const before2 = figuresOf(await w2.registry.getMetricsAsJSON())
    w1.record([report('one', 1)])
    const restarted = new MilterMetrics() // worker 2 was forked again
    restarted.record([report('one', 1)])
    const fresh = new MilterMetrics() // a third worker, new since the last snapshot
    fresh.record([report('one', 1), report('one', 1)])
    const total = addFigures([
      since(figuresOf(await w1.registry.getMetricsAsJSON()), before1),
      since(figuresOf(await restarted.registry.getMetricsAsJSON()), before2),
      since(figuresOf(await fresh.registry.getMetricsAsJSON()), undefined),
    ])
    assert.equal(total.get('one')?.messages, 4)
  })

  it('says so when there are no milters', () => {
    assert.equal(summaryLine(new Map(), 60, []), 'milter summary (last 60 s): no milters')
  })
})
