/**
 * MilterChain: the milters of one SMTP connection, consulted in order
 * (Postfix semantics, §5.7). Per stage the first outcome other than
 * "continue" wins and later milters do not see that command; in the
 * content phase each milter sees the message as the previous ones left it.
 * A milter that cannot be used gets its default_action, sticky for the
 * rest of the connection. Knows nothing of Haraka.
 */
import type { DefaultAction, MilterDef } from './config'
import { MilterProtocolError, MilterStateError, isMilterError, type MilterError } from './errors'
import { BodySpool } from './body-spool'
import { applyEnvelopeEdits, EnvelopeEditError, type Envelope } from './message/envelope'
import { applyHeaderEdits, HeaderEditError, type HeaderField } from './message/headers'
import { sortModifications } from './message/modifications'
import type { ConnectAddress } from './protocol/commands'
import { Proto } from './protocol/constants'
import type { SmtpReply } from './protocol/replycode'
import { sendContent } from './session/content'
import type { MacroLookup } from './session/macros'
import { openMilter } from './pool'
import type { MilterSession, Verdict } from './session/session'

/** What the chain decided for one SMTP command. */
export type Outcome =
  | { action: 'continue' }
  | {
      action: 'reject' | 'tempfail' | 'shutdown'
      reply: SmtpReply
      milter: string
      cause: 'verdict' | 'failure'
    }
  | { action: 'discard'; milter: string }

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
  /** Not consulted again on this connection (accepted or rejected it, or failed open). */
  retired: boolean
  /** Sticky outcome of a failure (tempfail, reject, shutdown). */
  sticky: Outcome | undefined
  /** Failed with default_action quarantine: messages are quarantined. */
  quarantineOnFailure: string | undefined
  /** A lazy milter that refused the client at its replayed CONNECT/HELO: every recipient needing it is refused. */
  refusal: Outcome | undefined
}

const REPLIES = {
  reject: {
    code: 550,
    enhanced: '5.7.1',
    lines: [{ enhanced: '5.7.1', text: 'Command rejected' }],
  },
  rejectConnect: {
    code: 554,
    enhanced: '5.7.1',
    lines: [{ enhanced: '5.7.1', text: 'Service refused' }],
  },
  rejectEom: {
    code: 554,
    enhanced: '5.7.1',
    lines: [{ enhanced: '5.7.1', text: 'Message rejected' }],
  },
  tempfail: {
    code: 451,
    enhanced: '4.7.1',
    lines: [{ enhanced: '4.7.1', text: 'Service unavailable - try again later' }],
  },
  failReject: {
    code: 550,
    enhanced: '5.5.0',
    lines: [{ enhanced: '5.5.0', text: 'Service unavailable' }],
  },
  shutdown: {
    code: 421,
    enhanced: '4.7.0',
    lines: [{ enhanced: '4.7.0', text: 'Server closing connection' }],
  },
  failShutdown: {
    code: 421,
    enhanced: '4.7.1',
    lines: [{ enhanced: '4.7.1', text: 'Service unavailable - try again later' }],
  },
  defer: {
    code: 452,
    enhanced: '4.5.3',
    lines: [
      {
        enhanced: '4.5.3',
        text: 'Recipient needs different filtering - send it in a separate transaction',
      },
    ],
  },
} satisfies Record<string, SmtpReply>

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
      sticky: undefined,
      quarantineOnFailure: undefined,
      refusal: undefined,
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

  /** MAIL FROM with its ESMTP arguments. */
  mail(args: readonly string[], macros?: MacroLookup): Promise<Outcome> {
    this.resetMessage()
    this.mailFacts = { args, macros }
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
    if (!slot.session && !slot.retired && !slot.sticky) {
      await this.ensureOpen(slot, 'rcpt')
      const s = slot.session as MilterSession | undefined
      const cf = this.connectFacts
      if (s && cf) {
        const o = await this.replay(slot, 'connect', () =>
          s.connect(cf.hostname, cf.addr, cf.macros),
        )
        if (o.action !== 'continue') return (slot.refusal = o)
        const hf = this.heloFacts
        if (hf) {
          const h = await this.replay(slot, 'helo', () => s.helo(hf.helo, hf.macros))
          if (h.action !== 'continue') return (slot.refusal = h)
        }
      }
    }
    if (slot.sticky) return slot.sticky
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
      if (slot.sticky) {
        result.outcome = slot.sticky
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
      if (slot.sticky) return slot.sticky
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
    if (slot.session || slot.retired || slot.sticky) return
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
        if (connLevel) slot.retired = true
        return {
          action: 'reject',
          reply:
            stage === 'eom'
              ? REPLIES.rejectEom
              : stage === 'connect'
                ? REPLIES.rejectConnect
                : REPLIES.reject,
          milter: slot.def.name,
          cause: 'verdict',
        }
      case 'tempfail':
        if (connLevel) slot.retired = true
        return {
          action: 'tempfail',
          reply: REPLIES.tempfail,
          milter: slot.def.name,
          cause: 'verdict',
        }
      case 'replycode': {
        if (connLevel) slot.retired = true
        const action =
          v.reply.code === 421 ? 'shutdown' : v.reply.code >= 500 ? 'reject' : 'tempfail'
        return { action, reply: v.reply, milter: slot.def.name, cause: 'verdict' }
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

  /** Applies the milter's default_action to an error; the result is sticky. */
  private failed(slot: Slot, stage: string, e: unknown): Outcome {
    const err: MilterError = isMilterError(e)
      ? e
      : e instanceof HeaderEditError || e instanceof EnvelopeEditError
        ? new MilterProtocolError(`${slot.def.name}: ${e.message}`, { cause: e })
        : new MilterStateError(`unexpected: ${String(e)}`, { cause: e })
    const action: DefaultAction = slot.def.defaultAction
    this.event('error', slot, stage, `${err.message}; default_action=${action}`, err.code)
    slot.session?.destroy()
    slot.session = undefined
    slot.retired = true
    const name = slot.def.name
    switch (action) {
      case 'accept':
        return { action: 'continue' }
      case 'quarantine':
        slot.quarantineOnFailure = `${name}: milter failed (${err.code})`
        return { action: 'continue' }
      case 'tempfail':
        slot.sticky = {
          action: 'tempfail',
          reply: REPLIES.tempfail,
          milter: name,
          cause: 'failure',
        }
        return slot.sticky
      case 'reject':
        slot.sticky = {
          action: 'reject',
          reply: REPLIES.failReject,
          milter: name,
          cause: 'failure',
        }
        return slot.sticky
      case 'shutdown':
        slot.sticky = {
          action: 'shutdown',
          reply: REPLIES.failShutdown,
          milter: name,
          cause: 'failure',
        }
        return slot.sticky
    }
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
