import assert from 'node:assert/strict'

import {
  EnvelopeEditError,
  addressKey,
  applyEnvelopeEdits,
  stripAddress,
  type Envelope,
} from '../../../lib/message/envelope'

function env(from: string, ...rcpts: string[]): Envelope {
  return { from: { address: from }, rcpts: rcpts.map((address) => ({ address })) }
}

const rcptsOf = (e: Envelope): string[] => e.rcpts.map((r) => r.address)

describe('applyEnvelopeEdits: DELRCPT', () => {
  it('removes a recipient given with angle brackets', () => {
    const out = applyEnvelopeEdits(env('a@b', 'bob@example.net', 'carol@example.net'), [
      { kind: 'delrcpt', rcpt: '<bob@example.net>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), ['carol@example.net'])
  })

  it('removes a recipient given without angle brackets', () => {
    const out = applyEnvelopeEdits(env('a@b', 'bob@example.net'), [
      { kind: 'delrcpt', rcpt: 'bob@example.net' },
    ])
    assert.deepStrictEqual(rcptsOf(out), [])
  })

  it('compares the domain case-insensitively', () => {
    const out = applyEnvelopeEdits(env('a@b', 'bob@Example.NET'), [
      { kind: 'delrcpt', rcpt: '<bob@example.net>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), [])
  })

  it('compares the local part exactly', () => {
    const out = applyEnvelopeEdits(env('a@b', 'Bob@example.net'), [
      { kind: 'delrcpt', rcpt: '<bob@example.net>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), ['Bob@example.net'])
  })

  it('matches a needlessly quoted local part', () => {
    assert.equal(stripAddress('<"bob"@example.net>'), 'bob@example.net')
    const out = applyEnvelopeEdits(env('a@b', 'bob@example.net'), [
      { kind: 'delrcpt', rcpt: '<"bob"@example.net>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), [])
  })

  it('removes every recipient with that address', () => {
    const e: Envelope = {
      from: { address: 'a@b' },
      rcpts: [{ address: 'x@y' }, { address: 'x@Y', args: 'NOTIFY=NEVER' }, { address: 'z@y' }],
    }
    assert.deepStrictEqual(rcptsOf(applyEnvelopeEdits(e, [{ kind: 'delrcpt', rcpt: '<x@y>' }])), [
      'z@y',
    ])
  })

  it('ignores an address that is not a recipient', () => {
    const out = applyEnvelopeEdits(env('a@b', 'x@y'), [{ kind: 'delrcpt', rcpt: '<nobody@y>' }])
    assert.deepStrictEqual(rcptsOf(out), ['x@y'])
  })
})

describe('applyEnvelopeEdits: ADDRCPT', () => {
  it('adds a recipient without brackets, with its ESMTP args', () => {
    const out = applyEnvelopeEdits(env('a@b', 'x@y'), [
      {
        kind: 'addrcpt',
        rcpt: '<new@example.org>',
        args: 'NOTIFY=NEVER ORCPT=rfc822;new@example.org',
      },
    ])
    assert.deepStrictEqual(out.rcpts, [
      { address: 'x@y' },
      { address: 'new@example.org', args: 'NOTIFY=NEVER ORCPT=rfc822;new@example.org' },
    ])
  })

  it('drops blank args', () => {
    const out = applyEnvelopeEdits(env('a@b'), [{ kind: 'addrcpt', rcpt: '<n@o>', args: '  ' }])
    assert.deepStrictEqual(out.rcpts, [{ address: 'n@o' }])
  })

  it('does not add a recipient that is already there (domain case-insensitive)', () => {
    const out = applyEnvelopeEdits(env('a@b', 'bob@example.net'), [
      { kind: 'addrcpt', rcpt: '<bob@EXAMPLE.net>' },
      { kind: 'addrcpt', rcpt: 'bob@example.net' },
    ])
    assert.deepStrictEqual(rcptsOf(out), ['bob@example.net'])
  })

  it('adds a recipient whose local part differs only in case', () => {
    const out = applyEnvelopeEdits(env('a@b', 'bob@example.net'), [
      { kind: 'addrcpt', rcpt: '<BOB@example.net>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), ['bob@example.net', 'BOB@example.net'])
  })

  it('applies edits in order: add, delete, add again', () => {
    const out = applyEnvelopeEdits(env('a@b'), [
      { kind: 'addrcpt', rcpt: '<n@o>' },
      { kind: 'delrcpt', rcpt: '<n@o>' },
      { kind: 'addrcpt', rcpt: '<m@o>' },
    ])
    assert.deepStrictEqual(rcptsOf(out), ['m@o'])
  })

  it('refuses an empty recipient', () => {
    assert.throws(
      () => applyEnvelopeEdits(env('a@b'), [{ kind: 'addrcpt', rcpt: '<>' }]),
      EnvelopeEditError,
    )
  })
})

describe('applyEnvelopeEdits: CHGFROM', () => {
  it('replaces the sender, with args', () => {
    const out = applyEnvelopeEdits(env('old@x', 'r@y'), [
      { kind: 'chgfrom', sender: '<new@x>', args: 'BODY=8BITMIME' },
    ])
    assert.deepStrictEqual(out.from, { address: 'new@x', args: 'BODY=8BITMIME' })
    assert.deepStrictEqual(rcptsOf(out), ['r@y'])
  })

  it('replaces the sender without args, dropping the old args', () => {
    const e: Envelope = { from: { address: 'old@x', args: 'SIZE=1' }, rcpts: [] }
    assert.deepStrictEqual(applyEnvelopeEdits(e, [{ kind: 'chgfrom', sender: 'new@x' }]).from, {
      address: 'new@x',
    })
  })

  it('accepts the null sender <>', () => {
    const out = applyEnvelopeEdits(env('old@x'), [{ kind: 'chgfrom', sender: '<>' }])
    assert.deepStrictEqual(out.from, { address: '' })
  })

  it('lets a second CHGFROM override the first', () => {
    const out = applyEnvelopeEdits(env('old@x'), [
      { kind: 'chgfrom', sender: '<one@x>' },
      { kind: 'chgfrom', sender: '<two@x>' },
    ])
    assert.equal(out.from.address, 'two@x')
  })
})

describe('applyEnvelopeEdits: hostile input', () => {
  const bad: Array<[string, Parameters<typeof applyEnvelopeEdits>[1][number]]> = [
    ['a CRLF in an added recipient', { kind: 'addrcpt', rcpt: '<a@b>\r\nRCPT TO:<c@d>' }],
    ['a NUL in an added recipient', { kind: 'addrcpt', rcpt: '<a\0@b>' }],
    ['a space inside an added recipient', { kind: 'addrcpt', rcpt: '<a b@c>' }],
    ['a bracket inside an added recipient', { kind: 'addrcpt', rcpt: '<a<b@c>' }],
    ['a DEL in an added recipient', { kind: 'addrcpt', rcpt: 'a\x7f@b' }],
    ['a control char in the sender', { kind: 'chgfrom', sender: '<a\x01@b>' }],
    ['a LF in the sender', { kind: 'chgfrom', sender: 'a@b\n' + 'x' }],
    ['a CRLF in CHGFROM args', { kind: 'chgfrom', sender: '<a@b>', args: 'BODY=8BITMIME\r\nX' }],
    ['a NUL in ADDRCPT args', { kind: 'addrcpt', rcpt: '<a@b>', args: 'NOTIFY=NEVER\0' }],
  ]
  for (const [what, edit] of bad) {
    it(`refuses ${what} with EnvelopeEditError`, () => {
      assert.throws(() => applyEnvelopeEdits(env('s@x', 'r@y'), [edit]), EnvelopeEditError)
    })
  }

  it('does not change its input', () => {
    const e = env('s@x', 'r@y')
    const copy = structuredClone(e)
    applyEnvelopeEdits(e, [
      { kind: 'addrcpt', rcpt: '<n@o>' },
      { kind: 'delrcpt', rcpt: '<r@y>' },
      { kind: 'chgfrom', sender: '<t@x>' },
    ])
    assert.deepStrictEqual(e, copy)
  })
})

describe('addressKey', () => {
  it('strips brackets and lower-cases only the domain', () => {
    assert.equal(addressKey('<Bob@Example.NET>'), 'Bob@example.net')
    assert.equal(addressKey(' <x@Y> '), 'x@y')
    assert.equal(addressKey('postmaster'), 'postmaster')
  })
})
