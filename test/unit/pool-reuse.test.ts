/**
 * MilterPool reuse (SMFIC_QUIT_NC) against the in-process fake milter. A
 * milter is on probation until a reused session got a reply: a kept session
 * serves again only after PROBATION_IDLE_MS idle (on a clock the tests step), and a milter that answers
 * QUIT_NC (a reply the protocol does not have: it would be read as the
 * answer to the next CONNECT), closes after it, or fails a reused session
 * before its first reply has reuse turned off. Once proven, kept sessions
 * serve at once.
 */
import assert from 'node:assert/strict'
import { parseMilterConfig, type MilterDef } from '../../lib/config'
import { MilterPool, PROBATION_IDLE_MS } from '../../lib/pool'
import type { MilterSession } from '../../lib/session/session'
import { FakeMilter, R, type FakeConn, type Script } from '../helpers/fake-milter'

let fake: FakeMilter | undefined

interface Setup {
  m: FakeMilter
  d: MilterDef
  pool: MilterPool
  off: string[]
  /** Moves the pool's clock on. */
  wait(ms: number): void
}

async function start(script?: Script): Promise<Setup> {
  const m = await FakeMilter.start(script)
  fake = m
  const cfg = parseMilterConfig({ main: { milters: 'm' }, 'milter.m': { socket: m.spec } })
  const d = cfg.milters.get('m')
  assert.ok(d)
  const off: string[] = []
  let now = 0
  const pool = new MilterPool(
    {
      reuse: true,
      onReuseOff: (milter, reason) => off.push(`${milter}: ${reason}`),
      now: () => now,
    },
    (def) => m.open(def),
  )
  return { m, d, pool, off, wait: (ms) => (now += ms) }
}

async function oneMessage(s: MilterSession): Promise<void> {
  assert.equal((await s.connect('client.example', { family: 'unknown' })).kind, 'continue')
  assert.equal((await s.mail(['<a@example.org>'])).kind, 'continue')
  assert.equal((await s.rcpt(['<b@example.com>'])).kind, 'continue')
  assert.equal((await s.data()).kind, 'continue')
  assert.equal((await s.eoh()).kind, 'continue')
  assert.equal((await s.endOfMessage()).verdict.kind, 'continue')
}

/**
 * Releases after one message and waits out the probation idle time; with
 * `misbehaves`, first until the milter's answer to QUIT_NC (a reply, a
 * close) reached the kept session, as it would within that idle time.
 */
async function releaseAndWait(x: Setup, s: MilterSession, misbehaves = false): Promise<void> {
  x.pool.release(x.d, s)
  await x.m.last.waitFor((c) => c.cmd === 'quit_nc')
  if (misbehaves) await until(() => !s.idleClean)
  x.wait(PROBATION_IDLE_MS)
}

/** Waits, a turn of the event loop at a time, until `cond` holds. */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 1000) throw new Error('condition not met')
    await new Promise((r) => setTimeout(r, 1))
  }
}

/** Counts CONNECTs per milter connection, so a script can tell the reused one. */
function connects(conn: FakeConn): number {
  return conn.all('connect').length
}

describe('MilterPool: reuse, only where QUIT_NC works', () => {
  afterEach(async () => {
    await fake?.close()
    fake = undefined
  })

  it('a well-behaved milter: on probation a kept session waits out its idle time, then serves; once proven, at once', async () => {
    const x = await start()
    const first = await x.pool.acquire(x.d)
    await oneMessage(first)
    x.pool.release(x.d, first)
    await x.m.last.waitFor((c) => c.cmd === 'quit_nc')
    // on probation and idle for less than PROBATION_IDLE_MS: a new connection
    const early = await x.pool.acquire(x.d)
    assert.notEqual(early, first)
    early.quit()
    x.wait(PROBATION_IDLE_MS)
    const second = await x.pool.acquire(x.d)
    assert.equal(second, first)
    await oneMessage(second)
    // proven by its replies: kept sessions serve at once from now on
    x.pool.release(x.d, second)
    const third = await x.pool.acquire(x.d)
    assert.equal(third, first)
    await oneMessage(third)
    third.quit()
    assert.equal(x.m.conns.length, 2)
    assert.deepEqual(x.off, [])
  })

  it('a milter that answers QUIT_NC: not reused, and reuse turned off for it', async () => {
    const x = await start((cmd) => (cmd.cmd === 'quit_nc' ? R.accept : undefined))
    const first = await x.pool.acquire(x.d)
    await oneMessage(first)
    await releaseAndWait(x, first, true)
    const second = await x.pool.acquire(x.d)
    assert.notEqual(second, first)
    assert.equal(first.currentState, 'closed')
    // the new session's CONNECT gets its own reply, not the stray ACCEPT
    await oneMessage(second)
    assert.equal(x.off.length, 1)
    assert.match(
      x.off[0] ?? '',
      /^m: the milter closed or wrote to a connection kept after QUIT_NC/,
    )
    // from now on release sends QUIT
    x.pool.release(x.d, second)
    assert.equal(x.pool.idleCount, 0)
    assert.equal(second.currentState, 'closed')
  })

  it('a milter that closes after QUIT_NC: not reused, and reuse turned off for it', async () => {
    const x = await start((cmd) => (cmd.cmd === 'quit_nc' ? 'close' : undefined))
    const first = await x.pool.acquire(x.d)
    await oneMessage(first)
    await releaseAndWait(x, first, true)
    const second = await x.pool.acquire(x.d)
    assert.notEqual(second, first)
    await oneMessage(second)
    assert.equal(x.off.length, 1)
    second.quit()
  })

  it('a reused session that fails before its first reply turns reuse off', async () => {
    // the milter takes QUIT_NC silently, then hangs up at the next CONNECT
    const x = await start((cmd, conn) =>
      cmd.cmd === 'connect' && connects(conn) > 1 ? 'close' : undefined,
    )
    const first = await x.pool.acquire(x.d)
    await oneMessage(first)
    await releaseAndWait(x, first)
    const second = await x.pool.acquire(x.d)
    assert.equal(second, first)
    await assert.rejects(second.connect('client.example', { family: 'unknown' }))
    const third = await x.pool.acquire(x.d)
    assert.notEqual(third, first)
    assert.equal(x.off.length, 1)
    assert.match(x.off[0] ?? '', /failed before its first reply/)
    await oneMessage(third)
    x.pool.release(x.d, third)
    assert.equal(x.pool.idleCount, 0)
  })
})
