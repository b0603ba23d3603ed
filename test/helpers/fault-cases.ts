/**
 * The fault-injection cases: a representative subset for CI (test/e2e/faults.test.ts), the full
 * matrix and the soak (test/soak/faults.ts). Timings are derived from one timeout so that "slow"
 * is well below it and "slow with PROGRESS" well above it but below eom_timeout.
 */
import {
  FAULTS,
  FAULT_STAGES,
  STAGES,
  type Fault,
  type FaultTiming,
  type Stage,
} from './fault-milter'
import type { CasePlan, LanePlan, MilterPlan } from './fault-harness'
import { ACTIONS, type DefaultAction, type FailureScope } from './reconcile'

export interface MatrixOptions {
  seed: number
  /** connect/command/content timeout, seconds. */
  timeoutS: number
  sessions: number
  messagesPerSession: number
  probability: number
  scope: FailureScope
  actions?: readonly DefaultAction[]
  sizes?: readonly number[]
  /** dribble: REPLBODY size (bytes). */
  dribbleBytes: number
}

/** eom_timeout for a timeout: room for slow_progress, short enough for progress_forever. */
export function eomTimeoutFor(timeoutS: number): number {
  return Math.round(timeoutS * 3.5 * 10) / 10
}

/** Fault timings for a timeout T: slow 0.2T, PROGRESS every 0.25T, slow_progress 1.7T. */
export function timingFor(timeoutS: number, dribbleBytes: number): Partial<FaultTiming> {
  const t = timeoutS * 1000
  return {
    slowMs: Math.round(t * 0.2),
    progressEveryMs: Math.round(t * 0.25),
    slowProgressMs: Math.round(t * 1.7),
    dribbleBytes,
    dribbleChunk: 1,
  }
}

function caseId(fault: Fault, stage: Stage, scope: FailureScope, tag = ''): string {
  return `${fault}@${stage}${scope === 'session' ? '/session' : ''}${tag}`
}

/** One fault at one stage, one lane per default_action, side by side. */
export function matrixCase(
  fault: Fault,
  stage: Stage,
  o: MatrixOptions,
  overrides: Partial<MatrixOptions> = {},
): CasePlan {
  const m = { ...o, ...overrides }
  // a dribbled frame is only a fault worth the name when the timeouts let it finish (about a
  // minute per MiB written a byte at a time on a busy machine)
  const dribble = fault === 'dribble'
  const timeoutS = dribble
    ? Math.max(m.timeoutS, Math.ceil(30 + (m.dribbleBytes / (1 << 20)) * 60))
    : m.timeoutS
  const lanes: LanePlan[] = (m.actions ?? ACTIONS).map((action) => {
    const milter: MilterPlan = {
      fault,
      stage,
      probability: m.probability,
      action,
      scope: m.scope,
      timing: timingFor(timeoutS, m.dribbleBytes),
    }
    return {
      name: action,
      milters: [milter],
      sessions: m.sessions,
      messagesPerSession: m.messagesPerSession,
      ...(m.sizes ? { sizes: m.sizes } : {}),
    }
  })
  return {
    id: caseId(fault, stage, m.scope),
    lanes,
    timeoutS,
    eomTimeoutS: eomTimeoutFor(timeoutS),
    policy: true,
    seed: m.seed,
    ...(dribble ? { replyTimeoutMs: (2 * timeoutS + 60) * 1000 } : {}),
  }
}

/**
 * The CI subset: every stage, every kind of fault at least once, both failure scopes, the
 * circuit breaker (refuse every connection), the known crashes (half a REPLBODY, a dribbled
 * frame), the new checks (eom_timeout, an overlong header value, 554 for a milter's reject at
 * CONNECT), and PROGRESS forever before end of message (bounded by nothing but Haraka's hook
 * timeout today).
 */
export function ciCases(seed: number): CasePlan[] {
  const o: MatrixOptions = {
    seed,
    timeoutS: 1.5,
    sessions: 5,
    messagesPerSession: 2,
    probability: 0.5,
    scope: 'message',
    sizes: [400, 6000, 40000],
    dribbleBytes: 64 * 1024,
  }
  return [
    matrixCase('refuse', 'connect', o, { probability: 1 }),
    matrixCase('reject', 'connect', o),
    matrixCase('hang', 'optneg', o),
    matrixCase('garbage', 'connect', o),
    matrixCase('close_mid_frame', 'helo', o),
    matrixCase('bad_replycode', 'mail', o),
    matrixCase('close', 'rcpt', o),
    matrixCase('slow', 'rcpt', o),
    matrixCase('unknown_reply', 'data', o),
    matrixCase('huge_length', 'header', o),
    matrixCase('early_mod', 'eoh', o),
    matrixCase('slow_progress', 'body', o),
    matrixCase('hang', 'eom', o),
    matrixCase('progress_forever', 'mail', o),
    matrixCase('progress_forever', 'eom', o),
    matrixCase('half_replbody', 'eom', o, { probability: 1, sessions: 8 }),
    matrixCase('replbody_reject', 'eom', o),
    matrixCase('dribble', 'eom', o, { sessions: 2 }),
    matrixCase('long_header', 'eom', o),
    matrixCase('close', 'mail', o, { scope: 'session', messagesPerSession: 3 }),
    matrixCase('garbage', 'body', o, { scope: 'session', messagesPerSession: 3 }),
  ]
}

/**
 * Every fault at every stage it applies to, for every default_action. Cases that wait for the
 * hang bound (PROGRESS forever before end of message) come first so they share rounds.
 */
export function fullMatrix(
  o: MatrixOptions,
  filter: { faults?: readonly string[]; stages?: readonly string[] } = {},
): CasePlan[] {
  const out: CasePlan[] = []
  for (const fault of FAULTS) {
    if (filter.faults && !filter.faults.includes(fault)) continue
    for (const stage of STAGES) {
      if (!FAULT_STAGES[fault].includes(stage)) continue
      if (filter.stages && !filter.stages.includes(stage)) continue
      const extra: Partial<MatrixOptions> = {}
      if (fault === 'dribble') extra.sessions = Math.min(o.sessions, 2)
      if (fault === 'half_replbody') extra.probability = 1
      if (fault === 'refuse') extra.probability = 1
      out.push(matrixCase(fault, stage, o, extra))
    }
  }
  const slow = (c: CasePlan): number => (/^progress_forever@(?!eom)/.test(c.id) ? 0 : 1)
  return out.sort((a, b) => slow(a) - slow(b))
}

/** The failure_scope=session variant: every failure fault at one command and one content stage. */
export function sessionScopeCases(o: MatrixOptions): CasePlan[] {
  const out: CasePlan[] = []
  const session = {
    ...o,
    scope: 'session' as const,
    messagesPerSession: Math.max(3, o.messagesPerSession),
  }
  for (const fault of FAULTS) {
    for (const stage of ['rcpt', 'body'] as const) {
      if (!FAULT_STAGES[fault].includes(stage)) continue
      if (fault === 'slow' || fault === 'slow_progress' || fault === 'progress_forever') continue
      out.push(matrixCase(fault, stage, session))
    }
  }
  return out
}

export interface SoakOptions {
  seed: number
  /** Total messages over both lanes. */
  messages: number
  /** Concurrent SMTP sessions per lane. */
  sessions: number
  timeoutS: number
  /** Largest message body, bytes. */
  maxSize: number
  dribbleBytes: number
}

/** Body sizes: mostly small, some large, a few up to `max`. */
export function soakSizes(max: number): number[] {
  const base = [500, 2000, 500, 8000, 1200, 30000, 700, 120000, 500, 3000, 600000, 1500]
  const sizes = base.filter((n) => n < max)
  sizes.push(Math.round(max / 2), max)
  return sizes
}

/**
 * Two listeners, each with a chain of four faulty milters (different faults, stages and
 * default_actions, low probabilities), each adding its own header.
 */
export function soakCase(o: SoakOptions, tag: string): CasePlan {
  const timing = timingFor(o.timeoutS, o.dribbleBytes)
  const chain = (
    specs: Array<[Fault, Stage, number, DefaultAction]>,
    prefix: string,
  ): MilterPlan[] =>
    specs.map(([fault, stage, probability, action], i) => ({
      fault,
      stage,
      probability,
      action,
      scope: 'message',
      headerName: `X-Fault-Milter-${prefix}${i}`,
      timing,
    }))
  const perLane = Math.max(1, Math.round(o.messages / 2 / o.sessions))
  const sizes = soakSizes(o.maxSize)
  const lanes: LanePlan[] = [
    {
      name: 'chain-a',
      milters: chain(
        [
          ['garbage', 'header', 0.02, 'accept'],
          ['half_replbody', 'eom', 0.02, 'tempfail'],
          ['slow_progress', 'body', 0.05, 'reject'],
          ['bad_replycode', 'rcpt', 0.02, 'quarantine'],
        ],
        'a',
      ),
      sessions: o.sessions,
      messagesPerSession: perLane,
      sizes,
    },
    {
      name: 'chain-b',
      milters: chain(
        [
          ['close', 'connect', 0.03, 'accept'],
          ['unknown_reply', 'data', 0.02, 'reject'],
          ['hang', 'eom', 0.01, 'shutdown'],
          ['dribble', 'eom', 0.005, 'tempfail'],
        ],
        'b',
      ),
      sessions: o.sessions,
      messagesPerSession: perLane,
      sizes,
    },
  ]
  return {
    id: `soak${tag}`,
    lanes,
    timeoutS: o.timeoutS,
    eomTimeoutS: Math.max(eomTimeoutFor(o.timeoutS), 60),
    policy: false,
    seed: o.seed,
    deadlineMs: 20 * 60 * 1000,
  }
}
