/**
 * Many sessions at once (the performance issue's "500 concurrent SMTP sessions"): Haraka + plugin
 * + the no-op milter, the same with nodes=2, and Postfix + the same milter (its default process
 * limits: 100 smtpd, the rest wait in the listen queue), each loaded by the Node generator with
 * N sessions at a time. Per variant: failed sessions, per-message latency (connect .. reply to
 * the final dot) p50/p99, Haraka's peak RSS, and the most TCP connections open to the milter.
 */
import * as fs from 'node:fs'

import type { Options } from '../args'
import { addTable, progress } from '../report'
import { MiB, percentile, sleep } from '../stats'
import { nodeLoad } from './load'
import type { BenchMilter } from './milters'
import { hwmBytes, resetHwm } from './procs'
import {
  VARIANTS,
  beforeTwin,
  startHarakaServer,
  startPostfixServer,
  type Server,
  type Variant,
} from './servers'

export interface ManyRow {
  variant: string
  sessions: number
  messages: number
  errors: number
  firstError: string
  perSec: number
  p50Ms: number
  p99Ms: number
  /** Haraka: peak RSS over the run, summed over its processes (NaN for Postfix). */
  peakRssMiB: number
  /** The most established TCP connections to the milter seen during the run (sampled). */
  peakMilterConns: number
}

/** Variants of the many-sessions run. */
export const MANY_VARIANTS = ['haraka+noop', 'haraka-n2+noop', 'postfix+noop'] as const

/** Established TCP connections to 127.0.0.1:port, from /proc/net/tcp. */
export function connectionsTo(port: number): number {
  let text: string
  try {
    text = fs.readFileSync('/proc/net/tcp', 'latin1')
  } catch {
    return NaN
  }
  // remote address "0100007F:PORT" in hex, state 01 (ESTABLISHED)
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`
  let n = 0
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/)
    if (f[2] === want && f[3] === '01') n++
  }
  return n
}

export async function manyRuns(
  o: Options,
  milter: BenchMilter,
  register: (s: Server) => void,
): Promise<ManyRow[]> {
  const sessions = o.smtpSessions
  const total = sessions * 2
  const milterPort = Number(/^inet:(\d+)@/.exec(milter.socket)?.[1] ?? NaN)
  const rows: ManyRow[] = []
  const before = o.before
  const variants = MANY_VARIANTS.flatMap((name): Variant[] => {
    const v = VARIANTS.find((x) => x.name === name)
    if (!v) return []
    // the plugin before (--before=DIR): one process, beside haraka+noop
    return before !== undefined && name === 'haraka+noop' ? [v, beforeTwin(v, before)] : [v]
  })
  for (const v of variants) {
    const name = v.name
    progress(`  many sessions: ${name}, ${sessions} at a time, ${total} messages`)
    const s =
      v.mta === 'haraka'
        ? await startHarakaServer(v, milter.socket)
        : await startPostfixServer(v, milter.socket)
    register(s)
    try {
      await nodeLoad({ port: s.port, concurrency: 4, total: 100, perSession: 1, size: 2048 })
      await s.settle()
      await sleep(200)
      const isHaraka = v.mta === 'haraka'
      if (isHaraka) resetHwm([s.pid])
      let peakConns = 0
      const timer = setInterval(() => {
        peakConns = Math.max(peakConns, connectionsTo(milterPort))
      }, 50)
      let r
      try {
        r = await nodeLoad({
          port: s.port,
          concurrency: sessions,
          total,
          perSession: 1,
          size: 2048,
          countErrors: true,
          sessionTimeoutMs: 60_000,
        })
      } finally {
        clearInterval(timer)
      }
      await s.settle()
      const lat = [...r.latencies].sort((x, y) => x - y)
      rows.push({
        variant: name,
        sessions,
        messages: total,
        errors: r.errors ?? 0,
        firstError: r.firstError ?? '',
        perSec: (total / r.ms) * 1000,
        p50Ms: percentile(lat, 0.5),
        p99Ms: percentile(lat, 0.99),
        peakRssMiB: isHaraka ? hwmBytes([s.pid]) / MiB : NaN,
        peakMilterConns: peakConns,
      })
    } finally {
      await s.stop()
    }
  }
  const cell = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : '-')
  addTable({
    section: 'smtp',
    title: `${sessions} concurrent SMTP sessions (2 KB, one message each, ${total} messages), no-op milter`,
    header: ['variant', 'errors', 'msg/s', 'p50 ms', 'p99 ms', 'RSS MiB', 'milter conns'],
    rows: rows.map((r) => [
      r.variant,
      String(r.errors),
      cell(r.perSec, 0),
      cell(r.p50Ms),
      cell(r.p99Ms),
      cell(r.peakRssMiB, 0),
      String(r.peakMilterConns),
    ]),
    legend: [
      'Node generator; latency per message from connect to the reply to the final dot; RSS: Haraka peak',
      '(VmHWM reset before the run, summed over its processes); milter conns: most established TCP',
      'connections to the milter seen (sampled every 50 ms); Postfix with its default process limit (100);',
      'a session not done within 60 s counts as failed',
      ...rows.filter((r) => r.errors > 0).map((r) => `${r.variant}: first error: ${r.firstError}`),
    ],
    data: rows,
  })
  return rows
}
