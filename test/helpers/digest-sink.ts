/**
 * A receiving SMTP server (smtp-server on 127.0.0.1, a free port) that keeps a small digest of
 * each delivered message instead of the message: Message-ID, envelope, the X-Fault-* headers,
 * body sha256 and length, the longest line. For load and soak runs of thousands of messages up
 * to a few MB, where test/helpers/sink.ts (which keeps every message whole) would hold gigabytes.
 */
import { createHash } from 'node:crypto'
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server'

import { listenSmtp, parseMessage } from './sink'

/** What is kept of one delivered message. */
export interface Delivery {
  /** 1-based arrival order. */
  seq: number
  /** Message-ID header value, trimmed ('' when there is none). */
  msgId: string
  mailFrom: string
  rcptTo: string[]
  /** Header fields whose name starts with X-Fault (case-insensitive), in order, values trimmed. */
  faultHeaders: Array<[string, string]>
  bodySha256: string
  bodyBytes: number
  /** Length in bytes of the longest line of the whole message, without its line break. */
  longestLine: number
  /** Date.now() at arrival. */
  at: number
}

export interface DigestSink {
  readonly port: number
  /** Every delivery so far, in arrival order. */
  readonly deliveries: readonly Delivery[]
  /** Deliveries by Message-ID. */
  byMsgId(msgId: string): readonly Delivery[]
  /**
   * Resolves once `pred()` holds, or after `maxMs`; checks every 100 ms. Returns whether pred held.
   */
  waitUntil(pred: () => boolean, maxMs: number): Promise<boolean>
  /** Resolves once nothing arrived for `quietMs` since the call or the last arrival (at most `maxMs`). */
  waitQuiet(quietMs: number, maxMs: number): Promise<void>
  stop(): Promise<void>
}

function longestLine(raw: Buffer): number {
  let longest = 0
  let start = 0
  for (;;) {
    const nl = raw.indexOf(0x0a, start)
    const end = nl === -1 ? raw.length : nl
    const len = end - start - (end > start && raw[end - 1] === 0x0d ? 1 : 0)
    if (len > longest) longest = len
    if (nl === -1) return longest
    start = nl + 1
  }
}

/** Start the digest sink. */
export async function startDigestSink(): Promise<DigestSink> {
  const deliveries: Delivery[] = []
  const index = new Map<string, Delivery[]>()
  let lastArrival = Date.now()

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
      const idHeader = headers.find(([n]) => n.toLowerCase() === 'message-id')
      const mailFrom = session.envelope.mailFrom
      const d: Delivery = {
        seq: deliveries.length + 1,
        msgId: (idHeader?.[1] ?? '').trim(),
        mailFrom: mailFrom === false ? '' : mailFrom.address,
        rcptTo: session.envelope.rcptTo.map((r) => r.address),
        faultHeaders: headers
          .filter(([n]) => /^x-fault/i.test(n))
          .map(([n, v]) => [n, v.trim()] as [string, string]),
        bodySha256: createHash('sha256').update(body).digest('hex'),
        bodyBytes: body.length,
        longestLine: longestLine(raw),
        at: Date.now(),
      }
      deliveries.push(d)
      const list = index.get(d.msgId) ?? []
      list.push(d)
      index.set(d.msgId, list)
      lastArrival = d.at
      callback(null, `digest sink queued ${d.seq}`)
    })
  }

  const { server, port } = await listenSmtp('digest-sink.test', onData)
  let stopped = false

  return {
    port,
    deliveries,
    byMsgId: (id) => index.get(id) ?? [],
    async waitUntil(pred, maxMs) {
      const deadline = Date.now() + maxMs
      for (;;) {
        if (pred()) return true
        if (Date.now() >= deadline) return false
        await new Promise((r) => setTimeout(r, 100))
      }
    },
    async waitQuiet(quietMs, maxMs) {
      const called = Date.now()
      const deadline = called + maxMs
      while (Date.now() < deadline && Date.now() - Math.max(lastArrival, called) < quietMs) {
        await new Promise((r) => setTimeout(r, 100))
      }
    },
    stop() {
      if (stopped) return Promise.resolve()
      stopped = true
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
