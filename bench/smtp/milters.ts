/**
 * The milters of the SMTP benchmark: bench/milters/noop.c, compiled at bench time with `cc`
 * into a temporary directory, and OpenDKIM signing (test/helpers/opendkim.ts). Each runs as a
 * child process on 127.0.0.1, stopped by PID.
 */
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

import {
  DaemonProcess,
  DaemonRegistry,
  makeTempDir,
  removeTempDir,
  withFreePort,
} from '../../test/helpers/daemons/process'
import { startScriptedMilter } from '../../test/helpers/milter-process'
import { generateDkimKey, startOpenDkim } from '../../test/helpers/opendkim'
import { REPO_ROOT } from '../../test/helpers/paths'

const NOOP_SOURCE = path.join(REPO_ROOT, 'bench', 'milters', 'noop.c')
const MFAPI = '/usr/include/libmilter/mfapi.h'

const registry = new DaemonRegistry()
let built: { dir: string; bin: string } | undefined

/** Compiles noop.c once per bench run; throws naming the package when libmilter is missing. */
export function buildNoop(): string {
  if (built) return built.bin
  if (!fs.existsSync(MFAPI))
    throw new Error(
      `${MFAPI} not found: the no-op milter needs libmilter; apt-get install libmilter-dev`,
    )
  const dir = makeTempDir('bench-noop-')
  const bin = path.join(dir, 'noop')
  const r = spawnSync('cc', ['-O2', '-o', bin, NOOP_SOURCE, '-lmilter', '-lpthread'], {
    encoding: 'utf8',
  })
  if (r.error !== undefined || r.status !== 0) {
    removeTempDir(dir)
    const why = r.error?.message ?? `${r.stderr}${r.stdout}`
    throw new Error(
      `cannot compile ${NOOP_SOURCE} (cc ... -lmilter -lpthread): ${why}; ` +
        'it needs a C compiler and libmilter: apt-get install gcc libmilter-dev',
    )
  }
  built = { dir, bin }
  return bin
}

export interface NoopOptions {
  /** No-reply mode (-n): SMFIP_NR_* everywhere, SMFIP_NO* for the envelope stages. */
  noReply?: boolean
  /** Replace the body with this many bytes at end of message (-r). */
  replaceBytes?: number
  /** Replace the body with as many bytes as it had (-R). */
  replaceSame?: boolean
}

/** A milter process the benchmark measures. */
export interface BenchMilter {
  readonly name: string
  /** libmilter socket spec, inet:PORT@127.0.0.1 (milter.ini and Postfix smtpd_milters). */
  readonly socket: string
  readonly pid: number
  output(): string
  stop(): Promise<void>
}

export async function startNoop(name: string, opts: NoopOptions = {}): Promise<BenchMilter> {
  const bin = buildNoop()
  return withFreePort(
    async (port) => {
      const socket = `inet:${port}@127.0.0.1`
      const args = ['-p', socket]
      if (opts.noReply) args.push('-n')
      if (opts.replaceBytes) args.push('-r', String(opts.replaceBytes))
      if (opts.replaceSame) args.push('-R')
      const p = DaemonProcess.spawn({
        name: `noop milter (${name})`,
        bin,
        args,
        cwd: path.dirname(bin),
        processGroup: false,
        stopGraceMs: 3000,
        registry,
      })
      // "listening" is printed after the socket is bound: no probe connection needed
      await p.startedWhen(
        `listening on ${socket}`,
        () => p.output().includes('noop: listening on'),
        { timeoutMs: 10_000, pollMs: 20 },
      )
      return {
        name,
        socket,
        pid: p.pid,
        output: () => p.output(),
        stop: () => p.stop(),
      }
    },
    (err) => /cannot listen/.test(err.message),
  )
}

/** OpenDKIM signing for example.com (a fresh 2048-bit key), InternalHosts 127.0.0.1. */
export async function startDkimSigner(): Promise<BenchMilter> {
  const key = generateDkimKey('example.com', 'bench')
  const d = await startOpenDkim({ mode: 's', signingKey: key })
  return {
    name: 'opendkim',
    socket: d.socket,
    pid: d.pid,
    output: () => d.output(),
    stop: () => d.stop(),
  }
}

/**
 * pymilter (test/milters/scripted.py) adding one header at end of message: libmilter writes
 * the modification and the verdict separately, the case of the end-of-message stall.
 */
export async function startAddHeader(): Promise<BenchMilter> {
  const m = await startScriptedMilter(
    { eom: [{ op: 'addheader', name: 'X-Bench', value: 'added' }] },
    { transport: 'inet' },
  )
  return {
    name: 'addheader',
    socket: m.socket,
    pid: m.pid,
    output: () => '',
    stop: () => m.stop(),
  }
}

/** Stops every noop milter and removes the compiled binary. */
export async function stopBenchMilters(): Promise<void> {
  await registry.stopAll()
  if (built) {
    removeTempDir(built.dir)
    built = undefined
  }
}
