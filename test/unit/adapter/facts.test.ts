/**
 * Haraka connection state -> CONNECT facts, macro values and recipient
 * facts, on haraka-test-fixtures connections.
 */
import { transactionState } from '../../../lib/adapter/state'
import assert from 'node:assert/strict'

import {
  NOTE_DESTINATION_CHANNEL,
  NOTE_OPTIN,
  connectAddress,
  connectHostname,
  esmtpArgs,
  macroLookup,
  rcptExtras,
  recipientFacts,
} from '../../../lib/adapter/facts'
import type { LocalDomain } from '../../../lib/adapter/haraka'
import { parseMilterConfig, type Ini } from '../../../lib/config'
import { addr, connection, transaction, type FixtureConnection } from './fixture'

const LOCAL: LocalDomain = (d) => d === 'example.com' || d === 'local.test'

function client(ip: string, host?: string | null): FixtureConnection {
  const c = connection({ ip })
  c.remote.host = host ?? null
  c.remote.port = 52100
  return c
}

const CFG = parseMilterConfig({})

describe('adapter: facts', () => {
  describe('connectHostname / connectAddress', () => {
    it('the rDNS name when there is one', () => {
      const c = client('192.0.2.10', 'mx.example.net')
      assert.equal(connectHostname(c), 'mx.example.net')
      assert.deepEqual(connectAddress(c), { family: 'inet', address: '192.0.2.10', port: 52100 })
    })

    it('`[ip]` without a name, for NXDOMAIN and DNSERROR, and for an IP literal as name', () => {
      for (const host of [null, undefined, '', 'NXDOMAIN', 'DNSERROR', '192.0.2.10']) {
        assert.equal(connectHostname(client('192.0.2.10', host)), '[192.0.2.10]', String(host))
      }
    })

    it('IPv6: bare address text, family inet6', () => {
      const c = client('2001:db8::10')
      assert.equal(connectHostname(c), '[2001:db8::10]')
      assert.deepEqual(connectAddress(c), {
        family: 'inet6',
        address: '2001:db8::10',
        port: 52100,
      })
      assert.equal(connectHostname(client('2001:db8::10', 'v6.example.net')), 'v6.example.net')
    })

    it('IPv4-mapped IPv6 is reported as IPv4', () => {
      const c = client('::ffff:192.0.2.10')
      assert.deepEqual(connectAddress(c), { family: 'inet', address: '192.0.2.10', port: 52100 })
    })

    it('the `[ip]` hostname of an IPv4-mapped client matches its CONNECT address', () => {
      const c = client('::ffff:192.0.2.10')
      assert.equal(connectHostname(c), '[192.0.2.10]')
    })

    it('no usable address: family unknown; a missing port is 0', () => {
      const c = client('192.0.2.10')
      delete c.remote.ip
      assert.deepEqual(connectAddress(c), { family: 'unknown' })
      assert.equal(connectHostname(c), 'localhost')
      c.remote.ip = 'not an ip'
      assert.deepEqual(connectAddress(c), { family: 'unknown' })
      const d = client('192.0.2.10')
      delete d.remote.port
      assert.deepEqual(connectAddress(d), { family: 'inet', address: '192.0.2.10', port: 0 })
    })
  })

  describe('macroLookup', () => {
    function conn(): FixtureConnection {
      const c = client('192.0.2.10', 'mx.example.net')
      c.local.ip = '198.51.100.1'
      c.local.port = 25
      return c
    }

    it('connection macros', () => {
      const m = macroLookup(CFG, conn(), 'tcp_local', LOCAL)
      assert.equal(m('{client_addr}'), '192.0.2.10')
      assert.equal(m('{client_port}'), '52100')
      assert.equal(m('{client_name}'), 'mx.example.net')
      assert.equal(m('{client_ptr}'), 'mx.example.net')
      assert.equal(m('{client_resolve}'), 'OK')
      assert.equal(m('_'), 'mx.example.net [192.0.2.10]')
      assert.equal(m('j'), 'haraka-test.example.com')
      assert.equal(m('v'), 'Haraka')
      assert.equal(m('{daemon_name}'), 'Haraka')
      assert.equal(m('{daemon_addr}'), '198.51.100.1')
      assert.equal(m('{daemon_port}'), '25')
      assert.equal(m('{source_channel}'), 'tcp_local')
      assert.equal(m('{if_addr}'), undefined)
      assert.equal(m('{no_such_macro}'), undefined)
    })

    it('daemon_name and source_channel come from the config and the listener', () => {
      const cfg = parseMilterConfig({ main: { daemon_name: 'mx1' } })
      const m = macroLookup(cfg, conn(), 'tcp_auth', LOCAL)
      assert.equal(m('{daemon_name}'), 'mx1')
      assert.equal(m('{source_channel}'), 'tcp_auth')
    })

    it('a client without a name: unknown, FAIL', () => {
      const c = conn()
      c.remote.host = 'NXDOMAIN'
      const m = macroLookup(CFG, c, 'tcp_local', LOCAL)
      assert.equal(m('{client_name}'), 'unknown')
      assert.equal(m('{client_ptr}'), 'unknown')
      assert.equal(m('{client_resolve}'), 'FAIL')
      assert.equal(m('_'), 'unknown [192.0.2.10]')
    })

    it('{tls_version}, {cipher}, {cipher_bits} only with TLS', () => {
      const c = conn()
      c.tls.cipher = {
        name: 'TLS_AES_256_GCM_SHA384',
        standardName: 'TLS_AES_256_GCM_SHA384',
        version: 'TLSv1.3',
      }
      c.tls.enabled = false
      let m = macroLookup(CFG, c, 'tcp_local', LOCAL)
      assert.equal(m('{tls_version}'), undefined)
      assert.equal(m('{cipher}'), undefined)
      assert.equal(m('{cipher_bits}'), undefined)
      c.tls.enabled = true
      m = macroLookup(CFG, c, 'tcp_local', LOCAL)
      assert.equal(m('{tls_version}'), 'TLSv1.3')
      assert.equal(m('{cipher}'), 'TLS_AES_256_GCM_SHA384')
      assert.equal(m('{cipher_bits}'), '256')
      c.tls.cipher = { name: 'ECDHE-RSA-AES128-GCM-SHA256', version: 'TLSv1.2' }
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('{cipher_bits}'), '128')
    })

    it('{cert_subject} and {cert_issuer} only with a verified client certificate', () => {
      const c = conn()
      c.tls.enabled = true
      c.tls.peerCertificate = {
        subject: { CN: 'client.example.net' },
        issuer: { CN: 'Example CA' },
      }
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('{cert_subject}'), undefined)
      c.tls.verified = true
      const m = macroLookup(CFG, c, 'x', LOCAL)
      assert.equal(m('{cert_subject}'), 'client.example.net')
      assert.equal(m('{cert_issuer}'), 'Example CA')
    })

    it('{auth_authen} and {auth_type} only with an authenticated user', () => {
      const c = conn()
      c.notes['auth_method'] = 'PLAIN'
      let m = macroLookup(CFG, c, 'x', LOCAL)
      assert.equal(m('{auth_authen}'), undefined)
      assert.equal(m('{auth_type}'), undefined)
      c.notes['auth_user'] = 'matt'
      m = macroLookup(CFG, c, 'x', LOCAL)
      assert.equal(m('{auth_authen}'), 'matt')
      assert.equal(m('{auth_type}'), 'PLAIN')
    })

    it('i is the transaction uuid; none before MAIL', () => {
      const c = conn()
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('i'), undefined)
      const t = transaction(c)
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('i'), t.uuid)
      assert.match(t.uuid, /^[0-9A-F-]{36}\.1$/)
    })

    it('{mail_addr}, {mail_host}, {mail_mailer}', () => {
      const c = conn()
      transaction(c, 'Sender@Example.ORG')
      let m = macroLookup(CFG, c, 'x', LOCAL)
      assert.equal(m('{mail_addr}'), 'Sender@Example.ORG')
      assert.equal(m('{mail_host}'), 'example.org')
      assert.equal(m('{mail_mailer}'), 'smtp')
      transaction(c, 'me@local.test')
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('{mail_mailer}'), 'local')
      transaction(c, '<>')
      m = macroLookup(CFG, c, 'x', LOCAL)
      assert.equal(m('{mail_addr}'), '')
      assert.equal(m('{mail_mailer}'), 'local')
    })

    it('{auth_author} from MAIL FROM AUTH=, not for AUTH=<>', () => {
      const c = conn()
      const t = transaction(c)
      transactionState(t).mailArgs = { AUTH: 'matt@example.org', SIZE: '10' }
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('{auth_author}'), 'matt@example.org')
      transactionState(t).mailArgs = { AUTH: '<>' }
      assert.equal(macroLookup(CFG, c, 'x', LOCAL)('{auth_author}'), undefined)
    })

    it('extras override and add', () => {
      const m = macroLookup(CFG, conn(), 'x', LOCAL, {
        '{rcpt_addr}': 'a@b',
        '{client_name}': 'forced',
      })
      assert.equal(m('{rcpt_addr}'), 'a@b')
      assert.equal(m('{client_name}'), 'forced')
    })
  })

  describe('recipientFacts', () => {
    const ini: Ini = {
      optin: { default: 'dflt', 'vip@example.com': 'address', 'example.com': 'domain' },
      destination_channel: { local: 'lmtp', relay: 'smtp_out', 'partner.example': 'tcp_partner' },
    }
    const cfg = parseMilterConfig(ini)

    function facts(rcpt: string, setup: (c: FixtureConnection) => void = () => undefined) {
      const c = client('192.0.2.10')
      transaction(c)
      setup(c)
      return recipientFacts(cfg, c, addr(rcpt), LOCAL)
    }

    it('optin: address beats domain beats default', () => {
      assert.equal(facts('vip@example.com').optin, 'address')
      assert.equal(facts('other@example.com').optin, 'domain')
      assert.equal(facts('x@elsewhere.example').optin, 'dflt')
      assert.equal(facts('VIP@Example.COM').optin, 'address', 'case-insensitive')
    })

    it('optin: undefined without a default', () => {
      const c = client('192.0.2.10')
      transaction(c)
      assert.equal(recipientFacts(CFG, c, addr('a@b.example'), LOCAL).optin, undefined)
    })

    it('destination channel: per-domain, else local for our domains, relay when relaying', () => {
      assert.equal(facts('x@partner.example').destinationChannel, 'tcp_partner')
      assert.equal(facts('x@example.com').destinationChannel, 'lmtp')
      assert.equal(facts('x@elsewhere.example').destinationChannel, 'lmtp')
      assert.equal(
        facts('x@elsewhere.example', (c) => {
          c.relaying = true
        }).destinationChannel,
        'smtp_out',
      )
      assert.equal(
        facts('x@example.com', (c) => {
          c.relaying = true
        }).destinationChannel,
        'lmtp',
        'our own domain stays local even when relaying',
      )
    })

    it('transaction notes set by another plugin beat the config', () => {
      const f = facts('vip@example.com', (c) => {
        const t = c.transaction!
        t.notes[NOTE_OPTIN] = { 'vip@example.com': 'from-note' }
        t.notes[NOTE_DESTINATION_CHANNEL] = { 'vip@example.com': 'note-channel' }
      })
      assert.deepEqual(f, {
        optin: 'from-note',
        destinationChannel: 'note-channel',
        domain: 'example.com',
      })
      assert.equal(NOTE_OPTIN, 'milter_optin')
      assert.equal(NOTE_DESTINATION_CHANNEL, 'milter_destination_channel')
    })

    it('a note for another recipient, or not a string, is ignored', () => {
      const f = facts('vip@example.com', (c) => {
        const t = c.transaction!
        t.notes[NOTE_OPTIN] = { 'someone@example.com': 'x', 'vip@example.com': 42 }
        t.notes[NOTE_DESTINATION_CHANNEL] = 'not a table'
      })
      assert.deepEqual(f, { optin: 'address', destinationChannel: 'lmtp', domain: 'example.com' })
    })

    it('note keys are the lower-cased address (README contract), whatever the case of the RCPT', () => {
      const f = facts('Vip@Example.COM', (c) => {
        c.transaction!.notes[NOTE_OPTIN] = { 'vip@example.com': 'from-note' }
        c.transaction!.notes[NOTE_DESTINATION_CHANNEL] = { 'Vip@Example.COM': 'not-lower-cased' }
      })
      assert.equal(f.optin, 'from-note')
      assert.equal(f.destinationChannel, 'lmtp', 'a key that is not lower-cased is not used')
    })
  })

  describe('rcptExtras', () => {
    it('{rcpt_addr}, {rcpt_host}, {rcpt_mailer} and the recipient facts', () => {
      assert.deepEqual(
        rcptExtras(addr('User@Example.COM'), { destinationChannel: 'local', optin: 'spam' }, LOCAL),
        {
          '{rcpt_addr}': 'User@Example.COM',
          '{rcpt_host}': 'example.com',
          '{rcpt_mailer}': 'local',
          '{destination_channel}': 'local',
          '{optin}': 'spam',
        },
      )
      assert.equal(
        rcptExtras(
          addr('a@remote.example'),
          { destinationChannel: 'relay', optin: undefined },
          LOCAL,
        )['{rcpt_mailer}'],
        'smtp',
      )
    })
  })

  describe('esmtpArgs', () => {
    it('KEY=value, bare keywords for null, nothing for none', () => {
      assert.deepEqual(esmtpArgs({ SIZE: '1234', BODY: '8BITMIME' }), [
        'SIZE=1234',
        'BODY=8BITMIME',
      ])
      assert.deepEqual(esmtpArgs({ SMTPUTF8: null, BODY: '8BITMIME' }), [
        'SMTPUTF8',
        'BODY=8BITMIME',
      ])
      assert.deepEqual(esmtpArgs({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;x@y' }), [
        'NOTIFY=SUCCESS,FAILURE',
        'ORCPT=rfc822;x@y',
      ])
      assert.deepEqual(esmtpArgs({}), [])
      assert.deepEqual(esmtpArgs(undefined), [])
    })
  })
})
