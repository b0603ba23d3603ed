/**
 * Runs the real libmilter test filters in test/milters/ (pymilter) as child
 * processes for integration tests: scripted.py, whose every answer comes from
 * a JSON script, and greylist.py. The script format is documented in
 * test/milters/README.md and mirrored by `MilterScript` below.
 *
 * Each filter gets a temporary directory under os.tmpdir() holding its
 * script, its JSONL event log and (for unix transport) its socket. Every
 * started filter is kept in a module-level registry: call `stopAllMilters()`
 * from a mocha root hook; a process 'exit' hook SIGKILLs whatever is left.
 */

import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

/** pymilter (Debian python3-milter) is importable only from the system Python. */
export const PYTHON = '/usr/bin/python3'

const PACKAGE_NAME = 'haraka-plugin-milter'
const READY_TIMEOUT_MS = 10_000
const STOP_GRACE_MS = 2_000
const DEFAULT_EVENT_TIMEOUT_MS = 5_000
const POLL_MS = 20
const PORT_ATTEMPTS = 3

// ---------------------------------------------------------------------------
// The script format (see test/milters/README.md)

export type Transport = 'inet' | 'inet6' | 'unix'

/** SMFIF_* names a filter can request (`MODBODY` is an alias of `CHGBODY`). */
export type ActionName =
  | 'ADDHDRS'
  | 'CHGBODY'
  | 'MODBODY'
  | 'ADDRCPT'
  | 'DELRCPT'
  | 'CHGHDRS'
  | 'QUARANTINE'
  | 'CHGFROM'
  | 'ADDRCPT_PAR'
  | 'SETSYMLIST'

/** Steps that SMFIP_NO* / SMFIP_NR_* flags can omit or leave unanswered. */
export type ProtocolStep =
  'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' | 'unknown'

/** Stages a reply, progress count or sleep can be scripted for. */
export type ReplyStage = ProtocolStep | 'eom'

/** Stages a macro list can be requested for (SMFIM_*). */
export type SymlistStage = 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'eoh' | 'eom'

export type SimpleReply = 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'skip'

/**
 * An SMTP reply set with smfi_setreply (one line) or smfi_setmlreply (several).
 * The decision defaults to tempfail for 4xx and reject otherwise; libmilter
 * only sends the text ('y') when the class matches the decision.
 */
export interface ReplyCode {
  code: string
  xcode?: string
  lines?: string[]
  /** Shorthand for `lines: [text]`. */
  text?: string
  action?: SimpleReply
}

export type ScriptReply = SimpleReply | ReplyCode

/** Replies keyed by recipient (as received, e.g. '<a@b>') or header name, with a '*' default. */
export type KeyedReplies = Record<string, ScriptReply>

export interface ScriptProtocol {
  /** Steps the MTA must not send (SMFIP_NO*). */
  no?: ProtocolStep[]
  /** Steps the filter will not answer (SMFIP_NR_*); overrides any scripted reply. */
  noreply?: ProtocolStep[]
  /** Request SMFIP_SKIP. */
  skip?: boolean
  /** Request SMFIP_HDR_LEADSPC. */
  headerLeadingSpace?: boolean
  /** Request SMFIP_RCPT_REJ. */
  rcptRej?: boolean
  /** Raw protocol mask; replaces everything above. */
  mask?: number
}

export type ReplacementBody =
  { text: string } | { base64: string } | { repeat: { text: string; times: number } }

export type EomOp =
  | { op: 'addheader'; name: string; value: string }
  | { op: 'insheader'; index: number; name: string; value: string }
  | { op: 'chgheader'; name: string; index: number; value: string }
  | ({ op: 'replacebody'; chunkSize?: number } & ReplacementBody)
  | { op: 'addrcpt'; rcpt: string }
  | { op: 'addrcpt_par'; rcpt: string; params?: string }
  | { op: 'delrcpt'; rcpt: string }
  | { op: 'chgfrom'; sender: string; params?: string }
  | { op: 'quarantine'; reason: string }
  | { op: 'progress' }
  | { op: 'sleep'; ms: number }

export interface MilterScript {
  /** Actions to request: 'all' (the default) means all the MTA offered. */
  actions?: 'all' | ActionName[] | number
  protocol?: ScriptProtocol
  /** Macro names to request per stage, space separated or as a list. */
  symlist?: Partial<Record<SymlistStage, string | string[]>>
  reply?: {
    connect?: ScriptReply
    helo?: ScriptReply
    mail?: ScriptReply
    rcpt?: ScriptReply | KeyedReplies
    data?: ScriptReply
    header?: ScriptReply | KeyedReplies
    eoh?: ScriptReply
    body?: ScriptReply
    eom?: ScriptReply
    unknown?: ScriptReply
  }
  /** Number of smfi_progress() calls before answering, per stage. */
  progress?: Partial<Record<ReplyStage, number>>
  /** Sleep after each progress() call (default 100 ms). */
  progressIntervalMs?: number
  /** Delay before answering, per stage (after the progress calls). */
  sleepMs?: Partial<Record<ReplyStage, number>>
  /** Modifications at end of message, in order. */
  eom?: EomOp[]
  comment?: string
}

// ---------------------------------------------------------------------------
// The event log

export type Macros = Record<string, string>

/** A reply as logged: what the filter answered (or 'noreply' under SMFIP_NR_*). */
export type LoggedReply =
  | SimpleReply
  | 'noreply'
  | { action: SimpleReply; code: string; xcode: string | null; lines: string[] }

export interface MaskInfo {
  actions: number
  protocol: number
  actionNames: string[]
  protocolNames: string[]
}

interface EventBase {
  /** Order of the line in the log (1-based, per process). */
  seq: number
  /** Unix time in seconds. */
  ts: number
  pid: number
  /** Connection id: 1, 2, ... per milter connection; 0 for process events. */
  conn: number
}

interface StageEvent extends EventBase {
  /** Values of the common macros the filter could read at this point. */
  macros: Macros
}

export interface ReadyEvent extends EventBase {
  event: 'ready'
  socket: string
  delay?: number
}

export interface StoppedEvent extends EventBase {
  event: 'stopped'
  signal: number | null
  error: string | null
}

export interface NegotiateEvent extends EventBase {
  event: 'negotiate'
  /** As libmilter passes it to xxfi_negotiate: the protocol word always has the NR_* bits set. */
  offered: MaskInfo & { f2: number; f3: number }
  requested: MaskInfo & { symlist: Partial<Record<SymlistStage, string>> }
}

export interface ConnectEvent extends StageEvent {
  event: 'connect'
  hostname: string
  /** AF_INET 2, AF_INET6 10, AF_UNIX 1, 0 for family 'U'. */
  family: number
  familyName: string
  /** [ip, port], [ip6, port, flowinfo, scope], a socket path, or null. */
  hostaddr: [string, number] | [string, number, number, number] | string | null
  reply: LoggedReply
}

export interface HeloEvent extends StageEvent {
  event: 'helo'
  helo: string
  reply: LoggedReply
}

export interface EnvfromEvent extends StageEvent {
  event: 'envfrom'
  sender: string
  /** The sender then the ESMTP parameters, as text (invalid UTF-8 becomes U+FFFD). */
  args: string[]
  /** The same, exact bytes in base64. */
  argsB64: string[]
  /** Message number on this connection (1-based). */
  message: number
  reply: LoggedReply
}

export type GreylistDecision = 'greylisted' | 'passed' | 'whitelisted'

export interface EnvrcptEvent extends StageEvent {
  event: 'envrcpt'
  rcpt: string
  args: string[]
  argsB64: string[]
  reply: LoggedReply
  /** greylist.py only. */
  decision?: GreylistDecision
  ip?: string
  sender?: string
  waited?: number
  delay?: number
}

export interface DataEvent extends StageEvent {
  event: 'data'
  reply: LoggedReply
}

export interface HeaderEvent extends StageEvent {
  event: 'header'
  name: string
  value: string
  valueB64: string
  /** Position among this message's headers (1-based). */
  index: number
  reply: LoggedReply
}

export interface EohEvent extends StageEvent {
  event: 'eoh'
  headerCount: number
  reply: LoggedReply
}

export interface BodyEvent extends StageEvent {
  event: 'body'
  length: number
  chunk: number
  total: number
  reply: LoggedReply
}

export interface EomEvent extends StageEvent {
  event: 'eom'
  bodyLength: number
  bodyChunks: number
  bodySha256: string
  headers: Array<[string, string]>
  /** Present when the body is under 64 KiB. */
  body?: string
  bodyB64?: string
  reply: LoggedReply
  /** greylist.py only: the X-Greylist value added, or null. */
  greylistHeader?: string | null
}

export interface UnknownEvent extends StageEvent {
  event: 'unknown'
  command: string
  reply: LoggedReply
}

export interface AbortEvent extends StageEvent {
  event: 'abort'
  bodyLength: number
  headerCount: number
}

export interface CloseEvent extends EventBase {
  event: 'close'
  messages: number
}

export interface ErrorEvent extends EventBase {
  event: 'error'
  stage: string
  error: string
  traceback: string
}

/** flood.py: the flood of the triggering message was written (or failed). */
export interface FloodEvent extends EventBase {
  event: 'flood'
  flood: string
  count: number
  seconds: number
  error: string | null
}

export type MilterEvent =
  | FloodEvent
  | ReadyEvent
  | StoppedEvent
  | NegotiateEvent
  | ConnectEvent
  | HeloEvent
  | EnvfromEvent
  | EnvrcptEvent
  | DataEvent
  | HeaderEvent
  | EohEvent
  | BodyEvent
  | EomEvent
  | UnknownEvent
  | AbortEvent
  | CloseEvent
  | ErrorEvent

export type MilterEventName = MilterEvent['event']
export type EventOf<K extends MilterEventName> = Extract<MilterEvent, { event: K }>

// ---------------------------------------------------------------------------
// Process handling

export interface StartedMilter {
  /** Spec for our client, Sendmail syntax: 'inet:PORT@127.0.0.1' | 'inet6:PORT@::1' | 'unix:PATH'. */
  socket: string
  pid: number
  logPath: string
  /** Parse the JSONL log so far. */
  events(): MilterEvent[]
  /** The logged events of one kind. */
  eventsOf<K extends MilterEventName>(kind: K): Array<EventOf<K>>
  waitForEvent<T extends MilterEvent>(
    pred: (e: MilterEvent) => e is T,
    timeoutMs?: number,
  ): Promise<T>
  waitForEvent(pred: (e: MilterEvent) => boolean, timeoutMs?: number): Promise<MilterEvent>
  /** What the filter wrote to stderr so far. */
  stderr(): string
  /** SIGTERM, SIGKILL after 2 s, wait for exit, remove the temp directory. Idempotent. */
  stop(): Promise<void>
}

export interface MilterProcessOptions {
  transport?: Transport
  /** TCP port (default: a free one). Ignored for unix. */
  port?: number
  /** libmilter's own I/O timeout (smfi_settimeout), in seconds. */
  timeoutSec?: number
}

export interface GreylistOptions extends MilterProcessOptions {
  /** Seconds before a retried triplet is accepted (default 1). */
  delaySec?: number
}

interface Running {
  child: ChildProcess
  exited: Promise<void>
  hasExited: () => boolean
  dir: string
  stopping: Promise<void> | null
}

const registry = new Set<Running>()
let exitHookInstalled = false
let pymilterChecked = false

/** The repository root: the nearest ancestor directory of this file with our package.json. */
export function repoRoot(): string {
  let dir = __dirname
  for (;;) {
    const file = path.join(dir, 'package.json')
    if (fs.existsSync(file)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: unknown }
        if (pkg.name === PACKAGE_NAME) return dir
      } catch {
        // not ours; keep walking
      }
    }
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error(`cannot find the ${PACKAGE_NAME} root above ${__dirname}`)
    dir = parent
  }
}

/** Throws when /usr/bin/python3 cannot import pymilter. */
export function assertPymilterInstalled(): void {
  if (pymilterChecked) return
  const res = spawnSync(PYTHON, ['-c', 'import Milter, milter'], { stdio: 'ignore' })
  if (res.error !== undefined || res.status !== 0) {
    throw new Error(
      'pymilter is not installed: apt-get install python3-milter (needs /usr/bin/python3 with module Milter)',
    )
  }
  pymilterChecked = true
}

/** Bind host:0, read the port, close. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, host, () => {
      const addr = server.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no port assigned'))))
    })
  })
}

export async function startScriptedMilter(
  script: MilterScript,
  opts: MilterProcessOptions = {},
): Promise<StartedMilter> {
  return start('scripted', opts, (dir) => {
    const scriptPath = path.join(dir, 'script.json')
    fs.writeFileSync(scriptPath, JSON.stringify(script, null, 2))
    return ['--script', scriptPath]
  })
}

export async function startGreylistMilter(opts: GreylistOptions = {}): Promise<StartedMilter> {
  return start('greylist', opts, () => ['--delay', String(opts.delaySec ?? 1)])
}

/** What test/milters/flood.py floods the triggering message with at end of message. */
export type PyFlood = 'addrcpt' | 'chgheader' | 'addheader' | 'replbody'

export interface FloodOptions extends MilterProcessOptions {
  flood: PyFlood
  /** Modifications to send (replbody: bytes of body). */
  count: number
  /** Flood the message whose envelope sender contains this (default 'flood@'). */
  trigger?: string
}

/** test/milters/flood.py: scripted.py's filter, flooding one message at end of message. */
export async function startFloodMilter(opts: FloodOptions): Promise<StartedMilter> {
  return start('flood', opts, () => [
    '--flood',
    opts.flood,
    '--count',
    String(opts.count),
    ...(opts.trigger !== undefined ? ['--trigger', opts.trigger] : []),
  ])
}

/** Stop every filter started by this module (for a mocha root afterEach). */
export async function stopAllMilters(): Promise<void> {
  await Promise.all([...registry].map((r) => stopRunning(r)))
}

async function start(
  kind: 'scripted' | 'greylist' | 'flood',
  opts: MilterProcessOptions,
  extraArgs: (dir: string) => string[],
): Promise<StartedMilter> {
  assertPymilterInstalled()
  const transport = opts.transport ?? 'inet'
  const attempts = transport === 'unix' || opts.port !== undefined ? 1 : PORT_ATTEMPTS
  let lastError: unknown
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await startOnce(kind, transport, opts, extraArgs)
    } catch (err) {
      // a free port can be taken between our probe and the filter's bind()
      lastError = err
      if (!(err instanceof Error) || !/cannot opensocket|Address already in use/i.test(err.message))
        break
    }
  }
  throw lastError
}

async function startOnce(
  kind: 'scripted' | 'greylist' | 'flood',
  transport: Transport,
  opts: MilterProcessOptions,
  extraArgs: (dir: string) => string[],
): Promise<StartedMilter> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `milter-${kind}-`))
  const logPath = path.join(dir, 'events.jsonl')
  let filterSpec: string
  let clientSpec: string
  if (transport === 'unix') {
    const sock = path.join(dir, 'milter.sock')
    filterSpec = clientSpec = `unix:${sock}`
  } else if (transport === 'inet6') {
    const port = opts.port ?? (await freePort('::1'))
    filterSpec = `inet6:${port}@[::1]`
    clientSpec = `inet6:${port}@::1`
  } else {
    const port = opts.port ?? (await freePort('127.0.0.1'))
    filterSpec = clientSpec = `inet:${port}@127.0.0.1`
  }

  const program = path.join(repoRoot(), 'test', 'milters', `${kind}.py`)
  const args = [program, '--socket', filterSpec, '--log', logPath, ...extraArgs(dir)]
  if (opts.timeoutSec !== undefined) args.push('--timeout', String(opts.timeoutSec))

  const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  let stdout = ''
  let exited = false
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (d: string) => (stderr += d))
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true
      resolve()
    })
    child.once('error', () => {
      exited = true
      resolve()
    })
  })
  const running: Running = {
    child,
    exited: exitedPromise,
    hasExited: () => exited,
    dir,
    stopping: null,
  }
  registry.add(running)
  installExitHook()

  try {
    await new Promise<void>((resolve, reject) => {
      let settled = false
      const finish = (err?: Error): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) reject(err)
        else resolve()
      }
      const timer = setTimeout(
        () =>
          finish(
            new Error(`${kind}.py did not print READY within ${READY_TIMEOUT_MS} ms: ${stderr}`),
          ),
        READY_TIMEOUT_MS,
      )
      child.stdout?.setEncoding('utf8')
      child.stdout?.on('data', (d: string) => {
        stdout += d
        if (/^READY$/m.test(stdout)) finish()
      })
      child.once('error', (err) => finish(new Error(`cannot run ${PYTHON}: ${err.message}`)))
      child.once('exit', (code, signal) =>
        finish(
          new Error(
            `${kind}.py exited before READY (code ${String(code)}, signal ${String(signal)}): ${stderr}`,
          ),
        ),
      )
    })
  } catch (err) {
    await stopRunning(running)
    throw err
  }

  const pid = child.pid
  if (pid === undefined) {
    await stopRunning(running)
    throw new Error(`${kind}.py has no pid`)
  }
  // A filter a test forgot to stop must not keep mocha alive; the exit hook
  // kills it.
  child.unref()
  unrefStream(child.stdout)
  unrefStream(child.stderr)

  const events = (): MilterEvent[] => readEvents(logPath)
  const milter: StartedMilter = {
    socket: clientSpec,
    pid,
    logPath,
    events,
    eventsOf: <K extends MilterEventName>(k: K) =>
      events().filter((e): e is EventOf<K> => e.event === k),
    waitForEvent: (pred: (e: MilterEvent) => boolean, timeoutMs = DEFAULT_EVENT_TIMEOUT_MS) =>
      waitFor(events, pred, timeoutMs, () => stderr),
    stderr: () => stderr,
    stop: () => stopRunning(running),
  }
  return milter
}

function readEvents(logPath: string): MilterEvent[] {
  let text: string
  try {
    text = fs.readFileSync(logPath, 'utf8')
  } catch {
    return []
  }
  const lines = text.split('\n')
  // a line without its newline may still be being written
  if (!text.endsWith('\n')) lines.pop()
  const out: MilterEvent[] = []
  for (const line of lines) {
    if (line.trim() === '') continue
    out.push(JSON.parse(line) as MilterEvent)
  }
  return out
}

async function waitFor(
  events: () => MilterEvent[],
  pred: (e: MilterEvent) => boolean,
  timeoutMs: number,
  stderr: () => string,
): Promise<MilterEvent> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const all = events()
    const hit = all.find(pred)
    if (hit !== undefined) return hit
    if (Date.now() >= deadline) {
      const seen = all.map((e) => `${e.seq}:${e.event}#${e.conn}`).join(' ')
      const err = stderr().trim()
      throw new Error(
        `no matching milter event within ${timeoutMs} ms; seen: ${seen || '(none)'}` +
          (err ? `; stderr: ${err}` : ''),
      )
    }
    await sleep(POLL_MS)
  }
}

async function stopRunning(r: Running): Promise<void> {
  r.stopping ??= (async () => {
    const pid = r.child.pid
    if (!r.hasExited() && pid !== undefined) {
      // keep the event loop alive until the exit is seen
      r.child.ref()
      signal(pid, 'SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const timedOut = await Promise.race([
        r.exited.then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), STOP_GRACE_MS))),
      ])
      clearTimeout(timer)
      if (timedOut && !r.hasExited()) {
        signal(pid, 'SIGKILL')
        await r.exited
      }
    }
    r.child.stdout?.destroy()
    r.child.stderr?.destroy()
    fs.rmSync(r.dir, { recursive: true, force: true })
    registry.delete(r)
  })()
  return r.stopping
}

function unrefStream(stream: NodeJS.ReadableStream | null): void {
  if (stream !== null && 'unref' in stream && typeof stream.unref === 'function') stream.unref()
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', () => {
    for (const r of registry) {
      const pid = r.child.pid
      if (!r.hasExited() && pid !== undefined) signal(pid, 'SIGKILL')
      try {
        fs.rmSync(r.dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

async function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
