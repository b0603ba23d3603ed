/**
 * A milter with several endpoints, through MilterPool with an injected
 * opener: failover order, round-robin spread, endpoints whose breaker is
 * open skipped without a dial, every endpoint down -> MILTER_ERR_UNAVAILABLE
 * at once, and a recovered first endpoint used again after its probe.
 */
import assert from 'node:assert/strict'

import { parseMilterConfig, type MilterDef } from '../../lib/config'
import { MilterConnectError, MilterUnavailableError } from '../../lib/errors'
import { MilterPool, type EndpointUse } from '../../lib/pool'
import type { MilterSession } from '../../lib/session/session'
import type { Endpoint } from '../../lib/transport/spec'

const A = 'inet:1001@127.0.0.1'
const B = 'inet:1002@127.0.0.1'
const C = 'inet:1003@127.0.0.1'

function def(extra: Record<string, unknown> = {}): MilterDef {
  const cfg = parseMilterConfig({
    main: { milters: 'm' },
    'milter.m': { socket: `${A}, ${B} ${C}`, ...extra },
  })
  const d = cfg.milters.get('m')
  assert.ok(d)
  return d
}

/** An opener whose endpoints are up or down as `down` says; records every dial. */
function fakeOpener(down: Set<string>): {
  dials: string[]
  open: (d: MilterDef, ep: Endpoint) => Promise<MilterSession>
} {
  const dials: string[] = []
  return {
    dials,
    open: (_d, ep) => {
      dials.push(ep.text)
      if (down.has(ep.text))
        return Promise.reject(new MilterConnectError(`cannot connect to ${ep.text}: refused`))
      return Promise.resolve({ endpoint: ep.text } as unknown as MilterSession)
    },
  }
}

describe('MilterPool: several endpoints', () => {
  it('parses the list: endpoint records in order', () => {
    const d = def()
    assert.deepEqual(
      d.endpoints.map((e) => e.text),
      [A, B, C],
    )
    assert.deepEqual(d.endpoints[0]?.spec, {
      kind: 'tcp',
      host: '127.0.0.1',
      port: 1001,
      family: 4,
    })
    assert.equal(d.socketText, `${A}, ${B}, ${C}`)
    assert.equal(d.balance, 'failover')
  })

  it('failover: every session on the first endpoint while it is up', async () => {
    const f = fakeOpener(new Set())
    const pool = new MilterPool({ reuse: false }, f.open)
    const d = def()
    for (let i = 0; i < 4; i++) {
      const s = await pool.acquire(d)
      assert.equal(pool.endpointOf(s), A)
    }
    assert.deepEqual(f.dials, [A, A, A, A])
  })

  it('failover: the next endpoint in order when a dial fails, in the same acquire', async () => {
    const f = fakeOpener(new Set([A, B]))
    const uses: EndpointUse[] = []
    const pool = new MilterPool({ reuse: false, onEndpoint: (_m, u) => uses.push(u) }, f.open)
    const s = await pool.acquire(def({ breaker_failures: 5 }))
    assert.equal(pool.endpointOf(s), C)
    assert.deepEqual(f.dials, [A, B, C])
    assert.equal(uses[0]?.endpoint, C)
    assert.deepEqual(
      uses[0]?.failed.map((x) => x.endpoint),
      [A, B],
    )
  })

  it('an endpoint whose breaker is open is skipped without a dial', async () => {
    const f = fakeOpener(new Set([A]))
    const pool = new MilterPool({ reuse: false }, f.open)
    const d = def({ breaker_failures: 2, breaker_backoff: 60 })
    for (let i = 0; i < 5; i++) assert.equal(pool.endpointOf(await pool.acquire(d)), B)
    // A dialled until its breaker opened (2 failures), then never again
    assert.deepEqual(f.dials, [A, B, A, B, B, B, B])
    assert.equal(pool.breakerFor(d, d.endpoints[0]).state, 'open')
    assert.equal(pool.breakerFor(d, d.endpoints[1]).state, 'closed')
  })

  it('every endpoint down: dialled until the breakers open, then MILTER_ERR_UNAVAILABLE at once', async () => {
    const f = fakeOpener(new Set([A, B, C]))
    const pool = new MilterPool({ reuse: false }, f.open)
    const d = def({ breaker_failures: 1, breaker_backoff: 60 })
    await assert.rejects(pool.acquire(d), (e: unknown) => {
      assert.ok(e instanceof MilterConnectError)
      assert.match(e.message, /no endpoint of the milter answered/)
      assert.match(e.message, /1001.*1002.*1003/)
      return true
    })
    assert.equal(f.dials.length, 3)
    const t0 = Date.now()
    for (let i = 0; i < 3; i++) {
      await assert.rejects(pool.acquire(d), (e: unknown) => {
        assert.ok(e instanceof MilterUnavailableError)
        assert.equal(e.code, 'MILTER_ERR_UNAVAILABLE')
        assert.match(e.message, /every endpoint of the milter .* is marked down/)
        return true
      })
    }
    assert.ok(Date.now() - t0 < 50)
    assert.equal(f.dials.length, 3, 'no dial while every breaker is open')
  })

  it('a single endpoint keeps its own error and wording', async () => {
    const f = fakeOpener(new Set([A]))
    const pool = new MilterPool({ reuse: false }, f.open)
    const cfg = parseMilterConfig({
      main: { milters: 'one' },
      'milter.one': { socket: A, breaker_failures: 1, breaker_backoff: 60 },
    })
    const d = cfg.milters.get('one')!
    await assert.rejects(pool.acquire(d), /cannot connect to inet:1001@127\.0\.0\.1: refused/)
    await assert.rejects(pool.acquire(d), /milter at inet:1001@127\.0\.0\.1 is marked down/)
  })

  it('round_robin: the starting endpoint rotates per session', async () => {
    const f = fakeOpener(new Set())
    const pool = new MilterPool({ reuse: false }, f.open)
    const d = def({ balance: 'round_robin' })
    const used: string[] = []
    for (let i = 0; i < 9; i++) used.push(pool.endpointOf(await pool.acquire(d)) ?? '')
    assert.deepEqual(used, [A, B, C, A, B, C, A, B, C])
  })

  it('round_robin: an endpoint with an open breaker is skipped; the others share the load', async () => {
    const down = new Set([B])
    const f = fakeOpener(down)
    const pool = new MilterPool({ reuse: false }, f.open)
    const d = def({ balance: 'round_robin', breaker_failures: 1, breaker_backoff: 60 })
    const count = new Map<string, number>()
    for (let i = 0; i < 12; i++) {
      const e = pool.endpointOf(await pool.acquire(d)) ?? ''
      count.set(e, (count.get(e) ?? 0) + 1)
    }
    assert.equal(count.get(B), undefined)
    assert.equal((count.get(A) ?? 0) + (count.get(C) ?? 0), 12)
    assert.ok((count.get(A) ?? 0) >= 4 && (count.get(C) ?? 0) >= 4, JSON.stringify([...count]))
    assert.equal(f.dials.filter((x) => x === B).length, 1, 'B dialled once, then skipped')
  })

  it('failover: the first endpoint is used again once its probe succeeds', async () => {
    const down = new Set([A])
    const f = fakeOpener(down)
    let now = 0
    const pool = new MilterPool({ reuse: false, now: () => now }, f.open)
    const d = def({ breaker_failures: 1, breaker_backoff: 1 })
    assert.equal(pool.endpointOf(await pool.acquire(d)), B)
    const breakerA = pool.breakerFor(d, d.endpoints[0])
    assert.equal(breakerA.state, 'open')
    assert.equal(pool.endpointOf(await pool.acquire(d)), B)
    down.delete(A)
    now += 1100 // the back-off ends
    assert.equal(pool.endpointOf(await pool.acquire(d)), A, 'the probe session')
    assert.equal(breakerA.state, 'closed')
    assert.equal(pool.endpointOf(await pool.acquire(d)), A)
    assert.deepEqual(f.dials, [A, B, B, A, A])
  })
})
