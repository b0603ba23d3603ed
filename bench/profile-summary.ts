/**
 * Summarises V8 CPU profiles (.cpuprofile, from `node --cpu-prof`; `npm run bench --
 * --only=smtp --cpu-prof=DIR` writes one per Haraka process): self time by area (this plugin,
 * Haraka, Node, other packages, GC), the top functions by self time overall, in the plugin
 * (dist/lib, dist/plugins) and in Haraka, and the top files. Percentages are of busy time
 * (every sample but "(idle)").
 *
 *   node dist/bench/profile-summary.js FILE.cpuprofile... [--top=N] [--json]
 */
import * as fs from 'node:fs'
import * as path from 'node:path'

import { parseCommandLine } from '../test/helpers/command-line'

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
}
interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}
interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

type Area = 'plugin' | 'haraka' | 'node' | 'packages' | 'gc' | 'program' | 'idle' | 'other'

function areaOf(f: CallFrame): Area {
  const u = f.url
  if (f.functionName === '(garbage collector)') return 'gc'
  if (f.functionName === '(program)') return 'program'
  if (f.functionName === '(idle)') return 'idle'
  if (/\/dist\/(lib|plugins)\//.test(u) && !u.includes('/node_modules/')) return 'plugin'
  if (/\/node_modules\/(Haraka|haraka-[^/]+|@haraka\/[^/]+)\//.test(u)) return 'haraka'
  if (u.startsWith('node:') || (u === '' && f.functionName !== '')) return 'node'
  if (u.includes('/node_modules/')) return 'packages'
  return 'other'
}

/** file:///x/node_modules/Haraka/connection.js -> Haraka/connection.js; dist/lib/... kept. */
function shortUrl(u: string): string {
  const s = u.replace(/^file:\/\//, '')
  const nm = s.lastIndexOf('/node_modules/')
  if (nm >= 0) return s.slice(nm + '/node_modules/'.length)
  const d = s.indexOf('/dist/')
  if (d >= 0) return s.slice(d + 1)
  return s
}

interface Entry {
  key: string
  file: string
  area: Area
  us: number
  /** Self time plus that of the native and node: library code it called (socket writes...). */
  withNative: number
}

/** Native code (a builtin without a script URL), other than GC, program and idle. */
function isNative(f: CallFrame): boolean {
  return f.url === '' && !/^\((garbage collector|program|idle|root)\)$/.test(f.functionName)
}

function keyOf(f: CallFrame): { key: string; file: string } {
  const file = shortUrl(f.url)
  const name = f.functionName || '(anonymous)'
  return { key: f.url ? `${name} ${file}:${f.lineNumber + 1}` : name, file: file || name }
}

function summarise(files: readonly string[]): { total: number; busy: number; fns: Entry[] } {
  const byKey = new Map<string, Entry>()
  let total = 0
  for (const file of files) {
    const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile
    const nodes = new Map(p.nodes.map((n) => [n.id, n]))
    const self = new Map<number, number>()
    // timeDeltas[i + 1] is the time until the next sample: the time of sample i
    for (let i = 0; i < p.samples.length; i++) {
      const dt = p.timeDeltas[i + 1] ?? 0
      self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt)
    }
    const parent = new Map<number, number>()
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
    const entry = (f: CallFrame): Entry => {
      const { key, file } = keyOf(f)
      let e = byKey.get(key)
      if (!e) {
        e = { key, file, area: areaOf(f), us: 0, withNative: 0 }
        byKey.set(key, e)
      }
      return e
    }
    for (const [id, us] of self) {
      const n = nodes.get(id)
      if (!n) continue
      total += us
      entry(n.callFrame).us += us
      // native and node: library time goes to the nearest caller outside them
      let owner: ProfileNode | undefined = n
      while (owner && (isNative(owner.callFrame) || areaOf(owner.callFrame) === 'node')) {
        const up = parent.get(owner.id)
        owner = up === undefined ? undefined : nodes.get(up)
      }
      entry((owner ?? n).callFrame).withNative += us
    }
  }
  const fns = [...byKey.values()].sort((a, b) => b.us - a.us)
  const idle = fns.filter((e) => e.area === 'idle').reduce((s, e) => s + e.us, 0)
  return { total, busy: total - idle, fns }
}

const USAGE = 'usage: node dist/bench/profile-summary.js FILE.cpuprofile|DIR... [--top=N] [--json]'

function main(argv: string[]): number {
  const { values, positionals } = parseCommandLine(
    {
      args: argv,
      options: {
        top: { type: 'string', default: '15' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: true,
    },
    USAGE,
  )
  const top = Number(values.top)
  const json = values.json
  const files: string[] = []
  for (const a of positionals) {
    if (a.endsWith('.cpuprofile')) files.push(a)
    else if (fs.existsSync(a) && fs.statSync(a).isDirectory()) {
      for (const f of fs.readdirSync(a)) if (f.endsWith('.cpuprofile')) files.push(path.join(a, f))
    } else {
      process.stderr.write(`${USAGE}\n`)
      return 2
    }
  }
  if (files.length === 0) {
    process.stderr.write('no .cpuprofile files given\n')
    return 2
  }
  const { total, busy, fns } = summarise(files)
  const pct = (us: number): string => `${((us / busy) * 100).toFixed(1)}%`
  const ms = (us: number): string => `${(us / 1000).toFixed(0)} ms`
  const areas = new Map<Area, number>()
  for (const e of fns) areas.set(e.area, (areas.get(e.area) ?? 0) + e.us)
  const byFile = new Map<string, { area: Area; us: number }>()
  for (const e of fns) {
    if (e.area === 'idle') continue
    const f = byFile.get(e.file)
    if (f) f.us += e.us
    else byFile.set(e.file, { area: e.area, us: e.us })
  }
  const files_ = [...byFile.entries()].sort((a, b) => b[1].us - a[1].us)
  const busyFns = fns.filter((e) => e.area !== 'idle')
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ files, totalMs: total / 1000, busyMs: busy / 1000, areas: Object.fromEntries([...areas].map(([a, us]) => [a, us / 1000])), functions: busyFns.slice(0, 100).map((e) => ({ ...e, ms: e.us / 1000, pctBusy: (e.us / busy) * 100 })) }, null, 2)}\n`,
    )
    return 0
  }
  const out: string[] = []
  out.push(
    `${files.length} profile(s); ${ms(total)} sampled, busy ${ms(busy)} (${((busy / total) * 100).toFixed(0)}%); percentages are of busy time`,
    '',
    'self time by area',
  )
  for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1]))
    if (a !== 'idle') out.push(`  ${a.padEnd(9)} ${pct(us).padStart(6)}  ${ms(us)}`)
  const list = (title: string, entries: readonly Entry[]): void => {
    out.push('', title)
    for (const e of entries.slice(0, top))
      out.push(`  ${pct(e.us).padStart(6)}  ${ms(e.us).padStart(8)}  ${e.key}`)
  }
  const nativeAreas = new Map<Area, number>()
  for (const e of fns) nativeAreas.set(e.area, (nativeAreas.get(e.area) ?? 0) + e.withNative)
  out.push(
    '',
    'self time by area, Node library and native time (socket writes, fs, dns...) counted in the caller',
  )
  for (const [a, us] of [...nativeAreas].sort((x, y) => y[1] - x[1]))
    if (a !== 'idle' && us > 0) out.push(`  ${a.padEnd(9)} ${pct(us).padStart(6)}  ${ms(us)}`)
  list('top functions (self time)', busyFns)
  list(
    'top functions in the plugin (dist/lib, dist/plugins)',
    busyFns.filter((e) => e.area === 'plugin'),
  )
  list(
    'top functions in Haraka (Haraka, haraka-*)',
    busyFns.filter((e) => e.area === 'haraka'),
  )
  const byNative = (area: Area): Entry[] =>
    fns
      .filter((e) => e.area === area && e.withNative > 0)
      .sort((a, b) => b.withNative - a.withNative)
  const listNative = (title: string, entries: readonly Entry[]): void => {
    out.push('', title)
    for (const e of entries.slice(0, top))
      out.push(`  ${pct(e.withNative).padStart(6)}  ${ms(e.withNative).padStart(8)}  ${e.key}`)
  }
  listNative(
    'plugin functions, self + the Node library/native code they called',
    byNative('plugin'),
  )
  listNative(
    'Haraka functions, self + the Node library/native code they called',
    byNative('haraka'),
  )
  listNative('Node library time with no caller outside it (event loop, timers)', byNative('node'))
  out.push('', 'top files (self time)')
  for (const [f, v] of files_.slice(0, top))
    out.push(`  ${pct(v.us).padStart(6)}  ${ms(v.us).padStart(8)}  ${v.area.padEnd(8)}  ${f}`)
  process.stdout.write(`${out.join('\n')}\n`)
  return 0
}

try {
  process.exitCode = main(process.argv.slice(2))
} catch (e) {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`)
  process.exitCode = 2
}
