/**
 * Claims: the owner a claim records, when it is stale (process gone on
 * this host, or not refreshed for CLAIM_STALE_MS), and how the next list,
 * release or delete takes a dead one back: the entry held again, or an
 * interrupted removal completed. Old `.json.claimed` files come back too.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import {
  CLAIM_STALE_MS,
  pidAlive,
  staleReason,
  type ClaimRecord,
} from '../../../lib/quarantine/claim'
import { heldMeta, MESSAGE } from './fixture'
import {
  claimEntry,
  entryState,
  findEntry,
  listEntries,
  recoverClaims,
  writeEntry,
  type QuarantineMeta,
} from '../../../lib/quarantine/store'

const ID = 'C1A1.1'
function meta(id = ID): QuarantineMeta {
  return heldMeta(id)
}

/** The pid of a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', ''])
  assert.ok(r.pid && !pidAlive(r.pid))
  return r.pid
}

function record(over: Partial<ClaimRecord> = {}): ClaimRecord {
  return {
    op: 'release',
    pid: process.pid,
    host: os.hostname(),
    time: new Date().toISOString(),
    token: 'tok',
    ...over,
  }
}

let dir: string
let day: string
beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-claim-'))
  day = path.join(dir, '20260304')
  await writeEntry(dir, meta(), MESSAGE)
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

/** Plants a claim as a killed process would have left it, refreshed `ageMs` ago. */
function plant(r: ClaimRecord, ageMs = 0, id = ID): string {
  const file = path.join(day, `.${id}.claim`)
  fs.writeFileSync(file, JSON.stringify(r))
  const t = new Date(Date.now() - ageMs)
  fs.utimesSync(file, t, t)
  return file
}

describe('quarantine claims', () => {
  it('staleReason: gone on this host, or not refreshed for CLAIM_STALE_MS; a live one is never stale', () => {
    const now = Date.now()
    const alive = (): boolean => true
    const dead = (): boolean => false
    assert.equal(staleReason(record(), now, now, os.hostname(), alive), undefined)
    assert.equal(
      staleReason(record({ pid: 42 }), now, now, os.hostname(), dead),
      'process 42 is gone',
    )
    // another host: its pids mean nothing here, only the age counts
    assert.equal(
      staleReason(record({ host: 'elsewhere' }), now, now, os.hostname(), dead),
      undefined,
    )
    assert.equal(
      staleReason(record({ host: 'elsewhere' }), now - CLAIM_STALE_MS - 1000, now, 'here', dead),
      `not refreshed for ${CLAIM_STALE_MS / 1000 + 1} s`,
    )
    // a live pid (perhaps reused) does not hold a claim for ever
    assert.match(
      staleReason(record(), now - CLAIM_STALE_MS - 1, now, os.hostname(), alive) ?? '',
      /not refreshed/,
    )
    // an unreadable claim: only its age
    assert.equal(staleReason(undefined, now, now), undefined)
    assert.equal(CLAIM_STALE_MS, 10 * 60 * 1000)
  })

  it('pidAlive: this process yes, an exited one no, nonsense no', () => {
    assert.equal(pidAlive(process.pid), true)
    assert.equal(pidAlive(deadPid()), false)
    assert.equal(pidAlive(0), false)
    assert.equal(pidAlive(-1), false)
  })

  it('a live claim is listed as releasing and is not taken back', async () => {
    plant(record({ pid: process.pid }))
    const problems: string[] = []
    assert.deepEqual(await recoverClaims(dir, problems), [])
    const [e] = await listEntries(dir)
    assert.ok(e)
    assert.equal(entryState(e), 'releasing')
    assert.equal(e.claim?.record?.pid, process.pid)
    await assert.rejects(claimEntry(e, 'release'), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'QUARANTINE_ERR_CLAIMED')
      assert.match(err.message, new RegExp(`is being released by pid ${process.pid} on `))
      return true
    })
  })

  it('the claim of a killed process is taken back: held again, listed, releasable', async () => {
    const pid = deadPid()
    const file = plant(record({ pid, op: 'delete' }))
    // killed between linking the claim and removing its temporary file
    const tmp = path.join(day, `..${ID}.claim.tok.tmp`)
    fs.writeFileSync(tmp, '')
    // someone else's temporary claim file: removed only once it is old
    const young = path.join(day, `..${ID}.claim.young.tmp`)
    fs.writeFileSync(young, '')
    const problems: string[] = []
    const done = await recoverClaims(dir, problems)
    assert.deepEqual(problems, [])
    assert.equal(done.length, 1)
    assert.match(
      done[0] ?? '',
      new RegExp(
        `took back ${ID} from an interrupted delete by pid ${pid} .*process ${pid} is gone.*held again`,
      ),
    )
    assert.equal(fs.existsSync(file), false)
    assert.equal(fs.existsSync(tmp), false)
    assert.equal(fs.existsSync(young), true)
    const old = new Date(Date.now() - CLAIM_STALE_MS - 1000)
    fs.utimesSync(young, old, old)
    await recoverClaims(dir, problems)
    assert.equal(fs.existsSync(young), false)
    const [e] = await listEntries(dir)
    assert.ok(e)
    assert.equal(entryState(e), 'held')
    const claim = await claimEntry(e, 'release')
    await claim.finish()
    assert.deepEqual(fs.readdirSync(day), [])
  })

  it('a claim from another host is taken back once older than CLAIM_STALE_MS', async () => {
    plant(record({ host: 'other.example', pid: 1 }), CLAIM_STALE_MS - 60000)
    assert.deepEqual(await recoverClaims(dir, []), [])
    plant(record({ host: 'other.example', pid: 1 }), CLAIM_STALE_MS + 60000)
    const done = await recoverClaims(dir, [])
    assert.match(done[0] ?? '', /not refreshed for \d+ s/)
    assert.equal((await findEntry(dir, ID)).claim, undefined)
  })

  it('claiming an entry whose claim is stale takes it over', async () => {
    plant(record({ pid: deadPid() }))
    const e = await findEntry(dir, ID)
    assert.ok(e.claim?.stale)
    const claim = await claimEntry(e, 'release')
    assert.equal(claim.record.pid, process.pid)
    const on = JSON.parse(fs.readFileSync(path.join(day, `.${ID}.claim`), 'utf8'))
    assert.equal(on.token, claim.record.token)
    await claim.release()
    assert.equal(fs.existsSync(path.join(day, `.${ID}.claim`)), false)
  })

  it('a stale claim whose .json is gone (killed after the 250, mid-removal) completes the removal', async () => {
    plant(record({ pid: deadPid() }))
    fs.unlinkSync(path.join(day, `${ID}.json`))
    const done = await recoverClaims(dir, [])
    assert.match(done[0] ?? '', new RegExp(`completed the removal of ${ID}`))
    assert.deepEqual(fs.readdirSync(day), [])
  })

  it('only the given id is recovered when one is named', async () => {
    await writeEntry(dir, meta('OTHER.1'), MESSAGE)
    plant(record({ pid: deadPid() }))
    plant(record({ pid: deadPid() }), 0, 'OTHER.1')
    const done = await recoverClaims(dir, [], 'OTHER.1')
    assert.equal(done.length, 1)
    assert.match(done[0] ?? '', /OTHER\.1/)
    assert.ok(fs.existsSync(path.join(day, `.${ID}.claim`)))
  })

  it('a claim made before claims had owners (.ID.json.claimed) is renamed back once stale', async () => {
    const json = path.join(day, `${ID}.json`)
    const legacy = path.join(day, `.${ID}.json.claimed`)
    fs.renameSync(json, legacy)
    // fresh: an older release may still be running
    assert.deepEqual(await recoverClaims(dir, []), [])
    assert.deepEqual(await listEntries(dir), [])
    // its age is its ctime, which cannot be set back: check the rule with the clock moved on
    const realNow = Date.now
    Date.now = () => realNow() + CLAIM_STALE_MS + 1000
    let done: string[]
    try {
      done = await recoverClaims(dir, [])
    } finally {
      Date.now = realNow
    }
    assert.match(done[0] ?? '', /interrupted release of an older version/)
    assert.equal(fs.existsSync(legacy), false)
    assert.deepEqual(
      (await listEntries(dir)).map((e) => e.meta.id),
      [ID],
    )
  })

  it('a claim the entry lost in between (released by another) is given up as gone', async () => {
    const e = await findEntry(dir, ID)
    fs.unlinkSync(e.json)
    await assert.rejects(claimEntry(e, 'delete'), /is gone/)
    assert.equal(fs.existsSync(path.join(day, `.${ID}.claim`)), false)
  })
})
