/**
 * The plugin's Prometheus metrics (prom-client), in a registry of their own
 * (not prom-client's global one, which other plugins may use): counters and
 * histograms fed from the per-message MilterReports, and gauges read from
 * the pool when scraped. One recorder per process; in Haraka's cluster mode
 * each worker records its own and the master sums them (cluster.ts).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

import type { MilterReport, ReportOutcome } from '../policy/milter-reports'
import { SCOPE } from '../policy/stage'
import type { QuarantineFigures } from './quarantine-figures'

/** What the gauges show, read at scrape time (from the pool and its breakers). */
export interface GaugeFigures {
  /** Sessions open (in use or idle in the pool) per milter and endpoint. */
  open: Array<{ milter: string; endpoint: string; open: number }>
  /** Idle sessions kept for reuse, per milter. */
  pooled: Array<{ milter: string; pooled: number }>
  /** Every configured endpoint: up when its circuit breaker is closed. */
  endpoints: Array<{ milter: string; endpoint: string; up: boolean }>
}

/** A metric's JSON form (Registry.getMetricsAsJSON), as sent between processes. */
export type MetricJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>[number]

/** Latency buckets in seconds: loopback milters answer in well under 1 ms, content scanners take seconds. */
const LATENCY_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
]

const P = 'haraka_milter_'

/** The metric names, for the summary and the tests. */
export const METRIC = {
  messages: `${P}messages_total`,
  verdicts: `${P}verdicts_total`,
  failures: `${P}failures_total`,
  edits: `${P}edits_total`,
  stageDuration: `${P}stage_duration_seconds`,
  messageWait: `${P}message_wait_seconds`,
  sessionsOpen: `${P}sessions_open`,
  sessionsPooled: `${P}sessions_pooled`,
  endpointUp: `${P}endpoint_up`,
  quarantineHeld: `${P}quarantine_held_total`,
  quarantineReleased: `${P}quarantine_released_total`,
  quarantineDeleted: `${P}quarantine_deleted_total`,
  quarantineEntries: `${P}quarantine_entries`,
} as const

/** The verdict label: a replycode counts as the reject or tempfail it is. */
function verdictLabel(o: ReportOutcome): string {
  if (o.kind !== 'replycode') return o.kind
  return o.code?.startsWith('4') ? 'tempfail' : 'reject'
}

/** The registry and its metrics. */
export class MilterMetrics {
  readonly registry = new Registry()
  private figures: () => GaugeFigures = () => ({ open: [], pooled: [], endpoints: [] })
  private quarantineFigures: () => Promise<QuarantineFigures | undefined> = () =>
    Promise.resolve(undefined)

  private readonly messages = new Counter({
    name: METRIC.messages,
    help: 'Messages (SMTP transactions) each milter was asked about (at MAIL or later)',
    labelNames: ['milter', 'endpoint', 'mode'] as const,
    registers: [this.registry],
  })
  private readonly verdicts = new Counter({
    name: METRIC.verdicts,
    help: 'Milter answers other than continue, by stage (a replycode counts as reject or tempfail)',
    labelNames: ['milter', 'stage', 'verdict', 'mode'] as const,
    registers: [this.registry],
  })
  private readonly failures = new Counter({
    name: METRIC.failures,
    help: 'Milter failures (its default_action applied), by stage and error code',
    labelNames: ['milter', 'stage', 'code', 'mode'] as const,
    registers: [this.registry],
  })
  private readonly edits = new Counter({
    name: METRIC.edits,
    help: 'Message modifications asked for by milters, by kind',
    labelNames: ['milter', 'kind', 'mode'] as const,
    registers: [this.registry],
  })
  private readonly stageDuration = new Histogram({
    name: METRIC.stageDuration,
    help: 'Time waiting for a milter to answer one command (eom: the whole content phase)',
    labelNames: ['milter', 'endpoint', 'stage'] as const,
    buckets: [...LATENCY_BUCKETS],
    registers: [this.registry],
  })
  private readonly held = new Counter({
    name: METRIC.quarantineHeld,
    help: 'Messages held in the quarantine, per milter that asked for it (SMFIR_QUARANTINE or default_action = quarantine)',
    labelNames: ['milter'] as const,
    registers: [this.registry],
  })
  private readonly messageWait = new Histogram({
    name: METRIC.messageWait,
    help: 'Time waiting for a milter in all, per message',
    labelNames: ['milter'] as const,
    buckets: [...LATENCY_BUCKETS],
    registers: [this.registry],
  })

  constructor() {
    const perEndpoint = ['milter', 'endpoint']
    this.gauge(
      METRIC.sessionsOpen,
      'Milter sessions open (in use or idle in the pool)',
      perEndpoint,
      (g) => {
        for (const o of this.figures().open)
          g.set({ milter: o.milter, endpoint: o.endpoint }, o.open)
      },
    )
    this.gauge(
      METRIC.sessionsPooled,
      'Idle milter sessions kept for reuse (reuse_connections)',
      ['milter'],
      (g) => {
        for (const p of this.figures().pooled) g.set({ milter: p.milter }, p.pooled)
      },
    )
    this.gauge(
      METRIC.endpointUp,
      'Milter endpoint health: 1 when its circuit breaker is closed, 0 when open or probing (cluster: the lowest of the workers)',
      perEndpoint,
      (g) => {
        for (const e of this.figures().endpoints)
          g.set({ milter: e.milter, endpoint: e.endpoint }, e.up ? 1 : 0)
      },
      'min',
    )
    // read from the store and its events file when scraped: the same for every process of a
    // cluster, so the highest, not the sum, is the figure
    this.storeCounter(
      METRIC.quarantineReleased,
      'Quarantined messages released (haraka-milter quarantine release), per milter that held them; counted from the events file in the quarantine directory',
      (f) => f.released,
    )
    this.storeCounter(
      METRIC.quarantineDeleted,
      'Quarantined messages deleted (haraka-milter quarantine delete), per milter that held them; counted from the events file in the quarantine directory',
      (f) => f.deleted,
    )
    const entries: Gauge = new Gauge({
      name: METRIC.quarantineEntries,
      help: 'Messages in the quarantine directory now (held, or being released or deleted)',
      aggregator: 'max',
      registers: [this.registry],
      collect: async () => {
        entries.reset()
        const f = await this.quarantineFigures()
        if (f) entries.set(f.entries)
      },
    })
  }

  /** A gauge computed when scraped (stale label sets dropped each time). */
  private gauge(
    name: string,
    help: string,
    labelNames: readonly string[],
    fill: (g: Gauge) => void,
    aggregator: 'sum' | 'min' = 'sum',
  ): void {
    const g: Gauge = new Gauge({
      name,
      help,
      labelNames,
      aggregator,
      registers: [this.registry],
      collect: () => {
        g.reset()
        fill(g)
      },
    })
  }

  /** A counter of the quarantine's events file, per milter (cluster: the highest). */
  private storeCounter(
    name: string,
    help: string,
    pick: (f: QuarantineFigures) => ReadonlyMap<string, number>,
  ): void {
    const c: Counter = new Counter({
      name,
      help,
      labelNames: ['milter'],
      aggregator: 'max',
      registers: [this.registry],
      collect: async () => {
        c.reset()
        const f = await this.quarantineFigures()
        if (f) for (const [milter, n] of pick(f)) c.inc({ milter }, n)
      },
    })
  }

  /** Where the gauges read from (the runtime's pool and configuration). */
  gauges(figures: () => GaugeFigures): void {
    this.figures = figures
  }

  /** Where the quarantine metrics read from (the store of the configuration in force). */
  quarantine(figures: () => Promise<QuarantineFigures | undefined>): void {
    this.quarantineFigures = figures
  }

  /** A message held in the quarantine, for the milters that asked. */
  recordHeld(milters: readonly string[]): void {
    for (const milter of milters) this.held.inc({ milter })
  }

  /** Counts what each milter did for one message (or connection). */
  record(reports: readonly MilterReport[]): void {
    for (const r of reports) {
      const { milter, endpoint } = r
      const mode = r.mode
      // a milter asked at no message stage (it only saw the connection, or could not be reached)
      // took part in no message
      if (r.waits.some((w) => SCOPE[w.stage] === 'message'))
        this.messages.inc({ milter, endpoint, mode })
      for (const o of r.outcomes) {
        if (o.kind === 'failed')
          this.failures.inc({ milter, stage: o.stage, code: o.code ?? 'unknown', mode })
        else this.verdicts.inc({ milter, stage: o.stage, verdict: verdictLabel(o), mode })
      }
      for (const kind in r.edits) this.edits.inc({ milter, kind, mode }, r.edits[kind])
      for (const w of r.waits)
        this.stageDuration.observe({ milter, endpoint, stage: w.stage }, w.ms / 1000)
      if (r.waits.length > 0) this.messageWait.observe({ milter }, r.waitMs / 1000)
    }
  }
}
