/**
 * SMTP load: Postfix's smtp-source when installed (what the performance issue measured with),
 * else a Node load generator (test/helpers/smtp-client.ts, the tests' client); and a Node
 * latency probe (per-message timing) for both. Neither pipelines: one command, one reply, as
 * smtp-source does.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import { performance } from 'node:perf_hooks'

import { SmtpClient, type Reply } from '../../test/helpers/smtp-client'
import { b, textBlock } from '../stats'
import { SMTP_SOURCE } from './postfix'

export const FROM = 'alice@example.com'
export const TO = 'bob@example.com'
const HELO = 'bench.example.com'

export interface LoadSpec {
  port: number
  concurrency: number
  /** Messages in all. */
  total: number
  /** Messages per SMTP session. */
  perSession: number
  /** Body bytes (headers come on top, about 300 bytes). */
  size: number
  /** Count failed sessions in LoadResult.errors instead of failing the run. */
  countErrors?: boolean
  /** Give up on a session after this many ms (a failed session); default: no limit. */
  sessionTimeoutMs?: number
}

export interface LoadResult {
  ms: number
  /** Per-message latency, ms (Node generator only). */
  latencies: number[]
  /** Sessions that failed (countErrors only), and the first error. */
  errors?: number
  firstError?: string
}

/** A whole message as sent after DATA: CRLF lines, no line starting with '.', final dot. */
export function buildMessage(size: number, seq = 0): Buffer {
  const head = [
    `From: Alice <${FROM}>`,
    `To: Bob <${TO}>`,
    `Subject: SMTP benchmark message ${seq}`,
    'Date: Tue, 01 Apr 2025 10:00:00 +0000',
    `Message-ID: <bench-${seq}-${size}@example.com>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    '',
  ].join('\r\n')
  // textBlock: 76 letters/spaces then CRLF; end the body on a line break
  const body = textBlock(size, 31)
  const tail = body.length >= 2 && body[body.length - 2] === 0x0d ? '.\r\n' : '\r\n.\r\n'
  return Buffer.concat([b(head), body, b(tail)])
}

/** Throws unless the reply has code `want`. */
function expect(r: Reply, want: number, after: string): void {
  if (r.code !== want)
    throw new Error(`expected ${want}, got "${r.code} ${r.lines.at(-1) ?? ''}" after ${after}`)
}

/** One session: connect, EHLO, `count` messages, QUIT; pushes each message's latency. */
async function session(
  port: number,
  count: number,
  msg: Buffer,
  lat: number[],
  timeoutMs?: number,
): Promise<void> {
  let t = performance.now()
  // no reply timeout (a 10 MB message may take long), no Nagle delay, as smtp-source
  const c = SmtpClient.open('127.0.0.1', port, { timeoutMs: 0, noDelay: true })
  let timedOut = false
  const timer =
    timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true
          void c.close()
        }, timeoutMs)
  try {
    expect(await c.readReply(), 220, 'connect')
    expect(await c.command(`EHLO ${HELO}`), 250, 'EHLO')
    for (let i = 0; i < count; i++) {
      if (i > 0) t = performance.now()
      expect(await c.command(`MAIL FROM:<${FROM}>`), 250, 'MAIL FROM')
      expect(await c.command(`RCPT TO:<${TO}>`), 250, 'RCPT TO')
      expect(await c.command('DATA'), 354, 'DATA')
      expect(await c.sendData(msg, { stuffed: true }), 250, `message data (${msg.length} B)`)
      lat.push(performance.now() - t)
    }
    expect(await c.command('QUIT'), 221, 'QUIT')
  } catch (e) {
    if (timedOut) throw new Error(`session timed out after ${timeoutMs} ms`, { cause: e })
    throw e
  } finally {
    clearTimeout(timer)
    void c.close()
  }
}

/** The Node load generator: `concurrency` sessions at a time until `total` messages were sent. */
export async function nodeLoad(spec: LoadSpec): Promise<LoadResult> {
  const msg = buildMessage(spec.size)
  const lat: number[] = []
  let left = spec.total
  let errors = 0
  let firstError: string | undefined
  const t0 = performance.now()
  const worker = async (): Promise<void> => {
    while (left > 0) {
      const n = Math.min(spec.perSession, left)
      left -= n
      try {
        await session(spec.port, n, msg, lat, spec.sessionTimeoutMs)
      } catch (e) {
        if (!spec.countErrors) throw e
        errors++
        firstError ??= e instanceof Error ? e.message : String(e)
      }
    }
  }
  await Promise.all(Array.from({ length: spec.concurrency }, worker))
  const r: LoadResult = { ms: performance.now() - t0, latencies: lat }
  if (spec.countErrors) {
    r.errors = errors
    if (firstError !== undefined) r.firstError = firstError
  }
  return r
}

/** Per-message latency of `count` messages sent one at a time (one session at a time). */
export async function latencyProbe(
  port: number,
  count: number,
  perSession: number,
  size: number,
): Promise<number[]> {
  const r = await nodeLoad({ port, concurrency: 1, total: count, perSession, size })
  return r.latencies
}

export function haveSmtpSource(): boolean {
  return fs.existsSync(SMTP_SOURCE)
}

const running = new Set<ChildProcess>()

function runOnce(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(SMTP_SOURCE, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    running.add(child)
    let err = ''
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (d: string) => (err += d))
    child.once('error', (e) => {
      running.delete(child)
      reject(e)
    })
    child.once('exit', (code, sig) => {
      running.delete(child)
      if (code === 0) resolve()
      else
        reject(
          new Error(`smtp-source ${args.join(' ')}: exit ${String(code ?? sig)}: ${err.trim()}`),
        )
    })
  })
}

/**
 * smtp-source: `-s concurrency -m total -l size`. With more than one message per session, `-d`
 * keeps each connection for all its messages, so it is run total/(concurrency*perSession)
 * times with `-m concurrency*perSession`, back to back.
 */
export async function smtpSourceLoad(spec: LoadSpec): Promise<LoadResult> {
  const base = ['-s', String(spec.concurrency), '-l', String(spec.size)]
  base.push('-f', FROM, '-t', TO, '-M', HELO)
  const target = `127.0.0.1:${spec.port}`
  const t0 = performance.now()
  if (spec.perSession <= 1) {
    await runOnce([...base, '-m', String(spec.total), target])
  } else {
    const batch = spec.concurrency * spec.perSession
    for (let left = spec.total; left > 0; left -= batch) {
      await runOnce(['-d', ...base, '-m', String(Math.min(batch, left)), target])
    }
  }
  return { ms: performance.now() - t0, latencies: [] }
}

/** Kills smtp-source processes still running (SIGINT cleanup), by PID. */
export function killLoad(): void {
  for (const c of running) if (c.pid !== undefined && c.exitCode === null) c.kill('SIGKILL')
}
