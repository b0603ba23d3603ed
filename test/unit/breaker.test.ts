/**
 * The circuit breaker with a fake clock: opens after N consecutive connect
 * failures, lets one probe through after the back-off, doubles the back-off
 * when the probe fails, closes when one succeeds; each change reported once.
 */
import assert from 'node:assert/strict'

import { Breaker, type BreakerChange } from '../../lib/breaker'

function make(failures = 3, backoffMs = 1000, backoffMaxMs = 4000) {
  let now = 0
  const changes: BreakerChange[] = []
  const b = new Breaker(
    'inet:1@127.0.0.1',
    { failures, backoffMs, backoffMaxMs },
    (c) => changes.push(c),
    () => now,
  )
  return {
    b,
    changes,
    advance: (ms: number): void => {
      now += ms
    },
  }
}

describe('Breaker', () => {
  it('stays closed below the threshold; a success resets the count', () => {
    const { b, changes } = make()
    b.failure(false, 'x')
    b.failure(false, 'x')
    b.success(false)
    b.failure(false, 'x')
    b.failure(false, 'x')
    assert.equal(b.state, 'closed')
    assert.deepEqual(b.admit(), { ok: true, probe: false })
    assert.deepEqual(changes, [])
  })

  it('a lasting failure (over a limit at negotiation) opens at once; disabled breakers stay closed', () => {
    const { b, changes } = make()
    b.failure(false, 'asks for 800000 macro names', true)
    assert.equal(b.state, 'open')
    assert.equal(changes.length, 1)
    assert.equal(changes[0]?.reason, 'asks for 800000 macro names')
    assert.equal(changes[0]?.failures, 1)
    const off = make(0)
    off.b.failure(false, 'x', true)
    assert.equal(off.b.state, 'closed')
  })

  it('opens at the threshold, refuses at once, reports the change once', () => {
    const { b, changes, advance } = make()
    for (let i = 0; i < 5; i++) b.failure(false, 'ECONNREFUSED')
    assert.equal(b.state, 'open')
    assert.equal(changes.length, 1)
    assert.deepEqual(changes[0], {
      endpoint: 'inet:1@127.0.0.1',
      from: 'closed',
      to: 'open',
      failures: 3,
      retryInMs: 1000,
      reason: 'ECONNREFUSED',
    })
    advance(400)
    assert.deepEqual(b.admit(), { ok: false, retryInMs: 600 })
  })

  it('after the back-off one probe goes through, others wait; a failed probe doubles the back-off', () => {
    const { b, changes, advance } = make()
    for (let i = 0; i < 3; i++) b.failure(false, 'x')
    advance(1000)
    assert.deepEqual(b.admit(), { ok: true, probe: true })
    assert.equal(b.state, 'half-open')
    assert.equal(b.admit().ok, false, 'one probe at a time')
    b.failure(true, 'still down')
    assert.equal(b.state, 'open')
    assert.equal(changes.at(-1)?.retryInMs, 2000)
    advance(2000)
    assert.equal(b.admit().ok, true)
    b.failure(true, 'x')
    assert.equal(changes.at(-1)?.retryInMs, 4000)
    advance(4000)
    assert.equal(b.admit().ok, true)
    b.failure(true, 'x')
    assert.equal(changes.at(-1)?.retryInMs, 4000, 'capped at the maximum')
  })

  it('a successful probe closes it and resets the back-off', () => {
    const { b, changes, advance } = make()
    for (let i = 0; i < 3; i++) b.failure(false, 'x')
    advance(1000)
    assert.equal(b.admit().ok, true)
    b.success(true)
    assert.equal(b.state, 'closed')
    assert.deepEqual(
      changes.map((c) => c.to),
      ['open', 'half-open', 'closed'],
    )
    for (let i = 0; i < 3; i++) b.failure(false, 'x')
    assert.equal(changes.at(-1)?.retryInMs, 1000)
  })

  it('a late success of an earlier dial closes it and a later opening still probes', () => {
    const { b, advance } = make()
    for (let i = 0; i < 3; i++) b.failure(false, 'x')
    advance(1000)
    assert.equal(b.admit().ok, true) // probe in flight
    b.success(false) // an earlier dial finished well
    assert.equal(b.state, 'closed')
    b.failure(true, 'x') // the probe itself failed late: counted, no re-open by itself
    assert.equal(b.state, 'closed')
    b.failure(false, 'x')
    b.failure(false, 'x')
    assert.equal(b.state, 'open')
    advance(1000)
    assert.deepEqual(b.admit(), { ok: true, probe: true })
  })

  it('breaker_failures = 0 disables it', () => {
    const { b } = make(0)
    for (let i = 0; i < 10; i++) b.failure(false, 'x')
    assert.equal(b.state, 'closed')
    assert.equal(b.admit().ok, true)
  })
})
