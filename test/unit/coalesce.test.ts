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
  it('joins lines into pieces of exactly the size; the last one holds the rest', async () => {
    const lines = Array.from({ length: 1300 }, (_, i) =>
      Buffer.from(`line ${i} ${'x'.repeat(70)}\r\n`),
    )
    const pieces = await piecesOf(lines, 65535)
    assert.deepEqual(
      pieces.map((p) => p.length),
      [65535, Buffer.concat(lines).length - 65535],
    )
    assert.deepEqual(Buffer.concat(pieces), Buffer.concat(lines))
  })

  it('a body smaller than the size is one piece; a larger chunk is cut into views of it', async () => {
    assert.deepEqual(await piecesOf([Buffer.from('a\r\n'), Buffer.from('b\r\n')], 1024), [
      Buffer.from('a\r\nb\r\n'),
    ])
    const big = Buffer.alloc(5000, 0x61)
    const pieces = await piecesOf([Buffer.from('xy'), big], 1024)
    assert.deepEqual(
      pieces.map((p) => p.length),
      [1024, 1024, 1024, 1024, 906],
    )
    assert.deepEqual(Buffer.concat(pieces), Buffer.concat([Buffer.from('xy'), big]))
    assert.equal(pieces[1]?.buffer, big.buffer, 'a piece inside one chunk is a view, not a copy')
  })

  it('an empty body yields nothing', async () => {
    assert.deepEqual(await piecesOf([], 1024), [])
  })
})
