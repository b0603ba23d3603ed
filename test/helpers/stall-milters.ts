/**
 * Milters that return a modification at end of message, for the end-of-message stall
 * (TCP_QUICKACK after SMFIC_BODYEOB, lib/transport/quickack.ts): the tests
 * (test/integration/eom-stall.test.ts) and the stall bench (bench/stall.ts).
 *
 * - `startCAddHeader`: test/milters/addheader.c, libmilter in C, compiled here with `cc`
 *   against libmilter-dev (as the bench compiles bench/milters/noop.c), adding one header;
 * - `startSplitWriteMilter`: a milter without libmilter, in this process: it answers every
 *   command itself and at end of message writes SMFIR_ADDHEADER and then SMFIR_CONTINUE in two
 *   separate writes, Nagle on (setNoDelay(false)), as a hand-written milter would.
 * pymilter, OpenDKIM and rspamd have their own helpers (milter-process.ts, opendkim.ts,
 * daemons/rspamd.ts).
 */
import { spawnSync } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'

import { decodeCommand } from '../../lib/protocol/commands'
import { ACTS_V2 } from '../../lib/protocol/constants'
import { FrameDecoder } from '../../lib/protocol/frame'
import { encodeReply, type Reply } from '../../lib/protocol/replies'
import {
  DaemonProcess,
  DaemonRegistry,
  makeTempDir,
  removeTempDir,
  withFreePort,
} from './daemons/process'
import { REPO_ROOT, freePort } from './paths'

/** Where a test milter listens. */
export type StallTransport = 'inet' | 'inet6' | 'unix'

/** A running milter of this module. */
export interface StallMilter {
  /** libmilter socket spec: inet:PORT@127.0.0.1, inet6:PORT@::1, unix:/path. */
  readonly socket: string
  /** The milter's process (this process for the split-write milter). */
  readonly pid: number
  stop(): Promise<void>
}

const C_SOURCE = path.join(REPO_ROOT, 'test', 'milters', 'addheader.c')
const MFAPI = '/usr/include/libmilter/mfapi.h'

/** The header test/milters/addheader.c adds. */
export const C_HEADER = { name: 'X-C-Milter', value: 'added' } as const
/** The header the split-write milter adds. */
export const SPLIT_HEADER = { name: 'X-Split-Write', value: 'added' } as const

const registry = new DaemonRegistry()
let built: { dir: string; bin: string } | undefined

/** Compiles test/milters/addheader.c once per process; throws naming the packages it needs. */
function buildCAddHeader(): string {
  if (built) return built.bin
  if (!fs.existsSync(MFAPI)) throw new Error(`${MFAPI} not found: apt-get install libmilter-dev`)
  const dir = makeTempDir('addheader-c-')
  const bin = path.join(dir, 'addheader')
  const r = spawnSync('cc', ['-O2', '-o', bin, C_SOURCE, '-lmilter', '-lpthread'], {
    encoding: 'utf8',
  })
  if (r.error !== undefined || r.status !== 0) {
    removeTempDir(dir)
    throw new Error(
      `cannot compile ${C_SOURCE}: ${r.error?.message ?? r.stderr + r.stdout}; ` +
        'apt-get install gcc libmilter-dev',
    )
  }
  built = { dir, bin }
  return bin
}

/** test/milters/addheader.c (libmilter in C) on a free port or a unix socket. */
export async function startCAddHeader(transport: StallTransport = 'inet'): Promise<StallMilter> {
  const bin = buildCAddHeader()
  const startOn = async (socket: string): Promise<StallMilter> => {
    const p = DaemonProcess.spawn({
      name: 'addheader.c',
      bin,
      args: ['-p', socket],
      cwd: path.dirname(bin),
      processGroup: false,
      stopGraceMs: 3000,
      registry,
    })
    await p.startedWhen(`listening on ${socket}`, () => p.output().includes('listening on'), {
      timeoutMs: 10_000,
      pollMs: 20,
    })
    return {
      socket,
      pid: p.pid,
      stop: () => p.stop(),
    }
  }
  if (transport === 'unix') return startOn(`unix:${path.join(path.dirname(bin), `s${Date.now()}`)}`)
  return withFreePort(
    (port) => startOn(transport === 'inet' ? `inet:${port}@127.0.0.1` : `inet6:${port}@::1`),
    (err) => /cannot listen/.test(err.message),
  )
}

/** Stops every C milter of this module and removes the binary. */
export async function stopCAddHeaders(): Promise<void> {
  await registry.stopAll()
  if (built) {
    removeTempDir(built.dir)
    built = undefined
  }
}

const CONTINUE: Reply = { kind: 'continue' }
const ADD: Reply = {
  kind: 'addheader',
  name: Buffer.from(SPLIT_HEADER.name),
  value: Buffer.from(SPLIT_HEADER.value),
}

/** One connection of the split-write milter: every step answered, the edit at EOB. */
function serve(sock: net.Socket): void {
  sock.setNoDelay(false) // Nagle on, as libmilter's sockets (and most hand-written milters)
  const decoder = new FrameDecoder()
  sock.on('error', () => sock.destroy())
  sock.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      const c = decodeCommand(frame)
      switch (c.cmd) {
        case 'optneg':
          // the version the client offers, at most 6; the actions of v2 include ADDHDRS
          sock.write(
            encodeReply({
              kind: 'optneg',
              version: Math.min(c.version, 6),
              actions: ACTS_V2 & c.actions,
              protocol: 0,
              symlist: new Map(),
              symlistWarnings: [],
            }),
          )
          break
        case 'macro':
        case 'abort':
        case 'quit_nc':
          break
        case 'quit':
          sock.end()
          break
        case 'eob':
          // two writes, the second once the first is on its way: two segments under Nagle
          sock.write(encodeReply(ADD), () => sock.write(encodeReply(CONTINUE)))
          break
        default:
          sock.write(encodeReply(CONTINUE))
      }
    }
  })
}

/** The split-write milter (no libmilter), listening in this process. */
export async function startSplitWriteMilter(
  transport: StallTransport = 'inet',
): Promise<StallMilter> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    serve(s)
  })
  let socket: string
  let unixDir: string | undefined
  if (transport === 'unix') {
    unixDir = makeTempDir('split-write-')
    const file = path.join(unixDir, 'milter.sock')
    server.listen(file)
    socket = `unix:${file}`
  } else {
    const host = transport === 'inet' ? '127.0.0.1' : '::1'
    const port = await freePort(host)
    server.listen(port, host)
    socket = transport === 'inet' ? `inet:${port}@127.0.0.1` : `inet6:${port}@::1`
  }
  await once(server, 'listening')
  return {
    socket,
    pid: process.pid,
    stop: async () => {
      for (const s of sockets) s.destroy()
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
      if (unixDir) removeTempDir(unixDir)
    },
  }
}
