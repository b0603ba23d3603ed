/**
 * The memory goal of the performance issue: one large message (50 MiB by default) through
 * Haraka alone, through Haraka + plugin + the no-op milter (which reads the body), and through
 * one that replaces the body with as many bytes: Haraka's RSS growth for each.
 */
import type { Options } from '../args'
import { addTable, fmt, progress } from '../report'
import { MiB, sleep } from '../stats'
import { nodeLoad } from './load'
import type { BenchMilter } from './milters'
import { hwmBytes, resetHwm, rssBytes } from './procs'
import { BEFORE, startHarakaServer, type MilterKind, type Server, type Variant } from './servers'

/** Haraka's memory with one large message, for one variant. */
export interface MemRow {
  variant: string
  bodyMiB: number
  rssBeforeMiB: number
  peakMiB: number
  growthMiB: number
  overAloneMiB: number
}

const MEM_VARIANTS: ReadonlyArray<{ name: string; milter?: MilterKind; before?: boolean }> = [
  { name: 'haraka' },
  { name: 'haraka+noop (reads body)', milter: 'noop' },
  { name: `haraka+noop${BEFORE} (reads body)`, milter: 'noop', before: true },
  { name: 'haraka+noop-replace (new body)', milter: 'noop-replace' },
]

export async function memoryRuns(
  o: Options,
  startMilter: (kind: MilterKind) => Promise<BenchMilter>,
  register: (s: Server) => void,
): Promise<MemRow[]> {
  const bytes = o.smtpMemoryMiB * MiB
  const rows: MemRow[] = []
  for (const mv of MEM_VARIANTS) {
    if (mv.before && o.before === undefined) continue
    const v: Variant = {
      name: mv.name,
      mta: 'haraka',
      base: 'haraka',
      ...(mv.milter ? { milter: mv.milter } : {}),
      ...(mv.before && o.before !== undefined ? { pluginRoot: o.before } : {}),
    }
    const milter = mv.milter ? await startMilter(mv.milter) : undefined
    const s = await startHarakaServer(v, milter?.socket)
    register(s)
    try {
      await nodeLoad({ port: s.port, concurrency: 2, total: 10, perSession: 1, size: 100 * 1024 })
      await sleep(500)
      const before = rssBytes([s.pid])
      resetHwm([s.pid])
      await nodeLoad({ port: s.port, concurrency: 1, total: 1, perSession: 1, size: bytes })
      const peak = hwmBytes([s.pid])
      rows.push({
        variant: mv.name,
        bodyMiB: o.smtpMemoryMiB,
        rssBeforeMiB: before / MiB,
        peakMiB: peak / MiB,
        growthMiB: (peak - before) / MiB,
        overAloneMiB: NaN,
      })
      progress(`  ${mv.name}: RSS growth ${fmt((peak - before) / MiB)} MiB`)
    } finally {
      await s.stop()
      await milter?.stop()
    }
  }
  const alone = rows[0]?.growthMiB ?? NaN
  for (const r of rows.slice(1)) r.overAloneMiB = r.growthMiB - alone
  addTable({
    section: 'smtp',
    title: `Haraka memory, one ${o.smtpMemoryMiB} MiB message (goal: growth <= Haraka alone + ${o.smtpMemoryMiB > 10 ? 16 : 32} MiB)`,
    header: ['variant', 'body MiB', 'RSS before', 'peak', 'growth', 'over alone'],
    rows: rows.map((r) => [
      r.variant,
      String(r.bodyMiB),
      r.rssBeforeMiB.toFixed(0),
      r.peakMiB.toFixed(0),
      r.growthMiB.toFixed(1),
      Number.isFinite(r.overAloneMiB) ? r.overAloneMiB.toFixed(1) : '-',
    ]),
    legend: [
      'MiB; RSS of the Haraka process (nodes=0) after 10 warm-up messages of 100 KB, then VmHWM (reset',
      'just before) after one message sent by the Node client; noop-replace (noop -R) sends back as many bytes as it read',
    ],
    data: rows,
  })
  return rows
}
