/**
 * parseMilterConfig and findListener: defaults, overrides, macro lists,
 * listeners, recipient maps, and error messages that name the file, the
 * section and the key. Also the shipped config/milter.ini, read through
 * haraka-config exactly as Haraka reads it.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { DEFAULT_LIMITS } from '../../../lib/session/limits'
import { DEFAULT_MACROS } from '../../../lib/session/macros'
import {
  describeListeners,
  findListener,
  parseMilterConfig,
  type Ini,
  type MilterConfig,
} from '../../../lib/config'
import { keyDef, sectionKind } from '../../../lib/config-keys'
import { MilterConfigError } from '../../../lib/errors'
import { MacroStage } from '../../../lib/protocol/constants'
import { REPO_ROOT } from '../../helpers/paths'

const FILE = '/etc/haraka/config/milter.ini'

/** One milter named `a` plus whatever else the test needs. */
function withA(extra: Ini = {}, main: Record<string, unknown> = {}): Ini {
  return {
    main: { milters: 'a', ...main },
    'milter.a': { socket: 'inet:8891@127.0.0.1' },
    ...extra,
  }
}

function milter(cfg: MilterConfig, name: string) {
  const m = cfg.milters.get(name)
  assert.ok(m, `milter ${name} is configured`)
  return m
}

/** Asserts parseMilterConfig throws a MilterConfigError naming file, section and key. */
function rejects(ini: Ini, section: string, key: string, detail?: RegExp): void {
  let caught: unknown
  try {
    parseMilterConfig(ini, FILE)
  } catch (e) {
    caught = e
  }
  assert.ok(
    caught instanceof MilterConfigError,
    `expected a MilterConfigError, got ${String(caught)}`,
  )
  assert.equal(caught.code, 'MILTER_ERR_CONFIG')
  const prefix = `${FILE} [${section}] ${key}: `
  assert.ok(
    caught.message.startsWith(prefix),
    `message ${JSON.stringify(caught.message)} should start with ${JSON.stringify(prefix)}`,
  )
  if (detail) assert.match(caught.message, detail)
}

describe('config: parseMilterConfig', () => {
  describe('defaults', () => {
    it('an empty file: no milters, every global default', () => {
      const cfg = parseMilterConfig({})
      assert.equal(cfg.milters.size, 0)
      assert.deepEqual(cfg.defaultMilters, [])
      assert.deepEqual(cfg.listeners, [])
      assert.equal(cfg.defaultSourceChannel, 'tcp_local')
      assert.equal(cfg.replyCode, 'milter')
      assert.equal(cfg.discard, 'drop')
      assert.deepEqual(cfg.quarantine, {
        action: 'hold',
        dir: '/var/spool/haraka/milter-quarantine',
        tagHeader: 'X-Milter-Quarantine',
        holdReply: 'Message accepted',
      })
      assert.equal(cfg.reuseConnections, false)
      assert.equal(cfg.daemonName, 'Haraka')
      assert.equal(cfg.mixedRecipients, 'defer')
      assert.equal(cfg.destinationChannel.local, 'local')
      assert.equal(cfg.destinationChannel.relay, 'relay')
      assert.equal(cfg.destinationChannel.domains.size, 0)
      assert.equal(cfg.optin.default, undefined)
      assert.equal(cfg.optin.addresses.size, 0)
      assert.equal(cfg.optin.domains.size, 0)
    })

    it('a milter with only a socket: timeouts 10/30/300/300 s, protocol 6, tempfail, message scope, breaker 3/5/60, default macros', () => {
      const cfg = parseMilterConfig(withA())
      const a = milter(cfg, 'a')
      assert.equal(a.name, 'a')
      assert.equal(a.socketText, 'inet:8891@127.0.0.1')
      assert.deepEqual(a.endpoints[0]?.spec, {
        kind: 'tcp',
        host: '127.0.0.1',
        port: 8891,
        family: 4,
      })
      assert.equal(a.protocol, 6)
      assert.equal(a.defaultAction, 'tempfail')
      assert.deepEqual(a.timeouts, {
        connectMs: 10_000,
        commandMs: 30_000,
        contentMs: 300_000,
        eomMs: 300_000,
      })
      assert.equal(a.failureScope, 'message')
      assert.deepEqual(a.breaker, { failures: 3, backoffMs: 5000, backoffMaxMs: 60_000 })
      assert.deepEqual([...a.macros], [...DEFAULT_MACROS])
      assert.deepEqual(a.destinationChannels, [])
      assert.deepEqual(a.optin, [])
      assert.deepEqual(cfg.defaultMilters, ['a'])
    })

    it("the default macro lists are Postfix's plus the client macros and the channels", () => {
      const connect = DEFAULT_MACROS.get(MacroStage.CONNECT) ?? []
      for (const m of ['j', '{daemon_name}', '_', '{client_addr}', '{source_channel}'])
        assert.ok(connect.includes(m), `connect sends ${m}`)
      const rcpt = DEFAULT_MACROS.get(MacroStage.ENVRCPT) ?? []
      for (const m of ['i', '{rcpt_addr}', '{destination_channel}', '{optin}'])
        assert.ok(rcpt.includes(m), `rcpt sends ${m}`)
      assert.deepEqual(DEFAULT_MACROS.get(MacroStage.EOM), ['i', '{msg_id}'])
    })

    it('milters keep the listed order; default_milters defaults to all of them', () => {
      const cfg = parseMilterConfig({
        main: { milters: 'zeta, alpha mid' },
        'milter.zeta': { socket: 'unix:/run/z.sock' },
        'milter.alpha': { socket: '127.0.0.1:1' },
        'milter.mid': { socket: '[::1]:2' },
      })
      assert.deepEqual([...cfg.milters.keys()], ['zeta', 'alpha', 'mid'])
      assert.deepEqual(cfg.defaultMilters, ['zeta', 'alpha', 'mid'])
      assert.deepEqual(milter(cfg, 'zeta').endpoints[0]?.spec, {
        kind: 'unix',
        path: '/run/z.sock',
      })
      assert.deepEqual(milter(cfg, 'mid').endpoints[0]?.spec, {
        kind: 'tcp',
        host: '::1',
        port: 2,
        family: 6,
      })
    })
  })

  describe('overrides', () => {
    it('[main] sets the defaults of every milter; [milter.NAME] overrides each key', () => {
      const cfg = parseMilterConfig({
        main: {
          milters: 'a b',
          protocol: 4,
          default_action: 'accept',
          connect_timeout: 2,
          command_timeout: '5',
          content_timeout: '60s',
          eom_timeout: 120,
          failure_scope: 'session',
          breaker_failures: 5,
          breaker_backoff: 2,
          breaker_backoff_max: 30,
        },
        'milter.a': { socket: 'inet:1@127.0.0.1' },
        'milter.b': {
          socket: 'inet:2@127.0.0.1',
          protocol: '2',
          default_action: 'Shutdown',
          connect_timeout: 0.5,
          command_timeout: '1.25',
          content_timeout: 3600,
          eom_timeout: '600s',
          failure_scope: 'Message',
          breaker_failures: 0,
        },
      })
      const a = milter(cfg, 'a')
      assert.equal(a.protocol, 4)
      assert.equal(a.defaultAction, 'accept')
      assert.deepEqual(a.timeouts, {
        connectMs: 2000,
        commandMs: 5000,
        contentMs: 60_000,
        eomMs: 120_000,
      })
      assert.equal(a.failureScope, 'session')
      assert.deepEqual(a.breaker, { failures: 5, backoffMs: 2000, backoffMaxMs: 30_000 })
      const b = milter(cfg, 'b')
      assert.equal(b.protocol, 2)
      assert.equal(b.defaultAction, 'shutdown')
      assert.deepEqual(b.timeouts, {
        connectMs: 500,
        commandMs: 1250,
        contentMs: 3_600_000,
        eomMs: 600_000,
      })
      assert.equal(b.failureScope, 'message')
      assert.deepEqual(b.breaker, { failures: 0, backoffMs: 2000, backoffMaxMs: 30_000 })
    })

    it('bad failure_scope, eom_timeout and breaker values name the key', () => {
      const bad: Array<[Record<string, unknown>, RegExp]> = [
        [
          { failure_scope: 'forever' },
          /\[milter\.a\] failure_scope: must be one of message, session/,
        ],
        [{ eom_timeout: 0 }, /\[milter\.a\] eom_timeout: must be a number of seconds/],
        [{ breaker_failures: -1 }, /\[milter\.a\] breaker_failures: must be an integer/],
        [
          { breaker_backoff: 10, breaker_backoff_max: 5 },
          /\[milter\.a\] breaker_backoff_max: must not be less than breaker_backoff/,
        ],
      ]
      for (const [keys, re] of bad) {
        assert.throws(
          () => parseMilterConfig(withA({ 'milter.a': { socket: '127.0.0.1:1', ...keys } })),
          re,
        )
      }
    })

    it('mode and skip_* conditions: parsed, with [main] as the default', () => {
      const cfg = parseMilterConfig({
        main: { milters: 'a b c', skip_authenticated: 'yes', skip_larger_than: '10M' },
        'milter.a': {
          socket: '127.0.0.1:1',
          mode: 'Shadow',
          skip_private_clients: 'true',
          skip_clients: '192.0.2.0/24, 2001:db8::/32 198.51.100.7',
          skip_sender_domains: 'Example.ORG. .lists.example.net',
          skip_recipient_domains: 'internal.example',
          skip_larger_than: '512K',
        },
        'milter.b': { socket: '127.0.0.1:2', skip_authenticated: 'no' },
        'milter.c': { socket: '127.0.0.1:3', mode: 'enforce' },
      })
      const a = milter(cfg, 'a')
      assert.equal(a.mode, 'shadow')
      assert.ok(a.skip)
      assert.equal(a.skip.authenticated, true, 'from [main]')
      assert.equal(a.skip.relaying, false)
      assert.equal(a.skip.privateClients, true)
      assert.deepEqual(
        a.skip.clients.map((n) => n.text),
        ['192.0.2.0/24', '2001:db8::/32', '198.51.100.7'],
      )
      assert.deepEqual(a.skip.senderDomains, ['example.org', '.lists.example.net'])
      assert.deepEqual(a.skip.recipientDomains, ['internal.example'])
      assert.equal(a.skip.largerThan, 512 * 1024)
      const b = milter(cfg, 'b')
      assert.equal(b.mode, undefined)
      assert.equal(b.skip?.authenticated, false)
      assert.equal(b.skip?.largerThan, 10 * 1024 * 1024, 'from [main]')
      assert.equal(milter(cfg, 'c').mode, 'enforce')
      const none = parseMilterConfig(withA({ 'milter.a': { socket: '127.0.0.1:1' } }))
      assert.equal(milter(none, 'a').skip, undefined, 'no condition: nothing to check per message')
    })

    it('bad mode and skip_* values name the key', () => {
      const bad: Array<[Record<string, unknown>, RegExp]> = [
        [{ mode: 'monitor' }, /\[milter\.a\] mode: must be one of enforce, shadow/],
        [{ skip_clients: '192.0.2.0/33' }, /skip_clients: "192\.0\.2\.0\/33" is not an address/],
        [{ skip_clients: 'mail.example' }, /skip_clients: "mail\.example" is not an address/],
        [{ skip_larger_than: '10X' }, /skip_larger_than: must be a size in bytes/],
        [{ skip_larger_than: '0' }, /skip_larger_than: must be a size in bytes/],
        [
          { skip_sender_domains: 'a@b.example' },
          /skip_sender_domains: "a@b\.example" is not a domain/,
        ],
        [{ skip_relaying: 'maybe' }, /skip_relaying: must be true or false/],
      ]
      for (const [keys, re] of bad) {
        assert.throws(
          () => parseMilterConfig(withA({ 'milter.a': { socket: '127.0.0.1:1', ...keys } })),
          re,
        )
      }
    })

    it('every default_action is accepted', () => {
      for (const action of ['accept', 'tempfail', 'reject', 'quarantine', 'shutdown']) {
        const cfg = parseMilterConfig(
          withA({ 'milter.a': { socket: '127.0.0.1:1', default_action: action } }),
        )
        assert.equal(milter(cfg, 'a').defaultAction, action)
      }
    })

    it('debug: 0 by default, [main] for every milter, [milter.NAME] overrides; 0 to 2 only', () => {
      assert.equal(milter(parseMilterConfig(withA()), 'a').debug, 0)
      const cfg = parseMilterConfig({
        main: { milters: 'a b', debug: '1' },
        'milter.a': { socket: 'inet:1@127.0.0.1' },
        'milter.b': { socket: 'inet:2@127.0.0.1', debug: 2 },
      })
      assert.equal(milter(cfg, 'a').debug, 1)
      assert.equal(milter(cfg, 'b').debug, 2)
      for (const bad of ['3', '-1', 'yes', '1.5']) {
        rejects(withA({ 'milter.a': { socket: '127.0.0.1:1', debug: bad } }), 'milter.a', 'debug')
        rejects(withA({}, { debug: bad }), 'main', 'debug', /must be an integer from 0 to 2/)
      }
    })

    it('global options', () => {
      const cfg = parseMilterConfig({
        main: {
          default_milters: 'b',
          milters: 'a,b',
          source_channel: 'tcp_in',
          reply_code: 'enhanced_only',
          discard: 'quarantine',
          reuse_connections: 'yes',
          daemon_name: 'mx1',
          mixed_recipients: 'union',
        },
        'milter.a': { socket: '127.0.0.1:1' },
        'milter.b': { socket: '127.0.0.1:2' },
        quarantine: {
          action: 'tag',
          dir: '/tmp/q',
          tag_header: 'X-Held',
          hold_reply: 'Message Queued',
        },
      })
      assert.deepEqual(cfg.defaultMilters, ['b'])
      assert.equal(cfg.defaultSourceChannel, 'tcp_in')
      assert.equal(cfg.replyCode, 'enhanced_only')
      assert.equal(cfg.discard, 'quarantine')
      assert.equal(cfg.reuseConnections, true)
      assert.equal(cfg.daemonName, 'mx1')
      assert.equal(cfg.mixedRecipients, 'union')
      assert.deepEqual(cfg.quarantine, {
        action: 'tag',
        dir: '/tmp/q',
        tagHeader: 'X-Held',
        holdReply: 'Message Queued',
      })
    })

    it('[quarantine] hold_reply: one line of printable ASCII', () => {
      for (const bad of ['held\r\n250 ok', 'h\u00e9ld', 'x'.repeat(401)])
        assert.throws(
          () => parseMilterConfig({ quarantine: { hold_reply: bad } }),
          /\[quarantine\] hold_reply: must be one line of printable ASCII/,
        )
    })

    it('reuse_connections takes booleans (haraka-config booleans option) and words', () => {
      for (const [v, want] of [
        [true, true],
        [false, false],
        ['on', true],
        ['0', false],
        ['disabled', false],
      ] as const) {
        assert.equal(parseMilterConfig({ main: { reuse_connections: v } }).reuseConnections, want)
      }
    })

    it('header_folds: flatten by default, [main] and per-milter keep', () => {
      assert.equal(milter(parseMilterConfig(withA()), 'a').headerFolds, 'flatten')
      const cfg = parseMilterConfig({
        main: { milters: 'a b', header_folds: 'keep' },
        'milter.a': { socket: '127.0.0.1:1' },
        'milter.b': { socket: '127.0.0.1:2', header_folds: 'flatten' },
      })
      assert.equal(milter(cfg, 'a').headerFolds, 'keep')
      assert.equal(milter(cfg, 'b').headerFolds, 'flatten')
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', header_folds: 'fold' } }),
        'milter.a',
        'header_folds',
      )
    })

    it('per-milter destination_channels and optin lists', () => {
      const cfg = parseMilterConfig(
        withA({
          'milter.a': {
            socket: '127.0.0.1:1',
            destination_channels: 'local, relay',
            optin: 'spam',
          },
        }),
      )
      assert.deepEqual(milter(cfg, 'a').destinationChannels, ['local', 'relay'])
      assert.deepEqual(milter(cfg, 'a').optin, ['spam'])
    })
  })

  describe('macro lists', () => {
    it('[macros] replaces a stage for every milter (names canonicalised); others keep defaults', () => {
      const cfg = parseMilterConfig(
        withA(
          {
            'milter.b': { socket: '127.0.0.1:2' },
            macros: { connect: 'j client_addr {daemon_name}', eom: 'i' },
          },
          { milters: 'a b' },
        ),
      )
      for (const name of ['a', 'b']) {
        const m = milter(cfg, name).macros
        assert.deepEqual(m.get(MacroStage.CONNECT), ['j', '{client_addr}', '{daemon_name}'])
        assert.deepEqual(m.get(MacroStage.EOM), ['i'])
        assert.deepEqual(m.get(MacroStage.HELO), DEFAULT_MACROS.get(MacroStage.HELO))
        assert.deepEqual(m.get(MacroStage.ENVRCPT), DEFAULT_MACROS.get(MacroStage.ENVRCPT))
      }
    })

    it('macros.STAGE in [milter.NAME] overrides the stage for that milter only', () => {
      const cfg = parseMilterConfig({
        main: { milters: 'a b' },
        macros: { connect: 'j' },
        'milter.a': {
          socket: '127.0.0.1:1',
          'macros.connect': '{daemon_name} _',
          'macros.rcpt': '{rcpt_addr}',
        },
        'milter.b': { socket: '127.0.0.1:2' },
      })
      const a = milter(cfg, 'a').macros
      assert.deepEqual(a.get(MacroStage.CONNECT), ['{daemon_name}', '_'])
      assert.deepEqual(a.get(MacroStage.ENVRCPT), ['{rcpt_addr}'])
      assert.deepEqual(a.get(MacroStage.ENVFROM), DEFAULT_MACROS.get(MacroStage.ENVFROM))
      const b = milter(cfg, 'b').macros
      assert.deepEqual(b.get(MacroStage.CONNECT), ['j'])
      assert.deepEqual(b.get(MacroStage.ENVRCPT), DEFAULT_MACROS.get(MacroStage.ENVRCPT))
    })

    it('every stage key maps to its stage', () => {
      const cfg = parseMilterConfig({
        macros: {
          connect: 'a1',
          helo: 'a2',
          mail: 'a3',
          rcpt: 'a4',
          data: 'a5',
          eoh: 'a6',
          eom: 'a7',
        },
        main: { milters: 'a' },
        'milter.a': { socket: '127.0.0.1:1' },
      })
      const m = milter(cfg, 'a').macros
      assert.deepEqual(m.get(MacroStage.CONNECT), ['{a1}'])
      assert.deepEqual(m.get(MacroStage.HELO), ['{a2}'])
      assert.deepEqual(m.get(MacroStage.ENVFROM), ['{a3}'])
      assert.deepEqual(m.get(MacroStage.ENVRCPT), ['{a4}'])
      assert.deepEqual(m.get(MacroStage.DATA), ['{a5}'])
      assert.deepEqual(m.get(MacroStage.EOH), ['{a6}'])
      assert.deepEqual(m.get(MacroStage.EOM), ['{a7}'])
    })

    it('an invalid macro name names the section and key', () => {
      rejects(withA({ macros: { helo: '{tls_version} bad-name' } }), 'macros', 'helo', /bad-name/)
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', 'macros.mail': 'i {mail!addr}' } }),
        'milter.a',
        'macros.mail',
      )
    })

    it('a macro name with unbalanced braces is invalid', () => {
      // `{a` would otherwise be canonicalised to the name `{{a}`.
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', 'macros.mail': 'i {mail_addr' } }),
        'milter.a',
        'macros.mail',
        /"\{mail_addr"/,
      )
      rejects(withA({ macros: { eom: 'i}' } }), 'macros', 'eom', /"i\}"/)
    })
  })

  describe('listeners', () => {
    it('IPv4, bracketed IPv6 and port-only addresses; source_channel defaults to the name', () => {
      const cfg = parseMilterConfig(
        withA({
          'listener.submission': {
            listen: '127.0.0.1:2525, [::1]:2525',
            milters: 'a',
            source_channel: 'tcp_auth',
          },
          'listener.smtp': { listen: ':587' },
        }),
      )
      assert.deepEqual(cfg.listeners, [
        {
          name: 'submission',
          listen: [
            { ip: '127.0.0.1', port: 2525 },
            { ip: '::1', port: 2525 },
          ],
          milters: ['a'],
          miltersFrom: 'listener',
          sourceChannel: 'tcp_auth',
        },
        {
          name: 'smtp',
          listen: [{ ip: undefined, port: 587 }],
          milters: ['a'],
          miltersFrom: 'main',
          sourceChannel: 'smtp',
        },
      ])
    })

    it('a section without `milters` runs [main] default_milters; only an empty `milters =` runs none', () => {
      const ini = {
        main: { milters: 'a, b', default_milters: 'b' },
        'milter.a': { socket: 'inet:1@127.0.0.1' },
        'milter.b': { socket: 'inet:2@127.0.0.1' },
        // added only to set source_channel: must not switch filtering off
        'listener.sub': { listen: ':587', source_channel: 'tcp_auth' },
        'listener.release': { listen: '127.0.0.1:2526', milters: '' },
        'listener.both': { listen: ':2525, [::1]:2525', milters: 'a b' },
      }
      const cfg = parseMilterConfig(ini)
      const byName = Object.fromEntries(cfg.listeners.map((l) => [l.name, l]))
      assert.deepEqual(byName['sub']?.milters, ['b'])
      assert.equal(byName['sub']?.miltersFrom, 'main')
      assert.deepEqual(byName['release']?.milters, [])
      assert.equal(byName['release']?.miltersFrom, 'listener')
      assert.deepEqual(byName['both']?.milters, ['a', 'b'])
      assert.deepEqual(describeListeners(cfg), [
        'listener sub (*:587): milters b (inherited from [main]); source_channel tcp_auth',
        'listener release (127.0.0.1:2526): no milters (unfiltered); source_channel release',
        'listener both (*:2525, [::1]:2525): milters a, b; source_channel both',
        'other listeners: milters b; source_channel tcp_local',
      ])
    })

    it('`*:PORT` means any address, like `:PORT`', () => {
      const cfg = parseMilterConfig({ 'listener.x': { listen: '*:25 [2001:db8::1]:26' } })
      assert.deepEqual(cfg.listeners[0]?.listen, [
        { ip: undefined, port: 25 },
        { ip: '2001:db8::1', port: 26 },
      ])
    })
  })

  describe('recipient maps', () => {
    it('[optin]: default, exact addresses and domains (keys lower-cased)', () => {
      const cfg = parseMilterConfig({
        optin: { default: 'all', 'User@Example.COM': 'spam', 'Example.org': 'virus' },
      })
      assert.equal(cfg.optin.default, 'all')
      assert.deepEqual([...cfg.optin.addresses], [['user@example.com', 'spam']])
      assert.deepEqual([...cfg.optin.domains], [['example.org', 'virus']])
    })

    it('[destination_channel]: local, relay and per-domain entries', () => {
      const cfg = parseMilterConfig({
        destination_channel: { local: 'lmtp', relay: 'outbound', 'Example.NET': 'tcp_example' },
      })
      assert.equal(cfg.destinationChannel.local, 'lmtp')
      assert.equal(cfg.destinationChannel.relay, 'outbound')
      assert.deepEqual([...cfg.destinationChannel.domains], [['example.net', 'tcp_example']])
    })
  })

  describe('errors name the file, section and key', () => {
    it('missing socket', () => {
      rejects(withA({ 'milter.a': { protocol: 6 } }), 'milter.a', 'socket', /required/)
      rejects(withA({ 'milter.a': { socket: '' } }), 'milter.a', 'socket', /required/)
    })

    it('bad socket', () => {
      rejects(withA({ 'milter.a': { socket: 'tcp://x' } }), 'milter.a', 'socket', /tcp:\/\/x/)
      rejects(withA({ 'milter.a': { socket: 'inet:99999@127.0.0.1' } }), 'milter.a', 'socket')
      rejects(withA({ 'milter.a': { socket: 'unix:relative/path' } }), 'milter.a', 'socket')
    })

    it('unknown default_action, in [main] and in a milter section', () => {
      rejects(withA({}, { default_action: 'bounce' }), 'main', 'default_action', /"bounce"/)
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', default_action: 'ignore' } }),
        'milter.a',
        'default_action',
        /accept, tempfail, reject, quarantine, shutdown/,
      )
    })

    it('timeouts: 0, negative, not a number, over an hour', () => {
      rejects(withA({}, { connect_timeout: 0 }), 'main', 'connect_timeout', /"0"/)
      rejects(withA({}, { command_timeout: 'abc' }), 'main', 'command_timeout', /"abc"/)
      rejects(withA({}, { content_timeout: -1 }), 'main', 'content_timeout')
      for (const key of ['connect_timeout', 'command_timeout', 'content_timeout']) {
        rejects(withA({ 'milter.a': { socket: '127.0.0.1:1', [key]: 0 } }), 'milter.a', key)
        rejects(withA({ 'milter.a': { socket: '127.0.0.1:1', [key]: 'abc' } }), 'milter.a', key)
        rejects(withA({ 'milter.a': { socket: '127.0.0.1:1', [key]: 3601 } }), 'milter.a', key)
      }
    })

    it('protocol outside 2..6 or not an integer', () => {
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', protocol: 7 } }),
        'milter.a',
        'protocol',
        /2 to 6/,
      )
      rejects(withA({ 'milter.a': { socket: '127.0.0.1:1', protocol: 1 } }), 'milter.a', 'protocol')
      rejects(
        withA({ 'milter.a': { socket: '127.0.0.1:1', protocol: '6.5' } }),
        'milter.a',
        'protocol',
      )
      rejects(withA({}, { protocol: 7 }), 'main', 'protocol')
    })

    it('a milter listed without a section', () => {
      rejects(withA({}, { milters: 'a, b' }), 'main', 'milters', /"b".*\[milter\.b\]/)
    })

    it('a section not listed in milters is not an error: a warning, and the milter is unused', () => {
      // (test/unit/config/warnings.test.ts has the warnings)
      const cfg = parseMilterConfig(withA({ 'milter.extra': { socket: 'not a socket' } }), FILE)
      assert.deepEqual([...cfg.milters.keys()], ['a'])
      assert.deepEqual(cfg.warnings, [
        `${FILE} [milter.extra]: not listed in [main] milters, so this milter is not used`,
      ])
    })

    it('a milter listed twice', () => {
      rejects(withA({}, { milters: 'a, a' }), 'main', 'milters', /"a" twice/)
    })

    it('an invalid milter name', () => {
      rejects({ main: { milters: 'a/b' } }, 'main', 'milters', /"a\/b"/)
    })

    it('a listener naming an unknown milter', () => {
      rejects(
        withA({ 'listener.sub': { listen: ':587', milters: 'a, nosuch' } }),
        'listener.sub',
        'milters',
        /"nosuch"/,
      )
    })

    it('default_milters naming an unknown milter', () => {
      // A typo here would silently run no milter on every unlisted listener.
      rejects(withA({}, { default_milters: 'a, nosuch' }), 'main', 'default_milters', /"nosuch"/)
    })

    it('bad listen addresses', () => {
      for (const listen of [
        'localhost',
        '127.0.0.1',
        '127.0.0.1:',
        ':0',
        ':65536',
        '::1:25',
        '[::1:25',
      ]) {
        rejects(withA({ 'listener.sub': { listen, milters: 'a' } }), 'listener.sub', 'listen')
      }
      rejects(withA({ 'listener.sub': { milters: 'a' } }), 'listener.sub', 'listen', /required/)
    })

    it('other enumerations and booleans', () => {
      rejects({ main: { reply_code: 'smtp' } }, 'main', 'reply_code')
      rejects({ main: { discard: 'keep' } }, 'main', 'discard')
      rejects({ main: { mixed_recipients: 'split' } }, 'main', 'mixed_recipients')
      rejects({ main: { reuse_connections: 'maybe' } }, 'main', 'reuse_connections')
      rejects({ quarantine: { action: 'delete' } }, 'quarantine', 'action')
    })

    it('the file name defaults to milter.ini', () => {
      assert.throws(
        () => parseMilterConfig(withA({ 'milter.a': {} })),
        (e: unknown) =>
          e instanceof MilterConfigError && e.message.startsWith('milter.ini [milter.a] socket: '),
      )
    })
  })
})

describe('config: the max_* limits', () => {
  it('defaults, [main] defaults for every milter, and per-milter overrides', () => {
    const none = parseMilterConfig(withA())
    assert.deepEqual(milter(none, 'a').limits, DEFAULT_LIMITS)
    assert.equal(DEFAULT_LIMITS.maxReplacementBody, undefined, "default: Haraka's max size")
    const cfg = parseMilterConfig({
      main: { milters: 'a b', max_modifications: '500', max_replacement_body: '10M' },
      'milter.a': {
        socket: '127.0.0.1:1',
        max_added_headers: '20',
        max_header_bytes: '64K',
        max_macro_names: '8',
        max_macro_names_total: '30',
      },
      'milter.b': { socket: '127.0.0.1:2', max_modifications: '7' },
    })
    assert.deepEqual(milter(cfg, 'a').limits, {
      maxModifications: 500,
      maxAddedHeaders: 20,
      maxHeaderBytes: 64 * 1024,
      maxReplacementBody: 10 * 1024 * 1024,
      maxMacroNames: 8,
      maxMacroNamesTotal: 30,
    })
    assert.equal(milter(cfg, 'b').limits?.maxModifications, 7)
    assert.equal(milter(cfg, 'b').limits?.maxReplacementBody, 10 * 1024 * 1024, 'from [main]')
    assert.deepEqual(cfg.warnings, [], 'every key is known')
  })

  it('bad values name the key', () => {
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ max_modifications: '0' }, /max_modifications: must be an integer from 1/],
      [{ max_added_headers: 'many' }, /max_added_headers: must be an integer/],
      [{ max_header_bytes: '1X' }, /max_header_bytes: must be a size in bytes/],
      [{ max_replacement_body: '0' }, /max_replacement_body: must be a size in bytes/],
      [{ max_macro_names: '-1' }, /max_macro_names: must be an integer/],
    ]
    for (const [keys, re] of bad) {
      assert.throws(
        () => parseMilterConfig(withA({ 'milter.a': { socket: '127.0.0.1:1', ...keys } })),
        re,
      )
    }
  })
})

describe('config: findListener', () => {
  const cfg = parseMilterConfig(
    withA({
      // The port-only listener comes first: the exact address must still win.
      'listener.any': { listen: ':25, :587', milters: 'a' },
      'listener.exact': { listen: '192.0.2.1:25', milters: '' },
      'listener.v6': { listen: '[2001:DB8::1]:25' },
      'listener.mapped': { listen: '[::ffff:198.51.100.7]:2525' },
    }),
  )

  it('an exact IP beats a port-only listener, whatever the order', () => {
    assert.equal(findListener(cfg, '192.0.2.1', 25)?.name, 'exact')
    assert.equal(findListener(cfg, '192.0.2.2', 25)?.name, 'any')
    assert.equal(findListener(cfg, '192.0.2.1', 587)?.name, 'any')
  })

  it('no listener for an unlisted port', () => {
    assert.equal(findListener(cfg, '192.0.2.1', 2526), undefined)
    assert.equal(findListener(cfg, '', 0), undefined)
  })

  it('IPv6 addresses compare case-insensitively', () => {
    assert.equal(findListener(cfg, '2001:db8::1', 25)?.name, 'v6')
  })

  it('IPv4-mapped IPv6 matches the IPv4 address, on either side', () => {
    assert.equal(findListener(cfg, '::ffff:192.0.2.1', 25)?.name, 'exact')
    assert.equal(findListener(cfg, '::FFFF:192.0.2.1', 25)?.name, 'exact')
    assert.equal(findListener(cfg, '198.51.100.7', 2525)?.name, 'mapped')
  })

  it('an exact listener may run no milters at all', () => {
    assert.deepEqual(findListener(cfg, '192.0.2.1', 25)?.milters, [])
  })
})

describe('config: the shipped config/milter.ini', () => {
  interface HarakaConfig {
    module_config(defaultsDir: string, overridesDir?: string): HarakaConfig
    get(name: string, opts?: unknown): unknown
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const harakaConfig = require('haraka-config') as HarakaConfig
  /** The ini reader haraka-config uses for `.ini` files. */
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const iniReader = require('haraka-config/lib/readers/ini') as {
    parseIni(name: string, options: unknown, data: string): unknown
  }

  it('parses with haraka-config to the defaults, without error', () => {
    // The plugin reads it like this (plugins/milter.ts load_milter_ini).
    const ini = harakaConfig
      .module_config(REPO_ROOT)
      .get('milter.ini', { booleans: ['main.reuse_connections'] }) as Ini
    assert.ok(ini['main'], 'the file has a [main] section')
    const cfg = parseMilterConfig(ini, 'milter.ini')
    assert.deepEqual(cfg, parseMilterConfig({}))
    assert.equal(cfg.milters.size, 0)
    assert.equal(cfg.reuseConnections, false)
  })

  it('an empty `milters =` on a listener means no milters there, not the defaults (the quarantine release listener)', () => {
    const ini = iniReader.parseIni(
      'milter.ini',
      {},
      [
        '[main]',
        'milters = a',
        '[milter.a]',
        'socket = inet:8891@127.0.0.1',
        '[listener.release]',
        'listen = 127.0.0.1:2526',
        'milters =',
        '',
      ].join('\n'),
    ) as Ini
    const cfg = parseMilterConfig(ini)
    assert.deepEqual(cfg.defaultMilters, ['a'])
    assert.deepEqual(findListener(cfg, '127.0.0.1', 2526)?.milters, [])
    assert.deepEqual(cfg.warnings, [])
  })

  it('every commented-out default agrees with the key table (lib/config-keys.ts)', () => {
    // `;key = value` under a real [section] is the default; under a commented-out
    // `;[milter.NAME]` or `;[listener.NAME]` a key without a default may show an example.
    const text = fs.readFileSync(path.join(REPO_ROOT, 'config', 'milter.ini'), 'utf8')
    let section = 'main'
    let example = false
    let checked = 0
    for (const line of text.split('\n')) {
      const head = /^(;?)\[([^\]]+)\]\s*$/.exec(line)
      if (head) {
        example = head[1] === ';'
        section = head[2] ?? ''
        continue
      }
      const m = /^;([a-z_.]+) *= *(.*)$/.exec(line)
      if (!m) continue
      const [, key = '', value = ''] = m
      const kind = sectionKind(section)
      assert.ok(kind, `[${section}] is a known section`)
      const def = keyDef(kind, key)
      assert.ok(def, `[${section}] ${key} is in the key table`)
      if (def.default !== '') assert.equal(value, def.default, `[${section}] ${key}`)
      else if (!example) assert.match(value, /^(?:|\(.*\))$/, `[${section}] ${key} has no default`)
      checked++
    }
    assert.ok(checked > 50, `${checked} keys checked`)
  })

  it('every commented-out example, uncommented as a user would, is valid too', () => {
    // haraka-config's ini reader keeps everything after `=`: there are no inline `;` comments.
    const text = fs.readFileSync(path.join(REPO_ROOT, 'config', 'milter.ini'), 'utf8')
    const uncommented = text
      .split('\n')
      .map((l) => l.replace(/^;(?=\[|[a-z_.]+ *=)/, ''))
      .map((l) => l.replace(/\(all of milters, in order\)/, ''))
      .join('\n')
      .replace(/^milters =[ \t]*$/m, 'milters = opendkim')
    const ini = iniReader.parseIni('milter.ini', {}, uncommented) as Ini
    const cfg = parseMilterConfig(ini)
    const d = milter(cfg, 'opendkim')
    assert.deepEqual(d.endpoints[0]?.spec, {
      kind: 'tcp',
      host: '127.0.0.1',
      port: 8891,
      family: 4,
    })
    assert.equal(d.protocol, 6)
    assert.deepEqual(d.macros.get(MacroStage.CONNECT), ['j', '{client_addr}'])
    assert.deepEqual(cfg.listeners[0]?.listen, [
      { ip: '127.0.0.1', port: 587 },
      { ip: '::1', port: 587 },
    ])
  })
})

describe('config: [metrics]', () => {
  it('absent: no endpoint, no summary', () => {
    assert.deepEqual(parseMilterConfig(withA()).metrics, { summaryIntervalMs: 0 })
  })

  it('a loopback endpoint and a summary period, without warnings', () => {
    const cfg = parseMilterConfig(
      withA({ metrics: { listen: '127.0.0.1:9145', summary_interval: '300' } }),
    )
    assert.deepEqual(cfg.metrics, {
      listen: { host: '127.0.0.1', port: 9145, text: '127.0.0.1:9145' },
      summaryIntervalMs: 300_000,
    })
    assert.deepEqual(cfg.warnings, [])
    const v6 = parseMilterConfig(withA({ metrics: { listen: '[::1]:9145' } }))
    assert.equal(v6.metrics.listen?.host, '::1')
    assert.deepEqual(v6.warnings, [])
  })

  it('a public address is allowed, with a warning; :PORT is every address', () => {
    for (const listen of ['0.0.0.0:9145', ':9145', '192.0.2.1:9145']) {
      const cfg = parseMilterConfig(withA({ metrics: { listen } }), FILE)
      assert.equal(cfg.metrics.listen?.port, 9145)
      assert.equal(cfg.warnings.length, 1)
      assert.match(cfg.warnings[0]!, /\[metrics\] listen: .* is not a loopback address/)
    }
  })

  it('mistakes name the file, section and key', () => {
    rejects(withA({ metrics: { listen: '127.0.0.1' } }), 'metrics', 'listen', /IP:PORT/)
    rejects(
      withA({ metrics: { listen: 'metrics.example:9145' } }),
      'metrics',
      'listen',
      /not an IP/,
    )
    rejects(
      withA({ metrics: { listen: '127.0.0.1:9145, 127.0.0.1:9146' } }),
      'metrics',
      'listen',
      /one address/,
    )
    rejects(withA({ metrics: { summary_interval: '-1' } }), 'metrics', 'summary_interval')
    rejects(withA({ metrics: { summary_interval: 'often' } }), 'metrics', 'summary_interval')
  })

  it('a misspelled key is a warning', () => {
    const cfg = parseMilterConfig(withA({ metrics: { summary_intervall: '5' } }), FILE)
    assert.deepEqual(cfg.warnings, [
      `${FILE} [metrics] summary_intervall: unknown key, ignored (did you mean summary_interval?)`,
    ])
  })
})
