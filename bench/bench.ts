/**
 * Benchmarks: speed and memory figures, each printed with what was measured.
 * No pass/fail here (the speed and memory goals live here, not in the tests).
 *
 *   npm run bench                      full run, table
 *   npm run bench -- --quick           smaller counts (about 4x faster)
 *   npm run bench -- --json            JSON instead of the table
 *   npm run bench -- --only=codec,memory   sections: codec, session, memory, e2e
 *   npm run bench -- --help            every flag
 *
 * 1. codec: FrameDecoder on mixed reply streams cut at random points, the
 *    command encoders, decodeReply.
 * 2. session: one MilterSession running many messages through sendContent,
 *    against the real libmilter filter test/milters/scripted.py (pymilter) and
 *    against an in-process fake milter (a worker thread answering CONTINUE).
 * 3. memory (in a fresh `node --expose-gc` child process, for a clean RSS
 *    baseline): a 50 MiB REPLBODY dropped (control) and spooled through
 *    BodySpool, then read back; a frame that announces 4 GiB.
 * 4. e2e: SMTP through a real Haraka (queue/smtp_forward to a sink, and
 *    queue/discard), with and without the plugin.
 *
 * Every child process is started through the test helpers and stopped by PID
 * at the end (stopAllMilters, stopAllHarakas), also on SIGINT/SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import * as net from 'node:net'
import * as os from 'node:os'
import { performance } from 'node:perf_hooks'
import * as v8 from 'node:v8'
import * as vm from 'node:vm'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'

import { BodySpool } from '../lib/body-spool'
import { isMilterError } from '../lib/errors'
import {
  decodeCommand,
  encodeBody,
  encodeHeader,
  encodeHelo,
  encodeOptneg,
} from '../lib/protocol/commands'
import { MacroStage, Rep } from '../lib/protocol/constants'
import { FrameDecoder, type Frame } from '../lib/protocol/frame'
import { decodeReply, encodeReply, type Reply } from '../lib/protocol/replies'
import { sendContent, type ContentHeader } from '../lib/session/content'
import { POSTFIX_DEFAULT_MACROS, type MacroLookup } from '../lib/session/macros'
import { openSession } from '../lib/session/open'
import type { MilterSession, SessionOptions } from '../lib/session/session'
import { parseSocketSpec } from '../lib/transport/spec'
import { startHaraka, stopAllHarakas } from '../test/helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
} from '../test/helpers/milter-process'
import { startSink, type Sink } from '../test/helpers/sink'
import { SmtpClient } from '../test/helpers/smtp-client'

// ---------------------------------------------------------------------------
// Command line

const SECTIONS = ['codec', 'session', 'memory', 'e2e'] as const
type Section = (typeof SECTIONS)[number]

const SECTION_TITLES: Readonly<Record<Section, string>> = {
  codec: '1. Codec (lib/protocol)',
  session: '2. Session throughput (openSession + sendContent, one connection)',
  memory: '3. Memory',
  e2e: '4. End to end through Haraka',
}

interface Options {
  quick: boolean
  json: boolean
  sections: Set<Section>
  /** Minimum wall time per codec figure, ms. */
  minMs: number
  smallMessages: number
  largeMessages: number
  largeBodyBytes: number
  replbodyBytes: number
  e2eMessages: number
  e2eConnections: number
  fakeSameThread: boolean
  /** Internal: this process is the fresh child that runs the memory section. */
  memoryChild: boolean
}

const USAGE = `usage: node dist/bench/bench.js [flags]
  --quick               smaller counts (codec 250 ms per figure, 100 small / 5 large
                        messages, 20 MiB REPLBODY, 40 e2e messages)
  --json                print JSON instead of the table
  --only=LIST           sections to run: ${SECTIONS.join(',')} (default all)
  --skip=LIST           sections to leave out
  --messages=N          small messages per session run (default 500)
  --large=N             1 MiB messages per session run (default 20)
  --large-mib=N         size of the large bodies in MiB (default 1)
  --replbody-mib=N      size of the REPLBODY in the memory test (default 50)
  --e2e-messages=N      messages sent through Haraka per run (default 200)
  --connections=N       concurrent SMTP connections for e2e (default 4)
  --min-ms=N            minimum time per codec figure (default 1000)
  --fake-same-thread    run the fake milter of section 2 on the main thread
  --help                this text`

function parseArgs(argv: readonly string[]): Options {
  const quick = argv.includes('--quick')
  const o: Options = {
    quick,
    json: false,
    sections: new Set(SECTIONS),
    minMs: quick ? 250 : 1000,
    smallMessages: quick ? 100 : 500,
    largeMessages: quick ? 5 : 20,
    largeBodyBytes: 1024 * 1024,
    replbodyBytes: (quick ? 20 : 50) * 1024 * 1024,
    e2eMessages: quick ? 40 : 200,
    e2eConnections: 4,
    fakeSameThread: false,
    memoryChild: false,
  }
  const list = (v: string): Section[] =>
    v.split(',').map((s) => {
      const t = s.trim()
      if (!(SECTIONS as readonly string[]).includes(t))
        throw new Error(`unknown section "${t}" (use ${SECTIONS.join(', ')})`)
      return t as Section
    })
  const int = (v: string, flag: string): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer`)
    return n
  }
  for (const arg of argv) {
    const eq = arg.indexOf('=')
    const flag = eq >= 0 ? arg.slice(0, eq) : arg
    const value = eq >= 0 ? arg.slice(eq + 1) : ''
    switch (flag) {
      case '--quick':
        break
      case '--json':
        o.json = true
        break
      case '--only':
        o.sections = new Set(list(value))
        break
      case '--skip':
        for (const s of list(value)) o.sections.delete(s)
        break
      case '--messages':
        o.smallMessages = int(value, flag)
        break
      case '--large':
        o.largeMessages = int(value, flag)
        break
      case '--large-mib':
        o.largeBodyBytes = int(value, flag) * 1024 * 1024
        break
      case '--replbody-mib':
        o.replbodyBytes = int(value, flag) * 1024 * 1024
        break
      case '--e2e-messages':
        o.e2eMessages = int(value, flag)
        break
      case '--connections':
        o.e2eConnections = int(value, flag)
        break
      case '--min-ms':
        o.minMs = int(value, flag)
        break
      case '--fake-same-thread':
        o.fakeSameThread = true
        break
      case '--memory-child':
        o.memoryChild = true
        break
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`)
        process.exit(0)
        break
      default:
        throw new Error(`unknown flag ${arg}\n${USAGE}`)
    }
  }
  return o
}

// ---------------------------------------------------------------------------
// Figures and their output

interface Figure {
  section: Section
  name: string
  value: number
  unit: string
  /** What was measured, in words. */
  measured: string
}

interface Machine {
  nproc: number
  cpu: string
  node: string
  platform: string
  totalMemGiB: number
}

const figures: Figure[] = []
const notes: string[] = []

function record(section: Section, name: string, value: number, unit: string, measured: string) {
  figures.push({ section, name, value, unit, measured })
  if (!jsonMode) process.stderr.write(`  .. ${name}: ${fmt(value)} ${unit}\n`)
}

function note(text: string): void {
  notes.push(text)
  if (!jsonMode) process.stderr.write(`  !! ${text}\n`)
}

let jsonMode = false

/** A count, with thousands separators. */
function n(v: number): string {
  return Math.round(v).toLocaleString('en-US')
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v)
  const a = Math.abs(v)
  if (a >= 1000) return Math.round(v).toLocaleString('en-US')
  if (a >= 100) return v.toFixed(0)
  if (a >= 10) return v.toFixed(1)
  if (a >= 1) return v.toFixed(2)
  if (a === 0) return '0'
  return v.toPrecision(2)
}

function machine(): Machine {
  return {
    nproc: os.availableParallelism(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    totalMemGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
  }
}

function printTable(m: Machine, o: Options): void {
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
    if (rows.length === 0) continue
    out.push(SECTION_TITLES[s])
    out.push(
      `  ${'figure'.padEnd(nameW)}  ${'value'.padStart(valW)}  ${'unit'.padEnd(unitW)}  what was measured`,
    )
    out.push(`  ${'-'.repeat(nameW)}  ${'-'.repeat(valW)}  ${'-'.repeat(unitW)}  ${'-'.repeat(17)}`)
    for (const f of rows) {
      out.push(
        `  ${f.name.padEnd(nameW)}  ${fmt(f.value).padStart(valW)}  ${f.unit.padEnd(unitW)}  ${f.measured}`,
      )
    }
    out.push('')
  }
  if (notes.length > 0) {
    out.push('Notes')
    for (const n of notes) out.push(`  - ${n}`)
    out.push('')
  }
  process.stdout.write(out.join('\n'))
}

// ---------------------------------------------------------------------------
// Small tools

/** Deterministic PRNG (mulberry32), so every run cuts the streams the same way. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Integer in [lo, hi]. */
function between(rng: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo + 1))
}

const MB = 1e6
const MiB = 1024 * 1024

function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]!
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A gc() function: --expose-gc if given, else enabled at run time; undefined if impossible. */
function findGc(): (() => void) | undefined {
  const g: unknown = (globalThis as { gc?: unknown }).gc
  if (typeof g === 'function') return g as () => void
  try {
    v8.setFlagsFromString('--expose-gc')
    const fn: unknown = vm.runInNewContext('gc')
    if (typeof fn === 'function') return fn as () => void
  } catch {
    // not available
  }
  return undefined
}

const gc = isMainThread ? findGc() : undefined

async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc?.()
    await sleep(20)
  }
}

function rss(): number {
  return process.memoryUsage.rss()
}

interface MemPeak {
  /** Peak RSS minus RSS at the start. */
  growth: number
  base: number
  /** Peak minus start of the memory held by Buffers/ArrayBuffers (live or not yet collected). */
  buffersGrowth: number
}

/** Samples RSS and Buffer memory every 10 ms; stop() returns the peak growth over the start. */
class RssSampler {
  private readonly start = process.memoryUsage()
  private peak = this.start.rss
  private peakBuffers = this.start.arrayBuffers
  private readonly timer = setInterval(() => this.sample(), 10)

  sample(): void {
    const m = process.memoryUsage()
    if (m.rss > this.peak) this.peak = m.rss
    if (m.arrayBuffers > this.peakBuffers) this.peakBuffers = m.arrayBuffers
  }

  stop(): MemPeak {
    clearInterval(this.timer)
    this.sample()
    return {
      growth: this.peak - this.start.rss,
      base: this.start.rss,
      buffersGrowth: this.peakBuffers - this.start.arrayBuffers,
    }
  }
}

/** Runs `run` (which returns the number of operations it did) until minMs passed; ops/s. */
function rate(run: () => number, minMs: number): { perSec: number; ops: number; ms: number } {
  run() // warm-up
  let ops = 0
  let rounds = 0
  const t0 = performance.now()
  let t = t0
  while (t - t0 < minMs || rounds < 3) {
    ops += run()
    rounds++
    t = performance.now()
  }
  const ms = t - t0
  return { perSec: (ops / ms) * 1000, ops, ms }
}

/** Keeps results alive so the JIT cannot drop the work. */
let blackhole = 0

// ---------------------------------------------------------------------------
// 1. Codec

const b = (s: string): Buffer => Buffer.from(s, 'latin1')

function textBlock(bytes: number, seed = 1): Buffer {
  const rng = prng(seed)
  const out = Buffer.allocUnsafe(bytes)
  let col = 0
  for (let i = 0; i < bytes; i++) {
    if (col === 76) {
      out[i] = 0x0d
      col++
    } else if (col === 77) {
      out[i] = 0x0a
      col = 0
    } else {
      out[i] = rng() < 0.15 ? 0x20 : 0x61 + Math.floor(rng() * 26)
      col++
    }
  }
  return out
}

const REPLBODY_SOURCE = textBlock(65535, 7)

/** One reply drawn from a mix that looks like real milter traffic. */
function mixedReply(rng: () => number): Reply {
  const r = rng()
  if (r < 0.55) return { kind: 'continue' }
  if (r < 0.6) return { kind: 'progress' }
  if (r < 0.7) return { kind: 'addheader', name: b('X-Spam-Score'), value: b('2.3 (bayes 0.41)') }
  if (r < 0.74)
    return {
      kind: 'insheader',
      index: 1,
      name: b('Authentication-Results'),
      value: b('mx.example.org; dkim=pass header.d=example.com header.s=sel1 header.b=AbCdEf12'),
    }
  if (r < 0.78) return { kind: 'chgheader', index: 1, name: b('Subject'), value: b('[SPAM] hi') }
  if (r < 0.8) return { kind: 'replycode', text: b('550 5.7.1 Message rejected by policy') }
  if (r < 0.82) return { kind: 'quarantine', reason: b('suspicious attachment') }
  if (r < 0.84)
    return { kind: 'addrcpt_par', rcpt: b('<archive@example.org>'), args: b('NOTIFY=NEVER') }
  if (r < 0.86) return { kind: 'chgfrom', sender: b('<bounce@example.org>'), args: b('SIZE=2048') }
  if (r < 0.88) return { kind: 'delrcpt', rcpt: b('<bob@example.net>') }
  if (r < 0.89) return OPTNEG_REPLY
  if (r < 0.97) {
    const kinds = ['accept', 'reject', 'tempfail', 'discard', 'skip'] as const
    return { kind: kinds[Math.floor(rng() * kinds.length)] ?? 'accept' }
  }
  return { kind: 'replbody', chunk: REPLBODY_SOURCE.subarray(0, between(rng, 1, 65535)) }
}

const OPTNEG_REPLY: Reply = {
  kind: 'optneg',
  version: 6,
  actions: 0x1ff,
  protocol: 0x1fffff & ~0x800,
  symlist: new Map([
    [MacroStage.CONNECT, ['j', '{client_addr}', '{client_name}']],
    [MacroStage.ENVFROM, ['i', '{auth_authen}', '{mail_addr}']],
    [MacroStage.EOM, ['{msg_id}']],
  ]),
  symlistWarnings: [],
}

interface Stream {
  bytes: Buffer
  frames: number
}

function buildStream(n: number, make: (rng: () => number) => Reply, seed: number): Stream {
  const rng = prng(seed)
  const parts: Buffer[] = []
  for (let i = 0; i < n; i++) parts.push(encodeReply(make(rng)))
  return { bytes: Buffer.concat(parts), frames: n }
}

/** The stream as chunks cut at random points, sizes uniform in [lo, hi]. */
function cut(stream: Buffer, lo: number, hi: number, seed: number): Buffer[] {
  const rng = prng(seed)
  const out: Buffer[] = []
  for (let off = 0; off < stream.length;) {
    const n = Math.min(between(rng, lo, hi), stream.length - off)
    out.push(stream.subarray(off, off + n))
    off += n
  }
  return out
}

function decodeAll(chunks: readonly Buffer[], expect: number): number {
  const dec = new FrameDecoder()
  let n = 0
  for (const c of chunks) {
    const frames = dec.push(c)
    n += frames.length
    for (const f of frames) blackhole += f.code
  }
  if (n !== expect || dec.pending !== 0)
    throw new Error(`FrameDecoder returned ${n} frames of ${expect} (${dec.pending} pending)`)
  return n
}

function benchDecoder(
  label: string,
  stream: Stream,
  lo: number,
  hi: number,
  what: string,
  o: Options,
): void {
  const chunks = cut(stream.bytes, lo, hi, 42)
  const r = rate(() => decodeAll(chunks, stream.frames), o.minMs)
  const runs = r.ops / stream.frames
  const mbps = ((runs * stream.bytes.length) / MB / r.ms) * 1000
  const desc =
    `${n(stream.frames)} ${what} (${fmt(stream.bytes.length / MB)} MB) in ` +
    `${n(chunks.length)} chunks of ${n(lo)}-${n(hi)} B, decoded ${n(runs)}x in ${fmt(r.ms)} ms`
  record('codec', `FrameDecoder, ${label}`, r.perSec, 'frames/s', desc)
  record('codec', `FrameDecoder, ${label}`, mbps, 'MB/s', desc)
}

function codecSection(o: Options): void {
  const mixedN = o.quick ? 5000 : 20000
  const mixed = buildStream(mixedN, mixedReply, 1)
  const mixWhat = 'mixed replies (55% CONTINUE, headers, rcpt/from edits, 3% REPLBODY 1-65535 B)'
  benchDecoder('mixed, socket-sized cuts', mixed, 1, 65536, mixWhat, o)
  const tiny = buildStream(o.quick ? 1000 : 3000, mixedReply, 2)
  benchDecoder('mixed, tiny cuts', tiny, 1, 64, mixWhat, o)
  const bodyStream = buildStream(
    o.quick ? 100 : 400,
    () => ({ kind: 'replbody', chunk: REPLBODY_SOURCE }),
    3,
  )
  benchDecoder('REPLBODY 65535 B', bodyStream, 1, 65536, 'REPLBODY frames of 65535 B', o)

  // encoders
  const name = 'Subject'
  const value = b('Quarterly report: figures for the third quarter, final version')
  const hdr = rate(() => {
    for (let i = 0; i < 10000; i++) blackhole += encodeHeader(name, value).length
    return 10000
  }, o.minMs)
  record(
    'codec',
    'encodeHeader',
    hdr.perSec,
    'packets/s',
    `encodeHeader('Subject', ${value.length}-byte Buffer): ${n(hdr.ops)} packets in ${fmt(hdr.ms)} ms`,
  )
  for (const size of [65535, 2048]) {
    const chunk = textBlock(size, 5)
    const per = size > 10000 ? 200 : 5000
    const r = rate(() => {
      for (let i = 0; i < per; i++) blackhole += encodeBody(chunk).length
      return per
    }, o.minMs)
    const desc = `encodeBody(${size}-byte chunk), frame allocated and payload copied each time: ${n(r.ops)} packets in ${fmt(r.ms)} ms`
    record('codec', `encodeBody ${size} B`, r.perSec, 'packets/s', desc)
    record('codec', `encodeBody ${size} B`, (r.perSec * size) / MB, 'MB/s', desc)
  }

  // decodeReply
  const frames: Frame[] = new FrameDecoder().push(mixed.bytes)
  const mixedDec = rate(() => {
    for (const f of frames) blackhole += decodeReply(f).kind.length
    return frames.length
  }, o.minMs)
  record(
    'codec',
    'decodeReply, mixed',
    mixedDec.perSec,
    'replies/s',
    `decodeReply over the ${n(frames.length)} frames of the mixed stream: ${n(mixedDec.ops)} replies in ${fmt(mixedDec.ms)} ms`,
  )
  const one = (label: string, reply: Reply): void => {
    const [f] = new FrameDecoder().push(encodeReply(reply))
    if (!f) throw new Error('no frame')
    const r = rate(() => {
      for (let i = 0; i < 10000; i++) blackhole += decodeReply(f).kind.length
      return 10000
    }, o.minMs)
    record(
      'codec',
      `decodeReply, ${label}`,
      r.perSec,
      'replies/s',
      `decodeReply of one ${label} frame (${f.data.length} B payload), repeated ${n(r.ops)}x`,
    )
  }
  one('CONTINUE', { kind: 'continue' })
  one('ADDHEADER', { kind: 'addheader', name: b('X-Spam-Score'), value: b('2.3 (bayes 0.41)') })
  one('OPTNEG+symlist', OPTNEG_REPLY)
}

// ---------------------------------------------------------------------------
// A fake milter in this process: answers CONTINUE to everything, or sends a
// REPLBODY or an impossible frame at end of message.

type FakeMode = { kind: 'continue' } | { kind: 'replbody'; bytes: number } | { kind: 'huge-frame' }

const CONTINUE_FRAME = encodeReply({ kind: 'continue' })

class FakeMilter {
  private readonly sockets = new Set<net.Socket>()

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly mode: FakeMode,
  ) {
    server.on('connection', (s) => this.serve(s))
  }

  static async listen(mode: FakeMode): Promise<FakeMilter> {
    const server = net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    const addr = server.address()
    if (addr === null || typeof addr === 'string') throw new Error('fake milter: no port')
    return new FakeMilter(server, addr.port, mode)
  }

  get socket(): string {
    return `inet:${this.port}@127.0.0.1`
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private serve(sock: net.Socket): void {
    this.sockets.add(sock)
    sock.once('close', () => this.sockets.delete(sock))
    sock.on('error', () => sock.destroy())
    sock.setNoDelay(true)
    const dec = new FrameDecoder()
    let chain: Promise<void> = Promise.resolve()
    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[]
      try {
        frames = dec.push(chunk)
      } catch {
        sock.destroy()
        return
      }
      for (const f of frames) {
        if (this.mode.kind === 'continue') void this.answer(sock, f)
        else
          chain = chain
            .then(() => this.answer(sock, f))
            .catch(() => {
              sock.destroy()
            })
      }
    })
  }

  /** Answers one command; a promise only while a REPLBODY is being sent. */
  private answer(sock: net.Socket, f: Frame): Promise<void> | undefined {
    const c = decodeCommand(f)
    switch (c.cmd) {
      case 'optneg':
        sock.write(
          encodeReply({
            kind: 'optneg',
            version: 6,
            actions: c.actions,
            protocol: 0,
            symlist: new Map(),
            symlistWarnings: [],
          }),
        )
        return undefined
      case 'macro':
      case 'abort':
      case 'quit_nc':
        return undefined
      case 'quit':
        sock.end()
        return undefined
      case 'eob':
        if (this.mode.kind === 'replbody') return this.sendReplbody(sock, this.mode.bytes)
        if (this.mode.kind === 'huge-frame') {
          // 4 GiB - 1 announced, then nothing: the client must refuse at once.
          sock.write(Buffer.from([0xff, 0xff, 0xff, 0xff, Rep.REPLBODY]))
          return undefined
        }
        sock.write(CONTINUE_FRAME)
        return undefined
      default:
        sock.write(CONTINUE_FRAME)
        return undefined
    }
  }

  /** REPLBODY in 65535-byte chunks, respecting back-pressure, then CONTINUE. */
  private async sendReplbody(sock: net.Socket, total: number): Promise<void> {
    const full = encodeReply({ kind: 'replbody', chunk: REPLBODY_SOURCE })
    for (let left = total; left > 0; left -= 65535) {
      const frame =
        left >= 65535
          ? full
          : encodeReply({ kind: 'replbody', chunk: REPLBODY_SOURCE.subarray(0, left) })
      if (!sock.write(frame)) await once(sock, 'drain')
    }
    sock.write(CONTINUE_FRAME)
  }
}

interface FakeWorkerData {
  role: 'fake-milter'
}

function isFakeWorkerData(v: unknown): v is FakeWorkerData {
  return typeof v === 'object' && v !== null && (v as { role?: unknown }).role === 'fake-milter'
}

/** Worker thread body: a CONTINUE fake milter; posts its port, stops on any message. */
async function fakeWorkerMain(): Promise<void> {
  const port = parentPort
  if (!port) return
  const fake = await FakeMilter.listen({ kind: 'continue' })
  port.postMessage({ port: fake.port })
  port.once('message', () => {
    void fake.close().then(() => port.close())
  })
}

interface FakeHandle {
  socket: string
  stop(): Promise<void>
}

const workers = new Set<Worker>()
const fakes = new Set<FakeMilter>()

async function startFake(mode: FakeMode): Promise<FakeHandle> {
  const fake = await FakeMilter.listen(mode)
  fakes.add(fake)
  return {
    socket: fake.socket,
    stop: async () => {
      fakes.delete(fake)
      await fake.close()
    },
  }
}

async function startFakeWorker(): Promise<FakeHandle> {
  const data: FakeWorkerData = { role: 'fake-milter' }
  const worker = new Worker(__filename, { workerData: data })
  workers.add(worker)
  const [msg] = (await once(worker, 'message')) as unknown[]
  const port = (msg as { port?: unknown } | undefined)?.port
  if (typeof port !== 'number') throw new Error('fake milter worker sent no port')
  return {
    socket: `inet:${port}@127.0.0.1`,
    stop: async () => {
      workers.delete(worker)
      await worker.terminate()
    },
  }
}

// ---------------------------------------------------------------------------
// 2. Session throughput

const MACRO_VALUES: Readonly<Record<string, string>> = {
  j: 'mx.example.org',
  '{daemon_name}': 'haraka-bench',
  '{daemon_addr}': '127.0.0.1',
  v: 'Haraka',
  _: 'client.example.com [192.0.2.10]',
  i: '4F1A2B3C4D',
  '{mail_addr}': 'alice@example.com',
  '{mail_host}': 'example.com',
  '{mail_mailer}': 'smtp',
  '{rcpt_addr}': 'bob@example.net',
  '{rcpt_host}': 'example.net',
  '{rcpt_mailer}': 'smtp',
}

const lookup: MacroLookup = (name) => MACRO_VALUES[name]

function sessionOptions(): SessionOptions {
  return {
    name: 'bench',
    timeouts: { connectMs: 10_000, commandMs: 30_000, contentMs: 120_000 },
    macros: POSTFIX_DEFAULT_MACROS,
  }
}

function benchHeaders(seq: number): ContentHeader[] {
  const h: Array<[string, string]> = [
    [
      'Received',
      ' from client.example.com (client.example.com [192.0.2.10])\r\n\tby mx.example.org',
    ],
    ['From', ' Alice <alice@example.com>'],
    ['To', ' Bob <bob@example.net>'],
    ['Subject', ` Benchmark message ${seq}`],
    ['Date', ' Tue, 01 Apr 2025 10:00:00 +0000'],
    ['Message-ID', ` <bench-${seq}@example.com>`],
    ['MIME-Version', ' 1.0'],
    ['Content-Type', ' text/plain; charset=utf-8'],
    ['Content-Transfer-Encoding', ' 8bit'],
    ['X-Mailer', ' haraka-plugin-milter bench'],
  ]
  return h.map(([name, value]) => ({ name, value: b(value) }))
}

async function openBenchSession(socket: string): Promise<MilterSession> {
  const s = await openSession(parseSocketSpec(socket), sessionOptions())
  const v = await s.connect(
    'client.example.com',
    { family: 'inet', address: '192.0.2.10', port: 40000 },
    lookup,
  )
  if (v.kind !== 'continue') throw new Error(`CONNECT answered ${v.kind}`)
  const h = await s.helo('client.example.com', lookup)
  if (h.kind !== 'continue') throw new Error(`HELO answered ${h.kind}`)
  return s
}

/** MAIL, RCPT, DATA and sendContent; throws unless every step continued. */
async function oneMessage(
  s: MilterSession,
  seq: number,
  body: Buffer,
  onReplaceBody?: (chunk: Buffer) => Promise<void>,
): Promise<void> {
  const steps = [
    await s.mail(['<alice@example.com>', 'SIZE=4096'], lookup),
    await s.rcpt(['<bob@example.net>'], lookup),
    await s.data(lookup),
  ]
  for (const v of steps) if (v.kind !== 'continue') throw new Error(`milter answered ${v.kind}`)
  const content = {
    headers: benchHeaders(seq),
    body: [body],
    eohMacros: lookup,
    eomMacros: lookup,
    ...(onReplaceBody ? { onReplaceBody } : {}),
  }
  const r = await sendContent(s, content)
  if (r.verdict.kind !== 'continue') throw new Error(`end of message: ${r.verdict.kind}`)
}

interface RunResult {
  perSec: number
  mbps: number
  p50: number
  p99: number
  ms: number
  /** Round trips (command answered by a reply) per message. */
  roundTrips: number
}

async function runMessages(socket: string, count: number, body: Buffer): Promise<RunResult> {
  const s = await openBenchSession(socket)
  try {
    const warm = Math.min(20, Math.max(2, Math.floor(count / 10)))
    for (let i = 0; i < warm; i++) await oneMessage(s, -i, body)
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < count; i++) {
      const t = performance.now()
      await oneMessage(s, i, body)
      lat.push(performance.now() - t)
    }
    const ms = performance.now() - t0
    lat.sort((x, y) => x - y)
    return {
      perSec: (count / ms) * 1000,
      mbps: ((count * body.length) / MB / ms) * 1000,
      p50: percentile(lat, 0.5),
      p99: percentile(lat, 0.99),
      ms,
      // MAIL, RCPT, DATA, 10 headers, EOH, body packets, EOB
      roundTrips: 3 + 10 + 1 + Math.ceil(body.length / 65535) + 1,
    }
  } finally {
    s.quit()
  }
}

function recordRun(target: string, workload: string, count: number, r: RunResult): void {
  const what = `${n(count)} ${workload} in sequence on one connection (MAIL, RCPT, DATA, 10 HEADER, EOH, BODY, EOB: ${r.roundTrips} round trips; Postfix macro lists) in ${fmt(r.ms)} ms`
  const name = `${target}: ${workload.split(' (')[0] ?? workload}`
  record('session', name, r.perSec, 'msg/s', what)
  record('session', name, r.mbps, 'MB/s', `body bytes / wall time, same run`)
  record('session', name, r.p50, 'ms p50', `per-message latency MAIL..EOB reply, same run`)
  record('session', name, r.p99, 'ms p99', `per-message latency MAIL..EOB reply, same run`)
}

/** Bare ping-pong with the fake milter (no MilterSession): one HELO frame out, CONTINUE back. */
async function rawRoundTrips(
  socket: string,
  count: number,
): Promise<{ mean: number; p50: number }> {
  const spec = parseSocketSpec(socket)
  if (spec.kind !== 'tcp') throw new Error('tcp only')
  const sock = net.createConnection({ host: spec.host, port: spec.port })
  await once(sock, 'connect')
  sock.setNoDelay(true)
  const dec = new FrameDecoder()
  let waiter: (() => void) | undefined
  sock.on('data', (chunk: Buffer) => {
    const frames = dec.push(chunk)
    for (let i = 0; i < frames.length; i++) {
      const w = waiter
      waiter = undefined
      w?.()
    }
  })
  const ask = (packet: Buffer): Promise<void> =>
    new Promise<void>((resolve) => {
      waiter = resolve
      sock.write(packet)
    })
  try {
    await ask(encodeOptneg(6, 0x1ff, 0))
    const helo = encodeHelo('client.example.com')
    for (let i = 0; i < 200; i++) await ask(helo)
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < count; i++) {
      const t = performance.now()
      await ask(helo)
      lat.push(performance.now() - t)
    }
    const mean = (performance.now() - t0) / count
    lat.sort((x, y) => x - y)
    return { mean, p50: percentile(lat, 0.5) }
  } finally {
    sock.destroy()
  }
}

async function sessionSection(o: Options): Promise<void> {
  const small = textBlock(2048, 11)
  const large = textBlock(o.largeBodyBytes, 12)
  const smallWhat = 'small messages (10 headers, 2 KB body)'
  const largeWhat = `large messages (10 headers, ${n(o.largeBodyBytes / MiB)} MiB body)`

  let pymilter = true
  try {
    assertPymilterInstalled()
  } catch (e) {
    pymilter = false
    note(`real-milter figures skipped: ${e instanceof Error ? e.message : String(e)}`)
  }
  if (pymilter) {
    const m = await startScriptedMilter({})
    try {
      const rs = await runMessages(m.socket, o.smallMessages, small)
      recordRun('scripted.py', smallWhat, o.smallMessages, rs)
      const rl = await runMessages(m.socket, o.largeMessages, large)
      recordRun('scripted.py', largeWhat, o.largeMessages, rl)
    } finally {
      await m.stop()
    }
  }

  const fake = o.fakeSameThread ? await startFake({ kind: 'continue' }) : await startFakeWorker()
  const target = o.fakeSameThread ? 'fake (same thread)' : 'fake (worker)'
  try {
    const pings = o.quick ? 2000 : 10000
    const rtt = await rawRoundTrips(fake.socket, pings)
    record(
      'session',
      `${target}: bare round trip`,
      rtt.p50 * 1000,
      'us p50',
      `${n(pings)} x (HELO frame -> CONTINUE) on a raw socket, no MilterSession: the loopback + event-loop floor (mean ${fmt(rtt.mean * 1000)} us)`,
    )
    for (const [what, count, body] of [
      [smallWhat, o.smallMessages, small],
      [largeWhat, o.largeMessages, large],
    ] as const) {
      const r = await runMessages(fake.socket, count, body)
      recordRun(target, what, count, r)
      const perMsg = r.ms / count
      const over = perMsg - r.roundTrips * rtt.mean
      record(
        'session',
        `${target}: ${what.split(' (')[0] ?? what}`,
        over * 1000,
        'us/msg overhead',
        `mean time per message (${fmt(perMsg * 1000)} us) minus ${r.roundTrips} bare round trips (${fmt(rtt.mean * 1000)} us each): session, encoding and copying cost`,
      )
    }
  } finally {
    await fake.stop()
  }
  note(
    'scripted.py is pymilter on libmilter and writes one JSONL log line (with macros) per event; ' +
      (o.fakeSameThread
        ? 'the fake milter ran on the main thread, so its own decoding is billed to our figures.'
        : 'the fake milter ran in a worker thread of this process (own core), so its figures are our client cost plus loopback latency.'),
  )
}

// ---------------------------------------------------------------------------
// 3. Memory

/** One message whose EOB is answered with `total` bytes of REPLBODY, chunks handed to `sink`. */
async function replbodyRun(
  total: number,
  sink: (chunk: Buffer) => Promise<void> | void,
  after?: () => Promise<void>,
): Promise<{ mem: MemPeak; ms: number }> {
  const fake = await startFake({ kind: 'replbody', bytes: total })
  const s = await openBenchSession(fake.socket)
  try {
    await settle()
    const sampler = new RssSampler()
    const t0 = performance.now()
    await oneMessage(s, 1, textBlock(2048, 13), async (chunk) => {
      await sink(chunk)
    })
    await after?.()
    const ms = performance.now() - t0
    return { mem: sampler.stop(), ms }
  } finally {
    s.quit()
    await fake.stop()
  }
}

async function memorySection(o: Options): Promise<void> {
  if (!gc) note('gc() not available: RSS baselines include uncollected garbage')
  process.on('warning', (w) =>
    note(`process warning during the memory section: ${w.name}: ${w.message}`),
  )
  const total = o.replbodyBytes
  const chunks = Math.ceil(total / 65535)
  const sizeText = `${n(total / MiB)} MiB`
  const source = `${n(chunks)} REPLBODY frames of <= 65535 B from a fake milter (same process, writes back-pressured)`
  const rssText = (m: MemPeak): string =>
    `RSS of a fresh node process sampled every 10 ms, base ${fmt(m.base / MiB)} MiB`

  // Control: the chunks are dropped as they arrive.
  let dropped = 0
  const control = await replbodyRun(total, (chunk) => {
    dropped += chunk.length
  })
  if (dropped !== total) throw new Error(`received ${dropped} of ${total} bytes`)
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.mem.growth / MiB,
    'MiB RSS peak growth',
    `control: ${source}, onReplaceBody drops each chunk; ${rssText(control.mem)}`,
  )
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.mem.buffersGrowth / MiB,
    'MiB Buffers peak',
    'same run: peak growth of process.memoryUsage().arrayBuffers (live plus not yet collected)',
  )
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.ms,
    'ms',
    `same run, MAIL..EOB reply: ${fmt((total / MB / control.ms) * 1000)} MB/s`,
  )

  const spool = new BodySpool()
  try {
    const run = await replbodyRun(
      total,
      (chunk) => spool.write(chunk),
      () => spool.finish(),
    )
    if (spool.bytes !== total) throw new Error(`spooled ${spool.bytes} of ${total} bytes`)
    if (
      run.mem.buffersGrowth > 0.8 * total &&
      run.mem.buffersGrowth > 1.3 * control.mem.buffersGrowth
    )
      note(
        `BodySpool run: Buffer memory grew by ${fmt(run.mem.buffersGrowth / MiB)} MiB for a ${sizeText} body while the ` +
          `control run (chunks dropped) peaked at ${fmt(control.mem.buffersGrowth / MiB)} MiB: REPLBODY frames pile up ` +
          'in memory while onReplaceBody waits for the spool file (the socket is not paused). Try --replbody-mib=200 to see it scale.',
      )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.mem.growth / MiB,
      'MiB RSS peak growth',
      `${source} through onReplaceBody into BodySpool.write; ${rssText(run.mem)}`,
    )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.mem.buffersGrowth / MiB,
      'MiB Buffers peak',
      'same run: peak growth of process.memoryUsage().arrayBuffers (live plus not yet collected)',
    )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.ms,
      'ms',
      `same run, MAIL..EOB reply and spool file flushed: ${fmt((total / MB / run.ms) * 1000)} MB/s`,
    )

    await settle()
    const readback = new RssSampler()
    const t1 = performance.now()
    let lines = 0
    let bytes = 0
    for await (const line of spool.lines()) {
      lines++
      bytes += line.length
    }
    const readMs = performance.now() - t1
    const r = readback.stop()
    record(
      'memory',
      `spool.lines() ${sizeText}`,
      r.growth / MiB,
      'MiB RSS peak growth',
      `reading the spooled body back as ${n(lines)} CRLF lines (${fmt(bytes / MiB)} MiB); ${rssText(r)}`,
    )
    record(
      'memory',
      `spool.lines() ${sizeText}`,
      readMs,
      'ms',
      `same read-back: ${fmt((bytes / MB / readMs) * 1000)} MB/s, ${n((lines / readMs) * 1000)} lines/s`,
    )
  } finally {
    await spool.dispose()
  }

  // A frame that announces 4 GiB - 1 bytes, straight into a FrameDecoder.
  await settle()
  const before = rss()
  const dec = new FrameDecoder()
  const t2 = performance.now()
  let threw = ''
  try {
    dec.push(Buffer.from([0xff, 0xff, 0xff, 0xff, Rep.REPLBODY]))
  } catch (e) {
    threw = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
  }
  const us = (performance.now() - t2) * 1000
  const delta = rss() - before
  if (threw === '') note('FrameDecoder accepted a 4 GiB frame header without throwing')
  record(
    'memory',
    'FrameDecoder, 4 GiB frame announced',
    us,
    'us to throw',
    `push() of the 5-byte header 0xffffffff 'b' (default limit 64 MiB): ${threw || 'no error'}`,
  )
  record(
    'memory',
    'FrameDecoder, 4 GiB frame announced',
    delta / 1024,
    'KiB RSS change',
    'RSS after the throw minus RSS before it',
  )

  // The same through a session: the milter announces 4 GiB at end of message.
  const huge = await startFake({ kind: 'huge-frame' })
  const hs = await openBenchSession(huge.socket)
  try {
    await settle()
    const sampler = new RssSampler()
    const t3 = performance.now()
    let err = ''
    try {
      await oneMessage(hs, 1, textBlock(2048, 14))
    } catch (e) {
      err = isMilterError(e)
        ? `${e.name}: ${e.message}`
        : e instanceof Error
          ? e.message
          : String(e)
    }
    const ms = performance.now() - t3
    const g = sampler.stop()
    record(
      'memory',
      'session, 4 GiB REPLBODY announced',
      ms,
      'ms to fail',
      `whole message to a fake milter that answers EOB with a 4 GiB frame header: ${err || 'no error'}`,
    )
    record(
      'memory',
      'session, 4 GiB REPLBODY announced',
      g.growth / 1024,
      'KiB RSS peak growth',
      'RSS sampled every 10 ms during that message',
    )
  } finally {
    hs.destroy()
    await huge.stop()
  }
}

// ---------------------------------------------------------------------------
// 4. End to end through Haraka

function smtpMessage(seq: number): Buffer {
  const head = benchHeaders(seq)
    .map(
      (h) =>
        `${typeof h.name === 'string' ? h.name : h.name.toString('latin1')}:${h.value.toString('latin1')}\r\n`,
    )
    .join('')
  return Buffer.concat([b(`${head}\r\n`), textBlock(2048, 21), b('\r\n')])
}

interface E2eResult {
  perSec: number
  p50: number
  p99: number
  ms: number
}

type Queue = 'smtp_forward' | 'discard'

async function e2eRun(
  o: Options,
  sink: Sink,
  milterSocket: string | undefined,
  queue: Queue,
): Promise<E2eResult> {
  const plugins = ['rcpt_to.in_host_list', `queue/${queue}`]
  const config: Record<string, string> = {}
  if (milterSocket) {
    plugins.unshift('milter')
    config['milter.ini'] = [
      '[main]',
      'milters = bench',
      'connect_timeout = 10',
      'command_timeout = 30',
      'content_timeout = 60',
      '',
      '[milter.bench]',
      `socket = ${milterSocket}`,
      '',
    ].join('\n')
  }
  // 'notice' is the quietest level at which the helper still sees "Listening on".
  const haraka = await startHaraka({
    plugins,
    sinkPort: sink.port,
    logLevel: 'notice',
    config,
    ...(queue === 'discard' ? { env: { YES_REALLY_DO_DISCARD: '1' } } : {}),
  })
  try {
    const send = async (count: number, lat: number[]): Promise<void> => {
      const c = await SmtpClient.connect('127.0.0.1', haraka.port)
      try {
        const ehlo = await c.command('EHLO bench.example.com')
        if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.raw}`)
        for (let i = 0; i < count; i++) {
          const t = performance.now()
          const r = await c.sendMail({
            from: 'alice@example.com',
            rcpts: ['bob@example.com'],
            data: smtpMessage(i),
            crlf: false,
          })
          if (!r.accepted) throw new Error(`message refused: ${r.last?.raw ?? '(no reply)'}`)
          lat.push(performance.now() - t)
        }
        await c.quit()
      } finally {
        await c.close()
      }
    }
    await send(4, []) // warm-up: plugin load, first milter connection, forward pool
    sink.clear()
    const total = o.e2eMessages
    const k = o.e2eConnections
    const lat: number[] = []
    const t0 = performance.now()
    await Promise.all(
      Array.from({ length: k }, (_, i) =>
        send(Math.floor(total / k) + (i < total % k ? 1 : 0), lat),
      ),
    )
    if (queue === 'smtp_forward') await sink.waitForMessages(total, 60_000)
    const ms = performance.now() - t0
    lat.sort((x, y) => x - y)
    return {
      perSec: (total / ms) * 1000,
      p50: percentile(lat, 0.5),
      p99: percentile(lat, 0.99),
      ms,
    }
  } finally {
    await haraka.stop()
  }
}

let activeSink: Sink | undefined

async function e2eSection(o: Options): Promise<void> {
  try {
    assertPymilterInstalled()
  } catch (e) {
    note(`e2e skipped: ${e instanceof Error ? e.message : String(e)}`)
    return
  }
  const sink = await startSink()
  activeSink = sink
  const m = await startScriptedMilter({})
  try {
    for (const queue of ['smtp_forward', 'discard'] as const) {
      for (const withMilter of [false, true]) {
        const eomBefore = m.eventsOf('eom').length
        const r = await e2eRun(o, sink, withMilter ? m.socket : undefined, queue)
        const seen = m.eventsOf('eom').length - eomBefore
        if (withMilter && seen < o.e2eMessages)
          note(`${queue} + milter: scripted.py saw only ${seen} of ${o.e2eMessages} messages`)
        const name = `${queue}, ${withMilter ? 'with milter plugin' : 'no milter plugin'}`
        const path =
          queue === 'smtp_forward'
            ? 'queue/smtp_forward -> sink (until the sink has them all)'
            : 'queue/discard (YES_REALLY_DO_DISCARD)'
        record(
          'e2e',
          name,
          r.perSec,
          'msg/s',
          `${n(o.e2eMessages)} messages (10 headers, 2 KB body) over ${o.e2eConnections} concurrent SMTP connections to Haraka (nodes=0, log notice)${withMilter ? ' + milter plugin -> scripted.py' : ''} -> ${path}, in ${fmt(r.ms)} ms`,
        )
        record(
          'e2e',
          name,
          r.p50,
          'ms p50',
          'same run: per message, MAIL .. reply to the final dot',
        )
        record('e2e', name, r.p99, 'ms p99', 'same run')
      }
    }
  } finally {
    await m.stop()
    await sink.stop()
    activeSink = undefined
  }
}

// ---------------------------------------------------------------------------
// Main

/** Child processes this script spawned itself (the memory section), by PID. */
const children = new Map<number, ChildProcess>()

function killChildren(): void {
  for (const [pid, child] of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Runs the memory section in a fresh `node --expose-gc` process, so its RSS
 * baseline is not inflated (or padded with freed pages) by the other sections.
 */
async function memoryInChild(o: Options): Promise<void> {
  const args = [
    '--expose-gc',
    __filename,
    '--memory-child',
    `--replbody-mib=${Math.max(1, Math.round(o.replbodyBytes / MiB))}`,
  ]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
  if (child.pid === undefined) throw new Error('cannot spawn the memory child')
  const pid = child.pid
  children.set(pid, child)
  let out = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => (out += d))
  const [code] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
  children.delete(pid)
  let parsed: { figures?: unknown; notes?: unknown }
  try {
    parsed = JSON.parse(out) as { figures?: unknown; notes?: unknown }
  } catch {
    throw new Error(`memory child (pid ${pid}) exited ${String(code)} without JSON: ${out}`)
  }
  for (const f of Array.isArray(parsed.figures) ? (parsed.figures as Figure[]) : [])
    record('memory', f.name, f.value, f.unit, f.measured)
  for (const t of Array.isArray(parsed.notes) ? (parsed.notes as string[]) : []) note(t)
  if (code !== 0) throw new Error(`memory child (pid ${pid}) exited with code ${String(code)}`)
}

async function cleanup(): Promise<void> {
  killChildren()
  await Promise.allSettled([
    stopAllMilters(),
    stopAllHarakas(),
    activeSink?.stop() ?? Promise.resolve(),
    ...[...workers].map((w) => w.terminate()),
    ...[...fakes].map((f) => f.close()),
  ])
  workers.clear()
  fakes.clear()
}

async function main(): Promise<number> {
  let o: Options
  try {
    o = parseArgs(process.argv.slice(2))
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`)
    return 2
  }
  jsonMode = o.json || o.memoryChild
  if (o.memoryChild) {
    try {
      await memorySection(o)
    } catch (e) {
      note(`memory aborted: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
      return 1
    } finally {
      await cleanup()
      process.stdout.write(`${JSON.stringify({ figures, notes })}\n`)
    }
    return 0
  }
  const onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\n${sig}: stopping child processes\n`)
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const m = machine()
  let failed = false
  const run: Record<Section, (o: Options) => Promise<void> | void> = {
    codec: codecSection,
    session: sessionSection,
    memory: memoryInChild,
    e2e: e2eSection,
  }
  try {
    for (const s of SECTIONS) {
      if (!o.sections.has(s)) continue
      if (!jsonMode) process.stderr.write(`${SECTION_TITLES[s]} ...\n`)
      try {
        await run[s](o)
      } catch (e) {
        failed = true
        note(`${s} aborted: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
      }
    }
  } finally {
    await cleanup()
  }
  if (o.json) {
    const { sections, memoryChild, ...rest } = o
    void memoryChild
    const out = { machine: m, options: { ...rest, sections: [...sections] }, figures, notes }
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
  } else {
    printTable(m, o)
  }
  if (blackhole === -1) process.stdout.write('\n')
  return failed ? 1 : 0
}

const data: unknown = workerData
if (!isMainThread && isFakeWorkerData(data)) {
  void fakeWorkerMain()
} else if (isMainThread) {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
      process.exitCode = 1
    },
  )
}
