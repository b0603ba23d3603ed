/**
 * Runs the real OpenDKIM milter (Debian package `opendkim`) as a child process of the test,
 * in the foreground (`-f`), with a configuration file generated into its own temporary
 * directory, listening on `inet:PORT@127.0.0.1`. No init system, no syslog, no DNS: the test
 * generates an RSA key pair and OpenDKIM reads the public key from a file
 * (`TestPublicKeys`) instead of DNS.
 *
 * Also a real, offline DKIM verifier for delivered bytes: `opendkim -t FILE` (test mode) with
 * the same public-key file (`verifyWithOpenDkim`).
 *
 * Every started instance is kept in a module-level registry: call `stopAllOpenDkims()` from an
 * `after()` hook; a process 'exit' hook SIGKILLs whatever is left.
 */

import { spawnSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

import {
  DaemonProcess,
  DaemonRegistry,
  assertBinariesExist,
  canConnect,
  makeTempDir,
  removeTempDir,
  tail,
  versionLine,
  withFreePort,
} from './daemons/process'

export const OPENDKIM_BIN = '/usr/sbin/opendkim'
const OPENDKIM_PACKAGES = ['opendkim', 'opendkim-tools']

const READY_TIMEOUT_MS = 10_000
const STOP_GRACE_MS = 3_000
const POLL_MS = 25

const registry = new DaemonRegistry()

// ---------------------------------------------------------------------------
// Installation check

let checkedVersion: string | null = null

/**
 * Throws (tests must fail, not skip) when the OpenDKIM binary is missing or unusable; returns
 * its version line, e.g. 'OpenDKIM Filter v2.11.0'.
 */
export function assertOpenDkimInstalled(): string {
  if (checkedVersion !== null) return checkedVersion
  assertBinariesExist('OpenDKIM tests', [OPENDKIM_BIN], OPENDKIM_PACKAGES)
  checkedVersion = versionLine(OPENDKIM_BIN, ['-V'], /OpenDKIM Filter v[\w.~-]+/, OPENDKIM_PACKAGES)
  return checkedVersion
}

// ---------------------------------------------------------------------------
// Keys

export interface DkimTestKey {
  domain: string
  selector: string
  /** PKCS#8 PEM private key. */
  privateKeyPem: string
  /** base64 of the DER SubjectPublicKeyInfo: the `p=` tag of the key record. */
  publicKeyBase64: string
  /** The TXT record OpenDKIM would find at `<selector>._domainkey.<domain>`. */
  txtRecord: string
}

/** A fresh RSA key pair for `selector._domainkey.domain` (default test._domainkey.example.org). */
export function generateDkimKey(
  domain = 'example.org',
  selector = 'test',
  modulusLength = 2048,
): DkimTestKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength,
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  const publicKeyBase64 = publicKey.toString('base64')
  return {
    domain,
    selector,
    privateKeyPem: privateKey,
    publicKeyBase64,
    txtRecord: `v=DKIM1; k=rsa; p=${publicKeyBase64}`,
  }
}

/**
 * The `TestPublicKeys` file format (libopendkim dkim_get_key_file): one key per line,
 * `<selector>._domainkey.<domain>` whitespace `<TXT record>`.
 */
export function publicKeysFileText(keys: readonly DkimTestKey[]): string {
  return keys.map((k) => `${k.selector}._domainkey.${k.domain} ${k.txtRecord}\n`).join('')
}

// ---------------------------------------------------------------------------
// Configuration

export type OpenDkimMode = 's' | 'v' | 'sv'

/** What OpenDKIM does with a message (On-* settings). */
export type OpenDkimAction = 'accept' | 'discard' | 'quarantine' | 'reject' | 'tempfail'

export interface OpenDkimOptions {
  /** Mode: s (sign), v (verify) or sv. */
  mode: OpenDkimMode
  /** Signing key (Domain/Selector/KeyFile); required for modes containing 's'. */
  signingKey?: DkimTestKey
  /** Public keys served instead of DNS (TestPublicKeys); default: the signing key, if any. */
  publicKeys?: DkimTestKey[]
  /** TCP port on 127.0.0.1 (default: a free one). */
  port?: number
  /** Canonicalization header/body (default 'relaxed/relaxed'). */
  canonicalization?: string
  /**
   * InternalHosts: clients whose mail is signed, not verified. Default ['127.0.0.1'] (also
   * OpenDKIM's own default). A verifier for mail that arrives from 127.0.0.1 must not list it.
   */
  internalHosts?: string[]
  /** On-BadSignature (OpenDKIM's default is accept). */
  onBadSignature?: OpenDkimAction
  /** Extra `Name value` lines appended to the configuration. */
  extra?: Record<string, string>
}

/**
 * The configuration file text. Options every test instance needs:
 * - `Background no` (with `-f`): stay in the foreground as our child, so we stop it by PID;
 * - `Syslog no`: no syslog in a test container (OpenDKIM has no stderr logging; start-up
 *   errors still go to stderr);
 * - `RequireSafeKeys no`: key files live under os.tmpdir(), which is world-writable, and
 *   OpenDKIM refuses such paths with "/tmp can be read or written by other users";
 * - `TestPublicKeys`: public keys from a file instead of DNS.
 * Root is fine: no UserID needed (OpenDKIM only changes user when UserID is set).
 */
export function openDkimConfig(
  opts: OpenDkimOptions,
  files: { socket: string; pidFile: string; keyFile?: string; publicKeysFile?: string },
): string {
  const lines: Array<[string, string]> = [
    ['Mode', opts.mode],
    ['Socket', files.socket],
    ['PidFile', files.pidFile],
    ['Background', 'no'],
    ['Syslog', 'no'],
    ['RequireSafeKeys', 'no'],
    ['Canonicalization', opts.canonicalization ?? 'relaxed/relaxed'],
    ['InternalHosts', (opts.internalHosts ?? ['127.0.0.1']).join(', ')],
  ]
  if (opts.mode.includes('s')) {
    if (opts.signingKey === undefined || files.keyFile === undefined) {
      throw new Error(`OpenDKIM mode ${opts.mode} needs a signingKey`)
    }
    lines.push(
      ['Domain', opts.signingKey.domain],
      ['Selector', opts.signingKey.selector],
      ['KeyFile', files.keyFile],
    )
  }
  if (files.publicKeysFile !== undefined) lines.push(['TestPublicKeys', files.publicKeysFile])
  if (opts.onBadSignature !== undefined) lines.push(['On-BadSignature', opts.onBadSignature])
  for (const [k, v] of Object.entries(opts.extra ?? {})) lines.push([k, v])
  return lines.map(([k, v]) => `${k} ${v}\n`).join('')
}

// ---------------------------------------------------------------------------
// Process handling

export interface RunningOpenDkim {
  /** Spec for our client: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  readonly pid: number
  /** The temporary directory (configuration, keys, pid file). */
  readonly dir: string
  readonly configFile: string
  /** The configuration text it was started with. */
  readonly config: string
  /** What OpenDKIM wrote to stdout/stderr so far. */
  output(): string
  /** SIGTERM by PID, SIGKILL after 3 s, wait for exit, remove `dir`. Idempotent. */
  stop(): Promise<void>
}

/** Stop every OpenDKIM started by this module (for `after()` hooks). */
export async function stopAllOpenDkims(): Promise<void> {
  await registry.stopAll()
}

/** Start OpenDKIM and resolve once it accepts TCP connections on its socket. */
export async function startOpenDkim(opts: OpenDkimOptions): Promise<RunningOpenDkim> {
  assertOpenDkimInstalled()
  // a free port can be taken between our probe and OpenDKIM's bind()
  return withFreePort(
    (port) => startOnce(opts, port),
    (err) => /address already in use/i.test(err.message),
    { port: opts.port },
  )
}

function writePrivate(file: string, content: string): void {
  fs.writeFileSync(file, content, { mode: 0o600 })
}

async function startOnce(opts: OpenDkimOptions, port: number): Promise<RunningOpenDkim> {
  const socket = `inet:${port}@127.0.0.1`
  const dir = makeTempDir(`opendkim-${opts.mode}-`)
  const files: Parameters<typeof openDkimConfig>[1] = {
    socket,
    pidFile: path.join(dir, 'opendkim.pid'),
  }
  if (opts.signingKey !== undefined && opts.mode.includes('s')) {
    files.keyFile = path.join(dir, `${opts.signingKey.selector}.private`)
    writePrivate(files.keyFile, opts.signingKey.privateKeyPem)
  }
  const publicKeys = opts.publicKeys ?? (opts.signingKey ? [opts.signingKey] : [])
  if (publicKeys.length > 0) {
    files.publicKeysFile = path.join(dir, 'public-keys.txt')
    writePrivate(files.publicKeysFile, publicKeysFileText(publicKeys))
  }
  const config = openDkimConfig(opts, files)
  const configFile = path.join(dir, 'opendkim.conf')
  writePrivate(configFile, config)

  // not in a process group of its own: stopped (and killed) by PID only
  const c = DaemonProcess.spawn({
    name: 'opendkim',
    bin: OPENDKIM_BIN,
    args: ['-f', '-x', configFile],
    cwd: dir,
    dir,
    processGroup: false,
    stopGraceMs: STOP_GRACE_MS,
    registry,
  })
  await c.startedWhen(`listening on ${socket}`, () => canConnect({ port }), {
    timeoutMs: READY_TIMEOUT_MS,
    pollMs: POLL_MS,
    details: () => `${tail(c.output())}\nconfig:\n${config}`,
  })

  return {
    socket,
    port,
    pid: c.pid,
    dir,
    configFile,
    config,
    output: () => c.output(),
    stop: () => c.stop(),
  }
}

// ---------------------------------------------------------------------------
// Offline verification of a message's bytes: `opendkim -t` (test mode)

export interface DkimVerification {
  /** Every signature found verified ("verification (...) succeeded"). */
  pass: boolean
  /** OpenDKIM's result lines ("<file>: verification (s=.., d=.., N-bit key) succeeded|failed..."). */
  results: string[]
  /** The Authentication-Results value OpenDKIM would have added (its INSHEADER debug line). */
  authenticationResults: string | null
  /** Everything `opendkim -t -vv` printed. */
  output: string
}

/**
 * Verify `message` (the bytes as delivered) with OpenDKIM's own test mode, reading the public
 * keys from a file (TestPublicKeys), i.e. offline. Independent of the milter path: no Haraka,
 * no milter protocol, just libopendkim over the file.
 */
export function verifyWithOpenDkim(
  message: Buffer,
  publicKeys: readonly DkimTestKey[],
): DkimVerification {
  assertOpenDkimInstalled()
  const dir = makeTempDir('opendkim-t-')
  try {
    const keysFile = path.join(dir, 'public-keys.txt')
    const msgFile = path.join(dir, 'message.eml')
    const confFile = path.join(dir, 'opendkim.conf')
    writePrivate(keysFile, publicKeysFileText(publicKeys))
    fs.writeFileSync(msgFile, message)
    writePrivate(confFile, `Mode v\nSyslog no\nRequireSafeKeys no\nTestPublicKeys ${keysFile}\n`)
    const res = spawnSync(OPENDKIM_BIN, ['-x', confFile, '-vv', '-t', msgFile], {
      cwd: dir,
      encoding: 'utf8',
    })
    if (res.error !== undefined) throw res.error
    const output = `${res.stdout}${res.stderr}`
    if (res.status !== 0) {
      throw new Error(`opendkim -t exited with ${String(res.status)}: ${output}`)
    }
    const results = output
      .split('\n')
      .filter((l) => /: verification \(/.test(l))
      .map((l) => l.replace(/^opendkim: /, '').replace(`${msgFile}: `, ''))
    const ar = /INSHEADER: idx=\d+ hname='Authentication-Results' hvalue='([^']*)'/.exec(output)
    return {
      pass: results.length > 0 && results.every((l) => / succeeded$/.test(l)),
      results,
      authenticationResults: ar ? ar[1]! : null,
      output,
    }
  } finally {
    removeTempDir(dir)
  }
}
