/**
 * SMTP load: Postfix's smtp-source when installed (what the performance issue measured with),
 * else a Node load generator; and a Node latency probe (per-message timing) for both. Neither
 * pipelines: one command, one reply, as smtp-source does.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { performance } from 'node:perf_hooks'

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

/** One SMTP connection that sends a command and waits for its (possibly multi-line) reply. */
class Client {
  private buf = ''
  private waiter: ((line: string) => void) | undefined
  private failed: Error | undefined

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('latin1')
    sock.on('data', (d: string) => {
      this.buf += d
      this.drain()
    })
    sock.on('error', (e) => this.fail(e))
    sock.on('close', () => this.fail(new Error('connection closed')))
  }

  static async open(port: number): Promise<Client> {
    const sock = net.createConnection({ host: '127.0.0.1', port })
    sock.setNoDelay(true)
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve)
      sock.once('error', reject)
    })
    return new Client(sock)
  }

  private fail(e: Error): void {
    this.failed ??= e
    const w = this.waiter
    this.waiter = undefined
    w?.('')
  }

  private drain(): void {
    for (;;) {
      const i = this.buf.indexOf('\r\n')
      if (i < 0) return
      const line = this.buf.slice(0, i)
      this.buf = this.buf.slice(i + 2)
      if (line.length > 3 && line[3] === '-') continue // continuation of a multi-line reply
      const w = this.waiter
      this.waiter = undefined
      w?.(line)
    }
  }

  /** Sends `data` (if any) and resolves with the last line of the reply; throws unless 2xx/3xx. */
  async ask(data: string | Buffer | undefined, expect: number): Promise<string> {
    const line = await new Promise<string>((resolve) => {
      this.waiter = resolve
      if (data !== undefined) this.sock.write(data)
      this.drain()
    })
    if (this.failed) throw this.failed
    if (Number(line.slice(0, 3)) !== expect)
      throw new Error(`expected ${expect}, got "${line}" after ${describe(data)}`)
    return line
  }

  close(): void {
    this.sock.destroy()
  }

  /** Fails the session: the pending ask() rejects with `e`. */
  abort(e: Error): void {
    this.fail(e)
    this.sock.destroy()
  }
}

function describe(data: string | Buffer | undefined): string {
  if (data === undefined) return 'connect'
  if (Buffer.isBuffer(data)) return `message data (${data.length} B)`
  return data.trim()
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
  const c = await Client.open(port)
  const timer =
    timeoutMs === undefined
      ? undefined
      : setTimeout(() => c.abort(new Error(`session timed out after ${timeoutMs} ms`)), timeoutMs)
  try {
    await c.ask(undefined, 220)
    await c.ask(`EHLO ${HELO}\r\n`, 250)
    for (let i = 0; i < count; i++) {
      if (i > 0) t = performance.now()
      await c.ask(`MAIL FROM:<${FROM}>\r\n`, 250)
      await c.ask(`RCPT TO:<${TO}>\r\n`, 250)
      await c.ask('DATA\r\n', 354)
      await c.ask(msg, 250)
      lat.push(performance.now() - t)
    }
    await c.ask('QUIT\r\n', 221)
  } finally {
    clearTimeout(timer)
    c.close()
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
