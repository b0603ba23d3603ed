/**
 * The documentation cannot drift from the code:
 * - every ```ini block of README.md and docs/*.md is read the way Haraka reads milter.ini
 *   (haraka-config's ini reader) and must pass parseMilterConfig without an error or a
 *   warning (a block that starts with `; config/OTHER.ini` is another Haraka file, and only
 *   has to parse);
 * - docs/configuration.md has one table per section, and the keys in those tables are
 *   exactly the keys the plugin knows (KNOWN_KEYS of lib/config-lint.ts);
 * - every relative link of README.md and docs/*.md names a file that exists and, with a
 *   #fragment, a heading of that file.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { parseMilterConfig, type Ini } from '../../../lib/config'
import { REPO_ROOT } from '../../helpers/paths'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const iniReader = require('haraka-config/lib/readers/ini') as {
  parseIni(name: string, options: unknown, data: string): unknown
}

/** The options plugins/milter.ts load_milter_ini passes to Haraka's config.get. */
const MILTER_INI_OPTIONS = { booleans: ['main.reuse_connections'] }

/** README.md and every page of docs/, repository-relative. */
function markdownFiles(): string[] {
  const docs = fs
    .readdirSync(path.join(REPO_ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`)
  return ['README.md', ...docs]
}

function read(rel: string): string {
  return fs.readFileSync(path.join(REPO_ROOT, rel), 'utf8')
}

interface Snippet {
  file: string
  line: number
  text: string
}

/** The ```ini blocks of a markdown text (indented ones in list items too), unindented. */
function iniSnippets(file: string): Snippet[] {
  const out: Snippet[] = []
  const lines = read(file).split('\n')
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)```ini\s*$/.exec(lines[i] ?? '')
    if (!open) continue
    const indent = open[1] ?? ''
    const body: string[] = []
    let j = i + 1
    for (; j < lines.length && (lines[j] ?? '').trim() !== '```'; j++)
      body.push((lines[j] ?? '').startsWith(indent) ? (lines[j] ?? '').slice(indent.length) : '')
    out.push({ file, line: i + 1, text: `${body.join('\n')}\n` })
    i = j
  }
  return out
}

function list(v: unknown): string[] {
  return typeof v === 'string' ? v.split(/[\s,]+/).filter(Boolean) : []
}

/**
 * A snippet shows one part of a file: complete what it leaves out so that all of it is
 * checked. Without `[main] milters`, every [milter.NAME] section is listed; a milter that
 * is named but has no section gets one with a socket; TLS files point to PEM files.
 */
function complete(ini: Ini, pemDir: string): Ini {
  const out: Ini = { ...ini }
  const sections = Object.keys(out).filter((s) => s.startsWith('milter.'))
  const main = { ...out['main'] }
  if (main['milters'] === undefined && sections.length > 0)
    main['milters'] = sections.map((s) => s.slice('milter.'.length)).join(', ')
  out['main'] = main
  const named = [
    ...list(main['milters']),
    ...list(main['default_milters']),
    ...Object.entries(out)
      .filter(([s]) => s.startsWith('listener.'))
      .flatMap(([, v]) => list((v as Record<string, unknown>)['milters'])),
  ]
  for (const name of named) {
    if (out[`milter.${name}`] === undefined) out[`milter.${name}`] = { socket: 'inet:1@127.0.0.1' }
  }
  if (!list(main['milters']).length && named.length > 0)
    main['milters'] = [...new Set(named)].join(', ')
  const pem = { tls_ca: 'ca.pem', tls_cert: 'cert.pem', tls_key: 'key.pem' } as const
  for (const [s, v] of Object.entries(out)) {
    if (!s.startsWith('milter.') && s !== 'main') continue
    const sec = { ...(v as Record<string, unknown>) }
    for (const [k, f] of Object.entries(pem)) if (k in sec) sec[k] = path.join(pemDir, f)
    out[s] = sec
  }
  return out
}

describe('docs: every ini snippet is a milter.ini the plugin accepts', () => {
  let pemDir: string
  before(() => {
    pemDir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-docs-'))
    const cert = '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n'
    fs.writeFileSync(path.join(pemDir, 'ca.pem'), cert)
    fs.writeFileSync(path.join(pemDir, 'cert.pem'), cert)
    fs.writeFileSync(
      path.join(pemDir, 'key.pem'),
      '-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n',
    )
  })
  after(() => fs.rmSync(pemDir, { recursive: true, force: true }))

  const snippets = markdownFiles().flatMap(iniSnippets)

  it('there are snippets to check (README and docs/)', () => {
    assert.ok(snippets.some((s) => s.file === 'README.md'))
    assert.ok(snippets.filter((s) => s.file.startsWith('docs/')).length >= 8)
  })

  for (const s of snippets) {
    const other = /^\s*;\s*config\/(\S+\.ini)/.exec(s.text)
    if (other && other[1] !== 'milter.ini') {
      it(`${s.file}:${s.line} (${other[1]}) parses as ini`, () => {
        assert.equal(typeof iniReader.parseIni(other[1] ?? '', {}, s.text), 'object')
      })
      continue
    }
    it(`${s.file}:${s.line} parses with no error and no warning`, () => {
      const ini = iniReader.parseIni('milter.ini', MILTER_INI_OPTIONS, s.text) as Ini
      const cfg = parseMilterConfig(complete(ini, pemDir), `${s.file}:${s.line}`)
      assert.deepEqual(cfg.warnings, [])
    })
  }
})

// The configuration reference is generated from the key table (lib/config-keys.ts);
// test/unit/config/docs.test.ts fails when the committed page drifts from it.

/** GitHub's anchor for a heading. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-')
}

function anchors(rel: string): Set<string> {
  const out = new Set<string>()
  let fence = false
  for (const l of read(rel).split('\n')) {
    if (/^\s*```/.test(l)) fence = !fence
    const h = !fence && /^#{1,6}\s+(.*)$/.exec(l)
    if (h) out.add(slug(h[1] ?? ''))
  }
  return out
}

describe('docs: relative links lead somewhere', () => {
  for (const file of markdownFiles()) {
    it(file, () => {
      const text = read(file).replace(/```[\s\S]*?```/g, '')
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1] ?? ''
        if (/^[a-z]+:/.test(target)) continue
        const [p = '', frag] = target.split('#')
        const rel = p === '' ? file : path.normalize(path.join(path.dirname(file), p))
        assert.ok(fs.existsSync(path.join(REPO_ROOT, rel)), `${file}: ${target}: no ${rel}`)
        if (frag !== undefined && rel.endsWith('.md'))
          assert.ok(anchors(rel).has(frag), `${file}: ${target}: no heading #${frag} in ${rel}`)
      }
    })
  }
})
