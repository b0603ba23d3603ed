/**
 * A small SMTP client for re-injecting a held message: EHLO (HELO when EHLO
 * is refused), MAIL FROM with the parameters the server advertises, every
 * RCPT, DATA with the message dot-stuffed. All or nothing: any recipient
 * refused ends the session before DATA, so a failed release delivers to
 * nobody and can be retried. No TLS or AUTH: it is meant for a dedicated
 * loopback listener.
 *
 * Why not nodemailer's SMTPConnection (checked against nodemailer 10.6):
 * its DataStream turns a bare CR into CRLF and stuffs a dot after it, so a
 * held message with a bare CR would arrive changed; with a refused
 * recipient it still sends DATA to the accepted ones (a partial release
 * that could be neither retried nor recorded); and it sends one NOTIFY and
 * ORCPT for every recipient, where the stored envelope has them per
 * recipient. A release must deliver the held bytes to every stored
 * recipient or to none.
 */
import * as net from 'node:net'

import { formatReplyLine, replyTexts, serverReply, type SmtpReply } from '../protocol/replycode'

/** The server refused a command (4xx/5xx), or the session broke. */
export class SmtpSendError extends Error {
  constructor(
    message: string,
    readonly reply?: SmtpReply,
  ) {
    super(message)
    this.name = 'SmtpSendError'
  }
}

/** What to send. */
export interface SendOptions {
  host: string
  port: number
  helo: string
  from: { address: string; args: string[] }
  rcpts: Array<{ address: string; args: string[] }>
  /** The message (CRLF or LF line ends; not dot-stuffed). */
  message: Buffer
  timeoutMs?: number
}

/** What was sent: the final reply and the parameters left out because the server lacks them. */
export interface SendResult {
  reply: SmtpReply
  dropped: string[]
}

/** The EHLO extension a MAIL/RCPT parameter needs; undefined: never forwarded. */
function extensionFor(param: string): string | undefined {
  const key = param.split('=')[0]?.toUpperCase() ?? ''
  switch (key) {
    case 'SIZE':
      return 'SIZE'
    case 'BODY':
      return param.toUpperCase() === 'BODY=BINARYMIME' ? 'BINARYMIME' : '8BITMIME'
    case 'RET':
    case 'ENVID':
    case 'NOTIFY':
    case 'ORCPT':
      return 'DSN'
    case 'AUTH':
      return undefined // the original client's authentication is not ours to claim
    default:
      return key
  }
}

/** Keeps the parameters the server advertises (SIZE gets the real size); the rest are dropped. */
export function filterParams(
  params: readonly string[],
  extensions: ReadonlySet<string>,
  size?: number,
): { kept: string[]; dropped: string[] } {
  const kept: string[] = []
  const dropped: string[] = []
  for (const p of params) {
    const ext = extensionFor(p)
    if (ext === undefined || !extensions.has(ext)) dropped.push(p)
    else if (ext === 'SIZE') kept.push(size === undefined ? p : `SIZE=${size}`)
    else kept.push(p)
  }
  return { kept, dropped }
}

/**
 * CRLF line ends, dot-stuffed, ending with CRLF . CRLF (RFC 5321 §4.5.2).
 * A line starts after CRLF only: a bare CR is content, so a dot after it is
 * sent as it is and the receiver stores exactly the held bytes (Haraka,
 * which wrote the .eml, splits lines on LF the same way). A bare LF cannot
 * be sent as content (it is refused as SMTP smuggling), so it becomes CRLF.
 */
export function dataBlock(message: Buffer): Buffer {
  const text = message.toString('latin1').replace(/\r?\n/g, '\r\n')
  const body = text.endsWith('\r\n') || text === '' ? text : `${text}\r\n`
  return Buffer.from(`${body.replace(/(^|\n)\./g, '$1..')}.\r\n`, 'latin1')
}

/**
 * Bounds on what the next hop may send: one line (64 KiB), the lines of one
 * reply and the replies read ahead of the commands (MAX_REPLY_LINES each).
 * An EHLO reply has one line per extension, a few dozen at most.
 */
const MAX_LINE = 65536
const MAX_REPLY_LINES = 1000

/** Reads replies off a socket, one at a time. */
class Replies {
  private buf = ''
  private lines: string[] = []
  private ready: SmtpReply[] = []
  private waiter: ((r: SmtpReply | Error) => void) | undefined
  private failure: Error | undefined

  constructor(private readonly socket: net.Socket) {
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => this.feed(d))
    socket.on('error', (e) => this.fail(e))
    socket.on('close', () => this.fail(new SmtpSendError('connection closed by the server')))
  }

  private fail(e: Error): void {
    this.failure ??= e
    const w = this.waiter
    this.waiter = undefined
    w?.(this.failure)
  }

  private feed(d: string): void {
    if (this.failure) return // the session is over: nothing more is read
    this.buf += d
    let nl: number
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '')
      this.buf = this.buf.slice(nl + 1)
      const m = /^([2-5][0-9][0-9])([ -]?)(.*)$/.exec(line)
      if (!m) return this.fail(new SmtpSendError(`malformed reply line ${JSON.stringify(line)}`))
      this.lines.push(m[3] ?? '')
      if (this.lines.length > MAX_REPLY_LINES || this.ready.length >= MAX_REPLY_LINES)
        return this.fail(new SmtpSendError(`more than ${MAX_REPLY_LINES} reply lines`))
      if (m[2] === '-') continue
      const r = serverReply(Number(m[1]), this.lines)
      this.lines = []
      const w = this.waiter
      this.waiter = undefined
      if (w) w(r)
      else this.ready.push(r)
    }
    if (this.buf.length > MAX_LINE) this.fail(new SmtpSendError('reply line too long'))
  }

  next(timeoutMs: number, what: string): Promise<SmtpReply> {
    const r = this.ready.shift()
    if (r) return Promise.resolve(r)
    if (this.failure) return Promise.reject(this.failure)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined
        reject(new SmtpSendError(`no reply to ${what} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiter = (x) => {
        clearTimeout(timer)
        if (x instanceof Error) reject(x)
        else resolve(x)
      }
    })
  }
}

function bracket(a: string): string {
  return `<${a}>`
}

/**
 * Sends one message; resolves with the reply to the final dot, or rejects
 * with SmtpSendError carrying the reply of the command that was refused.
 */
export async function sendMessage(o: SendOptions): Promise<SendResult> {
  const timeoutMs = o.timeoutMs ?? 60000
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: o.host, port: o.port })
    const timer = setTimeout(() => {
      s.destroy()
      reject(new SmtpSendError(`connect to ${o.host}:${o.port} timed out`))
    }, timeoutMs)
    s.once('connect', () => {
      clearTimeout(timer)
      s.off('error', onError)
      resolve(s)
    })
    const onError = (e: Error): void => {
      clearTimeout(timer)
      reject(new SmtpSendError(`cannot connect to ${o.host}:${o.port}: ${e.message}`))
    }
    s.once('error', onError)
  })
  const replies = new Replies(socket)
  const command = async (line: string, what = line): Promise<SmtpReply> => {
    socket.write(`${line}\r\n`)
    return replies.next(timeoutMs, what)
  }
  const refuse = (what: string, r: SmtpReply): never => {
    throw new SmtpSendError(`${what} refused: ${formatReplyLine(r)}`, r)
  }
  try {
    const greeting = await replies.next(timeoutMs, 'the greeting')
    if (greeting.code !== 220) refuse('connection', greeting)
    const extensions = new Set<string>()
    const ehlo = await command(`EHLO ${o.helo}`)
    if (ehlo.code === 250) {
      for (const l of replyTexts(ehlo).slice(1))
        extensions.add((l.split(' ')[0] ?? '').toUpperCase())
    } else {
      const helo = await command(`HELO ${o.helo}`)
      if (helo.code !== 250) refuse('HELO', helo)
    }
    const data = dataBlock(o.message)
    const dropped: string[] = []
    const from = filterParams(o.from.args, extensions, o.message.length)
    dropped.push(...from.dropped)
    const mailLine = [`MAIL FROM:${bracket(o.from.address)}`, ...from.kept].join(' ')
    const mail = await command(mailLine, 'MAIL FROM')
    if (mail.code !== 250) refuse('MAIL FROM', mail)
    for (const r of o.rcpts) {
      const p = filterParams(r.args, extensions)
      dropped.push(...p.dropped)
      const rr = await command([`RCPT TO:${bracket(r.address)}`, ...p.kept].join(' '), 'RCPT TO')
      if (rr.code !== 250 && rr.code !== 251) refuse(`RCPT TO:${bracket(r.address)}`, rr)
    }
    const go = await command('DATA')
    if (go.code !== 354) refuse('DATA', go)
    socket.write(data)
    const done = await replies.next(timeoutMs, 'the end of data')
    if (done.code !== 250) refuse('message', done)
    // returned at once, QUIT's reply not awaited: the caller records the
    // delivery right after this 250 (the shorter that window, the fewer
    // double deliveries a crash can cause)
    socket.write('QUIT\r\n')
    return { reply: done, dropped }
  } catch (e) {
    // nothing was accepted: leave politely, the entry stays for another try
    socket.write('QUIT\r\n')
    throw e
  } finally {
    socket.end()
    setTimeout(() => socket.destroy(), 1000).unref()
  }
}
