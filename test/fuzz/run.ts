/**
 * The full fuzz run over the reply decoders and FrameDecoder (properties in
 * ./properties.ts, shared with test/unit/protocol/fuzz.test.ts).
 *
 *   npm run fuzz                               1,000,000 cases, a random seed
 *   npm run fuzz -- --cases 100000 --seed 42   fewer cases, replayable
 *   npm run fuzz -- --only FrameDecoder        targets whose name contains the text
 *
 * Prints the cases run per target, the failures (each with fast-check's
 * report: seed, path, shrunk counterexample), the FrameDecoder decode time
 * per byte on large inputs in 1-byte pieces and in one piece (worst case
 * and median), and the process RSS before and after. Exits 1 on any failure.
 */
import { parseCommandLine } from '../helpers/command-line'
import { allTargets, newStats, timingProbes, type FuzzOutcome } from './properties'

const DEFAULT_CASES = 1_000_000

interface Options {
  cases: number
  seed: number
  only: string | undefined
}

const USAGE = `usage: node dist/test/fuzz/run.js [--cases N] [--seed S] [--only TEXT]
  --cases N     total cases (default 1000000); the large-input target adds 40 per million (6 at least)
  --seed S      fast-check seed (default: random, printed so a run can be replayed)
  --only TEXT   run only the targets whose name contains TEXT`

function parseArgs(argv: readonly string[]): Options {
  const { values: v } = parseCommandLine(
    {
      args: [...argv],
      options: {
        cases: { type: 'string' },
        seed: { type: 'string' },
        only: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    },
    USAGE,
  )
  const o: Options = {
    cases: v.cases === undefined ? DEFAULT_CASES : Number(v.cases),
    seed: v.seed === undefined ? (Date.now() ^ (Math.random() * 0x7fffffff)) | 0 : Number(v.seed),
    only: v.only,
  }
  if (!Number.isInteger(o.cases) || o.cases < 1)
    throw new Error('--cases must be a positive integer')
  if (!Number.isInteger(o.seed)) throw new Error('--seed must be an integer')
  o.seed |= 0
  return o
}

const MiB = 1024 * 1024
const n = (x: number): string => Math.round(x).toLocaleString('en-US')
const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : (s[Math.floor((s.length - 1) / 2)] ?? NaN)
}

function perByte(label: string, xs: readonly number[]): string {
  if (xs.length === 0) return `  ${label}: no case ran`
  const worst = Math.max(...xs)
  return `  ${label}: worst ${worst.toFixed(2)} ns/byte, median ${median(xs).toFixed(2)} ns/byte (${xs.length} inputs)`
}

function main(): number {
  const o = parseArgs(process.argv.slice(2))
  const targets = allTargets().filter((t) => !o.only || t.name.includes(o.only))
  if (targets.length === 0) throw new Error(`no target matches ${o.only}`)
  const stats = newStats()
  const rssBefore = process.memoryUsage().rss
  console.log(
    `fuzz: ${n(o.cases)} cases, seed ${o.seed} (replay: npm run fuzz -- --seed ${o.seed}${o.cases === DEFAULT_CASES ? '' : ` --cases ${o.cases}`})`,
  )
  console.log(`node ${process.version}, RSS before ${mib(rssBefore)}\n`)

  const rows: Array<{ name: string; result: FuzzOutcome; ms: number }> = []
  let total = 0
  let failures = 0
  for (const t of targets) {
    const fixed = t.perMillion > 0 ? Math.max(6, Math.round((o.cases * t.perMillion) / 1e6)) : 0
    const runs = Math.max(1, Math.round(o.cases * t.share) + fixed)
    const started = Date.now()
    const result = t.check(stats, runs, o.seed)
    const ms = Date.now() - started
    rows.push({ name: t.name, result, ms })
    total += result.numRuns
    const outcome = stats.outcomes.get(t.name)
    const split = outcome ? `, ${n(outcome.decoded)} decoded / ${n(outcome.refused)} refused` : ''
    console.log(
      `${result.failed ? 'FAIL' : 'ok  '} ${t.name}: ${n(result.numRuns)} cases${split}, ${(ms / 1000).toFixed(1)} s`,
    )
    console.log(`       ${t.what}`)
    if (result.failed) {
      failures++
      console.log(`\n${result.report ?? 'failed'}\n`)
    }
  }

  timingProbes(stats)
  const rssAfter = process.memoryUsage().rss
  const maxRss = process.resourceUsage().maxRSS * 1024
  console.log('\nsummary')
  for (const r of rows)
    console.log(`  ${r.name.padEnd(44)} ${n(r.result.numRuns).padStart(10)} cases`)
  console.log(`  ${'total'.padEnd(44)} ${n(total).padStart(10)} cases, ${failures} failures`)
  console.log(
    'FrameDecoder decode time per byte, push calls only, over the large-input cases and 4 MiB probes (one frame, small frames):',
  )
  console.log(perByte('1-byte pieces', stats.oneByteNsPerByte))
  console.log(perByte('one piece    ', stats.onePieceNsPerByte))
  const p = stats.maxPending
  console.log(
    `FrameDecoder pending: checked after every push (never above the bytes pushed nor limit + 5); largest ${n(p.bytes)} B, with limit + 5 = ${n(p.bound)} B`,
  )
  console.log(
    `RSS before ${mib(rssBefore)}, after ${mib(rssAfter)} (growth ${mib(rssAfter - rssBefore)}), peak ${mib(maxRss)}`,
  )
  console.log(failures === 0 ? 'fuzz: passed' : `fuzz: ${failures} target(s) FAILED`)
  return failures === 0 ? 0 : 1
}

try {
  process.exitCode = main()
} catch (e) {
  console.error(`fuzz: ${e instanceof Error ? e.message : String(e)}`)
  process.exitCode = 2
}
