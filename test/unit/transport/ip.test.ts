/**
 * IP literals, canonical addresses and the CONNECT address (ipaddr.js).
 */
import assert from 'node:assert/strict'

import { connectAddressFor, isIpLiteral, normalizeIp } from '../../../lib/transport/address'

describe('transport: IP addresses', () => {
  describe('isIpLiteral', () => {
    for (const t of ['192.0.2.1', '::1', '2001:db8::7', '::ffff:192.0.2.1', 'fe80::1%eth0'])
      it(`"${t}" is an address`, () => assert.equal(isIpLiteral(t), true))
    // inet_aton's short, octal and hex forms are host names here, as in rDNS results
    for (const t of [
      'mx.example.com',
      'localhost',
      '1',
      '01.2.3.4',
      '0x7f.0.0.1',
      '1.2.3',
      '',
      'NXDOMAIN',
    ])
      it(`"${t}" is not`, () => assert.equal(isIpLiteral(t), false))
  })

  describe('normalizeIp', () => {
    const cases: Array<[string, string]> = [
      ['192.0.2.1', '192.0.2.1'],
      ['::ffff:192.0.2.1', '192.0.2.1'],
      ['::FFFF:c000:0201', '192.0.2.1'],
      ['2001:DB8:0:0:0:0:0:7', '2001:db8::7'],
      ['0:0:0:0:0:0:0:1', '::1'],
      ['not-an-ip', 'not-an-ip'],
    ]
    for (const [input, want] of cases)
      it(`${input} -> ${want}`, () => assert.equal(normalizeIp(input), want))
  })

  describe('connectAddressFor', () => {
    it('IPv4, and IPv4-mapped IPv6 as IPv4 (as Sendmail reports it)', () => {
      assert.deepEqual(connectAddressFor('192.0.2.1', 25), {
        family: 'inet',
        address: '192.0.2.1',
        port: 25,
      })
      assert.deepEqual(connectAddressFor('::ffff:192.0.2.1', 2525), {
        family: 'inet',
        address: '192.0.2.1',
        port: 2525,
      })
    })
    it('IPv6 in canonical text', () => {
      assert.deepEqual(connectAddressFor('2001:DB8::0:7', 587), {
        family: 'inet6',
        address: '2001:db8::7',
        port: 587,
      })
    })
    it('no usable address: family unknown', () => {
      for (const ip of [undefined, '', 'localhost', '999.1.1.1'])
        assert.deepEqual(connectAddressFor(ip, 25), { family: 'unknown' })
    })
  })
})
