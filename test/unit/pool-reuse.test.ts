/**
 * MilterPool reuse (SMFIC_QUIT_NC) against the in-process fake milter: a
 * kept session serves the next SMTP session only while it is clean. A
 * milter that answers QUIT_NC (a reply the protocol does not have) or
 * closes the connection after it is not reused: its stray reply would be
 * read as the answer to the next CONNECT.
 */
import assert from 'node:assert/strict'
import { setImmediate as tick } from 'node:timers/promises'

import { parseMilterConfig, type MilterDef } from '../../lib/config'
import { MilterPool } from '../../lib/pool'
import type { MilterSession } from '../../lib/session/session'
import { FakeMilter, R, type Script } from '../helpers/fake-milter'

let fake: FakeMilter | undefined

async function start(script?: Script): Promise<{ m: FakeMilter; d: MilterDef; pool: MilterPool }> {
  const m = await FakeMilter.start(script)
  fake = m
  const cfg = parseMilterConfig({ main: { milters: 'm' }, 'milter.m': { socket: m.spec } })
  const d = cfg.milters.get('m')
  assert.ok(d)
  return { m, d, pool: new MilterPool({ reuse: true }, (def) => m.open(def)) }
}

async function oneMessage(s: MilterSession): Promise<void> {
  assert.equal((await s.connect('client.example', { family: 'unknown' })).kind, 'continue')
  assert.equal((await s.mail(['<a@example.org>'])).kind, 'continue')
  assert.equal((await s.rcpt(['<b@example.com>'])).kind, 'continue')
  assert.equal((await s.data()).kind, 'continue')
  assert.equal((await s.eoh()).kind, 'continue')
  assert.equal((await s.endOfMessage()).verdict.kind, 'continue')
}

/** Waits until the fake milter has seen QUIT_NC on its last connection, and a little more. */
async function afterQuitNc(m: FakeMilter): Promise<void> {
  await m.last.waitFor((c) => c.cmd === 'quit_nc')
  for (let i = 0; i < 20; i++) await tick()
}

describe('MilterPool: reuse only clean sessions', () => {
  afterEach(async () => {
    await fake?.close()
    fake = undefined
  })

  it('a well-behaved milter: the kept session serves the next SMTP session', async () => {
    const { m, d, pool } = await start()
    const first = await pool.acquire(d)
    await oneMessage(first)
    pool.release(d, first)
    await afterQuitNc(m)
    const second = await pool.acquire(d)
    assert.equal(second, first)
    await oneMessage(second)
    assert.equal(m.conns.length, 1)
    second.quit()
  })

  it('a milter that answers QUIT_NC: not reused, a new connection instead', async () => {
    const { m, d, pool } = await start((cmd) => (cmd.cmd === 'quit_nc' ? R.accept : undefined))
    const first = await pool.acquire(d)
    await oneMessage(first)
    pool.release(d, first)
    await afterQuitNc(m)
    const second = await pool.acquire(d)
    assert.notEqual(second, first)
    assert.equal(first.currentState, 'closed')
    // the new session's CONNECT gets its own reply, not the stray ACCEPT
    await oneMessage(second)
    assert.equal(m.conns.length, 2)
    second.quit()
  })

  it('a milter that closes after QUIT_NC: not reused', async () => {
    const { m, d, pool } = await start((cmd) => (cmd.cmd === 'quit_nc' ? 'close' : undefined))
    const first = await pool.acquire(d)
    await oneMessage(first)
    pool.release(d, first)
    await afterQuitNc(m)
    await m.conns[0]?.closed
    for (let i = 0; i < 20; i++) await tick()
    const second = await pool.acquire(d)
    assert.notEqual(second, first)
    await oneMessage(second)
    second.quit()
  })
})
