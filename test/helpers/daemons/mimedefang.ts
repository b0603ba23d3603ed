/**
 * MIMEDefang for the interoperability tests: Debian's `mimedefang` package (3.3 in Debian 12),
 * run as our own child processes, offline.
 *
 * - `mimedefang-multiplexor -D` (foreground) with its socket and spool in a temp directory and
 *   the filter rules from a temp copy of test/fixtures/mimedefang/mimedefang-filter (`-F`);
 *   it runs the Perl workers (`mimedefang.pl -server`).
 * - `mimedefang -D -y -p inet:PORT@127.0.0.1 -m <multiplexor socket>`: the milter; `-y` makes it
 *   request its macros with SMFIR_SETSYMLIST.
 * - Both refuse to run as root: `-U defang` (the user the package creates) when the tests run as
 *   root, which then owns the temp directory; the current user otherwise.
 * - Both log to syslog only (nothing in a test container): start-up errors show as an early exit.
 *
 * Each process is started in its own process group and stopped by PID (SIGTERM; libmilter
 * needs up to ~5 s to notice), then SIGKILL to the group for anything left (Perl workers).
 * `stopAllMimeDefang()` stops every instance; a process 'exit' hook SIGKILLs what is left.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { REPO_ROOT, freePort } from '../paths'

export const MIMEDEFANG_BIN = '/usr/bin/mimedefang'
export const MULTIPLEXOR_BIN = '/usr/bin/mimedefang-multiplexor'
export const MIMEDEFANG_PL = '/usr/bin/mimedefang.pl'

/** The Debian 12 packages these tests need. */
export const MIMEDEFANG_PACKAGES = ['mimedefang']
const INSTALL_HINT = `install it: apt-get install --no-install-recommends ${MIMEDEFANG_PACKAGES.join(' ')}`

export const MIMEDEFANG_FILTER = path.join(
  REPO_ROOT,
  'test',
  'fixtures',
  'mimedefang',
  'mimedefang-filter',
)

/** The user the Debian package creates; MIMEDefang will not run as root. */
const DEBIAN_USER = 'defang'

const READY_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 10_000
const POLL_MS = 50
const PORT_ATTEMPTS = 3

/**
 * Throws (the tests must fail, not skip) when MIMEDefang is missing or unusable; returns its
 * version line, e.g. 'mimedefang version 3.3'.
 */
export function assertMimeDefangInstalled(): string {
  const missing = [MIMEDEFANG_BIN, MULTIPLEXOR_BIN, MIMEDEFANG_PL].filter((f) => !fs.existsSync(f))
  if (missing.length > 0) {
    throw new Error(`MIMEDefang interop tests: ${missing.join(', ')} not found; ${INSTALL_HINT}`)
  }
  const res = spawnSync(MIMEDEFANG_BIN, ['-v'], { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = /mimedefang version [\w.~+-]+/.exec(out)
  if (res.error !== undefined || !m) {
    throw new Error(
      `${MIMEDEFANG_BIN} -v failed (${res.error?.message ?? `exit ${String(res.status)}`}): ${out}; ${INSTALL_HINT}`,
    )
  }
  return m[0]
}

interface RunAs {
  user: string
  /** uid/gid to give the temp directory to (only when we are root). */
  owner?: { uid: number; gid: number }
}

/** `-U` user: 'defang' when root (the temp directory is given to it), else ourselves. */
function runAs(): RunAs {
  const uid = process.getuid?.()
  if (uid !== 0) return { user: os.userInfo().username }
  const entry = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f[0] === DEBIAN_USER)
  if (!entry || entry[2] === undefined || entry[3] === undefined) {
    throw new Error(
      `MIMEDefang interop tests: user ${DEBIAN_USER} not found (MIMEDefang will not run as root; ` +
        `the Debian package creates it); ${INSTALL_HINT}`,
    )
  }
  return { user: DEBIAN_USER, owner: { uid: Number(entry[2]), gid: Number(entry[3]) } }
}

function chownTree(dir: string, owner: { uid: number; gid: number }): void {
  fs.chownSync(dir, owner.uid, owner.gid)
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name)
    if (entry.isDirectory()) chownTree(p, owner)
    else fs.chownSync(p, owner.uid, owner.gid)
  }
}

// ---------------------------------------------------------------------------
// Child processes

interface Child {
  name: string
  child: ChildProcess
  exited: Promise<void>
  hasExited(): boolean
  exitInfo(): string
  output(): string
  stopping: Promise<void> | null
}

const children = new Set<Child>()
const dirs = new Set<string>()
/** The stop() of every running instance. */
const instances = new Set<() => Promise<void>>()
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
    for (const c of children) {
      const pid = c.child.pid
      if (pid !== undefined) signal(-pid, 'SIGKILL')
    }
    for (const dir of dirs) {
      try {
        fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function spawnChild(name: string, bin: string, args: string[], cwd: string): Child {
  const child = spawn(bin, args, { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
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
    child,
    exited: exitedPromise,
    hasExited: () => exited,
    exitInfo: () => info,
    output: () => output,
    stopping: null,
  }
  children.add(c)
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
      // what it left behind (the multiplexor's Perl workers)
      signal(-pid, 'SIGKILL')
    }
    c.child.stdout?.destroy()
    c.child.stderr?.destroy()
    children.delete(c)
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

function canConnect(to: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const s =
      'path' in to
        ? net.connect({ path: to.path })
        : net.connect({ host: '127.0.0.1', port: to.port })
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

/** Poll `ready()` until true; throws with the output if the process exits or times out. */
async function waitUntilReady(
  c: Child,
  what: string,
  ready: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS
  for (;;) {
    if (c.hasExited()) {
      throw new Error(
        `${c.name} exited before ${what} (${c.exitInfo()}; it logs to syslog only): ${c.output().trim()}`,
      )
    }
    if (await ready()) return
    if (Date.now() > deadline) {
      throw new Error(`${c.name} not ${what} within ${READY_TIMEOUT_MS} ms: ${c.output().trim()}`)
    }
    await sleep(POLL_MS)
  }
}

// ---------------------------------------------------------------------------
// MIMEDefang

export interface MimeDefangOptions {
  /** Filter rules file (default: the fixture). */
  filter?: string
  /** Extra `mimedefang` options (default none; `-y` is always given). */
  args?: string[]
}

export interface RunningMimeDefang {
  /** For milter.ini: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  /** PID of `mimedefang` (the milter). */
  readonly pid: number
  /** PID of `mimedefang-multiplexor`. */
  readonly multiplexorPid: number
  /** The `-U` user both run as. */
  readonly user: string
  /** The `mimedefang` command line (after the binary). */
  readonly args: readonly string[]
  /** The `mimedefang-multiplexor` command line (after the binary). */
  readonly multiplexorArgs: readonly string[]
  /** The version line, e.g. 'mimedefang version 3.3'. */
  readonly version: string
  /** Temp directory (filter copy, spool/ with the multiplexor socket). Removed by stop(). */
  readonly dir: string
  /** stdout/stderr of both so far (they log to syslog; this holds start-up errors only). */
  output(): string
  stop(): Promise<void>
}

async function startOnce(
  port: number,
  opts: MimeDefangOptions,
  version: string,
  as: RunAs,
): Promise<RunningMimeDefang> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mimedefang-'))
  dirs.add(dir)
  const spool = path.join(dir, 'spool')
  fs.mkdirSync(spool, { mode: 0o700 })
  const filter = path.join(dir, 'mimedefang-filter')
  fs.copyFileSync(opts.filter ?? MIMEDEFANG_FILTER, filter)
  if (as.owner) chownTree(dir, as.owner)
  const mxSocket = path.join(spool, 'mimedefang-multiplexor.sock')
  const socket = `inet:${port}@127.0.0.1`

  const multiplexorArgs = [
    '-D',
    '-U',
    as.user,
    '-s',
    mxSocket,
    '-z',
    spool,
    '-F',
    filter,
    // one Perl worker from the start (no activation delay), at most two
    '-m',
    '1',
    '-x',
    '2',
    '-w',
    '0',
  ]
  const args = [
    '-D',
    '-y',
    '-U',
    as.user,
    '-m',
    mxSocket,
    '-p',
    socket,
    '-z',
    spool,
    ...(opts.args ?? []),
  ]
  let multiplexor: Child | undefined
  let milter: Child | undefined
  const stop = async (): Promise<void> => {
    // the milter first: it talks to the multiplexor
    if (milter) await stopChild(milter)
    if (multiplexor) await stopChild(multiplexor)
    if (process.env['KEEP_MIMEDEFANG_DIR']) {
      process.stderr.write(`KEEP_MIMEDEFANG_DIR: MIMEDefang dir kept at ${dir}\n`)
    } else {
      fs.rmSync(dir, { recursive: true, force: true })
    }
    dirs.delete(dir)
    instances.delete(stop)
  }
  instances.add(stop)
  try {
    multiplexor = spawnChild('mimedefang-multiplexor', MULTIPLEXOR_BIN, multiplexorArgs, dir)
    const mx = multiplexor
    await waitUntilReady(mx, `listening on ${mxSocket}`, () => canConnect({ path: mxSocket }))
    milter = spawnChild('mimedefang', MIMEDEFANG_BIN, args, dir)
    const md = milter
    await waitUntilReady(md, `listening on ${socket}`, () => canConnect({ port }))
  } catch (err) {
    await stop()
    throw err
  }
  detachFromEventLoop(multiplexor)
  detachFromEventLoop(milter)
  const mx = multiplexor
  const md = milter
  return {
    socket,
    port,
    pid: md.child.pid!,
    multiplexorPid: mx.child.pid!,
    user: as.user,
    args,
    multiplexorArgs,
    version,
    dir,
    output: () => `${mx.output()}${md.output()}`,
    stop,
  }
}

/**
 * Start mimedefang-multiplexor and mimedefang on 127.0.0.1 (free port); resolves once the
 * milter accepts connections.
 */
export async function startMimeDefang(opts: MimeDefangOptions = {}): Promise<RunningMimeDefang> {
  const version = assertMimeDefangInstalled()
  const as = runAs()
  // a broken filter otherwise only shows as workers dying, logged to syslog
  const check = spawnSync(MIMEDEFANG_PL, ['-f', opts.filter ?? MIMEDEFANG_FILTER, '-test'], {
    encoding: 'utf8',
  })
  if (check.status !== 0) {
    throw new Error(`mimedefang.pl -test failed: ${check.stdout ?? ''}${check.stderr ?? ''}`)
  }
  let lastError: unknown
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    const port = await freePort('127.0.0.1')
    try {
      return await startOnce(port, opts, version, as)
    } catch (err) {
      lastError = err
      // mimedefang exits (logging to syslog only) when its port was taken after our probe
      if (!(err instanceof Error) || !/^mimedefang exited/.test(err.message)) break
      if (!(await canConnect({ port }))) break
    }
  }
  throw lastError
}

/** Stop every MIMEDefang started by this module (for `after()` hooks). */
export async function stopAllMimeDefang(): Promise<void> {
  await Promise.all([...instances].map((stop) => stop()))
}
