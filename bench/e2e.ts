/**
 * 4. End to end: SMTP through a real Haraka (queue/smtp_forward to a sink, and queue/discard),
 * with and without the plugin, the milter being test/milters/scripted.py.
 */
import { performance } from 'node:perf_hooks'

import { startHaraka } from '../test/helpers/haraka'
import { assertPymilterInstalled, startScriptedMilter } from '../test/helpers/milter-process'
import { startSink, type Sink } from '../test/helpers/sink'
import { SmtpClient } from '../test/helpers/smtp-client'
import type { Options } from './args'
import { benchHeaders } from './milter-session'
import { fmt, n, note, record } from './report'
import { b, percentile, textBlock } from './stats'

function smtpMessage(seq: number): Buffer {
  const head = benchHeaders(seq)
    .map(
      (h) =>
        `${typeof h.name === 'string' ? h.name : h.name.toString('latin1')}:${h.value.toString('latin1')}\r\n`,
    )
    .join('')
  return Buffer.concat([b(`${head}\r\n`), textBlock(2048, 21), b('\r\n')])
}

interface E2eResult {
  perSec: number
  p50: number
  p99: number
  ms: number
}

type Queue = 'smtp_forward' | 'discard'

async function e2eRun(
  o: Options,
  sink: Sink,
  milterSocket: string | undefined,
  queue: Queue,
): Promise<E2eResult> {
  const plugins = ['rcpt_to.in_host_list', `queue/${queue}`]
  const config: Record<string, string> = {}
  if (milterSocket) {
    plugins.unshift('milter')
    config['milter.ini'] = [
      '[main]',
      'milters = bench',
      'connect_timeout = 10',
      'command_timeout = 30',
      'content_timeout = 60',
      '',
      '[milter.bench]',
      `socket = ${milterSocket}`,
      '',
    ].join('\n')
  }
  // 'notice' is the quietest level at which the helper still sees "Listening on".
  const haraka = await startHaraka({
    plugins,
    sinkPort: sink.port,
    logLevel: 'notice',
    config,
    ...(queue === 'discard' ? { env: { YES_REALLY_DO_DISCARD: '1' } } : {}),
  })
  try {
    const send = async (count: number, lat: number[]): Promise<void> => {
      const c = await SmtpClient.connect('127.0.0.1', haraka.port)
      try {
        const ehlo = await c.command('EHLO bench.example.com')
        if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.raw}`)
        for (let i = 0; i < count; i++) {
          const t = performance.now()
          const r = await c.sendMail({
            from: 'alice@example.com',
            rcpts: ['bob@example.com'],
            data: smtpMessage(i),
            crlf: false,
          })
          if (!r.accepted) throw new Error(`message refused: ${r.last?.raw ?? '(no reply)'}`)
          lat.push(performance.now() - t)
        }
        await c.quit()
      } finally {
        await c.close()
      }
    }
    await send(4, []) // warm-up: plugin load, first milter connection, forward pool
    sink.clear()
    const total = o.e2eMessages
    const k = o.e2eConnections
    const lat: number[] = []
    const t0 = performance.now()
    await Promise.all(
      Array.from({ length: k }, (_, i) =>
        send(Math.floor(total / k) + (i < total % k ? 1 : 0), lat),
      ),
    )
    if (queue === 'smtp_forward') await sink.waitForMessages(total, 60_000)
    const ms = performance.now() - t0
    lat.sort((x, y) => x - y)
    return {
      perSec: (total / ms) * 1000,
      p50: percentile(lat, 0.5),
      p99: percentile(lat, 0.99),
      ms,
    }
  } finally {
    await haraka.stop()
  }
}

let activeSink: Sink | undefined

/** The sink of a run in progress (cleanup). */
export function stopActiveSink(): Promise<void> {
  return activeSink?.stop() ?? Promise.resolve()
}

export async function e2eSection(o: Options): Promise<void> {
  try {
    assertPymilterInstalled()
  } catch (e) {
    note(`e2e skipped: ${e instanceof Error ? e.message : String(e)}`)
    return
  }
  const sink = await startSink()
  activeSink = sink
  const m = await startScriptedMilter({})
  try {
    for (const queue of ['smtp_forward', 'discard'] as const) {
      for (const withMilter of [false, true]) {
        const eomBefore = m.eventsOf('eom').length
        const r = await e2eRun(o, sink, withMilter ? m.socket : undefined, queue)
        const seen = m.eventsOf('eom').length - eomBefore
        if (withMilter && seen < o.e2eMessages)
          note(`${queue} + milter: scripted.py saw only ${seen} of ${o.e2eMessages} messages`)
        const name = `${queue}, ${withMilter ? 'with milter plugin' : 'no milter plugin'}`
        const path =
          queue === 'smtp_forward'
            ? 'queue/smtp_forward -> sink (until the sink has them all)'
            : 'queue/discard (YES_REALLY_DO_DISCARD)'
        record(
          'e2e',
          name,
          r.perSec,
          'msg/s',
          `${n(o.e2eMessages)} messages (10 headers, 2 KB body) over ${o.e2eConnections} concurrent SMTP connections to Haraka (nodes=0, log notice)${withMilter ? ' + milter plugin -> scripted.py' : ''} -> ${path}, in ${fmt(r.ms)} ms`,
        )
        record(
          'e2e',
          name,
          r.p50,
          'ms p50',
          'same run: per message, MAIL .. reply to the final dot',
        )
        record('e2e', name, r.p99, 'ms p99', 'same run')
      }
    }
  } finally {
    await m.stop()
    await sink.stop()
    activeSink = undefined
  }
}
