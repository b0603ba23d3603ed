import { SMTPServer } from 'smtp-server'
import type {
  SMTPServerAddress,
  SMTPServerDataStream,
  SMTPServerOptions,
  SMTPServerSession,
} from 'smtp-server'

/** One header field: name as written, value after the colon (see {@link parseMessage}). */
export type HeaderField = [name: string, value: string]

/** A message delivered to the sink, as it arrived on the wire (dot-stuffing removed). */
export interface SinkMessage {
  /** 1-based delivery counter, also used in the 250 reply text ("sink queued N"). */
  seq: number
  /** The HELO/EHLO name the delivering client announced. */
  helo: string
  /** MAIL FROM address without brackets ('' for the null sender <>). */
  mailFrom: string
  /** MAIL FROM ESMTP parameters, upper-case keys; flags without a value are `true`. */
  mailFromArgs: Record<string, string | boolean>
  /** RCPT TO addresses in the order they were accepted. */
  rcptTo: string[]
  /** RCPT TO parameters, same order as `rcptTo`. */
  rcptToArgs: Array<Record<string, string | boolean>>
  /** The whole message (header block, blank line, body). */
  raw: Buffer
  /** Header fields in order, parsed from `raw`. */
  headers: HeaderField[]
  /** Everything after the blank line that ends the header block. */
  body: Buffer
}

export interface Sink {
  /** The port the sink listens on (host 127.0.0.1). */
  readonly port: number
  readonly host: string
  /** Messages delivered so far, in delivery order. */
  readonly messages: SinkMessage[]
  /** Resolves with `messages` once at least `n` have arrived; rejects after `timeoutMs`. */
  waitForMessages(n: number, timeoutMs?: number): Promise<SinkMessage[]>
  /** Forget the messages received so far (the sequence counter keeps counting). */
  clear(): void
  stop(): Promise<void>
}

function argsRecord(args: SMTPServerAddress['args']): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {}
  if (args === false) return out
  for (const [key, value] of Object.entries(args)) out[key] = value
  return out
}

/**
 * Split a message into header fields and body.
 *
 * The header block ends at the first empty line (CRLF CRLF, LF LF tolerated). Fields are NOT
 * unfolded: a folded field's continuation lines stay in its value verbatim, joined by their
 * original line breaks (CRLF). The value is everything after the first colon with leading
 * spaces/tabs removed and the final line break removed. The body starts right after the empty
 * line. A message without an empty line has only headers and an empty body.
 */
export function parseMessage(raw: Buffer): { headers: HeaderField[]; body: Buffer } {
  let headerEnd = -1
  let bodyStart = raw.length
  if (raw.length >= 2 && raw[0] === 0x0d && raw[1] === 0x0a) {
    headerEnd = 0
    bodyStart = 2
  } else if (raw.length >= 1 && raw[0] === 0x0a) {
    headerEnd = 0
    bodyStart = 1
  } else {
    const crlf = raw.indexOf('\r\n\r\n')
    const lf = raw.indexOf('\n\n')
    if (crlf !== -1 && (lf === -1 || crlf < lf)) {
      headerEnd = crlf + 2
      bodyStart = crlf + 4
    } else if (lf !== -1) {
      headerEnd = lf + 1
      bodyStart = lf + 2
    }
  }
  const headerBlock = (headerEnd === -1 ? raw : raw.subarray(0, headerEnd)).toString('utf8')
  const body = headerEnd === -1 ? Buffer.alloc(0) : raw.subarray(bodyStart)

  const lines = headerBlock.split(/(?<=\n)/)
  const headers: HeaderField[] = []
  for (const line of lines) {
    if (line === '') continue
    if ((line.startsWith(' ') || line.startsWith('\t')) && headers.length > 0) {
      const last = headers[headers.length - 1]!
      last[1] += line
      continue
    }
    const colon = line.indexOf(':')
    const name = colon === -1 ? line.replace(/\r?\n$/, '') : line.slice(0, colon)
    const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^[ \t]+/, '')
    headers.push([name, value])
  }
  for (const field of headers) field[1] = field[1].replace(/\r?\n$/, '')
  return { headers, body }
}

/** All values of header `name` (case-insensitive) in order. */
export function headerValues(message: Pick<SinkMessage, 'headers'>, name: string): string[] {
  const lower = name.toLowerCase()
  return message.headers.filter(([n]) => n.toLowerCase() === lower).map(([, v]) => v)
}

/**
 * An SMTP server on 127.0.0.1 (a free port) for the test sinks: no TLS or
 * AUTH, no size limit, client errors ignored, and a stop() that does not
 * wait for Haraka's pooled forwarding connections.
 */
export async function listenSmtp(
  name: string,
  onData: NonNullable<SMTPServerOptions['onData']>,
  extra: Partial<SMTPServerOptions> = {},
): Promise<{ server: SMTPServer; port: number }> {
  const server = new SMTPServer({
    name,
    logger: false,
    secure: false,
    disabledCommands: ['STARTTLS', 'AUTH'],
    hideSTARTTLS: true,
    authOptional: true,
    disableReverseLookup: true,
    size: 0,
    closeTimeout: 100,
    ...extra,
    onData,
  })
  server.on('error', () => {
    // connection-level errors (a client that went away) are not test failures
  })
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.server.off('error', reject)
      resolve()
    })
  })
  const address = server.server.address()
  if (address === null || typeof address === 'string')
    throw new Error(`${name}: unexpected listen address ${String(address)}`)
  return { server, port: address.port }
}

/**
 * Start an SMTP sink on 127.0.0.1 (free port): no AUTH, no STARTTLS, no size limit, offers
 * PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES. Every message is accepted with
 * `250 2.0.0 sink queued <seq>` and recorded.
 */
export async function startSink(): Promise<Sink> {
  const messages: SinkMessage[] = []
  const waiters = new Set<() => void>()
  let seq = 0

  const notify = (): void => {
    for (const w of [...waiters]) w()
  }

  const onData = (
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void => {
    const chunks: Buffer[] = []
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.on('error', (err: Error) => callback(err))
    stream.on('end', () => {
      const raw = Buffer.concat(chunks)
      const { headers, body } = parseMessage(raw)
      const mailFrom = session.envelope.mailFrom
      seq += 1
      messages.push({
        seq,
        helo: session.hostNameAppearsAs,
        mailFrom: mailFrom === false ? '' : mailFrom.address,
        mailFromArgs: mailFrom === false ? {} : argsRecord(mailFrom.args),
        rcptTo: session.envelope.rcptTo.map((r) => r.address),
        rcptToArgs: session.envelope.rcptTo.map((r) => argsRecord(r.args)),
        raw,
        headers,
        body,
      })
      callback(null, `sink queued ${seq}`)
      notify()
    })
  }

  const { server, port } = await listenSmtp('sink.test', onData, {
    hide8BITMIME: false,
    hideSMTPUTF8: false,
    hidePIPELINING: false,
    hideENHANCEDSTATUSCODES: false,
  })
  let stopped = false

  return {
    port,
    host: '127.0.0.1',
    messages,
    waitForMessages(n: number, timeoutMs = 20000): Promise<SinkMessage[]> {
      if (messages.length >= n) return Promise.resolve(messages)
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (messages.length >= n) {
            clearTimeout(timer)
            waiters.delete(check)
            resolve(messages)
          }
        }
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(
            new Error(
              `sink: timed out after ${timeoutMs} ms waiting for ${n} message(s), got ${messages.length}`,
            ),
          )
        }, timeoutMs)
        waiters.add(check)
      })
    },
    clear(): void {
      messages.length = 0
    },
    stop(): Promise<void> {
      if (stopped) return Promise.resolve()
      stopped = true
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
