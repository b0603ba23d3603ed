/**
 * What each milter client sends, Haraka + plugin beside Postfix (`node dist/bench/wire.js`):
 * the same messages (bench/smtp/load.ts buildMessage, 2 KB and 100 KB, one per SMTP session)
 * through each MTA to the same C no-op milter (bench/milters/noop.c), through a recording TCP
 * proxy of our own per MTA. Per message it prints the packets by command (count, bytes with
 * their 4-byte length), the macros sent per stage, the BODY chunk sizes and the reads the proxy
 * saw per stage (with TCP_NODELAY on the client and the proxy reading at once, about one per
 * client write(); writes that arrive together count once, so it is a lower bound), then the
 * differences. Then, without the proxy, the milter's CPU per message behind each MTA (/proc,
 * interleaved rounds).
 *
 *   node dist/bench/wire.js [--messages=N] [--cpu-messages=N] [--rounds=R] [--sizes=2k,100k]
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { decodeCommand } from '../lib/protocol/commands'
import { MACRO_STAGE_NAMES } from '../lib/protocol/constants'
import { FrameDecoder } from '../lib/protocol/frame'
import { POSTFIX_DEFAULT_MACROS } from '../lib/session/macros'
import { SmtpClient } from '../test/helpers/smtp-client'
import { buildMessage, FROM, TO } from './smtp/load'
import { startNoop, stopBenchMilters } from './smtp/milters'
import { postfixMissing } from './smtp/postfix'
import { cpuMs } from './smtp/procs'
import { startHarakaServer, startPostfixServer, type Server } from './smtp/servers'
import { formatColumns } from './report'

// ---------------------------------------------------------------------------
// The recording proxy

/** What one client sent over all its connections. */
interface Recording {
  /** Per command name: packets and bytes (length field included). */
  packets: Map<string, { count: number; bytes: number }>
  /** Per macro stage letter: the set of name lists seen ("j {daemon_name} ..."). */
  macros: Map<string, Map<string, number>>
  /** Sizes of the BODY packets' data. */
  bodyChunks: number[]
  /** Reads per stage (the command of the last frame the read completed). */
  reads: Map<string, number>
  connections: number
}

function newRecording(): Recording {
  return { packets: new Map(), macros: new Map(), bodyChunks: [], reads: new Map(), connections: 0 }
}

function bump<K>(m: Map<K, number>, k: K, by = 1): void {
  m.set(k, (m.get(k) ?? 0) + by)
}

function record(rec: Recording, chunk: Buffer, decoder: FrameDecoder): void {
  let last = 'partial'
  for (const frame of decoder.push(chunk)) {
    const c = decodeCommand(frame)
    let name: string = c.cmd
    if (c.cmd === 'macro') {
      const stage = String.fromCharCode(c.stageCmd)
      name = `macro ${stage}`
      const names = c.pairs.map(([k]) => k.toString()).join(' ')
      let lists = rec.macros.get(stage)
      if (!lists) rec.macros.set(stage, (lists = new Map()))
      bump(lists, names)
    }
    if (c.cmd === 'body') rec.bodyChunks.push(c.chunk.length)
    const p = rec.packets.get(name) ?? { count: 0, bytes: 0 }
    p.count++
    p.bytes += 5 + frame.data.length
    rec.packets.set(name, p)
    last = c.cmd === 'macro' ? `macro ${String.fromCharCode(c.stageCmd)}` : c.cmd
  }
  bump(rec.reads, last)
}

interface Proxy {
  port: number
  rec: Recording
  reset(): void
  close(): Promise<void>
}

async function startProxy(targetPort: number): Promise<Proxy> {
  const state = { rec: newRecording() }
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    state.rec.connections++
    const decoder = new FrameDecoder()
    const upstream = net.connect(targetPort, '127.0.0.1')
    for (const s of [client, upstream]) {
      s.setNoDelay(true)
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => {
        client.destroy()
        upstream.destroy()
      })
    }
    client.on('data', (chunk: Buffer) => {
      record(state.rec, chunk, decoder)
      upstream.write(chunk)
    })
    upstream.on('data', (chunk: Buffer) => client.write(chunk))
    client.on('end', () => upstream.end())
    upstream.on('end', () => client.end())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    port: (server.address() as net.AddressInfo).port,
    get rec() {
      return state.rec
    },
    reset: () => (state.rec = newRecording()),
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

// ---------------------------------------------------------------------------
// SMTP

async function sendOne(port: number, size: number, seq: number): Promise<void> {
  const c = await SmtpClient.connect('127.0.0.1', port, { timeoutMs: 30_000 })
  try {
    await c.command('EHLO wire.example.com')
    await c.command(`MAIL FROM:<${FROM}>`)
    await c.command(`RCPT TO:<${TO}>`)
    const d = await c.command('DATA')
    if (d.code !== 354) throw new Error(`port ${port}: DATA ${d.raw}`)
    c.send(buildMessage(size, seq))
    const r = await c.readReply()
    if (r.code !== 250) throw new Error(`port ${port}: final reply ${r.raw}`)
    await c.quit()
  } finally {
    await c.close()
  }
}

// ---------------------------------------------------------------------------
// Printing

function table(head: string[], rows: string[][]): void {
  for (const l of formatColumns(head, rows)) console.log(l)
}

const per = (n: number, msgs: number): string => {
  const v = n / msgs
  return Number.isInteger(v) ? String(v) : v.toFixed(2)
}

function printPackets(h: Recording, p: Recording, msgs: number): void {
  const names = [...new Set([...h.packets.keys(), ...p.packets.keys()])].sort()
  const rows = names.map((n) => {
    const a = h.packets.get(n) ?? { count: 0, bytes: 0 }
    const b = p.packets.get(n) ?? { count: 0, bytes: 0 }
    const diff = a.count !== b.count || a.bytes !== b.bytes ? '<-' : ''
    return [
      n,
      per(a.count, msgs),
      per(a.bytes, msgs),
      per(b.count, msgs),
      per(b.bytes, msgs),
      per(h.reads.get(n) ?? 0, msgs),
      per(p.reads.get(n) ?? 0, msgs),
      diff,
    ]
  })
  const total = (r: Recording, f: 'count' | 'bytes'): number =>
    [...r.packets.values()].reduce((s, x) => s + x[f], 0)
  const reads = (r: Recording): number => [...r.reads.values()].reduce((s, x) => s + x, 0)
  rows.push([
    'total',
    per(total(h, 'count'), msgs),
    per(total(h, 'bytes'), msgs),
    per(total(p, 'count'), msgs),
    per(total(p, 'bytes'), msgs),
    per(reads(h), msgs),
    per(reads(p), msgs),
    '',
  ])
  table(
    [
      'command (per message)',
      'Haraka pkts',
      'bytes',
      'Postfix pkts',
      'bytes',
      'Haraka reads',
      'Postfix reads',
      '',
    ],
    rows,
  )
}

function printMacros(h: Recording, p: Recording): void {
  const stages = [...new Set([...h.macros.keys(), ...p.macros.keys()])].sort()
  const lists = (r: Recording, s: string): string =>
    [...(r.macros.get(s)?.keys() ?? [])].join(' | ') || '(none)'
  for (const s of stages) {
    const a = lists(h, s)
    const b = lists(p, s)
    console.log(`macros ${s}: Haraka : ${a}`)
    console.log(
      `${' '.repeat(`macros ${s}:`.length)} Postfix: ${b}${a === b ? '' : '   <- differs'}`,
    )
  }
}

function chunkSummary(xs: readonly number[]): string {
  const counts = new Map<number, number>()
  for (const x of xs) bump(counts, x)
  return [...counts]
    .sort((a, b) => b[0] - a[0])
    .map(([size, n]) => `${n}x${size}`)
    .join(' ')
}

// ---------------------------------------------------------------------------
// Main

/** Postfix's default macro lists (lib/session/macros.ts POSTFIX_DEFAULT_MACROS) as milter keys. */
const POSTFIX_MACRO_KEYS = [...POSTFIX_DEFAULT_MACROS].map(
  ([stage, names]) => `macros.${MACRO_STAGE_NAMES[stage]} = ${names.join(' ')}`,
)

interface Args {
  messages: number
  cpuMessages: number
  rounds: number
  sizes: Array<[string, number]>
}

const SIZES: Record<string, number> = { '2k': 2 * 1024, '100k': 100 * 1024 }

function parseArgs(argv: readonly string[]): Args {
  const a: Args = {
    messages: 5,
    cpuMessages: 200,
    rounds: 3,
    sizes: Object.entries(SIZES),
  }
  for (const arg of argv) {
    const [k, v = ''] = arg.split('=', 2) as [string, string?]
    if (k === '--messages') a.messages = Number(v)
    else if (k === '--cpu-messages') a.cpuMessages = Number(v)
    else if (k === '--rounds') a.rounds = Number(v)
    else if (k === '--sizes')
      a.sizes = v.split(',').map((s) => {
        const n = SIZES[s]
        if (n === undefined) throw new Error(`unknown size ${s} (2k, 100k)`)
        return [s, n]
      })
    else throw new Error(`unknown argument ${arg}`)
  }
  return a
}

/** Sends `n` messages, `conc` sessions at a time; returns the milter's CPU ms per message. */
async function milterCpu(
  port: number,
  milterPid: number,
  size: number,
  n: number,
  conc: number,
): Promise<number> {
  const before = cpuMs([milterPid])
  let next = 0
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (next < n) await sendOne(port, size, next++)
    }),
  )
  // libmilter finishes a connection after QUIT in its own thread: give it a moment
  await new Promise((resolve) => setTimeout(resolve, 200))
  return (cpuMs([milterPid]) - before) / n
}

/**
 * The milter's system calls per message behind one MTA: `strace -f -c` attached to the milter
 * for `n` messages (one at a time), then stopped by its PID. Undefined when strace is missing.
 */
async function milterSyscalls(
  port: number,
  milterPid: number,
  size: number,
  n: number,
): Promise<Map<string, number> | undefined> {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wire-strace-')), 'summary')
  const st = spawn('strace', ['-f', '-c', '-o', out, '-p', String(milterPid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let err = ''
  st.stderr.on('data', (d: Buffer) => (err += d.toString()))
  const failed = await Promise.race([
    once(st, 'error').then(() => true),
    new Promise<boolean>((resolve) => {
      const poll = setInterval(() => {
        if (/attached|Process \d+ attached/.test(err)) {
          clearInterval(poll)
          resolve(false)
        }
      }, 20)
    }),
  ])
  if (failed) return undefined
  for (let i = 0; i < n; i++) await sendOne(port, size, i)
  await new Promise((resolve) => setTimeout(resolve, 200))
  const exited = once(st, 'exit')
  st.kill('SIGINT')
  await exited
  const calls = new Map<string, number>()
  for (const line of fs.readFileSync(out, 'utf8').split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$/.exec(line)
    if (m && m[2] !== 'total') calls.set(m[2] as string, Number(m[1]) / n)
  }
  fs.rmSync(path.dirname(out), { recursive: true, force: true })
  return calls
}

function printSyscalls(h: Map<string, number>, p: Map<string, number>): void {
  const names = [...new Set([...h.keys(), ...p.keys()])].sort(
    (a, b) => (p.get(b) ?? 0) + (h.get(b) ?? 0) - (p.get(a) ?? 0) - (h.get(a) ?? 0),
  )
  const f = (v: number | undefined): string => (v === undefined ? '0' : v.toFixed(1))
  const rows = names.map((k) => [k, f(h.get(k)), f(p.get(k))])
  const sum = (m: Map<string, number>): number => [...m.values()].reduce((s, x) => s + x, 0)
  rows.push(['total', f(sum(h)), f(sum(p))])
  table(['milter syscalls per message (strace -f -c)', 'Haraka', 'Postfix'], rows)
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2))
  const missing = postfixMissing()
  if (missing) throw new Error(missing)
  const milter = await startNoop('wire')
  const port = Number(/^inet:(\d+)@/.exec(milter.socket)?.[1])
  const proxies: Proxy[] = []
  const servers: Server[] = []
  try {
    const hp = await startProxy(port)
    const pp = await startProxy(port)
    proxies.push(hp, pp)
    const viaH = await startHarakaServer(
      { name: 'haraka+wire', mta: 'haraka', base: 'haraka' },
      `inet:${hp.port}@127.0.0.1`,
    )
    servers.push(viaH)
    const viaP = await startPostfixServer(
      { name: 'postfix+wire', mta: 'postfix', base: 'postfix' },
      `inet:${pp.port}@127.0.0.1`,
    )
    servers.push(viaP)
    const direct = {
      haraka: await startHarakaServer(
        { name: 'haraka+noop', mta: 'haraka', base: 'haraka' },
        milter.socket,
      ),
      // the same Haraka sending Postfix's default macro lists (per-milter macros.* keys): is
      // what we send beyond them what the milter pays for?
      harakaPostfixMacros: await startHarakaServer(
        { name: 'haraka+noop-pfmacros', mta: 'haraka', base: 'haraka' },
        milter.socket,
        { milterKeys: POSTFIX_MACRO_KEYS },
      ),
      postfix: await startPostfixServer(
        { name: 'postfix+noop', mta: 'postfix', base: 'postfix' },
        milter.socket,
      ),
    }
    servers.push(direct.haraka, direct.harakaPostfixMacros, direct.postfix)
    for (const [label, size] of a.sizes) {
      hp.reset()
      pp.reset()
      for (let i = 0; i < a.messages; i++) {
        await sendOne(viaH.port, size, i)
        await sendOne(viaP.port, size, i)
      }
      await direct.postfix.settle()
      console.log(`\n== ${label}: ${a.messages} messages, one per SMTP session ==`)
      printPackets(hp.rec, pp.rec, a.messages)
      printMacros(hp.rec, pp.rec)
      console.log(`BODY chunks Haraka : ${chunkSummary(hp.rec.bodyChunks)}`)
      console.log(`BODY chunks Postfix: ${chunkSummary(pp.rec.bodyChunks)}`)
      console.log(
        `milter connections per message: Haraka ${per(hp.rec.connections, a.messages)}, ` +
          `Postfix ${per(pp.rec.connections, a.messages)}`,
      )
      const sh = await milterSyscalls(direct.haraka.port, milter.pid, size, 50)
      const sp = await milterSyscalls(direct.postfix.port, milter.pid, size, 50)
      if (sh && sp) printSyscalls(sh, sp)
      const cpu = { haraka: [] as number[], pfmacros: [] as number[], postfix: [] as number[] }
      for (let r = 0; r < a.rounds; r++) {
        cpu.haraka.push(await milterCpu(direct.haraka.port, milter.pid, size, a.cpuMessages, 4))
        cpu.pfmacros.push(
          await milterCpu(direct.harakaPostfixMacros.port, milter.pid, size, a.cpuMessages, 4),
        )
        cpu.postfix.push(await milterCpu(direct.postfix.port, milter.pid, size, a.cpuMessages, 4))
        await direct.postfix.settle()
      }
      const med = (xs: number[]): number => [...xs].sort((x, y) => x - y)[xs.length >> 1] ?? NaN
      console.log(
        `milter CPU ms/msg (no proxy, ${a.rounds} interleaved rounds of ${a.cpuMessages}, 4 at a time): ` +
          `Haraka ${med(cpu.haraka).toFixed(3)} [${cpu.haraka.map((x) => x.toFixed(3)).join(' ')}], ` +
          `Haraka with Postfix's macro lists ${med(cpu.pfmacros).toFixed(3)} ` +
          `[${cpu.pfmacros.map((x) => x.toFixed(3)).join(' ')}], ` +
          `Postfix ${med(cpu.postfix).toFixed(3)} [${cpu.postfix.map((x) => x.toFixed(3)).join(' ')}]`,
      )
    }
  } finally {
    for (const s of servers) await s.stop()
    for (const p of proxies) await p.close()
    await stopBenchMilters()
  }
}

main().catch((e: unknown) => {
  console.error(e)
  process.exit(1)
})
