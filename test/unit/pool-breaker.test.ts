/**
 * MilterPool with an injected opener: an endpoint that keeps failing to
 * connect is not dialled while its breaker is open (MILTER_ERR_UNAVAILABLE
 * at once), and breakers survive a configuration reload.
 */
import assert from 'node:assert/strict'

import { parseMilterConfig, type MilterDef } from '../../lib/config'
import { MilterConnectError, MilterUnavailableError } from '../../lib/errors'
import { MilterPool } from '../../lib/pool'
import type { MilterSession } from '../../lib/session/session'

function def(extra: Record<string, unknown> = {}): MilterDef {
  const cfg = parseMilterConfig({
    main: { milters: 'down' },
    'milter.down': { socket: 'inet:1@127.0.0.1', ...extra },
  })
  const d = cfg.milters.get('down')
  assert.ok(d)
  return d
}

describe('MilterPool: circuit breaker', () => {
  it('after breaker_failures connect failures the opener is not called again', async () => {
    let dials = 0
    const changes: string[] = []
    const pool = new MilterPool(
      { reuse: false, onBreakerChange: (m, c) => changes.push(`${m}:${c.to}`) },
      () => {
        dials++
        return Promise.reject(new MilterConnectError('connect ECONNREFUSED'))
      },
    )
    const d = def({ breaker_failures: 2, breaker_backoff: 60 })
    await assert.rejects(pool.acquire(d), MilterConnectError)
    await assert.rejects(pool.acquire(d), MilterConnectError)
    for (let i = 0; i < 5; i++) {
      await assert.rejects(pool.acquire(d), (e: unknown) => {
        assert.ok(e instanceof MilterUnavailableError)
        assert.equal(e.code, 'MILTER_ERR_UNAVAILABLE')
        assert.match(e.message, /inet:1@127\.0\.0\.1 is marked down/)
        return true
      })
    }
    assert.equal(dials, 2)
    assert.deepEqual(changes, ['down:open'])
    // a reload keeps what was learnt
    const next = new MilterPool({ reuse: false, breakers: pool.breakers }, () => {
      dials++
      return Promise.resolve({} as MilterSession)
    })
    await assert.rejects(next.acquire(d), MilterUnavailableError)
    assert.equal(dials, 2)
  })

  it('breaker_failures = 0: every session dials', async () => {
    let dials = 0
    const pool = new MilterPool({ reuse: false }, () => {
      dials++
      return Promise.reject(new MilterConnectError('refused'))
    })
    const d = def({ breaker_failures: 0 })
    for (let i = 0; i < 6; i++) await assert.rejects(pool.acquire(d), MilterConnectError)
    assert.equal(dials, 6)
  })
})
