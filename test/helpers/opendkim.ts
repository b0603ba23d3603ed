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

import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

import { freePort } from './paths'

export const OPENDKIM_BIN = '/usr/sbin/opendkim'
const INSTALL_HINT = 'install opendkim: apt-get install opendkim opendkim-tools'

const READY_TIMEOUT_MS = 10_000
const STOP_GRACE_MS = 3_000
const POLL_MS = 25
const PORT_ATTEMPTS = 3

// ---------------------------------------------------------------------------
// Installation check

let checkedVersion: string | null = null

/**
 * Throws (tests must fail, not skip) when the OpenDKIM binary is missing or unusable; returns
 * its version line, e.g. 'OpenDKIM Filter v2.11.0'.
 */
export function assertOpenDkimInstalled(): string {
  if (checkedVersion !== null) return checkedVersion
  if (!fs.existsSync(OPENDKIM_BIN)) {
    throw new Error(`${OPENDKIM_BIN} not found: ${INSTALL_HINT}`)
  }
  const res = spawnSync(OPENDKIM_BIN, ['-V'], { encoding: 'utf8' })
  const out = `${res.stdout ?? ''}${res.stderr ?? ''}`
  const m = /OpenDKIM Filter v[\w.~-]+/.exec(out)
  if (res.error !== undefined || !m) {
    throw new Error(
      `${OPENDKIM_BIN} -V failed (${res.error?.message ?? `exit ${String(res.status)}`}): ${out}; ${INSTALL_HINT}`,
    )
  }
  checkedVersion = m[0]
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

interface Running {
  child: ChildProcess
  exited: Promise<void>
  hasExited: () => boolean
  dir: string
  stopping: Promise<void> | null
}

const registry = new Set<Running>()
let exitHookInstalled = false

/** Stop every OpenDKIM started by this module (for `after()` hooks). */
export async function stopAllOpenDkims(): Promise<void> {
  await Promise.all([...registry].map((r) => stopRunning(r)))
}

/** Start OpenDKIM and resolve once it accepts TCP connections on its socket. */
export async function startOpenDkim(opts: OpenDkimOptions): Promise<RunningOpenDkim> {
  assertOpenDkimInstalled()
  const attempts = opts.port === undefined ? PORT_ATTEMPTS : 1
  let lastError: unknown
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await startOnce(opts)
    } catch (err) {
      // a free port can be taken between our probe and OpenDKIM's bind()
      lastError = err
      if (!(err instanceof Error) || !/address already in use/i.test(err.message)) break
    }
  }
  throw lastError
}

function writePrivate(file: string, content: string): void {
  fs.writeFileSync(file, content, { mode: 0o600 })
}

async function startOnce(opts: OpenDkimOptions): Promise<RunningOpenDkim> {
  const port = opts.port ?? (await freePort('127.0.0.1'))
  const socket = `inet:${port}@127.0.0.1`
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `opendkim-${opts.mode}-`))
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

  const child = spawn(OPENDKIM_BIN, ['-f', '-x', configFile], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  let exited = false
  let exitInfo = ''
  child.stdout?.setEncoding('utf8')
  child.stderr?.setEncoding('utf8')
  child.stdout?.on('data', (d: string) => (output += d))
  child.stderr?.on('data', (d: string) => (output += d))
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = true
      exitInfo = `code ${String(code)}, signal ${String(signal)}`
      resolve()
    })
    child.once('error', (err) => {
      exited = true
      exitInfo = err.message
      resolve()
    })
  })
  const running: Running = {
    child,
    exited: exitedPromise,
    hasExited: () => exited,
    dir,
    stopping: null,
  }
  registry.add(running)
  installExitHook()

  try {
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (;;) {
      if (exited) {
        throw new Error(
          `opendkim exited before listening on ${socket} (${exitInfo}): ${output.trim()}\nconfig:\n${config}`,
        )
      }
      if (await canConnect(port)) break
      if (Date.now() > deadline) {
        throw new Error(
          `opendkim did not listen on ${socket} within ${READY_TIMEOUT_MS} ms: ${output.trim()}`,
        )
      }
      await sleep(POLL_MS)
    }
  } catch (err) {
    await stopRunning(running)
    throw err
  }
  const pid = child.pid
  if (pid === undefined) {
    await stopRunning(running)
    throw new Error('opendkim has no pid')
  }
  // An instance a test forgot to stop must not keep mocha alive; the exit hook kills it.
  child.unref()
  unrefStream(child.stdout)
  unrefStream(child.stderr)

  return {
    socket,
    port,
    pid,
    dir,
    configFile,
    config,
    output: () => output,
    stop: () => stopRunning(running),
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

async function stopRunning(r: Running): Promise<void> {
  r.stopping ??= (async () => {
    const pid = r.child.pid
    if (!r.hasExited() && pid !== undefined) {
      // keep the event loop alive until the exit is seen
      r.child.ref()
      signal(pid, 'SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const timedOut = await Promise.race([
        r.exited.then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), STOP_GRACE_MS))),
      ])
      clearTimeout(timer)
      if (timedOut && !r.hasExited()) {
        signal(pid, 'SIGKILL')
        await r.exited
      }
    }
    r.child.stdout?.destroy()
    r.child.stderr?.destroy()
    fs.rmSync(r.dir, { recursive: true, force: true })
    registry.delete(r)
  })()
  return r.stopping
}

function unrefStream(stream: NodeJS.ReadableStream | null): void {
  if (stream !== null && 'unref' in stream && typeof stream.unref === 'function') stream.unref()
}

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
    for (const r of registry) {
      const pid = r.child.pid
      if (!r.hasExited() && pid !== undefined) signal(pid, 'SIGKILL')
      try {
        fs.rmSync(r.dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

async function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
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
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'opendkim-t-'))
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
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
