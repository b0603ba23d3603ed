/** Figures, notes and tables as the benchmarks record them, and their output. */
import * as os from 'node:os'

import { SECTIONS, SECTION_TITLES, type Options, type Section } from './args'

export interface Figure {
  section: Section
  name: string
  value: number
  unit: string
  /** What was measured, in words. */
  measured: string
}

/** A table of its own (the smtp section): cells already formatted, plus the raw rows. */
export interface Table {
  section: Section
  title: string
  header: string[]
  rows: string[][]
  /** Lines printed under the table. */
  legend: string[]
  /** The same rows as numbers, for --json. */
  data: unknown[]
}

export interface Machine {
  nproc: number
  cpu: string
  node: string
  platform: string
  totalMemGiB: number
}

export const figures: Figure[] = []
export const notes: string[] = []
export const tables: Table[] = []

let jsonMode = false

export function setJsonMode(on: boolean): void {
  jsonMode = on
}

export function isJsonMode(): boolean {
  return jsonMode
}

/** Progress on stderr (not in JSON mode). */
export function progress(text: string): void {
  if (!jsonMode) process.stderr.write(`${text}\n`)
}

export function record(
  section: Section,
  name: string,
  value: number,
  unit: string,
  measured: string,
): void {
  figures.push({ section, name, value, unit, measured })
  progress(`  .. ${name}: ${fmt(value)} ${unit}`)
}

export function note(text: string): void {
  notes.push(text)
  progress(`  !! ${text}`)
}

export function addTable(t: Table): void {
  tables.push(t)
}

/** A count, with thousands separators. */
export function n(v: number): string {
  return Math.round(v).toLocaleString('en-US')
}

export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v)
  const a = Math.abs(v)
  if (a >= 1000) return Math.round(v).toLocaleString('en-US')
  if (a >= 100) return v.toFixed(0)
  if (a >= 10) return v.toFixed(1)
  if (a >= 1) return v.toFixed(2)
  if (a === 0) return '0'
  return v.toPrecision(2)
}

export function machine(): Machine {
  return {
    nproc: os.availableParallelism(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    totalMemGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
  }
}

/** Columns padded to their widest cell; numbers (and '-') right-aligned. */
export function formatColumns(header: readonly string[], rows: readonly string[][]): string[] {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const right = header.map((_, i) =>
    rows.every((r) => /^[-+~]?[\d.,]*[\d-][\d.,%x±() ]*$|^$|^-$|^n\/a$/.test(r[i] ?? '')),
  )
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (right[i] ? c.padStart(w[i]!) : c.padEnd(w[i]!)))
      .join('  ')
      .trimEnd()
  return [line(header), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)]
}

export function printTable(m: Machine, o: Options): void {
  const out: string[] = []
  out.push(
    `haraka-plugin-milter benchmarks (${o.quick ? 'quick' : 'full'} run)`,
    `machine: nproc ${m.nproc}, ${m.cpu}, ${m.totalMemGiB} GiB RAM, ${m.platform}, node ${m.node}`,
    '',
  )
  const nameW = Math.max(...figures.map((f) => f.name.length), 6)
  const valW = Math.max(...figures.map((f) => fmt(f.value).length), 5)
  const unitW = Math.max(...figures.map((f) => f.unit.length), 4)
  for (const s of SECTIONS) {
    const rows = figures.filter((f) => f.section === s)
    const own = tables.filter((t) => t.section === s)
    if (rows.length === 0 && own.length === 0) continue
    out.push(SECTION_TITLES[s])
    if (rows.length > 0) {
      out.push(
        `  ${'figure'.padEnd(nameW)}  ${'value'.padStart(valW)}  ${'unit'.padEnd(unitW)}  what was measured`,
      )
      out.push(
        `  ${'-'.repeat(nameW)}  ${'-'.repeat(valW)}  ${'-'.repeat(unitW)}  ${'-'.repeat(17)}`,
      )
      for (const f of rows) {
        out.push(
          `  ${f.name.padEnd(nameW)}  ${fmt(f.value).padStart(valW)}  ${f.unit.padEnd(unitW)}  ${f.measured}`,
        )
      }
    }
    for (const t of own) {
      if (rows.length > 0) out.push('')
      out.push(`  ${t.title}`)
      for (const l of formatColumns(t.header, t.rows)) out.push(`  ${l}`)
      for (const l of t.legend) out.push(`  ${l}`)
    }
    out.push('')
  }
  if (notes.length > 0) {
    out.push('Notes')
    for (const t of notes) out.push(`  - ${t}`)
    out.push('')
  }
  process.stdout.write(out.join('\n'))
}
