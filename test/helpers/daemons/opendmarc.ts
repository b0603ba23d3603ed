/**
 * OpenDMARC for the interoperability tests: Debian's `opendmarc` package (1.4.2 in Debian 12), run
 * as our own child process in the foreground (`-f`, `Background no`) on 127.0.0.1, offline.
 *
 * DNS: OpenDMARC 1.4 has an undocumented option `TestDNSData <file>` (not in opendmarc.conf(5),
 * but in the binary's option table): `dmarcf_load_dnsdata` reads "<name> <TXT value>" lines into
 * libopendmarc's fake DNS table (`opendmarc_dns_fake_record`), and once that table has an entry
 * `dmarc_dns_get_record` answers every DMARC lookup from it and never asks the resolver. The
 * records come from test/fixtures/opendmarc/test-dns-data (or `dnsRecords`). No DNS server,
 * no resolv.conf change.
 *
 * DKIM results are not computed by OpenDMARC: it reads them from the Authentication-Results
 * header fields of the message whose authserv-id is trusted (`TrustedAuthservIDs`, default: its
 * own `AuthservID`, default: the MTA's macro `j`). Behind OpenDKIM in a milter chain, that is
 * the header OpenDKIM added one milter earlier.
 *
 * Options every test instance needs (see `openDmarcConfig`):
 * - `IgnoreHosts <empty file>`: without it OpenDMARC ignores connections from 127.0.0.1, i.e.
 *   every test message (it then adds nothing and accepts);
 * - `SPFSelfValidate false` (the default, spelled out): a self-made SPF check would go to DNS
 *   through libspf2, which has no fake table;
 * - `Syslog false`, `Background false`: no syslog in the container, stay our child.
 *
 * Also an offline evaluation of a message file with the same configuration: `opendmarc -t FILE`
 * (`evaluateWithOpenDmarc`), independent of Haraka and the milter protocol.
 *
 * Every started instance is kept in a module-level registry: call `stopAllOpenDmarcs()` from an
 * `after()` hook; a process 'exit' hook SIGKILLs whatever is left.
 */
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { REPO_ROOT } from '../paths'
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
} from './process'

export const OPENDMARC_BIN = '/usr/sbin/opendmarc'

/**
 * The Debian 12 packages these tests need (`dbconfig-no-thanks` satisfies the package's
 * `dbconfig-mysql | dbconfig-no-thanks` dependency without pulling in a MySQL client).
 */
export const OPENDMARC_PACKAGES = ['opendmarc', 'dbconfig-no-thanks']

export const OPENDMARC_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'opendmarc')
/** The fake DNS records (TestDNSData format) the tests use by default. */
export const OPENDMARC_TEST_DNS_DATA = path.join(OPENDMARC_FIXTURES, 'test-dns-data')
/** Debian's public suffix list (package `publicsuffix`, a dependency of `opendmarc`). */
export const PUBLIC_SUFFIX_LIST = '/usr/share/publicsuffix/public_suffix_list.dat'

const READY_TIMEOUT_MS = 10_000
const STOP_GRACE_MS = 3_000
const POLL_MS = 25

const registry = new DaemonRegistry()

// ---------------------------------------------------------------------------
// Installation check

let checkedVersion: string | null = null

/**
 * Throws (tests must fail, not skip) when the OpenDMARC binary is missing or unusable; returns
 * its version line, e.g. 'OpenDMARC Filter v1.4.2'.
 */
export function assertOpenDmarcInstalled(): string {
  if (checkedVersion !== null) return checkedVersion
  assertBinariesExist('OpenDMARC interop tests', [OPENDMARC_BIN], OPENDMARC_PACKAGES)
  checkedVersion = versionLine(
    OPENDMARC_BIN,
    ['-V'],
    /OpenDMARC Filter v[\w.~+-]+/,
    OPENDMARC_PACKAGES,
  )
  return checkedVersion
}

// ---------------------------------------------------------------------------
// Configuration

export interface OpenDmarcOptions {
  /** TCP port on 127.0.0.1 (default: a free one). */
  port?: number
  /**
   * Fake DNS records, name -> TXT value (e.g. '_dmarc.example.org' -> 'v=DMARC1; p=reject'),
   * written to a TestDNSData file. Default: the file test/fixtures/opendmarc/test-dns-data.
   */
  dnsRecords?: Record<string, string>
  /** RejectFailures: refuse mail failing a p=reject policy (550 5.7.1). Default false. */
  rejectFailures?: boolean
  /**
   * HoldQuarantinedMessages: with RejectFailures, ask the MTA to quarantine (SMFIR_QUARANTINE)
   * mail failing a p=quarantine policy; without it OpenDMARC 1.4.2 only writes dis=none.
   * Default false.
   */
  holdQuarantinedMessages?: boolean
  /** AuthservID; default unset, i.e. OpenDMARC uses the MTA's macro `j`. */
  authservId?: string
  /** TrustedAuthservIDs; default unset, i.e. the AuthservID. */
  trustedAuthservIds?: string[]
  /** IgnoreHosts entries (default none: mail from 127.0.0.1 is evaluated). */
  ignoreHosts?: string[]
  /** Extra `Name value` lines appended to the configuration. */
  extra?: Record<string, string>
}

/** The TestDNSData text for `records`: one "<name> <TXT value>" line each. */
export function testDnsDataText(records: Record<string, string>): string {
  return Object.entries(records)
    .map(([name, value]) => {
      if (/[#\r\n]/.test(value) || /\s/.test(name)) {
        throw new Error(`TestDNSData cannot hold ${JSON.stringify([name, value])}`)
      }
      return `${name} ${value}\n`
    })
    .join('')
}

/** The configuration file text (see the module comment for why each line is there). */
export function openDmarcConfig(
  opts: OpenDmarcOptions,
  files: { socket: string; pidFile: string; dnsData: string; ignoreHosts: string },
): string {
  const lines: Array<[string, string]> = [
    ['Socket', files.socket],
    ['PidFile', files.pidFile],
    ['Background', 'false'],
    ['Syslog', 'false'],
    ['TestDNSData', files.dnsData],
    ['IgnoreHosts', files.ignoreHosts],
    ['SPFSelfValidate', 'false'],
    ['PublicSuffixList', PUBLIC_SUFFIX_LIST],
    ['RejectFailures', opts.rejectFailures === true ? 'true' : 'false'],
    ['HoldQuarantinedMessages', opts.holdQuarantinedMessages === true ? 'true' : 'false'],
  ]
  if (opts.authservId !== undefined) lines.push(['AuthservID', opts.authservId])
  if (opts.trustedAuthservIds !== undefined) {
    lines.push(['TrustedAuthservIDs', opts.trustedAuthservIds.join(', ')])
  }
  for (const [k, v] of Object.entries(opts.extra ?? {})) lines.push([k, v])
  return lines.map(([k, v]) => `${k} ${v}\n`).join('')
}

// ---------------------------------------------------------------------------
// Process handling

export interface RunningOpenDmarc {
  /** Spec for milter.ini: 'inet:PORT@127.0.0.1'. */
  readonly socket: string
  readonly port: number
  readonly pid: number
  /** The temporary directory (configuration, DNS data, pid file). Removed by stop(). */
  readonly dir: string
  readonly configFile: string
  /** The configuration text it was started with. */
  readonly config: string
  /** The version line, e.g. 'OpenDMARC Filter v1.4.2'. */
  readonly version: string
  /** What OpenDMARC wrote to stdout/stderr so far (start-up errors only: it logs to syslog). */
  output(): string
  /** SIGTERM by PID, SIGKILL after 3 s, wait for exit, remove `dir`. Idempotent. */
  stop(): Promise<void>
}

/** Stop every OpenDMARC started by this module (for `after()` hooks). */
export async function stopAllOpenDmarcs(): Promise<void> {
  await registry.stopAll()
}

/** Start OpenDMARC and resolve once it accepts TCP connections on its socket. */
export async function startOpenDmarc(opts: OpenDmarcOptions = {}): Promise<RunningOpenDmarc> {
  const version = assertOpenDmarcInstalled()
  // a free port can be taken between our probe and OpenDMARC's bind()
  return withFreePort(
    (port) => startOnce(port, opts, version),
    (err) => /address already in use/i.test(err.message),
    { port: opts.port },
  )
}

/** Writes the per-instance files into `dir`; returns their paths. */
function writeFiles(
  dir: string,
  opts: OpenDmarcOptions,
): { dnsData: string; ignoreHosts: string; pidFile: string } {
  const dnsData = path.join(dir, 'test-dns-data')
  if (opts.dnsRecords !== undefined) fs.writeFileSync(dnsData, testDnsDataText(opts.dnsRecords))
  else fs.copyFileSync(OPENDMARC_TEST_DNS_DATA, dnsData)
  const ignoreHosts = path.join(dir, 'ignore-hosts')
  fs.writeFileSync(ignoreHosts, (opts.ignoreHosts ?? []).map((h) => `${h}\n`).join(''))
  return { dnsData, ignoreHosts, pidFile: path.join(dir, 'opendmarc.pid') }
}

async function startOnce(
  port: number,
  opts: OpenDmarcOptions,
  version: string,
): Promise<RunningOpenDmarc> {
  const socket = `inet:${port}@127.0.0.1`
  const dir = makeTempDir('opendmarc-')
  const config = openDmarcConfig(opts, { socket, ...writeFiles(dir, opts) })
  const configFile = path.join(dir, 'opendmarc.conf')
  fs.writeFileSync(configFile, config)

  // not in a process group of its own: stopped (and killed) by PID only
  const c = DaemonProcess.spawn({
    name: 'opendmarc',
    bin: OPENDMARC_BIN,
    args: ['-f', '-c', configFile],
    cwd: dir,
    dir,
    processGroup: false,
    stopGraceMs: STOP_GRACE_MS,
    registry,
  })
  // An instance a test forgot to stop must not keep mocha alive; the exit hook kills it.
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
    version,
    output: () => c.output(),
    stop: () => c.stop(),
  }
}

// ---------------------------------------------------------------------------
// Offline evaluation of a message's bytes: `opendmarc -t` (test mode)

export interface DmarcEvaluation {
  /** The Authentication-Results value OpenDMARC would add (its INSHEADER line), if any. */
  authenticationResults: string | null
  /** The reply it would set ("550 5.7.1 rejected by DMARC policy for ..."), if any. */
  reply: string | null
  /** mlfi_eom()'s return value, e.g. 'SMFIS_ACCEPT', 'SMFIS_REJECT', 'SMFIS_CONTINUE'. */
  eom: string | null
  /** Everything `opendmarc -t -vv` printed. */
  output: string
}

/**
 * Evaluate `message` (the bytes of a message file) with OpenDMARC's own test mode, with the same
 * configuration options as a started instance (fake DNS included). `opendmarc -t` has no MTA:
 * the authserv-id must be given (`authservId`, default 'haraka.test'). No Haraka, no milter
 * protocol: what libopendmarc makes of the headers as they are in the file.
 */
export function evaluateWithOpenDmarc(
  message: Buffer,
  opts: OpenDmarcOptions = {},
): DmarcEvaluation {
  assertOpenDmarcInstalled()
  const dir = makeTempDir('opendmarc-t-')
  try {
    const msgFile = path.join(dir, 'message.eml')
    fs.writeFileSync(msgFile, message)
    const confFile = path.join(dir, 'opendmarc.conf')
    const config = openDmarcConfig(
      { ...opts, authservId: opts.authservId ?? 'haraka.test' },
      { socket: 'inet:0@127.0.0.1', ...writeFiles(dir, opts) },
    )
    fs.writeFileSync(confFile, config)
    const res = spawnSync(OPENDMARC_BIN, ['-c', confFile, '-vv', '-t', msgFile], {
      cwd: dir,
      encoding: 'utf8',
    })
    if (res.error !== undefined) throw res.error
    const output = `${res.stdout}${res.stderr}`
    if (res.status !== 0) {
      throw new Error(`opendmarc -t exited with ${String(res.status)}: ${output}`)
    }
    const ar = /INSHEADER: idx=\d+ hname='Authentication-Results' hvalue='([^']*)'/.exec(output)
    const reply = /SETREPLY: rcode='(\d+)' xcode='([^']*)' replytxt='([^']*)'/.exec(output)
    const eom = /mlfi_eom\(\) returned (\w+)/.exec(output)
    return {
      authenticationResults: ar ? ar[1]! : null,
      reply: reply ? `${reply[1]!} ${reply[2]!} ${reply[3]!}` : null,
      eom: eom ? eom[1]! : null,
      output,
    }
  } finally {
    removeTempDir(dir)
  }
}
