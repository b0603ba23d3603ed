/**
 * The plugin's process-wide part: the configuration in force (a bad reload
 * keeps the previous one), the time budget Haraka must allow each hook, and
 * the milter pool (with its breakers, kept across reloads).
 */
import {
  describeListeners,
  parseMilterConfig,
  type Ini,
  type MilterConfig,
  type MilterDef,
} from '../config'
import { poolFigures } from '../metrics/figures'
import { QuarantineReader, type QuarantineFigures } from '../metrics/quarantine-figures'
import type { MilterMetrics } from '../metrics/recorder'
import { metricsWanted, MetricsService, type Role } from '../metrics/service'
import { MilterPool, type EndpointUse } from '../pool'
import { breakerText } from './log'

/** What the runtime logs through (the Haraka plugin object). */
export interface RuntimeLog {
  loginfo(...args: unknown[]): void
  logerror(...args: unknown[]): void
  logwarn(...args: unknown[]): void
  logcrit(...args: unknown[]): void
  logdebug?(...args: unknown[]): void
}

/** The log line for a new session's endpoint: info after a failover, else debug. */
export function endpointText(
  milter: string,
  use: EndpointUse,
): { level: 'info' | 'debug'; text: string } {
  const before = [
    ...use.failed.map((f) => `${f.endpoint} failed (${f.reason})`),
    ...use.skipped.map((t) => `${t} marked down, skipped`),
  ]
  return use.failed.length > 0
    ? { level: 'info', text: `${milter}: failed over to ${use.endpoint}: ${before.join('; ')}` }
    : {
        level: 'debug',
        text: `${milter}: session on ${use.endpoint}${before.length ? ` (${before.join('; ')})` : ''}`,
      }
}

/**
 * Haraka's per-hook timer must not fire before our own milter timeouts do:
 * the worst case of one hook is every milter taking its full connect time
 * on each of its endpoints (failover within one open), then its command,
 * content and end-of-message time.
 */
function hookTimeoutSeconds(cfg: MilterConfig): number {
  let ms = 0
  for (const m of cfg.milters.values()) {
    const t = m.timeouts
    ms += t.connectMs * m.endpoints.length + t.commandMs + t.contentMs + (t.eomMs ?? t.contentMs)
  }
  return Math.ceil(ms / 1000) + 10
}

/** A milter for the load line: name=endpoints, with balance and TLS when they apply. */
function describe(m: MilterDef): string {
  const eps = m.endpoints
  const extra = [...(eps.length > 1 ? [m.balance ?? 'failover'] : []), ...(m.tls ? ['tls'] : [])]
  return `${m.name}=${m.socketText}${extra.length ? ` (${extra.join(', ')})` : ''}`
}

/** The configuration and pool of one Haraka worker. */
export class Runtime {
  cfg: MilterConfig | undefined
  /** Why there is no configuration (only when none was ever loaded). */
  error: string | undefined
  pool: MilterPool | undefined
  /** Where each message's reports are counted; undefined when [metrics] asks for nothing. */
  metrics: MilterMetrics | undefined
  private service: MetricsService | undefined
  private readonly quarantine = new QuarantineReader()
  /** The last quarantine read failure logged, so a scrape every few seconds logs it once. */
  private quarantineProblem: string | undefined
  private role: Exclude<Role, 'worker'> | undefined

  constructor(private readonly log: RuntimeLog) {}

  /** Parses milter.ini; returns the hook timeout to set, or undefined when it was refused. */
  load(ini: Ini, file = 'milter.ini'): number | undefined {
    let cfg: MilterConfig
    try {
      cfg = parseMilterConfig(ini, file)
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e)
      this.log.logcrit(
        `configuration error: ${msg}${this.cfg ? ' (keeping the previous configuration)' : ''}`,
      )
      if (!this.cfg) this.error = msg
      return undefined
    }
    this.cfg = cfg
    this.error = undefined
    for (const w of cfg.warnings) this.log.logwarn(w)
    const old = this.pool
    old?.close()
    this.pool = new MilterPool({
      reuse: cfg.reuseConnections,
      ...(old ? { breakers: old.breakers, live: old.live } : {}),
      onBreakerChange: (milter, ch, endpoints) => {
        const { level, text } = breakerText(milter, ch, endpoints)
        if (level === 'error') this.log.logerror(text)
        else if (level === 'warn') this.log.logwarn(text)
        else this.log.loginfo(text)
      },
      onReuseOff: (milter, reason) =>
        this.log.logwarn(`${milter}: connections no longer reused (SMFIC_QUIT_NC): ${reason}`),
      onEndpoint: (milter, use) => {
        const { level, text } = endpointText(milter, use)
        if (level === 'info') this.log.loginfo(text)
        else this.log.logdebug?.(text)
      },
    })
    this.log.loginfo(`milters: ${[...cfg.milters.values()].map(describe).join('; ') || '(none)'}`)
    for (const line of describeListeners(cfg)) this.log.loginfo(line)
    this.loadMetrics(cfg)
    return hookTimeoutSeconds(cfg)
  }

  /** [metrics]: the service is made the first time it is asked for, then kept (its counters too). */
  private loadMetrics(cfg: MilterConfig): void {
    const wanted = metricsWanted(cfg.metrics)
    if (!this.service && !wanted) return
    if (!this.service) {
      const s = new MetricsService({
        info: (t) => this.log.loginfo(t),
        warn: (t) => this.log.logwarn(t),
        error: (t) => this.log.logerror(t),
      })
      s.recorder.gauges(() => poolFigures(this.cfg, this.pool))
      s.recorder.quarantine(() => this.quarantineFigures())
      if (this.role) s.start(this.role)
      this.service = s
    }
    this.service.configure(cfg.metrics, [...cfg.milters.keys()])
    this.metrics = wanted ? this.service.recorder : undefined
  }

  /** The quarantine store's figures; none (and one WARN line per new problem) when it cannot be read. */
  private async quarantineFigures(): Promise<QuarantineFigures | undefined> {
    const dir = this.cfg?.quarantine.dir
    if (dir === undefined) return undefined
    try {
      const f = await this.quarantine.read(dir)
      this.quarantineProblem = undefined
      return f
    } catch (e) {
      const text = `metrics: cannot read the quarantine directory ${dir}: ${e instanceof Error ? e.message : String(e)}`
      if (text !== this.quarantineProblem) this.log.logwarn(text)
      this.quarantineProblem = text
      return undefined
    }
  }

  /**
   * Haraka's init_master: this process serves the metrics, of its own
   * (`single`, nodes=0) or summed over the cluster's workers (`master`).
   */
  serve(role: Exclude<Role, 'worker'>): void {
    this.role = role
    this.service?.start(role)
  }

  /** Graceful shutdown: close idle reusable sessions, the metrics endpoint and timer. */
  close(): void {
    this.pool?.close()
    void this.service?.close()
  }
}
