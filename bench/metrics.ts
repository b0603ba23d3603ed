/**
 * What the metrics cost per message: MilterMetrics.record() for a message
 * through two milters (seven answers, one verdict, one edit kind each), and
 * the time to render a scrape afterwards.
 *
 *   npm run build && node dist/bench/metrics.js
 */
import { MilterMetrics } from '../lib/metrics/recorder'
import type { MilterReport } from '../lib/policy/report'

function report(milter: string): MilterReport {
  return {
    milter,
    endpoint: 'inet:8891@127.0.0.1',
    stages: ['connect', 'helo', 'mail', 'rcpt', 'data', 'eom'],
    verdict: 'accept@eom',
    edits: { addheader: 1 },
    waitMs: 2.8,
    waits: ['connect', 'helo', 'mail', 'rcpt', 'rcpt', 'data', 'eom'].map((stage) => ({
      stage,
      ms: 0.4,
    })),
    outcomes: [{ stage: 'eom', kind: 'accept' }],
  }
}

async function main(): Promise<void> {
  const m = new MilterMetrics()
  const reports = [report('opendkim'), report('rspamd')]
  for (let i = 0; i < 20_000; i++) m.record(reports) // warm up
  const n = 200_000
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < n; i++) m.record(reports)
  const perMessage = Number(process.hrtime.bigint() - t0) / n / 1000
  const t1 = process.hrtime.bigint()
  const text = await m.registry.metrics()
  const renderMs = Number(process.hrtime.bigint() - t1) / 1e6
  console.log(
    `record(): ${perMessage.toFixed(2)} µs per message (2 milters); scrape: ${renderMs.toFixed(1)} ms for ${text.length} bytes`,
  )
}

void main()
