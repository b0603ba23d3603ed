/**
 * milter.ini: `socket` as a list of endpoints, `balance`, and the TLS keys
 * (PEM files read at load; errors name file, section, key and path).
 */
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { parseMilterConfig, type MilterDef } from '../../../lib/config'
import { KNOWN_KEYS } from '../../../lib/config-lint'
import { parseSocketList } from '../../../lib/transport/spec'

function milter(sec: Record<string, unknown>, main: Record<string, unknown> = {}): MilterDef {
  const cfg = parseMilterConfig({ main: { milters: 'm', ...main }, 'milter.m': sec })
  const d = cfg.milters.get('m')
  assert.ok(d)
  return d
}

const CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'
const KEY = '-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n'

describe('config: endpoint lists and balance', () => {
  it('parseSocketList: commas, spaces, every syntax, in order', () => {
    const eps = parseSocketList(
      ' inet:8891@10.0.0.1,inet6:8891@::1  unix:/run/m.sock, [2001:db8::1]:25 host.example:99 ',
    )
    assert.deepEqual(
      eps.map((e) => e.text),
      [
        'inet:8891@10.0.0.1',
        'inet6:8891@::1',
        'unix:/run/m.sock',
        '[2001:db8::1]:25',
        'host.example:99',
      ],
    )
    assert.deepEqual(eps[2]?.spec, { kind: 'unix', path: '/run/m.sock' })
    assert.deepEqual(eps[4]?.spec, { kind: 'tcp', host: 'host.example', port: 99, family: 0 })
  })

  it('an endpoint listed twice (in any syntax) is an error naming it', () => {
    assert.throws(
      () => milter({ socket: 'inet:1@127.0.0.1, 127.0.0.1:1' }),
      /milter\.ini \[milter\.m\] socket: milter socket "127\.0\.0\.1:1" is listed twice/,
    )
  })

  it('a bad endpoint in a list is named', () => {
    assert.throws(
      () => milter({ socket: 'inet:1@127.0.0.1, tcp://x' }),
      /\[milter\.m\] socket: unrecognised milter socket "tcp:\/\/x"/,
    )
  })

  it('one endpoint: socketText, and endpoints of one record', () => {
    const d = milter({ socket: 'inet:8891@127.0.0.1' })
    assert.equal(d.socketText, 'inet:8891@127.0.0.1')
    assert.deepEqual(d.endpoints, [
      {
        spec: { kind: 'tcp', host: '127.0.0.1', port: 8891, family: 4 },
        text: 'inet:8891@127.0.0.1',
      },
    ])
    assert.equal(d.balance, 'failover')
    assert.equal(d.tls, undefined)
  })

  it('balance: per milter, [main] default, validated', () => {
    assert.equal(milter({ socket: 'a:1 b:2', balance: 'round_robin' }).balance, 'round_robin')
    assert.equal(milter({ socket: 'a:1 b:2' }, { balance: 'round_robin' }).balance, 'round_robin')
    assert.throws(
      () => milter({ socket: 'a:1', balance: 'random' }),
      /\[milter\.m\] balance: must be one of failover, round_robin, not "random"/,
    )
  })

  it('the new keys are known to the lint, in [milter.NAME] and (except tls_servername) [main]', () => {
    for (const k of [
      'balance',
      'tls',
      'tls_ca',
      'tls_cert',
      'tls_key',
      'tls_servername',
      'tls_reject_unauthorized',
    ])
      assert.ok(KNOWN_KEYS['milter.NAME']?.includes(k), k)
    assert.ok(KNOWN_KEYS['main']?.includes('balance'))
    assert.ok(KNOWN_KEYS['main']?.includes('tls_ca'))
    assert.ok(!KNOWN_KEYS['main']?.includes('tls_servername'))
    const cfg = parseMilterConfig({
      main: { milters: 'm' },
      'milter.m': { socket: 'a:1', balance: 'failover', tls: 'false' },
    })
    assert.deepEqual(cfg.warnings, [])
  })
})

describe('config: TLS to a milter', () => {
  let dir: string
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-tls-config-'))
    fs.writeFileSync(path.join(dir, 'ca.pem'), CERT)
    fs.writeFileSync(path.join(dir, 'cert.pem'), CERT)
    fs.writeFileSync(path.join(dir, 'key.pem'), KEY)
    fs.writeFileSync(path.join(dir, 'junk.pem'), 'not a certificate\n')
  })
  after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const f = (n: string): string => path.join(dir, n)

  it('tls = true reads the PEM files at load', () => {
    const d = milter({
      socket: 'inet:1@127.0.0.1, milter.example:2',
      tls: 'true',
      tls_ca: f('ca.pem'),
      tls_cert: f('cert.pem'),
      tls_key: f('key.pem'),
      tls_servername: 'milter.example.net',
    })
    assert.deepEqual(d.tls, {
      rejectUnauthorized: true,
      ca: CERT,
      cert: CERT,
      key: KEY,
      servername: 'milter.example.net',
    })
  })

  it('defaults: certificate checked, Node CAs, no client certificate; [main] gives defaults', () => {
    assert.deepEqual(milter({ socket: 'a:1', tls: 'yes' }).tls, { rejectUnauthorized: true })
    assert.deepEqual(
      milter(
        { socket: 'a:1' },
        { tls: 'true', tls_ca: f('ca.pem'), tls_reject_unauthorized: 'false' },
      ).tls,
      { rejectUnauthorized: false, ca: CERT },
    )
  })

  it('errors name file, section, key and path', () => {
    assert.throws(
      () => milter({ socket: 'a:1', tls: 'true', tls_ca: f('missing.pem') }),
      /milter\.ini \[milter\.m\] tls_ca: cannot read .*missing\.pem: ENOENT/,
    )
    assert.throws(
      () => milter({ socket: 'a:1', tls: 'true', tls_ca: f('junk.pem') }),
      /\[milter\.m\] tls_ca: .*junk\.pem holds no PEM certificate/,
    )
    assert.throws(
      () => milter({ socket: 'a:1', tls: 'true', tls_key: f('cert.pem'), tls_cert: f('cert.pem') }),
      /\[milter\.m\] tls_key: .*cert\.pem holds no PEM private key/,
    )
    assert.throws(
      () => milter({ socket: 'a:1' }, { tls: 'true', tls_ca: f('nope.pem') }),
      /milter\.ini \[main\] tls_ca: cannot read/,
    )
  })

  it('a client certificate needs its key and the other way round', () => {
    assert.throws(
      () => milter({ socket: 'a:1', tls: 'true', tls_cert: f('cert.pem') }),
      /\[milter\.m\] tls_key: is missing: tls_cert and tls_key go together/,
    )
  })

  it('tls keys without tls = true, unix endpoints with TLS, an IP as servername: errors', () => {
    assert.throws(
      () => milter({ socket: 'a:1', tls_ca: f('ca.pem') }),
      /\[milter\.m\] tls_ca: is set but tls is not true/,
    )
    assert.throws(
      () => milter({ socket: 'a:1, unix:/run/m.sock', tls: 'true' }),
      /\[milter\.m\] tls: TLS needs TCP endpoints, not "unix:\/run\/m\.sock"/,
    )
    assert.throws(
      () => milter({ socket: 'a:1', tls: 'true', tls_servername: '10.0.0.1' }),
      /tls_servername: must be a host name, not an IP address/,
    )
  })
})
