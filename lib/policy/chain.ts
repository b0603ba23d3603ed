/**
 * MilterChain: the milters of one SMTP connection, consulted in order
 * (Postfix semantics, milter-protocol.md §5.7). Per stage the first outcome
 * other than "continue" wins and later milters do not see that command; in
 * the content phase each milter sees the message as the previous ones left
 * it. Knows nothing of Haraka: the plugin and the CLI both run it.
 *
 * Its parts: slot.ts (each milter's state), routing.ts (which milters a
 * recipient needs), content.ts (one milter's content phase and edits),
 * verdicts.ts (verdicts and failures as outcomes), replies.ts (what the
 * client is told), report.ts (what each milter did, per message).
 *
 * Why this file is longer than the others: the replay of CONNECT, HELO,
 * MAIL and RCPT to milters that join late (rule milters, or reopened after
 * a failure) dispatches exactly as the stages do, so it stays beside them.
 */
import type { MilterDef } from '../config'
import {
  MilterProtocolError,
  MilterStateError,
  MilterUnavailableError,
  isMilterError,
  type MilterError,
} from '../errors'
import { EnvelopeEditError } from '../message/envelope'
import { HeaderEditError } from '../message/headers'
import { openMilter } from '../pool'
import type { ConnectAddress } from '../protocol/commands'
import type { MacroLookup } from '../session/macros'
import type { MilterSession, Verdict } from '../session/session'
import { runContent, startResult, type MessageInput, type MessageResult } from './content'
import type { Outcome } from './replies'
import { enabledFor, route, type MixedRecipients, type RecipientFacts } from './routing'
import { MilterReports, type MilterReport } from './report'
import { Slot } from './slot'
import { laterRefusal, failureOutcome, isConnectionStage, outcomeOf } from './verdicts'

export type { MessageInput, MessageResult, MilterEdits } from './content'
export type { Outcome } from './replies'
export type { RecipientFacts } from './routing'
export type { MilterReport } from './report'

/** Something worth logging, with the milter and stage it concerns. */
export interface ChainEvent {
  level: 'info' | 'warn' | 'error'
  milter: string
  stage: string
  message: string
  code?: string
}

/** How the chain reaches milters and reports. */
export interface ChainOptions {
  milters: readonly MilterDef[]
  /** Opens a negotiated session (injected so tests, the pool and the CLI can replace it). */
  open?: (def: MilterDef) => Promise<MilterSession>
  /** The endpoint a session is on (a milter may list several), for the per-message report. */
  endpointOf?: (s: MilterSession) => string | undefined
  /** Called when a connection ends: release (reuse) or quit. */
  release?: (def: MilterDef, session: MilterSession) => void
  onEvent?: (e: ChainEvent) => void
  /** Every verdict a milter gives, as it gives it (for the CLI and per-message logs). */
  onVerdict?: (milter: string, stage: string, verdict: Verdict) => void
  /** Each step's verdict or failure code, and the ms waited for it when it was waited (debug). */
  onStep?: (milter: string, stage: string, result: StepResult, ms: number | undefined) => void
  /** Directory for spooled replacement bodies. */
  spoolDir?: string
  /** Recipients needing different milters in one message: defer them (4xx) or run the union. */
  mixedRecipients?: MixedRecipients
}

/** How a step ended: the milter's verdict, or a failure's error code. */
export type StepResult = Verdict | { kind: 'failed'; code: string }

/** Facts kept to replay CONNECT/HELO/MAIL/RCPT to milters that join late. */
interface Replay {
  connect?: { hostname: string; addr: ConnectAddress; macros: MacroLookup | undefined }
  helo?: { helo: string; macros: MacroLookup | undefined }
  mail?: { args: readonly string[]; macros: MacroLookup | undefined }
  rcpts: Array<{ args: readonly string[]; macros: MacroLookup | undefined }>
}

const CONTINUE: Outcome = { action: 'continue' }

/** The milters of one SMTP connection. */
export class MilterChain {
  private readonly slots: Slot[]
  private readonly replayed: Replay = { rcpts: [] }
  /** Rule milters taking part in the current message (undefined until the first RCPT). */
  private messageSet: Set<Slot> | undefined
  private messageDiscarded = false
  /** The wait just measured for a milter, until its verdict or failure takes it (onStep). */
  private readonly lastWait = new Map<Slot, number>()
  private readonly open: (def: MilterDef) => Promise<MilterSession>
  private readonly reports = new MilterReports()

  constructor(private readonly opts: ChainOptions) {
    this.slots = opts.milters.map((def) => new Slot(def))
    this.open = opts.open ?? openMilter
  }

  // ---- SMTP stages ---------------------------------------------------------

  /** Opens every milter without recipient rules (in parallel) and reports CONNECT (in order). */
  async connect(hostname: string, addr: ConnectAddress, macros?: MacroLookup): Promise<Outcome> {
    this.replayed.connect = { hostname, addr, macros }
    await Promise.all(this.slots.filter((s) => !s.lazy).map((s) => this.ensureOpen(s, 'connect')))
    return this.each('connect', (s) => s.connect(hostname, addr, macros))
  }

  /** HELO/EHLO (again after STARTTLS). */
  helo(helo: string, macros?: MacroLookup): Promise<Outcome> {
    this.replayed.helo = { helo, macros }
    this.newMessage()
    return this.each('helo', (s) => s.helo(helo, macros))
  }

  /**
   * MAIL FROM with its ESMTP arguments. A milter that failed on an earlier
   * message (failure_scope = message) is opened again first, with CONNECT
   * and HELO replayed.
   */
  async mail(args: readonly string[], macros?: MacroLookup): Promise<Outcome> {
    this.newMessage()
    this.replayed.mail = { args, macros }
    for (const slot of this.slots) {
      if (slot.lazy || slot.state.kind !== 'idle') continue
      const o = await this.reconnect(slot, 'mail')
      if (o.action !== 'continue') return o
    }
    return this.each('mail', (s) => s.mail(args, macros))
  }

  /**
   * RCPT TO: a reject or tempfail refuses this recipient only. Milters
   * enabled by recipient rules join the message at the first matching
   * recipient (CONNECT, HELO and MAIL replayed with their macros). Every
   * recipient of a message must need the same milters: with the `defer`
   * policy a recipient needing another set gets 452 4.5.3 (the client sends
   * it in a new transaction); with `union` the milters are added.
   */
  async rcpt(
    args: readonly string[],
    macros?: MacroLookup,
    facts?: RecipientFacts,
  ): Promise<Outcome> {
    const wanted = new Set(this.slots.filter((s) => s.lazy && enabledFor(s.def, facts)))
    const before = this.messageSet
    const r = route(wanted, before, this.opts.mixedRecipients ?? 'defer')
    if (r.kind === 'defer') return r.outcome
    this.messageSet = r.set
    for (const slot of r.join) {
      const o = await this.activate(slot)
      if (o.action !== 'continue') {
        this.undo(r.join, before)
        return o
      }
    }
    const o = await this.each('rcpt', (s) => s.rcpt(args, macros))
    if (o.action === 'continue' || o.action === 'discard')
      this.replayed.rcpts.push({ args, macros })
    else this.undo(r.join, before)
    return o
  }

  /** DATA. */
  data(macros?: MacroLookup): Promise<Outcome> {
    return this.each('data', (s) => s.data(macros))
  }

  /** An SMTP command the MTA did not recognise. */
  unknown(line: string): Promise<Outcome> {
    return this.each('unknown', (s) => s.unknown(line))
  }

  /**
   * The content phase, milter by milter: headers, EOH, body, EOB; edits are
   * validated as a whole (all or none per milter) and the next milter sees
   * the edited message. The caller owns the result (dispose()).
   */
  async message(input: MessageInput): Promise<MessageResult> {
    const result = startResult(input)
    for (const slot of this.slots) {
      if (!this.participates(slot, 'eom')) continue
      const st = slot.state
      if (st.kind === 'failed' && st.quarantine) result.quarantine.push(st.quarantine)
      if (this.messageDiscarded) break
      if (st.kind === 'failed' && st.outcome.action !== 'continue') {
        result.outcome = st.outcome
        break
      }
      const s = slot.session
      if (!s?.inMessage) continue
      const outcome = await this.contentOf(slot, s, input, result)
      if (outcome.action !== 'continue') {
        result.outcome = outcome
        if (outcome.action === 'discard') this.messageDiscarded = true
        break
      }
    }
    if (result.outcome.action !== 'continue') this.abort()
    return result
  }

  /** True once a milter discarded the current message. */
  get discarded(): boolean {
    return this.messageDiscarded
  }

  /** Rule milters of the current message, for logs and tests. */
  get messageMilters(): string[] {
    return this.slots.filter((s) => !s.lazy || this.messageSet?.has(s)).map((s) => s.name)
  }

  /**
   * What each milter did since the last call (stages, verdict, edits, time
   * spent waiting for it): one entry per milter consulted, in chain order.
   */
  takeReports(): MilterReport[] {
    return this.reports.take(this.slots.map((s) => s.def))
  }

  /** ABORT to every milter inside a message (RSET, rejected transaction, ...). */
  abort(): void {
    this.newMessage()
    for (const slot of this.slots) {
      try {
        slot.session?.abort()
      } catch (e) {
        this.failed(slot, 'abort', e)
      }
    }
  }

  /** End of the SMTP session: QUIT (or release for reuse) every milter. */
  close(): void {
    for (const slot of this.slots) {
      const s = slot.session
      slot.state = { kind: 'done' }
      if (!s) continue
      if (this.opts.release) this.opts.release(slot.def, s)
      else s.quit()
    }
  }

  // ---- machinery -----------------------------------------------------------

  /** A new message (HELO, MAIL, RSET, end of message): message-scoped failures end. */
  private newMessage(): void {
    for (const slot of this.slots) slot.newMessage()
    this.messageDiscarded = false
    this.messageSet = undefined
    this.replayed.rcpts = []
    delete this.replayed.mail
  }

  /** Does this milter take part in this stage of the current message? */
  private participates(slot: Slot, stage: string): boolean {
    if (!slot.lazy) return true
    if (stage === 'connect' || stage === 'helo' || stage === 'unknown')
      return slot.session !== undefined
    if (stage === 'mail') return false
    return this.messageSet?.has(slot) ?? false
  }

  /** Runs one step on each milter in order; the first non-continue outcome wins. */
  private async each(stage: string, run: (s: MilterSession) => Promise<Verdict>): Promise<Outcome> {
    for (const slot of this.slots) {
      if (this.messageDiscarded) break // helo() and mail() reset it first
      if (!this.participates(slot, stage)) continue
      const st = slot.state
      if (st.kind === 'failed') {
        if (st.outcome.action !== 'continue') return st.outcome
        continue
      }
      if (st.kind === 'refused' && !slot.lazy && stage !== 'unknown')
        return laterRefusal(st.outcome)
      if (st.kind !== 'open') continue
      let outcome: Outcome
      try {
        outcome = this.verdict(slot, stage, await this.timed(slot, stage, run(st.session)))
      } catch (e) {
        outcome = this.failed(slot, stage, e)
      }
      if (outcome.action === 'discard') this.messageDiscarded = true
      if (outcome.action !== 'continue') return outcome
    }
    return CONTINUE
  }

  /** Awaits a milter's answer, counting the stage and the time spent waiting. */
  private async timed<T>(slot: Slot, stage: string, pending: Promise<T>): Promise<T> {
    const started = performance.now()
    try {
      return await pending
    } finally {
      const ms = performance.now() - started
      this.reports.waited(slot.def, stage, ms)
      if (this.opts.onStep) this.lastWait.set(slot, ms)
    }
  }

  private step(slot: Slot, stage: string, result: StepResult): void {
    if (!this.opts.onStep) return
    const ms = this.lastWait.get(slot)
    this.lastWait.delete(slot)
    this.opts.onStep(slot.name, stage, result, ms)
  }

  /** The outcome of a verdict; a milter that answered the whole connection is done with it. */
  private verdict(slot: Slot, stage: string, v: Verdict): Outcome {
    this.opts.onVerdict?.(slot.name, stage, v)
    this.step(slot, stage, v)
    this.reports.verdict(slot.def, stage, v)
    const o = outcomeOf(stage, v, slot.name)
    const connection = isConnectionStage(stage)
    switch (v.kind) {
      case 'accept':
        this.event(
          'info',
          slot,
          stage,
          connection ? 'accepted the connection' : 'accepted the message',
        )
        if (connection) slot.leave({ kind: 'done' })
        break
      case 'discard':
        this.event('info', slot, stage, connection ? 'discard at CONNECT/HELO ignored' : 'discard')
        break
      case 'reject':
      case 'tempfail':
      case 'replycode':
        // the milter is done with this connection; its refusal holds for every later MAIL
        if (connection)
          slot.leave(o.action === 'shutdown' ? { kind: 'done' } : { kind: 'refused', outcome: o })
        break
      case 'shutdown':
      case 'conn_fail':
        this.event(
          'warn',
          slot,
          stage,
          `${v.kind === 'shutdown' ? 'SMFIR_SHUTDOWN' : 'SMFIR_CONN_FAIL'}: closing the SMTP session`,
        )
        slot.leave({ kind: 'done' })
        break
      case 'continue':
      case 'skip':
        break
    }
    return o
  }

  /**
   * Applies the milter's default_action to an error. With failure_scope =
   * session the outcome holds for the rest of the SMTP connection (Postfix);
   * with message it holds for the message in flight, and the milter is
   * opened again for the next one.
   */
  private failed(slot: Slot, stage: string, e: unknown): Outcome {
    const err: MilterError = isMilterError(e)
      ? e
      : e instanceof HeaderEditError || e instanceof EnvelopeEditError
        ? new MilterProtocolError(`${slot.name}: ${e.message}`, { cause: e })
        : new MilterStateError(`unexpected: ${String(e)}`, { cause: e })
    this.step(slot, stage, { kind: 'failed', code: err.code })
    const action = slot.def.defaultAction
    // A milter marked down was logged once when it was; each session notes it quietly.
    const level = err instanceof MilterUnavailableError ? 'info' : 'error'
    this.event(level, slot, stage, `${err.message}; default_action=${action}`, err.code)
    this.reports.failure(slot.def, stage, err.code, action)
    const outcome = failureOutcome(action, slot.name)
    const scope = action === 'shutdown' ? 'session' : slot.def.failureScope
    const quarantine =
      action === 'quarantine' ? `${slot.name}: milter failed (${err.code})` : undefined
    if (outcome.action === 'continue' && quarantine === undefined) {
      // accept: carry on without it, for the message or for the session
      slot.leave(
        scope === 'session' ? { kind: 'done' } : { kind: 'failed', outcome, quarantine, scope },
      )
    } else {
      slot.leave({ kind: 'failed', outcome, quarantine, scope })
    }
    return outcome
  }

  private async ensureOpen(slot: Slot, stage: string): Promise<void> {
    if (slot.state.kind !== 'idle') return
    try {
      const session = await this.open(slot.def)
      slot.state = { kind: 'open', session }
      const endpoint = this.opts.endpointOf?.(session)
      if (endpoint !== undefined) this.reports.endpoint(slot.def, endpoint)
      const n = session.negotiated
      this.event(
        'info',
        slot,
        stage,
        `negotiated version ${n.version}, actions 0x${n.actions.toString(16)}, protocol 0x${n.protocol.toString(16)}`,
      )
    } catch (e) {
      this.failed(slot, stage, e)
    }
  }

  /**
   * Opens a milter that joins late (a rule milter) or again after a failure,
   * and replays CONNECT and HELO with the macros they had. A refusal there
   * is the milter's refusal of the client.
   */
  private async reconnect(slot: Slot, stage: string): Promise<Outcome> {
    await this.ensureOpen(slot, stage)
    const { connect, helo } = this.replayed
    if (connect) {
      const o = await this.replay(slot, 'connect', (s) =>
        s.connect(connect.hostname, connect.addr, connect.macros),
      )
      if (o.action !== 'continue') return o
    }
    if (helo) {
      const o = await this.replay(slot, 'helo', (s) => s.helo(helo.helo, helo.macros))
      if (o.action !== 'continue') return o
    }
    const st = slot.state
    return st.kind === 'failed' ? st.outcome : CONTINUE
  }

  /** Brings a rule milter into the current message: open, CONNECT, HELO (once), MAIL, earlier RCPTs. */
  private async activate(slot: Slot): Promise<Outcome> {
    if (slot.state.kind === 'idle') {
      const o = await this.reconnect(slot, 'rcpt')
      if (o.action !== 'continue') return o
    }
    const st = slot.state
    if (st.kind === 'refused') return laterRefusal(st.outcome)
    if (st.kind === 'failed') return st.outcome
    if (st.kind !== 'open') return CONTINUE
    const { mail, rcpts } = this.replayed
    if (mail) {
      const o = await this.replay(slot, 'mail', (s) => s.mail(mail.args, mail.macros))
      if (o.action !== 'continue') return o
    }
    for (const r of rcpts) {
      // union policy: the milter learns of recipients already accepted; it can no longer refuse them
      await this.replay(slot, 'rcpt', (s) => s.rcpt(r.args, r.macros))
    }
    return CONTINUE
  }

  /** A replayed step: its refusal applies to the recipient (or MAIL) that brought the milter in. */
  private async replay(
    slot: Slot,
    stage: string,
    run: (s: MilterSession) => Promise<Verdict>,
  ): Promise<Outcome> {
    const s = slot.session
    if (!s) return CONTINUE
    let o: Outcome
    try {
      o = this.verdict(slot, stage, await this.timed(slot, stage, run(s)))
    } catch (e) {
      o = this.failed(slot, stage, e)
    }
    return laterRefusal(o)
  }

  private undo(activated: readonly Slot[], before: Set<Slot> | undefined): void {
    this.messageSet = before
    for (const slot of activated) {
      try {
        slot.session?.abort()
      } catch (e) {
        this.failed(slot, 'abort', e)
      }
    }
  }

  /** One milter's content phase; a failure or invalid edit gets its default_action. */
  private async contentOf(
    slot: Slot,
    s: MilterSession,
    input: MessageInput,
    result: MessageResult,
  ): Promise<Outcome> {
    try {
      const answer = await this.timed(
        slot,
        'eom',
        runContent(
          slot.name,
          s,
          input,
          result,
          { spoolDir: this.opts.spoolDir, headerFolds: slot.def.headerFolds },
          (v) => outcomeOf('eom', v, slot.name).action === 'continue',
        ),
      )
      if (answer.kind === 'edited') {
        const edits = result.edits.find((e) => e.milter === slot.name)
        if (edits) this.reports.edits(slot.def, edits)
        if (answer.quarantine) result.quarantine.push(answer.quarantine)
      }
      return this.verdict(slot, 'eom', answer.verdict)
    } catch (e) {
      const outcome = this.failed(slot, 'eom', e)
      const st = slot.state
      if (st.kind === 'failed' && st.quarantine) result.quarantine.push(st.quarantine)
      return outcome
    }
  }

  private event(
    level: ChainEvent['level'],
    slot: Slot,
    stage: string,
    message: string,
    code?: string,
  ): void {
    const e: ChainEvent = { level, milter: slot.name, stage, message }
    if (code !== undefined) e.code = code
    this.opts.onEvent?.(e)
  }
}
