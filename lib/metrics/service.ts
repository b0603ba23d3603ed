/**
 * The metrics of one Haraka process, by its role:
 *
 *   single (nodes=0)  records, serves /metrics, logs the summary line
 *   worker            records, and answers the master's requests
 *   master            records nothing (it takes no SMTP connections);
 *                     serves and summarises the sum of its workers
 *
 * A worker knows its role when loaded; the master and the single process
 * learn theirs from Haraka's init_master hook (until then nothing listens).
 * configure() is called at every (re)load of milter.ini: the endpoint is
 * moved only when its address changed, the timer only when its period did,
 * so a reload leaks neither; close() stops both.
 */
import cluster from 'node:cluster'

import type { MetricsSettings } from '../config'
import { aggregate, answerMaster, gatherWorkers, type Gathered } from './cluster'
import { MilterMetrics, type MetricJson } from './recorder'
import { startMetricsServer, type MetricsServer, type Rendered } from './server'
import { addFigures, figuresOf, since, summaryLine, type Figures } from './summary'

export type Role = 'single' | 'master' | 'worker'

export interface ServiceLog {
  info(text: string): void
  warn(text: string): void
  error(text: string): void
}

/** How long the master waits for its workers' figures (by default). */
const GATHER_MS = 4000

/** True when the settings ask for anything (an endpoint or a summary): the process records. */
export function metricsWanted(s: MetricsSettings): boolean {
  return s.listen !== undefined || s.summaryIntervalMs > 0
}

export class MetricsService {
  readonly recorder = new MilterMetrics()
  private role: Role | undefined = cluster.isWorker ? 'worker' : undefined
  private settings: MetricsSettings = { summaryIntervalMs: 0 }
  private milters: readonly string[] = []
  private closed = false
  private server: MetricsServer | undefined
  private serverKey = ''
  private serverChange: Promise<void> = Promise.resolve()
  private timer: NodeJS.Timeout | undefined
  private timerMs = 0
  private ticking = false
  /** The last summary's snapshot: when, and each source's figures (the process, or each worker pid). */
  private last: { at: number; sources: Map<number, Figures> } | undefined

  /** How long the master waits for its workers' figures. */
  private readonly gatherMs: number

  constructor(
    private readonly log: ServiceLog,
    opts: { gatherMs?: number } = {},
  ) {
    this.gatherMs = opts.gatherMs ?? GATHER_MS
  }

  /** New settings (every load of milter.ini), with the milters in configured order. */
  configure(settings: MetricsSettings, milters: readonly string[]): void {
    this.settings = settings
    this.milters = milters
    this.apply()
  }

  /** The role Haraka gave this process (init_master); a worker keeps its own. */
  start(role: Exclude<Role, 'worker'>): void {
    if (this.role === 'worker') return
    this.role = role
    this.apply()
  }

  /** Stops the endpoint and the timer (Haraka's graceful shutdown). */
  close(): Promise<void> {
    this.closed = true
    this.serverKey = ''
    clearInterval(this.timer)
    this.timer = undefined
    this.serverChange = this.serverChange.then(() => this.server?.close())
    return this.serverChange
  }

  private apply(): void {
    if (this.closed || this.role === undefined) return
    const wanted = metricsWanted(this.settings)
    if (this.role === 'worker') {
      if (wanted) answerMaster(() => this.recorder.registry.getMetricsAsJSON())
      return
    }
    this.syncServer()
    this.syncTimer()
  }

  // ---- the endpoint --------------------------------------------------------

  private syncServer(): void {
    const listen = this.settings.listen
    const key = listen ? `${listen.host}|${listen.port}` : ''
    if (key === this.serverKey) return
    this.serverKey = key
    // one change at a time: the old endpoint is closed before a new one binds
    this.serverChange = this.serverChange
      .then(async () => {
        await this.server?.close()
        this.server = undefined
        if (!listen || this.closed || this.serverKey !== key) return
        this.server = startMetricsServer({
          ...listen,
          render: () => this.render(),
          log: this.log,
        })
      })
      .catch((e: unknown) =>
        this.log.error(`metrics: ${e instanceof Error ? e.message : String(e)}`),
      )
  }

  private async render(): Promise<Rendered> {
    if (this.role !== 'master') {
      const registry = this.recorder.registry
      return { status: 200, contentType: registry.contentType, body: await registry.metrics() }
    }
    const g = await gatherWorkers(this.gatherMs)
    if (g.workers.size < g.asked)
      throw new Error(`${g.workers.size} of ${g.asked} Haraka workers answered in time`)
    const registry = aggregate(g)
    return { status: 200, contentType: registry.contentType, body: await registry.metrics() }
  }

  // ---- the summary line ----------------------------------------------------

  private syncTimer(): void {
    const ms = this.settings.summaryIntervalMs
    if (ms === this.timerMs) return
    clearInterval(this.timer)
    this.timer = undefined
    this.timerMs = ms
    if (ms <= 0) return
    this.last ??= { at: Date.now(), sources: new Map() }
    this.timer = setInterval(() => void this.tick(), ms)
    this.timer.unref()
  }

  /** Each source's figures now: this process (source 0), or each worker that answered. */
  private async snapshot(): Promise<{ sources: Map<number, Figures>; missing: number }> {
    if (this.role !== 'master') {
      const json: MetricJson[] = await this.recorder.registry.getMetricsAsJSON()
      return { sources: new Map([[0, figuresOf(json)]]), missing: 0 }
    }
    const g: Gathered = await gatherWorkers(this.gatherMs)
    const sources = new Map([...g.workers].map(([pid, json]) => [pid, figuresOf(json)] as const))
    return { sources, missing: g.asked - g.workers.size }
  }

  private async tick(): Promise<void> {
    if (this.ticking || this.closed) return
    this.ticking = true
    try {
      const now = Date.now()
      const { sources, missing } = await this.snapshot()
      if (missing > 0) {
        this.log.warn(`milter summary skipped: ${missing} Haraka worker(s) did not answer in time`)
        return
      }
      const last = this.last ?? { at: now, sources: new Map<number, Figures>() }
      const parts = [...sources].map(([id, f]) => since(f, last.sources.get(id)))
      this.log.info(summaryLine(addFigures(parts), (now - last.at) / 1000, this.milters))
      this.last = { at: now, sources }
    } catch (e) {
      this.log.error(`milter summary: ${e instanceof Error ? e.message : String(e)}`)
    } finally {
      this.ticking = false
    }
  }
}
