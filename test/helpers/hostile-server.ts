/**
 * Small in-process milters that do what libmilter won't: hang, close
 * mid-frame, send garbage or absurd lengths. Each listens on 127.0.0.1:0
 * (or a unix socket in a temp directory), records every byte it receives,
 * decodes the commands with decodeCommand, and answers per a script.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { decodeCommand, type Command } from '../../lib/protocol/commands'
import { FrameDecoder } from '../../lib/protocol/frame'
import { frame, u32 } from './bytes'

/** The server's side of one client connection. */
export class FakeConn {
  /** Every chunk received, in order. */
  readonly chunks: Buffer[] = []
  /** Every command decoded so far, in order. */
  readonly commands: Command[] = []
  /** Set when the client sent something that is not a valid command stream. */
  decodeError: unknown
  /** Resolves when the socket is closed (by either side). */
  readonly closed: Promise<void>
  isClosed = false
  private readonly decoder = new FrameDecoder()
  private readonly waiters: Array<{ pred: (c: Command) => boolean; resolve: () => void }> = []

  constructor(
    readonly socket: net.Socket,
    private readonly handler: Handler,
  ) {
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.isClosed = true
        resolve()
      })
    })
    socket.on('error', () => undefined)
    socket.on('data', (chunk) => this.onData(chunk))
  }

  /** All bytes received so far. */
  bytes(): Buffer {
    return Buffer.concat(this.chunks)
  }

  /** Writes packets unless the socket is gone. */
  send(...packets: Buffer[]): void {
    if (this.socket.destroyed || this.socket.writableEnded) return
    for (const p of packets) this.socket.write(p)
  }

  /** Resolves once a command matching pred has arrived. */
  waitFor(pred: (c: Command) => boolean): Promise<void> {
    if (this.commands.some(pred)) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push({ pred, resolve }))
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk)
    if (this.decodeError !== undefined) return
    let frames
    try {
      frames = this.decoder.push(chunk)
    } catch (e) {
      this.decodeError = e
      this.socket.destroy()
      return
    }
    for (const f of frames) {
      let cmd: Command
      try {
        cmd = decodeCommand(f)
      } catch (e) {
        this.decodeError = e
        this.socket.destroy()
        return
      }
      this.commands.push(cmd)
      for (const w of [...this.waiters]) {
        if (w.pred(cmd)) {
          this.waiters.splice(this.waiters.indexOf(w), 1)
          w.resolve()
        }
      }
      this.handler(cmd, this)
    }
  }
}

/** Called for every decoded command. */
export type Handler = (cmd: Command, conn: FakeConn) => void

/** A running fake milter. */
export interface FakeMilter {
  /** Socket spec for parseSocketSpec: inet:PORT@127.0.0.1 or unix:/tmp/.../milter.sock. */
  readonly spec: string
  readonly conns: FakeConn[]
  /** The first (or next) connection. */
  connection(): Promise<FakeConn>
  /** Stops listening and destroys every connection. */
  close(): Promise<void>
}

/** Starts a fake milter; every decoded command goes to handler. */
export async function startFakeMilter(
  handler: Handler,
  opts: { unix?: boolean } = {},
): Promise<FakeMilter> {
  const conns: FakeConn[] = []
  const pending: Array<(c: FakeConn) => void> = []
  const server = net.createServer((socket) => {
    const conn = new FakeConn(socket, handler)
    conns.push(conn)
    const p = pending.shift()
    if (p) p(conn)
  })
  let spec: string
  let dir: string | undefined
  if (opts.unix) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-hostile-'))
    const sockPath = path.join(dir, 'milter.sock')
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(sockPath, () => resolve())
    })
    spec = `unix:${sockPath}`
  } else {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    const addr = server.address() as net.AddressInfo
    spec = `inet:${addr.port}@127.0.0.1`
  }
  let seen = 0
  return {
    spec,
    conns,
    connection(): Promise<FakeConn> {
      const c = conns[seen]
      if (c) {
        seen++
        return Promise.resolve(c)
      }
      return new Promise((resolve) => {
        pending.push((conn) => {
          seen++
          resolve(conn)
        })
      })
    },
    async close(): Promise<void> {
      for (const c of conns) c.socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      if (dir) fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** What a scripted milter does on one command. */
export type Reaction =
  Buffer | readonly Buffer[] | 'hang' | 'close' | ((cmd: Command, conn: FakeConn) => void)

/** Command names that get a reply from a real milter. */
export type CommandName = Command['cmd']

/** The OPTNEG answer of a well-behaved milter: version, actions, protocol. */
export function optnegReply(version = 6, actions = 0x1ff, protocol = 0): Buffer {
  return frame('O', u32(version), u32(actions), u32(protocol))
}

/** CONTINUE. */
export const CONTINUE = frame('c')

const NO_REPLY: ReadonlySet<CommandName> = new Set<CommandName>(['macro', 'abort', 'quit_nc'])

/**
 * A handler that answers OPTNEG with optnegReply() and every other
 * replied command with CONTINUE, unless `on` says otherwise. QUIT ends the
 * connection, as libmilter does.
 */
export function scripted(on: Partial<Record<CommandName, Reaction>> = {}): Handler {
  return (cmd, conn) => {
    const reaction = on[cmd.cmd]
    if (reaction === undefined) {
      if (cmd.cmd === 'optneg') conn.send(optnegReply())
      else if (cmd.cmd === 'quit') conn.socket.end()
      else if (!NO_REPLY.has(cmd.cmd)) conn.send(CONTINUE)
      return
    }
    if (reaction === 'hang') return
    if (reaction === 'close') {
      conn.socket.end()
      return
    }
    if (typeof reaction === 'function') {
      reaction(cmd, conn)
      return
    }
    if (Buffer.isBuffer(reaction)) conn.send(reaction)
    else conn.send(...(reaction as readonly Buffer[]))
  }
}
