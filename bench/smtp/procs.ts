/**
 * CPU time and memory of processes, from /proc: utime+stime of a process and its live
 * descendants plus the cutime+cstime of the root (children that exited and were reaped), RSS
 * and its high-water mark (VmHWM, reset through /proc/PID/clear_refs).
 */
import * as fs from 'node:fs'

/** Clock ticks per second of /proc/PID/stat (getconf CLK_TCK; 100 on Linux everywhere). */
const CLK_TCK = 100

interface Stat {
  pid: number
  ppid: number
  /** utime + stime, ticks. */
  self: number
  /** cutime + cstime (reaped children), ticks. */
  children: number
}

function readStat(pid: number): Stat | undefined {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1')
  } catch {
    return undefined
  }
  // the command name is in parentheses and may hold spaces: split after the last ')'
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // f[0] is field 3 (state); field k is f[k - 3]
  const num = (k: number): number => Number(f[k - 3])
  return { pid, ppid: num(4), self: num(14) + num(15), children: num(16) + num(17) }
}

/** Every process's parent, from one pass over /proc. */
function parentMap(): Map<number, number[]> {
  const kids = new Map<number, number[]>()
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const s = readStat(Number(name))
    if (!s) continue
    const list = kids.get(s.ppid)
    if (list) list.push(s.pid)
    else kids.set(s.ppid, [s.pid])
  }
  return kids
}

/** `root` and its live descendants. */
export function processTree(root: number): number[] {
  const kids = parentMap()
  const out: number[] = []
  const todo = [root]
  while (todo.length > 0) {
    const p = todo.pop()!
    out.push(p)
    for (const k of kids.get(p) ?? []) todo.push(k)
  }
  return out
}

/**
 * CPU ms used so far by each root and its descendants: live processes' own time, plus the
 * reaped children's time that the kernel adds to their parents. A process that exits between
 * two readings and whose parent has reaped it is counted through the parent.
 */
export function cpuMs(roots: readonly number[]): number {
  const kids = parentMap()
  let ticks = 0
  const seen = new Set<number>()
  const todo = [...roots]
  while (todo.length > 0) {
    const p = todo.pop()!
    if (seen.has(p)) continue
    seen.add(p)
    const s = readStat(p)
    if (!s) continue
    ticks += s.self + s.children
    for (const k of kids.get(p) ?? []) todo.push(k)
  }
  return (ticks * 1000) / CLK_TCK
}

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(
      fs.readFileSync(`/proc/${pid}/status`, 'latin1'),
    )
    return m ? Number(m[1]) : 0
  } catch {
    return 0
  }
}

/** RSS of each process in the trees, summed, in bytes. */
export function rssBytes(roots: readonly number[]): number {
  let kib = 0
  for (const r of roots) for (const p of processTree(r)) kib += statusKiB(p, 'VmRSS')
  return kib * 1024
}

/** Sum over the trees of each process's VmHWM (peak RSS since start or the last reset), bytes. */
export function hwmBytes(roots: readonly number[]): number {
  let kib = 0
  for (const r of roots) for (const p of processTree(r)) kib += statusKiB(p, 'VmHWM')
  return kib * 1024
}

/** Resets VmHWM to the current RSS (writing 5 to clear_refs; needs the right to). */
export function resetHwm(roots: readonly number[]): boolean {
  let ok = true
  for (const r of roots)
    for (const p of processTree(r)) {
      try {
        fs.writeFileSync(`/proc/${p}/clear_refs`, '5')
      } catch {
        ok = false
      }
    }
  return ok
}
