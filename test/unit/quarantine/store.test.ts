/**
 * The quarantine store: two files per entry written atomically, listings
 * that never show an incomplete entry, ids that cannot name a path outside
 * the store, and a claim that only one release can take.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Readable } from 'node:stream'

import {
  checkId,
  claimEntry,
  findEntry,
  listEntries,
  parseMeta,
  entryState,
  QuarantineError,
  writeEntry,
  type QuarantineMeta,
} from '../../../lib/quarantine/store'

const ID = 'B3E1C0DE-9A2F-4C55-8D0E-1234567890AB.1'
const MESSAGE = Buffer.from('Received: from x\r\nSubject: hi\r\n\r\n.dot line\r\nbody\r\n')

function meta(id = ID, time = '2026-03-04T05:06:07.000Z'): QuarantineMeta {
  return {
    version: 1,
    id,
    time,
    transaction: id,
    sender: { address: 'alice@example.org', args: ['SIZE=400'] },
    recipients: [
      { address: 'bob@example.com', args: [] },
      { address: 'carol@example.net', args: ['NOTIFY=NEVER'] },
    ],
    reason: 'one: suspicious',
    milters: ['one'],
    kind: 'hold',
    client: { ip: '192.0.2.1', host: 'client.example.org', helo: 'client.example.org' },
  }
}

let dir: string
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-store-'))
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

describe('quarantine store', () => {
  it('writes <day>/<id>.eml byte for byte and <id>.json, leaving no temporary file', async () => {
    const eml = await writeEntry(
      dir,
      meta(),
      Readable.from([MESSAGE.subarray(0, 5), MESSAGE.subarray(5)]),
    )
    assert.equal(eml, path.join(dir, '20260304', `${ID}.eml`))
    assert.deepEqual(fs.readFileSync(eml), MESSAGE)
    assert.deepEqual(fs.readdirSync(path.join(dir, '20260304')).sort(), [`${ID}.eml`, `${ID}.json`])
    assert.deepEqual(
      parseMeta(fs.readFileSync(path.join(dir, '20260304', `${ID}.json`), 'utf8'), 'x'),
      meta(),
    )
    assert.equal(fs.statSync(eml).mode & 0o777, 0o600)
  })

  it('never overwrites an entry', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    await assert.rejects(writeEntry(dir, meta(), Buffer.from('other')), /EEXIST/)
    assert.deepEqual(fs.readFileSync(path.join(dir, '20260304', `${ID}.eml`)), MESSAGE)
  })

  it('a failed message write leaves nothing behind (no .eml, no .json, no temporary file)', async () => {
    const broken = new Readable({
      read() {
        this.destroy(new Error('stream broke'))
      },
    })
    await assert.rejects(writeEntry(dir, meta(), broken), /stream broke/)
    assert.deepEqual(fs.readdirSync(path.join(dir, '20260304')), [])
  })

  it('lists complete entries oldest first, with size; skips an .eml without its .json, temporary files and foreign files', async () => {
    await writeEntry(dir, meta('B.1', '2026-03-05T00:00:00.000Z'), MESSAGE)
    await writeEntry(dir, meta('A.1', '2026-03-04T00:00:00.000Z'), MESSAGE)
    const day = path.join(dir, '20260304')
    fs.writeFileSync(path.join(day, 'HALF.1.eml'), MESSAGE) // .json not yet written
    fs.writeFileSync(path.join(day, '.C.1.json.abc.tmp'), '{')
    fs.writeFileSync(path.join(day, 'NOEML.1.json'), JSON.stringify(meta('NOEML.1')))
    fs.mkdirSync(path.join(dir, 'not-a-day'))
    fs.writeFileSync(path.join(dir, 'not-a-day', 'X.1.json'), JSON.stringify(meta('X.1')))
    const problems: string[] = []
    const list = await listEntries(dir, problems)
    assert.deepEqual(
      list.map((e) => [e.meta.id, e.size]),
      [
        ['A.1', MESSAGE.length],
        ['B.1', MESSAGE.length],
      ],
    )
    assert.deepEqual(problems, [])
  })

  it('reports a sidecar that is not an entry instead of listing it', async () => {
    const day = path.join(dir, '20260304')
    fs.mkdirSync(day)
    fs.writeFileSync(path.join(day, 'BAD.1.eml'), MESSAGE)
    fs.writeFileSync(path.join(day, 'BAD.1.json'), '{"version": 1}')
    const problems: string[] = []
    assert.deepEqual(await listEntries(dir, problems), [])
    assert.equal(problems.length, 1)
    assert.match(problems[0] ?? '', /BAD\.1\.json: not a quarantine entry/)
  })

  it('an empty or missing store lists nothing', async () => {
    assert.deepEqual(await listEntries(path.join(dir, 'missing')), [])
  })

  it('ids cannot escape the directory', async () => {
    for (const bad of [
      '../x',
      '..',
      '.',
      'a/b',
      'a\\b',
      '/etc/passwd',
      '.hidden',
      'a..b',
      '',
      'a b',
    ]) {
      assert.throws(() => checkId(bad), QuarantineError, bad)
      await assert.rejects(findEntry(dir, bad), QuarantineError, bad)
    }
    await assert.rejects(writeEntry(dir, meta('../../escape'), MESSAGE), /invalid quarantine id/)
    assert.equal(fs.existsSync(path.join(dir, '..', '..', 'escape.eml')), false)
    assert.equal(checkId(ID), ID)
  })

  it('finds an entry by id; an unknown id is an error', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    assert.equal((await findEntry(dir, ID)).meta.sender.address, 'alice@example.org')
    await assert.rejects(findEntry(dir, 'NOPE.1'), /no quarantine entry NOPE\.1/)
  })

  it('a claim records its owner; finish removes the entry, release leaves it; a second claim is refused', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    const day = path.join(dir, '20260304')
    const e = await findEntry(dir, ID)
    assert.equal(entryState(e), 'held')
    const claim = await claimEntry(e, 'release')
    const record = JSON.parse(fs.readFileSync(path.join(day, `.${ID}.claim`), 'utf8'))
    assert.equal(record.op, 'release')
    assert.equal(record.pid, process.pid)
    assert.equal(record.host, os.hostname())
    assert.ok(Math.abs(Date.parse(record.time) - Date.now()) < 5000)
    // still listed, as being released
    const [listed] = await listEntries(dir)
    assert.ok(listed)
    assert.equal(entryState(listed), 'releasing')
    assert.equal(listed.claim?.stale, undefined)
    await assert.rejects(
      claimEntry(e, 'delete'),
      new RegExp(`is being released by pid ${process.pid} on `),
    )
    await claim.release()
    assert.equal(entryState(await findEntry(dir, ID)), 'held')
    const again = await claimEntry(e, 'delete')
    await again.finish()
    assert.deepEqual(fs.readdirSync(day), [])
    await assert.rejects(findEntry(dir, ID), /no quarantine entry/)
  })
})
