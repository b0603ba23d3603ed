/**
 * MilterChain: shadow mode (a milter consulted at every stage whose
 * verdicts, edits and failures are never enforced) and skip_* conditions
 * (a milter left out before it is contacted), with real MilterSessions over
 * TCP to in-process fake milters.
 */
import assert from 'node:assert/strict'

import type { ClientFacts, MessageFacts } from '../../../lib/policy/chain'
import { R, addheader, replycode } from './fake-milter'
import { ADDR, CONTINUE, headersSeen, message, only, pass, setup, toData } from './setup'

const PUBLIC: ClientFacts = { ip: '192.0.2.10', private: false }
const PRIVATE: ClientFacts = { ip: '10.1.2.3', private: true }

function facts(over: Partial<MessageFacts> = {}): MessageFacts {
  return {
    authenticated: false,
    relaying: false,
    senderDomain: 'example.org',
    declaredSize: undefined,
    ...over,
  }
}

describe('chain: shadow mode', function () {
  this.timeout(5000)

  it('a shadow reject at MAIL or RCPT is logged, not enforced; later milters are asked', async () => {
    const { chain, fake, events } = await setup(
      { s: 'tempfail;mode=shadow', e: 'tempfail' },
      {
        s: (c) =>
          c.cmd === 'rcpt' && c.args[0]?.toString() === '<x@example.com>'
            ? replycode('550 5.1.1 unknown user')
            : undefined,
        e: pass,
      },
    )
    await chain.connect('h', ADDR)
    assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
    assert.deepEqual(await chain.rcpt(['<x@example.com>']), CONTINUE)
    assert.deepEqual(await chain.rcpt(['<y@example.com>']), CONTINUE)
    assert.equal(fake['e']?.last.all('rcpt').length, 2)
    assert.equal(fake['s']?.last.all('rcpt').length, 2, 'the shadow milter is asked again')
    const would = events.find((e) => e.milter === 's' && /shadow: would/.test(e.message))
    assert.ok(would, 'the shadow verdict is logged')
    assert.equal(would.stage, 'rcpt')
    assert.match(would.message, /would reject with 550 5\.1\.1 unknown user; not enforced/)
    const [rs] = chain.takeReports()
    assert.equal(rs?.mode, 'shadow')
    assert.match(rs?.verdict ?? '', /replycode 550@rcpt/)
  })

  it('sees every command the client sent, also those an earlier milter refused', async () => {
    const { chain, fake } = await setup(
      { e: 'tempfail', s: 'tempfail;mode=shadow' },
      { e: only('rcpt', R.reject), s: pass },
    )
    await chain.connect('h', ADDR)
    await chain.mail(['<s@example.org>'])
    const o = await chain.rcpt(['<r@example.com>'])
    assert.equal(o.action, 'reject')
    assert.ok(o.action === 'reject')
    assert.equal(o.milter, 'e', 'the outcome is the enforcing milter’s')
    assert.deepEqual(fake['s']?.last.names, ['optneg', 'connect', 'mail', 'rcpt'])
  })

  it('a shadow reject at CONNECT retires it for the connection without refusing the client', async () => {
    const { chain, fake, events } = await setup(
      { s: 'tempfail;mode=shadow', e: 'tempfail' },
      { s: only('connect', R.reject), e: pass },
    )
    assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
    assert.deepEqual(await chain.helo('h'), CONTINUE)
    assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
    assert.deepEqual(
      fake['s']?.last.names.filter((n) => n !== 'quit'),
      ['optneg', 'connect'],
    )
    assert.deepEqual(fake['e']?.last.names, ['optneg', 'connect', 'helo', 'mail'])
    assert.ok(events.some((e) => e.milter === 's' && /would reject with 554/.test(e.message)))
  })

  it('edits and an end-of-message reject are not applied; the next milter sees the message unedited', async () => {
    const { chain, fake, events } = await setup(
      { s: 'tempfail;mode=shadow', e: 'tempfail' },
      {
        s: only('eob', [addheader('X-Shadow', 'yes'), R.reject]),
        e: only('eob', [addheader('X-Enforced', 'yes'), R.continue]),
      },
    )
    await toData(chain)
    const r = await chain.message(message())
    try {
      assert.deepEqual(r.outcome, CONTINUE)
      assert.deepEqual(
        r.headers.map((h) => h.name),
        ['Received', 'From', 'Subject', 'X-Enforced'],
      )
      assert.deepEqual(
        r.edits.map((e) => e.milter),
        ['e'],
      )
      assert.ok(!headersSeen(fake['e']!).some((h) => h.startsWith('X-Shadow')))
      assert.ok(events.some((e) => e.milter === 's' && /would reject/.test(e.message)))
      const [rs] = chain.takeReports()
      assert.equal(rs?.milter, 's')
      assert.equal(rs?.verdict, 'reject@eom', 'what it wanted is reported')
      assert.deepEqual(
        rs?.edits,
        {},
        'edits that come with a reject mean nothing, as when enforced',
      )
    } finally {
      await r.dispose()
    }
  })

  it('edits it sends with a continue are logged as what it would have done', async () => {
    const { chain, events } = await setup(
      { s: 'tempfail;mode=shadow' },
      { s: only('eob', [addheader('X-Shadow', 'yes'), R.continue]) },
    )
    await toData(chain)
    const r = await chain.message(message())
    try {
      assert.equal(r.headersChanged, false)
      assert.equal(r.headers.length, 3)
      const e = events.find((x) => /would edit/.test(x.message))
      assert.ok(e)
      assert.match(e.message, /would edit addheader=1; not applied/)
    } finally {
      await r.dispose()
    }
  })

  it('its failure is a warning, whatever its default_action', async () => {
    const { chain, fake, events } = await setup(
      { s: 'reject;mode=shadow', e: 'tempfail' },
      { e: pass },
    )
    assert.deepEqual(await chain.connect('h', ADDR), CONTINUE)
    assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
    assert.deepEqual(fake['e']?.last.names, ['optneg', 'connect', 'mail'])
    const w = events.filter((e) => e.milter === 's')
    assert.ok(w.length > 0)
    assert.ok(w.every((e) => e.level === 'warn'))
    assert.match(w[0]!.message, /shadow: not enforced/)
    assert.ok(!events.some((e) => e.level === 'error'))
  })
})

describe('chain: skip_* conditions', function () {
  this.timeout(5000)

  /** The recipient facts of a listed (internal) and an unlisted (other) domain. */
  const internal = { destinationChannel: 'local', optin: undefined, domain: 'internal.example' }
  const other = { destinationChannel: 'local', optin: undefined, domain: 'example.com' }

  /** Milter x with skip_recipient_domains=internal.example, in a message (after CONNECT and MAIL). */
  async function skipInternal(mixedRecipients: 'defer' | 'union'): ReturnType<typeof setup> {
    const s = await setup(
      { x: 'tempfail;skip_recipient_domains=internal.example' },
      { x: pass },
      mixedRecipients,
    )
    await s.chain.connect('h', ADDR, undefined, PUBLIC)
    await s.chain.mail(['<s@example.org>'], undefined, facts())
    return s
  }

  it('skip_private_clients: a private client never contacts the milter', async () => {
    const { chain, fake, skips } = await setup(
      { p: 'tempfail;skip_private_clients=true', e: 'tempfail' },
      { p: pass, e: pass },
    )
    assert.deepEqual(await chain.connect('h', ADDR, undefined, PRIVATE), CONTINUE)
    assert.deepEqual(await chain.mail(['<s@example.org>'], undefined, facts()), CONTINUE)
    assert.equal(fake['p']?.conns.length, 0)
    assert.deepEqual(skips, ['p@connect: private client 10.1.2.3'])
    assert.match(
      chain.takeReports()[0]?.verdict ?? '',
      /skipped \(private client 10\.1\.2\.3\)@connect/,
    )
  })

  it('skip_private_clients: a public client is filtered', async () => {
    const { chain, fake, skips } = await setup(
      { p: 'tempfail;skip_private_clients=true' },
      { p: pass },
    )
    await chain.connect('h', ADDR, undefined, PUBLIC)
    await chain.mail(['<s@example.org>'], undefined, facts())
    assert.deepEqual(fake['p']?.last.names, ['optneg', 'connect', 'mail'])
    assert.deepEqual(skips, [])
  })

  it('skip_clients: a network in CIDR notation', async () => {
    const { chain, fake, skips } = await setup(
      { p: 'tempfail;skip_clients=198.51.100.0/24 192.0.2.0/28' },
      { p: pass },
    )
    await chain.connect('h', ADDR, undefined, PUBLIC)
    assert.equal(fake['p']?.conns.length, 0)
    assert.deepEqual(skips, ['p@connect: client 192.0.2.10 in 192.0.2.0/28'])
  })

  it('skip_authenticated: not contacted at CONNECT; joins the first unauthenticated message with CONNECT and HELO replayed', async () => {
    const { chain, fake, skips } = await setup(
      { a: 'tempfail;skip_authenticated=true', e: 'tempfail' },
      { a: pass, e: pass },
    )
    await chain.connect('h', ADDR, undefined, PUBLIC)
    await chain.helo('client.example')
    assert.equal(fake['a']?.conns.length, 0, 'not contacted before MAIL')
    assert.deepEqual(
      await chain.mail(['<s@example.org>'], undefined, facts({ authenticated: true })),
      CONTINUE,
    )
    assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
    assert.equal(fake['a']?.conns.length, 0, 'skipped for the authenticated message')
    assert.deepEqual(skips, ['a@mail: authenticated'])
    chain.abort()
    await chain.mail(['<s@example.org>'], undefined, facts())
    await chain.rcpt(['<r@example.com>'])
    assert.deepEqual(fake['a']?.last.names, ['optneg', 'connect', 'helo', 'mail', 'rcpt'])
  })

  it('skip_relaying and skip_sender_domains (a leading dot: subdomains)', async () => {
    const { chain, fake, skips } = await setup(
      { r: 'tempfail;skip_relaying=true', d: 'tempfail;skip_sender_domains=.example.org' },
      { r: pass, d: pass },
    )
    await chain.connect('h', ADDR, undefined, PUBLIC)
    await chain.mail(
      ['<s@mx.example.org>'],
      undefined,
      facts({ relaying: true, senderDomain: 'mx.example.org' }),
    )
    assert.equal(fake['r']?.conns.length, 0)
    assert.equal(fake['d']?.conns.length, 0)
    assert.deepEqual(skips, ['r@mail: relaying', 'd@mail: sender domain mx.example.org'])
    chain.abort()
    await chain.mail(['<s@example.org>'], undefined, facts({ senderDomain: 'example.org' }))
    assert.deepEqual(
      fake['d']?.last.names,
      ['optneg', 'connect', 'mail'],
      'the domain itself is not a subdomain',
    )
    assert.deepEqual(fake['r']?.last.names, ['optneg', 'connect', 'mail'])
  })

  it('skip_recipient_domains: not asked about those recipients; with union it joins at the first other one', async () => {
    const { chain, fake, skips, events } = await skipInternal('union')
    assert.deepEqual(await chain.rcpt(['<a@internal.example>'], undefined, internal), CONTINUE)
    assert.equal(fake['x']?.conns.length, 0)
    assert.deepEqual(await chain.rcpt(['<b@example.com>'], undefined, other), CONTINUE)
    // joined with CONNECT and MAIL replayed, then asked about its recipient
    const rcpts = fake['x']?.last.all('rcpt').map((c) => c.args[0]?.toString())
    assert.deepEqual(fake['x']?.last.names, ['optneg', 'connect', 'mail', 'rcpt', 'rcpt'])
    assert.deepEqual(rcpts, ['<a@internal.example>', '<b@example.com>'])
    // it was shown the listed recipient: logged as such, not as a skip
    await chain.data()
    assert.deepEqual(skips, [])
    const shown = events.filter((e) => e.milter === 'x' && /shown although/.test(e.message))
    assert.equal(shown.length, 1)
    assert.match(shown[0]!.message, /^<a@internal\.example> shown although skip_recipient_domains/)
    assert.doesNotMatch(chain.takeReports()[0]?.verdict ?? '', /skipped/)
  })

  it('skip_recipient_domains with union, a listed recipient after the milter joined: shown, not skipped', async () => {
    const { chain, fake, skips, events } = await skipInternal('union')
    await chain.rcpt(['<b@example.com>'], undefined, other)
    await chain.rcpt(['<a@internal.example>'], undefined, internal)
    assert.equal(fake['x']?.last.all('rcpt').length, 2)
    assert.deepEqual(chain.takeReports()[0]?.verdict, 'continue')
    assert.deepEqual(skips, [])
    assert.ok(events.some((e) => /^<a@internal\.example> shown although/.test(e.message)))
  })

  it('skip_recipient_domains: the skip is reported once the recipients are final (DATA)', async () => {
    const { chain, fake, skips } = await skipInternal('union')
    await chain.rcpt(['<a@internal.example>'], undefined, internal)
    await chain.rcpt(['<c@internal.example>'], undefined, internal)
    assert.deepEqual(skips, [], 'not yet: a later recipient could bring the milter in')
    await chain.data()
    assert.equal(fake['x']?.conns.length, 0)
    assert.deepEqual(skips, ['x@rcpt: recipient domain internal.example'], 'each reason once')
    assert.equal(
      chain.takeReports()[0]?.verdict,
      'skipped (recipient domain internal.example)@rcpt',
    )
  })

  it('skip_clients: every message of the connection reports the skip, not only the first', async () => {
    const { chain, skips } = await setup({ p: 'tempfail;skip_private_clients=true' }, { p: pass })
    await chain.connect('h', ADDR, undefined, PRIVATE)
    for (let i = 0; i < 3; i++) {
      await chain.mail(['<s@example.org>'], undefined, facts())
      const [r] = chain.takeReports()
      assert.equal(r?.verdict, 'skipped (private client 10.1.2.3)@connect', `message ${i + 1}`)
      chain.abort()
    }
    assert.equal(skips.length, 1, 'in the connection’s results once')
    assert.deepEqual(chain.takeReports(), [], 'nothing left for the end of the connection')
  })

  it('skip_recipient_domains with defer: a recipient needing other milters is deferred (452)', async () => {
    const { chain, skips } = await skipInternal('defer')
    assert.deepEqual(await chain.rcpt(['<a@internal.example>'], undefined, internal), CONTINUE)
    const o = await chain.rcpt(['<b@example.com>'], undefined, other)
    assert.equal(o.action, 'tempfail')
    assert.ok(o.action === 'tempfail')
    assert.equal(o.reply.code, 452)
    await chain.data()
    assert.deepEqual(skips, ['x@rcpt: recipient domain internal.example'])
  })

  it('skip_recipient_domains with defer: a listed recipient after the milter joined is deferred, not skipped', async () => {
    const { chain, skips } = await skipInternal('defer')
    await chain.rcpt(['<b@example.com>'], undefined, other)
    assert.equal(
      (await chain.rcpt(['<a@internal.example>'], undefined, internal)).action,
      'tempfail',
    )
    await chain.data()
    assert.deepEqual(skips, [], 'that recipient is no part of this message')
  })

  it('skip_larger_than: by SIZE= at MAIL, else by the size received (ABORT instead of the content)', async () => {
    const { chain, fake, skips } = await setup(
      { big: 'tempfail;skip_larger_than=1K', e: 'tempfail' },
      { big: only('eob', [addheader('X-Big', 'seen'), R.continue]), e: pass },
    )
    await chain.connect('h', ADDR, undefined, PUBLIC)
    await chain.mail(['<s@example.org>', 'SIZE=5000'], undefined, facts({ declaredSize: 5000 }))
    assert.equal(fake['big']?.conns.length, 0)
    assert.deepEqual(skips, ['big@mail: declared size 5000 > 1024'])
    chain.abort()
    await chain.mail(['<s@example.org>'], undefined, facts())
    await chain.rcpt(['<r@example.com>'])
    await chain.data()
    const r = await chain.message(message({ size: 2048 }))
    try {
      assert.deepEqual(r.outcome, CONTINUE)
      assert.ok(!r.headers.some((h) => h.name === 'X-Big'))
      chain.close() // the ABORT goes out with the next packet (QUIT here)
      await fake['big'].last.waitFor((c) => c.cmd === 'quit')
      assert.deepEqual(fake['big'].last.names.slice(-2), ['abort', 'quit'])
      assert.ok(!fake['big'].last.names.includes('eob'))
      assert.deepEqual(skips[1], 'big@eom: received size 2048 > 1024')
      assert.ok(fake['e']!.last.names.includes('eob'), 'the other milter had the content')
    } finally {
      await r.dispose()
    }
  })
})
