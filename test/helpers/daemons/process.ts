/**
 * Child-process handling shared by the helpers that run real daemons for the tests (spamd,
 * clamd, rspamd, MIMEDefang, OpenDKIM...): spawn with stdout/stderr captured, wait until a TCP
 * port or unix socket accepts connections (with a deadline, the log tail in the error), stop by
 * PID (SIGTERM, SIGKILL after a grace period, wait for the exit), per-helper registries for
 * `stopAll...()`, a process 'exit' hook that SIGKILLs whatever is left, temp directories,
 * "binary not found" checks and free-port retries.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { freePort } from '../paths'

// ---------------------------------------------------------------------------
// Small utilities

/** Resolve after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** The last `lines` lines of `text` (trimmed), for error messages. */
export function tail(text: string, lines = 40): string {
  return text.trim().split('\n').slice(-lines).join('\n')
}

/** The contents of a log file, or '' when it does not exist (yet). */
export function readLog(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

/** Send `sig` to `pid` (negative: a process group); ignores processes that are already gone. */
export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

/**
 * Resolves true when a TCP connection to `port` on `host` (default 127.0.0.1), or to the unix
 * socket `path`, is accepted; false when it is refused. The connection is closed at once.
 */
export function canConnect(
  to: { port: number; host?: string } | { path: string },
): Promise<boolean> {
  return new Promise((resolve) => {
    const s =
      'path' in to
        ? net.connect({ path: to.path })
        : net.connect({ host: to.host ?? '127.0.0.1', port: to.port })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => {
      s.destroy()
      resolve(false)
    })
  })
}

// ---------------------------------------------------------------------------
// Installation checks

/** The hint appended to "not found" errors: the apt-get command that installs `packages`. */
export function installHint(packages: readonly string[]): string {
  const which = packages.length === 1 ? 'it' : 'them'
  return `install ${which}: apt-get install --no-install-recommends ${packages.join(' ')}`
}

/**
 * Throws (the tests must fail, not skip) when one of `binaries` is missing, naming `suite` and
 * how to install `packages`.
 */
export function assertBinariesExist(
  suite: string,
  binaries: readonly string[],
  packages: readonly string[],
): void {
  const missing = binaries.filter((f) => !fs.existsSync(f))
  if (missing.length > 0) {
    throw new Error(`${suite}: ${missing.join(', ')} not found; ${installHint(packages)}`)
  }
}

/**
 * Run `bin args` (e.g. `--version`) and return the first match of `pattern` in its output;
 * throws with the output and the install hint for `packages` when it fails or does not match.
 */
export function versionLine(
  bin: string,
  args: readonly string[],
  pattern: RegExp,
  packages: readonly string[],
): string {
  const res = spawnSync(bin, args, { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = pattern.exec(out)
  if (res.error !== undefined || !m) {
    const why = res.error?.message ?? `exit ${String(res.status)}`
    throw new Error(`${bin} ${args.join(' ')} failed (${why}): ${out}; ${installHint(packages)}`)
  }
  return m[0]
}

// ---------------------------------------------------------------------------
// Exit hook and temp directories

/** Every daemon process not stopped yet, across all helpers (for the exit hook). */
const liveProcesses = new Set<DaemonProcess>()
/** Every temp directory not removed yet, across all helpers (for the exit hook). */
const liveDirs = new Set<string>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', () => {
    for (const p of liveProcesses) p.kill()
    for (const dir of liveDirs) {
      try {
        fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

/**
 * Create a fresh directory under os.tmpdir() named `<prefix>XXXXXX`; the process 'exit' hook
 * removes it if `removeTempDir()` was not called.
 */
export function makeTempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  liveDirs.add(dir)
  installExitHook()
  return dir
}

/**
 * Remove a directory made by `makeTempDir()`. When the environment variable `keepEnv` is set it
 * is kept (and where it is printed to stderr) for debugging.
 */
export function removeTempDir(dir: string, keepEnv?: string): void {
  if (keepEnv !== undefined && process.env[keepEnv]) {
    process.stderr.write(`${keepEnv}: directory kept at ${dir}\n`)
  } else {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  liveDirs.delete(dir)
}

// ---------------------------------------------------------------------------
// Registries

/** Anything a helper can stop: a daemon process, or an instance made of several. */
export interface Stoppable {
  stop(): Promise<void>
}

/** The running instances of one helper module, for its `stopAll...()` (an `after()` hook). */
export class DaemonRegistry<T extends Stoppable = Stoppable> {
  private readonly members = new Set<T>()

  /** Track `member` until `delete()`. */
  add(member: T): void {
    this.members.add(member)
  }

  /** Stop tracking `member` (it has stopped). */
  delete(member: T): void {
    this.members.delete(member)
  }

  /** Stop every member still tracked, concurrently. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.members].map((m) => m.stop()))
  }
}

// ---------------------------------------------------------------------------
// Daemon processes

/** How to start a daemon with `DaemonProcess.spawn()`. */
export interface DaemonSpawnOptions {
  /** Name used in error messages, e.g. 'spamd'. */
  name: string
  bin: string
  args: readonly string[]
  cwd: string
  /** How long stop() waits after SIGTERM before SIGKILL. */
  stopGraceMs: number
  /**
   * Start it in its own process group (default true): stop() and the exit hook then SIGKILL the
   * whole group, so children it left behind (workers, helpers) go too. With false only the PID
   * is signalled.
   */
  processGroup?: boolean
  /** A directory (from `makeTempDir()`) that stop() removes once the process has exited. */
  dir?: string
  /** With `dir`: an environment variable that, when set, keeps the directory (debugging). */
  keepDirEnv?: string
  /** Registry of the helper module that started it; stop() takes it out again. */
  registry?: DaemonRegistry
}

/** How long and how often `DaemonProcess.waitUntilReady()` polls. */
export interface ReadyOptions {
  timeoutMs: number
  pollMs: number
  /** What goes after the error message (default: the tail of the process's stdout/stderr). */
  details?: () => string
}

/**
 * A daemon run as a child process of the tests, stdout and stderr captured (`output()`),
 * stopped by PID (`stop()`), killed by the process 'exit' hook if never stopped.
 */
export class DaemonProcess implements Stoppable {
  readonly name: string
  readonly child: ChildProcess
  /** Resolves once the process has exited (or failed to start). */
  readonly exited: Promise<void>
  private readonly opts: DaemonSpawnOptions
  private readonly group: boolean
  private out = ''
  private exitDescription: string | null = null
  private stopping: Promise<void> | null = null

  private constructor(opts: DaemonSpawnOptions) {
    this.opts = opts
    this.name = opts.name
    this.group = opts.processGroup ?? true
    this.child = spawn(opts.bin, [...opts.args], {
      cwd: opts.cwd,
      detached: this.group,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child.stdout?.setEncoding('utf8')
    this.child.stderr?.setEncoding('utf8')
    this.child.stdout?.on('data', (d: string) => (this.out += d))
    this.child.stderr?.on('data', (d: string) => (this.out += d))
    this.exited = new Promise<void>((resolve) => {
      this.child.once('exit', (code, sig) => {
        this.exitDescription = `exit code ${String(code)}, signal ${String(sig)}`
        resolve()
      })
      this.child.once('error', (err) => {
        this.exitDescription = err.message
        resolve()
      })
    })
  }

  /** Start `opts.bin` with stdout/stderr captured; registers it for stopAll and the exit hook. */
  static spawn(opts: DaemonSpawnOptions): DaemonProcess {
    const p = new DaemonProcess(opts)
    liveProcesses.add(p)
    opts.registry?.add(p)
    installExitHook()
    return p
  }

  /** The PID; throws if the process could not be started. */
  get pid(): number {
    const pid = this.child.pid
    if (pid === undefined) throw new Error(`${this.name} has no pid (${this.exitInfo()})`)
    return pid
  }

  /** Everything it wrote to stdout and stderr so far. */
  output(): string {
    return this.out
  }

  /** Whether it has exited (or failed to start). */
  hasExited(): boolean {
    return this.exitDescription !== null
  }

  /** How it exited, e.g. 'exit code 1, signal null'; '' while it runs. */
  exitInfo(): string {
    return this.exitDescription ?? ''
  }

  /**
   * Poll `ready()` every `pollMs` until it resolves true. Throws `<name> exited before <what>`
   * if the process exits first, `<name> not <what> within <timeoutMs> ms` at the deadline, both
   * followed by `details()` (default: the tail of its output).
   */
  async waitUntilReady(
    what: string,
    ready: () => boolean | Promise<boolean>,
    opts: ReadyOptions,
  ): Promise<void> {
    const details = opts.details ?? (() => tail(this.out))
    const deadline = Date.now() + opts.timeoutMs
    for (;;) {
      if (this.hasExited()) {
        throw new Error(`${this.name} exited before ${what} (${this.exitInfo()}):\n${details()}`)
      }
      if (await ready()) return
      if (Date.now() > deadline) {
        throw new Error(`${this.name} not ${what} within ${opts.timeoutMs} ms:\n${details()}`)
      }
      await sleep(opts.pollMs)
    }
  }

  /**
   * `waitUntilReady()`, then `detach()`: the started daemon no longer keeps mocha alive. When it
   * does not become ready, stop() it and rethrow.
   */
  async startedWhen(
    what: string,
    ready: () => boolean | Promise<boolean>,
    opts: ReadyOptions,
  ): Promise<void> {
    try {
      await this.waitUntilReady(what, ready, opts)
    } catch (err) {
      await this.stop()
      throw err
    }
    this.detach()
  }

  /** Let mocha exit even if a test forgot to stop it (the exit hook kills it). */
  detach(): void {
    this.child.unref()
    for (const s of [this.child.stdout, this.child.stderr]) {
      if (s !== null && 'unref' in s && typeof s.unref === 'function') s.unref()
    }
  }

  /** SIGKILL now, without waiting (its process group, if it has one). For the exit hook. */
  kill(): void {
    const pid = this.child.pid
    if (pid === undefined) return
    if (this.group) signal(-pid, 'SIGKILL')
    else if (!this.hasExited()) signal(pid, 'SIGKILL')
  }

  /**
   * SIGTERM by PID; SIGKILL after the grace period; wait for the exit; then SIGKILL the process
   * group (what it left behind). Removes `dir` and unregisters it. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const pid = this.child.pid
      if (pid !== undefined) {
        if (!this.hasExited()) {
          // keep the event loop alive until the exit is seen
          this.child.ref()
          signal(pid, 'SIGTERM')
          let timer: NodeJS.Timeout | undefined
          const timedOut = await Promise.race([
            this.exited.then(() => false),
            new Promise<boolean>(
              (resolve) => (timer = setTimeout(() => resolve(true), this.opts.stopGraceMs)),
            ),
          ])
          clearTimeout(timer)
          if (timedOut) this.kill()
          await this.exited
        }
        if (this.group) signal(-pid, 'SIGKILL')
      }
      this.child.stdout?.destroy()
      this.child.stderr?.destroy()
      if (this.opts.dir !== undefined) removeTempDir(this.opts.dir, this.opts.keepDirEnv)
      liveProcesses.delete(this)
      this.opts.registry?.delete(this)
    })()
    return this.stopping
  }
}

// ---------------------------------------------------------------------------
// Free ports

/** How `withFreePort()` picks ports and how often it tries. */
export interface FreePortOptions {
  /** Tries with a fresh port each (default 3). */
  attempts?: number
  /** Use this port, once, instead of free ones. */
  port?: number | undefined
}

/**
 * `start(port)` with a port that was free on 127.0.0.1 a moment ago; another process can take it
 * before the daemon binds it, so when `isPortClash(err, port)` says that is why `start` failed,
 * try again with a fresh port. Throws the last error.
 */
export async function withFreePort<T>(
  start: (port: number) => Promise<T>,
  isPortClash: (err: Error, port: number) => boolean | Promise<boolean>,
  opts: FreePortOptions = {},
): Promise<T> {
  const attempts = opts.port === undefined ? (opts.attempts ?? 3) : 1
  let lastError: unknown
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const port = opts.port ?? (await freePort('127.0.0.1'))
    try {
      return await start(port)
    } catch (err) {
      lastError = err
      if (!(err instanceof Error) || !(await isPortClash(err, port))) break
    }
  }
  throw lastError
}
