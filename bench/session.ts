/**
 * 2. Session throughput: one MilterSession running many messages through sendContent, against
 * the real libmilter filter test/milters/scripted.py (pymilter) and against the shared fake
 * milter (test/helpers/fake-milter.ts) in a worker thread, answering CONTINUE.
 */
import { once } from 'node:events'
import * as net from 'node:net'
import { performance } from 'node:perf_hooks'

import { encodeHelo, encodeOptneg } from '../lib/protocol/commands'
import { FrameDecoder } from '../lib/protocol/frame'
import { parseSocketSpec } from '../lib/transport/spec'
import { FakeMilter, startFakeMilterWorker } from '../test/helpers/fake-milter'
import { assertPymilterInstalled, startScriptedMilter } from '../test/helpers/milter-process'
import type { Options } from './args'
import { oneMessage, openBenchSession } from './milter-session'
import { fmt, n, note, record } from './report'
import { MB, MiB, percentile, textBlock } from './stats'

interface RunResult {
  perSec: number
  mbps: number
  p50: number
  p99: number
  ms: number
  /** Round trips (command answered by a reply) per message. */
  roundTrips: number
}

async function runMessages(socket: string, count: number, body: Buffer): Promise<RunResult> {
  const s = await openBenchSession(socket)
  try {
    const warm = Math.min(20, Math.max(2, Math.floor(count / 10)))
    for (let i = 0; i < warm; i++) await oneMessage(s, -i, body)
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < count; i++) {
      const t = performance.now()
      await oneMessage(s, i, body)
      lat.push(performance.now() - t)
    }
    const ms = performance.now() - t0
    lat.sort((x, y) => x - y)
    return {
      perSec: (count / ms) * 1000,
      mbps: ((count * body.length) / MB / ms) * 1000,
      p50: percentile(lat, 0.5),
      p99: percentile(lat, 0.99),
      ms,
      // MAIL, RCPT, DATA, 10 headers, EOH, body packets, EOB
      roundTrips: 3 + 10 + 1 + Math.ceil(body.length / 65535) + 1,
    }
  } finally {
    s.quit()
  }
}

function recordRun(target: string, workload: string, count: number, r: RunResult): void {
  const what = `${n(count)} ${workload} in sequence on one connection (MAIL, RCPT, DATA, 10 HEADER, EOH, BODY, EOB: ${r.roundTrips} round trips; Postfix macro lists) in ${fmt(r.ms)} ms`
  const name = `${target}: ${workload.split(' (')[0] ?? workload}`
  record('session', name, r.perSec, 'msg/s', what)
  record('session', name, r.mbps, 'MB/s', `body bytes / wall time, same run`)
  record('session', name, r.p50, 'ms p50', `per-message latency MAIL..EOB reply, same run`)
  record('session', name, r.p99, 'ms p99', `per-message latency MAIL..EOB reply, same run`)
}

/** Bare ping-pong with the fake milter (no MilterSession): one HELO frame out, CONTINUE back. */
async function rawRoundTrips(
  socket: string,
  count: number,
): Promise<{ mean: number; p50: number }> {
  const spec = parseSocketSpec(socket)
  if (spec.kind !== 'tcp') throw new Error('tcp only')
  const sock = net.createConnection({ host: spec.host, port: spec.port })
  await once(sock, 'connect')
  sock.setNoDelay(true)
  const dec = new FrameDecoder()
  let waiter: (() => void) | undefined
  sock.on('data', (chunk: Buffer) => {
    const frames = dec.push(chunk)
    for (let i = 0; i < frames.length; i++) {
      const w = waiter
      waiter = undefined
      w?.()
    }
  })
  const ask = (packet: Buffer): Promise<void> =>
    new Promise<void>((resolve) => {
      waiter = resolve
      sock.write(packet)
    })
  try {
    await ask(encodeOptneg(6, 0x1ff, 0))
    const helo = encodeHelo('client.example.com')
    for (let i = 0; i < 200; i++) await ask(helo)
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < count; i++) {
      const t = performance.now()
      await ask(helo)
      lat.push(performance.now() - t)
    }
    const mean = (performance.now() - t0) / count
    lat.sort((x, y) => x - y)
    return { mean, p50: percentile(lat, 0.5) }
  } finally {
    sock.destroy()
  }
}

export async function sessionSection(o: Options): Promise<void> {
  const small = textBlock(2048, 11)
  const large = textBlock(o.largeBodyBytes, 12)
  const smallWhat = 'small messages (10 headers, 2 KB body)'
  const largeWhat = `large messages (10 headers, ${n(o.largeBodyBytes / MiB)} MiB body)`

  let pymilter = true
  try {
    assertPymilterInstalled()
  } catch (e) {
    pymilter = false
    note(`real-milter figures skipped: ${e instanceof Error ? e.message : String(e)}`)
  }
  if (pymilter) {
    const m = await startScriptedMilter({})
    try {
      const rs = await runMessages(m.socket, o.smallMessages, small)
      recordRun('scripted.py', smallWhat, o.smallMessages, rs)
      const rl = await runMessages(m.socket, o.largeMessages, large)
      recordRun('scripted.py', largeWhat, o.largeMessages, rl)
    } finally {
      await m.stop()
    }
  }

  const fake = o.fakeSameThread
    ? await FakeMilter.start(undefined, { record: false })
    : await startFakeMilterWorker()
  const target = o.fakeSameThread ? 'fake (same thread)' : 'fake (worker)'
  try {
    const pings = o.quick ? 2000 : 10000
    const rtt = await rawRoundTrips(fake.spec, pings)
    record(
      'session',
      `${target}: bare round trip`,
      rtt.p50 * 1000,
      'us p50',
      `${n(pings)} x (HELO frame -> CONTINUE) on a raw socket, no MilterSession: the loopback + event-loop floor (mean ${fmt(rtt.mean * 1000)} us)`,
    )
    for (const [what, count, body] of [
      [smallWhat, o.smallMessages, small],
      [largeWhat, o.largeMessages, large],
    ] as const) {
      const r = await runMessages(fake.spec, count, body)
      recordRun(target, what, count, r)
      const perMsg = r.ms / count
      const over = perMsg - r.roundTrips * rtt.mean
      record(
        'session',
        `${target}: ${what.split(' (')[0] ?? what}`,
        over * 1000,
        'us/msg overhead',
        `mean time per message (${fmt(perMsg * 1000)} us) minus ${r.roundTrips} bare round trips (${fmt(rtt.mean * 1000)} us each): session, encoding and copying cost`,
      )
    }
  } finally {
    await fake.close()
  }
  note(
    'scripted.py is pymilter on libmilter and writes one JSONL log line (with macros) per event; ' +
      (o.fakeSameThread
        ? 'the fake milter ran on the main thread, so its own decoding is billed to our figures.'
        : 'the fake milter ran in a worker thread of this process (own core), so its figures are our client cost plus loopback latency.'),
  )
}
