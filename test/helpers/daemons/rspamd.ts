/**
 * rspamd for the interoperability tests: Debian's `rspamd` package (3.4 in Debian 12), its
 * proxy worker in milter mode (`milter = yes`, `self_scan = yes`), run as our own child
 * process on 127.0.0.1, offline.
 *
 * - `rspamd -f` (no fork of the main process; it still forks its workers), `-i` (rspamd refuses
 *   to run its workers as root without it), `-c` the top-level configuration from a temp copy of
 *   test/fixtures/rspamd: the stock rules and modules of /etc/rspamd, one proxy worker, modules
 *   that need the network or Redis off, DNS sent to a closed loopback port, a local DKIM key.
 * - Per-instance values go in with `--var` (LOCAL_CONFDIR, DBDIR, RUNDIR, LOGDIR,
 *   TEST_MILTER_PORT, TEST_DNS_PORT, TEST_DKIM_KEY); logs go to the console (our pipe).
 *
 * The main process is started in its own process group and stopped by PID (SIGTERM; it stops
 * its workers), then SIGKILL to the group for anything left. `stopAllRspamd()` stops every
 * instance; a process 'exit' hook SIGKILLs what is left.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { REPO_ROOT, freePort } from '../paths'

export const RSPAMD_BIN = '/usr/bin/rspamd'

/** The Debian 12 packages these tests need. */
export const RSPAMD_PACKAGES = ['rspamd']
const INSTALL_HINT = `install it: apt-get install --no-install-recommends ${RSPAMD_PACKAGES.join(' ')}`

export const RSPAMD_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'rspamd')

const READY_TIMEOUT_MS = 60_000
const STOP_GRACE_MS = 10_000
const POLL_MS = 50
const PORT_ATTEMPTS = 3

/**
 * Throws (the tests must fail, not skip) when rspamd is missing or unusable; returns its version
 * line, e.g. 'Rspamd daemon version 3.4'.
 */
export function assertRspamdInstalled(): string {
  if (!fs.existsSync(RSPAMD_BIN)) {
    throw new Error(`rspamd interop tests: ${RSPAMD_BIN} not found; ${INSTALL_HINT}`)
  }
  const res = spawnSync(RSPAMD_BIN, ['--version'], { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = /Rspamd daemon version [\w.~+-]+/.exec(out)
  if (res.error !== undefined || !m) {
    throw new Error(
      `${RSPAMD_BIN} --version failed (${res.error?.message ?? `exit ${String(res.status)}`}): ${out}; ${INSTALL_HINT}`,
    )
  }
  return m[0]
}

// ---------------------------------------------------------------------------
// DKIM key

export interface RspamdDkimKey {
  domain: string
  selector: string
  /** PKCS#8 PEM, as rspamd's dkim_signing reads it. */
  privateKeyPem: string
  /** base64 DER SubjectPublicKeyInfo: the `p=` tag of the key record. */
  publicKeyBase64: string
  /** The TXT record a verifier would find at `<selector>._domainkey.<domain>`. */
  txtRecord: string
}

/**
 * A fresh RSA key for the selector the fixture configures (local.d/dkim_signing.conf:
 * example.org, selector "rspamd").
 */
export function generateRspamdDkimKey(): RspamdDkimKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  const publicKeyBase64 = publicKey.toString('base64')
  return {
    domain: 'example.org',
    selector: 'rspamd',
    privateKeyPem: privateKey,
    publicKeyBase64,
    txtRecord: `v=DKIM1; k=rsa; p=${publicKeyBase64}`,
  }
}

// ---------------------------------------------------------------------------
// Child process

interface Child {
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

function spawnChild(args: string[], dir: string): Child {
  const child = spawn(RSPAMD_BIN, args, {
    cwd: dir,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
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
      // workers the main process left behind
      signal(-pid, 'SIGKILL')
    }
    c.child.stdout?.destroy()
    c.child.stderr?.destroy()
    if (process.env['KEEP_RSPAMD_DIR']) {
      process.stderr.write(`KEEP_RSPAMD_DIR: rspamd dir kept at ${c.dir}\n`)
    } else {
      fs.rmSync(c.dir, { recursive: true, force: true })
    }
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

function tail(text: string, lines = 40): string {
  return text.trim().split('\n').slice(-lines).join('\n')
}

// ---------------------------------------------------------------------------
// rspamd

export interface RspamdOptions {
  /** Key for dkim_signing (example.org, selector "rspamd"); default: a fresh one. */
  dkimKey?: RspamdDkimKey
}

export interface RunningRspamd {
  /** For milter.ini: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  /** PID of the main process. */
  readonly pid: number
  /** Temp directory: configuration (LOCAL_CONFDIR), db/, run/. Removed by stop(). */
  readonly dir: string
  /** The key dkim_signing signs example.org mail with. */
  readonly dkimKey: RspamdDkimKey
  /** The version line, e.g. 'Rspamd daemon version 3.4'. */
  readonly version: string
  /** rspamd's log so far (one "rspamd_task_write_log: id: <...>, ..." line per scan). */
  output(): string
  stop(): Promise<void>
}

async function startOnce(
  port: number,
  opts: RspamdOptions,
  version: string,
): Promise<RunningRspamd> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rspamd-'))
  const confDir = path.join(dir, 'conf')
  fs.cpSync(RSPAMD_FIXTURES, confDir, { recursive: true })
  for (const sub of ['db', 'run', 'log']) fs.mkdirSync(path.join(dir, sub))
  const dkimKey = opts.dkimKey ?? generateRspamdDkimKey()
  const keyFile = path.join(dir, 'dkim.key')
  fs.writeFileSync(keyFile, dkimKey.privateKeyPem, { mode: 0o600 })
  // a UDP port nobody answers on: rspamd's DNS lookups fail at once, on loopback
  const dnsPort = await freePort('127.0.0.1')
  const args = [
    '-f',
    '-i',
    '-c',
    path.join(confDir, 'rspamd.conf'),
    `--var=LOCAL_CONFDIR=${confDir}`,
    `--var=DBDIR=${path.join(dir, 'db')}`,
    `--var=RUNDIR=${path.join(dir, 'run')}`,
    `--var=LOGDIR=${path.join(dir, 'log')}`,
    `--var=TEST_MILTER_PORT=${port}`,
    `--var=TEST_DNS_PORT=${dnsPort}`,
    `--var=TEST_DKIM_KEY=${keyFile}`,
  ]
  const c = spawnChild(args, dir)
  const socket = `inet:${port}@127.0.0.1`
  try {
    // The main process binds the socket, then forks the proxy worker and logs it. Waiting for
    // that line (not probing the port) keeps a test connection out of rspamd's log.
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (;;) {
      if (c.hasExited()) {
        throw new Error(
          `rspamd exited before listening on ${socket} (${c.exitInfo()}):\n${tail(c.output())}`,
        )
      }
      if (/starting rspamd_proxy process \d+/.test(c.output()) && (await canConnect(port))) break
      if (Date.now() > deadline) {
        throw new Error(
          `rspamd did not start its proxy worker on ${socket} within ${READY_TIMEOUT_MS} ms:\n${tail(c.output())}`,
        )
      }
      await sleep(POLL_MS)
    }
  } catch (err) {
    await stopChild(c)
    throw err
  }
  detachFromEventLoop(c)
  return {
    socket,
    port,
    pid: c.child.pid!,
    dir,
    dkimKey,
    version,
    output: () => c.output(),
    stop: () => stopChild(c),
  }
}

/**
 * Start rspamd (proxy worker in milter mode) on 127.0.0.1 (free port); resolves once the proxy
 * worker has been started on the bound socket.
 */
export async function startRspamd(opts: RspamdOptions = {}): Promise<RunningRspamd> {
  const version = assertRspamdInstalled()
  let lastError: unknown
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    try {
      return await startOnce(await freePort('127.0.0.1'), opts, version)
    } catch (err) {
      // a free port can be taken between our probe and rspamd's bind()
      lastError = err
      if (!(err instanceof Error) || !/address already in use|cannot bind/i.test(err.message)) break
    }
  }
  throw lastError
}

/** Stop every rspamd started by this module (for `after()` hooks). */
export async function stopAllRspamd(): Promise<void> {
  await Promise.all([...registry].map((c) => stopChild(c)))
}
