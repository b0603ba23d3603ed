/**
 * The fake milter of the session and memory benchmarks: test/helpers/fake-milter.ts (the one
 * the chain tests use), without recording, answering CONTINUE to everything, or a REPLBODY
 * (written under back-pressure) or an impossible frame at end of message. In this thread, or
 * in a worker thread (bench/fake-worker.ts) so that its decoding is not billed to the client.
 */
import { once } from 'node:events'
import * as path from 'node:path'
import { Worker } from 'node:worker_threads'

import { Rep } from '../lib/protocol/constants'
import { encodeReply, type Reply } from '../lib/protocol/replies'
import { FakeMilter, type Script } from '../test/helpers/fake-milter'
import { REPLBODY_SOURCE } from './stats'

export type FakeMode =
  { kind: 'continue' } | { kind: 'replbody'; bytes: number } | { kind: 'huge-frame' }

export interface FakeHandle {
  socket: string
  stop(): Promise<void>
}

/** REPLBODY frames of 65535 bytes (the last one shorter), then CONTINUE. */
function* replbodyFrames(total: number): Generator<Buffer | Reply> {
  const full = encodeReply({ kind: 'replbody', chunk: REPLBODY_SOURCE })
  for (let left = total; left > 0; left -= 65535) {
    yield left >= 65535
      ? full
      : encodeReply({ kind: 'replbody', chunk: REPLBODY_SOURCE.subarray(0, left) })
  }
  yield { kind: 'continue' }
}

export function fakeScript(mode: FakeMode): Script | undefined {
  switch (mode.kind) {
    case 'continue':
      return undefined
    case 'replbody':
      return (cmd) => (cmd.cmd === 'eob' ? { paced: replbodyFrames(mode.bytes) } : undefined)
    case 'huge-frame':
      // 4 GiB - 1 announced, then nothing: the client must refuse at once.
      return (cmd) =>
        cmd.cmd === 'eob' ? Buffer.from([0xff, 0xff, 0xff, 0xff, Rep.REPLBODY]) : undefined
  }
}

const workers = new Set<Worker>()
const fakes = new Set<FakeMilter>()

/** A fake milter on this thread. */
export async function startFake(mode: FakeMode): Promise<FakeHandle> {
  const fake = await FakeMilter.start(fakeScript(mode), { record: false })
  fakes.add(fake)
  return {
    socket: fake.spec,
    stop: async () => {
      fakes.delete(fake)
      await fake.close()
    },
  }
}

/** A CONTINUE fake milter in a worker thread (its own core). */
export async function startFakeWorker(): Promise<FakeHandle> {
  const worker = new Worker(path.join(__dirname, 'fake-worker.js'))
  workers.add(worker)
  const [msg] = (await once(worker, 'message')) as unknown[]
  const port = (msg as { port?: unknown } | undefined)?.port
  if (typeof port !== 'number') throw new Error('fake milter worker sent no port')
  return {
    socket: `inet:${port}@127.0.0.1`,
    stop: async () => {
      workers.delete(worker)
      await worker.terminate()
    },
  }
}

/** Stops every fake started here (cleanup, also on SIGINT). */
export async function stopAllFakes(): Promise<void> {
  await Promise.allSettled([
    ...[...workers].map((w) => w.terminate()),
    ...[...fakes].map((f) => f.close()),
  ])
  workers.clear()
  fakes.clear()
}
