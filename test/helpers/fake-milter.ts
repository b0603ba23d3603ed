/**
 * The in-process fake milter shared by the unit tests (test/unit/chain) and the
 * benchmarks (bench/): listens on 127.0.0.1:0, decodes every command
 * (FrameDecoder + decodeCommand), records it, and answers with encodeReply per a
 * replaceable script. Commands are recorded before they are answered, so once a
 * client call has its reply, the command is in `commands`.
 *
 * For load (bench/), `record: false` keeps nothing per command, and a script can
 * answer with raw bytes or with a long run of replies written under back-pressure
 * (`{ paced }`, e.g. a 50 MiB REPLBODY); answers to later commands wait for it.
 * `startFakeMilterWorker()` runs the default (CONTINUE) milter in a worker thread, so that its
 * decoding is not billed to a client measured on the main thread.
 */
import { once } from 'node:events'
import * as net from 'node:net'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'

import { decodeCommand, type Command } from '../../lib/protocol/commands'
import { Cmd } from '../../lib/protocol/constants'
import { FrameDecoder } from '../../lib/protocol/frame'
import { encodeReply, type Reply } from '../../lib/protocol/replies'
import { MilterSession } from '../../lib/session/session'
import type { MilterDef } from '../../lib/config'

/** Replies written one at a time, each after the socket drained (back-pressure). */
export interface Paced {
  paced: Iterable<Reply | Buffer>
}

/**
 * What the milter does with one command; undefined = the default (see FakeMilter).
 * A Buffer is written as is (raw bytes, e.g. an impossible frame header).
 */
export type Answer = Reply | Buffer | readonly Reply[] | Paced | 'hang' | 'close' | undefined

/** Decides the answer to each command. */
export type Script = (cmd: Command, conn: FakeConn) => Answer

/** Bare replies, for scripts. */
export const R = {
  continue: { kind: 'continue' },
  accept: { kind: 'accept' },
  reject: { kind: 'reject' },
  tempfail: { kind: 'tempfail' },
  discard: { kind: 'discard' },
  shutdown: { kind: 'shutdown' },
} as const satisfies Record<string, Reply>

/** SMFIR_REPLYCODE with the given text (lines joined with CRLF). */
export function replycode(...lines: string[]): Reply {
  return { kind: 'replycode', text: Buffer.from(lines.join('\r\n')) }
}

/** SMFIR_ADDHEADER. */
export function addheader(name: string, value: string): Reply {
  return { kind: 'addheader', name: Buffer.from(name), value: Buffer.from(value) }
}

/** SMFIR_CHGHEADER. */
export function chgheader(index: number, name: string, value: string): Reply {
  return { kind: 'chgheader', index, name: Buffer.from(name), value: Buffer.from(value) }
}

/** A well-behaved OPTNEG answer: v6, every action, every step wanted and answered. */
export function optneg(version = 6, actions = 0x1ff, protocol = 0): Reply {
  return { kind: 'optneg', version, actions, protocol, symlist: new Map(), symlistWarnings: [] }
}

/** The macro stage byte of each command that has macros. */
const STAGE_OF: Readonly<Partial<Record<Command['cmd'], number>>> = {
  connect: Cmd.CONNECT,
  helo: Cmd.HELO,
  mail: Cmd.MAIL,
  rcpt: Cmd.RCPT,
  data: Cmd.DATA,
  eoh: Cmd.EOH,
  eob: Cmd.BODYEOB,
}

/** The milter's side of one connection. */
export class FakeConn {
  readonly commands: Command[] = []
  decodeError: unknown
  readonly closed: Promise<void>
  private readonly decoder = new FrameDecoder()
  private readonly waiters: Array<{ pred: (c: Command) => boolean; resolve: () => void }> = []
  /** Set while a paced answer is being written: later answers queue behind it. */
  private pacing: Promise<void> | undefined

  constructor(
    readonly socket: net.Socket,
    private readonly milter: FakeMilter,
    private readonly record = true,
  ) {
    this.closed = once(socket, 'close').then(() => undefined)
    socket.on('error', () => undefined)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
  }

  /** The command names in order, MACRO packets left out. */
  get names(): string[] {
    return this.commands.filter((c) => c.cmd !== 'macro').map((c) => c.cmd)
  }

  /** The commands of one kind. */
  all<K extends Command['cmd']>(cmd: K): Array<Command & { cmd: K }> {
    return this.commands.filter((c): c is Command & { cmd: K } => c.cmd === cmd)
  }

  /** The macros last sent for the stage of `cmd` (name -> value). */
  macros(cmd: Command['cmd']): Map<string, string> {
    const stage = STAGE_OF[cmd]
    const out = new Map<string, string>()
    for (const c of this.commands) {
      if (c.cmd !== 'macro' || c.stageCmd !== stage) continue
      out.clear()
      for (const [k, v] of c.pairs) out.set(k.toString('latin1'), v.toString('utf8'))
    }
    return out
  }

  /** Resolves once a matching command has arrived. */
  waitFor(pred: (c: Command) => boolean): Promise<void> {
    if (this.commands.some(pred)) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push({ pred, resolve }))
  }

  send(...replies: Array<Reply | Buffer>): void {
    if (this.socket.destroyed || this.socket.writableEnded) return
    for (const r of replies) this.socket.write(Buffer.isBuffer(r) ? r : encodeReply(r))
  }

  /** Writes each reply after the previous one drained. */
  private async sendPaced(replies: Iterable<Reply | Buffer>): Promise<void> {
    for (const r of replies) {
      if (this.socket.destroyed || this.socket.writableEnded) return
      if (!this.socket.write(Buffer.isBuffer(r) ? r : encodeReply(r))) {
        await Promise.race([once(this.socket, 'drain'), this.closed])
      }
    }
  }

  private onData(chunk: Buffer): void {
    if (this.decodeError !== undefined) return
    let cmds: Command[]
    try {
      cmds = this.decoder.push(chunk).map((f) => decodeCommand(f))
    } catch (e) {
      this.decodeError = e
      this.socket.destroy()
      return
    }
    for (const cmd of cmds) {
      if (this.record) this.commands.push(cmd)
      for (const w of [...this.waiters]) {
        if (!w.pred(cmd)) continue
        this.waiters.splice(this.waiters.indexOf(w), 1)
        w.resolve()
      }
      if (this.pacing) this.setPacing(this.pacing.then(() => this.answer(cmd)))
      else {
        const p = this.answer(cmd)
        if (p) this.setPacing(p)
      }
    }
  }

  /** Answers queue behind `p` until it settles. */
  private setPacing(p: Promise<void>): void {
    this.pacing = p
    void p.finally(() => {
      if (this.pacing === p) this.pacing = undefined
    })
  }

  /** Answers one command; a promise while a paced answer is being written. */
  private answer(cmd: Command): Promise<void> | undefined {
    const a = this.milter.script(cmd, this)
    if (a === 'hang') return
    if (a === 'close') {
      this.socket.end()
      return
    }
    if (a === undefined) {
      if (cmd.cmd === 'optneg') this.send(optneg())
      else if (cmd.cmd === 'quit') this.socket.end()
      else if (cmd.cmd !== 'macro' && cmd.cmd !== 'abort' && cmd.cmd !== 'quit_nc')
        this.send(R.continue)
      return
    }
    if (Buffer.isBuffer(a)) this.send(a)
    else if (Array.isArray(a)) this.send(...(a as readonly Reply[]))
    else if ('paced' in a) {
      return this.sendPaced(a.paced).catch(() => {
        this.socket.destroy()
      })
    } else this.send(a as Reply)
    return undefined
  }
}

/** A listening fake milter. */
export class FakeMilter {
  readonly conns: FakeConn[] = []
  /** Replace at any time; the default answers OPTNEG and CONTINUEs everything. */
  script: Script = () => undefined
  private readonly sockets = new Set<net.Socket>()

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    record: boolean,
  ) {
    server.on('connection', (socket) => {
      socket.setNoDelay(true)
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
      const conn = new FakeConn(socket, this, record)
      this.conns.push(conn)
      // without recording, closed connections are not kept either
      if (!record) void conn.closed.then(() => this.conns.splice(this.conns.indexOf(conn), 1))
    })
  }

  /**
   * Listens on 127.0.0.1:0. `record: false` (load and memory runs): the connections keep no
   * commands (`commands` stays empty, `waitFor` sees only commands arriving after it is called).
   */
  static async start(script?: Script, opts: { record?: boolean } = {}): Promise<FakeMilter> {
    const server = net.createServer()
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const m = new FakeMilter(
      server,
      (server.address() as net.AddressInfo).port,
      opts.record ?? true,
    )
    if (script) m.script = script
    return m
  }

  /** Socket spec for milter.ini. */
  get spec(): string {
    return `inet:${this.port}@127.0.0.1`
  }

  /** The most recent connection. */
  get last(): FakeConn {
    const c = this.conns[this.conns.length - 1]
    if (!c) throw new Error('the fake milter has no connection yet')
    return c
  }

  /** Dials and negotiates a session for `def` (the chain's `open` option). */
  async open(def: MilterDef): Promise<MilterSession> {
    const sock = net.connect(this.port, '127.0.0.1')
    await once(sock, 'connect')
    sock.setNoDelay(true) // as lib/transport dial() does
    return MilterSession.negotiate(sock, {
      name: def.name,
      version: def.protocol,
      timeouts: def.timeouts,
      macros: def.macros,
    })
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}

/** A CONTINUE fake milter in a worker thread (its own core): its spec, and close(). */
export async function startFakeMilterWorker(): Promise<{ spec: string; close(): Promise<void> }> {
  const worker = new Worker(__filename, { workerData: { fakeMilterWorker: true } })
  const [msg] = (await once(worker, 'message')) as unknown[]
  const port = (msg as { port?: unknown } | undefined)?.port
  if (typeof port !== 'number') throw new Error('fake milter worker sent no port')
  return {
    spec: `inet:${port}@127.0.0.1`,
    close: async () => {
      await worker.terminate()
    },
  }
}

// The worker's side: start, post the port, stop on any message.
if (!isMainThread && (workerData as { fakeMilterWorker?: boolean } | null)?.fakeMilterWorker) {
  void FakeMilter.start(undefined, { record: false }).then((fake) => {
    parentPort?.postMessage({ port: fake.port })
    parentPort?.once('message', () => void fake.close().then(() => parentPort?.close()))
  })
}
