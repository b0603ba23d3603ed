/**
 * Why the C no-op milter (bench/milters/noop.c, libmilter) spends more CPU per message behind
 * one MTA than behind another (`node dist/bench/milter-wait.js`): the same milter process serves
 * Haraka + plugin and Postfix, each loaded by smtp-source as in the goals table, and for each it
 * prints
 *
 * - from /proc, interleaved rounds: the milter's user and system CPU per message, and the
 *   wake-ups and CPU of libmilter's pool controller (the thread polling idle sessions, found as
 *   the one in poll() with its 10 s timeout);
 * - from `perf stat -p` (when perf is installed) over one more run each: CPU, context switches,
 *   page faults, and the system calls that tell the pool's work apart: clone3 (a worker thread
 *   started because none was idle), write (a worker handing a session back to the controller
 *   through its pipe), futex, poll, read, writev;
 * - from `strace -f -tt -T -xx` attached for a shorter run: the system calls per message by
 *   kind, and per command answered, how often libmilter's 1 ms wait for the next command
 *   (mi_rd_socket_ready: poll(fd, 1 ms)) ran out. When it runs out the worker hands the session
 *   back to the controller (a write to its pipe, a poll over every idle session, a condition
 *   signal to wake a worker, or a new thread when none is idle): several context switches for
 *   one command. The BODY reads: reads per data-bearing packet and the reads that returned less
 *   than asked (a body chunk arriving in pieces).
 *
 *   node dist/bench/milter-wait.js [--size=2k|100k|10m] [--messages=N] [--rounds=R]
 *     [--concurrency=C] [--trace-messages=N] [--before=DIR]
 *
 * --before=DIR adds Haraka with the plugin built in DIR (as bench.js --before).
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { parseCommandLine } from '../test/helpers/command-line'
import { MiB, median } from './stats'
import { nodeLoad, smtpSourceLoad } from './smtp/load'
import { startNoop, stopBenchMilters } from './smtp/milters'
import { postfixMissing } from './smtp/postfix'
import {
  beforeTwin,
  startHarakaServer,
  startPostfixServer,
  type Server,
  type Variant,
} from './smtp/servers'
import { formatColumns } from './report'

const USAGE = `usage: node dist/bench/milter-wait.js [flags]
  --size=S              message size: 2k, 100k or 10m (default 2k)
  --messages=N          messages per /proc round (default 1000; 10m: a fiftieth, at least 20)
  --rounds=R            interleaved /proc rounds (default 3)
  --concurrency=C       smtp-source sessions at a time (default 20, as the goals table)
  --trace-messages=N    messages under strace per MTA (default 200; 10m: 10)
  --before=DIR          also Haraka with the plugin built in DIR
  --keep-traces=DIR     keep the raw strace output there (one file per MTA)`

const SIZES: Record<string, number> = { '2k': 2 * 1024, '100k': 100 * 1024, '10m': 10 * MiB }

const CLK_TCK = 100

/** utime and stime of a process (all its threads, live and exited), ms. */
function cpuSplit(pid: number): { user: number; sys: number } {
  const t = fs.readFileSync(`/proc/${pid}/stat`, 'latin1')
  const f = t.slice(t.lastIndexOf(')') + 2).split(' ')
  return {
    user: (Number(f[11]) * 1000) / CLK_TCK,
    sys: (Number(f[12]) * 1000) / CLK_TCK,
  }
}

/** libmilter's pool controller: the thread in poll() (7) with the 10 s timeout (0x2710). */
function controllerTid(pid: number): number | undefined {
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const sc = fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'latin1').trim().split(' ')
      if (sc[0] === '7' && sc[3] === '0x2710') return Number(tid)
    } catch {
      // gone
    }
  }
  return undefined
}

/** A thread's voluntary context switches and CPU ms. */
function threadFigures(pid: number, tid: number): { wakeups: number; cpu: number } {
  const st = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'latin1')
  const t = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1')
  const f = t.slice(t.lastIndexOf(')') + 2).split(' ')
  return {
    wakeups: Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(st)?.[1] ?? NaN),
    cpu: ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK,
  }
}

interface ProcSample {
  user: number
  sys: number
  ctlWakeups: number
  ctlCpu: number
}

async function procRound(
  s: Server,
  milterPid: number,
  n: number,
  conc: number,
  size: number,
): Promise<ProcSample> {
  const ctl = controllerTid(milterPid)
  const a = cpuSplit(milterPid)
  const ca = ctl === undefined ? undefined : threadFigures(milterPid, ctl)
  await smtpSourceLoad({ port: s.port, concurrency: conc, total: n, perSession: 1, size })
  await s.settle()
  // libmilter finishes a connection after QUIT in its own thread: give it a moment
  await new Promise((resolve) => setTimeout(resolve, 300))
  const b = cpuSplit(milterPid)
  const cb = ctl === undefined ? undefined : threadFigures(milterPid, ctl)
  return {
    user: (b.user - a.user) / n,
    sys: (b.sys - a.sys) / n,
    ctlWakeups: ca && cb ? (cb.wakeups - ca.wakeups) / n : NaN,
    ctlCpu: ca && cb ? (cb.cpu - ca.cpu) / n : NaN,
  }
}

// ---------------------------------------------------------------------------
// perf stat

const PERF_EVENTS = [
  'task-clock',
  'context-switches',
  'cpu-migrations',
  'page-faults',
  ...['clone3', 'poll', 'read', 'futex', 'write', 'writev'].map((c) => `syscalls:sys_enter_${c}`),
]

/** `perf stat -p` over one load run: each event per message (undefined without perf). */
async function perfRun(
  s: Server,
  milterPid: number,
  n: number,
  conc: number,
  size: number,
): Promise<Map<string, number> | undefined> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-wait-'))
  const out = path.join(dir, 'stat')
  const pr = spawn(
    'perf',
    ['stat', '-x', ',', '-e', PERF_EVENTS.join(','), '-o', out, '-p', String(milterPid)],
    {
      stdio: 'ignore',
    },
  )
  const failed = await Promise.race([
    once(pr, 'error').then(() => true),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 300)),
  ])
  if (failed || pr.exitCode !== null) {
    fs.rmSync(dir, { recursive: true, force: true })
    return undefined
  }
  try {
    await smtpSourceLoad({ port: s.port, concurrency: conc, total: n, perSession: 1, size })
    await s.settle()
    await new Promise((resolve) => setTimeout(resolve, 300))
  } finally {
    const exited = once(pr, 'exit')
    pr.kill('SIGINT')
    await exited
  }
  const figures = new Map<string, number>()
  // CSV: value,unit,event,...
  for (const line of fs.readFileSync(out, 'utf8').split('\n')) {
    const f = line.split(',')
    const value = Number(f[0])
    const event = f[2]
    if (event !== undefined && Number.isFinite(value))
      figures.set(event.replace('syscalls:sys_enter_', ''), value / n)
  }
  fs.rmSync(dir, { recursive: true, force: true })
  return figures.size > 0 ? figures : undefined
}

// ---------------------------------------------------------------------------
// strace

/** What one strace run saw, per message. */
interface Trace {
  calls: Map<string, number>
  /** Per command letter answered: the 1 ms waits that followed it, and those that ran out. */
  waits: Map<string, { waits: number; ranOut: number }>
  /** Data reads (more than the 5-byte head asked) and those that returned less than asked. */
  dataReads: number
  shortReads: number
  /** Packets with data (head read announcing more than the command byte). */
  dataPackets: number
  messages: number
}

const COMMANDS: Record<string, string> = {
  O: 'optneg',
  C: 'connect',
  H: 'helo',
  M: 'mail',
  R: 'rcpt',
  T: 'data',
  L: 'header',
  N: 'eoh',
  B: 'body',
  E: 'eob',
  A: 'abort',
  Q: 'quit',
  D: 'macro',
  U: 'unknown',
}

/** "\x00\x00\x00\x01\x4f" -> bytes (strace -xx prints every byte as \xNN). */
function hexBytes(s: string): number[] {
  const out: number[] = []
  for (const m of s.matchAll(/\\x([0-9a-f]{2})/g)) out.push(parseInt(m[1] as string, 16))
  return out
}

/** Parses `strace -f -tt -T -xx` output (unfinished / resumed calls joined per thread). */
function parseTrace(text: string, messages: number): Trace {
  const t: Trace = {
    calls: new Map(),
    waits: new Map(),
    dataReads: 0,
    shortReads: 0,
    dataPackets: 0,
    messages,
  }
  const pending = new Map<string, string>()
  const lastCmd = new Map<string, string>()
  /** Per thread: data bytes of the packet whose head it read, not yet read. */
  const remaining = new Map<string, number>()
  const bump = (k: string): void => {
    t.calls.set(k, (t.calls.get(k) ?? 0) + 1)
  }
  for (const raw of text.split('\n')) {
    const m = /^(\d+)\s+[\d:.]+\s+(.*)$/.exec(raw)
    if (!m) continue
    const tid = m[1] as string
    let call = m[2] as string
    if (call.endsWith('<unfinished ...>')) {
      pending.set(tid, call.slice(0, -'<unfinished ...>'.length).trimEnd())
      continue
    }
    const resumed = /^<\.\.\. \w+ resumed>(.*)$/.exec(call)
    if (resumed) {
      call = `${pending.get(tid) ?? ''} ${(resumed[1] as string).trimStart()}`
      pending.delete(tid)
    }
    const c = /^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)/.exec(call)
    if (!c) continue
    const name = c[1] as string
    const args = c[2] as string
    const ret = Number(c[3])
    bump(name)
    if (name === 'read') {
      const r = /^\d+,\s*"([^"]*)"(?:\.\.\.)?, (\d+)$/.exec(args)
      if (!r) continue
      const asked = Number(r[2])
      const left = remaining.get(tid) ?? 0
      if (left > 0) {
        t.dataReads++
        if (ret > 0 && ret < asked) t.shortReads++
        remaining.set(tid, left - Math.max(ret, 0))
      } else if (asked === 5 && ret === 5) {
        const b = hexBytes(r[1] as string)
        if (b.length === 5) {
          // the 4-byte length counts the command byte
          const len =
            (b[0] as number) * 2 ** 24 + ((b[1] as number) << 16) + ((b[2] as number) << 8)
          const data = len + (b[3] as number) - 1
          lastCmd.set(tid, String.fromCharCode(b[4] as number))
          if (data > 0) {
            t.dataPackets++
            remaining.set(tid, data)
          }
        }
      }
    } else if (name === 'poll' && /\],\s*1,\s*1\s*$/.test(args)) {
      // mi_rd_socket_ready: up to 1 ms for the next command
      const cmd = COMMANDS[lastCmd.get(tid) ?? ''] ?? '?'
      const w = t.waits.get(cmd) ?? { waits: 0, ranOut: 0 }
      w.waits++
      if (ret === 0) w.ranOut++
      t.waits.set(cmd, w)
    }
  }
  return t
}

async function traceRun(
  s: Server,
  milterPid: number,
  n: number,
  conc: number,
  size: number,
  keep: string | undefined,
): Promise<Trace | undefined> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-wait-'))
  const out = path.join(dir, 'trace')
  const st = spawn(
    'strace',
    ['-f', '-tt', '-T', '-xx', '-s', '5', '-o', out, '-p', String(milterPid)],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let err = ''
  st.stderr.on('data', (d: Buffer) => (err += d.toString()))
  const failed = await Promise.race([
    once(st, 'error').then(() => true),
    new Promise<boolean>((resolve) => {
      const poll = setInterval(() => {
        if (/attached/.test(err)) {
          clearInterval(poll)
          resolve(false)
        }
      }, 20)
    }),
  ])
  if (failed) return undefined
  try {
    await smtpSourceLoad({ port: s.port, concurrency: conc, total: n, perSession: 1, size })
    await s.settle()
    await new Promise((resolve) => setTimeout(resolve, 300))
  } finally {
    const exited = once(st, 'exit')
    st.kill('SIGINT')
    await exited
  }
  const t = parseTrace(fs.readFileSync(out, 'utf8'), n)
  if (keep !== undefined) {
    fs.mkdirSync(keep, { recursive: true })
    fs.copyFileSync(out, path.join(keep, `${s.variant.name}.strace`))
  }
  fs.rmSync(dir, { recursive: true, force: true })
  return t
}

// ---------------------------------------------------------------------------
// Printing

function table(head: string[], rows: string[][]): void {
  for (const l of formatColumns(head, rows)) console.log(l)
}

const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-')
const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : '-')

function printTraces(names: string[], traces: Trace[]): void {
  const per = (t: Trace, x: number): number => x / t.messages
  const calls = [...new Set(traces.flatMap((t) => [...t.calls.keys()]))].sort(
    (a, b) =>
      traces.reduce((s, t) => s + (t.calls.get(b) ?? 0), 0) -
      traces.reduce((s, t) => s + (t.calls.get(a) ?? 0), 0),
  )
  const rows = calls.map((c) => [c, ...traces.map((t) => f2(per(t, t.calls.get(c) ?? 0)))])
  const sum = (t: Trace): number => [...t.calls.values()].reduce((s, x) => s + x, 0)
  rows.push(['total', ...traces.map((t) => f2(per(t, sum(t))))])
  table(['milter syscalls per message (strace -f)', ...names], rows)
  console.log('')
  const cmds = [...new Set(traces.flatMap((t) => [...t.waits.keys()]))].sort()
  const wrows = cmds.map((c) => [
    c,
    ...traces.map((t) => {
      const w = t.waits.get(c)
      return w ? `${f2(per(t, w.ranOut))} / ${f2(per(t, w.waits))}` : '-'
    }),
  ])
  const ran = (t: Trace): number => [...t.waits.values()].reduce((s, w) => s + w.ranOut, 0)
  const all = (t: Trace): number => [...t.waits.values()].reduce((s, w) => s + w.waits, 0)
  wrows.push(['total', ...traces.map((t) => `${f2(per(t, ran(t)))} / ${f2(per(t, all(t)))}`)])
  table(['1 ms waits ran out / waits, per message, by command answered', ...names], wrows)
  console.log('')
  table(
    ['BODY and other data reads, per message', ...names],
    [
      ['packets with data', ...traces.map((t) => f2(per(t, t.dataPackets)))],
      ['data reads', ...traces.map((t) => f2(per(t, t.dataReads)))],
      ['short reads (less than asked)', ...traces.map((t) => f2(per(t, t.shortReads)))],
    ],
  )
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const parsed = parseCommandLine(
    {
      args: process.argv.slice(2),
      options: {
        size: { type: 'string', default: '2k' },
        messages: { type: 'string' },
        rounds: { type: 'string', default: '3' },
        concurrency: { type: 'string', default: '20' },
        'trace-messages': { type: 'string' },
        before: { type: 'string' },
        'keep-traces': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    },
    USAGE,
  )
  const v = parsed.values
  const sizeName = v.size ?? '2k'
  const size = SIZES[sizeName]
  if (size === undefined) throw new Error(`--size: 2k, 100k or 10m`)
  const big = sizeName === '10m'
  const n = Number(v.messages ?? (big ? 20 : 1000))
  const rounds = Number(v.rounds)
  const conc = Number(v.concurrency)
  const traceN = Number(v['trace-messages'] ?? (big ? 10 : 200))
  const missing = postfixMissing()
  if (missing) throw new Error(missing)

  const milter = await startNoop('wait')
  const servers: Array<{ name: string; s: Server }> = []
  try {
    const hv: Variant = { name: 'haraka+noop', mta: 'haraka', milter: 'noop', base: 'haraka' }
    servers.push({ name: 'Haraka', s: await startHarakaServer(hv, milter.socket) })
    if (v.before !== undefined)
      servers.push({
        name: 'Haraka before',
        s: await startHarakaServer(beforeTwin(hv, path.resolve(v.before)), milter.socket),
      })
    servers.push({
      name: 'Postfix',
      s: await startPostfixServer(
        { name: 'postfix+noop', mta: 'postfix', milter: 'noop', base: 'postfix' },
        milter.socket,
      ),
    })
    for (const { s } of servers) {
      await nodeLoad({ port: s.port, concurrency: 4, total: 100, perSession: 1, size: 2048 })
      await s.settle()
    }
    const samples = new Map<string, ProcSample[]>(servers.map(({ name }) => [name, []]))
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < servers.length; i++) {
        const { name, s } = servers[(i + r) % servers.length] as { name: string; s: Server }
        const x = await procRound(s, milter.pid, n, conc, size)
        samples.get(name)?.push(x)
        console.error(
          `  round ${r + 1} ${name}: user ${f3(x.user)} sys ${f3(x.sys)} ms/msg, ` +
            `controller ${f2(x.ctlWakeups)} wake-ups ${f3(x.ctlCpu)} ms/msg`,
        )
      }
    }
    console.log(
      `== ${sizeName}, smtp-source ${conc} sessions, one message each; /proc: median of ${rounds} ` +
        `interleaved rounds of ${n} ==`,
    )
    const names = servers.map(({ name }) => name)
    const med = (name: string, k: keyof ProcSample): number =>
      median((samples.get(name) ?? []).map((x) => x[k]))
    table(
      ['milter per message (/proc)', ...names],
      [
        ['CPU ms', ...names.map((x) => f3(med(x, 'user') + med(x, 'sys')))],
        ['  user ms', ...names.map((x) => f3(med(x, 'user')))],
        ['  system ms', ...names.map((x) => f3(med(x, 'sys')))],
        ['pool controller wake-ups', ...names.map((x) => f2(med(x, 'ctlWakeups')))],
        ['pool controller CPU ms', ...names.map((x) => f3(med(x, 'ctlCpu')))],
      ],
    )
    console.log('')
    const stats: Array<Map<string, number>> = []
    for (const { s } of servers) {
      const st = await perfRun(s, milter.pid, n, conc, size)
      if (st) stats.push(st)
    }
    if (stats.length === servers.length) {
      const label: Record<string, string> = {
        'task-clock': 'CPU ms (task-clock)',
        'context-switches': 'context switches',
        'cpu-migrations': 'CPU migrations',
        'page-faults': 'page faults',
        clone3: 'clone3 (new worker threads)',
        write: 'write (hand-offs to the controller)',
      }
      table(
        [`milter per message (perf stat -p, ${n} messages)`, ...names],
        [...(stats[0] as Map<string, number>).keys()].map((k) => [
          label[k] ?? k,
          ...stats.map((st) => f2(st.get(k) ?? NaN)),
        ]),
      )
      console.log('')
    } else console.log('perf not usable here: no perf stat figures\n')
    const traces: Trace[] = []
    for (const { s } of servers) {
      const t = await traceRun(s, milter.pid, traceN, conc, size, v['keep-traces'])
      if (!t) {
        console.log('strace not found: no system call figures')
        return
      }
      traces.push(t)
    }
    console.log(`strace -f attached, ${traceN} messages per MTA (slower under strace):`)
    printTraces(names, traces)
  } finally {
    for (const { s } of servers) await s.stop()
    await stopBenchMilters()
  }
}

main().catch((e: unknown) => {
  console.error(e)
  process.exit(1)
})
