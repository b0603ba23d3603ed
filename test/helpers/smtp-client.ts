import * as net from 'node:net'

import { bareHost } from './paths'

/** One complete (possibly multi-line) SMTP reply. */
export interface Reply {
  code: number
  /** Enhanced status code (RFC 3463) at the start of the first line's text, e.g. '5.7.1'. */
  enhanced: string | null
  /** Each line's text after "NNN-" / "NNN " exactly as sent (enhanced code included). */
  lines: string[]
  /** `lines` joined with '\n'. */
  text: string
  /** The reply exactly as received, line breaks included. */
  raw: string
}

export interface SmtpClientOptions {
  /** Timeout for connecting and for every reply, in ms (default 20000; 0: none). */
  timeoutMs?: number
  /** TCP_NODELAY (the load generator: as smtp-source, no Nagle delay on commands). */
  noDelay?: boolean
}

export interface SendDataOptions {
  /** Turn lone LF into CRLF before sending (default true). False sends the bytes as given. */
  crlf?: boolean
  /**
   * The bytes are already dot-stuffed CRLF lines ending with the final ".": sent as they are
   * (a load generator sends one prepared message many times; `crlf` is ignored).
   */
  stuffed?: boolean
}

/** What `read()` got: a reply, nothing within the timeout, or the connection closed. */
export type ReadOutcome =
  { kind: 'reply'; reply: Reply } | { kind: 'hang' } | { kind: 'dropped'; why: string }

export interface SendMailOptions {
  /** EHLO name; omit to skip EHLO (e.g. when the session already greeted). */
  helo?: string
  /** Send HELO instead of EHLO. */
  useHelo?: boolean
  /** Envelope sender without brackets ('' = null sender). */
  from: string
  rcpts: string[]
  data: string | Buffer
  /** Appended to MAIL FROM:<...>, e.g. 'BODY=8BITMIME SMTPUTF8'. */
  mailParams?: string
  /** Appended to every RCPT TO:<...>. */
  rcptParams?: string
  /** Passed to sendData. */
  crlf?: boolean
}

export interface SendMailReplies {
  helo?: Reply
  mail?: Reply
  rcpts: Reply[]
  data?: Reply
  /** The reply after the final dot. */
  message?: Reply
}

export interface SendMailResult {
  replies: SendMailReplies
  /** True when the final reply to the message was 2xx. */
  accepted: boolean
  /** The last reply received (the one that ended the transaction). */
  last: Reply | undefined
}

interface Waiter {
  resolve: (reply: Reply) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout | undefined
}

const REPLY_LINE = /^(\d{3})(?:([ -])(.*))?$/
const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)/

export function isPositive(reply: Reply): boolean {
  return reply.code >= 200 && reply.code < 400
}

/** Normalise line endings to CRLF (a lone LF becomes CRLF; existing CRLF stay). */
export function toCrlf(data: string | Buffer): Buffer {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  const out: number[] = []
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!
    if (b === 0x0a && (i === 0 || buf[i - 1] !== 0x0d)) out.push(0x0d)
    out.push(b)
  }
  return Buffer.from(out)
}

/**
 * Dot-stuff a message (RFC 5321 4.5.2) and append the terminating "." line. If the message does
 * not end with a line break, CRLF is added first.
 */
export function dotStuff(data: Buffer): Buffer {
  const out: number[] = []
  let atLineStart = true
  for (const b of data) {
    if (atLineStart && b === 0x2e) out.push(0x2e)
    out.push(b)
    atLineStart = b === 0x0a
  }
  if (data.length > 0 && !atLineStart) out.push(0x0d, 0x0a)
  out.push(0x2e, 0x0d, 0x0a)
  return Buffer.from(out)
}

/**
 * The one SMTP client of the tests and the bench: it sends exactly what it is told and parses
 * every reply exactly. Supports pipelining via `send()` + `readReply()`. The tests use
 * `command()` / `sendMail()` (replies or errors); the fault load (test/helpers/load.ts) uses
 * `open()` + `read()`, which never throw and tell a hang from a dropped connection; the bench's
 * load generator (bench/smtp/load.ts) uses `timeoutMs: 0`, `noDelay` and prepared messages.
 */
export class SmtpClient {
  /** The server greeting (220 or e.g. 421/554). */
  greeting!: Reply
  /** Resolves when the socket is closed (by either side). Never rejects. */
  readonly closed: Promise<void>
  /** Every reply received, in order (greeting included). */
  readonly transcript: Reply[] = []

  private readonly socket: net.Socket
  private readonly timeoutMs: number
  private buffer: Buffer = Buffer.alloc(0)
  private pendingLines: string[] = []
  private pendingCode = 0
  private rawLines: string[] = []
  private readonly queue: Reply[] = []
  private readonly waiters: Waiter[] = []
  private closedFlag = false
  private socketError: Error | null = null
  /** Why the connection ended, when we know (a socket error, a malformed reply). */
  private why: string | undefined
  /** What the next reply answers, for error messages (quoted when `lastQuoted`). */
  private lastSent = '(greeting)'
  private lastQuoted = false

  private constructor(
    socket: net.Socket,
    timeoutMs: number,
    readonly peer: string,
  ) {
    this.socket = socket
    this.timeoutMs = timeoutMs
    this.closed = new Promise<void>((resolve) => {
      socket.once('close', () => {
        this.closedFlag = true
        this.failWaiters(
          () =>
            new Error(
              `SMTP ${this.peer}: connection closed while waiting for a reply to ${this.sentText()}` +
                (this.socketError ? ` (${this.socketError.message})` : '') +
                (this.pendingLines.length ? `; partial reply: ${this.rawLines.join('')}` : ''),
            ),
        )
        resolve()
      })
    })
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('error', (err: Error) => {
      this.socketError = err
      this.why = err.message
    })
  }

  /** True once the socket has closed. */
  get isClosed(): boolean {
    return this.closedFlag
  }

  /** Why the connection closed: the socket error, a malformed reply, or 'closed by the server'. */
  get closeReason(): string {
    return this.why ?? 'closed by the server'
  }

  /**
   * Connect (IPv4 or IPv6; '[::1]' and '::1' both work) and read the greeting, which is then
   * available as `client.greeting`. Rejects on connection error or timeout.
   */
  static async connect(
    host: string,
    port: number,
    opts: SmtpClientOptions = {},
  ): Promise<SmtpClient> {
    const timeoutMs = opts.timeoutMs ?? 20000
    const bare = bareHost(host)
    const peer = net.isIPv6(bare) ? `[${bare}]:${port}` : `${bare}:${port}`
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: bare, port })
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              s.destroy()
              reject(new Error(`SMTP ${peer}: connect timed out after ${timeoutMs} ms`))
            }, timeoutMs)
          : undefined
      s.once('connect', () => {
        clearTimeout(timer)
        s.removeListener('error', onError)
        resolve(s)
      })
      const onError = (err: Error): void => {
        clearTimeout(timer)
        reject(new Error(`SMTP ${peer}: connect failed: ${err.message}`))
      }
      s.once('error', onError)
    })
    if (opts.noDelay) socket.setNoDelay(true)
    const client = new SmtpClient(socket, timeoutMs, peer)
    client.greeting = await client.readReply()
    return client
  }

  /**
   * A client at once, connecting in the background: the greeting is the first `read()`; a failed
   * connect is a dropped connection (`closeReason` says why). `greeting` stays unset.
   */
  static open(host: string, port: number, opts: SmtpClientOptions = {}): SmtpClient {
    const bare = bareHost(host)
    const socket = net.connect({ host: bare, port })
    if (opts.noDelay) socket.setNoDelay(true)
    const peer = net.isIPv6(bare) ? `[${bare}]:${port}` : `${bare}:${port}`
    return new SmtpClient(socket, opts.timeoutMs ?? 20000, peer)
  }

  /**
   * Write raw bytes/text without waiting for anything. Nothing is written once we destroyed the
   * socket ourselves (the next read reports the close).
   */
  send(data: string | Buffer): void {
    if (this.closedFlag) throw new Error(`SMTP ${this.peer}: write after close`)
    if (!this.socket.destroyed) this.socket.write(data)
  }

  /** Read the next reply (queued or future); rejects after the timeout or on close. */
  readReply(timeoutMs: number = this.timeoutMs): Promise<Reply> {
    const queued = this.queue.shift()
    if (queued) return Promise.resolve(queued)
    if (this.closedFlag) {
      return Promise.reject(
        new Error(`SMTP ${this.peer}: connection closed, no reply to ${this.sentText()}`),
      )
    }
    return new Promise<Reply>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer:
          timeoutMs > 0
            ? setTimeout(() => {
                const i = this.waiters.indexOf(waiter)
                if (i !== -1) this.waiters.splice(i, 1)
                reject(
                  new Error(
                    `SMTP ${this.peer}: timed out after ${timeoutMs} ms waiting for a reply to ${this.sentText()}` +
                      (this.rawLines.length
                        ? `; partial reply: ${JSON.stringify(this.rawLines.join(''))}`
                        : ''),
                  ),
                )
              }, timeoutMs)
            : undefined,
      }
      this.waiters.push(waiter)
    })
  }

  /** The next reply, or a hang (none within `timeoutMs`), or the close; never rejects. */
  async read(timeoutMs: number = this.timeoutMs): Promise<ReadOutcome> {
    try {
      return { kind: 'reply', reply: await this.readReply(timeoutMs) }
    } catch {
      return this.closedFlag || this.socket.destroyed
        ? { kind: 'dropped', why: this.closeReason }
        : { kind: 'hang' }
    }
  }

  /** Send one command line (CRLF appended) and read its reply. */
  command(line: string, timeoutMs: number = this.timeoutMs): Promise<Reply> {
    this.lastSent = line
    this.lastQuoted = true
    this.send(`${line}\r\n`)
    return this.readReply(timeoutMs)
  }

  /** Send several command lines in one write (PIPELINING) and read one reply per line. */
  async pipeline(lines: string[], timeoutMs: number = this.timeoutMs): Promise<Reply[]> {
    this.lastSent = lines.join(' | ')
    this.lastQuoted = true
    this.send(lines.map((l) => `${l}\r\n`).join(''))
    const replies: Reply[] = []
    for (let i = 0; i < lines.length; i++) replies.push(await this.readReply(timeoutMs))
    return replies
  }

  /**
   * Send the message after a 354 (the DATA command itself goes through `command('DATA')`):
   * dot-stuffs, terminates with CRLF.CRLF and returns the reply to the final dot.
   */
  sendData(message: string | Buffer, opts: SendDataOptions = {}): Promise<Reply> {
    this.lastSent = 'the end of DATA'
    this.lastQuoted = false
    if (opts.stuffed) {
      this.send(message)
      return this.readReply()
    }
    const bytes =
      opts.crlf === false
        ? typeof message === 'string'
          ? Buffer.from(message, 'utf8')
          : message
        : toCrlf(message)
    this.send(dotStuff(bytes))
    return this.readReply()
  }

  /**
   * One transaction: [EHLO], MAIL, every RCPT, DATA, message. Stops at the first failing stage,
   * except that rejected RCPTs are skipped as long as at least one RCPT was accepted. Does not
   * QUIT.
   */
  async sendMail(opts: SendMailOptions): Promise<SendMailResult> {
    const replies: SendMailReplies = { rcpts: [] }
    const done = (last: Reply, accepted = false): SendMailResult => ({ replies, accepted, last })

    if (opts.helo !== undefined) {
      replies.helo = await this.command(`${opts.useHelo ? 'HELO' : 'EHLO'} ${opts.helo}`)
      if (replies.helo.code !== 250) return done(replies.helo)
    }
    const mailParams = opts.mailParams ? ` ${opts.mailParams}` : ''
    replies.mail = await this.command(`MAIL FROM:<${opts.from}>${mailParams}`)
    if (!isPositive(replies.mail)) return done(replies.mail)

    const rcptParams = opts.rcptParams ? ` ${opts.rcptParams}` : ''
    let accepted = 0
    for (const rcpt of opts.rcpts) {
      const reply = await this.command(`RCPT TO:<${rcpt}>${rcptParams}`)
      replies.rcpts.push(reply)
      if (isPositive(reply)) accepted += 1
      if (this.closedFlag) return done(reply)
    }
    if (accepted === 0) return done(replies.rcpts[replies.rcpts.length - 1] ?? replies.mail)

    replies.data = await this.command('DATA')
    if (replies.data.code !== 354) return done(replies.data)

    const sendOpts: SendDataOptions = {}
    if (opts.crlf !== undefined) sendOpts.crlf = opts.crlf
    replies.message = await this.sendData(opts.data, sendOpts)
    return done(replies.message, replies.message.code >= 200 && replies.message.code < 300)
  }

  /** Send QUIT, read the reply, wait for the server to close (then close ourselves). */
  async quit(): Promise<Reply> {
    const reply = await this.command('QUIT')
    const timer = setTimeout(() => this.socket.destroy(), this.timeoutMs)
    await this.closed
    clearTimeout(timer)
    return reply
  }

  /** Close the socket now (no QUIT) and wait for the close. */
  async close(): Promise<void> {
    if (!this.closedFlag) this.socket.destroy()
    await this.closed
  }

  /** Half-close (FIN, no QUIT) and wait for the server's close; destroy after `graceMs`. */
  async end(graceMs = 2000): Promise<void> {
    if (this.closedFlag) return
    this.socket.end()
    if (!(await this.waitClosed(graceMs))) await this.close()
  }

  /** Resolves true once the connection is closed, false if it is still open after `ms`. */
  async waitClosed(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)))
    const closed = await Promise.race([this.closed.then(() => true as const), late])
    clearTimeout(timer)
    return closed
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
    for (;;) {
      const nl = this.buffer.indexOf(0x0a)
      if (nl === -1) break
      const rawLine = this.buffer.subarray(0, nl + 1).toString('utf8')
      this.buffer = this.buffer.subarray(nl + 1)
      this.onLine(rawLine)
    }
  }

  private onLine(rawLine: string): void {
    const line = rawLine.replace(/\r?\n$/, '')
    const m = REPLY_LINE.exec(line)
    if (!m) {
      this.why = `malformed reply line ${JSON.stringify(line.slice(0, 80))}`
      this.failWaiters(() => new Error(`SMTP ${this.peer}: ${this.why}`))
      this.socket.destroy()
      return
    }
    const code = Number(m[1])
    const sep = m[2] ?? ' '
    const text = m[3] ?? ''
    if (this.pendingLines.length && this.pendingCode !== code) {
      this.failWaiters(
        () =>
          new Error(
            `SMTP ${this.peer}: reply code changed inside a multi-line reply: ${JSON.stringify(
              this.rawLines.join('') + rawLine,
            )}`,
          ),
      )
      this.socket.destroy()
      return
    }
    this.pendingCode = code
    this.pendingLines.push(text)
    this.rawLines.push(rawLine)
    if (sep === '-') return

    const lines = this.pendingLines
    const raw = this.rawLines.join('')
    this.pendingLines = []
    this.rawLines = []
    const em = ENHANCED.exec(lines[0] ?? '')
    const reply: Reply = {
      code,
      enhanced: em ? em[1]! : null,
      lines,
      text: lines.join('\n'),
      raw,
    }
    this.transcript.push(reply)
    const waiter = this.waiters.shift()
    if (waiter) {
      clearTimeout(waiter.timer)
      waiter.resolve(reply)
    } else {
      this.queue.push(reply)
    }
  }

  private sentText(): string {
    return this.lastQuoted ? JSON.stringify(this.lastSent) : this.lastSent
  }

  /** Rejects every pending read (the error is made only when one is waiting). */
  private failWaiters(makeError: () => Error): void {
    if (this.waiters.length === 0) return
    const err = makeError()
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer)
      w.reject(err)
    }
  }
}

/**
 * Connect, run one `sendMail`, QUIT. The greeting is in `greeting`; a non-220 greeting ends the
 * session immediately (accepted false).
 */
export async function sendMailTo(
  host: string,
  port: number,
  opts: SendMailOptions & SmtpClientOptions,
): Promise<SendMailResult & { greeting: Reply }> {
  const clientOpts: SmtpClientOptions = {}
  if (opts.timeoutMs !== undefined) clientOpts.timeoutMs = opts.timeoutMs
  const client = await SmtpClient.connect(host, port, clientOpts)
  try {
    if (client.greeting.code !== 220) {
      return {
        greeting: client.greeting,
        replies: { rcpts: [] },
        accepted: false,
        last: client.greeting,
      }
    }
    const result = await client.sendMail(opts)
    if (!client.isClosed) await client.quit()
    return { ...result, greeting: client.greeting }
  } finally {
    await client.close()
  }
}
