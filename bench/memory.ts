/**
 * 3. Memory, in a fresh `node --expose-gc` child process for a clean RSS baseline: a 50 MiB
 * REPLBODY dropped (control) and spooled through BodySpool, then read back; a frame that
 * announces 4 GiB.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import * as path from 'node:path'
import { performance } from 'node:perf_hooks'

import { BodySpool } from '../lib/body-spool'
import { isMilterError } from '../lib/errors'
import { Rep } from '../lib/protocol/constants'
import { FrameDecoder } from '../lib/protocol/frame'
import { encodeReply, type Reply } from '../lib/protocol/replies'
import { FakeMilter, type Script } from '../test/helpers/fake-milter'
import type { Options } from './args'
import { oneMessage, openBenchSession } from './milter-session'
import { fmt, n, note, record, type Figure } from './report'
import {
  MB,
  MiB,
  REPLBODY_SOURCE,
  RssSampler,
  gc,
  rss,
  settle,
  textBlock,
  type MemPeak,
} from './stats'

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

/** The fake milter (test/helpers/fake-milter.ts) answers EOB with `total` bytes of REPLBODY. */
const replbodyAtEob =
  (total: number): Script =>
  (cmd) =>
    cmd.cmd === 'eob' ? { paced: replbodyFrames(total) } : undefined

/** It answers EOB with a frame that announces 4 GiB - 1, then nothing: the client must refuse. */
const hugeFrameAtEob: Script = (cmd) =>
  cmd.cmd === 'eob' ? Buffer.from([0xff, 0xff, 0xff, 0xff, Rep.REPLBODY]) : undefined

/** One message whose EOB is answered with `total` bytes of REPLBODY, chunks handed to `sink`. */
async function replbodyRun(
  total: number,
  sink: (chunk: Buffer) => Promise<void> | void,
  after?: () => Promise<void>,
): Promise<{ mem: MemPeak; ms: number }> {
  const fake = await FakeMilter.start(replbodyAtEob(total), { record: false })
  const s = await openBenchSession(fake.spec)
  try {
    await settle()
    const sampler = new RssSampler()
    const t0 = performance.now()
    await oneMessage(s, 1, textBlock(2048, 13), async (chunk) => {
      await sink(chunk)
    })
    await after?.()
    const ms = performance.now() - t0
    return { mem: sampler.stop(), ms }
  } finally {
    s.quit()
    await fake.close()
  }
}

export async function memorySection(o: Options): Promise<void> {
  if (!gc) note('gc() not available: RSS baselines include uncollected garbage')
  process.on('warning', (w) =>
    note(`process warning during the memory section: ${w.name}: ${w.message}`),
  )
  const total = o.replbodyBytes
  const chunks = Math.ceil(total / 65535)
  const sizeText = `${n(total / MiB)} MiB`
  const source = `${n(chunks)} REPLBODY frames of <= 65535 B from a fake milter (same process, writes back-pressured)`
  const rssText = (m: MemPeak): string =>
    `RSS of a fresh node process sampled every 10 ms, base ${fmt(m.base / MiB)} MiB`

  // Control: the chunks are dropped as they arrive.
  let dropped = 0
  const control = await replbodyRun(total, (chunk) => {
    dropped += chunk.length
  })
  if (dropped !== total) throw new Error(`received ${dropped} of ${total} bytes`)
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.mem.growth / MiB,
    'MiB RSS peak growth',
    `control: ${source}, onReplaceBody drops each chunk; ${rssText(control.mem)}`,
  )
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.mem.buffersGrowth / MiB,
    'MiB Buffers peak',
    'same run: peak growth of process.memoryUsage().arrayBuffers (live plus not yet collected)',
  )
  record(
    'memory',
    `REPLBODY ${sizeText} -> dropped`,
    control.ms,
    'ms',
    `same run, MAIL..EOB reply: ${fmt((total / MB / control.ms) * 1000)} MB/s`,
  )

  const spool = new BodySpool()
  try {
    const run = await replbodyRun(
      total,
      (chunk) => spool.write(chunk),
      () => spool.finish(),
    )
    if (spool.bytes !== total) throw new Error(`spooled ${spool.bytes} of ${total} bytes`)
    if (
      run.mem.buffersGrowth > 0.8 * total &&
      run.mem.buffersGrowth > 1.3 * control.mem.buffersGrowth
    )
      note(
        `BodySpool run: Buffer memory grew by ${fmt(run.mem.buffersGrowth / MiB)} MiB for a ${sizeText} body while the ` +
          `control run (chunks dropped) peaked at ${fmt(control.mem.buffersGrowth / MiB)} MiB: REPLBODY frames pile up ` +
          'in memory while onReplaceBody waits for the spool file (the socket is not paused). Try --replbody-mib=200 to see it scale.',
      )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.mem.growth / MiB,
      'MiB RSS peak growth',
      `${source} through onReplaceBody into BodySpool.write; ${rssText(run.mem)}`,
    )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.mem.buffersGrowth / MiB,
      'MiB Buffers peak',
      'same run: peak growth of process.memoryUsage().arrayBuffers (live plus not yet collected)',
    )
    record(
      'memory',
      `REPLBODY ${sizeText} -> BodySpool`,
      run.ms,
      'ms',
      `same run, MAIL..EOB reply and spool file flushed: ${fmt((total / MB / run.ms) * 1000)} MB/s`,
    )

    await settle()
    const readback = new RssSampler()
    const t1 = performance.now()
    let lines = 0
    let bytes = 0
    for await (const line of spool.lines()) {
      lines++
      bytes += line.length
    }
    const readMs = performance.now() - t1
    const r = readback.stop()
    record(
      'memory',
      `spool.lines() ${sizeText}`,
      r.growth / MiB,
      'MiB RSS peak growth',
      `reading the spooled body back as ${n(lines)} CRLF lines (${fmt(bytes / MiB)} MiB); ${rssText(r)}`,
    )
    record(
      'memory',
      `spool.lines() ${sizeText}`,
      readMs,
      'ms',
      `same read-back: ${fmt((bytes / MB / readMs) * 1000)} MB/s, ${n((lines / readMs) * 1000)} lines/s`,
    )
  } finally {
    await spool.dispose()
  }

  // A frame that announces 4 GiB - 1 bytes, straight into a FrameDecoder.
  await settle()
  const before = rss()
  const dec = new FrameDecoder()
  const t2 = performance.now()
  let threw = ''
  try {
    dec.push(Buffer.from([0xff, 0xff, 0xff, 0xff, Rep.REPLBODY]))
  } catch (e) {
    threw = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
  }
  const us = (performance.now() - t2) * 1000
  const delta = rss() - before
  if (threw === '') note('FrameDecoder accepted a 4 GiB frame header without throwing')
  record(
    'memory',
    'FrameDecoder, 4 GiB frame announced',
    us,
    'us to throw',
    `push() of the 5-byte header 0xffffffff 'b' (default limit 64 MiB): ${threw || 'no error'}`,
  )
  record(
    'memory',
    'FrameDecoder, 4 GiB frame announced',
    delta / 1024,
    'KiB RSS change',
    'RSS after the throw minus RSS before it',
  )

  // The same through a session: the milter announces 4 GiB at end of message.
  const huge = await FakeMilter.start(hugeFrameAtEob, { record: false })
  const hs = await openBenchSession(huge.spec)
  try {
    await settle()
    const sampler = new RssSampler()
    const t3 = performance.now()
    let err = ''
    try {
      await oneMessage(hs, 1, textBlock(2048, 14))
    } catch (e) {
      err = isMilterError(e)
        ? `${e.name}: ${e.message}`
        : e instanceof Error
          ? e.message
          : String(e)
    }
    const ms = performance.now() - t3
    const g = sampler.stop()
    record(
      'memory',
      'session, 4 GiB REPLBODY announced',
      ms,
      'ms to fail',
      `whole message to a fake milter that answers EOB with a 4 GiB frame header: ${err || 'no error'}`,
    )
    record(
      'memory',
      'session, 4 GiB REPLBODY announced',
      g.growth / 1024,
      'KiB RSS peak growth',
      'RSS sampled every 10 ms during that message',
    )
  } finally {
    hs.destroy()
    await huge.close()
  }
}

// ---------------------------------------------------------------------------
// The child process

/** Child processes this script spawned itself (the memory section), by PID. */
const children = new Map<number, ChildProcess>()

export function killChildren(): void {
  for (const [pid, child] of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Runs the memory section in a fresh `node --expose-gc` process, so its RSS
 * baseline is not inflated (or padded with freed pages) by the other sections.
 */
export async function memoryInChild(o: Options): Promise<void> {
  const args = [
    '--expose-gc',
    path.join(__dirname, 'bench.js'),
    '--memory-child',
    `--replbody-mib=${Math.max(1, Math.round(o.replbodyBytes / MiB))}`,
  ]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
  if (child.pid === undefined) throw new Error('cannot spawn the memory child')
  const pid = child.pid
  children.set(pid, child)
  let out = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => (out += d))
  const [code] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
  children.delete(pid)
  let parsed: { figures?: unknown; notes?: unknown }
  try {
    parsed = JSON.parse(out) as { figures?: unknown; notes?: unknown }
  } catch {
    throw new Error(`memory child (pid ${pid}) exited ${String(code)} without JSON: ${out}`)
  }
  for (const f of Array.isArray(parsed.figures) ? (parsed.figures as Figure[]) : [])
    record('memory', f.name, f.value, f.unit, f.measured)
  for (const t of Array.isArray(parsed.notes) ? (parsed.notes as string[]) : []) note(t)
  if (code !== 0) throw new Error(`memory child (pid ${pid}) exited with code ${String(code)}`)
}
