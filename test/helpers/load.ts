/**
 * A load driver: N concurrent SMTP sessions over loopback to a real Haraka, several messages per
 * session (RSET or a new MAIL between them), each message with a unique Message-ID and envelope
 * sender, mixed sizes. Records the reply to every step of every message; bounded in count (each
 * message is attempted once) and in time (a reply not received within `replyTimeoutMs` is a
 * hang: the session is dropped and the next message goes on a new connection; no new message
 * starts after `deadlineMs`).
 *
 * A 421, a dropped connection or a refused greeting ends the SMTP connection; the remaining
 * messages of that session go on a new connection.
 */
import { createHash } from 'node:crypto'

import { prng } from './fault-milter'
import { SmtpClient } from './smtp-client'

/** SMTP steps a reply is recorded for; `eod` is the reply to the final dot. */
export type SmtpStep = 'greeting' | 'ehlo' | 'mail' | 'rcpt' | 'data' | 'eod' | 'rset' | 'quit'

/**
 * RFC 5321 §4.3.2: the replies each step may get. 421 may answer any command (the server is
 * shutting down); 500/501 are syntax replies; 503 a bad sequence.
 */
export const ALLOWED_CODES: Readonly<Record<SmtpStep, ReadonlySet<number>>> = {
  greeting: new Set([220, 421, 554]),
  ehlo: new Set([250, 421, 500, 501, 502, 504, 550]),
  mail: new Set([250, 421, 451, 452, 455, 500, 501, 503, 550, 552, 553, 555]),
  rcpt: new Set([250, 251, 421, 450, 451, 452, 455, 500, 501, 503, 550, 551, 552, 553, 555]),
  data: new Set([354, 421, 450, 451, 452, 500, 501, 503, 550, 552, 554]),
  eod: new Set([250, 421, 450, 451, 452, 550, 552, 554]),
  rset: new Set([250, 421, 500, 501]),
  quit: new Set([221, 421]),
}

/** One recorded step. `code` null: no reply (hang) or the connection closed (dropped). */
export interface StepRecord {
  step: SmtpStep
  code: number | null
  enhanced: string | null
  text: string
  /** What happened when there is no code. */
  failure?: 'hang' | 'dropped'
  ms: number
}

/**
 * The end of a message: ok (2xx to the final dot), temp (4xx), perm (5xx) at whatever step ended
 * it, hang (no reply within the bound), dropped (connection closed without a reply), unsent (the
 * deadline passed before it started).
 */
export type FinalClass = 'ok' | 'temp' | 'perm' | 'hang' | 'dropped' | 'unsent'

export interface MessageOutcome {
  /** Message-ID with angle brackets. */
  id: string
  /** The envelope sender (the fault milter's message key). */
  key: string
  rcpts: string[]
  acceptedRcpts: string[]
  size: number
  /** sha256 (hex) of the body as sent, unstuffed, CRLF. */
  bodySha256: string
  /** The planned session (0-based) and the SMTP connection (0-based, per run) it went on. */
  session: number
  conn: number
  /** Position of the message on its SMTP connection (0 = first). */
  indexInConn: number
  steps: StepRecord[]
  final: FinalClass
  /** The reply that ended it (null for hang, dropped, unsent). */
  code: number | null
  enhanced: string | null
  /** The step that ended it. */
  at: SmtpStep | null
  /** Replies RFC 5321 does not allow at that step. */
  forbidden: StepRecord[]
  /** A 421 came but the server kept the connection open (RFC 5321: 421 closes it). */
  openAfter421?: SmtpStep
}

export interface LoadOptions {
  host?: string
  port: number
  /**
   * Names this load's messages (the local part of ids and senders; letters, digits, dots and
   * dashes). The fault milter decides on the local part, so the same label meets the same faults.
   */
  label: string
  /** Keeps re-runs of one label apart: the domain of ids and senders is `<run>.faults.test`. */
  run?: string
  sessions: number
  messagesPerSession: number
  /** Body sizes in bytes, picked in turn per message (default [400, 6000, 40000]). */
  sizes?: readonly number[]
  /** Probability a message has two recipients (default 0.3). */
  twoRcptProbability?: number
  /** Probability of RSET between two messages on a connection (default 0.5). */
  rsetProbability?: number
  /** No reply within this long is a hang (default 30000). */
  replyTimeoutMs?: number
  /** No message starts after this long (default 300000). */
  deadlineMs?: number
  seed?: number
  /** Recipient domain (must be accepted by Haraka's rcpt plugin; default example.com). */
  domain?: string
}

export interface LoadResult {
  label: string
  outcomes: MessageOutcome[]
  /** SMTP connections opened. */
  connections: number
  /** Wall time, ms. */
  ms: number
}

/** A planned message: everything but its bytes (built when it is sent). */
interface Planned {
  id: string
  key: string
  rcpts: string[]
  size: number
  seed: string
}

/** A planned message's record before anything of it was sent (conn -1: never started). */
function unsent(p: Planned, session: number, conn: number, indexInConn: number): MessageOutcome {
  return {
    id: p.id,
    key: p.key,
    rcpts: p.rcpts,
    acceptedRcpts: [],
    size: p.size,
    bodySha256: '',
    session,
    conn,
    indexInConn,
    steps: [],
    final: 'unsent',
    code: null,
    enhanced: null,
    at: null,
    forbidden: [],
  }
}

/** Builds a message: headers and a body of about `size` bytes, some lines starting with a dot. */
export function buildMessage(p: {
  id: string
  key: string
  rcpts: readonly string[]
  size: number
  seed: string
}): { wire: Buffer; bodySha256: string } {
  const rnd = prng(p.seed)
  const header = [
    `From: <${p.key}>`,
    `To: ${p.rcpts.map((r) => `<${r}>`).join(', ')}`,
    `Subject: fault test ${p.id}`,
    `Message-ID: ${p.id}`,
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    '',
  ].join('\r\n')
  const body: string[] = [`body of ${p.id}`]
  let n = body[0]!.length + 2
  const alphabet = 'abcdefghijklmnopqrstuvwxyz      ABCDEFGHIJ0123456789.,'
  while (n < p.size) {
    const len = 20 + Math.floor(rnd() * 58)
    let line = ''
    for (let i = 0; i < len; i++) line += alphabet[Math.floor(rnd() * alphabet.length)]
    if (rnd() < 0.05) line = `.${line}`
    line = line.trimEnd() || 'x'
    body.push(line)
    n += line.length + 2
  }
  const bodyText = body.join('\r\n') + '\r\n'
  const stuffed = body.map((l) => (l.startsWith('.') ? `.${l}` : l)).join('\r\n') + '\r\n'
  return {
    wire: Buffer.from(`${header}${stuffed}.\r\n`, 'latin1'),
    bodySha256: createHash('sha256').update(bodyText, 'latin1').digest('hex'),
  }
}

function classOf(code: number): FinalClass {
  if (code >= 200 && code < 300) return 'ok'
  if (code >= 400 && code < 500) return 'temp'
  return 'perm'
}

/** Runs the load; resolves when every session has finished (never rejects for SMTP trouble). */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const started = Date.now()
  const host = opts.host ?? '127.0.0.1'
  const sizes = opts.sizes ?? [400, 6000, 40000]
  const replyTimeoutMs = opts.replyTimeoutMs ?? 30000
  const deadline = started + (opts.deadlineMs ?? 300000)
  const seed = opts.seed ?? 1
  const domain = opts.domain ?? 'example.com'
  const run = opts.run ?? 'r0'
  const rnd = prng(`${seed}|${opts.label}|plan`)
  let connections = 0

  const plans: Planned[][] = []
  let k = 0
  for (let s = 0; s < opts.sessions; s++) {
    const list: Planned[] = []
    for (let m = 0; m < opts.messagesPerSession; m++, k++) {
      const token = `${opts.label}.s${s}.m${m}`
      const two = rnd() < (opts.twoRcptProbability ?? 0.3)
      list.push({
        id: `<${token}@${run}.faults.test>`,
        key: `${token}@${run}.sender.test`,
        rcpts: two ? [`a${k}@${domain}`, `b${k}@${domain}`] : [`a${k}@${domain}`],
        size: sizes[k % sizes.length]!,
        seed: `${seed}|${token}`,
      })
    }
    plans.push(list)
  }

  const outcomes: MessageOutcome[] = []

  const runSession = async (session: number, list: Planned[]): Promise<void> => {
    const srnd = prng(`${seed}|${opts.label}|s${session}`)
    let i = 0
    const newOutcome = (p: Planned, conn: number, indexInConn: number): MessageOutcome => {
      const o = unsent(p, session, conn, indexInConn)
      outcomes.push(o)
      return o
    }

    /** Sends (unless null) and records one step; returns the reply or null (hang/dropped). */
    const step = async (
      smtp: SmtpClient,
      o: MessageOutcome,
      name: SmtpStep,
      send: string | Buffer | null,
    ): Promise<{ code: number; enhanced: string | null } | null> => {
      const t0 = Date.now()
      if (send !== null && !smtp.isClosed) smtp.send(send)
      const r = await smtp.read(replyTimeoutMs)
      const ms = Date.now() - t0
      if (r.kind === 'reply') {
        const { code, enhanced, text } = r.reply
        const rec: StepRecord = { step: name, code, enhanced, text, ms }
        o.steps.push(rec)
        if (!ALLOWED_CODES[name].has(code)) o.forbidden.push(rec)
        if (code === 421 && name !== 'quit' && !(await smtp.waitClosed(5000))) {
          o.openAfter421 = name
          void smtp.close()
          await smtp.waitClosed(1000)
        }
        return { code, enhanced }
      }
      const failure = r.kind
      o.steps.push({
        step: name,
        code: null,
        enhanced: null,
        text: r.kind === 'dropped' ? r.why : `no reply within ${replyTimeoutMs} ms`,
        failure,
        ms,
      })
      // a QUIT left unanswered does not undo the message before it
      if (name !== 'quit' && (o.final === 'unsent' || o.final === 'ok')) {
        o.final = failure
        o.code = null
        o.enhanced = null
        o.at = name
      }
      void smtp.close()
      return null
    }

    const end = (
      o: MessageOutcome,
      at: SmtpStep,
      r: { code: number; enhanced: string | null },
    ): void => {
      o.final = classOf(r.code)
      o.code = r.code
      o.enhanced = r.enhanced
      o.at = at
    }

    while (i < list.length && Date.now() < deadline) {
      const conn = connections++
      const smtp = SmtpClient.open(host, opts.port)
      const first = newOutcome(list[i]!, conn, 0)
      const greeting = await step(smtp, first, 'greeting', null)
      if (!greeting) {
        i++
        continue
      }
      if (greeting.code !== 220) {
        end(first, 'greeting', greeting)
        await smtp.end()
        i++
        continue
      }
      const ehlo = await step(smtp, first, 'ehlo', `EHLO client-${session}.faults.test\r\n`)
      if (!ehlo) {
        i++
        continue
      }
      if (ehlo.code !== 250) {
        end(first, 'ehlo', ehlo)
        if (!smtp.isClosed && ehlo.code !== 421) await step(smtp, first, 'quit', 'QUIT\r\n')
        await smtp.end()
        i++
        continue
      }
      let index = 0
      let dirty = false
      let last: MessageOutcome = first
      for (; i < list.length && Date.now() < deadline && !smtp.isClosed; index++) {
        const p = list[i]!
        const o = index === 0 ? first : newOutcome(p, conn, index)
        last = o
        i++
        if (index > 0 && (dirty || srnd() < (opts.rsetProbability ?? 0.5))) {
          const r = await step(smtp, o, 'rset', 'RSET\r\n')
          if (!r) break
          if (r.code !== 250) {
            end(o, 'rset', r)
            break
          }
        }
        dirty = true
        const { wire, bodySha256 } = buildMessage(p)
        o.bodySha256 = bodySha256
        const mail = await step(smtp, o, 'mail', `MAIL FROM:<${p.key}> SIZE=${wire.length}\r\n`)
        if (!mail) break
        if (mail.code !== 250) {
          end(o, 'mail', mail)
          if (mail.code === 421) break
          continue
        }
        let refused: { code: number; enhanced: string | null } | undefined
        let gone = false
        for (const rcpt of p.rcpts) {
          const r = await step(smtp, o, 'rcpt', `RCPT TO:<${rcpt}>\r\n`)
          if (!r) {
            gone = true
            break
          }
          if (r.code === 250 || r.code === 251) o.acceptedRcpts.push(rcpt)
          else refused = r
          if (r.code === 421) {
            gone = true
            end(o, 'rcpt', r)
            break
          }
        }
        if (gone) break
        if (o.acceptedRcpts.length === 0) {
          end(o, 'rcpt', refused!)
          continue
        }
        const data = await step(smtp, o, 'data', 'DATA\r\n')
        if (!data) break
        if (data.code !== 354) {
          end(o, 'data', data)
          if (data.code === 421) break
          continue
        }
        const eod = await step(smtp, o, 'eod', wire)
        if (!eod) break
        end(o, 'eod', eod)
        if (eod.code === 421) break
        dirty = eod.code !== 250
      }
      if (!smtp.isClosed) await step(smtp, last, 'quit', 'QUIT\r\n')
      await smtp.end()
    }
  }

  await Promise.all(plans.map((list, s) => runSession(s, list)))
  // messages never started (deadline) are recorded as unsent
  const startedIds = new Set(outcomes.map((o) => o.id))
  for (const [s, list] of plans.entries()) {
    for (const p of list) {
      if (startedIds.has(p.id)) continue
      outcomes.push(unsent(p, s, -1, -1))
    }
  }
  return { label: opts.label, outcomes, connections, ms: Date.now() - started }
}
