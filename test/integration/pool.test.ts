/**
 * MilterPool against a real libmilter filter: with reuse on, a session that
 * ended right after a completed EOB is kept with SMFIC_QUIT_NC and serves
 * the next SMTP session without a new OPTNEG (milter-protocol.md 5.6).
 */
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { MilterDef } from '../../lib/config'
import { parseSocketSpec } from '../../lib/transport/spec'
import { MilterPool, PROBATION_IDLE_MS } from '../../lib/pool'
import { sendContent } from '../../lib/session/content'
import { describePacket } from '../../lib/debug/packet-trace'
import type { MilterSession, SessionObserver } from '../../lib/session/session'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'

function def(m: StartedMilter): MilterDef {
  return {
    name: 'pooled',
    socketText: m.socket,
    endpoints: [{ spec: parseSocketSpec(m.socket), text: m.socket }],
    protocol: 6,
    defaultAction: 'tempfail',
    timeouts: { connectMs: 3000, commandMs: 3000, contentMs: 3000 },
    macros: new Map(),
    destinationChannels: [],
    optin: [],
    headerFolds: 'flatten',
    failureScope: 'session',
    breaker: { failures: 0, backoffMs: 1000, backoffMaxMs: 1000 },
  }
}

async function oneMessage(s: MilterSession): Promise<void> {
  assert.equal(
    (await s.connect('client.example', { family: 'inet', address: '192.0.2.1', port: 4000 })).kind,
    'continue',
  )
  assert.equal((await s.helo('client.example')).kind, 'continue')
  assert.equal((await s.mail(['<a@example.org>'])).kind, 'continue')
  assert.equal((await s.rcpt(['<b@example.com>'])).kind, 'continue')
  assert.equal((await s.data()).kind, 'continue')
  const eom = await sendContent(s, {
    headers: [{ name: 'Subject', value: Buffer.from(' pooled') }],
    body: [Buffer.from('body\r\n')],
  })
  assert.equal(eom.verdict.kind, 'continue')
}

describe('MilterPool with a real libmilter filter', function () {
  this.timeout(20000)
  before(() => assertPymilterInstalled())
  after(() => stopAllMilters())

  it('reuses a session after QUIT_NC: one OPTNEG, two CONNECTs on one milter connection', async () => {
    const m = await startScriptedMilter({})
    const d = def(m)
    const pool = new MilterPool({ reuse: true })
    const first = await pool.acquire(d)
    await oneMessage(first)
    pool.release(d, first)
    assert.equal(pool.idleCount, 1)
    // on probation (QUIT_NC not yet proven for this milter) a kept session serves after an idle time
    await sleep(PROBATION_IDLE_MS + 20)
    const second = await pool.acquire(d)
    assert.equal(second, first)
    assert.equal(pool.idleCount, 0)
    await oneMessage(second)
    pool.release(d, second)
    pool.close()
    await m.waitForEvent((e) => e.event === 'close' && e.conn === 2)
    assert.equal(m.eventsOf('negotiate').length, 1)
    assert.equal(m.eventsOf('connect').length, 2)
    assert.equal(m.eventsOf('eom').length, 2)
    await m.stop()
  })

  it('each acquire has its own observer: a reused session traces to the connection using it', async () => {
    const m = await startScriptedMilter({})
    const d = def(m)
    const pool = new MilterPool({ reuse: true })
    const seen = (): { names: string[]; observer: SessionObserver } => {
      const names: string[] = []
      return {
        names,
        observer: { trace: (dir, f) => names.push(`${dir} ${describePacket(dir, f).name}`) },
      }
    }
    const a = seen()
    const first = await pool.acquire(d, a.observer)
    await oneMessage(first)
    pool.release(d, first)
    const quitNc = a.names.length
    assert.deepEqual(a.names.slice(0, 3), [
      'send SMFIC_OPTNEG',
      'recv SMFIC_OPTNEG reply',
      'send SMFIC_CONNECT',
    ])
    assert.equal(a.names[quitNc - 1], 'send SMFIC_QUIT_NC')
    await sleep(PROBATION_IDLE_MS + 20) // a milter on probation: kept sessions rest first
    const b = seen()
    const second = await pool.acquire(d, b.observer)
    assert.equal(second, first)
    await oneMessage(second)
    pool.release(d, second)
    pool.close()
    assert.equal(a.names.length, quitNc, 'the first observer saw nothing of the second connection')
    assert.equal(b.names[0], 'send SMFIC_CONNECT', 'no OPTNEG: the session was reused')
    assert.ok(b.names.includes('recv SMFIR_CONTINUE'))
    await m.stop()
  })

  it('does not keep a session that is not directly after EOB (QUIT instead)', async () => {
    const m = await startScriptedMilter({})
    const d = def(m)
    const pool = new MilterPool({ reuse: true })
    const s = await pool.acquire(d)
    await s.connect('client.example', { family: 'unknown' })
    await s.mail(['<a@example.org>'])
    s.abort()
    pool.release(d, s)
    assert.equal(pool.idleCount, 0)
    assert.equal(s.currentState, 'closed')
    const next = await pool.acquire(d)
    assert.notEqual(next, s)
    next.quit()
    await m.waitForEvent((e) => e.event === 'close' && e.conn === 2)
    assert.equal(m.eventsOf('negotiate').length, 2)
    await m.stop()
  })

  it('without reuse, release sends QUIT and the milter closes', async () => {
    const m = await startScriptedMilter({})
    const d = def(m)
    const pool = new MilterPool({ reuse: false })
    const s = await pool.acquire(d)
    await oneMessage(s)
    pool.release(d, s)
    assert.equal(pool.idleCount, 0)
    await m.waitForEvent((e) => e.event === 'close')
    await m.stop()
  })
})
