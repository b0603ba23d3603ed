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
import * as fs from 'node:fs'
import * as path from 'node:path'

import { REPO_ROOT } from '../paths'
import {
  DaemonProcess,
  DaemonRegistry,
  assertBinariesExist,
  canConnect,
  makeTempDir,
  versionLine,
  withFreePort,
} from './process'

export const SPAMD_BIN = '/usr/sbin/spamd'
export const SPAMC_BIN = '/usr/bin/spamc'
export const SPAMASS_MILTER_BIN = '/usr/sbin/spamass-milter'

/** The Debian 12 packages these tests need. */
export const SPAMASSASSIN_PACKAGES = ['spamassassin', 'spamd', 'spamc', 'spamass-milter']

export const SPAMASSASSIN_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'spamassassin')

const READY_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 5_000
const POLL_MS = 50
const READY = { timeoutMs: READY_TIMEOUT_MS, pollMs: POLL_MS }

const registry = new DaemonRegistry()

/**
 * Throws (the tests must fail, not skip) when spamd, spamc or spamass-milter is missing;
 * returns spamd's version line, e.g. 'SpamAssassin Server version 4.0.1'.
 */
export function assertSpamAssassinInstalled(): string {
  const bins = [SPAMD_BIN, SPAMC_BIN, SPAMASS_MILTER_BIN]
  assertBinariesExist('SpamAssassin interop tests', bins, SPAMASSASSIN_PACKAGES)
  return versionLine(
    SPAMD_BIN,
    ['--version'],
    /SpamAssassin Server version [\w.-]+/,
    SPAMASSASSIN_PACKAGES,
  )
}

/** A free port is taken between our probe and the daemon's bind(). */
function isPortClash(err: Error): boolean {
  return /address already in use|Could not create listening/i.test(err.message)
}

/** Start `bin` in `dir` (its own process group; `dir` is removed when it stops). */
function spawnChild(name: string, bin: string, args: string[], dir: string): DaemonProcess {
  return DaemonProcess.spawn({
    name,
    bin,
    args,
    cwd: dir,
    dir,
    stopGraceMs: STOP_GRACE_MS,
    registry,
  })
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
    const dir = makeTempDir('spamd-')
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
    await c.startedWhen(
      `listening on 127.0.0.1:${port}`,
      async () => /server started on/.test(c.output()) && (await canConnect({ port })),
      READY,
    )
    return {
      port,
      pid: c.pid,
      dir,
      output: () => c.output(),
      stop: () => c.stop(),
    }
  }, isPortClash)
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
    const dir = makeTempDir('spamass-milter-')
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
    await c.startedWhen(`listening on ${socket}`, () => canConnect({ port }), READY)
    return {
      socket,
      port,
      pid: c.pid,
      args,
      output: () => c.output(),
      stop: () => c.stop(),
    }
  }, isPortClash)
}

/** Stop every spamd and spamass-milter started by this module (for `after()` hooks). */
export async function stopAllSpamAssassin(): Promise<void> {
  await registry.stopAll()
}
