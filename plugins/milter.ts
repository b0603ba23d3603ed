/**
 * haraka-plugin-milter: the Haraka entry. Hooks drive one MilterChain per
 * SMTP connection; everything else lives in lib/. Exports are plain
 * functions (Haraka copies enumerable exports onto the plugin object).
 */
import { MilterChain, type Outcome } from '../lib/policy/chain'
import {
  findListener,
  parseMilterConfig,
  type Ini,
  type MilterConfig,
  type MilterDef,
} from '../lib/config'
import {
  applyStageResult,
  dispositionOf,
  restoreAuthResults,
  runContent,
} from '../lib/adapter/content'
import {
  connectAddress,
  connectHostname,
  esmtpArgs,
  macroLookup,
  rcptExtras,
  recipientFacts,
  type LocalDomain,
} from '../lib/adapter/facts'
import type { HarakaAddress, HarakaConnection, HarakaPlugin, Next } from '../lib/adapter/haraka'
import { toHookResult, type HookResult } from '../lib/adapter/reply'
import { answerAt, REPLIES, type Stage } from '../lib/policy/replies'
import { writeQuarantine } from '../lib/adapter/apply'
import { MilterPool } from '../lib/pool'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const constants = require('haraka-constants') as Record<string, number>

/** The plugin object with our state. */
export interface MilterPlugin extends HarakaPlugin {
  milterCfg?: MilterConfig
  milterCfgError?: string
  milterPool?: MilterPool
  hostList?: Set<string>
  load_milter_ini(): void
}

/** Per-connection state. */
interface ConnState {
  cfg: MilterConfig
  chain: MilterChain
  sourceChannel: string
  isLocal: LocalDomain
}

/** Connections that arrived while the configuration was broken: refused at MAIL. */
const CONFIG_BROKEN = new WeakMap<object, string>()

const STATES = new WeakMap<object, ConnState>()

function code(r: HookResult): number {
  switch (r.kind) {
    case 'cont':
      return constants['cont'] as number
    case 'deny':
      return constants['deny'] as number
    case 'denysoft':
      return constants['denysoft'] as number
    case 'denydisconnect':
      return constants['denydisconnect'] as number
    case 'denysoftdisconnect':
      return constants['denysoftdisconnect'] as number
  }
}

function answer(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  stage: Stage,
  outcome: Outcome,
  mode: MilterConfig['replyCode'],
): void {
  const o = answerAt(stage, outcome, mode)
  const r = toHookResult(o, 'milter')
  if (o.action === 'discard' && c.transaction) {
    c.transaction.notes['milter_disposition'] ??= { kind: 'discard', milter: o.milter }
  }
  // What the milter decided is recorded where it happened, even when the
  // reply waits for MAIL (a greeting or HELO may not carry it).
  const decided = stage === 'connect' ? outcome : o
  if (decided.action !== 'continue' && decided.action !== 'discard') {
    c.results.add(this, {
      fail: `${decided.milter}(${stage}:${decided.action}${decided.cause === 'failure' ? ',failure' : ''})`,
    })
    c.loginfo(
      this,
      `${decided.milter} ${decided.action} at ${stage}: ${decided.reply.code} ${decided.reply.lines.map((l) => l.text).join(' / ')}${o.action === 'continue' ? ' (given at MAIL: a greeting may not carry it)' : ''}`,
    )
  }
  if (r.kind === 'cont') return next()
  next(code(r), r.msg)
}

/** Loads (and re-loads on change) milter.ini; a bad file keeps the previous config. */
export function load_milter_ini(this: MilterPlugin): void {
  const ini = this.config.get('milter.ini', { booleans: ['main.reuse_connections'] }, () =>
    this.load_milter_ini(),
  ) as Ini
  try {
    const cfg = parseMilterConfig(ini, 'milter.ini')
    this.milterCfg = cfg
    delete this.milterCfgError
    // Haraka's per-hook timer must not fire before our own milter timeouts do.
    let budgetMs = 0
    for (const m of cfg.milters.values()) {
      budgetMs +=
        m.timeouts.connectMs +
        m.timeouts.commandMs +
        m.timeouts.contentMs +
        (m.timeouts.eomMs ?? m.timeouts.contentMs)
    }
    this.timeout = Math.ceil(budgetMs / 1000) + 10
    const old = this.milterPool
    old?.close()
    this.milterPool = new MilterPool({
      reuse: cfg.reuseConnections,
      ...(old ? { breakers: old.breakers } : {}),
      onBreakerChange: (milter, ch) => {
        const text =
          ch.to === 'open'
            ? `${milter}: marked down after ${ch.failures} consecutive connect failure(s) to ${ch.endpoint} (${ch.reason ?? 'error'}); not dialled for ${Math.round((ch.retryInMs ?? 0) / 1000)} s, default_action applies at once`
            : ch.to === 'half-open'
              ? `${milter}: probing ${ch.endpoint} again`
              : `${milter}: ${ch.endpoint} is back up`
        if (ch.to === 'open') this.logerror(text)
        else this.loginfo(text)
      },
    })
    this.loginfo(
      `milters: ${[...cfg.milters.values()].map((m) => `${m.name}=${m.socketText}`).join(', ') || '(none)'}`,
    )
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e)
    this.logcrit(
      `configuration error: ${msg}${this.milterCfg ? ' (keeping the previous configuration)' : ''}`,
    )
    if (!this.milterCfg) this.milterCfgError = msg
  }
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

function listenerMilters(
  cfg: MilterConfig,
  c: HarakaConnection,
): { defs: MilterDef[]; sourceChannel: string } {
  const l = findListener(cfg, c.local.ip ?? '', c.local.port ?? 0)
  const names = l ? l.milters : cfg.defaultMilters
  const defs = names.map((n) => cfg.milters.get(n)).filter((d): d is MilterDef => d !== undefined)
  return { defs, sourceChannel: l?.sourceChannel ?? cfg.defaultSourceChannel }
}

/** CONNECT: opens this connection's milters and reports the client. */
export function hook_connect(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  if (this.milterCfgError) {
    // The greeting may only be 220, 421 or 554 (RFC 5321 4.3.2): greet, refuse at MAIL.
    CONFIG_BROKEN.set(c, this.milterCfgError)
    return next()
  }
  const cfg = this.milterCfg
  if (!cfg) return next()
  const { defs, sourceChannel } = listenerMilters(cfg, c)
  if (defs.length === 0) return next()
  const pool = this.milterPool
  const chain = new MilterChain({
    milters: defs,
    mixedRecipients: cfg.mixedRecipients,
    ...(pool ? { open: (d) => pool.acquire(d), release: (d, s) => pool.release(d, s) } : {}),
    onEvent: (e) => {
      const text = `${e.milter} ${e.stage}: ${e.message}${e.code ? ` (${e.code})` : ''}`
      if (e.code === 'MILTER_ERR_UNAVAILABLE') {
        // not dialled: the breaker's state change was logged once (results log err as ERROR)
        c.results.add(this, { skip: `${e.milter}(${e.stage}:unavailable)` })
      } else if (e.code !== undefined) {
        c.results.add(this, { err: `${e.milter}(${e.stage}:${e.code})` })
      }
      if (e.level === 'error') c.logerror(this, text)
      else if (e.level === 'warn') c.logwarn(this, text)
      else c.logdebug(this, text)
    },
  })
  const hosts = this.hostList ?? new Set<string>()
  const isLocal: LocalDomain = (d) => hosts.has(d)
  STATES.set(c, { cfg, chain, sourceChannel, isLocal })
  settle.call(
    this,
    next,
    c,
    'connect',
    chain.connect(
      connectHostname(c),
      connectAddress(c),
      macroLookup(cfg, c, sourceChannel, isLocal),
    ),
    cfg.replyCode,
  )
}

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
  // 421 is the one refusal legal at the greeting and at HELO alike
  const early = stage === 'connect' || stage === 'helo'
  const o: Outcome = {
    action: early ? 'shutdown' : 'tempfail',
    reply: early ? REPLIES.internalShutdown : REPLIES.internal,
    milter: 'internal',
    cause: 'failure',
  }
  const r = toHookResult(o, 'milter')
  if (r.kind === 'cont') next()
  else next(code(r), r.msg)
}

/**
 * Answers the hook with the chain's outcome; any internal error becomes a
 * 4xx, never a crash, and `next` is called exactly once.
 */
function settle(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  stage: Stage,
  pending: Promise<Outcome>,
  mode: MilterConfig['replyCode'],
): void {
  let called = false
  const once: Next = (...args) => {
    if (called) return
    called = true
    next(...args)
  }
  pending
    .then((o) => answer.call(this, once, c, stage, o, mode))
    .catch((e: unknown) => crash.call(this, once, c, stage, e))
}

function onHelo(this: MilterPlugin, next: Next, c: HarakaConnection, host: string): void {
  const st = STATES.get(c)
  if (!st) return next()
  settle.call(
    this,
    next,
    c,
    'helo',
    st.chain.helo(host, macroLookup(st.cfg, c, st.sourceChannel, st.isLocal)),
    st.cfg.replyCode,
  )
}

/** HELO. */
export function hook_helo(this: MilterPlugin, next: Next, c: HarakaConnection, host: string): void {
  onHelo.call(this, next, c, host)
}

/** EHLO (again after STARTTLS). */
export function hook_ehlo(this: MilterPlugin, next: Next, c: HarakaConnection, host: string): void {
  onHelo.call(this, next, c, host)
}

/** MAIL FROM with its ESMTP parameters (kept in notes: Haraka stores them nowhere). */
export function hook_mail(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  params: [HarakaAddress, Record<string, string | null> | undefined],
): void {
  const broken = CONFIG_BROKEN.get(c)
  if (broken !== undefined) {
    c.logerror(this, `refusing mail: ${broken}`)
    return answer.call(
      this,
      next,
      c,
      'mail',
      { action: 'tempfail', reply: REPLIES.configError, milter: 'configuration', cause: 'failure' },
      'milter',
    )
  }
  const st = STATES.get(c)
  const t = c.transaction
  if (!st || !t) return next()
  const [from, esmtp] = params
  t.notes['milter_mail_args'] = esmtp ?? {}
  settle.call(
    this,
    next,
    c,
    'mail',
    st.chain.mail(
      [from.format(), ...esmtpArgs(esmtp)],
      macroLookup(st.cfg, c, st.sourceChannel, st.isLocal),
    ),
    st.cfg.replyCode,
  )
}

/** RCPT TO (at rcpt_ok: after Haraka accepted the recipient). */
export function milter_rcpt(
  this: MilterPlugin,
  next: Next,
  c: HarakaConnection,
  rcpt: HarakaAddress,
): void {
  const st = STATES.get(c)
  const t = c.transaction
  if (!st || !t) return next()
  const facts = recipientFacts(st.cfg, c, rcpt, st.isLocal)
  const macros = macroLookup(
    st.cfg,
    c,
    st.sourceChannel,
    st.isLocal,
    rcptExtras(rcpt, facts, st.isLocal),
  )
  settle.call(
    this,
    next,
    c,
    'rcpt',
    st.chain.rcpt([rcpt.format()], macros, facts),
    st.cfg.replyCode,
  )
}

/** DATA. */
export function hook_data(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = STATES.get(c)
  const t = c.transaction
  if (!st || !t) return next()
  settle.call(
    this,
    next,
    c,
    'data',
    st.chain.data(macroLookup(st.cfg, c, st.sourceChannel, st.isLocal)),
    st.cfg.replyCode,
  )
}

/** End of data: the content phase milter by milter, then the edits. */
export function hook_data_post(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = STATES.get(c)
  const t = c.transaction
  if (!st || !t) return next()
  const pending = runContent(
    st.chain,
    t,
    macroLookup(st.cfg, c, st.sourceChannel, st.isLocal),
  ).then((result) => applyStageResult.call(this, result, st.cfg, c, t))
  settle.call(this, next, c, 'eom', pending, st.cfg.replyCode)
}

/** Queue: takes discarded and held messages before any delivering plugin. */
export function milter_queue(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = STATES.get(c)
  const t = c.transaction
  if (!st || !t) return next()
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
    next(
      constants['ok'],
      d.kind === 'hold' ? 'Message accepted and held for review' : 'Message accepted',
    )
  }
  if (!keepCopy) return done()
  writeQuarantine(t, st.cfg.quarantine.dir, d.reason)
    .then(done)
    .catch((e: unknown) => {
      c.logerror(
        this,
        `cannot write quarantine copy: ${e instanceof Error ? e.message : String(e)}`,
      )
      next(constants['denysoft'], 'Temporary local problem - try again later')
    })
}

/** RSET, a new MAIL or EHLO, end of message: ABORT to milters inside a message. */
export function hook_reset_transaction(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  STATES.get(c)?.chain.abort()
  next()
}

/** End of the SMTP session: QUIT every milter. */
export function hook_disconnect(this: MilterPlugin, next: Next, c: HarakaConnection): void {
  const st = STATES.get(c)
  if (st) {
    st.chain.close()
    STATES.delete(c)
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
  const st = STATES.get(c)
  if (!st) return next()
  const line = params.filter((p) => p !== undefined && p !== '').join(' ')
  settle.call(this, next, c, 'unknown', st.chain.unknown(line), st.cfg.replyCode)
}

/** Graceful shutdown: close idle reusable sessions. */
export function shutdown(this: MilterPlugin): void {
  this.milterPool?.close()
}
