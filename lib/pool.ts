/**
 * MilterPool: opens sessions, and (when reuse is enabled) keeps sessions
 * that ended with QUIT_NC directly after a completed EOB, for the next SMTP
 * connection (§5.6). Per worker process. A session that failed is never
 * kept.
 */
import type { MilterDef } from './config'
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

/** Opens, reuses and retires milter sessions. */
export class MilterPool {
  private readonly idle = new Map<string, Idle[]>()

  constructor(
    private readonly opts: { reuse: boolean; maxIdlePerMilter?: number; idleMs?: number } = {
      reuse: false,
    },
    private readonly opener: (def: MilterDef) => Promise<MilterSession> = openMilter,
  ) {}

  private key(def: MilterDef): string {
    return `${def.name}|${def.socketText}|${def.protocol}`
  }

  /** A ready session: an idle reusable one, or a new one. */
  async acquire(def: MilterDef): Promise<MilterSession> {
    const list = this.idle.get(this.key(def))
    while (list && list.length > 0) {
      const item = list.pop() as Idle
      clearTimeout(item.timer)
      if (item.session.currentState === 'negotiated' && !item.session.error) return item.session
      item.session.destroy()
    }
    return this.opener(def)
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
