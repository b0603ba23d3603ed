/**
 * A circuit breaker per milter endpoint (per worker process): after
 * `failures` consecutive connect failures the endpoint is not dialled for a
 * back-off period, so SMTP sessions get the milter's default_action at
 * once instead of each waiting for connect_timeout. When the back-off ends
 * one session probes; its success closes the breaker, its failure doubles
 * the back-off (up to the maximum). State changes are reported once each.
 */
import type { BreakerSettings } from './config'

export type BreakerState = 'closed' | 'open' | 'half-open'

/** A state change, reported once. */
export interface BreakerChange {
  endpoint: string
  from: BreakerState
  to: BreakerState
  /** Consecutive connect failures so far. */
  failures: number
  /** When opening: how long until the next probe. */
  retryInMs?: number
  /** The failure that caused the change, if any. */
  reason?: string
}

/** Whether a dial may go ahead. */
export type Admission = { ok: true; probe: boolean } | { ok: false; retryInMs: number }

/** One endpoint's breaker. */
export class Breaker {
  private current: BreakerState = 'closed'
  private consecutive = 0
  private backoffMs: number
  private openUntil = 0
  private probing = false

  constructor(
    readonly endpoint: string,
    private settings: BreakerSettings,
    private readonly onChange: (c: BreakerChange) => void = () => undefined,
    private readonly now: () => number = Date.now,
  ) {
    this.backoffMs = settings.backoffMs
  }

  get state(): BreakerState {
    return this.current
  }

  /** New settings (configuration reload); the current state is kept. */
  update(settings: BreakerSettings): void {
    this.settings = settings
    this.backoffMs = Math.min(Math.max(this.backoffMs, settings.backoffMs), settings.backoffMaxMs)
    if (settings.failures === 0 && this.current !== 'closed') this.close()
  }

  /** May this session dial now? At most one probe at a time once the back-off is over. */
  admit(): Admission {
    if (this.settings.failures === 0 || this.current === 'closed') return { ok: true, probe: false }
    const now = this.now()
    if (this.current === 'open' && now >= this.openUntil) {
      this.change('half-open')
    }
    if (this.current === 'half-open' && !this.probing) {
      this.probing = true
      return { ok: true, probe: true }
    }
    return { ok: false, retryInMs: Math.max(0, this.openUntil - now) }
  }

  /** The dial and negotiation succeeded (`probe`: as admitted). */
  success(probe: boolean): void {
    this.consecutive = 0
    if (probe) this.probing = false
    if (this.current !== 'closed') this.close()
  }

  /**
   * The dial or negotiation failed (`probe`: as admitted); a late failure of an earlier dial only
   * counts. `lasting`: a failure the next dial would repeat, which opens the breaker at once.
   */
  failure(probe: boolean, reason: string, lasting = false): void {
    this.consecutive++
    if (probe) this.probing = false
    if (this.settings.failures === 0) return
    if (lasting && this.current === 'closed') {
      // a failure that retrying cannot heal (the milter asks for more than our limits allow):
      // no point in failing the next messages too before marking it down
      this.backoffMs = this.settings.backoffMs
      this.open(reason)
    } else if (probe && this.current === 'half-open') {
      this.backoffMs = Math.min(this.backoffMs * 2, this.settings.backoffMaxMs)
      this.open(reason)
    } else if (this.current === 'closed' && this.consecutive >= this.settings.failures) {
      this.backoffMs = this.settings.backoffMs
      this.open(reason)
    }
  }

  private open(reason: string): void {
    this.openUntil = this.now() + this.backoffMs
    this.change('open', reason)
  }

  private close(): void {
    this.backoffMs = this.settings.backoffMs
    this.probing = false
    this.change('closed')
  }

  private change(to: BreakerState, reason?: string): void {
    const from = this.current
    this.current = to
    const c: BreakerChange = { endpoint: this.endpoint, from, to, failures: this.consecutive }
    if (to === 'open') c.retryInMs = this.backoffMs
    if (reason !== undefined) c.reason = reason
    this.onChange(c)
  }
}
