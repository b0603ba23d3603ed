/**
 * The configuration reference is generated from the key table: the
 * committed docs/configuration.md must be exactly what `npm run
 * docs:config` writes, and the table must be consistent with itself.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { configurationReference } from '../../../lib/config-docs'
import { KEYS, SECTIONS } from '../../../lib/config-keys'
import { parseMilterConfig } from '../../../lib/config'

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..')

describe('config: the generated reference', () => {
  it('docs/configuration.md is the generated output (run npm run docs:config)', () => {
    const committed = fs.readFileSync(path.join(REPO_ROOT, 'docs', 'configuration.md'), 'utf8')
    assert.equal(committed, configurationReference())
  })

  it('documents every key of the table once per section', () => {
    const doc = configurationReference()
    for (const k of KEYS) assert.ok(doc.includes(`| \`${k.name}\` |`), k.name)
    for (const kind of SECTIONS) {
      const names = KEYS.filter((k) => k.sections.includes(kind)).map((k) => k.name)
      assert.equal(new Set(names).size, names.length, `a key twice in [${kind}]`)
    }
  })

  it('every enum default is one of its values, and every default parses', () => {
    for (const k of KEYS)
      if (k.type === 'enum') assert.ok(k.values?.includes(k.default), `${k.name}: ${k.default}`)
    // the defaults as they would be written in [main] and a milter: the same configuration
    const main: Record<string, string> = { milters: 'a' }
    const milter: Record<string, string> = { socket: 'inet:1@127.0.0.1' }
    for (const k of KEYS) {
      if (k.default === '' || k.type === 'file') continue
      if (k.sections.includes('main') && k.name !== 'milters') main[k.name] = k.default
    }
    const written = parseMilterConfig({ main, 'milter.a': milter })
    const bare = parseMilterConfig({ main: { milters: 'a' }, 'milter.a': milter })
    assert.deepEqual(written, bare)
  })
})
