/**
 * milter.ini mistakes that are warnings, not errors: unknown keys and
 * sections (with the nearest known name), and [milter.NAME] sections that
 * `milters =` does not list. They reach Haraka's log through cfg.warnings.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { parseMilterConfig, type Ini } from '../../../lib/config'
import { editDistance, KNOWN_KEYS, lintMilterIni, nearest } from '../../../lib/config-lint'
import { REPO_ROOT } from '../../helpers/paths'

const FILE = '/etc/haraka/config/milter.ini'

function warnings(ini: Ini): string[] {
  return parseMilterConfig(ini, FILE).warnings
}

function withA(extra: Ini = {}, main: Record<string, unknown> = {}): Ini {
  return {
    main: { milters: 'a', ...main },
    'milter.a': { socket: 'inet:8891@127.0.0.1' },
    ...extra,
  }
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const iniReader = require('haraka-config/lib/readers/ini') as {
  parseIni(name: string, options: unknown, data: string): unknown
}

describe('config: warnings', () => {
  it('a correct file has none', () => {
    assert.deepEqual(warnings({}), [])
    assert.deepEqual(
      warnings({
        main: {
          milters: 'a',
          default_action: 'accept',
          connect_timeout: '5',
          reuse_connections: false,
          reply_code: 'milter',
        },
        macros: { connect: 'j {client_addr}' },
        'milter.a': { socket: 'inet:8891@127.0.0.1', 'macros.eom': 'i', optin: 'spam' },
        'listener.submission': { listen: ':587', milters: 'a', source_channel: 'tcp_auth' },
        quarantine: { action: 'tag' },
        destination_channel: { local: 'local', 'partner.example': 'tcp_partner' },
        optin: { default: 'spam', 'alice@example.com': 'spam', 'example.org': 'spam' },
      }),
      [],
    )
  })

  it('a misspelled key names file, section and key and suggests the nearest known key', () => {
    assert.deepEqual(warnings(withA({}, { defualt_action: 'accept' })), [
      `${FILE} [main] defualt_action: unknown key, ignored (did you mean default_action?)`,
    ])
    assert.deepEqual(
      warnings(withA({ 'milter.a': { socket: '127.0.0.1:1', conect_timeout: '5' } })),
      [`${FILE} [milter.a] conect_timeout: unknown key, ignored (did you mean connect_timeout?)`],
    )
    assert.deepEqual(
      warnings(withA({ 'milter.a': { socket: '127.0.0.1:1', 'macros.conect': 'j' } })),
      [`${FILE} [milter.a] macros.conect: unknown key, ignored (did you mean macros.connect?)`],
    )
    assert.deepEqual(warnings({ quarantine: { tag_heder: 'X-Q' } }), [
      `${FILE} [quarantine] tag_heder: unknown key, ignored (did you mean tag_header?)`,
    ])
    assert.deepEqual(warnings({ 'listener.x': { listen: ':25', milter: 'a' }, ...withA() }), [
      `${FILE} [listener.x] milter: unknown key, ignored (did you mean milters?)`,
    ])
  })

  it('the misspelled key does not take effect: the default stays', () => {
    const cfg = parseMilterConfig(withA({}, { defualt_action: 'accept' }), FILE)
    assert.equal(cfg.milters.get('a')?.defaultAction, 'tempfail')
  })

  it('an unknown key far from every known one gets no suggestion', () => {
    assert.deepEqual(warnings(withA({}, { frobnicate: '1' })), [
      `${FILE} [main] frobnicate: unknown key, ignored`,
    ])
  })

  it('a per-milter-only key in [main] is unknown there', () => {
    assert.deepEqual(warnings(withA({}, { socket: '127.0.0.1:1', 'macros.eom': 'i' })), [
      `${FILE} [main] socket: unknown key, ignored`,
      `${FILE} [main] macros.eom: unknown key, ignored`,
    ])
  })

  it('keys being added by other options are known: failure_scope, eom_timeout, breaker_*, debug', () => {
    const keys = {
      failure_scope: 'session',
      eom_timeout: '60',
      breaker_failures: '5',
      breaker_backoff: '10',
      breaker_backoff_max: '300',
      debug: '2',
    }
    assert.deepEqual(warnings(withA({ 'milter.a': { socket: '127.0.0.1:1', ...keys } }, keys)), [])
  })

  it('unknown sections, with the nearest section name', () => {
    assert.deepEqual(warnings({ quarantaine: { action: 'hold' } }), [
      `${FILE} [quarantaine]: unknown section, ignored (did you mean [quarantine]?)`,
    ])
    assert.deepEqual(warnings({ ...withA(), 'miltre.b': { socket: '127.0.0.1:2' } }), [
      `${FILE} [miltre.b]: unknown section, ignored (did you mean [milter.b]?)`,
    ])
    assert.deepEqual(warnings({ listner: {} }), [
      `${FILE} [listner]: unknown section, ignored (did you mean [listener.NAME]?)`,
    ])
    assert.deepEqual(warnings({ whatever: {} }), [`${FILE} [whatever]: unknown section, ignored`])
  })

  it('a [milter.NAME] section not in milters = is a warning, and the milter is not used', () => {
    const cfg = parseMilterConfig(
      withA({ 'milter.disabled': { socket: 'inet:8892@127.0.0.1', defualt_action: 'x' } }),
      FILE,
    )
    assert.deepEqual([...cfg.milters.keys()], ['a'])
    assert.deepEqual(cfg.warnings, [
      `${FILE} [milter.disabled]: not listed in [main] milters, so this milter is not used`,
      `${FILE} [milter.disabled] defualt_action: unknown key, ignored (did you mean default_action?)`,
    ])
    assert.deepEqual(warnings({ 'milter.orphan': { socket: '127.0.0.1:2' } }), [
      `${FILE} [milter.orphan]: not listed in [main] milters, so this milter is not used`,
    ])
  })

  it('[destination_channel] and [optin] keys are domains and addresses; a bare word close to a setting is flagged', () => {
    assert.deepEqual(
      warnings({
        destination_channel: { locale: 'x', 'example.net': 'y', localhost: 'z' },
        optin: { defualt: 'spam', 'a@b.example': 'spam' },
      }),
      [
        `${FILE} [destination_channel] locale: neither a domain nor an address (did you mean local?)`,
        `${FILE} [optin] defualt: neither a domain nor an address (did you mean default?)`,
      ],
    )
  })

  it('the shipped config/milter.ini and the demo milter.ini, uncommented or not, have none', () => {
    const shipped = fs.readFileSync(path.join(REPO_ROOT, 'config', 'milter.ini'), 'utf8')
    const uncommented = shipped
      .split('\n')
      .map((l) => l.replace(/^;(?=\[|[a-z_.]+ *=)/, ''))
      .map((l) => l.replace(/\(all of milters, in order\)/, ''))
      .join('\n')
      .replace(/^milters =[ \t]*$/m, 'milters = opendkim')
    for (const text of [shipped, uncommented]) {
      const ini = iniReader.parseIni('milter.ini', { booleans: ['main.reuse_connections'] }, text)
      assert.deepEqual(lintMilterIni(ini as Ini, 'milter.ini', ['opendkim']), [])
    }
    const demo = fs.readFileSync(path.join(REPO_ROOT, 'demo', 'config', 'milter.ini'), 'utf8')
    assert.deepEqual(
      parseMilterConfig(iniReader.parseIni('milter.ini', {}, demo) as Ini).warnings,
      [],
    )
  })

  describe('editDistance and nearest', () => {
    const cases: Array<[string, string, number]> = [
      ['default_action', 'default_action', 0],
      ['defualt_action', 'default_action', 1], // transposition
      ['conect_timeout', 'connect_timeout', 1], // deletion
      ['connect_timeoutt', 'connect_timeout', 1], // insertion
      ['comand_timeout', 'command_timeout', 1],
      ['kitten', 'sitting', 3],
      ['', 'abc', 3],
    ]
    for (const [a, b, want] of cases)
      it(`${a || '""'} -> ${b}: ${want}`, () => assert.equal(editDistance(a, b), want))

    it('nearest picks the closest known key, case-insensitively, or none when far', () => {
      const main = KNOWN_KEYS['main'] ?? []
      assert.equal(nearest('Default_Actoin', main), 'default_action')
      assert.equal(nearest('reuse_connection', main), 'reuse_connections')
      assert.equal(nearest('timeout', main), undefined)
    })
  })
})
