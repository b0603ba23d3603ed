/**
 * The plugin's process-wide part: the configuration in force (a bad reload
 * keeps the previous one), the time budget Haraka must allow each hook, and
 * the milter pool (with its breakers, kept across reloads).
 */
import { parseMilterConfig, type Ini, type MilterConfig } from '../config'
import { MilterPool } from '../pool'
import { breakerText } from './report'

/** What the runtime logs through (the Haraka plugin object). */
export interface RuntimeLog {
  loginfo(...args: unknown[]): void
  logerror(...args: unknown[]): void
  logwarn(...args: unknown[]): void
  logcrit(...args: unknown[]): void
}

/**
 * Haraka's per-hook timer must not fire before our own milter timeouts do:
 * the worst case of one hook is every milter taking its full connect,
 * command, content and end-of-message time.
 */
export function hookTimeoutSeconds(cfg: MilterConfig): number {
  let ms = 0
  for (const m of cfg.milters.values()) {
    const t = m.timeouts
    ms += t.connectMs + t.commandMs + t.contentMs + (t.eomMs ?? t.contentMs)
  }
  return Math.ceil(ms / 1000) + 10
}

/** The configuration and pool of one Haraka worker. */
export class Runtime {
  cfg: MilterConfig | undefined
  /** Why there is no configuration (only when none was ever loaded). */
  error: string | undefined
  pool: MilterPool | undefined

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
      ...(old ? { breakers: old.breakers } : {}),
      onBreakerChange: (milter, ch) => {
        const { level, text } = breakerText(milter, ch)
        if (level === 'error') this.log.logerror(text)
        else this.log.loginfo(text)
      },
    })
    this.log.loginfo(
      `milters: ${[...cfg.milters.values()].map((m) => `${m.name}=${m.socketText}`).join(', ') || '(none)'}`,
    )
    return hookTimeoutSeconds(cfg)
  }

  /** Graceful shutdown: close idle reusable sessions. */
  close(): void {
    this.pool?.close()
  }
}
