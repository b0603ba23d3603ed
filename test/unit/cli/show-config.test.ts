/**
 * haraka-milter config's text, in process: per listener the milters that run (and whether they
 * are [main]'s), per milter its limits by their milter.ini keys.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { loadConfig } from '../../../lib/cli/config-file'
import { configExitCode, configView, formatConfigView } from '../../../lib/cli/show-config'

describe('haraka-milter config: the effective configuration', () => {
  let dir: string
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-show-'))
  })
  after(() => fs.rmSync(dir, { recursive: true, force: true }))

  function show(ini: string): { text: string; code: number } {
    const file = path.join(dir, 'milter.ini')
    fs.writeFileSync(file, ini)
    const view = configView(loadConfig(file))
    return { text: formatConfigView(view), code: configExitCode(view) }
  }

  it('a listener without `milters` shows [main]’s as inherited; an empty `milters =` shows none', () => {
    const { text, code } = show(
      '[main]\nmilters = a\n[milter.a]\nsocket = inet:9@127.0.0.1\n' +
        '[listener.sub]\nlisten = :587\nsource_channel = tcp_auth\n' +
        '[listener.rel]\nlisten = 127.0.0.1:2526\nmilters =\n',
    )
    assert.equal(code, 0)
    const lines = text.split('\n')
    assert.ok(
      lines.includes(
        'listener sub (:587): milters a (inherited from [main]); source_channel tcp_auth',
      ),
      text,
    )
    assert.ok(
      lines.includes('listener rel (127.0.0.1:2526): milters (none); source_channel rel'),
      text,
    )
  })

  it('limits by their keys, the configured one and the defaults', () => {
    const { text } = show(
      '[main]\nmilters = a\nmax_macro_names = 50\n[milter.a]\nsocket = inet:9@127.0.0.1\nmax_modifications = 500\n',
    )
    assert.ok(
      text.includes(
        "  limits: max_modifications 500; max_added_headers 1000; max_header_bytes 1048576; max_replacement_body Haraka's connection.ini [max] bytes; max_macro_names 50; max_macro_names_total 300",
      ),
      text,
    )
  })
})
