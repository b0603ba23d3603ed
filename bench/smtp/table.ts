/** The SMTP section's table: medians over rounds, each variant against the same MTA alone. */
import type { Options, SmtpSize } from '../args'
import { addTable, fmt, n } from '../report'
import { MiB, median, percentile, spread } from '../stats'
import type { Variant } from './servers'

/** One load run of one variant. */
export interface Sample {
  variant: string
  size: SmtpSize
  perSession: number
  round: number
  messages: number
  perSec: number
  /** CPU ms per message of the MTA's processes. */
  mtaCpu: number
  /** CPU ms per message of the milter process (NaN without one). */
  milterCpu: number
  /** Per-message latency of the probe after the load run, ms. */
  latencies: number[]
  /** Per-message latency under load (Node generator only), ms. */
  loadLatencies: number[]
  /** Haraka: summed VmHWM of its processes over the run, bytes (NaN for Postfix). */
  peakRss: number
}

/** One row of the table: a variant at one size and messages per session, over rounds. */
export interface Row {
  variant: string
  size: SmtpSize
  perSession: number
  rounds: number
  messages: number
  perSecMedian: number
  perSecSpreadPct: number
  ratioToAlone: number
  mtaCpuMsPerMsg: number
  addedMtaCpuMsPerMsg: number
  milterCpuMsPerMsg: number
  latencyP50Ms: number
  latencyP99Ms: number
  addedLatencyP50Ms: number
  addedLatencyP99Ms: number
  loadLatencyP50Ms: number
  loadLatencyP99Ms: number
  harakaPeakRssMiB: number
}

const cell = (v: number, digits = 2): string =>
  Number.isFinite(v) ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(digits)) : '-'
const signed = (v: number, digits = 2): string =>
  Number.isFinite(v) ? `${v >= 0 ? '+' : ''}${v.toFixed(digits)}` : '-'

export function smtpTable(
  o: Options,
  variants: readonly Variant[],
  samples: readonly Sample[],
  smtpSource: boolean,
): Row[] {
  const rows: Row[] = []
  for (const size of o.smtpSizes) {
    for (const perSession of o.smtpPerSession) {
      const of = (name: string): Sample[] =>
        samples.filter((s) => s.variant === name && s.size === size && s.perSession === perSession)
      const lat = (ss: Sample[], q: number): number =>
        percentile(
          ss.flatMap((s) => s.latencies).sort((x, y) => x - y),
          q,
        )
      const loadLat = (ss: Sample[], q: number): number =>
        percentile(
          ss.flatMap((s) => s.loadLatencies).sort((x, y) => x - y),
          q,
        )
      for (const v of variants) {
        const ss = of(v.name)
        if (ss.length === 0) continue
        const base = of(v.base)
        // ratio per round (neighbours in time), then the median
        const ratios = ss.map((s) => {
          const b = base.find((x) => x.round === s.round)
          return b ? s.perSec / b.perSec : NaN
        })
        const cpu = median(ss.map((s) => s.mtaCpu))
        rows.push({
          variant: v.name,
          size,
          perSession,
          rounds: ss.length,
          messages: ss[0]!.messages,
          perSecMedian: median(ss.map((s) => s.perSec)),
          perSecSpreadPct: spread(ss.map((s) => s.perSec)) * 100,
          ratioToAlone: median(ratios),
          mtaCpuMsPerMsg: cpu,
          addedMtaCpuMsPerMsg: v.base === v.name ? NaN : cpu - median(base.map((s) => s.mtaCpu)),
          milterCpuMsPerMsg: median(ss.map((s) => s.milterCpu)),
          latencyP50Ms: lat(ss, 0.5),
          latencyP99Ms: lat(ss, 0.99),
          addedLatencyP50Ms: v.base === v.name ? NaN : lat(ss, 0.5) - lat(base, 0.5),
          addedLatencyP99Ms: v.base === v.name ? NaN : lat(ss, 0.99) - lat(base, 0.99),
          loadLatencyP50Ms: loadLat(ss, 0.5),
          loadLatencyP99Ms: loadLat(ss, 0.99),
          harakaPeakRssMiB: Math.max(...ss.map((s) => s.peakRss)) / MiB,
        })
      }
    }
  }
  const header = [
    'variant',
    'size',
    'msg/sess',
    'msg/s',
    'spread%',
    'ratio',
    'MTA cpu',
    '+cpu',
    'milter cpu',
    'p50',
    'p99',
    '+p50',
    '+p99',
    'RSS MiB',
  ]
  const table = rows.map((r) => [
    r.variant,
    r.size,
    String(r.perSession),
    cell(r.perSecMedian, 0),
    cell(r.perSecSpreadPct, 0),
    cell(r.ratioToAlone),
    cell(r.mtaCpuMsPerMsg, 3),
    signed(r.addedMtaCpuMsPerMsg, 3),
    cell(r.milterCpuMsPerMsg, 3),
    cell(r.latencyP50Ms),
    cell(r.latencyP99Ms),
    signed(r.addedLatencyP50Ms),
    signed(r.addedLatencyP99Ms),
    cell(r.harakaPeakRssMiB, 0),
  ])
  const rounds = Math.max(0, ...rows.map((r) => r.rounds))
  const legend = [
    `load: ${smtpSource ? 'Postfix smtp-source' : 'Node load generator (bench/smtp/load.ts)'}, ${o.smtpConcurrency} concurrent sessions, ` +
      `${n(rows[0]?.messages ?? 0)} messages per run (10m: fewer), ${rounds} interleaved rounds; loopback, ${o.quick ? 'quick' : 'full'} run`,
    'msg/s: median over rounds; spread%: (max - min) / median; ratio: msg/s / the same MTA alone (same round), median',
    'MTA cpu: CPU ms per message of the MTA (/proc utime+stime of Haraka and its workers, or of Postfix master and',
    '  its children: smtpd, cleanup, qmgr, discard...); +cpu: minus the same MTA alone; milter cpu: the milter process',
    'p50/p99: ms per message (connect or MAIL .. reply to the final dot) of a Node probe sending one message at a time',
    '  right after each load run; +p50/+p99: minus the same MTA alone',
    'RSS MiB: Haraka peak RSS during the run (VmHWM reset before it, summed over its processes)',
  ]
  if (o.before !== undefined)
    legend.push(
      `VARIANT@before: the same with the plugin built in ${o.before} (--before), same rounds`,
    )
  if (smtpSource && o.smtpPerSession.some((k) => k > 1))
    legend.push(
      `msg/sess > 1 with smtp-source: -d (one connection for all of a session's messages), run ` +
        `back to back with -m ${o.smtpConcurrency} x msg/sess`,
    )
  legend.push(...goals(rows))
  addTable({
    section: 'smtp',
    title: 'SMTP throughput and cost per message',
    header,
    rows: table,
    legend,
    data: rows,
  })
  return rows
}

/** The goals, as figures of this run. */
function goals(rows: readonly Row[]): string[] {
  const find = (variant: string, size: SmtpSize = '2k', k = 1): Row | undefined =>
    rows.find((r) => r.variant === variant && r.size === size && r.perSession === k)
  const out: string[] = ['goals (figures of this run, not pass/fail):']
  const noop = find('haraka+noop')
  if (noop)
    out.push(
      `  added Haraka CPU per 2 KB message with the no-op milter: ${fmt(noop.addedMtaCpuMsPerMsg)} ms (goal <= 0.3 ms)`,
    )
  const nr = find('haraka+noop-nr')
  if (nr)
    out.push(
      `  same with no-reply flags: ${fmt(nr.addedMtaCpuMsPerMsg)} ms (one round trip per message by negotiation)`,
    )
  const pf = find('postfix+noop')
  if (noop && pf) {
    out.push(
      `  msg/s with the no-op milter, 2 KB: Haraka ${fmt(noop.perSecMedian)}, Postfix ${fmt(pf.perSecMedian)} (goal: Haraka >= Postfix); ` +
        `added MTA CPU: Haraka ${fmt(noop.addedMtaCpuMsPerMsg)} ms, Postfix ${fmt(pf.addedMtaCpuMsPerMsg)} ms`,
    )
  }
  return out
}
