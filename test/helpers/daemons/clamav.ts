/**
 * ClamAV for the interoperability tests: Debian's `clamd` (clamav-daemon) and `clamav-milter`,
 * run as our own child processes, offline: no freshclam, no official database. clamd loads a
 * database the tests write into a temp directory (hash signatures, `.hdb`: `md5:size:name`),
 * so it starts in well under a second.
 *
 * - clamd: `Foreground yes`, a unix socket in its temp directory, `LogFile` there too.
 * - clamav-milter: `Foreground yes`, `MilterSocket inet:PORT@127.0.0.1`, `ClamdSocket
 *   unix:<clamd socket>`, `LogFile` in its temp directory, plus the test's settings
 *   (OnInfected, AddHeader, RejectMsg...).
 * No `User` setting: both keep the user that started them (root in CI).
 *
 * Every process is started in its own process group and stopped by PID (SIGTERM, SIGKILL to
 * the group after a grace period). `stopAllClamAv()` stops every instance; a process 'exit'
 * hook SIGKILLs what is left.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { REPO_ROOT, freePort } from '../paths'

export const CLAMD_BIN = '/usr/sbin/clamd'
export const CLAMAV_MILTER_BIN = '/usr/sbin/clamav-milter'

/** The Debian 12 packages these tests need. */
export const CLAMAV_PACKAGES = ['clamav-daemon', 'clamav-milter']
const INSTALL_HINT = `install them: apt-get install --no-install-recommends ${CLAMAV_PACKAGES.join(' ')}`

export const CLAMAV_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'clamav')

const READY_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 5_000
const POLL_MS = 25
const PORT_ATTEMPTS = 3

/**
 * Throws (the tests must fail, not skip) when clamd or clamav-milter is missing; returns
 * clamd's version, e.g. 'ClamAV 1.4.6'.
 */
export function assertClamAvInstalled(): string {
  const missing = [CLAMD_BIN, CLAMAV_MILTER_BIN].filter((f) => !fs.existsSync(f))
  if (missing.length > 0) {
    throw new Error(`ClamAV interop tests: ${missing.join(', ')} not found; ${INSTALL_HINT}`)
  }
  const res = spawnSync(CLAMD_BIN, ['--version'], { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = /ClamAV [\w.~+-]+/.exec(out)
  if (res.error !== undefined || !m) {
    throw new Error(
      `${CLAMD_BIN} --version failed (${res.error?.message ?? `exit ${String(res.status)}`}): ${out}; ${INSTALL_HINT}`,
    )
  }
  return m[0]
}

// ---------------------------------------------------------------------------
// Signatures

export interface HashSignature {
  /** Signature name; clamd reports it with '.UNOFFICIAL' appended (not an official database). */
  name: string
  /** The exact bytes of the file (e.g. a decoded attachment) that the signature matches. */
  content: Buffer
}

/** One line of a `.hdb` database: `md5:size:name` (ClamAV's whole-file hash signature). */
export function hdbLine(sig: HashSignature): string {
  const md5 = createHash('md5').update(sig.content).digest('hex')
  return `${md5}:${sig.content.length}:${sig.name}\n`
}

// ---------------------------------------------------------------------------
// Child processes

interface Child {
  name: string
  /** Temp directory of this instance, removed once it has stopped. */
  dir: string
  child: ChildProcess
  exited: Promise<void>
  hasExited(): boolean
  exitInfo(): string
  output(): string
  stopping: Promise<void> | null
}

const registry = new Set<Child>()
let exitHookInstalled = false

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
    for (const c of registry) {
      const pid = c.child.pid
      if (pid !== undefined) signal(-pid, 'SIGKILL')
      try {
        fs.rmSync(c.dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function spawnChild(name: string, bin: string, args: string[], dir: string): Child {
  const child = spawn(bin, args, { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  let exited = false
  let info = ''
  child.stdout?.setEncoding('utf8')
  child.stderr?.setEncoding('utf8')
  child.stdout?.on('data', (d: string) => (output += d))
  child.stderr?.on('data', (d: string) => (output += d))
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, sig) => {
      exited = true
      info = `exit code ${String(code)}, signal ${String(sig)}`
      resolve()
    })
    child.once('error', (err) => {
      exited = true
      info = err.message
      resolve()
    })
  })
  const c: Child = {
    name,
    dir,
    child,
    exited: exitedPromise,
    hasExited: () => exited,
    exitInfo: () => info,
    output: () => output,
    stopping: null,
  }
  registry.add(c)
  installExitHook()
  return c
}

/** SIGTERM by PID; SIGKILL to its process group after the grace period; then the group again. */
function stopChild(c: Child): Promise<void> {
  c.stopping ??= (async () => {
    const pid = c.child.pid
    if (pid !== undefined) {
      if (!c.hasExited()) {
        c.child.ref()
        signal(pid, 'SIGTERM')
        let timer: NodeJS.Timeout | undefined
        const timedOut = await Promise.race([
          c.exited.then(() => false),
          new Promise<boolean>(
            (resolve) => (timer = setTimeout(() => resolve(true), STOP_GRACE_MS)),
          ),
        ])
        clearTimeout(timer)
        if (timedOut) signal(-pid, 'SIGKILL')
        await c.exited
      }
      signal(-pid, 'SIGKILL')
    }
    c.child.stdout?.destroy()
    c.child.stderr?.destroy()
    fs.rmSync(c.dir, { recursive: true, force: true })
    registry.delete(c)
  })()
  return c.stopping
}

/** Let mocha exit even if a test forgot to stop an instance (the exit hook kills it). */
function detachFromEventLoop(c: Child): void {
  c.child.unref()
  for (const s of [c.child.stdout, c.child.stderr]) {
    if (s !== null && 'unref' in s && typeof s.unref === 'function') s.unref()
  }
}

function readLog(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

/** Poll `ready()` until true; throws with the logs if the process exits or times out. */
async function waitUntilReady(
  c: Child,
  what: string,
  ready: () => Promise<boolean>,
  logs: () => string,
): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS
  for (;;) {
    if (c.hasExited()) {
      throw new Error(`${c.name} exited before ${what} (${c.exitInfo()}):\n${logs()}`)
    }
    if (await ready()) return
    if (Date.now() > deadline) {
      throw new Error(`${c.name} not ${what} within ${READY_TIMEOUT_MS} ms:\n${logs()}`)
    }
    await sleep(POLL_MS)
  }
}

function configText(settings: Record<string, string>): string {
  return Object.entries(settings)
    .map(([k, v]) => `${k} ${v}\n`)
    .join('')
}

// ---------------------------------------------------------------------------
// clamd

/**
 * Send `command` (e.g. 'zPING', 'zVERSION') or, with `data`, scan `data` with zINSTREAM on the
 * clamd unix socket; resolves with clamd's reply without the trailing NUL, e.g. 'PONG',
 * 'stream: OK', 'stream: Name.UNOFFICIAL FOUND'.
 */
export function clamdCommand(socketPath: string, command: string, data?: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath)
    const chunks: Buffer[] = []
    s.setTimeout(10_000, () => s.destroy(new Error(`clamd ${command}: timeout`)))
    s.on('data', (d: Buffer) => chunks.push(d))
    s.once('error', reject)
    s.once('close', () => resolve(Buffer.concat(chunks).toString('utf8').replace(/\0$/, '')))
    s.once('connect', () => {
      if (data === undefined) {
        s.end(`${command}\0`)
        return
      }
      const len = Buffer.alloc(4)
      len.writeUInt32BE(data.length)
      s.end(Buffer.concat([Buffer.from('zINSTREAM\0'), len, data, Buffer.alloc(4)]))
    })
  })
}

export interface ClamdOptions {
  /** Hash signatures written to `<DatabaseDirectory>/test.hdb` (at least one). */
  signatures: HashSignature[]
}

export interface RunningClamd {
  /** Absolute path of clamd's unix socket (`LocalSocket`). */
  readonly socketPath: string
  /** For clamav-milter's ClamdSocket: 'unix:<socketPath>'. */
  readonly clamdSocket: string
  readonly pid: number
  readonly dir: string
  /** The clamd.conf text it was started with. */
  readonly config: string
  /** clamd's log file (one "stream(...): NAME FOUND" / "OK" line per scan with LogClean). */
  log(): string
  /** Scan `data` directly (zINSTREAM), bypassing the milter. */
  scan(data: Buffer): Promise<string>
  stop(): Promise<void>
}

/** Start clamd with a database of `signatures`; resolves once it answers PING with PONG. */
export async function startClamd(opts: ClamdOptions): Promise<RunningClamd> {
  assertClamAvInstalled()
  if (opts.signatures.length === 0) throw new Error('startClamd: no signatures')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'clamd-'))
  const dbDir = path.join(dir, 'db')
  const tmpDir = path.join(dir, 'tmp')
  fs.mkdirSync(dbDir)
  fs.mkdirSync(tmpDir)
  fs.writeFileSync(path.join(dbDir, 'test.hdb'), opts.signatures.map(hdbLine).join(''))
  const socketPath = path.join(dir, 'clamd.sock')
  const logFile = path.join(dir, 'clamd.log')
  const config = configText({
    Foreground: 'yes',
    LocalSocket: socketPath,
    PidFile: path.join(dir, 'clamd.pid'),
    DatabaseDirectory: dbDir,
    TemporaryDirectory: tmpDir,
    LogFile: logFile,
    LogTime: 'yes',
    LogClean: 'yes',
    LogVerbose: 'yes',
  })
  const configFile = path.join(dir, 'clamd.conf')
  fs.writeFileSync(configFile, config)
  const c = spawnChild('clamd', CLAMD_BIN, ['--config-file', configFile], dir)
  const logs = (): string => `${readLog(logFile)}${c.output()}\nconfig:\n${config}`
  try {
    await waitUntilReady(
      c,
      `answering PING on ${socketPath}`,
      async () => {
        if (!fs.existsSync(socketPath)) return false
        try {
          return (await clamdCommand(socketPath, 'zPING')) === 'PONG'
        } catch {
          return false
        }
      },
      logs,
    )
  } catch (err) {
    await stopChild(c)
    throw err
  }
  detachFromEventLoop(c)
  return {
    socketPath,
    clamdSocket: `unix:${socketPath}`,
    pid: c.child.pid!,
    dir,
    config,
    log: () => readLog(logFile),
    scan: (data) => clamdCommand(socketPath, 'zINSTREAM', data),
    stop: () => stopChild(c),
  }
}

// ---------------------------------------------------------------------------
// clamav-milter

export interface ClamavMilterOptions {
  /** clamd's socket for `ClamdSocket`: 'unix:/path' or 'tcp:host:port'. */
  clamdSocket: string
  /**
   * clamav-milter.conf settings added to (or replacing) the ones this helper writes, e.g.
   * { OnInfected: 'Reject', AddHeader: 'Replace', RejectMsg: '"Virus found: %v"' }.
   */
  settings?: Record<string, string>
}

export interface RunningClamavMilter {
  /** For milter.ini: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  readonly pid: number
  /** The clamav-milter.conf text it was started with. */
  readonly config: string
  /** clamav-milter's log file. */
  log(): string
  stop(): Promise<void>
}

/** Start clamav-milter on 127.0.0.1 (free port); resolves once it accepts connections. */
export async function startClamavMilter(opts: ClamavMilterOptions): Promise<RunningClamavMilter> {
  assertClamAvInstalled()
  let lastError: unknown
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    try {
      return await startClamavMilterOnce(opts, await freePort('127.0.0.1'))
    } catch (err) {
      // a free port can be taken between our probe and clamav-milter's bind()
      lastError = err
      if (!(err instanceof Error) || !/in use/i.test(err.message)) break
    }
  }
  throw lastError
}

async function startClamavMilterOnce(
  opts: ClamavMilterOptions,
  port: number,
): Promise<RunningClamavMilter> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'clamav-milter-'))
  const socket = `inet:${port}@127.0.0.1`
  const logFile = path.join(dir, 'clamav-milter.log')
  const config = configText({
    MilterSocket: socket,
    ClamdSocket: opts.clamdSocket,
    Foreground: 'yes',
    PidFile: path.join(dir, 'clamav-milter.pid'),
    TemporaryDirectory: dir,
    LogFile: logFile,
    LogTime: 'yes',
    LogVerbose: 'yes',
    LogInfected: 'Full',
    LogClean: 'Full',
    OnClean: 'Accept',
    OnFail: 'Defer',
    ReadTimeout: '30',
    ...opts.settings,
  })
  const configFile = path.join(dir, 'clamav-milter.conf')
  fs.writeFileSync(configFile, config)
  const c = spawnChild('clamav-milter', CLAMAV_MILTER_BIN, ['--config-file', configFile], dir)
  const logs = (): string => `${readLog(logFile)}${c.output()}\nconfig:\n${config}`
  try {
    await waitUntilReady(
      c,
      `listening on ${socket}`,
      () =>
        new Promise<boolean>((resolve) => {
          const s = net.connect({ host: '127.0.0.1', port })
          s.once('connect', () => {
            s.destroy()
            resolve(true)
          })
          s.once('error', () => {
            s.destroy()
            resolve(false)
          })
        }),
      logs,
    )
  } catch (err) {
    await stopChild(c)
    throw err
  }
  detachFromEventLoop(c)
  return {
    socket,
    port,
    pid: c.child.pid!,
    config,
    log: () => readLog(logFile),
    stop: () => stopChild(c),
  }
}

/** Stop every clamd and clamav-milter started by this module (for `after()` hooks). */
export async function stopAllClamAv(): Promise<void> {
  await Promise.all([...registry].map((c) => stopChild(c)))
}
