/**
 * Flood benchmark: what one hostile milter answer does to Haraka + this plugin.
 *
 * Per case a fresh Haraka (test/helpers/haraka: one process, nodes=0) runs the plugin with one
 * flooding milter and delivers with queue/smtp_forward to a sink that only counts bytes. Four
 * "other" SMTP sessions send small messages in a loop (MAIL .. 250 after DATA, one connection
 * each); then the hostile session sends one small message from flood@example.com and the milter
 * answers it with a flood. Per case one row: the hostile message's reply and how long it took,
 * the other sessions' worst latency while it was going on, and Haraka's RSS growth.
 *
 * Cases and who floods:
 * - addrcpt    20,000 ADDRCPT            test/milters/flood.py (pymilter, smfi_addrcpt)
 * - chgheader  40,000 CHGHEADER (~1 MB)  test/milters/flood.py (pymilter, smfi_chgheader)
 * - addheader  2,000,000 ADDHEADER       test/helpers/flood-milter.ts (raw socket): pymilter
 *   needs ~7 s of CPU for 2,000,000 smfi_addheader calls against a reader that discards
 *   everything, most of the 10 s being measured
 * - setsymlist 800,000 macro names for each of the 7 stages in the v6 OPTNEG reply (~40 MB),
 *   test/helpers/flood-milter.ts (raw socket): libmilter writes no packet over 65,535 bytes and
 *   closes the connection instead of sending such an OPTNEG reply
 * - replbody   1 GiB of REPLBODY         test/milters/flood.py (pymilter, smfi_replacebody in
 *   65,472-byte calls; one blocking write each, so Haraka's reading is the backpressure)
 *
 * The hostile time runs from the end of DATA (setsymlist: from the TCP connect, since the flood
 * is the negotiation) to the reply that ended the hostile transaction. Every case is bounded by
 * --deadline; then it is reported as "no reply within N s" and everything is torn down.
 *
 *   npm run bench:flood -- [--cases=addrcpt,chgheader] [--deadline=100] [--sessions=4] [--strict]
 */
import * as fs from 'node:fs'
import { performance } from 'node:perf_hooks'
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server'

import { parseCommandLine } from '../test/helpers/command-line'
import { startRawFloodMilter, type RawFloodMilter } from '../test/helpers/flood-milter'
import { startHaraka, type RunningHaraka } from '../test/helpers/haraka'
import {
  assertPymilterInstalled,
  startFloodMilter,
  type PyFlood,
  type StartedMilter,
} from '../test/helpers/milter-process'
import { listenSmtp } from '../test/helpers/sink'
import { SmtpClient, type Reply } from '../test/helpers/smtp-client'

// ---------------------------------------------------------------------------
// Cases and goals

interface FloodCase {
  name: string
  /** What the row says was sent. */
  what: string
  count: number
  by: 'pymilter' | 'raw'
}

const GiB = 1024 * 1024 * 1024

const CASES: readonly FloodCase[] = [
  { name: 'addrcpt', what: '20,000 ADDRCPT', count: 20_000, by: 'pymilter' },
  { name: 'chgheader', what: '40,000 CHGHEADER', count: 40_000, by: 'pymilter' },
  { name: 'addheader', what: '2,000,000 ADDHEADER', count: 2_000_000, by: 'raw' },
  { name: 'setsymlist', what: '7 x 800,000 macro names', count: 800_000, by: 'raw' },
  { name: 'replbody', what: '1 GiB REPLBODY', count: GiB, by: 'pymilter' },
]

const GOAL_OTHERS_MS = 1000
const GOAL_HOSTILE_MS = 10_000
const GOAL_RSS_BYTES = 256 * 1024 * 1024

/** Other sessions keep sending this long before the flood (baseline) and after its reply. */
const WARMUP_MS = 1000
const AFTER_MS = 1000
/** How long to wait for the other sessions' last messages once the case ends. */
const DRAIN_MS = 2000
const RSS_SAMPLE_MS = 50

const USAGE = `usage: npm run bench:flood -- [flags]
  --cases=LIST     cases to run: ${CASES.map((c) => c.name).join(',')} (default all)
  --deadline=SEC   give up on the hostile message after this long, per case (default 100)
  --sessions=N     other SMTP sessions sending small messages meanwhile (default 4)
  --raise-limits   set every max_* key of the milter to its highest value, so that what the
                   floods cost when applied shows (linear application, the event loop's turns)
                   rather than the limit refusing them; Haraka's own bounds still hold
  --strict         exit 1 when a goal is missed (default: exit 0, it is a measurement)
  --help           this text`

interface Options {
  cases: FloodCase[]
  deadlineMs: number
  sessions: number
  strict: boolean
  raiseLimits: boolean
}

function options(argv: string[]): Options {
  const { values } = parseCommandLine(
    {
      args: argv,
      options: {
        cases: { type: 'string' },
        deadline: { type: 'string', default: '100' },
        sessions: { type: 'string', default: '4' },
        strict: { type: 'boolean', default: false },
        'raise-limits': { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    },
    USAGE,
  )
  const positive = (v: string, flag: string): number => {
    const n = Number(v)
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${flag} needs a positive number`)
    return n
  }
  const cases =
    values.cases === undefined
      ? [...CASES]
      : values.cases.split(',').map((name) => {
          const c = CASES.find((k) => k.name === name.trim())
          if (!c)
            throw new Error(`unknown case "${name}" (use ${CASES.map((k) => k.name).join(', ')})`)
          return c
        })
  return {
    cases,
    deadlineMs: positive(values.deadline, 'deadline') * 1000,
    sessions: Math.round(positive(values.sessions, 'sessions')),
    strict: values.strict,
    raiseLimits: values['raise-limits'],
  }
}

/** The max_* keys at the highest values the configuration takes (lib/config-keys.ts). */
const RAISED_LIMITS = [
  'max_modifications = 10000000',
  'max_added_headers = 1000000',
  'max_header_bytes = 1G',
  'max_macro_names = 1000',
  'max_macro_names_total = 10000',
]

// ---------------------------------------------------------------------------
// Haraka's memory, from /proc (nodes=0: the Haraka process is the one the helper spawned)

function procStatus(pid: number): { rss: number; hwm: number } | null {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (key: string): number =>
      Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
  } catch {
    return null
  }
}

/** Samples VmRSS every 50 ms; peak() also uses VmHWM when it rose after start(). */
class RssWatch {
  private timer: NodeJS.Timeout | undefined
  private max = 0
  private hwmAtStart = 0
  baseline = 0

  constructor(private readonly pid: number) {}

  start(): void {
    const s = procStatus(this.pid)
    this.baseline = s?.rss ?? 0
    this.hwmAtStart = s?.hwm ?? 0
    this.max = this.baseline
    this.timer = setInterval(() => this.sample(), RSS_SAMPLE_MS)
  }

  private sample(): void {
    const s = procStatus(this.pid)
    if (s && s.rss > this.max) this.max = s.rss
  }

  /** Stop sampling; the peak RSS since start(). */
  stop(): number {
    clearInterval(this.timer)
    this.sample()
    const s = procStatus(this.pid)
    if (s && s.hwm > this.hwmAtStart) this.max = Math.max(this.max, s.hwm)
    return this.max
  }
}

// ---------------------------------------------------------------------------
// The sink: counts bytes, keeps nothing (the replbody case delivers 1 GiB)

interface Delivery {
  from: string
  rcpts: number
  bytes: number
}

async function startCountingSink(): Promise<{
  port: number
  deliveries: Delivery[]
  stop(): Promise<void>
}> {
  const deliveries: Delivery[] = []
  const onData = (
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void => {
    let bytes = 0
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length))
    stream.on('error', (err: Error) => callback(err))
    stream.on('end', () => {
      const from = session.envelope.mailFrom
      deliveries.push({
        from: from === false ? '' : from.address,
        rcpts: session.envelope.rcptTo.length,
        bytes,
      })
      callback(null, `flood sink queued ${deliveries.length}`)
    })
  }
  const { server, port } = await listenSmtp('flood-sink.test', onData)
  return {
    port,
    deliveries,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  }
}

// ---------------------------------------------------------------------------
// The other sessions

interface Sent {
  start: number
  end: number
  ok: boolean
  /** Why it failed: the last reply, or the client's error. */
  why?: string
}

function smallMessage(session: number, seq: number): string {
  return [
    'From: alice@example.com',
    'To: bob@example.com',
    `Subject: other ${session}.${seq}`,
    `Message-ID: <other-${session}-${seq}-${Date.now()}@flood.bench>`,
    '',
    'A small message from one of the other sessions.',
    '',
  ].join('\r\n')
}

/** `sessions` SMTP sessions, each sending small messages back to back until stop(). */
class Others {
  readonly sent: Sent[] = []
  /** Start time of each session's message in flight. */
  readonly inFlight = new Map<number, number>()
  private running = true
  private readonly clients = new Set<SmtpClient>()
  private readonly loops: Array<Promise<void>>

  constructor(
    private readonly port: number,
    sessions: number,
    private readonly timeoutMs: number,
  ) {
    this.loops = Array.from({ length: sessions }, (_, i) => this.loop(i))
  }

  private async loop(session: number): Promise<void> {
    let client: SmtpClient | undefined
    let seq = 0
    while (this.running) {
      const start = performance.now()
      this.inFlight.set(session, start)
      let ok = false
      let why: string | undefined
      try {
        if (client === undefined || client.isClosed) {
          client = await SmtpClient.connect('127.0.0.1', this.port, { timeoutMs: this.timeoutMs })
          this.clients.add(client)
          await client.command('EHLO other.example.com')
        }
        const r = await client.sendMail({
          from: `other${session}@example.com`,
          rcpts: ['bob@example.com'],
          data: smallMessage(session, seq++),
          crlf: false,
        })
        ok = r.accepted
        if (!ok) why = r.last ? replyText(r.last) : 'no reply'
        if (!ok && !client.isClosed) await client.command('RSET')
      } catch (err) {
        why = err instanceof Error ? err.message : String(err)
        if (client) await client.close()
        client = undefined
        if (this.running) await new Promise((r) => setTimeout(r, 50))
      }
      this.inFlight.delete(session)
      if (this.running || ok)
        this.sent.push({ start, end: performance.now(), ok, ...(why ? { why } : {}) })
    }
    if (client) await client.close()
  }

  /** Stop sending; wait up to `drainMs` for the messages in flight, then drop the connections. */
  async stop(drainMs: number): Promise<{ unfinished: number[] }> {
    this.running = false
    await Promise.race([Promise.all(this.loops), new Promise((r) => setTimeout(r, drainMs))])
    const now = performance.now()
    const unfinished = [...this.inFlight.values()].map((start) => now - start)
    for (const c of this.clients) void c.close()
    await Promise.all(this.loops)
    return { unfinished }
  }
}

// ---------------------------------------------------------------------------
// One case

interface Row {
  c: FloodCase
  /** The hostile transaction's last reply, or why there is none. */
  reply: string
  answered: boolean
  hostileMs: number | null
  othersWorstMs: number
  othersOk: number
  othersFailed: number
  othersUnfinished: number
  rssGrowth: number
  milterNote: string
  sinkNote: string
  /** The first failure of the other sessions during the case. */
  othersWhy: string | undefined
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

function replyText(r: Reply): string {
  return `${r.code} ${r.lines[0] ?? ''}${r.lines.length > 1 ? ' ...' : ''}`
}

const HOSTILE_MESSAGE = [
  'From: mallory@example.com',
  'To: bob@example.com',
  'Subject: flood me',
  'Message-ID: <hostile@flood.bench>',
  '',
  'The milter answers this one with a flood.',
  '',
].join('\r\n')

/** The hostile session; `mark()` is called when the flood starts (its clock starts there). */
async function hostile(
  port: number,
  timeoutMs: number,
  atConnect: boolean,
  mark: () => void,
): Promise<{ reply: Reply; client: SmtpClient }> {
  if (atConnect) mark()
  const client = await SmtpClient.connect('127.0.0.1', port, { timeoutMs })
  const steps: Array<() => Promise<Reply>> = [
    () => client.command('EHLO mallory.example.com'),
    () => client.command('MAIL FROM:<flood@example.com>'),
    () => client.command('RCPT TO:<bob@example.com>'),
    () => client.command('DATA'),
  ]
  let last = client.greeting
  if (last.code !== 220) return { reply: last, client }
  for (const step of steps) {
    last = await step()
    if (last.code >= 400) return { reply: last, client }
  }
  const sent = client.sendData(HOSTILE_MESSAGE, { crlf: false })
  if (!atConnect) mark()
  return { reply: await sent, client }
}

async function runCase(
  c: FloodCase,
  o: Options,
  sinkPort: number,
  deliveries: Delivery[],
): Promise<Row> {
  let py: StartedMilter | undefined
  let raw: RawFloodMilter | undefined
  let haraka: RunningHaraka | undefined
  let others: Others | undefined
  let hostileClient: SmtpClient | undefined
  const sinkBefore = deliveries.length
  try {
    if (c.by === 'raw') {
      raw = await startRawFloodMilter({
        flood: c.name as 'addheader' | 'setsymlist',
        count: c.count,
      })
    } else {
      py = await startFloodMilter({ flood: c.name as PyFlood, count: c.count })
    }
    const socket = raw?.spec ?? py?.socket ?? ''
    haraka = await startHaraka({
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort,
      // 'notice' is the quietest level at which the helper still sees "Listening on"
      logLevel: 'notice',
      config: {
        'milter.ini': [
          '[main]',
          'milters = flood',
          '',
          '[milter.flood]',
          `socket = ${socket}`,
          ...(o.raiseLimits ? RAISED_LIMITS : []),
          '',
        ].join('\n'),
      },
    })

    others = new Others(haraka.port, o.sessions, o.deadlineMs + 10_000)
    await sleep(WARMUP_MS)

    const rss = new RssWatch(haraka.pid)
    rss.start()
    let floodStart = performance.now()
    raw?.arm()
    const attempt = hostile(haraka.port, o.deadlineMs + 10_000, c.name === 'setsymlist', () => {
      floodStart = performance.now()
    })
    const caseStart = performance.now()
    const outcome = await Promise.race([
      attempt.then(
        (r) => ({ kind: 'reply' as const, ...r }),
        (err: unknown) => ({ kind: 'error' as const, err }),
      ),
      sleep(o.deadlineMs).then(() => ({ kind: 'deadline' as const })),
    ])
    const end = performance.now()
    let reply: string
    let answered = false
    let hostileMs: number | null = null
    if (outcome.kind === 'reply') {
      hostileClient = outcome.client
      reply = replyText(outcome.reply)
      answered = true
      hostileMs = end - floodStart
      await sleep(AFTER_MS)
    } else if (outcome.kind === 'error') {
      const msg = outcome.err instanceof Error ? outcome.err.message : String(outcome.err)
      reply = /closed/.test(msg) ? 'connection closed, no reply' : `error: ${msg}`
      hostileMs = end - floodStart
    } else {
      reply = `no reply within ${Math.round(o.deadlineMs / 1000)} s`
      // the hostile client is torn down with Haraka
      void attempt.then(
        (r) => r.client.close(),
        () => undefined,
      )
    }
    const { unfinished } = await others.stop(DRAIN_MS)
    const peak = rss.stop()

    // the other sessions' messages that overlapped the flood (from its start to the end of the case)
    const during = others.sent.filter((s) => s.end >= caseStart)
    const worst = Math.max(0, ...during.map((s) => s.end - s.start), ...unfinished)
    const flood = py?.events().find((e) => e.event === 'flood')
    const milterNote =
      c.by === 'raw'
        ? raw?.result
          ? `raw milter wrote ${raw.result.packets.toLocaleString('en-US')} packet(s) in ${(raw.result.ms / 1000).toFixed(1)} s${raw.result.complete ? '' : ' (connection closed first)'}`
          : 'raw milter had not finished writing'
        : flood
          ? `pymilter wrote the flood in ${flood.seconds.toFixed(1)} s${flood.error ? ` (${flood.error})` : ''}`
          : 'pymilter had not finished writing'
    const got = deliveries.slice(sinkBefore).filter((d) => d.from === 'flood@example.com')
    const sinkNote =
      got.length === 0
        ? 'not delivered'
        : `delivered: ${got.map((d) => `${d.rcpts} rcpt(s), ${(d.bytes / 1024 / 1024).toFixed(1)} MiB`).join('; ')}`
    return {
      c,
      reply,
      answered,
      hostileMs,
      othersWorstMs: worst,
      othersOk: during.filter((s) => s.ok).length,
      othersFailed: during.filter((s) => !s.ok).length,
      othersUnfinished: unfinished.length,
      rssGrowth: Math.max(0, peak - rss.baseline),
      milterNote,
      sinkNote,
      othersWhy: during.find((s) => !s.ok)?.why,
    }
  } finally {
    if (others) await others.stop(0)
    if (hostileClient) await hostileClient.close()
    if (haraka) await haraka.stop({ killAfterMs: 2000 })
    if (py) await py.stop()
    if (raw) await raw.close()
  }
}

// ---------------------------------------------------------------------------
// Report

const mib = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MiB`
const secs = (ms: number): string => `${(ms / 1000).toFixed(2)} s`
const verdict = (ok: boolean): string => (ok ? 'PASS' : 'FAIL')

function cut(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 3)}...`
}

interface Judged {
  row: Row
  others: boolean
  hostile: boolean
  rss: boolean
}

function judge(row: Row): Judged {
  return {
    row,
    others: row.othersWorstMs < GOAL_OTHERS_MS,
    hostile: row.answered && row.hostileMs !== null && row.hostileMs < GOAL_HOSTILE_MS,
    rss: row.rssGrowth < GOAL_RSS_BYTES,
  }
}

function table(judged: Judged[], o: Options): string {
  const head = [
    'case',
    'flood',
    'hostile reply',
    'hostile time',
    'others worst',
    'others ok/fail',
    'RSS growth',
  ]
  const rows = judged.map(({ row, others, hostile, rss }) => [
    row.c.name,
    row.c.what,
    cut(row.reply, 44),
    `${row.hostileMs === null ? `> ${secs(o.deadlineMs)}` : secs(row.hostileMs)} ${verdict(hostile)}`,
    `${secs(row.othersWorstMs)}${row.othersUnfinished ? '*' : ''} ${verdict(others)}`,
    `${row.othersOk}/${row.othersFailed}`,
    `${mib(row.rssGrowth)} ${verdict(rss)}`,
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`
  return [
    line(head),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...rows.map(line),
  ].join('\n')
}

async function main(): Promise<number> {
  const o = options(process.argv.slice(2))
  if (o.cases.some((c) => c.by === 'pymilter')) assertPymilterInstalled()
  process.stdout.write(
    `Flood benchmark: ${o.cases.length} case(s), ${o.sessions} other session(s), deadline ${o.deadlineMs / 1000} s per case${o.raiseLimits ? '; every max_* limit raised to its highest value' : ''}\n` +
      `Goals: hostile message answered within ${GOAL_HOSTILE_MS / 1000} s, other sessions' worst latency < ${GOAL_OTHERS_MS / 1000} s, Haraka RSS growth < ${mib(GOAL_RSS_BYTES)}\n\n`,
  )
  const sink = await startCountingSink()
  const judged: Judged[] = []
  try {
    for (const c of o.cases) {
      process.stdout.write(`running ${c.name} (${c.what}, ${c.by}) ...\n`)
      const row = await runCase(c, o, sink.port, sink.deliveries)
      judged.push(judge(row))
      process.stdout.write(`  ${row.milterNote}; hostile message ${row.sinkNote}\n`)
      if (row.othersWhy !== undefined)
        process.stdout.write(`  other sessions, first failure: ${cut(row.othersWhy, 100)}\n`)
    }
  } finally {
    await sink.stop()
  }
  process.stdout.write(`\n${table(judged, o)}\n`)
  process.stdout.write(
    `\nhostile time: end of DATA (setsymlist: TCP connect) to the reply that ended the hostile transaction.\n` +
      `others worst: the slowest MAIL..250-after-DATA of the other sessions while the flood lasted (* = still unanswered when the case ended).\n` +
      `RSS growth: peak VmRSS (sampled every ${RSS_SAMPLE_MS} ms, and VmHWM) of the Haraka process during the case minus its VmRSS before.\n`,
  )
  const missed = judged.some((j) => !j.others || !j.hostile || !j.rss)
  return o.strict && missed ? 1 : 0
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exit(2)
  },
)
