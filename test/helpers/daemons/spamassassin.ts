/**
 * SpamAssassin for the interoperability tests: Debian's `spamd` (spamassassin 4) and
 * `spamass-milter`, run as our own child processes on 127.0.0.1, offline.
 *
 * - spamd: foreground (no -d), `-L` (local tests only), `-x` (no per-user config), site
 *   configuration from a temp copy of test/fixtures/spamassassin (offline plugins only, Bayes
 *   off, a local test rule), the rules shipped in /usr/share/spamassassin; logs to stderr.
 * - spamass-milter: foreground (no -f), `-p inet:PORT@127.0.0.1`, its own options, and after
 *   `--` the spamc options `-d 127.0.0.1 -p <spamd port>`. It logs to syslog only.
 *
 * Every process is started in its own process group and stopped by PID (SIGTERM, SIGKILL to
 * the group after a grace period, so spamd's children and spamass-milter's spamc go too).
 * `stopAllSpamAssassin()` stops every instance; a process 'exit' hook SIGKILLs what is left.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { REPO_ROOT, freePort } from '../paths'

export const SPAMD_BIN = '/usr/sbin/spamd'
export const SPAMC_BIN = '/usr/bin/spamc'
export const SPAMASS_MILTER_BIN = '/usr/sbin/spamass-milter'

/** The Debian 12 packages these tests need. */
export const SPAMASSASSIN_PACKAGES = ['spamassassin', 'spamd', 'spamc', 'spamass-milter']
const INSTALL_HINT = `install them: apt-get install --no-install-recommends ${SPAMASSASSIN_PACKAGES.join(' ')}`

export const SPAMASSASSIN_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'spamassassin')

const READY_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 5_000
const POLL_MS = 50
const PORT_ATTEMPTS = 3

/**
 * Throws (the tests must fail, not skip) when spamd, spamc or spamass-milter is missing;
 * returns spamd's version line, e.g. 'SpamAssassin Server version 4.0.1'.
 */
export function assertSpamAssassinInstalled(): string {
  const missing = [SPAMD_BIN, SPAMC_BIN, SPAMASS_MILTER_BIN].filter((f) => !fs.existsSync(f))
  if (missing.length > 0) {
    throw new Error(`SpamAssassin interop tests: ${missing.join(', ')} not found; ${INSTALL_HINT}`)
  }
  const res = spawnSync(SPAMD_BIN, ['--version'], { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = /SpamAssassin Server version [\w.-]+/.exec(out)
  if (res.error !== undefined || !m) {
    throw new Error(
      `${SPAMD_BIN} --version failed (${res.error?.message ?? `exit ${String(res.status)}`}): ${out}; ${INSTALL_HINT}`,
    )
  }
  return m[0]
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
      // children it left behind (spamd's preforked children, a spamc of spamass-milter)
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

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port })
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
      throw new Error(`${c.name} exited before ${what} (${c.exitInfo()}): ${c.output().trim()}`)
    }
    if (await ready()) return
    if (Date.now() > deadline) {
      throw new Error(`${c.name} not ${what} within ${READY_TIMEOUT_MS} ms: ${c.output().trim()}`)
    }
    await sleep(POLL_MS)
  }
}

async function withFreePort<T>(start: (port: number) => Promise<T>): Promise<T> {
  let lastError: unknown
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    try {
      return await start(await freePort('127.0.0.1'))
    } catch (err) {
      // a free port can be taken between our probe and the daemon's bind()
      lastError = err
      if (
        !(err instanceof Error) ||
        !/address already in use|Could not create listening/i.test(err.message)
      ) {
        break
      }
    }
  }
  throw lastError
}

// ---------------------------------------------------------------------------
// spamd

export interface RunningSpamd {
  readonly port: number
  readonly pid: number
  /** Temp directory: site configuration (`site/`), pid file. Removed by stop(). */
  readonly dir: string
  /** spamd's log (stderr) so far: one "spamd: result: Y|. SCORE - TESTS ..." line per check. */
  output(): string
  stop(): Promise<void>
}

/**
 * Start spamd on 127.0.0.1 (free port) with the fixture site configuration; resolves once it
 * logged "server started" and accepts connections.
 */
export async function startSpamd(): Promise<RunningSpamd> {
  assertSpamAssassinInstalled()
  return withFreePort(async (port) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spamd-'))
    // spamd started as root reads its configuration as nobody (it falls back to nobody when not
    // given -u): mkdtemp's 0700 would hide it ("no loaded plugin implements 'check_main'")
    fs.chmodSync(dir, 0o755)
    const site = path.join(dir, 'site')
    fs.cpSync(SPAMASSASSIN_FIXTURES, site, { recursive: true })
    const pidFile = path.join(dir, 'spamd.pid')
    const args = [
      '--local', // no DNS, no network tests
      '--nouser-config',
      `--siteconfigpath=${site}`,
      `--listen=127.0.0.1:${port}`,
      '--ipv4-only',
      `--pidfile=${pidFile}`,
      '--syslog=stderr',
      '--max-children=2',
      '--min-children=1',
    ]
    const c = spawnChild('spamd', SPAMD_BIN, args, dir)
    try {
      await waitUntilReady(c, `listening on 127.0.0.1:${port}`, async () =>
        /server started on/.test(c.output()) ? canConnect(port) : false,
      )
    } catch (err) {
      await stopChild(c)
      throw err
    }
    detachFromEventLoop(c)
    return {
      port,
      pid: c.child.pid!,
      dir,
      output: () => c.output(),
      stop: () => stopChild(c),
    }
  })
}

// ---------------------------------------------------------------------------
// spamass-milter

export interface SpamassMilterOptions {
  /** The spamd that spamc (run by spamass-milter for every message) talks to. */
  spamdPort: number
  /** spamass-milter options before `--`, e.g. ['-r', '15'] or ['-m']. */
  args?: string[]
}

export interface RunningSpamassMilter {
  /** For milter.ini: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  readonly pid: number
  /** The full command line it was started with (after the binary). */
  readonly args: readonly string[]
  /** stdout/stderr so far (spamass-milter logs to syslog; this holds start-up errors only). */
  output(): string
  stop(): Promise<void>
}

/** Start spamass-milter on 127.0.0.1 (free port); resolves once it accepts connections. */
export async function startSpamassMilter(
  opts: SpamassMilterOptions,
): Promise<RunningSpamassMilter> {
  assertSpamAssassinInstalled()
  return withFreePort(async (port) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spamass-milter-'))
    const socket = `inet:${port}@127.0.0.1`
    const args = [
      '-p',
      socket,
      '-P',
      path.join(dir, 'spamass-milter.pid'),
      ...(opts.args ?? []),
      '--',
      '-d',
      '127.0.0.1',
      '-p',
      String(opts.spamdPort),
    ]
    const c = spawnChild('spamass-milter', SPAMASS_MILTER_BIN, args, dir)
    try {
      await waitUntilReady(c, `listening on ${socket}`, () => canConnect(port))
    } catch (err) {
      await stopChild(c)
      throw err
    }
    detachFromEventLoop(c)
    return {
      socket,
      port,
      pid: c.child.pid!,
      args,
      output: () => c.output(),
      stop: () => stopChild(c),
    }
  })
}

/** Stop every spamd and spamass-milter started by this module (for `after()` hooks). */
export async function stopAllSpamAssassin(): Promise<void> {
  await Promise.all([...registry].map((c) => stopChild(c)))
}
