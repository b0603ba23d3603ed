/**
 * Prompt ACKs after end of message (TCP_QUICKACK, lib/transport/quickack.ts) against a real
 * libmilter filter (test/milters/scripted.py) that adds a header: libmilter writes the
 * modification and the verdict separately, the case where our delayed ACK held the verdict
 * back for about 40 ms. These tests check what must stay true with the option set on every
 * message: the modification and the verdict both arrive, for every protocol version offered,
 * over IPv4 and IPv6, for several messages on one connection; and that it is only used where
 * it means something (TCP on Linux). The time it saves is measured by the benchmark
 * (docs/benchmarks.md), not asserted here.
 */
import assert from 'node:assert/strict'

import type { ConnectAddress } from '../../lib/protocol/commands'
import { sendContent } from '../../lib/session/content'
import { DEFAULT_MACROS, type MacroLookup } from '../../lib/session/macros'
import { openSession } from '../../lib/session/open'
import type { MilterSession } from '../../lib/session/session'
import { promptAckCount, promptAcksUnavailable } from '../../lib/transport/quickack'
import { parseSocketSpec } from '../../lib/transport/spec'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
  type Transport,
} from '../helpers/milter-process'

const TIMEOUTS = { connectMs: 5000, commandMs: 5000, contentMs: 5000 }
const CLIENT: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }
const macros: MacroLookup = (n) => (n === 'i' ? 'QID1' : n === 'j' ? 'mx.example.org' : undefined)

const sessions: MilterSession[] = []

async function open(m: StartedMilter, version?: number): Promise<MilterSession> {
  const s = await openSession(parseSocketSpec(m.socket), {
    name: 'scripted',
    timeouts: TIMEOUTS,
    macros: DEFAULT_MACROS,
    ...(version === undefined ? {} : { version }),
  })
  sessions.push(s)
  return s
}

/** One message through an open session; returns the end-of-message result. */
async function message(
  s: MilterSession,
  n: number,
): Promise<Awaited<ReturnType<typeof sendContent>>> {
  assert.equal((await s.mail([`<a${n}@example.org>`], macros)).kind, 'continue')
  assert.equal((await s.rcpt(['<b@example.com>'], macros)).kind, 'continue')
  assert.equal((await s.data(macros)).kind, 'continue')
  return sendContent(s, {
    headers: [{ name: 'Subject', value: Buffer.from(` message ${n}`) }],
    body: [Buffer.from('line 1\r\nline 2\r\n')],
    eohMacros: macros,
    eomMacros: macros,
  })
}

function start(transport: Transport): Promise<StartedMilter> {
  return startScriptedMilter(
    { eom: [{ op: 'addheader', name: 'X-Seen', value: 'yes' }] },
    { transport },
  )
}

function assertAdded(r: Awaited<ReturnType<typeof sendContent>>): void {
  assert.equal(r.verdict.kind, 'continue')
  assert.equal(r.modifications.length, 1)
  const [mod] = r.modifications
  assert.equal(mod?.kind, 'addheader')
  if (mod?.kind === 'addheader') {
    assert.equal(mod.name.toString(), 'X-Seen')
    assert.equal(mod.value.toString(), 'yes')
  }
}

describe('prompt ACKs after end of message (TCP_QUICKACK) against libmilter (scripted.py)', function () {
  this.timeout(30000)
  const linux = process.platform === 'linux'

  before(function () {
    assertPymilterInstalled()
  })

  afterEach(async function () {
    for (const s of sessions.splice(0)) s.quit()
    await stopAllMilters()
  })

  it('is available on Linux (koffi loads libc setsockopt)', function () {
    if (!linux) this.skip()
    assert.equal(promptAcksUnavailable(), undefined)
  })

  for (const version of [2, 3, 4, 5, 6]) {
    it(`offered version ${version} over IPv4: the added header and the verdict both arrive`, async function () {
      const m = await start('inet')
      const s = await open(m, version)
      assert.equal((await s.connect('client.example', CLIENT, macros)).kind, 'continue')
      const before = promptAckCount()
      assertAdded(await message(s, 1))
      if (linux) assert.equal(promptAckCount(), before + 1, 'one prompt-ACK request per message')
      assert.equal(m.eventsOf('eom').length, 1)
    })
  }

  it('over IPv6, three messages on one connection: asked again for each message', async function () {
    const m = await start('inet6')
    const s = await open(m)
    assert.equal((await s.connect('client.example', CLIENT, macros)).kind, 'continue')
    const before = promptAckCount()
    for (let n = 1; n <= 3; n++) assertAdded(await message(s, n))
    if (linux) assert.equal(promptAckCount(), before + 3)
    assert.equal(m.eventsOf('eom').length, 3)
  })

  it('over a unix socket (no delayed ACK there): not asked, same result', async function () {
    const m = await start('unix')
    const s = await open(m)
    assert.equal((await s.connect('client.example', CLIENT, macros)).kind, 'continue')
    const before = promptAckCount()
    assertAdded(await message(s, 1))
    assert.equal(promptAckCount(), before)
  })
})
