/**
 * What the metrics cost per message: MilterMetrics.record() for a message
 * through two milters (seven answers, one verdict, one edit kind each), and
 * the time to render a scrape afterwards.
 *
 *   npm run build && node dist/bench/metrics.js
 */
import { parseMilterConfig } from '../lib/config'
import { MilterMetrics } from '../lib/metrics/recorder'
import { MilterReports, type MilterReport } from '../lib/policy/milter-reports'

const cfg = parseMilterConfig({
  main: { milters: 'opendkim rspamd' },
  'milter.opendkim': { socket: 'inet:8891@127.0.0.1' },
  'milter.rspamd': { socket: 'inet:11332@127.0.0.1' },
})

/** Both milters' reports of one message, made by the chain's own collector. */
function message(): MilterReport[] {
  const r = new MilterReports()
  const defs = [...cfg.milters.values()]
  for (const def of defs) {
    for (const stage of ['connect', 'helo', 'mail', 'rcpt', 'rcpt', 'data', 'eom'] as const)
      r.waited(def, stage, 0.4)
    r.edits(def, {
      milter: def.name,
      count: 1,
      bodyReplaced: false,
      modifications: [{ kind: 'addheader', name: Buffer.from('X'), value: Buffer.from('1') }],
    })
    r.verdict(def, 'eom', { kind: 'accept' })
  }
  return r.take(defs)
}

async function main(): Promise<void> {
  const m = new MilterMetrics()
  const reports = message()
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
