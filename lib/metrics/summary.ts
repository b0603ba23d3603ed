/**
 * The periodic summary line, from the metrics themselves: per milter the
 * messages, non-continue verdicts, failures, and the per-message wait's
 * median and a tail percentile over the interval (as many as the samples carry). Figures are differences of
 * the cumulative counters between two snapshots, per source (the process,
 * or each cluster worker, so that a worker that restarted counts from
 * zero instead of making a negative difference). Percentiles are estimated
 * from the histogram buckets by linear interpolation, as Prometheus'
 * histogram_quantile() does. Pure.
 */
import { METRIC, type MetricJson } from './recorder'

/** One milter's figures: counts, verdicts by label, and the wait histogram (cumulative buckets). */
export interface MilterFigures {
  messages: number
  failures: number
  verdicts: Map<string, number>
  /** Upper bound in seconds (Infinity for +Inf) -> cumulative count, in the order given. */
  wait: Map<number, number>
}

export type Figures = Map<string, MilterFigures>

function blank(): MilterFigures {
  return { messages: 0, failures: 0, verdicts: new Map(), wait: new Map() }
}

function entry(f: Figures, milter: string): MilterFigures {
  let m = f.get(milter)
  if (!m) {
    m = blank()
    f.set(milter, m)
  }
  return m
}

function bump<K>(m: Map<K, number>, key: K, n: number): void {
  m.set(key, (m.get(key) ?? 0) + n)
}

/** The figures of one registry's JSON (one process, or the cluster's sum). */
export function figuresOf(metrics: readonly MetricJson[]): Figures {
  const f: Figures = new Map()
  for (const metric of metrics) {
    for (const v of metric.values) {
      const milter = v.labels['milter']
      if (milter === undefined) continue
      const m = entry(f, String(milter))
      switch (metric.name) {
        case METRIC.messages:
          m.messages += v.value
          break
        case METRIC.failures:
          m.failures += v.value
          break
        case METRIC.verdicts:
          bump(m.verdicts, String(v.labels['verdict']), v.value)
          break
        case METRIC.messageWait: {
          const name = 'metricName' in v ? v.metricName : undefined
          if (name !== `${METRIC.messageWait}_bucket`) break
          const le = v.labels['le']
          bump(m.wait, le === '+Inf' ? Infinity : Number(le), v.value)
          break
        }
      }
    }
  }
  return f
}

/** What happened between two snapshots of one source (counters that went down count from zero). */
export function since(cur: Figures, prev: Figures | undefined): Figures {
  const out: Figures = new Map()
  for (const [milter, c] of cur) {
    const p = prev?.get(milter) ?? blank()
    const reset = c.messages < p.messages || c.failures < p.failures
    const base = reset ? blank() : p
    const d = blank()
    d.messages = c.messages - base.messages
    d.failures = c.failures - base.failures
    for (const [k, n] of c.verdicts) d.verdicts.set(k, Math.max(0, n - (base.verdicts.get(k) ?? 0)))
    for (const [le, n] of c.wait) d.wait.set(le, Math.max(0, n - (base.wait.get(le) ?? 0)))
    out.set(milter, d)
  }
  return out
}

/** The sum of several sources' figures. */
export function addFigures(parts: readonly Figures[]): Figures {
  const out: Figures = new Map()
  for (const part of parts) {
    for (const [milter, f] of part) {
      const m = entry(out, milter)
      m.messages += f.messages
      m.failures += f.failures
      for (const [k, n] of f.verdicts) bump(m.verdicts, k, n)
      for (const [le, n] of f.wait) bump(m.wait, le, n)
    }
  }
  return out
}

/**
 * The q-quantile (0..1) in seconds from cumulative buckets, interpolated
 * within the bucket it falls in; the highest finite bound when it falls
 * beyond; undefined without observations.
 */
export function quantile(wait: ReadonlyMap<number, number>, q: number): number | undefined {
  const buckets = [...wait].sort((a, b) => a[0] - b[0])
  const total = buckets[buckets.length - 1]?.[1] ?? 0
  if (total <= 0) return undefined
  const rank = q * total
  let lower = 0
  let below = 0
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lower
      if (count === below) return le
      return lower + ((le - lower) * (rank - below)) / (count - below)
    }
    lower = le
    below = count
  }
  return lower
}

function ms(seconds: number): string {
  const v = seconds * 1000
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`
}

/** One milter's part of the line. */
function describe(name: string, f: MilterFigures): string {
  const verdicts = [...f.verdicts]
    .filter(([, n]) => n > 0)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, n]) => `${k} ${n}`)
    .join(', ')
  return `${name}: ${f.messages} msgs${verdicts ? ` (${verdicts})` : ''}, ${f.failures} failures${waitText(f.wait)}`
}

/**
 * The wait's percentiles, as many as the samples can carry: a tail
 * percentile of a handful of samples is the largest of them, which reads as
 * a figure it is not. From 100 samples p50 and p99; from 20 p50 and p90;
 * below that p50 with the number of samples beside it.
 */
export function waitText(wait: ReadonlyMap<number, number>): string {
  const n = Math.max(0, ...wait.values())
  const p50 = quantile(wait, 0.5)
  if (n === 0 || p50 === undefined) return ''
  if (n < 20) return `, wait p50 ${ms(p50)} (${n} sample${n === 1 ? '' : 's'})`
  const q = n < 100 ? 0.9 : 0.99
  const tail = quantile(wait, q) ?? p50
  return `, wait p50 ${ms(p50)} p${Math.round(q * 100)} ${ms(tail)}`
}

/**
 * `milter summary (last 300 s): one: 120 msgs (reject 3), 0 failures, wait
 * p50 3.1 ms p99 12 ms; two: ...`: the configured milters in order, then
 * any others the figures name (removed by a reload during the interval).
 */
export function summaryLine(f: Figures, seconds: number, order: readonly string[]): string {
  const names = [...order, ...[...f.keys()].filter((n) => !order.includes(n))]
  const parts = names.map((n) => describe(n, f.get(n) ?? blank()))
  return `milter summary (last ${Math.round(seconds)} s): ${parts.join('; ') || 'no milters'}`
}
