/**
 * MilterPool: opens sessions, and (when reuse is enabled) keeps sessions
 * that ended with QUIT_NC directly after a completed EOB, for the next SMTP
 * connection (milter-protocol.md §5.6). Per worker process. A session that failed is never
 * kept.
 */
import { Breaker, type BreakerChange } from './breaker'
import type { MilterDef } from './config'
import { MilterUnavailableError } from './errors'
import { openSession } from './session/open'
import type { MilterSession } from './session/session'

/** Opens a negotiated session to a configured milter. */
export function openMilter(def: MilterDef): Promise<MilterSession> {
  return openSession(def.socket, {
    name: def.name,
    version: def.protocol,
    timeouts: def.timeouts,
    macros: def.macros,
  })
}

interface Idle {
  session: MilterSession
  timer: NodeJS.Timeout
}

/** Pool options. */
export interface PoolOptions {
  reuse: boolean
  maxIdlePerMilter?: number
  idleMs?: number
  /** Circuit breaker state changes, once each (for the log). */
  onBreakerChange?: (milter: string, change: BreakerChange) => void
  /** Breakers to carry over from a previous pool (configuration reload). */
  breakers?: Map<string, Breaker>
}

/** Opens, reuses and retires milter sessions; fails fast for endpoints marked down. */
export class MilterPool {
  private readonly idle = new Map<string, Idle[]>()
  /** Per endpoint (milter name and socket), kept across configuration reloads. */
  readonly breakers: Map<string, Breaker>

  constructor(
    private readonly opts: PoolOptions = { reuse: false },
    private readonly opener: (def: MilterDef) => Promise<MilterSession> = openMilter,
  ) {
    this.breakers = opts.breakers ?? new Map<string, Breaker>()
  }

  private key(def: MilterDef): string {
    return `${def.name}|${def.socketText}|${def.protocol}`
  }

  /** The breaker of this milter's endpoint (settings refreshed from the definition). */
  breakerFor(def: MilterDef): Breaker {
    const key = `${def.name}|${def.socketText}`
    let b = this.breakers.get(key)
    if (!b) {
      b = new Breaker(def.socketText, def.breaker, (c) => this.opts.onBreakerChange?.(def.name, c))
      this.breakers.set(key, b)
    } else {
      b.update(def.breaker)
    }
    return b
  }

  /** A ready session: an idle reusable one, or a new one (unless the endpoint is marked down). */
  async acquire(def: MilterDef): Promise<MilterSession> {
    const list = this.idle.get(this.key(def))
    while (list && list.length > 0) {
      const item = list.pop() as Idle
      clearTimeout(item.timer)
      if (item.session.currentState === 'negotiated' && !item.session.error) return item.session
      item.session.destroy()
    }
    const breaker = this.breakerFor(def)
    const admitted = breaker.admit()
    if (!admitted.ok) {
      throw new MilterUnavailableError(
        `milter at ${def.socketText} is marked down after repeated connect failures; not dialled (next probe in ${Math.ceil(admitted.retryInMs / 1000)} s)`,
      )
    }
    try {
      const session = await this.opener(def)
      breaker.success(admitted.probe)
      return session
    } catch (e) {
      breaker.failure(admitted.probe, e instanceof Error ? e.message : String(e))
      throw e
    }
  }

  /** Ends a connection's use of a session: QUIT_NC and keep it, or QUIT. */
  release(def: MilterDef, session: MilterSession): void {
    const key = this.key(def)
    const list = this.idle.get(key) ?? []
    if (!this.opts.reuse || list.length >= (this.opts.maxIdlePerMilter ?? 8) || !session.quitNc()) {
      session.quit()
      return
    }
    const item: Idle = {
      session,
      timer: setTimeout(() => {
        const l = this.idle.get(key)
        const i = l?.indexOf(item) ?? -1
        if (l && i >= 0) l.splice(i, 1)
        session.quit()
      }, this.opts.idleMs ?? 60_000),
    }
    item.timer.unref()
    list.push(item)
    this.idle.set(key, list)
  }

  /** Number of idle sessions kept (for tests and stats). */
  get idleCount(): number {
    let n = 0
    for (const l of this.idle.values()) n += l.length
    return n
  }

  /** QUITs every idle session. */
  close(): void {
    for (const list of this.idle.values()) {
      for (const item of list) {
        clearTimeout(item.timer)
        item.session.quit()
      }
    }
    this.idle.clear()
  }
}
