/**
 * haraka-plugin-milter: the Haraka entry. register() loads the
 * configuration; each hook hands its stage to the connection's MilterChain
 * and answers with the outcome. Everything else lives in lib/ (adapter:
 * Haraka state, replies, reports; policy: the chain). Exports are plain
 * functions (Haraka copies enumerable exports onto the plugin object).
 */
import { writeQuarantine } from '../lib/adapter/write-back'
import { captureBody } from '../lib/adapter/body-capture'
import { clientFacts, messageFacts } from '../lib/adapter/condition-facts'
import {
  applyStageResult,
  dispositionOf,
  restoreAuthResults,
  runContent,
} from '../lib/adapter/content-phase'
import {
  connectAddress,
  connectHostname,
  esmtpArgs,
  macroLookup,
  rcptExtras,
  recipientFacts,
} from '../lib/adapter/facts'
import type {
  HarakaAddress,
  HarakaConnection,
  HarakaPlugin,
  LocalDomain,
  Next,
} from '../lib/adapter/haraka'
import { ConnectionDebug } from '../lib/adapter/debug'
import { hookCode, respond } from '../lib/adapter/reply'
import { reportEvent, reportMessage, reportOutcome } from '../lib/adapter/log'
import { endpointText, Runtime } from '../lib/adapter/runtime'
import {
  connectionState,
  dropConnectionState,
  noteDiscard,
  setConnectionState,
  transactionState,
  type ConnectionState,
} from '../lib/adapter/state'
import { addressKey } from '../lib/message/envelope'
import {
  findListener,
  INI_OPTIONS,
  type Ini,
  type MilterConfig,
  type MilterDef,
} from '../lib/config'
import { MilterChain, type Outcome } from '../lib/policy/chain'
import { answerAt, REPLIES } from '../lib/policy/smtp-replies'
import { isConnectionStage, type Stage } from '../lib/policy/stage'
import { formatReplyLine } from '../lib/protocol/replycode'

/** The plugin object with our state. */
export interface MilterPlugin extends HarakaPlugin {
  milter?: Runtime
  hostList?: Set<string>
  load_milter_ini(): void
}

type Ready = Extract<ConnectionState, { kind: 'milters' }>

// ---- answering ---------------------------------------------------------------

/**
 * Tells the client what the chain decided, legally for this stage
 * (answerAt), and records it: a discard for the queue hook, the outcome
 * in the results and the log, the refusal for the message's report lines.
 */
function answer(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  stage: Stage,
  o: Outcome,
  recipient?: string,
): void {
  const st = connectionState(c)
  const ready = st?.kind === 'milters' ? st : undefined
  const answered = answerAt(stage, o, ready?.cfg.replyCode ?? 'milter')
  if (c.transaction) noteDiscard(transactionState(c.transaction), answered)
  // what the milter decided is recorded where it happened, even when the reply waits for MAIL
  record.call(this, c, ready, stage, stage === 'connect' ? o : answered, answered, recipient)
  respond(next, answered)
}

/** The outcome in the results and the log, and the refusal kept for the report lines. */
function record(
  this: MilterPlugin,
  c: HarakaConnection,
  st: Ready | undefined,
  stage: Stage,
  decided: Outcome,
  answered: Outcome,
  recipient: string | undefined,
): void {
  // the endpoint of a milter's own outcome; none for the plugin's (configuration, recipient rules)
  const endpoint =
    st && decided.action !== 'continue' && decided.action !== 'discard'
      ? st.chain.endpointOf(decided.milter)
      : undefined
  reportOutcome(this, c, stage, decided, answered, endpoint)
  if (st && answered.action !== 'continue' && answered.action !== 'discard') {
    const reply = formatReplyLine(answered.reply)
    st.refusals.push({ milter: answered.milter, stage, reply, ...(recipient ? { recipient } : {}) })
  }
}

/** An internal error: 451 4.3.0 (421 at CONNECT and HELO, the one refusal legal there). */
function crash(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  stage: Stage,
  e: unknown,
): void {
  c.logerror(
    this,
    `internal error at ${stage}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
  )
  const early = isConnectionStage(stage)
  answer.call(this, next, c, stage, {
    action: early ? 'shutdown' : 'tempfail',
    reply: early ? REPLIES.internalShutdown : REPLIES.internal,
    milter: 'internal',
    cause: 'failure',
  })
}

/**
 * Runs one stage for a connection with milters and answers it; `next` is
 * called exactly once, and an internal error is a 4xx, never a crash.
 */
function stage(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  name: Stage,
  work: (st: Ready) => Promise<Outcome>,
  recipient?: string,
): void {
  const st = connectionState(c)
  if (st?.kind !== 'milters') return next()
  let called = false
  const once: Next = (...args) => {
    if (called) return
    called = true
    next(...args)
  }
  let pending: Promise<Outcome>
  try {
    pending = work(st)
  } catch (e) {
    return crash.call(this, once, c, name, e)
  }
  pending
    .then((o) => answer.call(this, once, c, name, o, recipient))
    .catch((e: unknown) => crash.call(this, once, c, name, e))
}

function macros(st: Ready, c: HarakaConnection, extra?: Record<string, string | undefined>) {
  return macroLookup(st.cfg, c, st.sourceChannel, st.isLocal, extra)
}

// ---- configuration -----------------------------------------------------------

/** Loads (and re-loads on change) milter.ini; a bad file keeps the previous config. */
export function load_milter_ini(this: MilterPlugin): void {
  const ini = this.config.get('milter.ini', INI_OPTIONS, () => this.load_milter_ini()) as Ini
  this.milter ??= new Runtime(this)
  const timeout = this.milter.load(ini, 'milter.ini')
  if (timeout !== undefined) this.timeout = timeout
  const hosts = this.config.get('host_list', 'list') as string[] | undefined
  this.hostList = new Set((hosts ?? []).map((h) => h.toLowerCase()))
}

/** Loads the config and registers the hooks that need a priority. */
export function register(this: MilterPlugin): void {
  this.load_milter_ini()
  // Milters see RCPT after Haraka's own recipient checks said OK, as in Postfix.
  this.register_hook('rcpt_ok', 'milter_rcpt')
  // Discard and quarantine-hold take the message before any delivering queue plugin.
  this.register_hook('queue', 'milter_queue', -100)
  this.register_hook('queue_outbound', 'milter_queue', -100)
  // Run after tls/auth, which answer STARTTLS and AUTH themselves.
  this.register_hook('unrecognized_command', 'milter_unknown', 100)
}

/**
 * Runs in Haraka's master process (or the only one, nodes=0): the process
 * that serves the metrics and logs the summary. In cluster mode Haraka has
 * set `server.cluster` by then, and the figures are its workers' sum.
 */
export function hook_init_master(
  this: MilterPlugin,
  next: Next,
  server: { cluster?: unknown },
): void {
  this.milter?.serve(server.cluster ? 'master' : 'single')
  next()
}

function listenerMilters(
  cfg: MilterConfig,
  c: HarakaConnection,
): { defs: MilterDef[]; sourceChannel: string } {
  const l = findListener(cfg, c.local.ip ?? '', c.local.port ?? 0)
  const names = l ? l.milters : cfg.defaultMilters
  const defs = names.map((n) => cfg.milters.get(n)).filter((d): d is MilterDef => d !== undefined)
  return { defs, sourceChannel: l?.sourceChannel ?? cfg.defaultSourceChannel }
}

// ---- hooks -------------------------------------------------------------------

/** CONNECT: opens this connection's milters and reports the client. */
export function hook_connect(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const rt = this.milter
  if (rt?.error !== undefined) {
    // The greeting may only be 220, 421 or 554 (RFC 5321 4.3.2): greet, refuse at MAIL.
    setConnectionState(c, { kind: 'broken', reason: rt.error })
    return next()
  }
  const cfg = rt?.cfg
  if (!cfg) return next()
  const { defs, sourceChannel } = listenerMilters(cfg, c)
  if (defs.length === 0) return next()
  const pool = rt.pool
  const dbg = new ConnectionDebug(
    (m) => rt.cfg?.milters.get(m)?.debug ?? 0, // the level in force now: a reload applies at once
    { info: (t) => c.loginfo(this, t), warn: (t) => c.logwarn(this, t) },
  )
  const chain = new MilterChain({
    milters: defs,
    mixedRecipients: cfg.mixedRecipients,
    onStep: (s) => dbg.step(s),
    ...(pool
      ? {
          open: (d) =>
            pool.acquire(d, dbg.observer(d.name), (use) => {
              // on the connection's log, so a failover names the SMTP session it happened in
              const { level, text } = endpointText(d.name, use)
              if (level === 'info') c.loginfo(this, text)
              else c.logdebug(this, text)
            }),
          release: (d, s) => pool.release(d, s),
          endpointOf: (s) => pool.endpointOf(s),
        }
      : {}),
    onEvent: (e) => reportEvent(this, c, e),
    onSkip: (milter, _stage, reason) =>
      (c.transaction ?? c).results.add(this, { skip: `${milter}: ${reason}` }),
  })
  const hosts = this.hostList ?? new Set<string>()
  const isLocal: LocalDomain = (d) => hosts.has(d)
  setConnectionState(c, { kind: 'milters', cfg, chain, sourceChannel, isLocal, refusals: [] })
  stage.call(this, next, c, 'connect', (st) =>
    st.chain.connect(connectHostname(c), connectAddress(c), macros(st, c), clientFacts(c)),
  )
}

/** HELO. */
export function hook_helo(this: MilterPlugin, next: Next, c: HarakaConnection, host: string): void {
  stage.call(this, next, c, 'helo', (st) => st.chain.helo(host, macros(st, c)))
}

/** EHLO (again after STARTTLS). */
export function hook_ehlo(this: MilterPlugin, next: Next, c: HarakaConnection, host: string): void {
  stage.call(this, next, c, 'helo', (st) => st.chain.helo(host, macros(st, c)))
}

/** MAIL FROM with its ESMTP parameters (kept in the transaction state: Haraka stores them nowhere). */
export function hook_mail(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  params: [HarakaAddress, Record<string, string | null> | undefined],
): void {
  const st = connectionState(c)
  if (st?.kind === 'broken') {
    c.logerror(this, `refusing mail: ${st.reason}`)
    return answer.call(this, next, c, 'mail', {
      action: 'tempfail',
      reply: REPLIES.configError,
      milter: 'configuration',
      cause: 'failure',
    })
  }
  const t = c.transaction
  if (!t) return next()
  const [from, esmtp] = params
  transactionState(t).mailArgs = esmtp ?? {}
  stage.call(this, next, c, 'mail', (s) =>
    s.chain.mail([from.format(), ...esmtpArgs(esmtp)], macros(s, c), messageFacts(c, from, esmtp)),
  )
}

/**
 * RCPT TO's ESMTP parameters (NOTIFY, ORCPT...), recorded for the milters'
 * SMFIC_RCPT and the quarantine's envelope: rcpt_ok, where milters run, is
 * given the address alone. Decides nothing.
 */
export function hook_rcpt(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  params: [HarakaAddress, Record<string, string | null> | undefined],
): void {
  const t = c.transaction
  const [rcpt, esmtp] = params
  if (t && connectionState(c)?.kind === 'milters' && esmtp && Object.keys(esmtp).length > 0) {
    const st = transactionState(t)
    st.rcptArgs ??= new Map()
    st.rcptArgs.set(addressKey(rcpt.address), esmtp)
  }
  next()
}

/** RCPT TO (at rcpt_ok: after Haraka accepted the recipient), with its ESMTP parameters. */
export function milter_rcpt(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  rcpt: HarakaAddress,
): void {
  const t = c.transaction
  if (!t) return next()
  stage.call(
    this,
    next,
    c,
    'rcpt',
    (st) => {
      const facts = recipientFacts(st.cfg, c, rcpt, st.isLocal)
      const m = macros(st, c, rcptExtras(rcpt, facts, st.isLocal))
      const esmtp = transactionState(t).rcptArgs?.get(addressKey(rcpt.address))
      return st.chain.rcpt([rcpt.format(), ...esmtpArgs(esmtp)], m, facts)
    },
    rcpt.format(),
  )
}

/** DATA. */
export function hook_data(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  if (!c.transaction) return next()
  captureBody(c.transaction)
  stage.call(this, next, c, 'data', (st) => st.chain.data(macros(st, c)))
}

/** End of data: the content phase milter by milter, then the edits. */
export function hook_data_post(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const t = c.transaction
  if (!t) return next()
  stage.call(this, next, c, 'eom', (st) =>
    runContent(st.chain, t, macros(st, c)).then((result) =>
      applyStageResult.call(this, result, st.cfg, c, t),
    ),
  )
}

/** Queue: takes discarded and held messages before any delivering plugin. */
export function milter_queue(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = connectionState(c)
  const t = c.transaction
  if (st?.kind !== 'milters' || !t) return next()
  const restored = restoreAuthResults(t)
  if (restored > 0) c.logdebug(this, `restored ${restored} milter Authentication-Results header(s)`)
  const d = dispositionOf(t)
  if (!d) return next()
  const keepCopy = d.kind === 'hold' || (d.kind === 'discard' && st.cfg.discard === 'quarantine')
  const done = (file?: string): void => {
    t.results.add(this, { pass: `${d.kind}${file ? `:${file}` : ''}` })
    c.loginfo(
      this,
      `message ${d.kind === 'hold' ? 'held in quarantine' : 'discarded'} (${d.reason})${file ? `: ${file}` : ''}`,
    )
    // a held message's reply is [quarantine] hold_reply: by default a discarded message's, which
    // tells the sender nothing of the hold
    next(hookCode('ok'), d.kind === 'hold' ? st.cfg.quarantine.holdReply : 'Message accepted')
  }
  if (!keepCopy) return done()
  writeQuarantine(c, t, st.cfg.quarantine.dir, d)
    .then((file) => {
      if (d.kind === 'hold') this.milter?.metrics?.recordHeld(d.milters)
      done(file)
    })
    .catch((e: unknown) => {
      c.logerror(
        this,
        `cannot write quarantine copy: ${e instanceof Error ? e.message : String(e)}`,
      )
      next(hookCode('denysoft'), 'Temporary local problem - try again later')
    })
}

/** One line per milter for what it did since the last report, with the refusal if any. */
function logReports(this: MilterPlugin, c: HarakaConnection, st: Ready): void {
  const reports = st.chain.takeReports()
  reportMessage(this, c, reports, st.refusals)
  this.milter?.metrics?.record(reports)
  st.refusals = []
}

/** RSET, a new MAIL or EHLO, end of message: the message's report, ABORT to milters inside it. */
export function hook_reset_transaction(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = connectionState(c)
  if (st?.kind === 'milters') {
    logReports.call(this, c, st)
    st.chain.abort()
  }
  next()
}

/** End of the SMTP session: what is left to report, then QUIT every milter. */
export function hook_disconnect(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = dropConnectionState(c)
  if (st?.kind === 'milters') {
    logReports.call(this, c, st)
    st.chain.close()
  }
  next()
}

/** An unrecognised SMTP command: UNKNOWN to the milters; a reject or tempfail is passed on. */
export function milter_unknown(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  params: [string, string],
): void {
  const line = params.filter((p) => p !== undefined && p !== '').join(' ')
  stage.call(this, next, c, 'unknown', (st) => st.chain.unknown(line))
}

/** Graceful shutdown: close idle reusable sessions. */
export function shutdown(this: MilterPlugin): void {
  this.milter?.close()
}
