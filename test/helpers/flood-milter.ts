/**
 * A raw-socket flooding milter for bench/flood.ts, for the two floods libmilter cannot produce
 * (test/milters/flood.py, a pymilter filter, sends the others):
 *
 * - setsymlist: an OPTNEG reply (version 6, SMFIF_SETSYMLIST) carrying `count` macro names
 *   for each of the 7 stages (connect .. eom). libmilter writes no packet over 65,535 bytes, and
 *   an OPTNEG reply with lists this long makes it close the connection without replying.
 *   Only the first milter connection after `arm()` gets it (the negotiation comes before any
 *   envelope, so the hostile session cannot be told apart any other way); the others get a
 *   plain OPTNEG reply.
 * - addheader: `count` ADDHEADER packets (`X-Flood: v`) at end of the message whose envelope
 *   sender contains `trigger`. pymilter makes one libmilter call per header and needs about
 *   7 s of CPU for 2,000,000 of them even against a reader that discards everything, which
 *   would be most of the time being measured; here they go out in batches of 4096 packets,
 *   waiting for 'drain' whenever the socket buffer is full.
 *
 * Every other command gets CONTINUE, end of message ACCEPT. Built on hostile-server's fake
 * milter (127.0.0.1, a free port).
 */
import { frame, u32 } from './bytes'
import { startFakeMilter, scripted, CONTINUE, type FakeConn } from './hostile-server'

export type RawFlood = 'setsymlist' | 'addheader'

export interface RawFloodOptions {
  flood: RawFlood
  /** setsymlist: macro names per stage; addheader: ADDHEADER packets. */
  count: number
  /** addheader: flood the message whose MAIL FROM contains this (default 'flood@'). */
  trigger?: string
}

export interface RawFloodMilter {
  /** inet:PORT@127.0.0.1 */
  readonly spec: string
  /** setsymlist: the next milter connection gets the flooding OPTNEG reply. */
  arm(): void
  /** Set once the flood is written completely (ms it took), or the connection went away. */
  readonly result: { packets: number; ms: number; complete: boolean } | null
  close(): Promise<void>
}

const SMFIF_ALL_V6 = 0x1ff
/** SMFIM_CONNECT .. SMFIM_EOM */
const SYMLIST_STAGES = 7
const BATCH = 4096

/** `{m0} {m1} ...`: `count` distinct macro names, space separated. */
export function macroNames(count: number): string {
  const names = new Array<string>(count)
  for (let i = 0; i < count; i++) names[i] = `{m${i.toString(36)}}`
  return names.join(' ')
}

/** The OPTNEG reply: version 6, every action offered, no protocol flags, and the lists. */
export function symlistOptneg(actions: number, count: number): Buffer {
  const list = Buffer.from(`${macroNames(count)}\0`, 'latin1')
  const parts: Buffer[] = [u32(6), u32(actions), u32(0)]
  for (let stage = 0; stage < SYMLIST_STAGES; stage++) parts.push(u32(stage), list)
  return frame('O', ...parts)
}

function waitDrain(conn: FakeConn): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      conn.socket.off('drain', done)
      conn.socket.off('close', done)
      resolve()
    }
    conn.socket.once('drain', done)
    conn.socket.once('close', done)
  })
}

export async function startRawFloodMilter(opts: RawFloodOptions): Promise<RawFloodMilter> {
  const trigger = opts.trigger ?? 'flood@'
  let armed = false
  let result: RawFloodMilter['result'] = null
  const flooding = new WeakSet<FakeConn>()
  // built before the run (about 40 MB for 800,000 names): building it at the armed OPTNEG would
  // stall the benchmark's own event loop, and its clients, while the flood is measured
  const optneg = opts.flood === 'setsymlist' ? symlistOptneg(0, opts.count) : undefined

  const floodHeaders = async (conn: FakeConn): Promise<void> => {
    const started = performance.now()
    const batch = Buffer.concat(
      new Array<Buffer>(BATCH).fill(frame('h', Buffer.from('X-Flood\0v\0'))),
    )
    let sent = 0
    while (sent < opts.count && !conn.isClosed) {
      const n = Math.min(BATCH, opts.count - sent)
      const ok = conn.socket.write(
        n === BATCH ? batch : batch.subarray(0, (batch.length / BATCH) * n),
      )
      sent += n
      if (!ok) await waitDrain(conn)
    }
    const complete = !conn.isClosed
    conn.send(frame('a'))
    result = { packets: sent, ms: performance.now() - started, complete }
  }

  const milter = await startFakeMilter(
    scripted({
      optneg: (cmd, conn) => {
        if (cmd.cmd !== 'optneg') return
        const actions = cmd.actions & SMFIF_ALL_V6
        if (optneg !== undefined && armed) {
          armed = false
          const started = performance.now()
          optneg.writeUInt32BE(actions, 9) // after length, 'O' and the version
          conn.socket.write(optneg, () => {
            result = { packets: 1, ms: performance.now() - started, complete: true }
          })
          return
        }
        conn.send(frame('O', u32(Math.min(cmd.version, 6)), u32(actions), u32(0)))
      },
      mail: (cmd, conn) => {
        if (cmd.cmd !== 'mail') return
        const sender = cmd.args[0]?.toString('latin1') ?? ''
        if (opts.flood === 'addheader' && sender.includes(trigger)) flooding.add(conn)
        conn.send(CONTINUE)
      },
      eob: (_cmd, conn) => {
        if (flooding.has(conn)) {
          flooding.delete(conn)
          void floodHeaders(conn)
          return
        }
        conn.send(frame('a'))
      },
    }),
  )
  return {
    spec: milter.spec,
    arm() {
      armed = true
    },
    get result() {
      return result
    },
    close: () => milter.close(),
  }
}
