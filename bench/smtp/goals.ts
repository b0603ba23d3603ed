/**
 * The performance issue's goals as one table: each goal's Haraka figure beside Postfix's from
 * the same run, their ratio, and whether the goal is met (--smtp-goals).
 */
import type { SmtpSize } from '../args'
import { addTable, fmt } from '../report'
import type { ManyRow } from './many'
import type { MemRow } from './memory'
import type { Row } from './table'

interface Goal {
  goal: string
  haraka: number
  postfix: number
  /** How the goal reads the two figures; undefined: reported only. */
  met: ((h: number, p: number) => boolean) | undefined
  /** What the Postfix column holds when it is not Postfix (the memory goal). */
  reference?: string
}

const atMost = (h: number, p: number): boolean => h <= p
const atLeast = (h: number, p: number): boolean => h >= p

export function goalsTable(
  rows: readonly Row[],
  mem: readonly MemRow[],
  many: readonly ManyRow[],
  memMiB: number,
): void {
  const find = (variant: string, size: SmtpSize): Row | undefined =>
    rows.find((r) => r.variant === variant && r.size === size && r.perSession === 1)
  const goals: Goal[] = []
  const sizes: SmtpSize[] = ['2k', '100k', '10m']
  for (const size of sizes) {
    for (const m of ['noop', 'noop-nr'] as const) {
      const h = find(`haraka+${m}`, size)
      const p = find(`postfix+${m}`, size)
      if (!h || !p) continue
      goals.push(
        {
          goal: `added MTA CPU ms/msg, ${m}, ${size}`,
          haraka: h.addedMtaCpuMsPerMsg,
          postfix: p.addedMtaCpuMsPerMsg,
          met: atMost,
        },
        {
          goal: `msg/s ratio to MTA alone, ${m}, ${size}`,
          haraka: h.ratioToAlone,
          postfix: p.ratioToAlone,
          met: atLeast,
        },
        {
          goal: `milter CPU ms/msg, ${m}, ${size}`,
          haraka: h.milterCpuMsPerMsg,
          postfix: p.milterCpuMsPerMsg,
          met: atMost,
        },
      )
    }
  }
  const h10 = find('haraka+noop', '10m')
  const p10 = find('postfix+noop', '10m')
  if (h10 && p10)
    goals.push({
      goal: 'added latency p50 ms (MAIL .. final reply), noop, 10m: <= 2x Postfix',
      haraka: h10.addedLatencyP50Ms,
      postfix: p10.addedLatencyP50Ms,
      met: (h, p) => h <= 2 * Math.max(p, 0),
    })
  const alone = mem.find((r) => r.variant === 'haraka')
  const reads = mem.find((r) => r.variant.startsWith('haraka+noop '))
  if (alone && reads)
    goals.push({
      goal: `RSS growth MiB, one ${memMiB} MiB message, replying milter: <= alone + 32`,
      haraka: reads.growthMiB,
      postfix: alone.growthMiB,
      met: (h, p) => h <= p + 32,
      reference: 'Haraka alone',
    })
  const pm = many.find((r) => r.variant.startsWith('postfix'))
  for (const hm of many.filter((r) => r.variant.startsWith('haraka'))) {
    const tag = `${hm.sessions} sessions, ${hm.variant}`
    goals.push(
      {
        goal: `failed sessions, ${tag}`,
        haraka: hm.errors,
        postfix: pm?.errors ?? NaN,
        met: (h) => h === 0,
      },
      {
        goal: `p99 latency ms, ${tag}`,
        haraka: hm.p99Ms,
        postfix: pm?.p99Ms ?? NaN,
        met: undefined,
      },
      {
        goal: `most milter connections, ${tag}`,
        haraka: hm.peakMilterConns,
        postfix: pm?.peakMilterConns ?? NaN,
        met: undefined,
      },
      {
        goal: `peak RSS MiB, ${tag}`,
        haraka: hm.peakRssMiB,
        postfix: NaN,
        met: undefined,
      },
    )
  }
  const cell = (v: number): string => (Number.isFinite(v) ? fmt(v) : '-')
  addTable({
    section: 'smtp',
    title: 'Goals of the performance issue (Haraka and Postfix from this run)',
    header: ['goal', 'Haraka', 'Postfix', 'ratio', 'met'],
    rows: goals.map((g) => {
      const ratio =
        Number.isFinite(g.haraka) && g.postfix > 0 && !g.reference ? g.haraka / g.postfix : NaN
      const met =
        g.met === undefined || !Number.isFinite(g.haraka)
          ? 'reported'
          : g.met(g.haraka, g.postfix)
            ? 'met'
            : 'NOT met'
      return [
        g.goal,
        cell(g.haraka),
        g.reference ? `${cell(g.postfix)} (${g.reference})` : cell(g.postfix),
        Number.isFinite(ratio) ? ratio.toFixed(2) : '-',
        met,
      ]
    }),
    legend: [
      'ratio: Haraka / Postfix. CPU and latency: lower is better, met when Haraka <= Postfix (latency: <= 2x);',
      'msg/s ratio to the same MTA alone: met when Haraka >= Postfix; memory: the Postfix column is Haraka alone',
    ],
    data: goals.map((g) => ({ goal: g.goal, haraka: g.haraka, postfix: g.postfix })),
  })
}
