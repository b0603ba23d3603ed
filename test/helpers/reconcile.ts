/**
 * Reconciliation of what the SMTP clients were told (load.ts) with what the receiving sink got
 * (digest-sink.ts), what was held in quarantine and what each fault milter did
 * (fault-milter.ts), plus Haraka's log.
 *
 * The invariant, per message: either the client got 250 and the message was delivered exactly
 * once with every edit the milters promised (or was held in quarantine by policy), or the client
 * got a 4xx/5xx and nothing was delivered; never a reply code RFC 5321 forbids at that step; never
 * a hang or a dropped connection. The policy checks (single-milter lanes) add what the milter's
 * default_action and failure_scope say the outcome must be.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'

import type { Delivery } from './digest-sink'
import {
  CONNECTION_STAGES,
  FAULT_CLASS,
  type FaultClass,
  type FaultMilter,
  type MessageRecord,
} from './fault-milter'
import type { MessageOutcome } from './load'

export type DefaultAction = 'accept' | 'tempfail' | 'reject' | 'quarantine' | 'shutdown'
export const ACTIONS: readonly DefaultAction[] = [
  'accept',
  'tempfail',
  'reject',
  'quarantine',
  'shutdown',
]
export type FailureScope = 'message' | 'session'

/** A milter of a lane, as configured. */
export interface LaneMilter {
  name: string
  action: DefaultAction
  scope: FailureScope
  milter: FaultMilter
}

/** Kinds of invariant violation (and policy mismatch). */
export type ViolationKind =
  | 'lost'
  | 'duplicated'
  | 'delivered-after-refusal'
  | 'held-after-refusal'
  | 'delivered-and-held'
  | 'edits-missing'
  | 'edits-from-failed-milter'
  | 'unfiltered-delivery'
  | 'held-unexpectedly'
  | 'rcpt-mismatch'
  | 'body-corrupt'
  | 'overlong-line'
  | 'forbidden-code'
  | 'open-after-421'
  | 'hang'
  | 'dropped'
  // policy (what default_action / failure_scope require)
  | 'policy-outcome'
  | 'policy-greeting'
  | 'policy-stuck-failure'
  | 'policy-recontacted'

export const POLICY_KINDS: ReadonlySet<ViolationKind> = new Set<ViolationKind>([
  'policy-outcome',
  'policy-greeting',
  'policy-stuck-failure',
  'policy-recontacted',
])

export interface Violation {
  kind: ViolationKind
  /** Message-ID. */
  id: string
  detail: string
}

/** Per lane figures. */
export interface Counts {
  messages: number
  sent: number
  ok: number
  temp: number
  perm: number
  hang: number
  dropped: number
  unsent: number
  delivered: number
  held: number
  lost: number
  duplicated: number
  afterRefusal: number
  editsMissing: number
  forbidden: number
  policy: number
  /** Faults that fired (milter connections plus messages, every milter of the lane). */
  fired: number
}

export interface LaneReport {
  counts: Counts
  violations: Violation[]
}

/** Index of quarantined copies: Message-ID -> number of files. */
export class QuarantineIndex {
  private readonly seen = new Set<string>()
  private readonly counts = new Map<string, number>()

  constructor(readonly dir: string) {}

  /** Reads quarantine files not seen yet. */
  scan(): void {
    let days: string[]
    try {
      days = fs.readdirSync(this.dir)
    } catch {
      return
    }
    for (const day of days) {
      const folder = path.join(this.dir, day)
      let files: string[]
      try {
        files = fs.readdirSync(folder)
      } catch {
        continue
      }
      for (const f of files) {
        const file = path.join(folder, f)
        if (this.seen.has(file)) continue
        this.seen.add(file)
        const fd = fs.openSync(file, 'r')
        const buf = Buffer.alloc(64 * 1024)
        const n = fs.readSync(fd, buf, 0, buf.length, 0)
        fs.closeSync(fd)
        const m = /^Message-ID:[ \t]*(\S+)/im.exec(buf.subarray(0, n).toString('latin1'))
        const id = m ? m[1]! : `(no Message-ID in ${file})`
        this.counts.set(id, (this.counts.get(id) ?? 0) + 1)
      }
    }
  }

  count(id: string): number {
    return this.counts.get(id) ?? 0
  }
}

function stepsText(o: MessageOutcome): string {
  const steps = o.steps
    .map((s) => `${s.step}:${s.code ?? s.failure ?? '?'}${s.enhanced ? ` ${s.enhanced}` : ''}`)
    .join(' ')
  return `[${steps}]`
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const x = a.map((s) => s.toLowerCase()).sort()
  const y = b.map((s) => s.toLowerCase()).sort()
  return x.length === y.length && x.every((v, i) => v === y[i])
}

interface Expect {
  /** What the message should end as. */
  want: 'delivered' | 'held' | 'temp' | 'perm'
  code?: number
  enhanced?: string
  why: string
}

function expectFailure(action: DefaultAction, why: string): Expect {
  switch (action) {
    case 'accept':
      return { want: 'delivered', why }
    case 'tempfail':
      return { want: 'temp', code: 451, enhanced: '4.7.1', why }
    case 'reject':
      return { want: 'perm', code: 550, enhanced: '5.5.0', why }
    case 'quarantine':
      return { want: 'held', why }
    case 'shutdown':
      return { want: 'temp', code: 421, why }
  }
}

function matches(e: Expect, o: MessageOutcome, delivered: number, held: number): boolean {
  switch (e.want) {
    case 'delivered':
      return o.final === 'ok' && delivered === 1 && held === 0
    case 'held':
      return o.final === 'ok' && delivered === 0 && held === 1
    case 'temp':
    case 'perm':
      return (
        o.final === e.want &&
        (e.code === undefined || o.code === e.code) &&
        (e.enhanced === undefined || o.enhanced === e.enhanced)
      )
  }
}

function expectText(e: Expect): string {
  const code = e.code !== undefined ? ` ${e.code}${e.enhanced ? ` ${e.enhanced}` : ''}` : ''
  return `${e.want}${code} (${e.why})`
}

/**
 * Checks every message of one lane. `policy` adds the default_action/failure_scope checks; it
 * needs a lane of exactly one milter.
 */
export function reconcileLane(
  outcomes: readonly MessageOutcome[],
  milters: readonly LaneMilter[],
  deliveries: (id: string) => readonly Delivery[],
  quarantine: QuarantineIndex,
  policy: boolean,
): LaneReport {
  const counts: Counts = {
    messages: outcomes.length,
    sent: 0,
    ok: 0,
    temp: 0,
    perm: 0,
    hang: 0,
    dropped: 0,
    unsent: 0,
    delivered: 0,
    held: 0,
    lost: 0,
    duplicated: 0,
    afterRefusal: 0,
    editsMissing: 0,
    forbidden: 0,
    policy: 0,
    fired: 0,
  }
  const violations: Violation[] = []
  const add = (kind: ViolationKind, o: MessageOutcome, detail: string): void => {
    violations.push({ kind, id: o.id, detail: `${detail} ${stepsText(o)}` })
  }
  const records = (o: MessageOutcome): Array<MessageRecord | undefined> =>
    milters.map((m) => m.milter.messages().get(o.key))

  for (const o of outcomes) {
    counts[o.final] += 1
    if (o.final !== 'unsent') counts.sent += 1
    const ds = deliveries(o.id)
    const held = quarantine.count(o.id)
    counts.delivered += ds.length > 0 ? 1 : 0
    counts.held += held > 0 ? 1 : 0
    const recs = records(o)

    for (const f of o.forbidden) {
      counts.forbidden += 1
      add('forbidden-code', o, `${f.step} answered ${f.code} ${JSON.stringify(f.text)}`)
    }
    if (o.openAfter421)
      add('open-after-421', o, `421 at ${o.openAfter421}, but the connection stayed open 5 s`)
    if (o.final === 'hang') add('hang', o, `no reply at ${o.at ?? '?'}`)
    if (o.final === 'dropped')
      add('dropped', o, `connection closed without a reply at ${o.at ?? '?'}`)

    if (o.final === 'ok') {
      if (ds.length === 0 && held === 0) {
        counts.lost += 1
        add('lost', o, '250 but neither delivered nor held')
      }
      if (ds.length > 1 || held > 1) {
        counts.duplicated += 1
        add('duplicated', o, `delivered ${ds.length} times, held ${held} times`)
      }
      if (ds.length > 0 && held > 0) add('delivered-and-held', o, `delivered and held`)
    } else if (o.final === 'temp' || o.final === 'perm') {
      if (ds.length > 0) {
        counts.afterRefusal += 1
        add('delivered-after-refusal', o, `${o.code} at ${o.at} but delivered ${ds.length} time(s)`)
      }
      if (held > 0) add('held-after-refusal', o, `${o.code} at ${o.at} but held`)
    }

    const d = ds[0]
    if (d) {
      if (!sameSet(d.rcptTo, o.acceptedRcpts))
        add(
          'rcpt-mismatch',
          o,
          `delivered to ${d.rcptTo.join(',')}, accepted ${o.acceptedRcpts.join(',')}`,
        )
      let missing = false
      let bodySha = o.bodySha256
      for (const [i, m] of milters.entries()) {
        const rec = recs[i]
        const name = m.milter.headerName
        if (name === null) continue
        const values = d.faultHeaders
          .filter(([n]) => n.toLowerCase() === name.toLowerCase())
          .map(([, v]) => v)
        const promised = rec?.headerPromised === true
        if (promised && !values.includes(o.id)) {
          missing = true
          add(
            'edits-missing',
            o,
            `${m.name} promised ${name}: ${o.id}; delivered ${JSON.stringify(values)}`,
          )
        }
        if (values.length > 1)
          add('duplicated', o, `${m.name}'s ${name} delivered ${values.length} times`)
        if (!promised && values.length > 0)
          add(
            'edits-from-failed-milter',
            o,
            `${name} delivered though ${m.name} did not complete (fault ${rec?.fired?.fault ?? 'none'})`,
          )
        if (!promised && m.action !== 'accept')
          add(
            'unfiltered-delivery',
            o,
            `delivered though ${m.name} (default_action=${m.action}) never completed${rec?.fired ? ` (fault ${rec.fired.fault}@${rec.fired.stage})` : rec ? '' : ' (message not seen by it)'}`,
          )
        if (promised && rec?.bodySha256) bodySha = rec.bodySha256
      }
      if (missing) counts.editsMissing += 1
      const stray = d.faultHeaders.filter(([n]) => /^x-fault-(long|early)$/i.test(n))
      if (stray.length > 0)
        add('edits-from-failed-milter', o, `delivered with ${stray.map(([n]) => n).join(', ')}`)
      if (d.bodySha256 !== bodySha)
        add(
          'body-corrupt',
          o,
          `delivered body sha256 ${d.bodySha256.slice(0, 12)} (${d.bodyBytes} bytes), expected ${bodySha.slice(0, 12)}`,
        )
      if (d.longestLine > 998) add('overlong-line', o, `a delivered line is ${d.longestLine} bytes`)
    }
    if (held > 0 && ds.length === 0) {
      const excuse = milters.some(
        (m, i) => m.action === 'quarantine' && recs[i]?.headerPromised !== true,
      )
      if (!excuse) add('held-unexpectedly', o, 'held though every quarantine milter completed')
    }
  }

  if (policy && milters.length === 1)
    policyChecks(outcomes, milters[0]!, deliveries, quarantine, add)
  if (milters.length > 1) chainScopeChecks(outcomes, milters, add)
  counts.policy = violations.filter((v) => POLICY_KINDS.has(v.kind)).length
  for (const m of milters) {
    counts.fired += m.milter.conns().filter((c) => c.fired).length
    counts.fired += [...m.milter.messages().values()].filter((r) => r.fired).length
  }
  return { counts, violations }
}

/**
 * A chain where every milter has failure_scope=message and every fault strikes after MAIL (no
 * connection-stage fault, no refusal of MAIL): every message that reached MAIL must have reached
 * every milter; a milter missing a message means an earlier failure stuck.
 */
function chainScopeChecks(
  outcomes: readonly MessageOutcome[],
  milters: readonly LaneMilter[],
  add: (kind: ViolationKind, o: MessageOutcome, detail: string) => void,
): void {
  const eligible = milters.every((m) => {
    const s = m.milter.spec
    if (m.scope !== 'message' || s.fault === 'refuse') return false
    if (CONNECTION_STAGES.has(s.stage)) return false
    return !(s.stage === 'mail' && s.fault !== 'none' && FAULT_CLASS[s.fault] === 'verdict')
  })
  if (!eligible) return
  for (const o of outcomes) {
    if (!o.steps.some((s) => s.step === 'mail' && s.code !== null)) continue
    for (const m of milters) {
      if (!m.milter.messages().has(o.key))
        add(
          'policy-stuck-failure',
          o,
          `failure_scope=message, but ${m.name} never saw this message's MAIL (an earlier failure stuck)`,
        )
    }
  }
}

function policyChecks(
  outcomes: readonly MessageOutcome[],
  m: LaneMilter,
  deliveries: (id: string) => readonly Delivery[],
  quarantine: QuarantineIndex,
  add: (kind: ViolationKind, o: MessageOutcome, detail: string) => void,
): void {
  const spec = m.milter.spec
  const connStage = CONNECTION_STAGES.has(spec.stage) || spec.fault === 'refuse'
  const specClass = spec.fault === 'none' ? 'none' : FAULT_CLASS[spec.fault]
  // the milter's own reject, not a failure
  const verdict: Expect =
    spec.fault === 'replbody_reject'
      ? { want: 'perm', code: 554, enhanced: '5.7.1', why: 'milter rejected at eom' }
      : spec.stage === 'connect'
        ? { want: 'perm', code: 554, why: 'milter rejected at CONNECT: 554 greeting' }
        : { want: 'perm', why: `milter rejected at ${spec.stage}` }
  const rejectAt = (stage: string): boolean => spec.fault === 'reject' && spec.stage === stage
  // SMTP connection -> messages in order
  const byConn = new Map<number, MessageOutcome[]>()
  for (const o of outcomes) {
    if (o.conn < 0) continue
    const list = byConn.get(o.conn) ?? []
    list.push(o)
    byConn.set(o.conn, list)
  }

  for (const o of outcomes) {
    if (o.final === 'unsent' || o.final === 'hang' || o.final === 'dropped') continue
    const rec = m.milter.messages().get(o.key)
    const delivered = deliveries(o.id).length
    const held = quarantine.count(o.id)

    // the greeting and EHLO answer failures at CONNECT/HELO only with 421 (shutdown)
    for (const s of o.steps) {
      if (s.code === null) continue
      // 220; 421 for shutdown; 554 only for the milter's own reject at CONNECT
      const greetingOk =
        s.code === 220 ||
        (m.action === 'shutdown' && s.code === 421) ||
        (rejectAt('connect') && s.code === 554)
      if (s.step === 'greeting' && !greetingOk)
        add('policy-greeting', o, `greeting ${s.code} with default_action=${m.action}`)
      // never 451 at EHLO (a tempfail is answered at MAIL); 550 for a reject, 421 for shutdown
      const ehloOk =
        s.code === 250 ||
        (m.action === 'shutdown' && s.code === 421) ||
        ((m.action === 'reject' || rejectAt('helo')) && s.code === 550)
      if (s.step === 'ehlo' && !ehloOk)
        add('policy-greeting', o, `EHLO answered ${s.code} with default_action=${m.action}`)
    }

    let cls: FaultClass | 'none' | 'unseen'
    if (rec?.fired) cls = FAULT_CLASS[rec.fired.fault]
    else if (rec) cls = 'none'
    else cls = 'unseen'

    const expects: Expect[] = []
    const benign: Expect = { want: 'delivered', why: 'no failure' }
    switch (cls) {
      case 'none':
      case 'benign':
        expects.push({ ...benign, why: rec?.fired ? `benign ${rec.fired.fault}` : 'no fault' })
        break
      case 'verdict':
        expects.push(verdict)
        break
      case 'failure':
        expects.push(expectFailure(m.action, `${rec?.fired?.fault}@${rec?.fired?.stage} failed`))
        break
      case 'either':
        expects.push(
          { ...benign, why: `${rec?.fired?.fault} completed` },
          expectFailure(m.action, `${rec?.fired?.fault} timed out`),
        )
        break
      case 'unseen':
        // the only fault is the milter's reject at CONNECT/HELO: that is what stopped it
        if (specClass === 'verdict' && connStage) expects.push(verdict)
        else expects.push(expectFailure(m.action, 'milter failed before MAIL or not dialled'))
        break
    }
    if (!expects.some((e) => matches(e, o, delivered, held))) {
      add(
        'policy-outcome',
        o,
        `expected ${expects.map(expectText).join(' or ')}; got ${o.final}${o.code !== null ? ` ${o.code}${o.enhanced ? ` ${o.enhanced}` : ''}` : ''} at ${o.at}, delivered ${delivered}, held ${held}`,
      )
    }
    // failure_scope=message: a failure costs only its own message. With the fault at a message
    // stage the milter connection always opens fine, so every message must reach the milter.
    if (
      m.scope === 'message' &&
      !connStage &&
      cls === 'unseen' &&
      o.steps.some((s) => s.step === 'mail' && s.code !== null)
    )
      add(
        'policy-stuck-failure',
        o,
        `failure_scope=message, but ${m.name} never saw this message's MAIL (an earlier failure stuck)`,
      )
  }

  // failure_scope=session: after a failure the milter is not consulted again on that connection.
  if (m.scope === 'session') {
    for (const list of byConn.values()) {
      let failedAt = -1
      for (const [i, o] of list.entries()) {
        const rec = m.milter.messages().get(o.key)
        if (failedAt >= 0 && rec)
          add(
            'policy-recontacted',
            o,
            `failure_scope=session, but ${m.name} saw this message after message ${failedAt + 1} on the same connection failed`,
          )
        // a failure: the fault fired on this message, or the milter never saw its MAIL
        const failed = rec
          ? rec.fired !== undefined && FAULT_CLASS[rec.fired.fault] === 'failure'
          : o.steps.some((s) => s.step === 'mail')
        if (failedAt < 0 && failed) failedAt = i
      }
    }
  }
}

/** Haraka log lines that break the invariant (crashes, double callbacks, hook timeouts). */
export const LOG_PATTERNS: ReadonlyArray<readonly [string, RegExp]> = [
  ['uncaught exception', /Caught exception|uncaught/i],
  ['unhandled rejection', /unhandled/i],
  ['node error code', /(?<![A-Za-z_])ERR_[A-Z][A-Z0-9_]+/],
  ['callback twice', /ran callback multiple times/],
  ['plugin timeout', /timed out on hook/],
  ['plugin internal error', /internal error at /],
  ['worker died', /worker \d+ (?:exited with error code|killed by signal)/],
]

export interface LogIssue {
  kind: string
  line: string
}

/** Every matching line of a log excerpt (at most `max` per kind). */
export function scanLog(text: string, max = 5): LogIssue[] {
  const out: LogIssue[] = []
  const perKind = new Map<string, number>()
  for (const line of text.split('\n')) {
    for (const [kind, re] of LOG_PATTERNS) {
      if (!re.test(line)) continue
      const n = perKind.get(kind) ?? 0
      perKind.set(kind, n + 1)
      if (n < max) out.push({ kind, line: line.length > 400 ? `${line.slice(0, 400)}...` : line })
      break
    }
  }
  for (const [kind, n] of perKind) {
    if (n > max) out.push({ kind, line: `(${n - max} more ${kind} lines)` })
  }
  return out
}
