/**
 * Coalescer: the message's lines joined into pieces of at least the given
 * size, nothing lost, nothing reordered.
 */
import assert from 'node:assert/strict'
import { once } from 'node:events'

import { Coalescer } from '../../lib/util/coalesce'

/** The pieces as pushed (a reader's read() may join what is buffered: the pushes are what counts). */
async function piecesOf(chunks: Buffer[], size: number): Promise<Buffer[]> {
  const out: Buffer[] = []
  class Spy extends Coalescer {
    override push(chunk: unknown): boolean {
      if (Buffer.isBuffer(chunk)) out.push(chunk)
      return super.push(chunk)
    }
  }
  const c = new Spy(size)
  c.resume()
  for (const chunk of chunks) c.write(chunk)
  c.end()
  await once(c, 'end')
  return out
}

describe('Coalescer', () => {
  it('joins lines into pieces of at least the size; the last one holds the rest', async () => {
    const lines = Array.from({ length: 1300 }, (_, i) =>
      Buffer.from(`line ${i} ${'x'.repeat(70)}\r\n`),
    )
    const pieces = await piecesOf(lines, 64 * 1024)
    assert.equal(pieces.length, 2)
    assert.ok((pieces[0]?.length ?? 0) >= 64 * 1024)
    assert.ok((pieces[1]?.length ?? 0) < 64 * 1024)
    assert.deepEqual(Buffer.concat(pieces), Buffer.concat(lines))
  })

  it('a body smaller than the size is one piece; a chunk larger than it passes whole', async () => {
    assert.deepEqual(await piecesOf([Buffer.from('a\r\n'), Buffer.from('b\r\n')], 1024), [
      Buffer.from('a\r\nb\r\n'),
    ])
    const big = Buffer.alloc(5000, 0x61)
    assert.deepEqual(await piecesOf([big], 1024), [big])
  })

  it('an empty body yields nothing', async () => {
    assert.deepEqual(await piecesOf([], 1024), [])
  })
})
