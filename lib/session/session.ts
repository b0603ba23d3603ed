/**
 * MilterSession: one milter connection as an explicit state machine.
 * One method per protocol step (connect, helo, mail, rcpt, data, header,
 * eoh, body, endOfMessage, unknown, abort, quit), each returning a typed
 * verdict. Every read is timed; any error destroys the connection and is
 * sticky. The session never sends a command out of order, because
 * libmilter silently drops those and the client would hang (milter-protocol.md §5.3).
 *
 * Why this file is longer than the others: it is the protocol's state
 * machine with one method per step (go-milter's layout), and splitting the
 * steps apart would scatter one conversation. What is not a step lives
 * beside it: state-table.ts (transitions, SKIP and QUIT_NC included), reader.ts
 * (frames, flow control, timers), writer.ts (gathered packets, one write per
 * stage, body chunks without a copy), reply-verdict.ts (what a reply means),
 * types.ts, negotiate.ts, limits.ts.
 *
 * § references are to docs/milter-protocol.md.
 */
import {
  MilterClosedError,
  MilterConnectError,
  MilterNegotiationError,
  MilterProtocolError,
  MilterSizeError,
  MilterStateError,
  MilterTimeoutError,
  isMilterError,
  type MilterError,
  type Phase,
} from '../errors'
import {
  encodeBare,
  encodeBodyHead,
  encodeConnect,
  encodeHeader,
  encodeHelo,
  encodeMacro,
  encodeMail,
  encodeOptneg,
  encodeRcpt,
  encodeUnknown,
  type Bytes,
  type ConnectAddress,
} from '../protocol/commands'
import { CHUNK_SIZE, Cmd, LEN_BYTES, MacroStage, Proto, hex } from '../protocol/constants'
import { decodeReply, type Modification, type Reply } from '../protocol/replies'
import { setImmediate as nextTurn } from 'node:timers/promises'

import {
  checkSymlist,
  EomCounter,
  eomLimits,
  optnegReplyBound,
  optnegTooLarge,
  type EomLimits,
} from './limits'
import { macroPairs, type MacroLookup } from './macros'
import { offerFor, validateOptneg, type Negotiated, type Offer } from './negotiate'
import { FrameReader } from './reader'
import { PacketWriter } from './writer'
import { describeTlsError, isTlsError } from '../transport/tls-error'
import { isModification, modificationProblem, verdictOf } from './reply-verdict'
import type { EomResult, MilterStream, SessionObserver, SessionOptions, Verdict } from './types'
import {
  FROM,
  IN_MESSAGE,
  NEGOTIATED,
  allowed,
  next,
  type Event,
  type SessionState,
  type State,
  type Step,
} from './state-table'

/** What a step sends: omitted by which NO* bit, unanswered under which NR_* bit. */
interface StepSpec {
  step: Step
  macroStage?: MacroStage | undefined
  macros?: MacroLookup | undefined
  omit: number
  noReply: number
  phase: Phase
  packet: () => Buffer
  /** Payload written after packet() as it is (a body chunk's pieces: no copy into the packet). */
  tail?: readonly Buffer[] | undefined
  label: string
}

const CONTINUE: Verdict = { kind: 'continue' }

/**
 * Replies to end of message taken in one turn of the event loop at most:
 * frames already queued resolve at once, so a long answer would otherwise
 * be read in one synchronous burst and hold every other SMTP session.
 */
const FRAMES_PER_TURN = 1024

/** A BODY packet of more pieces than this is joined into one buffer (a writev of many tiny ones costs more). */
const MAX_PARTS = 16

/** NUL cannot travel in a `str\0` field: client-supplied text loses it (milter-protocol.md §1.5). */
function noNul(v: Bytes): Bytes {
  if (typeof v === 'string') return v.includes('\0') ? v.replace(/\0/g, '') : v
  return v.includes(0) ? Buffer.from(v.toString('latin1').replace(/\0/g, ''), 'latin1') : v
}

export type {
  EomResult,
  MilterStream,
  SessionObserver,
  SessionOptions,
  Timeouts,
  Verdict,
} from './types'

/** One milter connection. Create it with MilterSession.negotiate(). */
export class MilterSession {
  /** Changed only by go(), through the table in state-table.ts. */
  private position: SessionState = NEGOTIATED
  private readonly reader: FrameReader
  private failure: MilterError | undefined
  private closedByPeer = false
  /** Kept after QUIT_NC and no reply read since: nothing yet shows the milter handled QUIT_NC. */
  private unprovenReuse = false
  private ending = false
  /** Packets gathered until the next wait for a reply. */
  private readonly writer: PacketWriter
  /** Absolute time (ms) by which the current end of message must be answered. */
  private eomDeadline: number | undefined
  /**
   * When the reply to the step in flight (other than end of message) is due
   * at the latest: SMFIR_PROGRESS re-arms the step's timeout (libmilter
   * sends it at any stage), but never past eom_timeout in all, so a milter
   * sending PROGRESS forever cannot hold the SMTP session for ever.
   */
  private stepDeadline: number | undefined

  private constructor(
    private readonly stream: MilterStream,
    private readonly opts: SessionOptions,
    /** The options in force; set by negotiate(). */
    public negotiated: Negotiated,
  ) {
    this.writer = new PacketWriter(stream)
    this.reader = new FrameReader(
      stream,
      opts.name,
      opts.maxReplyBytes,
      (e) => this.fail(e),
      (f) => this.opts.observer?.trace?.('recv', f),
    )
    stream.on('data', (chunk) => this.reader.push(chunk))
    stream.on('error', (err: NodeJS.ErrnoException) =>
      this.fail(
        isTlsError(err)
          ? // an alert after the handshake (TLS 1.3 certificate_required): a TLS connect failure
            new MilterConnectError(
              `${this.opts.name}: TLS with the milter failed: ${describeTlsError(err)}`,
              {
                cause: err,
              },
            )
          : new MilterClosedError(`${this.opts.name}: ${err.message}`, { cause: err }),
      ),
    )
    stream.on('close', () => {
      this.closedByPeer = true
      if (!this.ending)
        this.fail(new MilterClosedError(`${this.opts.name}: connection closed by the milter`))
    })
  }

  /**
   * Sends OPTNEG on an open stream and validates the answer (milter-protocol.md §4.6). The
   * connect timeout covers the exchange. A milter that hangs up instead of
   * answering usually needs actions or steps we did not offer (milter-protocol.md §4.8).
   */
  static async negotiate(stream: MilterStream, opts: SessionOptions): Promise<MilterSession> {
    const offer: Offer = offerFor(opts.version ?? 6, opts.actions)
    const placeholder: Negotiated = { ...offer, maxDataBytes: 65535, symlist: new Map(), offer }
    const s = new MilterSession(stream, { ...opts }, placeholder) // own copy: observe() changes it
    try {
      s.send(encodeOptneg(offer.version, offer.actions, offer.protocol))
      s.flush()
      s.reader.capFrames(optnegReplyBound(opts.limits), (n) =>
        optnegTooLarge(opts.name, opts.limits, n),
      )
      const frame = await s.reader.next('connect', 'SMFIC_OPTNEG', opts.timeouts.connectMs)
      s.reader.uncap()
      const reply = decodeReply(frame)
      if (reply.kind !== 'optneg') {
        throw new MilterNegotiationError(`milter answered OPTNEG with ${reply.kind}`)
      }
      for (const w of reply.symlistWarnings) opts.observer?.warn?.(`${opts.name}: ${w}`)
      checkSymlist(opts.name, reply.symlist, opts.limits)
      s.negotiated = validateOptneg(offer, reply)
      return s
    } catch (e) {
      const err = s.negotiationError(e, offer)
      s.fail(err)
      throw err
    }
  }

  private negotiationError(e: unknown, offer: Offer): MilterError {
    if (e instanceof MilterClosedError) {
      return new MilterNegotiationError(
        `${this.opts.name}: milter closed the connection during option negotiation; it probably ` +
          `requires actions or protocol steps we did not offer (offered version ${offer.version}, ` +
          `actions=${hex(offer.actions)}, protocol=${hex(offer.protocol)})`,
        { cause: e },
      )
    }
    if (isMilterError(e)) return e
    return new MilterProtocolError(`${this.opts.name}: ${String(e)}`, { cause: e })
  }

  /**
   * Who sees this session's packets and warnings from now on: a pooled
   * session serves one SMTP connection after another, each with its own log.
   */
  observe(observer: SessionObserver | undefined): void {
    if (observer) this.opts.observer = observer
    else delete this.opts.observer
  }

  /** Current state, for logs and the caller's chain logic. */
  get currentState(): State {
    return this.position.at
  }

  private get state(): State {
    return this.position.at
  }

  /** True while the milter is inside a message it has not finished with. */
  get inMessage(): boolean {
    return IN_MESSAGE.has(this.state)
  }

  /** False once the milter needs no more body: NOBODY, SKIP, or it ended the message. */
  get wantsBody(): boolean {
    if ((this.negotiated.protocol & Proto.NOBODY) !== 0) return false
    return this.position.skipping !== 'body' && this.inMessage
  }

  /** The sticky error, once the session failed. */
  get error(): MilterError | undefined {
    return this.failure
  }

  /**
   * True for a session kept after QUIT_NC that may serve a new SMTP session:
   * still open, and the milter sent nothing since (a milter that answers
   * QUIT_NC, as some implementations do, would have that answer read as the
   * reply to the next CONNECT).
   */
  get idleClean(): boolean {
    return (
      this.state === 'negotiated' && !this.failure && !this.closedByPeer && this.reader.queued === 0
    )
  }

  /**
   * True from QUIT_NC until the milter's first reply after it: a failure
   * in between suggests the milter does not handle QUIT_NC (see pool.ts).
   */
  get reuseUnproven(): boolean {
    return this.unprovenReuse
  }

  /** True when QUIT_NC may be sent (directly after a completed EOB, milter-protocol.md §5.6). */
  get reusable(): boolean {
    return (
      this.position.afterEob === true &&
      this.state === 'ready' &&
      !this.failure &&
      this.negotiated.version >= 6
    )
  }

  // ---- steps -------------------------------------------------------------

  /** SMFIC_CONNECT with its macros. Accept/reject/tempfail end the session. */
  async connect(hostname: Bytes, addr: ConnectAddress, macros?: MacroLookup): Promise<Verdict> {
    const v = await this.step({
      step: 'connect',
      macroStage: MacroStage.CONNECT,
      macros,
      omit: Proto.NOCONNECT,
      noReply: Proto.NR_CONN,
      phase: 'command',
      packet: () => encodeConnect(noNul(hostname), addr),
      label: 'SMFIC_CONNECT',
    })
    return this.afterConnectionStep(v, 'connect')
  }

  /** SMFIC_HELO; sends ABORT first when a message is open (milter-protocol.md §5.5). */
  async helo(helo: Bytes, macros?: MacroLookup): Promise<Verdict> {
    if (this.state === 'connectionDone') return CONTINUE
    if (this.inMessage) this.abort()
    if (this.state === 'messageDone') this.go({ kind: 'reset' })
    const v = await this.step({
      step: 'helo',
      macroStage: MacroStage.HELO,
      macros,
      omit: Proto.NOHELO,
      noReply: Proto.NR_HELO,
      phase: 'command',
      packet: () => encodeHelo(noNul(helo)),
      label: 'SMFIC_HELO',
    })
    return this.afterConnectionStep(v, 'helo')
  }

  /** SMFIC_MAIL: `<addr>` and one string per ESMTP parameter. */
  async mail(args: readonly Bytes[], macros?: MacroLookup): Promise<Verdict> {
    if (this.state === 'connectionDone') return CONTINUE
    const v = await this.step({
      step: 'mail',
      macroStage: MacroStage.ENVFROM,
      macros,
      omit: Proto.NOMAIL,
      noReply: Proto.NR_MAIL,
      phase: 'command',
      packet: () => encodeMail(args.map(noNul)),
      label: 'SMFIC_MAIL',
    })
    return this.afterMessageStep(v, 'mail')
  }

  /** SMFIC_RCPT: a reject, tempfail or reply code refuses this recipient only. */
  async rcpt(args: readonly Bytes[], macros?: MacroLookup): Promise<Verdict> {
    if (this.passThrough('rcpt')) return CONTINUE
    const v = await this.step({
      step: 'rcpt',
      macroStage: MacroStage.ENVRCPT,
      macros,
      omit: Proto.NORCPT,
      noReply: Proto.NR_RCPT,
      phase: 'command',
      packet: () => encodeRcpt(args.map(noNul)),
      label: 'SMFIC_RCPT',
    })
    switch (v.kind) {
      case 'continue':
        return v
      case 'reject':
      case 'tempfail':
      case 'replycode':
        // refuses this recipient only: the message goes on
        this.go({ kind: 'continued', step: 'rcpt' })
        return v
      case 'skip':
        this.go({ kind: 'skipped', step: 'rcpt' })
        return CONTINUE
      default:
        return this.afterMessageStep(v, 'rcpt')
    }
  }

  /** SMFIC_DATA (v4+; omitted for older milters). */
  async data(macros?: MacroLookup): Promise<Verdict> {
    if (this.passThrough('data')) return CONTINUE
    const v = await this.step({
      step: 'data',
      macroStage: this.negotiated.version >= 4 ? MacroStage.DATA : undefined,
      macros,
      omit: Proto.NODATA,
      noReply: Proto.NR_DATA,
      phase: 'command',
      packet: () => encodeBare(Cmd.DATA),
      label: 'SMFIC_DATA',
    })
    return this.afterMessageStep(v, 'data')
  }

  /**
   * SMFIC_HEADER. `value` is everything after the colon as it stands in the
   * message (leading space and folds included); one leading space is
   * stripped unless HDR_LEADSPC, and CRLF folds become bare LF (milter-protocol.md §8.1).
   */
  async header(name: Bytes, value: Buffer): Promise<Verdict> {
    if (this.passThrough('header')) return CONTINUE
    const v = await this.step({
      step: 'header',
      omit: Proto.NOHDRS,
      noReply: Proto.NR_HDR,
      phase: 'content',
      packet: () => encodeHeader(noNul(name), this.headerValueForMilter(value)),
      label: 'SMFIC_HEADER',
    })
    return this.afterMessageStep(v, 'header')
  }

  /** SMFIC_EOH with its macros. */
  async eoh(macros?: MacroLookup): Promise<Verdict> {
    if (this.passThrough('eoh')) return CONTINUE
    const v = await this.step({
      step: 'eoh',
      macroStage: this.negotiated.version >= 6 ? MacroStage.EOH : undefined,
      macros,
      omit: Proto.NOEOH,
      noReply: Proto.NR_EOH,
      phase: 'content',
      packet: () => encodeBare(Cmd.EOH),
      label: 'SMFIC_EOH',
    })
    return this.afterMessageStep(v, 'eoh')
  }

  /**
   * SMFIC_BODY for any amount of body (CRLF line ends), cut into packets of
   * at most 65535 bytes; never an empty packet. After SKIP, later calls
   * send nothing.
   */
  async body(bytes: Buffer): Promise<Verdict> {
    if (this.passThrough('body')) return CONTINUE
    if (bytes.length === 0) return CONTINUE
    const max = this.bodyChunkSize
    for (let off = 0; off < bytes.length; off += max) {
      const end = Math.min(off + max, bytes.length)
      const v = await this.bodyPacket([bytes.subarray(off, end)], end - off)
      if (v !== undefined) return v
    }
    return CONTINUE
  }

  /** The most body bytes one SMFIC_BODY packet carries (65535). */
  get bodyChunkSize(): number {
    return Math.min(CHUNK_SIZE, this.negotiated.maxDataBytes)
  }

  /**
   * One SMFIC_BODY packet whose payload is `parts` in order (1 to bodyChunkSize bytes in all;
   * none: nothing sent). The parts are written as they are, after the packet's 5-byte head
   * (one writev, no copy), unless there are many small ones. After SKIP, later calls send
   * nothing.
   */
  async bodyParts(parts: readonly Buffer[]): Promise<Verdict> {
    if (this.passThrough('body')) return CONTINUE
    let n = 0
    for (const p of parts) n += p.length
    if (n === 0) return CONTINUE
    if (n > this.bodyChunkSize)
      throw new RangeError(`a BODY packet of ${n} bytes exceeds ${this.bodyChunkSize}`)
    const v = await this.bodyPacket(parts.length > MAX_PARTS ? [Buffer.concat(parts, n)] : parts, n)
    return v ?? CONTINUE
  }

  /** Sends one BODY packet of `n` bytes; undefined: continue with the next one. */
  private async bodyPacket(parts: readonly Buffer[], n: number): Promise<Verdict | undefined> {
    const v = await this.step({
      step: 'body',
      omit: Proto.NOBODY,
      noReply: Proto.NR_BODY,
      phase: 'content',
      packet: () => encodeBodyHead(n),
      tail: parts,
      label: 'SMFIC_BODY',
    })
    if (v.kind === 'skip') {
      this.go({ kind: 'skipped', step: 'body' })
      return CONTINUE
    }
    if (v.kind !== 'continue') return this.afterMessageStep(v, 'body')
    if ((this.negotiated.protocol & Proto.NR_BODY) !== 0) await this.drained('SMFIC_BODY')
    return undefined
  }

  /**
   * SMFIC_BODYEOB: reads PROGRESS, modifications and the final reply.
   * REPLBODY chunks go to `onReplaceBody` when given (so a large body is
   * never held whole in memory), else they are collected.
   */
  async endOfMessage(
    macros?: MacroLookup,
    onReplaceBody?: (chunk: Buffer) => void | Promise<void>,
    limits?: EomLimits,
  ): Promise<EomResult> {
    if (this.state === 'messageDone' || this.state === 'connectionDone') {
      return { verdict: CONTINUE, modifications: [], bodyReplaced: false }
    }
    this.check('eom')
    this.sendMacros(MacroStage.EOM, macros)
    this.send(encodeBare(Cmd.BODYEOB))
    this.flush(this.opts.ackPromptly)
    const eomMs = this.opts.timeouts.eomMs
    this.eomDeadline = eomMs === undefined ? undefined : Date.now() + eomMs
    try {
      return await this.readEom(onReplaceBody, limits ?? eomLimits(this.opts.limits, undefined))
    } finally {
      this.eomDeadline = undefined
    }
  }

  /**
   * Reads the answer to end of message. Each bound (limits.ts) is checked
   * on the packet that goes over it, before anything of it is kept; the
   * session then fails with MilterLimitError.
   */
  private async readEom(
    onReplaceBody: ((chunk: Buffer) => void | Promise<void>) | undefined,
    limits: EomLimits,
  ): Promise<EomResult> {
    const mods: Modification[] = []
    const collected: Buffer[] = []
    const counter = new EomCounter(this.opts.name, limits)
    let bodyReplaced = false
    for (let frames = 1; ; frames++) {
      if (frames % FRAMES_PER_TURN === 0) await nextTurn()
      const reply = await this.readReply('content', 'SMFIC_BODYEOB')
      if (reply.kind === 'replbody') {
        this.checkModification(reply)
        this.counted(() => counter.body(reply.chunk.length))
        bodyReplaced = true
        if (onReplaceBody) await onReplaceBody(reply.chunk)
        else collected.push(reply.chunk)
        continue
      }
      if (isModification(reply)) {
        this.checkModification(reply)
        this.counted(() => counter.modification(reply))
        mods.push(reply)
        continue
      }
      const verdict = this.toVerdict(reply, 'SMFIC_BODYEOB')
      if (verdict.kind === 'shutdown' || verdict.kind === 'conn_fail') {
        this.close()
      } else {
        this.go({ kind: 'eomAnswered' })
      }
      const result: EomResult = { verdict, modifications: mods, bodyReplaced }
      if (bodyReplaced && !onReplaceBody) result.replacementBody = Buffer.concat(collected)
      return result
    }
  }

  /** SMFIC_UNKNOWN (v3+): an SMTP command the MTA did not recognise. */
  async unknown(line: Bytes): Promise<Verdict> {
    if (this.state === 'connectionDone') return CONTINUE
    this.check('unknown')
    const before = this.state
    const v = await this.step({
      step: 'unknown',
      omit: Proto.NOUNKNOWN,
      noReply: Proto.NR_UNKN,
      phase: 'command',
      packet: () => encodeUnknown(noNul(line)),
      label: 'SMFIC_UNKNOWN',
    })
    if (v.kind === 'shutdown' || v.kind === 'conn_fail') this.close()
    else this.go({ kind: 'restored', state: before })
    return v
  }

  /** SMFIC_ABORT when a message is open (no reply); a no-op otherwise. */
  abort(): void {
    if (this.state === 'messageDone') this.go({ kind: 'reset' })
    if (!this.inMessage) return
    this.send(encodeBare(Cmd.ABORT))
    this.go({ kind: 'reset' })
  }

  /**
   * SMFIC_QUIT_NC: end this SMTP session but keep the connection for the
   * next one (CONNECT follows, no OPTNEG). Only legal directly after a
   * completed EOB; returns false (and sends nothing) otherwise.
   */
  quitNc(): boolean {
    if (!this.reusable || !allowed('quit_nc', this.state)) return false
    this.send(encodeBare(Cmd.QUIT_NC))
    this.flush()
    this.go({ kind: 'quitNc' })
    this.unprovenReuse = true
    return true
  }

  /** SMFIC_QUIT and close. Safe in any state, any number of times. */
  quit(): void {
    if (this.ending || this.state === 'failed') return
    if (!this.closedByPeer) {
      try {
        this.send(encodeBare(Cmd.QUIT))
        this.flush()
      } catch {
        // the socket is going away anyway
      }
    }
    this.close()
  }

  /** Destroys the connection without QUIT. */
  destroy(): void {
    if (this.ending || this.state === 'failed') return
    this.close()
    this.stream.destroy()
  }

  // ---- machinery ---------------------------------------------------------

  private close(): void {
    this.ending = true
    this.go({ kind: 'closed' })
    this.reader.stop()
    if (!this.closedByPeer) this.flush()
    this.writer.discard()
    this.stream.end()
  }

  /** The one place the state changes: by an event, per the table in state-table.ts. */
  private go(e: Event): void {
    const to = next(this.position, e)
    if (to === undefined) {
      throw this.fail(
        new MilterStateError(`${this.opts.name}: ${e.kind} is not possible in state ${this.state}`),
      )
    }
    this.position = to
  }

  /** In decided states message steps are answered without I/O; skipped event types too. */
  private passThrough(step: Step): boolean {
    if (this.state === 'connectionDone' || this.state === 'messageDone') return true
    return this.position.skipping === step
  }

  private check(step: Step): void {
    if (this.failure) throw this.failure
    if (this.state === 'closed') throw new MilterClosedError(`${this.opts.name}: session is closed`)
    if (!allowed(step, this.state)) {
      throw new MilterStateError(
        `${this.opts.name}: ${step} is not allowed in state ${this.state} (allowed from ${FROM[step].join(', ')})`,
      )
    }
  }

  private async step(spec: StepSpec): Promise<Verdict> {
    this.check(spec.step)
    if (spec.macroStage !== undefined) this.sendMacros(spec.macroStage, spec.macros)
    if ((this.negotiated.protocol & spec.omit) !== 0) {
      this.advance(spec.step)
      return CONTINUE
    }
    this.send(spec.packet(), spec.tail)
    if ((this.negotiated.protocol & spec.noReply) !== 0) {
      this.advance(spec.step)
      return CONTINUE
    }
    const cap = this.opts.timeouts.eomMs
    this.stepDeadline =
      cap === undefined ? undefined : Date.now() + Math.max(cap, this.timeoutFor(spec.phase))
    let reply: Reply
    try {
      reply = await this.readReply(spec.phase, spec.label)
    } finally {
      this.stepDeadline = undefined
    }
    if (isModification(reply)) {
      throw this.fail(
        new MilterProtocolError(
          `${this.opts.name}: modification ${reply.kind} in reply to ${spec.label}`,
        ),
      )
    }
    const verdict = this.toVerdict(reply, spec.label)
    if (verdict.kind === 'continue') this.advance(spec.step)
    return verdict
  }

  /** A step completed with CONTINUE (or omitted, or unanswered). */
  private advance(step: Step): void {
    this.go({ kind: 'continued', step })
  }

  private afterConnectionStep(v: Verdict, step: 'connect' | 'helo'): Verdict {
    switch (v.kind) {
      case 'continue':
        return v
      case 'discard':
        this.opts.observer?.warn?.(
          `${this.opts.name}: DISCARD at ${step.toUpperCase()} is meaningless; treated as CONTINUE`,
        )
        this.advance(step)
        return CONTINUE
      case 'skip':
        this.advance(step)
        return CONTINUE
      case 'shutdown':
      case 'conn_fail':
        this.quit()
        return v
      default:
        // accept, reject, tempfail, replycode: the milter is done with this connection (milter-protocol.md §5.4).
        this.go({ kind: 'connectionEnded' })
        this.quit()
        return v
    }
  }

  private afterMessageStep(v: Verdict, step: Step): Verdict {
    switch (v.kind) {
      case 'continue':
        return v
      case 'skip':
        // SKIP after a non-body event: Postfix skips further events of that type.
        this.go({ kind: 'skipped', step })
        return CONTINUE
      case 'shutdown':
      case 'conn_fail':
        this.quit()
        return v
      default:
        this.go({ kind: 'messageEnded' })
        return v
    }
  }

  private sendMacros(stage: MacroStage, lookup: MacroLookup | undefined): void {
    const names = this.negotiated.symlist.get(stage) ?? this.opts.macros.get(stage) ?? []
    const pairs = macroPairs(names, lookup)
    if (pairs.length > 0) this.send(encodeMacro(stage, pairs))
  }

  private headerValueForMilter(value: Buffer): Buffer {
    let v = value
    if ((this.negotiated.protocol & Proto.HDR_LEADSPC) === 0 && v[0] === 0x20) v = v.subarray(1)
    if (v.includes(0x0d)) v = Buffer.from(v.toString('latin1').replace(/\r\n/g, '\n'), 'latin1')
    if (v.includes(0)) v = Buffer.from(v.toString('latin1').replace(/\0/g, ''), 'latin1')
    return v
  }

  /** Runs a bound's check; going over fails the session (the rest of the answer is not read). */
  private counted(check: () => void): void {
    try {
      check()
    } catch (e) {
      throw this.fail(isMilterError(e) ? e : new MilterProtocolError(String(e)))
    }
  }

  private checkModification(m: Modification): void {
    const problem = modificationProblem(m, this.negotiated)
    if (problem?.fatal)
      throw this.fail(new MilterProtocolError(`${this.opts.name}: ${problem.text}`))
    if (problem) this.opts.observer?.warn?.(`${this.opts.name}: ${problem.text}`)
  }

  private toVerdict(reply: Reply, label: string): Verdict {
    const v = verdictOf(reply, label)
    if (typeof v === 'string') throw this.fail(new MilterProtocolError(`${this.opts.name}: ${v}`))
    return v
  }

  /**
   * Reads until a non-PROGRESS reply; each PROGRESS re-arms the phase timer,
   * but never past the end-of-message deadline.
   */
  private async readReply(phase: Phase, label: string): Promise<Reply> {
    for (;;) {
      let ms = this.timeoutFor(phase)
      let what = label
      let limit = ms
      const now = Date.now()
      if (this.eomDeadline !== undefined && this.eomDeadline - now < ms) {
        ms = Math.max(0, this.eomDeadline - now)
        limit = this.opts.timeouts.eomMs ?? 0
        what = `${label} (eom_timeout: the final reply within ${limit} ms)`
      } else if (this.stepDeadline !== undefined && this.stepDeadline - now < ms) {
        ms = Math.max(0, this.stepDeadline - now)
        limit = Math.max(this.opts.timeouts.eomMs ?? 0, limit)
        what = `${label} (PROGRESS extends a step to eom_timeout at most: ${limit} ms)`
      }
      if (ms === 0 && this.reader.queued === 0) {
        throw this.fail(new MilterTimeoutError(phase, limit, what))
      }
      this.flush()
      const frame = await this.reader.next(phase, what, ms)
      let reply: Reply
      try {
        reply = decodeReply(frame)
      } catch (e) {
        throw this.fail(isMilterError(e) ? e : new MilterProtocolError(String(e)))
      }
      this.unprovenReuse = false
      if (reply.kind === 'progress') continue
      return reply
    }
  }

  private timeoutFor(phase: Phase): number {
    const t = this.opts.timeouts
    return phase === 'connect' ? t.connectMs : phase === 'command' ? t.commandMs : t.contentMs
  }

  /** Gathers one packet for the next flush(): `packet`, then `tail` (the rest of its payload). */
  private send(packet: Buffer, tail?: readonly Buffer[]): void {
    if (this.failure) throw this.failure
    let tailBytes = 0
    for (const t of tail ?? []) tailBytes += t.length
    const dataLen = packet.length - LEN_BYTES - 1 + tailBytes
    if (dataLen > this.negotiated.maxDataBytes) {
      throw this.fail(
        new MilterSizeError(
          `${this.opts.name}: a ${dataLen}-byte packet exceeds the milter's limit of ${this.negotiated.maxDataBytes}; not sent`,
        ),
      )
    }
    const obs = this.opts.observer
    if (obs?.trace && (obs.tracing?.() ?? true)) {
      const head = packet.subarray(LEN_BYTES + 1)
      obs.trace('send', {
        code: packet.readUInt8(LEN_BYTES),
        data: tail ? Buffer.concat([head, ...tail]) : head,
      })
    }
    this.writer.push(packet, tail)
  }

  /**
   * Writes what send() gathered, in one write: called before every wait for a reply, and
   * before QUIT. `written`: see PacketWriter.flush.
   */
  private flush(written?: () => void): void {
    this.writer.flush(written)
  }

  /** Waits for the socket to drain (pipelined NR_BODY chunks), under the content timeout; a close ends the wait. */
  private drained(label: string): Promise<void> {
    const ms = this.opts.timeouts.contentMs
    return this.writer.drained(
      ms,
      () => this.fail(new MilterTimeoutError('content', ms, `${label} write to ${this.opts.name}`)),
      // the session's own close listener ran first: this is its sticky error
      () =>
        this.fail(new MilterClosedError(`${this.opts.name}: connection closed during ${label}`)),
    )
  }

  /** Records the sticky error, destroys the socket, wakes a waiting reader. */
  private fail(err: MilterError): MilterError {
    if (this.failure) return this.failure
    if (this.state === 'closed' && err instanceof MilterClosedError) return err
    this.failure = err
    // every state may fail (the table says so), so this go() cannot throw back into fail()
    this.go({ kind: 'failed' })
    this.reader.stop(err)
    this.stream.destroy()
    return err
  }
}
