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
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { REPO_ROOT } from '../paths'
import {
  DaemonProcess,
  DaemonRegistry,
  assertBinariesExist,
  canConnect,
  installHint,
  makeTempDir,
  removeTempDir,
  tail,
  versionLine,
  withFreePort,
  type ReadyOptions,
  type Stoppable,
} from './process'

export const MIMEDEFANG_BIN = '/usr/bin/mimedefang'
export const MULTIPLEXOR_BIN = '/usr/bin/mimedefang-multiplexor'
export const MIMEDEFANG_PL = '/usr/bin/mimedefang.pl'

/** The Debian 12 packages these tests need. */
export const MIMEDEFANG_PACKAGES = ['mimedefang']

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

/** Every running instance (a multiplexor and a milter each). */
const registry = new DaemonRegistry<Stoppable>()

/**
 * Throws (the tests must fail, not skip) when MIMEDefang is missing or unusable; returns its
 * version line, e.g. 'mimedefang version 3.3'.
 */
export function assertMimeDefangInstalled(): string {
  const bins = [MIMEDEFANG_BIN, MULTIPLEXOR_BIN, MIMEDEFANG_PL]
  assertBinariesExist('MIMEDefang interop tests', bins, MIMEDEFANG_PACKAGES)
  return versionLine(MIMEDEFANG_BIN, ['-v'], /mimedefang version [\w.~+-]+/, MIMEDEFANG_PACKAGES)
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
        `the Debian package creates it); ${installHint(MIMEDEFANG_PACKAGES)}`,
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

/** Start `bin` in `cwd`, in its own process group (for the multiplexor's Perl workers). */
function spawnChild(name: string, bin: string, args: string[], cwd: string): DaemonProcess {
  return DaemonProcess.spawn({ name, bin, args, cwd, stopGraceMs: STOP_GRACE_MS })
}

/** Ready-wait options; both log to syslog only, so the error has just their stdout/stderr. */
function readyOptions(c: DaemonProcess): ReadyOptions {
  return {
    timeoutMs: READY_TIMEOUT_MS,
    pollMs: POLL_MS,
    details: () => `(it logs to syslog only) ${tail(c.output())}`,
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
  const dir = makeTempDir('mimedefang-')
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
  let multiplexor: DaemonProcess | undefined
  let milter: DaemonProcess | undefined
  const instance: Stoppable = {
    stop: async () => {
      // the milter first: it talks to the multiplexor
      if (milter) await milter.stop()
      if (multiplexor) await multiplexor.stop()
      removeTempDir(dir, 'KEEP_MIMEDEFANG_DIR')
      registry.delete(instance)
    },
  }
  const stop = (): Promise<void> => instance.stop()
  registry.add(instance)
  try {
    multiplexor = spawnChild('mimedefang-multiplexor', MULTIPLEXOR_BIN, multiplexorArgs, dir)
    const mx = multiplexor
    await mx.waitUntilReady(
      `listening on ${mxSocket}`,
      () => canConnect({ path: mxSocket }),
      readyOptions(mx),
    )
    milter = spawnChild('mimedefang', MIMEDEFANG_BIN, args, dir)
    const md = milter
    await md.waitUntilReady(`listening on ${socket}`, () => canConnect({ port }), readyOptions(md))
  } catch (err) {
    await stop()
    throw err
  }
  multiplexor.detach()
  milter.detach()
  const mx = multiplexor
  const md = milter
  return {
    socket,
    port,
    pid: md.pid,
    multiplexorPid: mx.pid,
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
  return withFreePort(
    (port) => startOnce(port, opts, version, as),
    // mimedefang exits (logging to syslog only) when its port was taken after our probe
    async (err, port) => /^mimedefang exited/.test(err.message) && (await canConnect({ port })),
  )
}

/** Stop every MIMEDefang started by this module (for `after()` hooks). */
export async function stopAllMimeDefang(): Promise<void> {
  await registry.stopAll()
}
