/**
 * What each milter did for one message: the stages it was consulted at,
 * its verdict, its edits by kind, and the time spent waiting for it. The
 * plugin logs one line per milter per message from this (and the CLI can
 * show it), so an operator sees every milter at work, not only refusals.
 */
import type { MilterDef } from '../config'
import type { Verdict } from '../session/types'
import type { MilterEdits } from './message'
import type { Stage } from './stage'

/** One milter's part in one message. */
export interface MilterReport {
  milter: string
  /** shadow: what it said and did was logged, not enforced. */
  mode: 'enforce' | 'shadow'
  endpoint: string
  /** Stages it was consulted at, in order (a repeated stage once: rcpt for every recipient). */
  stages: Stage[]
  /** Its answers other than continue, as `kind@stage` (`failed CODE@stage (default_action=X)`); `continue` when none. */
  verdict: string
  /** Modifications by kind (addheader, chgheader, replbody, ...). */
  edits: Record<string, number>
  /** Milliseconds spent waiting for its answers. */
  waitMs: number
  /** Each wait for an answer, in order (rcpt once per recipient): for latency figures. */
  waits: Array<{ stage: Stage; ms: number }>
  /** `verdict` as data: each answer other than continue, and each failure with its error code. */
  outcomes: ReportOutcome[]
}

/** One decision in a report: a verdict (its kind; a reply code's code) or a failure (its error code). */
export interface ReportOutcome {
  stage: Stage
  kind: Exclude<Verdict['kind'], 'continue'> | 'failed' | 'skipped'
  /** The SMTP code of a replycode verdict, or the error code of a failure. */
  code?: string
}

/** Collects MilterReports until taken. */
export class MilterReports {
  private readonly byMilter = new Map<string, MilterReport>()

  private of(def: MilterDef): MilterReport {
    let r = this.byMilter.get(def.name)
    if (!r) {
      r = {
        milter: def.name,
        mode: def.mode ?? 'enforce',
        endpoint: def.socketText,
        stages: [],
        verdict: 'continue',
        edits: {},
        waitMs: 0,
        waits: [],
        outcomes: [],
      }
      this.byMilter.set(def.name, r)
    }
    return r
  }

  /** Has the milter anything in the report so far? */
  has(def: MilterDef): boolean {
    return this.byMilter.has(def.name)
  }

  /** The endpoint the milter's session is on, when it lists several. */
  endpoint(def: MilterDef, endpoint: string): void {
    this.of(def).endpoint = endpoint
  }

  waited(def: MilterDef, stage: Stage, ms: number): void {
    const r = this.of(def)
    if (r.stages[r.stages.length - 1] !== stage) r.stages.push(stage)
    r.waitMs += ms
    r.waits.push({ stage, ms })
  }

  private decide(r: MilterReport, what: string): void {
    r.verdict = r.verdict === 'continue' ? what : `${r.verdict}, ${what}`
  }

  verdict(def: MilterDef, stage: Stage, v: Verdict): void {
    if (v.kind === 'continue') return
    const r = this.of(def)
    this.decide(r, `${v.kind === 'replycode' ? `replycode ${v.reply.code}` : v.kind}@${stage}`)
    r.outcomes.push(
      v.kind === 'replycode'
        ? { stage, kind: v.kind, code: String(v.reply.code) }
        : { stage, kind: v.kind },
    )
  }

  failure(def: MilterDef, stage: Stage, code: string, action: string): void {
    const r = this.of(def)
    if (r.stages[r.stages.length - 1] !== stage) r.stages.push(stage)
    this.decide(r, `failed ${code}@${stage} (default_action=${action})`)
    r.outcomes.push({ stage, kind: 'failed', code })
  }

  /** Left out by a skip_* condition (the stage where it was decided, and why). */
  skipped(def: MilterDef, stage: Stage, reason: string): void {
    const r = this.of(def)
    this.decide(r, `skipped (${reason})@${stage}`)
    r.outcomes.push({ stage, kind: 'skipped' })
  }

  edits(def: MilterDef, e: MilterEdits): void {
    const r = this.of(def)
    for (const m of e.modifications) r.edits[m.kind] = (r.edits[m.kind] ?? 0) + 1
    if (e.bodyReplaced) r.edits['replbody'] = 1
  }

  /** The reports in chain order, and a fresh start. */
  take(order: readonly MilterDef[]): MilterReport[] {
    const out = order
      .map((d) => this.byMilter.get(d.name))
      .filter((r): r is MilterReport => r !== undefined)
    this.byMilter.clear()
    return out
  }
}

/** One line: `NAME (ENDPOINT): stages a,b,c; verdict X; edits k=n ...; waited N ms`. */
export function formatMilterReport(r: MilterReport): string {
  const edits = Object.entries(r.edits)
    .map(([k, n]) => `${k}=${n}`)
    .join(' ')
  const mode = r.mode === 'shadow' ? ' [shadow]' : ''
  return `${r.milter}${mode} (${r.endpoint}): stages ${r.stages.join(',') || '-'}; verdict ${r.verdict}; edits ${edits || 'none'}; waited ${Math.round(r.waitMs)} ms`
}
