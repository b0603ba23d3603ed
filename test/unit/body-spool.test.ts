/**
 * BodySpool under the races a failing milter causes: dispose() while a
 * write is in flight or before the file exists, writes after dispose().
 * Any of these used to raise an uncaught ERR_STREAM_DESTROYED.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { BodySpool, BodySpoolError } from '../../lib/body-spool'

describe('BodySpool', () => {
  let tmp: string
  const uncaught: unknown[] = []
  const onUncaught = (e: unknown): void => {
    uncaught.push(e)
  }

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-test-'))
    uncaught.length = 0
    process.on('uncaughtException', onUncaught)
  })

  afterEach(() => {
    process.removeListener('uncaughtException', onUncaught)
    fs.rmSync(tmp, { recursive: true, force: true })
  })

  /** Lets pending I/O callbacks (and any error they would throw) run. */
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50))

  it('round-trips chunks as CRLF lines', async () => {
    const s = new BodySpool(tmp)
    await s.write(Buffer.from('a\nb\r'))
    await s.write(Buffer.from('\nc'))
    const lines: string[] = []
    for await (const l of s.lines()) lines.push(l.toString())
    assert.deepEqual(lines, ['a\r\n', 'b\r\n', 'c\r\n'])
    await s.dispose()
    assert.deepEqual(fs.readdirSync(tmp), [])
  })

  it('dispose() while a large write waits for drain: no uncaught error, file removed', async () => {
    const s = new BodySpool(tmp)
    const big = Buffer.alloc(4 * 1024 * 1024, 0x61)
    const w = s.write(big).then(
      () => 'resolved',
      (e: unknown) => (e instanceof BodySpoolError ? 'spool-error' : `other: ${String(e)}`),
    )
    await new Promise((r) => setImmediate(r))
    await s.dispose()
    const outcome = await w
    assert.ok(['resolved', 'spool-error'].includes(outcome), outcome)
    await settle()
    assert.deepEqual(uncaught, [])
    assert.deepEqual(fs.readdirSync(tmp), [])
  })

  it('dispose() before the first write finished opening: the temporary directory is removed', async () => {
    const s = new BodySpool(tmp)
    const w = s.write(Buffer.from('x')).catch((e: unknown) => e)
    await s.dispose()
    const r = await w
    assert.ok(r === undefined || r instanceof BodySpoolError)
    await settle()
    assert.deepEqual(uncaught, [])
    assert.deepEqual(fs.readdirSync(tmp), [])
  })

  it('a write after dispose() is refused with a typed error', async () => {
    const s = new BodySpool(tmp)
    await s.write(Buffer.from('x'))
    await s.dispose()
    await assert.rejects(s.write(Buffer.from('y')), BodySpoolError)
    await settle()
    assert.deepEqual(uncaught, [])
  })

  it('many concurrent writes then dispose: every write settles, nothing uncaught', async () => {
    const s = new BodySpool(tmp)
    const chunk = Buffer.alloc(256 * 1024, 0x62)
    const writes = Array.from({ length: 20 }, () => s.write(chunk).catch((e: unknown) => e))
    await new Promise((r) => setImmediate(r))
    await s.dispose()
    const results = await Promise.all(writes)
    for (const r of results) assert.ok(r === undefined || r instanceof BodySpoolError, String(r))
    await settle()
    assert.deepEqual(uncaught, [])
    assert.deepEqual(fs.readdirSync(tmp), [])
  })

  it('finish() and dispose() are idempotent', async () => {
    const s = new BodySpool(tmp)
    await s.write(Buffer.from('x\n'))
    await s.finish()
    await s.finish()
    await s.dispose()
    await s.dispose()
    assert.deepEqual(fs.readdirSync(tmp), [])
  })
})
