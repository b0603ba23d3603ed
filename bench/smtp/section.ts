/**
 * 5. SMTP load over loopback (the performance issue's benchmark): Haraka alone, Haraka + this
 * plugin + the C no-op libmilter milter (bench/milters/noop.c; normal and no-reply), + OpenDKIM
 * signing, Haraka with nodes=2, and the same against a self-contained Postfix when installed.
 * Every variant runs once per round, rounds interleaved; the table gives medians over rounds.
 */
import type { Options, SmtpSize } from '../args'
import { note, progress } from '../report'
import { MiB } from '../stats'
import { haveSmtpSource, killLoad, latencyProbe, nodeLoad, smtpSourceLoad } from './load'
import {
  startAddHeader,
  startDkimSigner,
  startNoop,
  stopBenchMilters,
  type BenchMilter,
} from './milters'
import { cpuMs, hwmBytes, resetHwm } from './procs'
import { postfixMissing } from './postfix'
import { goalsTable } from './goals'
import { manyRuns, type ManyRow } from './many'
import { memoryRuns, type MemRow } from './memory'
import { smtpTable, type Row, type Sample } from './table'
import {
  VARIANTS,
  beforeTwin,
  startHarakaServer,
  startPostfixServer,
  type MilterKind,
  type Server,
} from './servers'

export const SIZE_BYTES: Readonly<Record<SmtpSize, number>> = {
  '2k': 2 * 1024,
  '100k': 100 * 1024,
  '10m': 10 * MiB,
}

/** Every MTA running now, for stopSmtp(). */
const servers = new Set<Server>()
/** Every milter running now (noop, OpenDKIM), for stopSmtp(). */
const liveMilters = new Set<BenchMilter>()
let stopping: Promise<void> | undefined

/** Stops every MTA, milter and load generator this section started (also on SIGINT). */
export async function stopSmtp(): Promise<void> {
  killLoad()
  stopping ??= (async () => {
    await Promise.allSettled([...servers].map((s) => s.stop()))
    servers.clear()
    await Promise.allSettled([...liveMilters].map((m) => m.stop()))
    liveMilters.clear()
    await stopBenchMilters()
  })()
  await stopping
  stopping = undefined
}

async function startMilter(kind: MilterKind): Promise<BenchMilter> {
  const m = await (async (): Promise<BenchMilter> => {
    switch (kind) {
      case 'noop':
        return startNoop('noop')
      case 'noop-nr':
        return startNoop('noop-nr', { noReply: true })
      case 'noop-replace':
        return startNoop('noop-replace', { replaceSame: true })
      case 'opendkim':
        return startDkimSigner()
      case 'addheader':
        return startAddHeader()
    }
  })()
  liveMilters.add(m)
  return m
}

/** Messages per run for a size: 10 MB runs send a fiftieth (at least 20). */
function countFor(o: Options, size: SmtpSize): { total: number; probe: number } {
  if (size === '10m') return { total: Math.max(20, Math.round(o.smtpMessages / 50)), probe: 5 }
  return { total: o.smtpMessages, probe: o.quick ? 30 : 60 }
}

export async function smtpSection(o: Options): Promise<void> {
  const rows = o.smtpMemoryOnly ? [] : await loadRuns(o)
  let mem: MemRow[] = []
  if (o.smtpMemory && o.smtpMemoryMiB > 0 && (!o.smtpVariants || o.smtpMemoryOnly || o.smtpGoals)) {
    progress('  memory runs (one large message)')
    try {
      mem = await memoryRuns(o, startMilter, (s) => servers.add(s))
    } finally {
      await stopSmtp()
    }
  }
  let many: ManyRow[] = []
  if (o.smtpSessions > 0 && !o.smtpMemoryOnly) {
    try {
      const m = await startMilter('noop')
      many = await manyRuns(o, m, (s) => servers.add(s))
    } finally {
      await stopSmtp()
    }
  }
  if (o.smtpGoals) goalsTable(rows, mem, many, o.smtpMemoryMiB)
}

/** Every variant, size and messages-per-session, once per round. */
async function loadRuns(o: Options): Promise<Row[]> {
  const pfMissing = postfixMissing()
  let variants = VARIANTS.filter((v) => !o.smtpVariants || o.smtpVariants.includes(v.name))
  if (o.smtpVariants)
    for (const name of o.smtpVariants)
      if (!VARIANTS.some((v) => v.name === name))
        throw new Error(`unknown variant ${name} (${VARIANTS.map((v) => v.name).join(', ')})`)
  if (pfMissing) {
    note(`Postfix rows skipped: ${pfMissing}`)
    variants = variants.filter((v) => v.mta !== 'postfix')
  }
  // the plugin before (--before=DIR) beside each Haraka variant that loads it
  const before = o.before
  if (before !== undefined)
    variants = variants.flatMap((v) =>
      v.mta === 'haraka' && v.milter && !v.noQuickAck ? [v, beforeTwin(v, before)] : [v],
    )
  const useSource =
    o.smtpLoad === 'smtp-source' || (o.smtpLoad === 'auto' && haveSmtpSource() && !pfMissing)
  if (o.smtpLoad === 'smtp-source' && !haveSmtpSource())
    throw new Error('smtp-source not found (Debian package postfix)')
  const load = useSource ? smtpSourceLoad : nodeLoad

  // the milters, shared by the Haraka and Postfix variants (one run at a time)
  const milters = new Map<MilterKind, BenchMilter>()
  const started: Server[] = []
  try {
    for (const v of variants) {
      if (v.milter && !milters.has(v.milter)) {
        progress(`  starting milter ${v.milter}`)
        milters.set(v.milter, await startMilter(v.milter))
      }
    }
    for (const v of variants) {
      progress(`  starting ${v.name}`)
      const sock = v.milter ? milters.get(v.milter)?.socket : undefined
      const s =
        v.mta === 'haraka'
          ? await startHarakaServer(v, sock, { cpuProfDir: o.cpuProfDir })
          : await startPostfixServer(v, sock)
      servers.add(s)
      started.push(s)
    }
    // warm-up: JIT, milter threads, Postfix processes
    for (const s of started) {
      progress(`  warm-up ${s.variant.name}`)
      await nodeLoad({ port: s.port, concurrency: 4, total: 100, perSession: 1, size: 2048 })
      await s.settle()
    }

    const samples: Sample[] = []
    for (let round = 0; round < o.smtpRounds; round++) {
      for (const size of o.smtpSizes) {
        for (const perSession of o.smtpPerSession) {
          // rotate the order each round, so no variant always runs first
          const order = started.map((_, i) => started[(i + round) % started.length]!)
          for (const s of order) {
            const milter = s.variant.milter ? milters.get(s.variant.milter) : undefined
            const sample = await measure(o, s, milter, size, perSession, load, round)
            samples.push(sample)
            progress(
              `  round ${round + 1} ${s.variant.name} ${size} x${perSession}: ` +
                `${sample.perSec.toFixed(0)} msg/s, MTA ${sample.mtaCpu.toFixed(3)} ms/msg, ` +
                `milter ${sample.milterCpu.toFixed(3)} ms/msg`,
            )
          }
        }
      }
    }
    return smtpTable(o, variants, samples, useSource)
  } finally {
    await stopSmtp()
  }
}

async function measure(
  o: Options,
  s: Server,
  milter: BenchMilter | undefined,
  size: SmtpSize,
  perSession: number,
  load: typeof nodeLoad,
  round: number,
): Promise<Sample> {
  const { total, probe } = countFor(o, size)
  const roots = [s.pid]
  const isHaraka = s.variant.mta === 'haraka'
  if (isHaraka) resetHwm(roots)
  const cpu0 = cpuMs(roots)
  const m0 = milter ? cpuMs([milter.pid]) : 0
  const r = await load({
    port: s.port,
    concurrency: o.smtpConcurrency,
    total,
    perSession,
    size: SIZE_BYTES[size],
  })
  await s.settle()
  const cpu1 = cpuMs(roots)
  const m1 = milter ? cpuMs([milter.pid]) : 0
  const hwm = isHaraka ? hwmBytes(roots) : NaN
  const lat = await latencyProbe(s.port, probe, perSession, SIZE_BYTES[size])
  await s.settle()
  return {
    variant: s.variant.name,
    size,
    perSession,
    round,
    messages: total,
    perSec: (total / r.ms) * 1000,
    mtaCpu: (cpu1 - cpu0) / total,
    milterCpu: milter ? (m1 - m0) / total : NaN,
    latencies: lat,
    loadLatencies: r.latencies,
    peakRss: hwm,
  }
}
