/**
 * What the plugin writes to Haraka's log and results: a chain outcome as
 * answered, the chain's events, and the circuit breaker's state changes.
 * One place for the wording operators read.
 */
import type { BreakerChange } from '../breaker'
import type { ChainEvent, MilterReport, Outcome } from '../policy/chain'
import { formatMilterReport } from '../policy/milter-reports'
import { SCOPE, type Stage } from '../policy/stage'
import { formatReplyLine } from '../protocol/replycode'
import type { HarakaConnection } from './haraka'
import type { Refusal } from './state'

/** The plugin as Haraka's loggers want it. */
export interface Reporter {
  name: string
}

/**
 * Records what a milter decided at a stage (`decided`), and logs it with
 * the reply; `answered` is what the client is told now (continue when a
 * greeting or HELO may not carry the refusal: it is given at MAIL).
 */
export function reportOutcome(
  plugin: Reporter,
  c: HarakaConnection,
  stage: Stage,
  decided: Outcome,
  answered: Outcome,
  endpoint: string | undefined,
): void {
  if (decided.action === 'continue' || decided.action === 'discard') return
  const failure = decided.cause === 'failure' ? ',failure' : ''
  c.results.add(plugin, { fail: `${decided.milter}(${stage}:${decided.action}${failure})` })
  const later =
    answered.action === 'continue' ? ' (given at MAIL: a greeting may not carry it)' : ''
  const where = endpoint === undefined ? '' : ` (${endpoint})`
  c.loginfo(
    plugin,
    `${decided.milter}${where} ${decided.action} at ${stage}: ${formatReplyLine(decided.reply)}${later}`,
  )
}

/**
 * The chain's events. A failure goes to the results as
 * `err: 'NAME(stage:CODE) message; default_action=X'`, which haraka-results
 * logs at ERROR: one line per failure, not two. A milter marked down is a
 * `skip` (its change was logged once by the breaker).
 */
export function reportEvent(plugin: Reporter, c: HarakaConnection, e: ChainEvent): void {
  if (e.code === 'MILTER_ERR_UNAVAILABLE') {
    c.results.add(plugin, { skip: `${e.milter}(${e.stage}:unavailable)` })
    c.logdebug(plugin, `${e.milter} ${e.stage}: ${e.message}`)
    return
  }
  if (e.code !== undefined && e.level === 'error') {
    c.results.add(plugin, { err: `${e.milter}(${e.stage}:${e.code}) ${e.message}` })
    return
  }
  const text = `${e.milter} ${e.stage}: ${e.message}${e.code ? ` (${e.code})` : ''}`
  if (e.level === 'error') c.logerror(plugin, text)
  else if (e.level === 'warn') c.logwarn(plugin, text)
  else if (e.level === 'notice') c.loginfo(plugin, text)
  else c.logdebug(plugin, text)
}

/** One line per breaker state change. */
export function breakerText(
  milter: string,
  ch: BreakerChange,
  endpoints = 1,
): { level: 'error' | 'warn' | 'info'; text: string } {
  switch (ch.to) {
    case 'open':
      return {
        // with other endpoints, sessions go on there: an operator's concern, not yet an outage
        level: endpoints > 1 ? 'warn' : 'error',
        text: `${milter}: marked down after ${ch.failures} consecutive connect failure(s) to ${ch.endpoint} (${ch.reason ?? 'error'}); not dialled for ${Math.round((ch.retryInMs ?? 0) / 1000)} s, ${endpoints > 1 ? "sessions use the milter's other endpoints (default_action when none is up)" : 'default_action applies at once'}`,
      }
    case 'half-open':
      return { level: 'info', text: `${milter}: probing ${ch.endpoint} again` }
    case 'closed':
      return { level: 'info', text: `${milter}: ${ch.endpoint} is back up` }
  }
}

/**
 * What a refusal refused, and its reply: `message refused at eom: 554 ...`,
 * `recipient <b@example.com> deferred: 452 ...` (the others may be
 * delivered), `connection refused at helo: ...`, `command refused at
 * unknown: ...`. A 4xx defers, a 5xx refuses.
 */
function refusalText(f: Refusal): string {
  const verb = f.reply.startsWith('4') ? 'deferred' : 'refused'
  if (f.stage === 'rcpt') return `recipient ${f.recipient ?? '(unknown)'} ${verb}: ${f.reply}`
  return `${SCOPE[f.stage]} ${verb} at ${f.stage}: ${f.reply}`
}

/**
 * One INFO line per milter per message: what it did (stages, verdict,
 * edits, time waited), then each refusal the client was given (what it
 * concerned and the reply); nothing more when the message was accepted
 * for every recipient.
 */
export function reportMessage(
  plugin: Reporter,
  c: HarakaConnection,
  reports: readonly MilterReport[],
  refusals: readonly Refusal[],
): void {
  // a refusal goes on the line of the milter that decided it; one the plugin decided (recipient
  // rules, configuration) concerns every milter of the message
  const mine = (r: MilterReport, f: Refusal): boolean =>
    f.milter === r.milter || !reports.some((x) => x.milter === f.milter)
  for (const r of reports) {
    const told = refusals.filter((f) => mine(r, f)).map((f) => `; ${refusalText(f)}`)
    c.loginfo(plugin, `${formatMilterReport(r)}${told.join('')}`)
  }
}
