/**
 * Runs fault-injection cases through one real Haraka (test/helpers/haraka.ts) with the plugin and
 * queue/smtp_forward to a digest sink, and reconciles every message (reconcile.ts).
 *
 * A case has lanes; a lane is one Haraka listener with its own milters (fault milters,
 * fault-milter.ts) and its own SMTP load (load.ts). A matrix case has one lane per
 * default_action, run side by side.
 *
 * Haraka is shared: cases run in rounds. Each round starts fresh fault milters and rewrites
 * milter.ini with fresh milter names for them (config changes apply to new connections; Haraka
 * re-reads the file ~5 s after it changed), so no per-milter state (a circuit breaker) leaks from
 * one case into the next. Several cases share a round; when a round shows a crash, a freeze or a
 * crash-like log line, Haraka is restarted if needed and each case of the round is run again on
 * its own, so the report names the case that broke it.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { startDigestSink, type DigestSink } from './digest-sink'
import { startFaultMilter, type Fault, type FaultTiming, type Stage } from './fault-milter'
import { startHaraka, type RunningHaraka } from './haraka'
import { freePort } from './paths'
import { runLoad, type LoadResult } from './load'
import {
  QuarantineIndex,
  reconcileLane,
  scanLog,
  type DefaultAction,
  type FailureScope,
  type LaneMilter,
  type LaneReport,
  type LogIssue,
} from './reconcile'
import { SmtpClient } from './smtp-client'

/** One milter of a lane. */
export interface MilterPlan {
  fault: Fault | 'none'
  stage: Stage
  probability: number
  per?: 'message' | 'connection'
  action: DefaultAction
  scope: FailureScope
  /** Header the milter adds at end of message (default X-Fault-Milter). */
  headerName?: string
  timing?: Partial<FaultTiming>
}

/** One listener: its milters (in chain order) and its SMTP load. */
export interface LanePlan {
  name: string
  milters: MilterPlan[]
  sessions: number
  messagesPerSession: number
  sizes?: readonly number[]
}

export interface CasePlan {
  /** Unique in a run: names fault decisions, message ids and milter names. */
  id: string
  lanes: LanePlan[]
  /** connect_timeout, command_timeout and content_timeout, seconds. */
  timeoutS: number
  /** eom_timeout, seconds. */
  eomTimeoutS: number
  /** Check what default_action and failure_scope require (single-milter lanes). */
  policy: boolean
  seed: number
  /** A reply not received within this long is a hang (default from the timeouts). */
  replyTimeoutMs?: number
  /** No message starts after this long (default 240 s). */
  deadlineMs?: number
}

export interface LaneResult {
  lane: LanePlan
  milters: LaneMilter[]
  load: LoadResult
  report: LaneReport
}

export interface CaseResult {
  plan: CasePlan
  lanes: LaneResult[]
  /** Crash-like log lines seen while the case ran (alone, or in its round when not re-run). */
  log: LogIssue[]
  /** How Haraka exited while the case ran, if it did. */
  exited: string | null
  /** Haraka did not greet a probe connection after the case. */
  frozen: boolean
  /** True when the case was re-run alone after its round broke. */
  solo: boolean
  /** Other cases in the round the log lines may belong to (empty when alone). */
  sharedWith: string[]
  /**
   * When the case's first round (with other cases) broke and the case was re-run alone: what
   * broke that round. Kept as evidence even when the re-run alone is clean (a race).
   */
  roundBreak?: RoundBreak
  ms: number
}

/** A round that crashed, froze or logged crash-like lines. */
export interface RoundBreak {
  cases: string[]
  log: LogIssue[]
  exited: string | null
  frozen: boolean
}

export interface HarnessOptions {
  /** Listener slots: the most lanes a round can run at once. */
  slots: number
  /** Haraka smtp.ini nodes (0: one process, the default). */
  nodes?: number
  logLevel?: string
  /** Progress lines (stderr). */
  verbose?: boolean
}

export interface Rss {
  master: number
  workers: number[]
  total: number
}

/** Resident set size (bytes) of a process and its children, from /proc. */
export function rssOf(pid: number): Rss {
  const vm = (p: number): number => {
    try {
      const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))
      return m ? Number(m[1]) * 1024 : 0
    } catch {
      return 0
    }
  }
  const workers: number[] = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) workers.push(vm(Number(entry)))
    } catch {
      // gone
    }
  }
  const master = vm(pid)
  return { master, workers, total: master + workers.reduce((a, b) => a + b, 0) }
}

/** Reads a growing log file from a byte offset. */
function readFrom(file: string, from: number): string {
  let fd: number
  try {
    fd = fs.openSync(file, 'r')
  } catch {
    return ''
  }
  try {
    const size = fs.fstatSync(fd).size
    if (size <= from) return ''
    const buf = Buffer.alloc(size - from)
    fs.readSync(fd, buf, 0, buf.length, from)
    return buf.toString('utf8')
  } finally {
    fs.closeSync(fd)
  }
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size
  } catch {
    return 0
  }
}

/** Does Haraka greet (any code) on this port within `ms`? */
async function probe(port: number, ms: number): Promise<boolean> {
  const c = SmtpClient.open('127.0.0.1', port, { timeoutMs: ms })
  const r = await c.read()
  if (r.kind === 'reply' && !c.isClosed) c.send('QUIT\r\n')
  await c.close()
  return r.kind === 'reply'
}

/** The keys of one [milter.NAME] section (timeouts in seconds; fractions parse). */
function milterSection(plan: CasePlan, m: MilterPlan, socket: string): Record<string, string> {
  return {
    socket,
    default_action: m.action,
    failure_scope: m.scope,
    connect_timeout: String(plan.timeoutS),
    command_timeout: String(plan.timeoutS),
    content_timeout: String(plan.timeoutS),
    eom_timeout: String(plan.eomTimeoutS),
  }
}

interface RunningLane {
  plan: CasePlan
  lane: LanePlan
  slot: number
  milters: LaneMilter[]
}

/** The shared Haraka, the sink, the quarantine directory and the listener slots. */
export class FaultHarness {
  private haraka: RunningHaraka | undefined
  private exitInfo: string | null = null
  private round = 0
  private restarts = 0
  private currentIni = ''
  readonly quarantine: QuarantineIndex

  private constructor(
    private readonly opts: HarnessOptions,
    readonly sink: DigestSink,
    private readonly probePort: number,
    private readonly slotPorts: number[],
    readonly quarantineDir: string,
    private readonly spoolDir: string,
  ) {
    this.quarantine = new QuarantineIndex(quarantineDir)
  }

  static async start(opts: HarnessOptions): Promise<FaultHarness> {
    const sink = await startDigestSink()
    const probePort = await freePort()
    const slotPorts: number[] = []
    for (let i = 0; i < opts.slots; i++) slotPorts.push(await freePort())
    const qdir = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-quarantine-'))
    const spool = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-spool-'))
    const h = new FaultHarness(opts, sink, probePort, slotPorts, qdir, spool)
    h.currentIni = h.milterIni([])
    await h.startHaraka()
    return h
  }

  /** Haraka's pid (the master in cluster mode). */
  get pid(): number | undefined {
    return this.haraka?.pid
  }

  /** How many times Haraka had to be restarted (after a crash or a freeze). */
  get restartCount(): number {
    return this.restarts
  }

  rss(): Rss | undefined {
    return this.haraka ? rssOf(this.haraka.pid) : undefined
  }

  private log(msg: string): void {
    if (this.opts.verbose) process.stderr.write(`[faults] ${msg}\n`)
  }

  private async startHaraka(): Promise<void> {
    const listen = [this.probePort, ...this.slotPorts].map((p) => `127.0.0.1:${p}`)
    this.exitInfo = null
    const h = await startHaraka({
      listeners: listen,
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: this.sink.port,
      logLevel: this.opts.logLevel ?? 'info',
      startTimeoutMs: 30000,
      config: {
        'milter.ini': this.currentIni,
        'smtp.ini': [`listen=${listen.join(',')}`, `nodes=${this.opts.nodes ?? 0}`, ''].join('\n'),
      },
      env: { TMPDIR: this.spoolDir },
    })
    this.haraka = h
    void h.exited.then((e) => {
      if (this.haraka === h) this.exitInfo = `code ${String(e.code)}, signal ${String(e.signal)}`
    })
    if ((this.opts.nodes ?? 0) > 1) {
      // every worker must have loaded the plugin before a round starts
      await this.waitLog(0, /milters: /g, this.opts.nodes ?? 1, 30000)
    }
  }

  private async restartHaraka(why: string): Promise<void> {
    this.log(`restarting Haraka: ${why}`)
    this.restarts += 1
    const h = this.haraka
    this.haraka = undefined
    if (h) await h.stop({ signal: 'SIGKILL', killAfterMs: 1000 })
    await this.startHaraka()
  }

  /** Waits until the log (from byte `from`) matches `re` `count` times. */
  private async waitLog(from: number, re: RegExp, count: number, ms: number): Promise<void> {
    const h = this.haraka
    if (!h) throw new Error('Haraka is not running')
    const deadline = Date.now() + ms
    for (;;) {
      const text = readFrom(h.logFile, from)
      const n = [...text.matchAll(new RegExp(re.source, 'g'))].length
      if (n >= count) return
      if (this.exitInfo !== null) throw new Error(`Haraka exited (${this.exitInfo})`)
      if (Date.now() > deadline)
        throw new Error(`Haraka did not log ${String(re)} ${count} time(s) within ${ms} ms`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  private milterIni(lanes: readonly RunningLane[]): string {
    const out: string[] = ['[main]']
    const names = lanes.flatMap((l) => l.milters.map((m) => m.name))
    out.push(`milters = ${names.join(', ')}`)
    out.push('', '[quarantine]', 'action = hold', `dir = ${this.quarantineDir}`, '')
    for (const l of lanes) {
      for (const [i, m] of l.milters.entries()) {
        const keys = milterSection(l.plan, l.lane.milters[i]!, m.milter.socket)
        out.push(`[milter.${m.name}]`, ...Object.entries(keys).map(([k, v]) => `${k} = ${v}`), '')
      }
    }
    out.push('[listener.probe]', `listen = 127.0.0.1:${this.probePort}`, 'milters =', '')
    for (const [slot, port] of this.slotPorts.entries()) {
      const l = lanes.find((x) => x.slot === slot)
      out.push(
        `[listener.slot${slot}]`,
        `listen = 127.0.0.1:${port}`,
        `milters = ${l ? l.milters.map((m) => m.name).join(', ') : ''}`,
        `source_channel = slot${slot}`,
        '',
      )
    }
    return out.join('\n')
  }

  /** Applies a milter.ini: rewrite and wait for the reload (or start Haraka with it). */
  private async applyIni(ini: string, marker: string): Promise<void> {
    this.currentIni = ini
    if (!this.haraka || this.exitInfo !== null) {
      await this.restartHaraka(this.exitInfo ? `exited (${this.exitInfo})` : 'not running')
      return
    }
    const from = fileSize(this.haraka.logFile)
    await this.haraka.writeConfig('milter.ini', ini)
    const workers = Math.max(1, this.opts.nodes ?? 0)
    await this.waitLog(from, new RegExp(`milters: [^\\n]*${marker}=`), workers, 30000)
  }

  private replyTimeoutMs(plan: CasePlan): number {
    return plan.replyTimeoutMs ?? Math.max(20000, (plan.eomTimeoutS + 4 * plan.timeoutS) * 2000)
  }

  /** Runs cases, `concurrency` at a time (as slots allow); results in input order. */
  async runCases(
    cases: readonly CasePlan[],
    opts: { concurrency: number; onResult?: (r: CaseResult) => void },
  ): Promise<CaseResult[]> {
    const results: CaseResult[] = []
    let i = 0
    while (i < cases.length) {
      const round: CasePlan[] = []
      let lanes = 0
      while (
        i < cases.length &&
        round.length < opts.concurrency &&
        lanes + cases[i]!.lanes.length <= this.slotPorts.length
      ) {
        lanes += cases[i]!.lanes.length
        round.push(cases[i]!)
        i++
      }
      if (round.length === 0) throw new Error(`case ${cases[i]!.id} has more lanes than slots`)
      for (const r of await this.runRound(round, false)) {
        results.push(r)
        opts.onResult?.(r)
      }
    }
    return results
  }

  private async runRound(cases: readonly CasePlan[], solo: boolean): Promise<CaseResult[]> {
    const round = ++this.round
    const started = Date.now()
    const running: RunningLane[] = []
    let slot = 0
    for (const [ci, plan] of cases.entries()) {
      for (const [li, lane] of plan.lanes.entries()) {
        const milters: LaneMilter[] = []
        for (const [mi, m] of lane.milters.entries()) {
          const milter = await startFaultMilter({
            id: `${plan.id}/${lane.name}/${mi}`,
            fault: m.fault,
            stage: m.stage,
            probability: m.probability,
            per: m.per ?? 'message',
            seed: plan.seed,
            ...(m.timing ? { timing: m.timing } : {}),
            ...(m.headerName !== undefined ? { headerName: m.headerName } : {}),
          })
          milters.push({
            name: `r${round}c${ci}l${li}m${mi}`,
            action: m.action,
            scope: m.scope,
            milter,
          })
        }
        running.push({ plan, lane, slot: slot++, milters })
      }
    }
    const closeMilters = async (): Promise<void> => {
      await Promise.all(running.flatMap((l) => l.milters.map((m) => m.milter.close())))
    }
    try {
      this.log(`round ${round}${solo ? ' (solo)' : ''}: ${cases.map((c) => c.id).join(', ')}`)
      await this.applyIni(this.milterIni(running), running[0]?.milters[0]?.name ?? 'none')
      const h = this.haraka!
      const logFrom = fileSize(h.logFile)
      const loads = await Promise.all(
        running.map((l) =>
          runLoad({
            port: this.slotPorts[l.slot]!,
            label: `${l.plan.id.replace(/[^A-Za-z0-9.-]/g, '-')}.${l.lane.name}`,
            run: `r${round}`,
            sessions: l.lane.sessions,
            messagesPerSession: l.lane.messagesPerSession,
            ...(l.lane.sizes ? { sizes: l.lane.sizes } : {}),
            replyTimeoutMs: this.replyTimeoutMs(l.plan),
            deadlineMs: l.plan.deadlineMs ?? 240000,
            seed: l.plan.seed,
          }),
        ),
      )
      // every 250 must show up (delivered or held) unless it is lost; then let stragglers land
      const okIds = loads.flatMap((l) =>
        l.outcomes.filter((o) => o.final === 'ok').map((o) => o.id),
      )
      await this.sink.waitUntil(() => {
        this.quarantine.scan()
        return okIds.every(
          (id) => this.sink.byMsgId(id).length > 0 || this.quarantine.count(id) > 0,
        )
      }, 15000)
      await this.sink.waitQuiet(1000, 5000)
      this.quarantine.scan()

      const logText = readFrom(h.logFile, logFrom)
      const log = scanLog(logText)
      const exited = this.exitInfo
      const frozen = exited === null && !(await probe(this.probePort, 10000))
      const broken = exited !== null || frozen || log.length > 0
      if (broken && cases.length > 1) {
        this.log(
          `round ${round} broke (${exited ? `exit ${exited}` : frozen ? 'frozen' : log.map((l) => l.kind).join(', ')}); re-running its cases one by one`,
        )
        await closeMilters()
        if (exited !== null || frozen)
          await this.restartHaraka(exited ? `exited (${exited})` : 'frozen')
        const roundBreak: RoundBreak = { cases: cases.map((c) => c.id), log, exited, frozen }
        const out: CaseResult[] = []
        for (const c of cases) {
          for (const r of await this.runRound([c], true)) out.push({ ...r, roundBreak })
        }
        return out
      }
      if (frozen) await this.restartHaraka('frozen')

      const results: CaseResult[] = cases.map((plan) => ({
        plan,
        lanes: [],
        log,
        exited,
        frozen,
        solo,
        sharedWith: cases.filter((c) => c !== plan).map((c) => c.id),
        ms: Date.now() - started,
      }))
      for (const [k, l] of running.entries()) {
        const load = loads[k]!
        const report = reconcileLane(
          load.outcomes,
          l.milters,
          (id) => this.sink.byMsgId(id),
          this.quarantine,
          l.plan.policy,
        )
        results[cases.indexOf(l.plan)]!.lanes.push({
          lane: l.lane,
          milters: l.milters,
          load,
          report,
        })
      }
      await closeMilters()
      return results
    } catch (e) {
      await closeMilters()
      throw e
    }
  }

  async stop(): Promise<void> {
    const h = this.haraka
    this.haraka = undefined
    if (h) await h.stop()
    await this.sink.stop()
    fs.rmSync(this.quarantineDir, { recursive: true, force: true })
    fs.rmSync(this.spoolDir, { recursive: true, force: true })
  }
}
