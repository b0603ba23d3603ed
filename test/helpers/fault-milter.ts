/**
 * A hostile milter for fault injection: a raw-socket milter server (libmilter cannot misbehave on
 * purpose) that speaks the protocol correctly by default and, at one chosen stage and with a
 * chosen probability, injects one fault.
 *
 * By default it answers OPTNEG with version 6, every action and no protocol flags (so every step
 * is sent and answered), CONTINUE at every stage and, at end of message, ADDHEADER
 * `X-Fault-Milter: <the message's Message-ID>` then ACCEPT, so its edit can be checked at the sink.
 *
 * Determinism: whether a fault fires is a pure function of (seed, case id, key). The key of a
 * message stage (mail .. eom) is the envelope sender the milter is told (the load driver puts a
 * unique token there), so the same message meets the same fault in every run whatever the
 * scheduling. The key of a connection stage (optneg, connect, helo) and of `per: 'connection'`
 * is the milter connection's accept order. Every decision is recorded (`records()`), so a report
 * can say which message met which fault.
 *
 * The command decoder is written here from scratch (not lib/protocol) so that a codec bug in the
 * code under test cannot hide itself; replies are built with test/helpers/bytes.
 */
import { createHash } from 'node:crypto'
import * as net from 'node:net'

import { frame, u32 } from './bytes'

/** Where a fault can be injected: the reply to this command ('optneg' is the negotiation). */
export const STAGES = [
  'optneg',
  'connect',
  'helo',
  'mail',
  'rcpt',
  'data',
  'header',
  'eoh',
  'body',
  'eom',
] as const
export type Stage = (typeof STAGES)[number]

/** Stages the milter connection exists for before any message (decided per milter connection). */
export const CONNECTION_STAGES: ReadonlySet<Stage> = new Set<Stage>(['optneg', 'connect', 'helo'])

/**
 * The faults:
 * - refuse: reset the milter connection as soon as it is accepted (stage connect only);
 * - close: close the connection instead of answering;
 * - hang: never answer (the connection stays open);
 * - slow: answer correctly after `slowMs` (below the timeout), no PROGRESS;
 * - slow_progress: answer correctly after `slowProgressMs` (above the per-read timeout, below
 *   eom_timeout), sending SMFIR_PROGRESS every `progressEveryMs`;
 * - progress_forever: SMFIR_PROGRESS every `progressEveryMs`, never a real answer;
 * - close_mid_frame: write part of the correct answer's first frame, then close;
 * - garbage: seeded random bytes instead of an answer (connection left open);
 * - huge_length: a frame announcing 4 GiB - 1 (connection left open);
 * - bad_replycode: a malformed SMFIR_REPLYCODE (2xx code, no code, no NUL, class mismatch...);
 * - early_mod: a modification (ADDHEADER) before end of message, then CONTINUE;
 * - half_replbody: at end of message one REPLBODY chunk, then close;
 * - replbody_reject: at end of message REPLBODY chunks, then REJECT (a verdict, not a failure);
 * - unknown_reply: a frame with a reply code that does not exist here;
 * - dribble: at end of message a large REPLBODY in one frame (`dribbleBytes`), then the header
 *   and ACCEPT, written `dribbleChunk` bytes per write;
 * - long_header: at end of message ADDHEADER with a 2000-byte value without spaces, then the
 *   usual header and ACCEPT (a header line over 998 bytes must be refused: the milter fails);
 * - reject: a plain REJECT, the milter's verdict (not a failure): at CONNECT a 554 greeting.
 */
export const FAULTS = [
  'refuse',
  'close',
  'hang',
  'slow',
  'slow_progress',
  'progress_forever',
  'close_mid_frame',
  'garbage',
  'huge_length',
  'bad_replycode',
  'early_mod',
  'half_replbody',
  'replbody_reject',
  'unknown_reply',
  'dribble',
  'long_header',
  'reject',
] as const
export type Fault = (typeof FAULTS)[number]

/**
 * What a fired fault should lead to:
 * - benign: nothing visible (250, delivered, every edit applied);
 * - failure: the milter failed, its default_action applies;
 * - verdict: the milter's own verdict (replbody_reject: 554 5.7.1);
 * - either: benign when the frame completes in time, else a failure (dribble).
 */
export type FaultClass = 'benign' | 'failure' | 'verdict' | 'either'

export const FAULT_CLASS: Readonly<Record<Fault, FaultClass>> = {
  refuse: 'failure',
  close: 'failure',
  hang: 'failure',
  slow: 'benign',
  slow_progress: 'benign',
  progress_forever: 'failure',
  close_mid_frame: 'failure',
  garbage: 'failure',
  huge_length: 'failure',
  bad_replycode: 'failure',
  early_mod: 'failure',
  half_replbody: 'failure',
  replbody_reject: 'verdict',
  unknown_reply: 'failure',
  dribble: 'either',
  long_header: 'failure',
  reject: 'verdict',
}

const EVERY: readonly Stage[] = STAGES
const NOT_OPTNEG: readonly Stage[] = STAGES.filter((s) => s !== 'optneg')
const EOM_ONLY: readonly Stage[] = ['eom']

/** The stages each fault makes sense at. */
export const FAULT_STAGES: Readonly<Record<Fault, readonly Stage[]>> = {
  refuse: ['connect'],
  close: EVERY,
  hang: EVERY,
  slow: EVERY,
  // PROGRESS is no answer to OPTNEG
  slow_progress: NOT_OPTNEG,
  progress_forever: NOT_OPTNEG,
  close_mid_frame: EVERY,
  garbage: EVERY,
  huge_length: EVERY,
  bad_replycode: EVERY,
  early_mod: STAGES.filter((s) => s !== 'eom'),
  half_replbody: EOM_ONLY,
  replbody_reject: EOM_ONLY,
  unknown_reply: EVERY,
  dribble: EOM_ONLY,
  long_header: EOM_ONLY,
  // at RCPT a reject refuses one recipient only: not a message outcome
  reject: STAGES.filter((s) => s !== 'optneg' && s !== 'rcpt'),
}

/** Delays and sizes (milliseconds, bytes). */
export interface FaultTiming {
  /** `slow`: delay before the answer (keep it well below the timeout). */
  slowMs: number
  /** `slow_progress` and `progress_forever`: interval between PROGRESS packets. */
  progressEveryMs: number
  /** `slow_progress`: total delay before the answer. */
  slowProgressMs: number
  /** `progress_forever`: stop after this long anyway (keeps the test process bounded). */
  progressCapMs: number
  /** `dribble`: size of the REPLBODY frame. */
  dribbleBytes: number
  /** `dribble`: bytes per write. */
  dribbleChunk: number
  /** `replbody_reject`: size of a REPLBODY chunk; `half_replbody`: the largest chunk it sends. */
  replbodyChunk: number
}

export const DEFAULT_TIMING: FaultTiming = {
  slowMs: 300,
  progressEveryMs: 300,
  slowProgressMs: 2000,
  progressCapMs: 120_000,
  dribbleBytes: 1024 * 1024,
  dribbleChunk: 1,
  replbodyChunk: 4 << 20,
}

/** One fault to inject. */
export interface FaultSpec {
  /** Names the case in the determinism key (two cases with one seed still differ). */
  id: string
  fault: Fault | 'none'
  stage: Stage
  /** 0..1: how likely the fault fires per message (or per milter connection). */
  probability: number
  /** Decide per message (stages mail..eom) or once per milter connection. Default 'message'. */
  per?: 'message' | 'connection'
  seed: number
  timing?: Partial<FaultTiming>
  /** The header added at end of message (default X-Fault-Milter); null: add none. */
  headerName?: string | null
}

/** One milter connection as the fault milter saw it. */
export interface ConnRecord {
  index: number
  /** The SMTP client's port from SMFIC_CONNECT (ties the connection to an SMTP session). */
  clientPort?: number
  /** Set when a fault fired at a connection stage (or refuse) on this connection. */
  fired?: { fault: Fault; stage: Stage }
  /** Envelope senders (message keys) seen on this connection, in order. */
  messages: string[]
  closed: boolean
}

/** One message (by key = envelope sender without brackets) as the fault milter saw it. */
export interface MessageRecord {
  key: string
  conn: number
  /** How many times MAIL with this key arrived (more than 1 would be a replay). */
  seen: number
  msgId?: string
  /** The fault fired on this message (a message stage). */
  fired?: { fault: Fault; stage: Stage }
  /**
   * ADDHEADER and the final ACCEPT were written completely and the MTA went on using the
   * connection (a next command, or QUIT before it closed): the edit must be delivered. A
   * connection the MTA closed without QUIT right after the answer withdraws the promise (the
   * MTA gave up on the milter, e.g. a timeout, while the answer sat unread in socket buffers).
   */
  headerPromised: boolean
  /** Set when a promise was withdrawn that way. */
  withdrawn?: boolean
  /** sha256 (hex) of the replacement body promised with the final ACCEPT, if any. */
  bodySha256?: string
  /** End of message answered (finally), aborted, or connection closed first. */
  end?: 'eom' | 'abort' | 'closed'
}

/** A running fault milter. */
export interface FaultMilter {
  readonly spec: FaultSpec
  /** `inet:PORT@127.0.0.1`. */
  readonly socket: string
  readonly port: number
  /** Header name added at end of message, or null. */
  readonly headerName: string | null
  conns(): readonly ConnRecord[]
  messages(): ReadonlyMap<string, MessageRecord>
  /** Stops listening, destroys every connection, clears every timer. */
  close(): Promise<void>
}

/** A number in [0, 1) from a string, stable across runs and platforms. */
export function hash01(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0) / 0x1_0000_0000
}

/** mulberry32: a small seeded PRNG. */
export function prng(seedText: string): () => number {
  let a = createHash('sha256').update(seedText).digest().readUInt32BE(0)
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// ---------------------------------------------------------------------------
// Wire: our own minimal command decoder (commands from the MTA) and reply builders.

const MAX_COMMAND = 16 * 1024 * 1024

interface RawCommand {
  code: string
  data: Buffer
}

class CommandReader {
  private buf: Buffer = Buffer.alloc(0)

  push(chunk: Buffer): RawCommand[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
    const out: RawCommand[] = []
    for (;;) {
      if (this.buf.length < 4) return out
      const len = this.buf.readUInt32BE(0)
      if (len < 1 || len > MAX_COMMAND) throw new Error(`bad command length ${len}`)
      if (this.buf.length < 4 + len) return out
      out.push({
        code: String.fromCharCode(this.buf[4]!),
        data: this.buf.subarray(5, 4 + len),
      })
      this.buf = this.buf.subarray(4 + len)
    }
  }
}

/** The NUL-terminated strings of a payload. */
function cstrings(data: Buffer): string[] {
  const out: string[] = []
  let start = 0
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0) {
      out.push(data.subarray(start, i).toString('latin1'))
      start = i + 1
    }
  }
  return out
}

const R = {
  continue: frame('c'),
  accept: frame('a'),
  reject: frame('r'),
  progress: frame('p'),
  optneg: frame('O', u32(6), u32(0x1ff), u32(0)),
  addheader: (name: string, value: string): Buffer =>
    frame('h', Buffer.from(`${name}\0${value}\0`, 'latin1')),
  replbody: (chunk: Buffer): Buffer => frame('b', chunk),
  replycode: (text: Buffer): Buffer => frame('y', text),
} as const

const BAD_REPLYCODES: readonly Buffer[] = [
  Buffer.from('250 2.0.0 fine\0', 'latin1'),
  Buffer.from('hello\0', 'latin1'),
  Buffer.from('550 5.7.1 no terminating NUL', 'latin1'),
  Buffer.from('451 5.7.1 class mismatch\0', 'latin1'),
  Buffer.from('550-5.7.1 first\r\n451 4.7.1 second\0', 'latin1'),
  Buffer.from('\0', 'latin1'),
  Buffer.from('55\0', 'latin1'),
]

/** Reply codes that mean nothing in reply to a command (or are never packets). */
const UNKNOWN_REPLIES: readonly Buffer[] = [frame('Z'), frame(0x00), frame('l'), frame('O')]

/** The text of a replacement body of about `size` bytes, CRLF lines under 80 bytes. */
export function replacementBody(msgId: string, size: number): Buffer {
  const lines: string[] = [`replaced body for ${msgId}`]
  let n = lines[0]!.length + 2
  for (let i = 0; n < size; i++) {
    const line = `line ${i} of the replacement body ${'x'.repeat(40)}`
    lines.push(line)
    n += line.length + 2
  }
  return Buffer.from(lines.join('\r\n') + '\r\n', 'latin1')
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

// ---------------------------------------------------------------------------
// The server

/** Start a fault milter on 127.0.0.1 (a free port). */
export async function startFaultMilter(spec: FaultSpec): Promise<FaultMilter> {
  const timing: FaultTiming = { ...DEFAULT_TIMING, ...(spec.timing ?? {}) }
  const headerName = spec.headerName === undefined ? 'X-Fault-Milter' : spec.headerName
  const per = spec.per ?? 'message'
  const conns: ConnRecord[] = []
  const messages = new Map<string, MessageRecord>()
  const sockets = new Set<net.Socket>()
  const timers = new Set<NodeJS.Timeout>()
  let closing = false

  const fires = (key: string): boolean =>
    spec.fault !== 'none' &&
    spec.probability > 0 &&
    hash01(`${spec.seed}|${spec.id}|${key}`) < spec.probability

  /** setTimeout that close() can clear. */
  const later = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const t = setTimeout(() => {
        timers.delete(t)
        resolve()
      }, ms)
      timers.add(t)
    })

  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.setNoDelay(true)
    socket.on('error', () => undefined)
    const rec: ConnRecord = { index: conns.length, messages: [], closed: false }
    conns.push(rec)
    const connKey = `conn:${rec.index}`
    const connFires = fires(connKey)
    const rng = prng(`${spec.seed}|${spec.id}|${connKey}|bytes`)
    let msg: MessageRecord | undefined
    /** Answers written but not yet confirmed by a later command or a QUIT. */
    let unconfirmed: MessageRecord[] = []
    let quit = false
    let msgFires = false
    let firedThisMessage = false
    let dead = false

    socket.on('close', () => {
      dead = true
      rec.closed = true
      sockets.delete(socket)
      if (msg && msg.end === undefined) msg.end = 'closed'
      if (!quit) {
        for (const m of unconfirmed) {
          m.headerPromised = false
          delete m.bodySha256
          m.withdrawn = true
        }
      }
      unconfirmed = []
    })

    if (spec.fault === 'refuse' && connFires) {
      rec.fired = { fault: 'refuse', stage: 'connect' }
      socket.resetAndDestroy()
      return
    }

    const alive = (): boolean => !dead && !socket.destroyed && socket.writable
    const write = (...bufs: Buffer[]): void => {
      if (!alive()) return
      for (const b of bufs) socket.write(b)
    }

    /** Writes bytes `chunk` at a time, yielding between writes (and waiting for drain). */
    const dribble = async (bytes: Buffer, chunk: number): Promise<boolean> => {
      for (let off = 0; off < bytes.length; off += chunk) {
        if (!alive() || closing) return false
        const ok = socket.write(bytes.subarray(off, Math.min(off + chunk, bytes.length)))
        if (!ok) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              socket.off('drain', done)
              socket.off('close', done)
              resolve()
            }
            socket.once('drain', done)
            socket.once('close', done)
          })
        } else {
          await new Promise<void>((resolve) => setImmediate(resolve))
        }
      }
      return alive()
    }

    /** The correct answer to a stage, as frames; at eom also what it promises. */
    const correct = (stage: Stage): Buffer[] => {
      if (stage === 'optneg') return [R.optneg]
      if (stage !== 'eom') return [R.continue]
      const out: Buffer[] = []
      if (headerName !== null && msg?.msgId !== undefined)
        out.push(R.addheader(headerName, msg.msgId))
      out.push(R.accept)
      return out
    }

    /** Writes the correct answer; at eom records the promise. */
    const answer = (stage: Stage): void => {
      const frames = correct(stage)
      if (!alive()) return
      write(...frames)
      if (stage === 'eom' && msg) {
        msg.headerPromised = headerName !== null && msg.msgId !== undefined
        msg.end = 'eom'
        unconfirmed.push(msg)
      }
    }

    const inject = async (fault: Fault, stage: Stage): Promise<void> => {
      switch (fault) {
        case 'refuse':
          // only at accept time (handled above); a fired refuse cannot reach here
          answer(stage)
          return
        case 'close':
          socket.end()
          return
        case 'hang':
          return
        case 'slow':
          await later(timing.slowMs)
          answer(stage)
          return
        case 'slow_progress': {
          const until = Date.now() + timing.slowProgressMs
          for (let left = timing.slowProgressMs; left > 0 && alive() && !closing;) {
            await later(Math.min(timing.progressEveryMs, left))
            left = until - Date.now()
            if (left > 0) write(R.progress)
          }
          answer(stage)
          return
        }
        case 'progress_forever': {
          const until = Date.now() + timing.progressCapMs
          while (Date.now() < until && alive() && !closing) {
            await later(timing.progressEveryMs)
            write(R.progress)
          }
          return
        }
        case 'close_mid_frame': {
          const first = correct(stage)[0]!
          const cut = 1 + Math.floor(rng() * (first.length - 1))
          write(first.subarray(0, cut))
          socket.end()
          return
        }
        case 'garbage': {
          const n = 16 + Math.floor(rng() * 240)
          const bytes = Buffer.alloc(n)
          for (let i = 0; i < n; i++) bytes[i] = Math.floor(rng() * 256)
          write(bytes)
          return
        }
        case 'huge_length':
          write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x62]), Buffer.alloc(64, 0x41))
          return
        case 'bad_replycode':
          write(R.replycode(BAD_REPLYCODES[Math.floor(rng() * BAD_REPLYCODES.length)]!))
          return
        case 'early_mod':
          write(R.addheader('X-Fault-Early', 'too soon'), ...correct(stage))
          return
        case 'half_replbody': {
          // one chunk of a seeded size (up to replbodyChunk), then close
          const sizes = [1, 100, 4096, 16384, 16385, 65535, 1 << 20, 4 << 20]
          const fit = sizes.filter((n) => n <= timing.replbodyChunk)
          const size = fit.length > 0 ? fit[Math.floor(rng() * fit.length)]! : timing.replbodyChunk
          const body = replacementBody(msg?.msgId ?? '?', size * 2)
          write(R.replbody(body.subarray(0, size)))
          socket.end()
          return
        }
        case 'replbody_reject': {
          const chunk = Math.min(timing.replbodyChunk, 65535)
          const body = replacementBody(msg?.msgId ?? '?', chunk * 2)
          write(R.replbody(body.subarray(0, chunk)), R.replbody(body.subarray(chunk)), R.reject)
          if (msg) msg.end = 'eom'
          return
        }
        case 'unknown_reply':
          write(UNKNOWN_REPLIES[Math.floor(rng() * UNKNOWN_REPLIES.length)]!)
          return
        case 'dribble': {
          const body = replacementBody(msg?.msgId ?? '?', timing.dribbleBytes)
          const frames = [R.replbody(body), ...correct('eom')]
          const complete = await dribble(Buffer.concat(frames), timing.dribbleChunk)
          if (complete && msg) {
            msg.headerPromised = headerName !== null && msg.msgId !== undefined
            msg.bodySha256 = sha256(body)
            msg.end = 'eom'
            unconfirmed.push(msg)
          }
          return
        }
        case 'reject':
          write(R.reject)
          if (stage === 'eom' && msg) msg.end = 'eom'
          return
        case 'long_header':
          write(R.addheader('X-Fault-Long', 'a'.repeat(2000)), ...correct('eom'))
          // the milter must fail: nothing it sent may be applied
          if (msg) msg.end = 'eom'
          return
      }
    }

    /** Handles the stage's command: the fault if it fires here, else the correct answer. */
    const reply = async (stage: Stage): Promise<void> => {
      if (spec.fault !== 'none' && spec.fault !== 'refuse' && stage === spec.stage) {
        const connStage = CONNECTION_STAGES.has(stage)
        const now = connStage ? connFires && !rec.fired : msgFires && !firedThisMessage
        if (now) {
          const fired = { fault: spec.fault, stage }
          if (connStage) rec.fired = fired
          else {
            firedThisMessage = true
            if (msg) msg.fired = fired
          }
          await inject(spec.fault, stage)
          return
        }
      }
      answer(stage)
    }

    const handle = async (c: RawCommand): Promise<void> => {
      // the MTA goes on with this connection: what was answered before stands
      if (c.code === 'Q') quit = true
      unconfirmed = []
      switch (c.code) {
        case 'O':
          return reply('optneg')
        case 'D':
          return // macros: no reply
        case 'C': {
          const host = c.data.indexOf(0)
          const family = c.data[host + 1]
          if (family !== undefined && family !== 0x55 && c.data.length >= host + 4)
            rec.clientPort = c.data.readUInt16BE(host + 2)
          return reply('connect')
        }
        case 'H':
          return reply('helo')
        case 'M': {
          const key = (cstrings(c.data)[0] ?? '').replace(/^<|>$/g, '')
          if (msg && msg.end === undefined) msg.end = 'abort'
          const known = messages.get(key)
          msg = known ?? { key, conn: rec.index, seen: 0, headerPromised: false }
          msg.seen += 1
          messages.set(key, msg)
          rec.messages.push(key)
          // the local part only: a re-run of the same plan (another domain) meets the same faults
          msgFires = per === 'connection' ? connFires : fires(`msg:${key.replace(/@[^@]*$/, '')}`)
          firedThisMessage = false
          return reply('mail')
        }
        case 'R':
          return reply('rcpt')
        case 'T':
          return reply('data')
        case 'L': {
          const [name, value] = cstrings(c.data)
          if (msg && name !== undefined && name.toLowerCase() === 'message-id')
            msg.msgId = (value ?? '').trim()
          return reply('header')
        }
        case 'N':
          return reply('eoh')
        case 'B':
          return reply('body')
        case 'E':
          return reply('eom')
        case 'A':
          if (msg && msg.end === undefined) msg.end = 'abort'
          return
        case 'Q':
          socket.end()
          return
        case 'K':
          return
        case 'U':
          write(R.continue)
          return
        default:
          socket.destroy()
          return
      }
    }

    // Commands are handled strictly in order; a hanging handler holds the rest back.
    const reader = new CommandReader()
    let queue: Promise<void> = Promise.resolve()
    socket.on('data', (chunk: Buffer) => {
      let cmds: RawCommand[]
      try {
        cmds = reader.push(chunk)
      } catch {
        socket.destroy()
        return
      }
      for (const c of cmds) queue = queue.then(() => handle(c)).catch(() => undefined)
    })
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const port = (server.address() as net.AddressInfo).port

  return {
    spec,
    socket: `inet:${port}@127.0.0.1`,
    port,
    headerName,
    conns: () => conns,
    messages: () => messages,
    async close(): Promise<void> {
      closing = true
      for (const t of timers) clearTimeout(t)
      timers.clear()
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await sleep(0)
    },
  }
}
