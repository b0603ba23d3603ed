/**
 * The performance issue's goals as one table: each goal's Haraka figure beside Postfix's from
 * the same run, their ratio, and whether the goal is met (--smtp-goals); with --before=DIR, the
 * earlier plugin's figure from the same run as well.
 */
import type { SmtpSize } from '../args'
import { addTable, fmt } from '../report'
import type { ManyRow } from './many'
import type { MemRow } from './memory'
import { BEFORE } from './servers'
import type { Row } from './table'

interface Goal {
  goal: string
  haraka: number
  /** The same figure with the plugin of --before=DIR (NaN: not run). */
  before: number
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
      const b = find(`haraka+${m}${BEFORE}`, size)
      const p = find(`postfix+${m}`, size)
      if (!h || !p) continue
      goals.push(
        {
          goal: `added MTA CPU ms/msg, ${m}, ${size}`,
          haraka: h.addedMtaCpuMsPerMsg,
          before: b?.addedMtaCpuMsPerMsg ?? NaN,
          postfix: p.addedMtaCpuMsPerMsg,
          met: atMost,
        },
        {
          goal: `msg/s ratio to MTA alone, ${m}, ${size}`,
          haraka: h.ratioToAlone,
          before: b?.ratioToAlone ?? NaN,
          postfix: p.ratioToAlone,
          met: atLeast,
        },
        {
          goal: `milter CPU ms/msg, ${m}, ${size}`,
          haraka: h.milterCpuMsPerMsg,
          before: b?.milterCpuMsPerMsg ?? NaN,
          postfix: p.milterCpuMsPerMsg,
          met: atMost,
        },
      )
    }
  }
  const h10 = find('haraka+noop', '10m')
  const b10 = find(`haraka+noop${BEFORE}`, '10m')
  const p10 = find('postfix+noop', '10m')
  if (h10 && p10)
    goals.push({
      goal: 'added latency p50 ms (MAIL .. final reply), noop, 10m: <= 2x Postfix',
      haraka: h10.addedLatencyP50Ms,
      before: b10?.addedLatencyP50Ms ?? NaN,
      postfix: p10.addedLatencyP50Ms,
      met: (h, p) => h <= 2 * Math.max(p, 0),
    })
  const alone = mem.find((r) => r.variant === 'haraka')
  const reads = mem.find((r) => r.variant.startsWith('haraka+noop '))
  const readsBefore = mem.find((r) => r.variant.startsWith(`haraka+noop${BEFORE} `))
  if (alone && reads)
    goals.push({
      goal: `RSS growth MiB, one ${memMiB} MiB message, replying milter: <= alone + 32`,
      haraka: reads.growthMiB,
      before: readsBefore?.growthMiB ?? NaN,
      postfix: alone.growthMiB,
      met: (h, p) => h <= p + 32,
      reference: 'Haraka alone',
    })
  const pm = many.find((r) => r.variant.startsWith('postfix'))
  const haraka = many.filter((r) => r.variant.startsWith('haraka') && !r.variant.endsWith(BEFORE))
  for (const hm of haraka) {
    const tag = `${hm.sessions} sessions, ${hm.variant}`
    const bm = many.find((r) => r.variant === `${hm.variant}${BEFORE}`)
    goals.push(
      {
        goal: `failed sessions, ${tag}`,
        haraka: hm.errors,
        before: bm?.errors ?? NaN,
        postfix: pm?.errors ?? NaN,
        met: (h) => h === 0,
      },
      {
        goal: `p99 latency ms, ${tag}`,
        haraka: hm.p99Ms,
        before: bm?.p99Ms ?? NaN,
        postfix: pm?.p99Ms ?? NaN,
        met: undefined,
      },
      {
        goal: `most milter connections, ${tag}`,
        haraka: hm.peakMilterConns,
        before: bm?.peakMilterConns ?? NaN,
        postfix: pm?.peakMilterConns ?? NaN,
        met: undefined,
      },
      {
        goal: `peak RSS MiB, ${tag}`,
        haraka: hm.peakRssMiB,
        before: bm?.peakRssMiB ?? NaN,
        postfix: NaN,
        met: undefined,
      },
    )
  }
  const cell = (v: number): string => (Number.isFinite(v) ? fmt(v) : '-')
  // the before column only when --before ran
  const withBefore = goals.some((g) => Number.isFinite(g.before))
  addTable({
    section: 'smtp',
    title: `Goals of the performance issue (Haraka${withBefore ? ', the plugin before' : ''} and Postfix from this run)`,
    header: ['goal', 'Haraka', ...(withBefore ? ['before'] : []), 'Postfix', 'ratio', 'met'],
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
        ...(withBefore ? [cell(g.before)] : []),
        g.reference ? `${cell(g.postfix)} (${g.reference})` : cell(g.postfix),
        Number.isFinite(ratio) ? ratio.toFixed(2) : '-',
        met,
      ]
    }),
    legend: [
      'ratio: Haraka / Postfix. CPU and latency: lower is better, met when Haraka <= Postfix (latency: <= 2x);',
      'msg/s ratio to the same MTA alone: met when Haraka >= Postfix; memory: the Postfix column is Haraka alone',
      ...(withBefore
        ? [
            'before: the same figure with the plugin of --before=DIR (Haraka + that build, same rounds); ratio and met',
            '  are for this build',
          ]
        : []),
    ],
    data: goals.map((g) => ({
      goal: g.goal,
      haraka: g.haraka,
      ...(withBefore ? { before: g.before } : {}),
      postfix: g.postfix,
    })),
  })
}
