/**
 * Fault injection at scale: the full matrix (every fault x every stage it applies to x every
 * default_action, plus failure_scope=session variants), then a soak (thousands of messages of
 * mixed sizes up to a few MB through a chain of four faulty milters per listener), once with one
 * Haraka process and once with Haraka in cluster mode (smtp.ini nodes=2).
 *
 *   npm run soak                        matrix + soaks (about 10-15 minutes)
 *   npm run soak -- --quick             a subset and small soaks (1-2 minutes)
 *   npm run soak -- --help              every option
 *
 * Prints one row per case and default_action (messages sent, 250/4xx/5xx, delivered, held,
 * lost, duplicated, delivered after a refusal, edits missing, forbidden reply codes, hangs,
 * dropped connections, policy mismatches, faults fired, crashes), Haraka's RSS before and after
 * (master and workers, from /proc), and every violation found. Exit status: 0 when the invariant
 * and the policy held everywhere, 1 when the invariant broke (or Haraka crashed, froze or logged
 * an uncaught error), 2 when only the policy (what default_action / failure_scope require) did.
 *
 * Every process is started through the test helpers and stopped by PID (also on SIGINT/SIGTERM).
 */
import * as fs from 'node:fs'
import type { ParseArgsConfig } from 'node:util'

import {
  ciCases,
  fullMatrix,
  sessionScopeCases,
  soakCase,
  type MatrixOptions,
} from '../helpers/fault-cases'
import { FaultHarness, type CasePlan, type CaseResult, type Rss } from '../helpers/fault-harness'
import { parseCommandLine } from '../helpers/command-line'
import { POLICY_KINDS, type Violation } from '../helpers/reconcile'

interface Options {
  quick: boolean
  seed: number
  timeoutS: number
  sessions: number
  messages: number
  probability: number
  concurrency: number
  scopes: Set<'message' | 'session'>
  only: Set<'matrix' | 'soak'>
  faults: string[] | undefined
  stages: string[] | undefined
  soakMessages: number
  soakSessions: number
  soakMaxSize: number
  soakNodes: number[]
  dribbleBytes: number
  maxMinutes: number
  json: string | undefined
  verbose: boolean
}

const USAGE = `usage: node dist/test/soak/faults.js [options]
  --quick               CI-like subset, small soaks (1-2 minutes)
  --seed=N              seed for every fault decision (default 20261125)
  --timeout=S           milter connect/command/content timeout in seconds (default 1.5)
  --sessions=N          concurrent SMTP sessions per default_action lane (default 4)
  --messages=N          messages per session (default 3)
  --probability=P       chance a fault fires per message (default 0.5)
  --concurrency=N       cases run side by side (default 4, quick 5; 5 lanes each)
  --scopes=LIST         failure scopes for the matrix: message,session (default both)
  --only=LIST           matrix,soak (default both)
  --faults=LIST         only these faults in the matrix
  --stages=LIST         only these stages in the matrix
  --soak-messages=N     messages per soak run (default 2000; quick 150)
  --soak-sessions=N     concurrent sessions per soak lane (default 10)
  --soak-max-size=N     largest soak message body in bytes (default 3 MiB; quick 1 MiB)
  --soak-nodes=LIST     Haraka nodes for each soak run (default 0,2)
  --dribble-bytes=N     size of the dribbled REPLBODY frame (default 1 MiB; quick 64 KiB)
  --max-minutes=M       start no new round after M minutes (default 25)
  --json=FILE           also write every result as JSON
  --verbose             progress lines on stderr`

const MB = 1024 * 1024

const FLAGS = {
  quick: { type: 'boolean' },
  seed: { type: 'string' },
  timeout: { type: 'string' },
  sessions: { type: 'string' },
  messages: { type: 'string' },
  probability: { type: 'string' },
  concurrency: { type: 'string' },
  scopes: { type: 'string' },
  only: { type: 'string' },
  faults: { type: 'string' },
  stages: { type: 'string' },
  'soak-messages': { type: 'string' },
  'soak-sessions': { type: 'string' },
  'soak-max-size': { type: 'string' },
  'soak-nodes': { type: 'string' },
  'dribble-bytes': { type: 'string' },
  'max-minutes': { type: 'string' },
  json: { type: 'string' },
  verbose: { type: 'boolean' },
  help: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options']

function parseArgs(argv: readonly string[]): Options {
  const { values: v } = parseCommandLine({ args: [...argv], options: FLAGS, strict: true }, USAGE)
  const quick = v.quick === true
  const num = (key: keyof typeof FLAGS, value: string | undefined, dflt: number): number => {
    if (value === undefined) return dflt
    const n = Number(value)
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${key} needs a number, not ${value}`)
    return n
  }
  const count = (key: keyof typeof FLAGS, value: string | undefined, dflt: number): number =>
    value === undefined ? dflt : Math.max(1, Math.round(num(key, value, dflt)))
  const list = (value: string): string[] =>
    value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  const pick = <T extends string>(value: string | undefined, allowed: readonly T[]): Set<T> =>
    new Set(
      value === undefined
        ? allowed
        : list(value).filter((s): s is T => (allowed as readonly string[]).includes(s)),
    )
  return {
    quick,
    seed: num('seed', v.seed, 20261125),
    timeoutS: num('timeout', v.timeout, 1.5),
    sessions: count('sessions', v.sessions, quick ? 3 : 4),
    messages: count('messages', v.messages, quick ? 2 : 3),
    probability: Math.min(1, num('probability', v.probability, 0.5)),
    concurrency: count('concurrency', v.concurrency, quick ? 5 : 4),
    scopes: pick(v.scopes, ['message', 'session']),
    only: pick(v.only, ['matrix', 'soak']),
    faults: v.faults === undefined ? undefined : list(v.faults),
    stages: v.stages === undefined ? undefined : list(v.stages),
    soakMessages: Math.round(num('soak-messages', v['soak-messages'], quick ? 150 : 2000)),
    soakSessions: count('soak-sessions', v['soak-sessions'], 10),
    soakMaxSize: Math.round(num('soak-max-size', v['soak-max-size'], (quick ? 1 : 3) * MB)),
    soakNodes: v['soak-nodes'] === undefined ? [0, 2] : list(v['soak-nodes']).map(Number),
    dribbleBytes: count('dribble-bytes', v['dribble-bytes'], quick ? 64 * 1024 : MB),
    maxMinutes: num('max-minutes', v['max-minutes'], 25),
    json: v.json,
    verbose: v.verbose === true,
  }
}

// ---------------------------------------------------------------------------
// Output

function mb(n: number): string {
  return `${(n / MB).toFixed(0)}`
}

function rssText(r: Rss | undefined): string {
  if (!r) return 'n/a'
  const w = r.workers.length > 0 ? ` + workers ${r.workers.map(mb).join('/')}` : ''
  return `${mb(r.total)} MB (master ${mb(r.master)}${w})`
}

const COLUMNS: Array<[string, number]> = [
  ['case', 30],
  ['action', 10],
  ['sent', 5],
  ['250', 5],
  ['4xx', 5],
  ['5xx', 5],
  ['dlvd', 5],
  ['held', 5],
  ['lost', 5],
  ['dup', 4],
  ['aRef', 5],
  ['eMis', 5],
  ['forb', 5],
  ['hang', 5],
  ['drop', 5],
  ['othr', 5],
  ['pol', 5],
  ['fired', 6],
  ['crash', 6],
  ['RSS', 5],
]

function row(cells: Array<string | number>): string {
  return cells
    .map((c, i) => {
      const [, w] = COLUMNS[i]!
      const s = String(c)
      return i < 2 ? s.padEnd(w) : s.padStart(w)
    })
    .join(' ')
}

function header(): string {
  const h = row(COLUMNS.map(([n]) => n))
  return `${h}\n${'-'.repeat(h.length)}`
}

const COUNTED = new Set([
  'lost',
  'duplicated',
  'delivered-after-refusal',
  'edits-missing',
  'forbidden-code',
  'hang',
  'dropped',
])

function crashText(r: CaseResult): string {
  if (r.exited) return 'EXIT'
  if (r.frozen) return 'FROZE'
  if (r.log.length > 0) return 'LOG'
  if (r.roundBreak) return 'round'
  return '-'
}

function caseRows(r: CaseResult, rss: Rss | undefined): string[] {
  return r.lanes.map((l) => {
    const c = l.report.counts
    const others = l.report.violations.filter(
      (v) => !COUNTED.has(v.kind) && !POLICY_KINDS.has(v.kind),
    ).length
    return row([
      r.plan.id,
      l.lane.name,
      c.sent,
      c.ok,
      c.temp,
      c.perm,
      c.delivered,
      c.held,
      c.lost,
      c.duplicated,
      c.afterRefusal,
      c.editsMissing,
      c.forbidden,
      c.hang,
      c.dropped,
      others,
      c.policy,
      c.fired,
      crashText(r),
      rss ? mb(rss.total) : '',
    ])
  })
}

interface Totals {
  cases: number
  messages: number
  invariant: number
  policy: number
  crashes: number
}

function tally(results: readonly CaseResult[]): Totals {
  const t: Totals = { cases: results.length, messages: 0, invariant: 0, policy: 0, crashes: 0 }
  for (const r of results) {
    if (r.exited || r.frozen || r.log.length > 0 || r.roundBreak) t.crashes += 1
    for (const l of r.lanes) {
      t.messages += l.report.counts.sent
      for (const v of l.report.violations) {
        if (POLICY_KINDS.has(v.kind)) t.policy += 1
        else t.invariant += 1
      }
    }
  }
  return t
}

function violationReport(results: readonly CaseResult[], perKind = 2): string[] {
  const out: string[] = []
  for (const r of results) {
    const lines: string[] = []
    if (r.exited) lines.push(`  Haraka exited (${r.exited})`)
    if (r.frozen) lines.push('  Haraka froze (no greeting within 10 s)')
    for (const l of r.log) lines.push(`  log [${l.kind}] ${l.line}`)
    if (r.roundBreak && r.log.length === 0 && !r.exited) {
      lines.push(
        `  its round (${r.roundBreak.cases.join(', ')}) broke: ${[
          ...(r.roundBreak.exited ? [`exit ${r.roundBreak.exited}`] : []),
          ...(r.roundBreak.frozen ? ['frozen'] : []),
          ...r.roundBreak.log.map((l) => `[${l.kind}] ${l.line}`),
        ].join(' | ')}`,
      )
    }
    for (const l of r.lanes) {
      const byKind = new Map<string, Violation[]>()
      for (const v of l.report.violations) {
        const list = byKind.get(v.kind) ?? []
        list.push(v)
        byKind.set(v.kind, list)
      }
      for (const [kind, vs] of byKind) {
        lines.push(`  ${l.lane.name}: ${kind} x${vs.length}`)
        for (const v of vs.slice(0, perKind)) lines.push(`    ${v.id} ${v.detail}`)
      }
    }
    if (lines.length > 0) out.push(`${r.plan.id}:`, ...lines)
  }
  return out
}

// ---------------------------------------------------------------------------
// Runs

const harnesses = new Set<FaultHarness>()

async function stopAll(): Promise<void> {
  await Promise.all([...harnesses].map((h) => h.stop()))
  harnesses.clear()
}

function log(msg: string): void {
  process.stdout.write(`${msg}\n`)
}

interface Section {
  title: string
  results: CaseResult[]
  rssBefore: Rss | undefined
  rssAfter: Rss | undefined
  restarts: number
  notRun: string[]
  ms: number
}

async function runSection(
  title: string,
  cases: readonly CasePlan[],
  opts: { slots: number; nodes: number; concurrency: number; verbose: boolean; deadline: number },
): Promise<Section> {
  const started = Date.now()
  log(`\n== ${title}: ${cases.length} case(s)`)
  const h = await FaultHarness.start({
    slots: opts.slots,
    nodes: opts.nodes,
    verbose: opts.verbose,
  })
  harnesses.add(h)
  const section: Section = {
    title,
    results: [],
    rssBefore: h.rss(),
    rssAfter: undefined,
    restarts: 0,
    notRun: [],
    ms: 0,
  }
  log(`Haraka pid ${h.pid ?? '?'}, RSS before: ${rssText(section.rssBefore)}`)
  log(header())
  try {
    let i = 0
    while (i < cases.length) {
      if (Date.now() > opts.deadline) {
        section.notRun = cases.slice(i).map((c) => c.id)
        log(`time limit reached: ${section.notRun.length} case(s) not run`)
        break
      }
      const batch = cases.slice(i, i + opts.concurrency)
      i += batch.length
      await h.runCases(batch, {
        concurrency: opts.concurrency,
        onResult: (r) => {
          section.results.push(r)
          for (const line of caseRows(r, h.rss())) log(line)
        },
      })
    }
    section.rssAfter = h.rss()
    section.restarts = h.restartCount
    log(`RSS after: ${rssText(section.rssAfter)}; Haraka restarts: ${section.restarts}`)
  } finally {
    await h.stop()
    harnesses.delete(h)
  }
  section.ms = Date.now() - started
  return section
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2))
  const started = Date.now()
  const deadline = started + o.maxMinutes * 60 * 1000
  log(
    `fault injection: seed ${o.seed}, timeout ${o.timeoutS} s, ${o.sessions} session(s) x ${o.messages} message(s) per lane, p=${o.probability}${o.quick ? ' (quick)' : ''}`,
  )
  log(
    'columns: sent, 250/4xx/5xx (final reply), dlvd (delivered to the sink), held (quarantine), lost (250, neither delivered nor held), dup (delivered twice), aRef (delivered after 4xx/5xx), eMis (edits missing), forb (forbidden reply codes), hang, drop (connection closed without a reply), othr (other invariant violations), pol (policy mismatches), fired (faults injected), crash (EXIT/FROZE/LOG, or "round": a crash in its round of cases), RSS (MB, after the case)',
  )
  const sections: Section[] = []
  const mo: MatrixOptions = {
    seed: o.seed,
    timeoutS: o.timeoutS,
    sessions: o.sessions,
    messagesPerSession: o.messages,
    probability: o.probability,
    scope: 'message',
    sizes: [400, 6000, 40000, 250000],
    dribbleBytes: o.dribbleBytes,
  }
  if (o.only.has('matrix')) {
    let cases: CasePlan[]
    if (o.quick) {
      cases = ciCases(o.seed).map((c) => ({
        ...c,
        lanes: c.lanes.map((l) => ({
          ...l,
          sessions: Math.min(l.sessions, o.sessions),
          messagesPerSession: Math.max(l.messagesPerSession, o.messages),
        })),
      }))
    } else {
      cases = []
      const filter = {
        ...(o.faults ? { faults: o.faults } : {}),
        ...(o.stages ? { stages: o.stages } : {}),
      }
      if (o.scopes.has('message')) cases.push(...fullMatrix(mo, filter))
      if (o.scopes.has('session')) {
        cases.push(
          ...sessionScopeCases(mo).filter(
            (c) =>
              (!o.faults || o.faults.some((f) => c.id.startsWith(`${f}@`))) &&
              (!o.stages || o.stages.some((s) => c.id.includes(`@${s}`))),
          ),
        )
      }
    }
    sections.push(
      await runSection('matrix', cases, {
        slots: o.concurrency * 5,
        nodes: 0,
        concurrency: o.concurrency,
        verbose: o.verbose,
        deadline,
      }),
    )
  }
  if (o.only.has('soak')) {
    for (const nodes of o.soakNodes) {
      const plan = soakCase(
        {
          seed: o.seed,
          messages: o.soakMessages,
          sessions: o.soakSessions,
          timeoutS: Math.max(o.timeoutS, 2),
          maxSize: o.soakMaxSize,
          dribbleBytes: 64 * 1024,
        },
        nodes > 0 ? `-nodes${nodes}` : '',
      )
      sections.push(
        await runSection(`soak, Haraka nodes=${nodes}`, [plan], {
          slots: plan.lanes.length,
          nodes,
          concurrency: 1,
          verbose: o.verbose,
          deadline: Number.POSITIVE_INFINITY,
        }),
      )
    }
  }

  // ---- summary
  const all = sections.flatMap((s) => s.results)
  const t = tally(all)
  log('\n== summary')
  for (const s of sections) {
    const st = tally(s.results)
    log(
      `${s.title}: ${st.cases} case(s), ${st.messages} message(s) sent, ${st.invariant} invariant violation(s), ${st.policy} policy mismatch(es), ${st.crashes} case(s) with a crash; RSS ${rssText(s.rssBefore)} -> ${rssText(s.rssAfter)}; ${s.restarts} restart(s); ${(s.ms / 1000).toFixed(0)} s${s.notRun.length > 0 ? `; NOT RUN: ${s.notRun.join(', ')}` : ''}`,
    )
  }
  const report = violationReport(all)
  if (report.length > 0) {
    log('\n== violations (first examples per case, lane and kind)')
    for (const line of report) log(line)
  }
  log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s`)
  if (o.json) {
    fs.writeFileSync(
      o.json,
      JSON.stringify(
        sections.map((s) => ({
          title: s.title,
          rssBefore: s.rssBefore,
          rssAfter: s.rssAfter,
          restarts: s.restarts,
          notRun: s.notRun,
          cases: s.results.map((r) => ({
            id: r.plan.id,
            exited: r.exited,
            frozen: r.frozen,
            log: r.log,
            roundBreak: r.roundBreak,
            lanes: r.lanes.map((l) => ({
              lane: l.lane.name,
              counts: l.report.counts,
              violations: l.report.violations,
            })),
          })),
        })),
        null,
        2,
      ),
    )
  }
  if (t.invariant > 0 || t.crashes > 0) return 1
  if (t.policy > 0) return 2
  return 0
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    void stopAll().finally(() => process.exit(130))
  })
}

main()
  .then((code) => {
    process.exitCode = code
  })
  .catch(async (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
    await stopAll()
    process.exitCode = 3
  })
