/**
 * MilterChain: the milters of one SMTP connection, consulted in order
 * (Postfix semantics, milter-protocol.md §5.7). Per stage the first outcome
 * other than "continue" wins and later milters do not see that command; in
 * the content phase each milter sees the message as the previous ones left
 * it. Knows nothing of Haraka: the plugin and the CLI both run it.
 *
 * This file orders the milters and routes each stage to those taking
 * part; every decision it applies is made elsewhere: slot.ts (each
 * milter's state), routing.ts (which milters a recipient needs), replay.ts
 * (what a milter joining late is told again), verdicts.ts (a verdict's
 * outcome and effect), failure.ts (a failure's outcome, state and wording),
 * shadow.ts (what shadow mode changes), message.ts (one milter's content
 * phase and edits), smtp-replies.ts (what the client is told), milter-reports.ts (what
 * each milter did, per message).
 *
 * Why this file is longer than the others: each SMTP stage has its entry
 * point here with its routing rules (conditions, rule milters joining at
 * RCPT, the content phase milter by milter), and the dispatch they share.
 */
import type { DefaultAction, MilterDef } from '../config'
import type { MilterError } from '../errors'
import { openMilter } from '../pool'
import type { ConnectAddress } from '../protocol/commands'
import type { MacroLookup } from '../session/macros'
import type { MilterSession, Verdict } from '../session/session'
import {
  clientSkip,
  messageSkip,
  recipientSkip,
  sizeSkip,
  type ClientFacts,
  type MessageFacts,
} from './conditions'
import { runMilterContent, startResult, type MessageInput, type MessageResult } from './message'
import type { Outcome } from './smtp-replies'
import { enabledFor, route, type MixedRecipients, type RecipientFacts } from './routing'
import { failureOf } from './failure'
import { Replay, replaySteps, type ReplayStep } from './replay'
import { MilterReports, type MilterReport } from './milter-reports'
import { shadowEdits } from './shadow'
import { Slot, type SlotEffect } from './slot'
import { SCOPE, type Stage } from './stage'
import { laterRefusal, outcomeOf, verdictEffect } from './verdicts'

export type { ClientFacts, MessageFacts } from './conditions'
export type { MessageInput, MessageResult } from './message'
export type { Outcome } from './smtp-replies'
export type { Stage } from './stage'
export type { RecipientFacts } from './routing'
export type { MilterReport } from './milter-reports'

/** Something worth logging, with the milter and stage it concerns. */
export interface ChainEvent {
  /** info: detail (Haraka's debug log); notice: for the operator's log (a shadow milter's wishes). */
  level: 'info' | 'notice' | 'warn' | 'error'
  milter: string
  stage: Stage
  message: string
  code?: string
  /** A milter's failure: the error itself (the message above adds endpoint and action). */
  failure?: { error: MilterError; defaultAction: DefaultAction | 'none (shadow)' }
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
  /** A milter not contacted because of a skip_* condition, and why (for Haraka's results). */
  onSkip?: (milter: string, stage: Stage, reason: string) => void
  /** Every verdict a milter gives, as it gives it (for the CLI and per-message logs). */
  onVerdict?: (milter: string, stage: Stage, verdict: Verdict) => void
  /** Each step's verdict or failure code, the endpoint, and the ms waited for it when it was waited (debug). */
  onStep?: (step: Step) => void
  /** Directory for spooled replacement bodies. */
  spoolDir?: string
  /** Recipients needing different milters in one message: defer them (4xx) or run the union. */
  mixedRecipients?: MixedRecipients
}

/** How a step ended: the milter's verdict, or a failure's error code. */
export type StepResult = Verdict | { kind: 'failed'; code: string }

/** One step of one milter, as it ended. */
export interface Step {
  milter: string
  /** The endpoint its session is on (its configured socket(s) when it has none). */
  endpoint: string
  stage: Stage
  result: StepResult
  /** Milliseconds waited for it; undefined when nothing was waited for (it could not be opened). */
  ms: number | undefined
}

const CONTINUE: Outcome = { action: 'continue' }

/** The milters of one SMTP connection. */
export class MilterChain {
  private readonly slots: Slot[]
  private readonly replayed = new Replay()
  /** Rule milters taking part in the current message (undefined until the first RCPT). */
  private messageSet: Set<Slot> | undefined
  private messageDiscarded = false
  /** The wait just measured for a milter, until its verdict or failure takes it (onStep). */
  private readonly lastWait = new Map<Slot, number>()
  private readonly open: (def: MilterDef) => Promise<MilterSession>
  private readonly reports = new MilterReports()
  /** The endpoint each milter's current session is on (a milter may list several). */
  private readonly endpoints = new Map<string, string>()
  /**
   * Recipients of the current message a milter is left out for (skip_recipient_domains),
   * reported once the recipients are final (DATA, or the end of the message): with
   * mixed_recipients = union the milter may yet join the message, and then it is shown them.
   */
  private readonly rcptSkips = new Map<Slot, Array<{ rcpt: string; reason: string }>>()

  constructor(private readonly opts: ChainOptions) {
    this.slots = opts.milters.map((def) => new Slot(def))
    this.open = opts.open ?? openMilter
  }

  // ---- SMTP stages ---------------------------------------------------------

  /**
   * Opens every milter that applies to every message of the connection (in
   * parallel) and reports CONNECT (in order). A milter whose client
   * conditions match is never contacted on this connection; one with
   * recipient rules or message conditions is contacted when first needed.
   */
  async connect(
    hostname: string,
    addr: ConnectAddress,
    macros?: MacroLookup,
    client?: ClientFacts,
  ): Promise<Outcome> {
    this.replayed.connect(hostname, addr, macros)
    for (const slot of this.slots) {
      const why = client && clientSkip(slot.def.skip, client)
      if (why === undefined) continue
      slot.state = { kind: 'skipped', reason: why }
      this.skip(slot, 'connect', why)
    }
    await Promise.all(this.slots.filter((s) => s.eager).map((s) => this.ensureOpen(s, 'connect')))
    return this.each('connect', (s) => s.connect(hostname, addr, macros))
  }

  /** HELO/EHLO (again after STARTTLS). */
  helo(helo: string, macros?: MacroLookup): Promise<Outcome> {
    this.replayed.helo(helo, macros)
    this.newMessage()
    return this.each('helo', (s) => s.helo(helo, macros))
  }

  /**
   * MAIL FROM with its ESMTP arguments. Message conditions decide which
   * milters sit this message out. A milter not open yet (message conditions,
   * or failed on an earlier message with failure_scope = message) is opened
   * first, with CONNECT and HELO replayed; a refusal there is answered here.
   */
  async mail(
    args: readonly string[],
    macros?: MacroLookup,
    facts?: MessageFacts,
  ): Promise<Outcome> {
    this.newMessage()
    this.replayed.mail(args, macros)
    for (const slot of this.slots) {
      const st = slot.state
      // left out of the connection: each message's report says so (the first has it from CONNECT)
      if (st.kind === 'skipped' && !this.reports.has(slot.def))
        this.reports.skipped(slot.def, 'connect', st.reason)
      if (!facts || st.kind === 'done' || st.kind === 'skipped') continue
      slot.skipped = messageSkip(slot.def.skip, facts)
      if (slot.skipped !== undefined) this.skip(slot, 'mail', slot.skipped)
    }
    for (const slot of this.slots) {
      if (slot.lazy || slot.skipped !== undefined || slot.state.kind !== 'idle') continue
      await this.reconnect(slot, 'mail')
    }
    return this.each('mail', (s) => s.mail(args, macros))
  }

  /**
   * RCPT TO: a reject or tempfail refuses this recipient only. Milters
   * enabled by recipient rules join the message at the first matching
   * recipient (CONNECT, HELO and MAIL replayed with their macros). Every
   * recipient of a message must need the same milters: with the `defer`
   * policy a recipient needing another set gets 452 4.5.3 (the client sends
   * it in a new transaction); with `union` the milters are added, and a
   * milter in the message is shown every recipient, skip_recipient_domains
   * or not (logged as such, not as a skip).
   */
  async rcpt(
    args: readonly string[],
    macros?: MacroLookup,
    facts?: RecipientFacts,
  ): Promise<Outcome> {
    const skips = new Map<Slot, string>()
    for (const slot of this.slots) {
      const why =
        slot.lazy && slot.skipped === undefined && recipientSkip(slot.def.skip, facts?.domain ?? '')
      if (why) skips.set(slot, why)
    }
    const wanted = new Set(
      this.slots.filter(
        (s) =>
          s.lazy &&
          s.skipped === undefined &&
          s.state.kind !== 'done' &&
          s.state.kind !== 'skipped' &&
          enabledFor(s.def, facts),
      ),
    )
    const before = this.messageSet
    const r = route(wanted, before, this.opts.mixedRecipients ?? 'defer')
    // a deferred recipient is no part of this message: nothing skipped for it here
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
    if (o.action !== 'continue' && o.action !== 'discard') {
      this.undo(r.join, before)
      return o
    }
    this.replayed.rcpt(args, macros)
    const rcpt = args[0] ?? ''
    // a milter joining now was told the earlier recipients again, skipped ones included
    for (const slot of r.join) {
      for (const earlier of this.rcptSkips.get(slot) ?? []) this.shownAnyway(slot, earlier)
      this.rcptSkips.delete(slot)
    }
    for (const [slot, reason] of skips) {
      if (r.set.has(slot)) this.shownAnyway(slot, { rcpt, reason })
      else this.rcptSkips.set(slot, [...(this.rcptSkips.get(slot) ?? []), { rcpt, reason }])
    }
    return o
  }

  /** DATA: the recipients are final, so are their skips. */
  data(macros?: MacroLookup): Promise<Outcome> {
    this.reportRcptSkips()
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
      if (!slot.shadow) {
        // once decided, only shadow milters still see the message
        if (result.outcome.action !== 'continue') continue
        if (st.kind === 'failed' && st.quarantine) result.quarantine.push(st.quarantine)
        if (this.messageDiscarded) continue
        if (st.kind === 'failed' && st.outcome.action !== 'continue') {
          result.outcome = st.outcome
          continue
        }
      }
      const s = slot.session
      if (!s?.inMessage) continue
      const tooLarge = input.size === undefined ? undefined : sizeSkip(slot.def.skip, input.size)
      if (tooLarge !== undefined) {
        this.skip(slot, 'eom', tooLarge)
        this.abortOne(slot)
        continue
      }
      // a shadow milter's outcome is always continue (shadow.ts): it never decides
      const outcome = await this.contentOf(slot, s, input, result)
      if (outcome.action === 'continue') continue
      result.outcome = outcome
      if (outcome.action === 'discard') this.messageDiscarded = true
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
   * The endpoint a milter's session is on, or its configured socket(s)
   * before it has one; undefined for a name that is no milter of the chain.
   */
  endpointOf(milter: string): string | undefined {
    return this.endpoints.get(milter) ?? this.slots.find((s) => s.name === milter)?.def.socketText
  }

  /**
   * What each milter did since the last call (stages, verdict, edits, time
   * spent waiting for it): one entry per milter consulted, in chain order.
   */
  takeReports(): MilterReport[] {
    this.reportRcptSkips()
    return this.reports.take(this.slots.map((s) => s.def))
  }

  /** ABORT to every milter inside a message (RSET, rejected transaction, ...). */
  abort(): void {
    this.newMessage()
    for (const slot of this.slots) this.abortOne(slot)
  }

  private abortOne(slot: Slot): void {
    try {
      slot.session?.abort()
    } catch (e) {
      this.failed(slot, 'abort', e)
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
    this.reportRcptSkips()
    for (const slot of this.slots) slot.newMessage()
    this.messageDiscarded = false
    this.messageSet = undefined
    this.replayed.newMessage()
  }

  /** Does this milter take part in this stage of the current message? */
  private participates(slot: Slot, stage: Stage): boolean {
    const scope = SCOPE[stage]
    if (slot.skipped !== undefined && scope === 'message') return false
    if (!slot.lazy) return true
    // a rule milter: told of the connection once open, of a message from its first recipient (activate)
    if (scope !== 'message') return slot.session !== undefined
    if (stage === 'mail') return false
    return this.messageSet?.has(slot) ?? false
  }

  /**
   * Runs one step on each milter in order; the first non-continue outcome
   * wins and later milters are not asked, except shadow milters, which see
   * every command the client sent (their answers are never the outcome).
   */
  private async each(stage: Stage, run: (s: MilterSession) => Promise<Verdict>): Promise<Outcome> {
    let decided: Outcome | undefined
    for (const slot of this.slots) {
      if (!this.participates(slot, stage)) continue
      // a discard at an earlier stage ends the message for enforcing milters (helo() and mail() reset it)
      if (!slot.shadow && (decided !== undefined || this.messageDiscarded)) continue
      const outcome = await this.ask(slot, stage, run)
      if (outcome.action === 'continue') continue
      if (outcome.action === 'discard') this.messageDiscarded = true
      decided = outcome
    }
    return decided ?? CONTINUE
  }

  /** One milter's answer at a stage, or what its state (failed, refused) stands for. */
  private async ask(
    slot: Slot,
    stage: Stage,
    run: (s: MilterSession) => Promise<Verdict>,
  ): Promise<Outcome> {
    const st = slot.state
    if (st.kind === 'failed') return st.outcome
    if (st.kind === 'refused')
      return !slot.lazy && stage !== 'unknown' ? laterRefusal(st.outcome) : CONTINUE
    if (st.kind !== 'open') return CONTINUE
    try {
      return this.verdict(slot, stage, await this.timed(slot, stage, run(st.session)))
    } catch (e) {
      return this.failed(slot, stage, e)
    }
  }

  /** Awaits a milter's answer, counting the stage and the time spent waiting. */
  private async timed<T>(slot: Slot, stage: Stage, pending: Promise<T>): Promise<T> {
    const started = performance.now()
    try {
      return await pending
    } finally {
      const ms = performance.now() - started
      this.reports.waited(slot.def, stage, ms)
      if (this.opts.onStep) this.lastWait.set(slot, ms)
    }
  }

  private step(slot: Slot, stage: Stage, result: StepResult): void {
    if (!this.opts.onStep) return
    const ms = this.lastWait.get(slot)
    this.lastWait.delete(slot)
    const endpoint = this.endpointOf(slot.name) ?? slot.def.socketText
    this.opts.onStep({ milter: slot.name, endpoint, stage, result, ms })
  }

  /** The outcome of a verdict, with its effect on the milter (verdicts.ts, shadow.ts). */
  private verdict(slot: Slot, stage: Stage, v: Verdict): Outcome {
    this.opts.onVerdict?.(slot.name, stage, v)
    this.step(slot, stage, v)
    this.reports.verdict(slot.def, stage, v)
    const o = outcomeOf(stage, v, slot.name)
    return this.apply(slot, stage, verdictEffect(slot.def, stage, v, o))
  }

  /** A failure: the milter's default_action, or nothing for a shadow milter (failure.ts). */
  private failed(slot: Slot, stage: Stage, e: unknown): Outcome {
    const f = failureOf(slot.def, e, this.endpointOf(slot.name) ?? slot.def.socketText)
    this.step(slot, stage, { kind: 'failed', code: f.error.code })
    this.reports.failure(slot.def, stage, f.error.code, f.action)
    return this.apply(slot, stage, f, { error: f.error, defaultAction: f.action })
  }

  /** Logs an effect's event and moves the milter to its next state. */
  private apply(
    slot: Slot,
    stage: Stage,
    fx: SlotEffect,
    failure?: ChainEvent['failure'],
  ): Outcome {
    if (fx.event) this.event(fx.event.level, slot, stage, fx.event.message, fx.event.code, failure)
    if (fx.next) slot.leave(fx.next)
    return fx.outcome
  }

  private async ensureOpen(slot: Slot, stage: Stage): Promise<void> {
    if (slot.state.kind !== 'idle') return
    this.endpoints.delete(slot.name)
    try {
      const session = await this.open(slot.def)
      slot.state = { kind: 'open', session }
      const endpoint = this.opts.endpointOf?.(session)
      if (endpoint !== undefined) {
        this.reports.endpoint(slot.def, endpoint)
        this.endpoints.set(slot.name, endpoint)
      }
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
  private async reconnect(slot: Slot, stage: Stage): Promise<Outcome> {
    await this.ensureOpen(slot, stage)
    const o = await replaySteps(this.replayed.client, (r) => this.replay(slot, r))
    if (o.action !== 'continue') return o
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
    return replaySteps(this.replayed.message, (r) => this.replay(slot, r))
  }

  /** A replayed step: its refusal applies to the recipient (or MAIL) that brought the milter in. */
  private async replay(slot: Slot, r: ReplayStep): Promise<Outcome> {
    const s = slot.session
    if (!s) return CONTINUE
    let o: Outcome
    try {
      o = this.verdict(slot, r.stage, await this.timed(slot, r.stage, r.run(s)))
    } catch (e) {
      o = this.failed(slot, r.stage, e)
    }
    return laterRefusal(o)
  }

  private undo(activated: readonly Slot[], before: Set<Slot> | undefined): void {
    this.messageSet = before
    for (const slot of activated) this.abortOne(slot)
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
        runMilterContent(
          slot.name,
          s,
          input,
          result,
          {
            spoolDir: this.opts.spoolDir,
            headerFolds: slot.def.headerFolds,
            apply: !slot.shadow,
            limits: slot.def.limits,
          },
          (v) => outcomeOf('eom', v, slot.name).action === 'continue',
        ),
      )
      if (answer.kind === 'edited') {
        if (answer.edits) this.reports.edits(slot.def, answer.edits)
        if (!slot.shadow) {
          if (answer.quarantine) result.quarantine.push(answer.quarantine)
        } else {
          const would = shadowEdits(answer.edits, answer.quarantine)
          if (would !== undefined) this.event('notice', slot, 'eom', would)
        }
      }
      return this.verdict(slot, 'eom', answer.verdict)
    } catch (e) {
      const outcome = this.failed(slot, 'eom', e)
      const st = slot.state
      if (st.kind === 'failed' && st.quarantine) result.quarantine.push(st.quarantine)
      return outcome
    }
  }

  /** A milter left out by a skip_* condition. */
  private skip(slot: Slot, stage: Stage, reason: string): void {
    this.reports.skipped(slot.def, stage, reason)
    this.opts.onSkip?.(slot.name, stage, reason)
  }

  /** The recipient skips of the message so far, each reason once per milter. */
  private reportRcptSkips(): void {
    for (const [slot, list] of this.rcptSkips)
      for (const reason of new Set(list.map((x) => x.reason))) this.skip(slot, 'rcpt', reason)
    this.rcptSkips.clear()
  }

  /** A recipient skip_recipient_domains lists, shown to the milter all the same (mixed_recipients = union). */
  private shownAnyway(slot: Slot, x: { rcpt: string; reason: string }): void {
    this.event(
      'notice',
      slot,
      'rcpt',
      `${x.rcpt} shown although skip_recipient_domains lists it (${x.reason}): with mixed_recipients = union a milter in the message sees every recipient`,
    )
  }

  private event(
    level: ChainEvent['level'],
    slot: Slot,
    stage: Stage,
    message: string,
    code?: string,
    failure?: ChainEvent['failure'],
  ): void {
    const e: ChainEvent = { level, milter: slot.name, stage, message }
    if (code !== undefined) e.code = code
    if (failure !== undefined) e.failure = failure
    this.opts.onEvent?.(e)
  }
}
