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
import { generateKeyPairSync } from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { REPO_ROOT, freePort } from '../paths'
import {
  DaemonProcess,
  DaemonRegistry,
  assertBinariesExist,
  canConnect,
  makeTempDir,
  versionLine,
  withFreePort,
} from './process'

export const RSPAMD_BIN = '/usr/bin/rspamd'

/** The Debian 12 packages these tests need. */
export const RSPAMD_PACKAGES = ['rspamd']

export const RSPAMD_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'rspamd')

const READY_TIMEOUT_MS = 60_000
const STOP_GRACE_MS = 10_000
const POLL_MS = 50

const registry = new DaemonRegistry()

/**
 * Throws (the tests must fail, not skip) when rspamd is missing or unusable; returns its version
 * line, e.g. 'Rspamd daemon version 3.4'.
 */
export function assertRspamdInstalled(): string {
  assertBinariesExist('rspamd interop tests', [RSPAMD_BIN], RSPAMD_PACKAGES)
  return versionLine(RSPAMD_BIN, ['--version'], /Rspamd daemon version [\w.~+-]+/, RSPAMD_PACKAGES)
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
  const dir = makeTempDir('rspamd-')
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
  const c = DaemonProcess.spawn({
    name: 'rspamd',
    bin: RSPAMD_BIN,
    args,
    cwd: dir,
    dir,
    keepDirEnv: 'KEEP_RSPAMD_DIR',
    stopGraceMs: STOP_GRACE_MS,
    registry,
  })
  const socket = `inet:${port}@127.0.0.1`
  // The main process binds the socket, then forks the proxy worker and logs it. Waiting for
  // that line (not probing the port) keeps a test connection out of rspamd's log.
  await c.startedWhen(
    `listening on ${socket} with its proxy worker started`,
    async () =>
      /starting rspamd_proxy process \d+/.test(c.output()) && (await canConnect({ port })),
    { timeoutMs: READY_TIMEOUT_MS, pollMs: POLL_MS },
  )
  return {
    socket,
    port,
    pid: c.pid,
    dir,
    dkimKey,
    version,
    output: () => c.output(),
    stop: () => c.stop(),
  }
}

/**
 * Start rspamd (proxy worker in milter mode) on 127.0.0.1 (free port); resolves once the proxy
 * worker has been started on the bound socket.
 */
export async function startRspamd(opts: RspamdOptions = {}): Promise<RunningRspamd> {
  const version = assertRspamdInstalled()
  // a free port can be taken between our probe and rspamd's bind()
  return withFreePort(
    (port) => startOnce(port, opts, version),
    (err) => /address already in use|cannot bind/i.test(err.message),
  )
}

/** Stop every rspamd started by this module (for `after()` hooks). */
export async function stopAllRspamd(): Promise<void> {
  await registry.stopAll()
}
