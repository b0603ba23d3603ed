/**
 * skip_* decisions (lib/policy/conditions.ts): which condition applies,
 * and the reason recorded for it.
 */
import assert from 'node:assert/strict'

import { parseMilterConfig, type Ini, type SkipRules } from '../../../lib/config'
import {
  clientSkip,
  domainListed,
  hasMessageConditions,
  messageSkip,
  recipientSkip,
  sizeSkip,
} from '../../../lib/policy/conditions'

function rules(keys: Record<string, string>): SkipRules {
  const ini: Ini = { main: { milters: 'a' }, 'milter.a': { socket: '127.0.0.1:1', ...keys } }
  const skip = parseMilterConfig(ini).milters.get('a')?.skip
  assert.ok(skip)
  return skip
}

const MSG = {
  authenticated: false,
  relaying: false,
  senderDomain: 'example.org',
  declaredSize: undefined,
}

describe('policy: skip_* conditions', () => {
  it('domains: exact, or subdomains under a leading dot; never the null sender', () => {
    const list = ['example.org', '.lists.example.net']
    assert.ok(domainListed('Example.ORG', list))
    assert.ok(!domainListed('mx.example.org', list))
    assert.ok(domainListed('a.lists.example.net', list))
    assert.ok(!domainListed('lists.example.net', list))
    assert.ok(!domainListed('badlists.example.net', list))
    assert.ok(!domainListed('', ['']))
  })

  it('client: private flag or a listed network (IPv4-mapped IPv6 counts as IPv4)', () => {
    const r = rules({ skip_private_clients: 'true', skip_clients: '203.0.113.0/24 2001:db8::/32' })
    assert.equal(clientSkip(r, { ip: '10.0.0.1', private: true }), 'private client 10.0.0.1')
    assert.equal(
      clientSkip(r, { ip: '203.0.113.9', private: false }),
      'client 203.0.113.9 in 203.0.113.0/24',
    )
    assert.equal(
      clientSkip(r, { ip: '::ffff:203.0.113.9', private: false }),
      'client ::ffff:203.0.113.9 in 203.0.113.0/24',
    )
    assert.equal(
      clientSkip(r, { ip: '2001:db8::25', private: false }),
      'client 2001:db8::25 in 2001:db8::/32',
    )
    assert.equal(clientSkip(r, { ip: '198.51.100.1', private: false }), undefined)
    assert.equal(clientSkip(r, { ip: undefined, private: false }), undefined)
    assert.equal(clientSkip(undefined, { ip: '10.0.0.1', private: true }), undefined)
  })

  it('message: authenticated, relaying, sender domain, declared size, in that order', () => {
    const r = rules({
      skip_authenticated: 'true',
      skip_relaying: 'true',
      skip_sender_domains: 'bulk.example',
      skip_larger_than: '1000',
    })
    assert.equal(messageSkip(r, MSG), undefined)
    assert.equal(messageSkip(r, { ...MSG, authenticated: true, relaying: true }), 'authenticated')
    assert.equal(messageSkip(r, { ...MSG, relaying: true }), 'relaying')
    assert.equal(
      messageSkip(r, { ...MSG, senderDomain: 'bulk.example' }),
      'sender domain bulk.example',
    )
    assert.equal(messageSkip(r, { ...MSG, declaredSize: 1000 }), undefined, 'not larger')
    assert.equal(messageSkip(r, { ...MSG, declaredSize: 1001 }), 'declared size 1001 > 1000')
    assert.ok(hasMessageConditions(r))
    assert.ok(!hasMessageConditions(rules({ skip_private_clients: 'true' })))
  })

  it('recipient domain and received size', () => {
    const r = rules({ skip_recipient_domains: '.internal.example', skip_larger_than: '1K' })
    assert.equal(recipientSkip(r, 'HR.Internal.Example'), 'recipient domain hr.internal.example')
    assert.equal(recipientSkip(r, 'example.com'), undefined)
    assert.equal(sizeSkip(r, 1025), 'received size 1025 > 1024')
    assert.equal(sizeSkip(r, 1024), undefined)
  })
})
