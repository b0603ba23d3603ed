/**
 * PacketWriter: packets gathered until flush() go out in one write; a body chunk goes out
 * after its header in one corked writev without a copy; 1 MiB gathered is written at once;
 * a drain that does not come rejects with the caller's error.
 */
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'

import { PacketWriter } from '../../../lib/session/writer'

class Stream extends EventEmitter {
  writes: Buffer[][] = []
  private corked: Buffer[] | undefined
  writableLength = 0
  writableNeedDrain = false
  write(data: Uint8Array, done?: (err?: Error | null) => void): boolean {
    const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    if (this.corked) this.corked.push(b)
    else this.writes.push([b])
    done?.()
    return true
  }
  cork(): void {
    this.corked = []
  }
  uncork(): void {
    if (this.corked) this.writes.push(this.corked)
    this.corked = undefined
  }
  destroy(): void {}
  end(): void {}
}

describe('PacketWriter', () => {
  it('gathers small packets and writes them as one buffer at flush()', () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    w.push(Buffer.from('ab'))
    w.push(Buffer.from('cd'))
    assert.deepEqual(s.writes, [])
    w.flush()
    assert.deepEqual(s.writes, [[Buffer.from('abcd')]])
    w.flush()
    assert.equal(s.writes.length, 1, 'nothing gathered: no write')
  })

  it('a body chunk goes out after its header in one corked write, the chunk itself not copied', () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    const chunk = Buffer.alloc(10_000, 0x61)
    w.push(Buffer.from([0, 0, 0x27, 0x11, 0x42]), [chunk])
    w.flush()
    assert.equal(s.writes.length, 1)
    assert.equal(s.writes[0]?.length, 2)
    assert.equal(s.writes[0]?.[1]?.buffer, chunk.buffer, 'the same memory, not a copy')
  })

  it('writes at once when 1 MiB is gathered; discard() drops what is gathered', () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    w.push(Buffer.alloc(1), [Buffer.alloc(512 * 1024)])
    assert.equal(s.writes.length, 0)
    w.push(Buffer.alloc(1), [Buffer.alloc(512 * 1024)])
    assert.equal(s.writes.length, 1)
    w.push(Buffer.from('x'))
    w.discard()
    w.flush()
    assert.equal(s.writes.length, 1)
  })

  it('flush(written) calls back at once when the write went through', () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    let called = 0
    w.push(Buffer.from('x'))
    w.flush(() => called++)
    assert.equal(called, 1)
  })

  it('drained(): at once without backpressure; the caller’s error when no drain comes in time', async () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    const closed = (): Error => new Error('closed')
    await w.drained(10, () => new Error('never'), closed)
    s.writableNeedDrain = true
    const waiting = w.drained(5_000, () => new Error('no drain'), closed)
    s.emit('drain')
    await waiting
    await assert.rejects(
      w.drained(1, () => new Error('no drain'), closed),
      /no drain/,
    )
    assert.equal(s.listenerCount('drain') + s.listenerCount('close'), 0, 'no listener left')
  })

  it('drained(): a socket that closes first rejects at once, not after the timeout', async () => {
    const s = new Stream()
    const w = new PacketWriter(s)
    s.writableNeedDrain = true
    const waiting = w.drained(
      60_000,
      () => new Error('no drain'),
      () => new Error('closed'),
    )
    s.emit('close')
    await assert.rejects(waiting, /closed/)
    assert.equal(s.listenerCount('drain') + s.listenerCount('close'), 0, 'no listener left')
  })
})
