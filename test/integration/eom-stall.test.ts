/**
 * Prompt ACKs after end of message (TCP_QUICKACK, lib/transport/quickack.ts) against every
 * kind of milter that writes its end-of-message modification and its verdict apart: libmilter
 * in C (test/milters/addheader.c), OpenDKIM signing (libmilter), rspamd (its own milter
 * protocol code) and a milter without libmilter (test/helpers/stall-milters.ts: two writes,
 * Nagle on). pymilter has its own file (quickack.test.ts).
 *
 * For each protocol version 2..6 the milter accepts (rspamd: 6 only): the modification and the verdict both
 * arrive, and over TCP one prompt-ACK request is made per message. Correctness only; the time
 * it saves is bench/stall.ts's (docs/benchmarks.md).
 */
import assert from 'node:assert/strict'

import type { ConnectAddress } from '../../lib/protocol/commands'
import type { Modification } from '../../lib/protocol/replies'
import { sendContent } from '../../lib/session/content'
import { DEFAULT_MACROS, type MacroLookup } from '../../lib/session/macros'
import { openSession } from '../../lib/session/open'
import type { EomResult, MilterSession } from '../../lib/session/session'
import { promptAckCount } from '../../lib/transport/quickack'
import { parseSocketSpec } from '../../lib/transport/spec'
import { assertRspamdInstalled, startRspamd, stopAllRspamd } from '../helpers/daemons/rspamd'
import { generateDkimKey, startOpenDkim, stopAllOpenDkims } from '../helpers/opendkim'
import {
  C_HEADER,
  SPLIT_HEADER,
  startCAddHeader,
  startSplitWriteMilter,
  stopCAddHeaders,
  type StallTransport,
} from '../helpers/stall-milters'

const TIMEOUTS = { connectMs: 10_000, commandMs: 10_000, contentMs: 10_000 }
const CLIENT: ConnectAddress = { family: 'inet', address: '127.0.0.1', port: 52100 }
const macros: MacroLookup = (n) =>
  n === 'i' ? 'QID1' : n === 'j' ? 'mx.example.com' : n === '{daemon_name}' ? 'mx' : undefined
const linux = process.platform === 'linux'

/** A message OpenDKIM signs (From: example.com) and rspamd finds clean. */
function headers(n: number): Array<{ name: string; value: Buffer }> {
  return [
    ['From', ' Alice <alice@example.com>'],
    ['To', ' Bob <bob@example.net>'],
    ['Subject', ` lunch ${n}`],
    ['Date', ` ${new Date().toUTCString().replace(/GMT$/, '+0000')}`],
    ['Message-Id', ` <m${n}.${Date.now()}@example.com>`],
  ].map(([name, value]) => ({ name: name as string, value: Buffer.from(value as string) }))
}

const BODY = Buffer.from('Hi Bob,\r\n\r\nshall we have lunch on Friday?\r\n\r\nAlice\r\n')

interface Kind {
  name: string
  /** Protocol versions to offer. */
  versions: readonly number[]
  transports: readonly StallTransport[]
  start(t: StallTransport): Promise<{ socket: string }>
  /** True when the milter's end-of-message edit is among `mods`. */
  edited(mods: readonly Modification[]): boolean
  stopAll(): Promise<void>
}

function added(name: string, value?: string): Kind['edited'] {
  return (mods) =>
    mods.some(
      (m) =>
        (m.kind === 'addheader' || m.kind === 'insheader') &&
        m.name.toString().toLowerCase() === name.toLowerCase() &&
        (value === undefined || m.value.toString() === value),
    )
}

const stops: Array<() => Promise<void>> = []
const dkimKey = generateDkimKey('example.com', 'stall')

const KINDS: readonly Kind[] = [
  {
    name: 'libmilter in C (test/milters/addheader.c)',
    versions: [2, 3, 4, 5, 6],
    transports: ['inet', 'inet6', 'unix'],
    start: (t) => startCAddHeader(t),
    edited: added(C_HEADER.name, C_HEADER.value),
    stopAll: stopCAddHeaders,
  },
  {
    name: 'no libmilter: modification and verdict in two writes, Nagle on',
    versions: [2, 3, 4, 5, 6],
    transports: ['inet', 'inet6', 'unix'],
    start: async (t) => {
      const m = await startSplitWriteMilter(t)
      stops.push(() => m.stop())
      return m
    },
    edited: added(SPLIT_HEADER.name, SPLIT_HEADER.value),
    stopAll: async () => {
      for (const s of stops.splice(0)) await s()
    },
  },
  {
    name: 'OpenDKIM signing',
    versions: [2, 3, 4, 5, 6],
    transports: ['inet'],
    start: () => startOpenDkim({ mode: 's', signingKey: dkimKey }),
    edited: added('DKIM-Signature'),
    stopAll: stopAllOpenDkims,
  },
  {
    name: 'rspamd (proxy worker, milter mode)',
    // rspamd 3.4 closes the connection when offered less than version 6
    versions: [6],
    transports: ['inet'],
    start: () => {
      assertRspamdInstalled()
      return startRspamd()
    },
    edited: added('X-Spamd-Result'),
    stopAll: stopAllRspamd,
  },
]

async function message(s: MilterSession, n: number): Promise<EomResult> {
  assert.equal((await s.mail([`<alice${n}@example.com>`], macros)).kind, 'continue')
  assert.equal((await s.rcpt(['<bob@example.net>'], macros)).kind, 'continue')
  assert.equal((await s.data(macros)).kind, 'continue')
  return sendContent(s, { headers: headers(n), body: [BODY], eohMacros: macros, eomMacros: macros })
}

for (const kind of KINDS) {
  describe(`prompt ACKs after end of message against ${kind.name}`, function () {
    this.timeout(60_000)
    const sessions: MilterSession[] = []
    const milters = new Map<StallTransport, { socket: string }>()

    async function open(t: StallTransport, version?: number): Promise<MilterSession> {
      let m = milters.get(t)
      if (!m) {
        m = await kind.start(t)
        milters.set(t, m)
      }
      const s = await openSession(parseSocketSpec(m.socket), {
        name: 'stall',
        timeouts: TIMEOUTS,
        macros: DEFAULT_MACROS,
        ...(version === undefined ? {} : { version }),
      })
      sessions.push(s)
      assert.equal((await s.connect('client.example', CLIENT, macros)).kind, 'continue')
      assert.equal((await s.helo('client.example', macros)).kind, 'continue')
      return s
    }

    function assertEdited(r: EomResult): void {
      assert.ok(
        (r.verdict.kind === 'continue' || r.verdict.kind === 'accept') &&
          kind.edited(r.modifications),
        `verdict ${r.verdict.kind}, modifications ${r.modifications.map((m) => m.kind).join(',')}`,
      )
    }

    afterEach(function () {
      for (const s of sessions.splice(0)) s.quit()
    })

    after(async function () {
      await kind.stopAll()
    })

    for (const version of kind.versions) {
      it(`offered version ${version} over IPv4: the edit and the verdict both arrive`, async function () {
        const s = await open('inet', version)
        const before = promptAckCount()
        assertEdited(await message(s, 1))
        if (linux) assert.equal(promptAckCount(), before + 1, 'one prompt-ACK request per message')
      })
    }

    if (kind.transports.includes('inet6'))
      it('over IPv6, three messages on one connection: edit and verdict each time', async function () {
        const s = await open('inet6')
        const before = promptAckCount()
        for (let n = 1; n <= 3; n++) assertEdited(await message(s, n))
        if (linux) assert.equal(promptAckCount(), before + 3)
      })

    if (kind.transports.includes('unix'))
      it('over a unix socket: not asked, same result', async function () {
        const s = await open('unix')
        const before = promptAckCount()
        assertEdited(await message(s, 1))
        assert.equal(promptAckCount(), before)
      })
  })
}
