/**
 * The quarantine's events file (releases and deletes the CLI appends, the
 * metrics count) and the entry count from the store's listings.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { appendEvent, EVENTS_FILE, EventCounts } from '../../../lib/quarantine/events'
import { countEntries, writeEntry, type QuarantineMeta } from '../../../lib/quarantine/store'

let dir: string
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-events-'))
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

const at = '2026-03-04T05:06:07.000Z'

function meta(id: string): QuarantineMeta {
  return {
    version: 1,
    id,
    time: at,
    transaction: id,
    sender: { address: 'alice@example.org', args: [] },
    recipients: [{ address: 'bob@example.com', args: [] }],
    reason: 'one: suspicious',
    milters: ['one'],
    kind: 'hold',
    client: { ip: '192.0.2.1', host: 'h', helo: 'h' },
  }
}

describe('quarantine events file', () => {
  it('counts releases and deletes per milter, reading only what was appended since', async () => {
    const counts = new EventCounts(dir)
    await counts.update()
    assert.equal(counts.released.size, 0, 'no file: nothing')
    await appendEvent(dir, { time: at, op: 'release', id: 'A.1', milters: ['one', 'two'] })
    await appendEvent(dir, { time: at, op: 'delete', id: 'B.1', milters: ['one'] })
    await counts.update()
    assert.deepEqual(
      [...counts.released],
      [
        ['one', 1],
        ['two', 1],
      ],
    )
    assert.deepEqual([...counts.deleted], [['one', 1]])
    await appendEvent(dir, { time: at, op: 'release', id: 'C.1', milters: ['one'] })
    await counts.update()
    assert.equal(counts.released.get('one'), 2, 'the new line only')
    assert.equal(fs.statSync(path.join(dir, EVENTS_FILE)).mode & 0o777, 0o600)
  })

  it('a file larger than one read is read in parts; a line longer than a part is skipped', async () => {
    const file = path.join(dir, EVENTS_FILE)
    const event = (id: string): string =>
      `${JSON.stringify({ time: at, op: 'release', id, milters: ['one'] })}\n`
    // many events over several MiB, then a 3 MiB line with no line end in its first MiB
    const many = event('A.1').repeat(Math.ceil((3 * 1024 * 1024) / event('A.1').length))
    fs.writeFileSync(file, `${many}${'x'.repeat(3 * 1024 * 1024)}\n${event('B.1')}`)
    const counts = new EventCounts(dir)
    await counts.update()
    const n = many.split('\n').length - 1
    assert.equal(counts.released.get('one'), n + 1, 'every event, the long line skipped')
  })

  it('a line not yet complete waits; lines that are not events are skipped', async () => {
    const file = path.join(dir, EVENTS_FILE)
    fs.writeFileSync(file, 'garbage\n{"op":"release","milters":"x"}\n{"op":"release","mil')
    const counts = new EventCounts(dir)
    await counts.update()
    assert.equal(counts.released.size, 0)
    fs.appendFileSync(file, 'ters":["one"],"id":"A.1","time":"t"}\n')
    await counts.update()
    assert.deepEqual([...counts.released], [['one', 1]])
  })

  it('a file removed, truncated or replaced starts the counts again', async () => {
    const counts = new EventCounts(dir)
    await appendEvent(dir, { time: at, op: 'delete', id: 'A.1', milters: ['one'] })
    await appendEvent(dir, { time: at, op: 'delete', id: 'B.1', milters: ['one'] })
    await counts.update()
    assert.equal(counts.deleted.get('one'), 2)
    fs.truncateSync(path.join(dir, EVENTS_FILE), 0)
    await appendEvent(dir, { time: at, op: 'delete', id: 'C.1', milters: ['one'] })
    await counts.update()
    assert.equal(counts.deleted.get('one'), 1)
    fs.rmSync(path.join(dir, EVENTS_FILE))
    await counts.update()
    assert.equal(counts.deleted.size, 0)
  })

  it('a symbolic link as the events file is refused, never followed', async () => {
    const elsewhere = path.join(dir, 'elsewhere')
    fs.writeFileSync(elsewhere, '')
    fs.symlinkSync(elsewhere, path.join(dir, EVENTS_FILE))
    await assert.rejects(
      appendEvent(dir, { time: at, op: 'delete', id: 'A.1', milters: ['one'] }),
      /ELOOP|symbolic link/,
    )
    await assert.rejects(new EventCounts(dir).update(), /symbolic link/)
    assert.equal(fs.readFileSync(elsewhere, 'utf8'), '')
  })

  it('countEntries: complete entries from the listings; none for a missing directory', async () => {
    assert.equal(await countEntries(path.join(dir, 'missing')), 0)
    await writeEntry(dir, meta('A.1'), Buffer.from('x\r\n'))
    await writeEntry(dir, meta('B.1'), Buffer.from('x\r\n'))
    await appendEvent(dir, { time: at, op: 'delete', id: 'C.1', milters: ['one'] })
    fs.writeFileSync(path.join(dir, '20260304', '.B.1.json.abc.tmp'), '')
    assert.equal(await countEntries(dir), 2)
  })
})
