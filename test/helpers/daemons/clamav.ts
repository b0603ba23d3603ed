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
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'

import { REPO_ROOT } from '../paths'
import {
  DaemonProcess,
  DaemonRegistry,
  assertBinariesExist,
  canConnect,
  makeTempDir,
  readLog,
  tail,
  versionLine,
  withFreePort,
  type ReadyOptions,
} from './process'

export const CLAMD_BIN = '/usr/sbin/clamd'
export const CLAMAV_MILTER_BIN = '/usr/sbin/clamav-milter'

/** The Debian 12 packages these tests need. */
export const CLAMAV_PACKAGES = ['clamav-daemon', 'clamav-milter']

export const CLAMAV_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'clamav')

const READY_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 5_000
const POLL_MS = 25

const registry = new DaemonRegistry()

/**
 * Throws (the tests must fail, not skip) when clamd or clamav-milter is missing; returns
 * clamd's version, e.g. 'ClamAV 1.4.6'.
 */
export function assertClamAvInstalled(): string {
  assertBinariesExist('ClamAV interop tests', [CLAMD_BIN, CLAMAV_MILTER_BIN], CLAMAV_PACKAGES)
  return versionLine(CLAMD_BIN, ['--version'], /ClamAV [\w.~+-]+/, CLAMAV_PACKAGES)
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

/** Start `bin` with `--config-file configFile` in `dir` (removed when it stops). */
function spawnChild(name: string, bin: string, configFile: string, dir: string): DaemonProcess {
  return DaemonProcess.spawn({
    name,
    bin,
    args: ['--config-file', configFile],
    cwd: dir,
    dir,
    stopGraceMs: STOP_GRACE_MS,
    registry,
  })
}

/** Ready-wait options: the error shows the tail of the log file and output, then the config. */
function readyOptions(c: DaemonProcess, logFile: string, config: string): ReadyOptions {
  return {
    timeoutMs: READY_TIMEOUT_MS,
    pollMs: POLL_MS,
    details: (): string => `${tail(`${readLog(logFile)}${c.output()}`)}\nconfig:\n${config}`,
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
  const dir = makeTempDir('clamd-')
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
  const c = spawnChild('clamd', CLAMD_BIN, configFile, dir)
  await c.startedWhen(
    `answering PING on ${socketPath}`,
    async () => {
      if (!fs.existsSync(socketPath)) return false
      try {
        return (await clamdCommand(socketPath, 'zPING')) === 'PONG'
      } catch {
        return false
      }
    },
    readyOptions(c, logFile, config),
  )
  return {
    socketPath,
    clamdSocket: `unix:${socketPath}`,
    pid: c.pid,
    dir,
    config,
    log: () => readLog(logFile),
    scan: (data) => clamdCommand(socketPath, 'zINSTREAM', data),
    stop: () => c.stop(),
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
  // a free port can be taken between our probe and clamav-milter's bind()
  return withFreePort(
    (port) => startClamavMilterOnce(opts, port),
    (err) => /in use/i.test(err.message),
  )
}

async function startClamavMilterOnce(
  opts: ClamavMilterOptions,
  port: number,
): Promise<RunningClamavMilter> {
  const dir = makeTempDir('clamav-milter-')
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
  const c = spawnChild('clamav-milter', CLAMAV_MILTER_BIN, configFile, dir)
  await c.startedWhen(
    `listening on ${socket}`,
    () => canConnect({ port }),
    readyOptions(c, logFile, config),
  )
  return {
    socket,
    port,
    pid: c.pid,
    config,
    log: () => readLog(logFile),
    stop: () => c.stop(),
  }
}

/** Stop every clamd and clamav-milter started by this module (for `after()` hooks). */
export async function stopAllClamAv(): Promise<void> {
  await registry.stopAll()
}
