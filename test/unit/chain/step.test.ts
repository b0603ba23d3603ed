/**
 * MilterChain's onStep (what `debug = 1` logs): each step of each milter
 * with its verdict or failure code and the time waited for it, over real
 * MilterSessions negotiated with in-process fake milters.
 */
import assert from 'node:assert/strict'

import { parseMilterConfig, type MilterDef } from '../../../lib/config'
import { MilterConnectError } from '../../../lib/errors'
import { MilterChain } from '../../../lib/policy/chain'
import type { ConnectAddress } from '../../../lib/protocol/commands'
import { FakeMilter, R, type Script } from './fake-milter'

const ADDR: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }

function only(cmd: string, answer: ReturnType<Script>): Script {
  return (c) => (c.cmd === cmd ? answer : undefined)
}

describe('chain: onStep (debug = 1)', function () {
  this.timeout(5000)
  const fakes: FakeMilter[] = []
  let chain: MilterChain | undefined

  afterEach(async () => {
    chain?.close()
    chain = undefined
    await Promise.all(fakes.splice(0).map((f) => f.close()))
  })

  it('each step: its verdict or failure code, and the ms waited for it', async () => {
    const a = await FakeMilter.start(only('mail', R.reject))
    const b = await FakeMilter.start(only('helo', 'close'))
    fakes.push(a, b)
    const byName: Record<string, FakeMilter> = { a, b }
    const milters: MilterDef[] = [
      ...parseMilterConfig({
        main: { milters: 'down a b', command_timeout: 2, connect_timeout: 2 },
        'milter.down': { socket: 'inet:1@127.0.0.1', default_action: 'accept' },
        'milter.a': { socket: 'inet:1@127.0.0.1', default_action: 'tempfail' },
        'milter.b': {
          socket: 'inet:1@127.0.0.1',
          default_action: 'accept',
          failure_scope: 'session',
        },
      }).milters.values(),
    ]
    const steps: Array<[string, string, string, number | undefined]> = []
    chain = new MilterChain({
      milters,
      open: (def) => {
        const f = byName[def.name]
        if (!f) return Promise.reject(new MilterConnectError(`${def.name}: ECONNREFUSED`))
        return f.open(def)
      },
      onStep: ({ milter, stage, result: r, ms }) =>
        steps.push([milter, stage, r.kind === 'failed' ? `failed ${r.code}` : r.kind, ms]),
    })
    await chain.connect('h', ADDR)
    await chain.helo('h')
    await chain.mail(['<s@example.org>'])
    assert.deepEqual(
      steps.map(([m, st, what]) => `${m} ${st}: ${what}`),
      [
        // a milter that cannot be opened fails without a wait to time
        'down connect: failed MILTER_ERR_CONNECT',
        'a connect: continue',
        'b connect: continue',
        'a helo: continue',
        'b helo: failed MILTER_ERR_CLOSED',
        // failure_scope = message (the default): `down` is tried again for the next message
        'down mail: failed MILTER_ERR_CONNECT',
        'a mail: reject',
      ],
    )
    assert.equal(steps[0]?.[3], undefined)
    for (const [m, st, what, ms] of steps) {
      if (m === 'down') assert.equal(ms, undefined)
      else assert.ok(typeof ms === 'number' && ms >= 0 && ms < 2000, `${m} ${st} ${what}: ${ms}`)
    }
  })
})
