/**
 * MilterChain: the milters of one SMTP connection, consulted in order
 * (Postfix semantics, milter-protocol.md §5.7). Per stage the first outcome other than
 * "continue" wins and later milters do not see that command; in the
 * content phase each milter sees the message as the previous ones left it.
 * A milter that cannot be used gets its default_action, sticky for the
 * rest of the connection. Knows nothing of Haraka.
 */
import type { DefaultAction, MilterDef } from './config'
import {
  MilterProtocolError,
  MilterStateError,
  MilterUnavailableError,
  isMilterError,
  type MilterError,
} from './errors'
import { BodySpool } from './body-spool'
import { applyEnvelopeEdits, EnvelopeEditError, type Envelope } from './message/envelope'
import { applyHeaderEdits, HeaderEditError, type HeaderField } from './message/headers'
import { sortModifications } from './message/modifications'
import type { ConnectAddress } from './protocol/commands'
import { Proto } from './protocol/constants'
import { REPLIES, type Outcome } from './policy/replies'
import { sendContent } from './session/content'
import type { MacroLookup } from './session/macros'
import { openMilter } from './pool'
import type { MilterSession, Verdict } from './session/session'

export type { Outcome } from './policy/replies'

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
  /** Opens a negotiated session (injected so tests and the pool can replace it). */
  open?: (def: MilterDef) => Promise<MilterSession>
  /** Called when a connection ends: release (reuse) or quit. */
  release?: (def: MilterDef, session: MilterSession) => void
  onEvent?: (e: ChainEvent) => void
  /** Directory for spooled replacement bodies. */
  spoolDir?: string
  /** Recipients needing different milters in one message: defer them (4xx) or run the union. */
  mixedRecipients?: 'defer' | 'union'
}

/** What the recipient rules of a milter look at. */
export interface RecipientFacts {
  destinationChannel: string
  optin: string | undefined
}

/** The message as the content phase starts. */
export interface MessageInput {
  headers: HeaderField[]
  envelope: Envelope
  /** The original body, unstuffed, CRLF; may be called once per milter. */
  body: () => AsyncIterable<Buffer>
  eohMacros?: MacroLookup
  eomMacros?: MacroLookup
}

/** The result of the content phase: outcome plus the edited message. */
export interface MessageResult {
  outcome: Outcome
  headers: HeaderField[]
  headersChanged: boolean
  envelope: Envelope
  envelopeChanged: boolean
  /** The replacement body, when a milter replaced it; the caller disposes of it. */
  body?: BodySpool
  /** QUARANTINE reasons (and failed milters with default_action quarantine). */
  quarantine: string[]
  /** Which milters modified what, for logs and results. */
  edits: Array<{ milter: string; count: number; bodyReplaced: boolean }>
}

/** Per-milter state in this connection. */
interface Slot {
  def: MilterDef
  /** Enabled by recipient rules: contacted only from the first matching RCPT of a message. */
  lazy: boolean
  session: MilterSession | undefined
  /** Not consulted again on this connection (accepted it, or failed with failure_scope = session). */
  retired: boolean
  /** The default_action outcome of a failure (tempfail, reject, shutdown), in force for its scope. */
  failure: Outcome | undefined
  /** Failed with default_action quarantine: messages are quarantined (for the failure's scope). */
  quarantineOnFailure: string | undefined
  /**
   * The milter refused the client at (replayed) CONNECT or HELO. For a milter
   * without rules every later MAIL gets it; for a rule milter every recipient
   * needing it does.
   */
  refusal: Outcome | undefined
  /** Failed with failure_scope = message: opened again (CONNECT, HELO replayed) for the next message. */
  reopen: boolean
}

/** The outcome of a failure under a milter's default_action. */
function failureOutcome(action: DefaultAction, milter: string): Outcome {
  switch (action) {
    case 'accept':
    case 'quarantine':
      return { action: 'continue' }
    case 'tempfail':
      return { action: 'tempfail', reply: REPLIES.tempfail, milter, cause: 'failure' }
    case 'reject':
      return { action: 'reject', reply: REPLIES.failReject, milter, cause: 'failure' }
    case 'shutdown':
      return { action: 'shutdown', reply: REPLIES.failShutdown, milter, cause: 'failure' }
  }
}

/** Is a rule milter enabled for this recipient? */
export function enabledFor(def: MilterDef, facts: RecipientFacts | undefined): boolean {
  if (!facts) return false
  if (def.destinationChannels.includes(facts.destinationChannel)) return true
  return facts.optin !== undefined && def.optin.includes(facts.optin)
}

function sameSet<T>(a: ReadonlySet<T>, b: ReadonlySet<T>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x))
}

/** Facts of the connection, kept to replay CONNECT/HELO to late milters. */
interface ConnectFacts {
  hostname: string
  addr: ConnectAddress
  macros: MacroLookup | undefined
}

/** The milters of one SMTP connection. */
export class MilterChain {
  private readonly slots: Slot[]
  private connectFacts: ConnectFacts | undefined
  private heloFacts: { helo: string; macros: MacroLookup | undefined } | undefined
  private mailFacts: { args: readonly string[]; macros: MacroLookup | undefined } | undefined
  /** Rule milters taking part in the current message (undefined until the first RCPT). */
  private messageSet: Set<Slot> | undefined
  private acceptedRcpts: Array<{ args: readonly string[]; macros: MacroLookup | undefined }> = []
  private messageDiscarded = false
  private readonly open: (def: MilterDef) => Promise<MilterSession>

  constructor(private readonly opts: ChainOptions) {
    this.slots = opts.milters.map((def) => ({
      def,
      lazy: def.destinationChannels.length > 0 || def.optin.length > 0,
      session: undefined,
      retired: false,
      failure: undefined,
      quarantineOnFailure: undefined,
      refusal: undefined,
      reopen: false,
    }))
    this.open = opts.open ?? openMilter
  }

  /** Opens every milter (in parallel) and reports CONNECT (in order). */
  async connect(hostname: string, addr: ConnectAddress, macros?: MacroLookup): Promise<Outcome> {
    this.connectFacts = { hostname, addr, macros }
    await Promise.all(
      this.slots.filter((s) => !s.lazy).map((slot) => this.ensureOpen(slot, 'connect')),
    )
    return this.each('connect', (s) => s.connect(hostname, addr, macros))
  }

  /** HELO/EHLO (again after STARTTLS). */
  helo(helo: string, macros?: MacroLookup): Promise<Outcome> {
    this.heloFacts = { helo, macros }
    this.resetMessage()
    return this.each('helo', (s) => s.helo(helo, macros))
  }

  /**
   * MAIL FROM with its ESMTP arguments. A milter that failed on an earlier
   * message (failure_scope = message) is opened again first, with CONNECT and
   * HELO replayed.
   */
  async mail(args: readonly string[], macros?: MacroLookup): Promise<Outcome> {
    this.resetMessage()
    this.mailFacts = { args, macros }
    for (const slot of this.slots) {
      if (slot.lazy || !slot.reopen) continue
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
    let activate: Slot[]
    if ((this.opts.mixedRecipients ?? 'defer') === 'defer') {
      if (before !== undefined && !sameSet(wanted, before)) {
        return {
          action: 'tempfail',
          reply: REPLIES.defer,
          milter: 'recipient rules',
          cause: 'verdict',
        }
      }
      activate = before === undefined ? [...wanted] : []
    } else {
      activate = [...wanted].filter((s) => !before?.has(s))
    }
    this.messageSet = new Set([...(before ?? []), ...wanted])
    for (const slot of activate) {
      const o = await this.activate(slot)
      if (o.action !== 'continue') {
        this.undo(activate, before)
        return o
      }
    }
    const o = await this.each('rcpt', (s) => s.rcpt(args, macros))
    if (o.action === 'continue' || o.action === 'discard') this.acceptedRcpts.push({ args, macros })
    else this.undo(activate, before)
    return o
  }

  /** Rule milters of the current message, for logs and tests. */
  get messageMilters(): string[] {
    return this.slots.filter((s) => !s.lazy || this.messageSet?.has(s)).map((s) => s.def.name)
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

  /** Brings a rule milter into the current message: open, CONNECT, HELO (once), MAIL, earlier RCPTs. */
  private async activate(slot: Slot): Promise<Outcome> {
    if (slot.refusal) return slot.refusal
    if (!slot.session && !slot.retired && !slot.failure) {
      const o = await this.reconnect(slot, 'rcpt')
      if (o.action !== 'continue') return o
    }
    if (slot.failure) return slot.failure
    const s = slot.session
    if (!s || slot.retired) return { action: 'continue' }
    const mf = this.mailFacts
    if (mf) {
      const o = await this.replay(slot, 'mail', () => s.mail(mf.args, mf.macros))
      if (o.action !== 'continue') return o
    }
    for (const r of this.acceptedRcpts) {
      // union policy: the milter learns of recipients already accepted; it can no longer refuse them
      await this.replay(slot, 'rcpt', () => s.rcpt(r.args, r.macros))
    }
    return { action: 'continue' }
  }

  /**
   * Opens a milter that joins late (a rule milter) or again after a failure,
   * and replays CONNECT and HELO with the macros they had. A refusal there is
   * kept as the milter's refusal of the client.
   */
  private async reconnect(slot: Slot, stage: string): Promise<Outcome> {
    slot.reopen = false
    await this.ensureOpen(slot, stage)
    const s = slot.session
    if (!s) return slot.failure ?? { action: 'continue' }
    const cf = this.connectFacts
    if (cf) {
      const o = await this.replay(slot, 'connect', () => s.connect(cf.hostname, cf.addr, cf.macros))
      if (o.action !== 'continue') return o.action === 'discard' ? o : this.refuse(slot, o)
    }
    const hf = this.heloFacts
    if (hf && slot.session) {
      const h = await this.replay(slot, 'helo', () => s.helo(hf.helo, hf.macros))
      if (h.action !== 'continue') return h.action === 'discard' ? h : this.refuse(slot, h)
    }
    return { action: 'continue' }
  }

  /** Keeps a verdict refusal of the client; a failure's outcome stays the failure's. */
  private refuse(slot: Slot, o: Outcome): Outcome {
    if (o.action !== 'continue' && o.action !== 'discard' && o.cause === 'verdict') slot.refusal = o
    return o
  }

  /** A replayed step: its refusal applies to the recipient that brought the milter in. */
  private async replay(slot: Slot, stage: string, run: () => Promise<Verdict>): Promise<Outcome> {
    let o: Outcome
    try {
      o = this.fromVerdict(slot, stage, await run())
    } catch (e) {
      o = this.failed(slot, stage, e)
    }
    if (o.action === 'reject' && o.cause === 'verdict' && o.reply.code === 554) {
      return { ...o, reply: REPLIES.reject }
    }
    return o
  }

  private resetMessage(): void {
    for (const slot of this.slots) {
      if (slot.def.failureScope !== 'message' || !slot.reopen) continue
      slot.failure = undefined
      slot.quarantineOnFailure = undefined
    }
    this.messageDiscarded = false
    this.messageSet = undefined
    this.acceptedRcpts = []
    this.mailFacts = undefined
  }

  /** Does this milter take part in this stage of the current message? */
  private participates(slot: Slot, stage: string): boolean {
    if (!slot.lazy) return true
    if (stage === 'connect' || stage === 'helo' || stage === 'unknown')
      return slot.session !== undefined
    if (stage === 'mail') return false
    return this.messageSet?.has(slot) ?? false
  }

  /** DATA. */
  data(macros?: MacroLookup): Promise<Outcome> {
    return this.each('data', (s) => s.data(macros))
  }

  /** An SMTP command the MTA did not recognise. */
  unknown(line: string): Promise<Outcome> {
    return this.each('unknown', (s) => s.unknown(line))
  }

  /** True once a milter discarded the current message. */
  get discarded(): boolean {
    return this.messageDiscarded
  }

  /** ABORT to every milter inside a message (RSET, rejected transaction, ...). */
  abort(): void {
    this.resetMessage()
    for (const slot of this.slots) {
      const s = slot.session
      if (!s || slot.retired) continue
      try {
        s.abort()
      } catch (e) {
        this.failed(slot, 'abort', e)
      }
    }
  }

  /** End of the SMTP session: QUIT (or release for reuse) every milter. */
  close(): void {
    for (const slot of this.slots) {
      const s = slot.session
      slot.session = undefined
      if (!s) continue
      if (this.opts.release) this.opts.release(slot.def, s)
      else s.quit()
    }
  }

  /**
   * The content phase, milter by milter: headers, EOH, body, EOB; edits are
   * validated as a whole (all or none per milter) and the next milter sees
   * the edited message.
   */
  async message(input: MessageInput): Promise<MessageResult> {
    const result: MessageResult = {
      outcome: { action: 'continue' },
      headers: input.headers,
      headersChanged: false,
      envelope: input.envelope,
      envelopeChanged: false,
      quarantine: [],
      edits: [],
    }
    for (const slot of this.slots) {
      if (!this.participates(slot, 'eom')) continue
      if (slot.quarantineOnFailure) result.quarantine.push(slot.quarantineOnFailure)
      if (this.messageDiscarded) break
      if (slot.failure) {
        result.outcome = slot.failure
        break
      }
      const s = slot.session
      if (!s || slot.retired || !s.inMessage) continue
      const outcome = await this.messageOne(slot, s, input, result)
      if (outcome.action !== 'continue') {
        result.outcome = outcome
        if (outcome.action === 'discard') this.messageDiscarded = true
        break
      }
    }
    if (result.outcome.action !== 'continue') this.abort()
    return result
  }

  private async messageOne(
    slot: Slot,
    s: MilterSession,
    input: MessageInput,
    result: MessageResult,
  ): Promise<Outcome> {
    const spool = new BodySpool(this.opts.spoolDir)
    const leadspc = (s.negotiated.protocol & Proto.HDR_LEADSPC) !== 0
    const previousBody = result.body
    try {
      const eom = await sendContent(s, {
        headers: result.headers
          .filter((h) => !h.hidden)
          .map((h) => ({ name: h.name, value: Buffer.from(h.value, 'utf8') })),
        body: previousBody ? previousBody.chunks() : input.body(),
        ...(input.eohMacros ? { eohMacros: input.eohMacros } : {}),
        ...(input.eomMacros ? { eomMacros: input.eomMacros } : {}),
        onReplaceBody: (chunk) => spool.write(chunk),
      })
      const outcome = this.fromVerdict(slot, 'eom', eom.verdict)
      if (outcome.action !== 'continue') {
        await spool.dispose()
        return outcome
      }
      // Validate every edit before applying any (all or none).
      const sorted = sortModifications(eom.modifications)
      const headers = applyHeaderEdits(
        result.headers,
        sorted.headerEdits,
        leadspc,
        slot.def.headerFolds,
      )
      const envelope = applyEnvelopeEdits(result.envelope, sorted.envelopeEdits)
      result.headers = headers
      result.headersChanged ||= sorted.headerEdits.length > 0
      result.envelope = envelope
      result.envelopeChanged ||= sorted.envelopeEdits.length > 0
      if (sorted.quarantine !== undefined)
        result.quarantine.push(`${slot.def.name}: ${sorted.quarantine}`)
      if (eom.bodyReplaced) {
        await spool.finish()
        await previousBody?.dispose()
        result.body = spool
      } else {
        await spool.dispose()
      }
      const count = eom.modifications.length
      if (count > 0 || eom.bodyReplaced) {
        result.edits.push({ milter: slot.def.name, count, bodyReplaced: eom.bodyReplaced })
      }
      return outcome
    } catch (e) {
      await spool.dispose()
      const failure = this.failed(slot, 'eom', e)
      if (slot.quarantineOnFailure) result.quarantine.push(slot.quarantineOnFailure)
      return failure
    }
  }

  /** Runs one step on each milter in order; the first non-continue outcome wins. */
  private async each(stage: string, run: (s: MilterSession) => Promise<Verdict>): Promise<Outcome> {
    for (const slot of this.slots) {
      if (this.messageDiscarded) break // helo() and mail() reset it first
      if (!this.participates(slot, stage)) continue
      if (slot.failure) return slot.failure
      if (slot.refusal && !slot.lazy && stage !== 'connect' && stage !== 'unknown')
        return slot.refusal
      if (slot.retired || !slot.session) continue
      let outcome: Outcome
      try {
        outcome = this.fromVerdict(slot, stage, await run(slot.session))
      } catch (e) {
        outcome = this.failed(slot, stage, e)
      }
      if (outcome.action === 'discard') this.messageDiscarded = true
      if (outcome.action !== 'continue') return outcome
    }
    return { action: 'continue' }
  }

  private async ensureOpen(slot: Slot, stage: string): Promise<void> {
    if (slot.session || slot.retired || slot.failure) return
    try {
      slot.session = await this.open(slot.def)
      const n = slot.session.negotiated
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

  /** Maps a verdict to the chain outcome, and retires milters that are done. */
  private fromVerdict(slot: Slot, stage: string, v: Verdict): Outcome {
    const connLevel = stage === 'connect' || stage === 'helo'
    switch (v.kind) {
      case 'continue':
      case 'skip':
        return { action: 'continue' }
      case 'accept':
        if (connLevel) slot.retired = true
        this.event(
          'info',
          slot,
          stage,
          connLevel ? 'accepted the connection' : 'accepted the message',
        )
        return { action: 'continue' }
      case 'discard':
        if (connLevel) return { action: 'continue' }
        this.event('info', slot, stage, 'discard')
        return { action: 'discard', milter: slot.def.name }
      case 'reject':
      case 'tempfail':
      case 'replycode': {
        const o = this.refusalOf(slot, stage, v)
        if (connLevel) {
          // the milter is done with this connection; its refusal holds for every later MAIL
          slot.retired = true
          if (o.action !== 'shutdown') slot.refusal = o
        }
        return o
      }
      case 'shutdown':
      case 'conn_fail':
        slot.retired = true
        this.event(
          'warn',
          slot,
          stage,
          `${v.kind === 'shutdown' ? 'SMFIR_SHUTDOWN' : 'SMFIR_CONN_FAIL'}: closing the SMTP session`,
        )
        return {
          action: 'shutdown',
          reply: REPLIES.shutdown,
          milter: slot.def.name,
          cause: 'verdict',
        }
    }
  }

  /** A reject, tempfail or reply code as the outcome to answer with. */
  private refusalOf(slot: Slot, stage: string, v: Verdict): Outcome {
    const milter = slot.def.name
    if (v.kind === 'replycode') {
      const action = v.reply.code === 421 ? 'shutdown' : v.reply.code >= 500 ? 'reject' : 'tempfail'
      return { action, reply: v.reply, milter, cause: 'verdict' }
    }
    if (v.kind === 'tempfail') {
      return { action: 'tempfail', reply: REPLIES.tempfail, milter, cause: 'verdict' }
    }
    const reply =
      stage === 'eom'
        ? REPLIES.rejectEom
        : stage === 'connect'
          ? REPLIES.rejectConnect
          : REPLIES.reject
    return { action: 'reject', reply, milter, cause: 'verdict' }
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
        ? new MilterProtocolError(`${slot.def.name}: ${e.message}`, { cause: e })
        : new MilterStateError(`unexpected: ${String(e)}`, { cause: e })
    const action: DefaultAction = slot.def.defaultAction
    // A milter marked down was logged once when it was; each session notes it quietly.
    const level = err instanceof MilterUnavailableError ? 'info' : 'error'
    this.event(level, slot, stage, `${err.message}; default_action=${action}`, err.code)
    slot.session?.destroy()
    slot.session = undefined
    const name = slot.def.name
    const outcome = failureOutcome(action, name)
    if (action === 'shutdown' || slot.def.failureScope === 'session') slot.retired = true
    else slot.reopen = true
    if (action === 'quarantine') slot.quarantineOnFailure = `${name}: milter failed (${err.code})`
    if (outcome.action !== 'continue') slot.failure = outcome
    return outcome
  }

  private event(
    level: ChainEvent['level'],
    slot: Slot,
    stage: string,
    message: string,
    code?: string,
  ): void {
    const e: ChainEvent = { level, milter: slot.def.name, stage, message }
    if (code !== undefined) e.code = code
    this.opts.onEvent?.(e)
  }
}
