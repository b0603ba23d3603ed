/**
 * The store never follows a symbolic link planted inside it: a link (or a
 * FIFO, a directory...) where a day folder, `.json`, `.eml` or claim
 * belongs is refused with QUARANTINE_ERR_UNSAFE and a message naming it,
 * and the file it points to is neither read, delivered nor written.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { quarantineCommand } from '../../../lib/cli/quarantine'
import { heldMeta, MESSAGE } from './fixture'
import {
  claimEntry,
  findEntry,
  listEntries,
  readMessage,
  writeEntry,
  type QuarantineMeta,
} from '../../../lib/quarantine/store'

const ID = 'L1NK.1'
function meta(id = ID): QuarantineMeta {
  return heldMeta(id)
}

function isUnsafe(pattern: RegExp) {
  return (err: Error & { code?: string }): boolean => {
    assert.equal(err.code, 'QUARANTINE_ERR_UNSAFE', err.message)
    assert.match(err.message, pattern)
    return true
  }
}

let dir: string
let day: string
let outside: string
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-unsafe-'))
  outside = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-outside-'))
  day = path.join(dir, '20260304')
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
  fs.rmSync(outside, { recursive: true, force: true })
})

describe('quarantine store: links and other non-regular files', () => {
  it('a .json that is a symbolic link is refused by list and find, never read', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    const target = path.join(outside, 'secret.json')
    fs.writeFileSync(target, JSON.stringify(meta()))
    fs.unlinkSync(path.join(day, `${ID}.json`))
    fs.symlinkSync(target, path.join(day, `${ID}.json`))
    const problems: string[] = []
    assert.deepEqual(await listEntries(dir, problems), [])
    assert.equal(problems.length, 1)
    assert.match(
      problems[0] ?? '',
      /refused .*L1NK\.1\.json: it is a symbolic link, not a regular file/,
    )
    await assert.rejects(findEntry(dir, ID), isUnsafe(/symbolic link/))
  })

  it('an .eml that is a symbolic link is refused: the file it names is never delivered', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    const target = path.join(outside, 'shadow')
    fs.writeFileSync(target, 'root:x:0:0\n')
    fs.unlinkSync(path.join(day, `${ID}.eml`))
    fs.symlinkSync(target, path.join(day, `${ID}.eml`))
    const problems: string[] = []
    assert.deepEqual(await listEntries(dir, problems), [])
    assert.match(problems[0] ?? '', /L1NK\.1\.eml: it is a symbolic link/)
    await assert.rejects(findEntry(dir, ID), isUnsafe(/\.eml: it is a symbolic link/))
    const err: string[] = []
    const io = { out: () => undefined, err: (t: string) => err.push(t) }
    const code = await quarantineCommand(['release', ID, '--dir', dir, '--to', '127.0.0.1:9'], io)
    assert.equal(code, 1)
    assert.match(
      err.join(''),
      /refused .*\.eml: it is a symbolic link, not a regular file \(never followed\)/,
    )
  })

  it('an .eml swapped for a link after it was found is not read (O_NOFOLLOW)', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    const e = await findEntry(dir, ID)
    fs.unlinkSync(e.eml)
    fs.symlinkSync(path.join(outside, 'x'), e.eml)
    fs.writeFileSync(path.join(outside, 'x'), 'not this')
    await assert.rejects(readMessage(e), isUnsafe(/symbolic link/))
  })

  it('a FIFO as .eml is refused without hanging', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    const e = await findEntry(dir, ID)
    fs.unlinkSync(e.eml)
    execFileSync('mkfifo', [e.eml])
    await assert.rejects(findEntry(dir, ID), isUnsafe(/it is a FIFO/))
    await assert.rejects(readMessage(e), isUnsafe(/it is a FIFO/))
  })

  it('a day folder that is a symbolic link is skipped with a problem, and never written through', async () => {
    fs.mkdirSync(path.join(outside, 'day'))
    fs.symlinkSync(path.join(outside, 'day'), day)
    fs.writeFileSync(path.join(outside, 'day', `${ID}.eml`), MESSAGE)
    fs.writeFileSync(path.join(outside, 'day', `${ID}.json`), JSON.stringify(meta()))
    const problems: string[] = []
    assert.deepEqual(await listEntries(dir, problems), [])
    assert.match(problems[0] ?? '', /refused .*20260304: it is a symbolic link, not a directory/)
    await assert.rejects(findEntry(dir, ID), /no quarantine entry/)
    await assert.rejects(writeEntry(dir, meta('NEW.1'), MESSAGE), isUnsafe(/20260304/))
    assert.equal(fs.existsSync(path.join(outside, 'day', 'NEW.1.eml')), false)
  })

  it('a claim file that is a symbolic link is refused', async () => {
    await writeEntry(dir, meta(), MESSAGE)
    fs.writeFileSync(path.join(outside, 'c'), '{}')
    fs.symlinkSync(path.join(outside, 'c'), path.join(day, `.${ID}.claim`))
    await assert.rejects(findEntry(dir, ID), isUnsafe(/\.claim: it is a symbolic link/))
    await writeEntry(dir, meta('B.1'), MESSAGE)
    const e = await findEntry(dir, 'B.1')
    fs.symlinkSync(path.join(outside, 'c'), path.join(day, '.B.1.claim'))
    await assert.rejects(claimEntry(e, 'delete'), isUnsafe(/symbolic link/))
    assert.ok(fs.existsSync(path.join(day, 'B.1.json')), 'nothing removed')
  })
})

describe('quarantine list: the directory', () => {
  it('a missing directory exits 1 and says so; an empty one exits 0 with nothing', async () => {
    const out: string[] = []
    const err: string[] = []
    const io = { out: (t: string) => out.push(t), err: (t: string) => err.push(t) }
    const missing = path.join(outside, 'no-such-quarantine')
    assert.equal(await quarantineCommand(['list', '--dir', missing], io), 1)
    assert.match(
      err.join(''),
      /no quarantine directory .*no-such-quarantine: nothing was ever held/,
    )
    assert.deepEqual(out, [])
    err.length = 0
    const empty = fs.mkdtempSync(path.join(outside, 'empty-'))
    assert.equal(await quarantineCommand(['list', '--dir', empty], io), 0)
    assert.deepEqual([out, err], [[], []])
  })
})
