/** check's envelope from the message's headers when --from / --rcpt are not given. */
import assert from 'node:assert/strict'
import { addressesIn, envelopeOf } from '../../../lib/cli/envelope-from-headers'

describe('cli: the envelope from the headers', () => {
  it('Return-Path first, then From; To and Cc, each address once', () => {
    const msg = Buffer.from(
      'Return-Path: <bounce@example.org>\r\nFrom: Alice <a@example.com>\r\n' +
        'To: "Smith, B" <b@example.net>, c@example.net\r\nCc: c@example.net, d@example.net (D)\r\n\r\nx\r\n',
    )
    assert.deepEqual(envelopeOf(msg), {
      from: 'bounce@example.org',
      rcpts: ['b@example.net', 'c@example.net', 'd@example.net'],
    })
  })

  it('From when there is no Return-Path; <> is the null sender; nothing when no headers', () => {
    assert.equal(envelopeOf(Buffer.from('From: a@example.com\r\n\r\n')).from, 'a@example.com')
    assert.equal(envelopeOf(Buffer.from('Return-Path: <>\r\n\r\n')).from, '')
    assert.deepEqual(envelopeOf(Buffer.from('Subject: x\r\n\r\n')), { from: undefined, rcpts: [] })
  })

  it('addressesIn: bracketed addresses win over words that look like addresses', () => {
    assert.deepEqual(addressesIn('"x@y" <a@b.example>'), ['a@b.example'])
    assert.deepEqual(addressesIn('a@b.example, "q@r" c@d.example'), ['a@b.example', 'c@d.example'])
  })
})
