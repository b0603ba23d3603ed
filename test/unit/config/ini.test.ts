/**
 * lib/ini.ts gives the values haraka-config's ini reader gives the plugin:
 * the same files parsed both ways, with the options the plugin uses.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { INI_OPTIONS, parseMilterConfig, type Ini } from '../../../lib/config'
import { parseIni } from '../../../lib/ini'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const haraka = require('haraka-config/lib/readers/ini') as {
  parseIni(name: string, options: unknown, data: string): unknown
  logger: (msg: string) => void
}

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..')

const EDGES = `; comment
# another
top = 1
[main]
milters = a, b
reuse_connections = ok
protocol = 6
ratio = 0.5
negative = -3
spaced   =   several words here   
continued = one \\
  two
empty =
bare
list[] = x
list[] = 2
[milter.a]
socket = inet:8891@127.0.0.1
tls = yes
reuse_connections = on
[ spaced.section ]
k=v
[__proto__]
x = 1
`

function both(text: string): [unknown, unknown] {
  const log = haraka.logger
  haraka.logger = () => {}
  try {
    return [parseIni(text, INI_OPTIONS), haraka.parseIni('milter.ini', INI_OPTIONS, text)]
  } finally {
    haraka.logger = log
  }
}

describe('config: lib/ini.ts reads milter.ini as haraka-config does', () => {
  const files = [
    path.join(REPO_ROOT, 'config', 'milter.ini'),
    path.join(REPO_ROOT, 'demo', 'config', 'milter.ini'),
  ]
  for (const file of files)
    it(path.relative(REPO_ROOT, file), () => {
      const text = fs.readFileSync(file, 'utf8')
      const uncommented = text.replace(/^;(?=\[|[a-z_.]+ *=)/gm, '')
      for (const t of [text, uncommented]) {
        const [ours, theirs] = both(t)
        assert.deepStrictEqual(ours, theirs)
      }
    })

  it('comments, numbers, booleans, continuations, arrays, bare keys, unsafe names', () => {
    const [ours, theirs] = both(EDGES)
    assert.deepStrictEqual(ours, theirs)
    assert.equal((ours as Ini)['main']?.['reuse_connections'], true)
    assert.equal((ours as Ini)['main']?.['protocol'], 6)
    assert.equal((ours as Ini)['milter.a']?.['reuse_connections'], 'on')
  })

  it('the same configuration results, so the CLI and the plugin agree', () => {
    const text = fs.readFileSync(path.join(REPO_ROOT, 'demo', 'config', 'milter.ini'), 'utf8')
    const [ours, theirs] = both(text)
    assert.deepStrictEqual(parseMilterConfig(ours as Ini), parseMilterConfig(theirs as Ini))
  })
})
