/**
 * MilterPool: opens sessions, and (when reuse is enabled) keeps sessions
 * that ended with QUIT_NC directly after a completed EOB, for the next SMTP
 * connection (milter-protocol.md §5.6). Per worker process. A session that failed is never
 * kept.
 *
 * A milter may have several endpoints (`socket = A, B`). Each has its own
 * circuit breaker. A new session tries them in order (failover: from the
 * first; round_robin: from the next one in turn), skips every endpoint whose
 * breaker is open without dialling it, and goes on to the next one when a
 * dial or negotiation fails (each attempt bounded by connect_timeout). When
 * no endpoint may be dialled, MilterUnavailableError at once.
 */
import { Breaker, type BreakerChange, type BreakerState } from './breaker'
import type { MilterDef } from './config'
import { MilterConnectError, MilterLimitError, MilterUnavailableError } from './errors'
import { openSession } from './session/open'
import type { MilterSession, SessionObserver } from './session/session'
import type { Endpoint } from './transport/spec'

/** A milter's first endpoint (the parser guarantees one). */
function firstEndpoint(def: MilterDef): Endpoint {
  const ep = def.endpoints[0]
  if (!ep) throw new Error(`milter ${def.name} has no endpoint`)
  return ep
}

/** Opens a negotiated session to one endpoint of a milter (its first when not given). */
export function openMilter(
  def: MilterDef,
  endpoint?: Endpoint,
  observer?: SessionObserver,
): Promise<MilterSession> {
  const ep = endpoint ?? firstEndpoint(def)
  return openSession(
    ep.spec,
    {
      name: def.name,
      version: def.protocol,
      timeouts: def.timeouts,
      macros: def.macros,
      ...(def.limits ? { limits: def.limits } : {}),
      ...(observer ? { observer } : {}),
    },
    def.tls,
  )
}

/** Opens a session to one endpoint (injected in tests). */
export type Opener = (
  def: MilterDef,
  endpoint: Endpoint,
  observer?: SessionObserver,
) => Promise<MilterSession>

/** Which endpoint a new session used, and what failed before it (for the log). */
export interface EndpointUse {
  /** The endpoint the session is on. */
  endpoint: string
  /** Endpoints dialled first that failed, with the reason. */
  failed: Array<{ endpoint: string; reason: string }>
  /** Endpoints not dialled because their breaker is open. */
  skipped: string[]
}

interface Idle {
  milter: string
  session: MilterSession
  timer: NodeJS.Timeout
  /** When it was kept (ms, by the pool's clock). */
  since: number
}

/**
 * Sessions opened and not yet closed, per milter and endpoint, for the
 * metrics. A session has no close event, so closed ones are swept lazily:
 * when a milter's set has doubled since the last sweep, and when counted.
 * Kept across configuration reloads (sessions outlive their pool).
 */
export class LiveSessions {
  private readonly byMilter = new Map<
    string,
    { sessions: Map<MilterSession, string>; sweepAt: number }
  >()

  add(milter: string, endpoint: string, session: MilterSession): void {
    let e = this.byMilter.get(milter)
    if (!e) {
      e = { sessions: new Map(), sweepAt: 64 }
      this.byMilter.set(milter, e)
    }
    e.sessions.set(session, endpoint)
    if (e.sessions.size >= e.sweepAt) {
      sweep(e.sessions)
      e.sweepAt = Math.max(64, e.sessions.size * 2)
    }
  }

  /** Open sessions (in use or idle in the pool) per milter and endpoint. */
  counts(): Array<{ milter: string; endpoint: string; open: number }> {
    const out: Array<{ milter: string; endpoint: string; open: number }> = []
    for (const [milter, e] of this.byMilter) {
      sweep(e.sessions)
      const per = new Map<string, number>()
      for (const ep of e.sessions.values()) per.set(ep, (per.get(ep) ?? 0) + 1)
      for (const [endpoint, open] of per) out.push({ milter, endpoint, open })
    }
    return out
  }
}

function sweep(sessions: Map<MilterSession, string>): void {
  for (const s of sessions.keys()) {
    const st = s.currentState
    if (st === 'closed' || st === 'failed') sessions.delete(s)
  }
}

/**
 * Whether a milter handles QUIT_NC. Postfix and Sendmail never send it, and
 * implementations differ (some close, one answers it), so a milter is on
 * probation until a reused session got a reply; a reused session that
 * failed before its first reply, or a milter that closed or wrote to a kept
 * session while on probation, turns reuse off for that milter.
 */
type ReuseTrust = 'probation' | 'proven' | 'off'

/** On probation, a kept session serves again only after this long idle (a close or stray reply shows first). */
export const PROBATION_IDLE_MS = 100

/** Pool options. */
export interface PoolOptions {
  reuse: boolean
  maxIdlePerMilter?: number
  idleMs?: number
  /** Reuse turned off for a milter that does not seem to handle QUIT_NC (once per milter). */
  onReuseOff?: (milter: string, reason: string) => void
  /** Circuit breaker state changes, once each (for the log); `endpoints`: how many the milter has. */
  onBreakerChange?: (milter: string, change: BreakerChange, endpoints: number) => void
  /** Each new session: the endpoint it is on, and the ones that failed or were skipped first. */
  onEndpoint?: (milter: string, use: EndpointUse) => void
  /** Breakers to carry over from a previous pool (configuration reload). */
  breakers?: Map<string, Breaker>
  /** Open sessions to carry over from a previous pool (configuration reload). */
  live?: LiveSessions
  /** The clock (ms) for probation idle times and new breakers' back-off; tests step it. */
  now?: () => number
}

/** Opens, reuses and retires milter sessions; fails fast for endpoints marked down. */
export class MilterPool {
  private readonly idle = new Map<string, Idle[]>()
  /** Per endpoint (milter name and socket), kept across configuration reloads. */
  readonly breakers: Map<string, Breaker>
  /** round_robin: the index the next session of each milter starts from. */
  private readonly turn = new Map<string, number>()
  /** The endpoint each session opened here is on. */
  private readonly used = new WeakMap<MilterSession, string>()
  /** Sessions not yet closed, for the metrics. */
  readonly live: LiveSessions
  /** Per pool key: is QUIT_NC known to work (see ReuseTrust)? */
  private readonly trust = new Map<string, ReuseTrust>()
  /** Reused sessions handed out while their milter is on probation. */
  private readonly onTrial = new Map<string, Set<MilterSession>>()
  private readonly now: () => number

  constructor(
    private readonly opts: PoolOptions = { reuse: false },
    private readonly opener: Opener = openMilter,
  ) {
    this.breakers = opts.breakers ?? new Map<string, Breaker>()
    this.live = opts.live ?? new LiveSessions()
    this.now = opts.now ?? Date.now
  }

  /** The endpoint a session from this pool is on (its text as configured). */
  endpointOf(session: MilterSession): string | undefined {
    return this.used.get(session)
  }

  /** The endpoints in the order a new session tries them. */
  private order(def: MilterDef): readonly Endpoint[] {
    const eps = def.endpoints
    if (def.balance !== 'round_robin' || eps.length < 2) return eps
    const start = (this.turn.get(def.name) ?? 0) % eps.length
    this.turn.set(def.name, (start + 1) % eps.length)
    return [...eps.slice(start), ...eps.slice(0, start)]
  }

  private key(def: MilterDef): string {
    return `${def.name}|${def.socketText}|${def.protocol}`
  }

  /** The breaker of one endpoint of a milter, its first by default (settings refreshed). */
  breakerFor(def: MilterDef, endpoint?: Endpoint): Breaker {
    const eps = def.endpoints
    const text = endpoint?.text ?? eps[0]?.text ?? def.socketText
    const key = `${def.name}|${text}`
    let b = this.breakers.get(key)
    if (!b) {
      b = new Breaker(
        text,
        def.breaker,
        (c) => this.opts.onBreakerChange?.(def.name, c, def.endpoints.length),
        this.now,
      )
      this.breakers.set(key, b)
    } else {
      b.update(def.breaker)
    }
    return b
  }

  /**
   * A ready session: an idle reusable one, or a new one (unless the endpoint
   * is marked down); `observer` sees its packets and warnings until release.
   */
  async acquire(
    def: MilterDef,
    observer?: SessionObserver,
    /** Told which endpoint serves (for the caller's log, with its connection id); else onEndpoint. */
    onEndpoint?: (use: EndpointUse) => void,
  ): Promise<MilterSession> {
    const kept = this.reused(this.key(def), def.name)
    if (kept) {
      kept.observe(observer)
      return kept
    }
    const failed: EndpointUse['failed'] = []
    const skipped: string[] = []
    let retryInMs = Infinity
    let lastError: unknown
    for (const ep of this.order(def)) {
      const breaker = this.breakerFor(def, ep)
      const admitted = breaker.admit()
      if (!admitted.ok) {
        skipped.push(ep.text)
        retryInMs = Math.min(retryInMs, admitted.retryInMs)
        continue
      }
      try {
        const session = await this.opener(def, ep, observer)
        breaker.success(admitted.probe)
        this.used.set(session, ep.text)
        this.live.add(def.name, ep.text, session)
        const use = { endpoint: ep.text, failed, skipped }
        if (onEndpoint) onEndpoint(use)
        else this.opts.onEndpoint?.(def.name, use)
        return session
      } catch (e) {
        const reason = e instanceof Error ? e.message : String(e)
        // over a limit at negotiation (MILTER_ERR_LIMIT): every session would fail the same way,
        // so the milter is marked down at once and logged once, not once per message
        breaker.failure(admitted.probe, reason, e instanceof MilterLimitError)
        failed.push({ endpoint: ep.text, reason })
        lastError = e
      }
    }
    const next = `next probe in ${Math.ceil(retryInMs / 1000)} s`
    if (failed.length === 0) {
      const what =
        skipped.length === 1
          ? `milter at ${skipped[0]} is`
          : `every endpoint of the milter (${skipped.join(', ')}) is`
      throw new MilterUnavailableError(
        `${what} marked down after repeated connect failures; not dialled (${next})`,
      )
    }
    // one endpoint tried: its own error, as it was
    if (failed.length === 1 && skipped.length === 0) throw lastError
    const parts = [
      ...failed.map((f) => `${f.endpoint}: ${f.reason}`),
      ...skipped.map((t) => `${t}: marked down, not dialled`),
    ]
    throw new MilterConnectError(`no endpoint of the milter answered (${parts.join('; ')})`, {
      cause: lastError,
    })
  }

  /**
   * A kept session for a new SMTP session, the longest idle first; one that
   * closed or received anything while idle is dropped (on probation, that
   * turns reuse off for the milter).
   */
  private reused(key: string, milter: string): MilterSession | undefined {
    this.review(key, milter)
    const list = this.idle.get(key)
    while (list && list.length > 0 && this.trust.get(key) !== 'off') {
      const item = list[0] as Idle
      const trust = this.trust.get(key) ?? 'probation'
      if (item.session.idleClean) {
        if (trust === 'probation') {
          if (this.now() - item.since < PROBATION_IDLE_MS) return undefined
          const trial = this.onTrial.get(key) ?? new Set<MilterSession>()
          trial.add(item.session)
          this.onTrial.set(key, trial)
        }
        list.shift()
        clearTimeout(item.timer)
        return item.session
      }
      list.shift()
      clearTimeout(item.timer)
      item.session.destroy()
      if (trust === 'probation') {
        this.reuseOff(key, milter, 'the milter closed or wrote to a connection kept after QUIT_NC')
      }
    }
    return undefined
  }

  /** Reused sessions on trial: a reply proves QUIT_NC works, a failure before it turns reuse off. */
  private review(key: string, milter: string): void {
    const trial = this.onTrial.get(key)
    if (!trial) return
    for (const s of trial) {
      if (!s.reuseUnproven) {
        trial.delete(s)
        if (!s.error && this.trust.get(key) !== 'off') this.trust.set(key, 'proven')
      } else if (s.error) {
        trial.delete(s)
        this.reuseOff(
          key,
          milter,
          `a reused connection failed before its first reply: ${s.error.message}`,
        )
      } else if (s.currentState === 'closed') {
        trial.delete(s)
      }
    }
    if (trial.size === 0 || this.trust.get(key) !== 'probation') this.onTrial.delete(key)
  }

  private reuseOff(key: string, milter: string, reason: string): void {
    if (this.trust.get(key) === 'off') return
    this.trust.set(key, 'off')
    for (const item of this.idle.get(key) ?? []) {
      clearTimeout(item.timer)
      item.session.quit()
    }
    this.idle.delete(key)
    this.opts.onReuseOff?.(milter, reason)
  }

  /** Ends a connection's use of a session: QUIT_NC and keep it, or QUIT. */
  release(def: MilterDef, session: MilterSession): void {
    const key = this.key(def)
    this.review(key, def.name)
    const list = this.idle.get(key) ?? []
    if (
      !this.opts.reuse ||
      this.trust.get(key) === 'off' ||
      list.length >= (this.opts.maxIdlePerMilter ?? 8) ||
      !session.quitNc()
    ) {
      session.quit()
      return
    }
    session.observe(undefined) // idle: no longer any connection's
    const item: Idle = {
      milter: def.name,
      since: this.now(),
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

  /** An endpoint's breaker state, without creating one (an endpoint never dialled is closed). */
  breakerState(milter: string, endpoint: string): BreakerState {
    return this.breakers.get(`${milter}|${endpoint}`)?.state ?? 'closed'
  }

  /** Idle sessions kept per milter (for the metrics). */
  idleByMilter(): Map<string, number> {
    const out = new Map<string, number>()
    for (const l of this.idle.values())
      for (const item of l) out.set(item.milter, (out.get(item.milter) ?? 0) + 1)
    return out
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
