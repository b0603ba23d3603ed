/**
 * The captured body (lib/adapter/body-capture.ts) against the read it replaces:
 * haraka-message-stream's pipe(dest, { skip_headers: true }), on the same lines fed the way
 * Haraka's connection feeds them (views of socket reads, a leftover joined to the next read),
 * for bodies full of dot-stuffed lines cut at every kind of boundary.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Writable } from 'node:stream'

import { bodyPieces, captureBody, spoolAfter } from '../../../lib/adapter/body-capture'
import type { HarakaMessageStream, HarakaTransaction } from '../../../lib/adapter/haraka'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const MessageStream = require('haraka-message-stream') as new (
  cfg: unknown,
  id: string,
  headers?: string[],
) => HarakaMessageStream

/** A small deterministic generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Lines as the client sends them after DATA (dot-stuffed, CRLF), without the final dot. */
function dataLines(r: () => number, bodyLines: number, eoh = true): string[] {
  const lines = ['Subject: test\r\n', 'From: a@example.org\r\n', '.X-Dotted: header\r\n']
  if (eoh) lines.push('\r\n')
  const shapes = ['..\r\n', '...\r\n', '..x\r\n', '.\r\n'.replace('.', '..'), 'a.b\r\n', '\r\n']
  for (let i = 0; i < bodyLines; i++) {
    const k = r()
    if (k < 0.3) lines.push(shapes[Math.floor(r() * shapes.length)] as string)
    else lines.push(`${'x'.repeat(Math.floor(r() * 90))}${r() < 0.2 ? '.' : ''}\r\n`)
  }
  return lines
}

/** Feeds `bytes` cut into reads of random sizes as Haraka's connection does: line views. */
function feed(ms: HarakaMessageStream, bytes: Buffer, r: () => number, maxRead: number): void {
  let current: Buffer | undefined
  for (let off = 0; off < bytes.length;) {
    const n = 1 + Math.floor(r() * maxRead)
    const data = Buffer.from(bytes.subarray(off, off + n)) // a fresh read buffer
    off += n
    current = current?.length ? Buffer.concat([current, data]) : data
    let i
    while ((i = current.indexOf(0x0a)) !== -1) {
      ms.add_line(current.subarray(0, i + 1))
      current = current.subarray(i + 1)
    }
  }
  if (current?.length) ms.add_line(current)
}

async function viaPipe(ms: HarakaMessageStream): Promise<Buffer> {
  const parts: Buffer[] = []
  await new Promise<void>((resolve, reject) => {
    const sink = new Writable({
      write(chunk: Buffer, _e, done) {
        parts.push(chunk)
        done()
      },
    })
    sink.on('finish', resolve)
    sink.on('error', reject)
    ms.pipe(sink, { skip_headers: true })
  })
  return Buffer.concat(parts)
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = []
  for await (const b of it) out.push(Buffer.from(b))
  return out
}

async function compare(lines: string[], seed: number, maxRead: number, size: number) {
  const ms = new MessageStream({ main: {} }, `t${seed}`)
  const t = { message_stream: ms } as unknown as HarakaTransaction
  captureBody(t)
  feed(ms, Buffer.from(lines.join(''), 'latin1'), rng(seed + 1), maxRead)
  await new Promise<void>((resolve) => ms.add_line_end(resolve))
  // size 0: the views as they are (what the content phase reads)
  const it = size === 0 ? bodyPieces(t) : bodyPieces(t, size)
  assert.ok(it, 'captured')
  const pieces = await collect(it)
  const expected = await viaPipe(ms)
  assert.deepEqual(Buffer.concat(pieces), expected, `seed ${seed}`)
  pieces.forEach((p, i) => {
    if (size === 0) assert.ok(p.length > 0, `piece ${i} is not empty`)
    else if (i < pieces.length - 1) assert.equal(p.length, size, `piece ${i} is whole`)
    else assert.ok(p.length > 0 && p.length <= size)
  })
}

describe('body capture: the same bytes as pipe({ skip_headers })', function () {
  for (let seed = 1; seed <= 60; seed++) {
    const maxRead = [1, 2, 3, 7, 64, 1000, 70000][seed % 7] as number
    const size = [1, 5, 100, 65535, 0][seed % 5] as number
    it(`seed ${seed}: reads of 1..${maxRead} bytes, pieces of ${size || 'any size (views)'}`, async function () {
      const r = rng(seed)
      await compare(dataLines(r, 50 + Math.floor(r() * 2000)), seed, maxRead, size)
    })
  }

  it('no empty line: no body, as pipe()', async function () {
    await compare(dataLines(rng(7), 30, false), 7, 50, 65535)
  })

  it('a stuffed dot at every line start, cut at every byte', async function () {
    await compare(['S: x\r\n', '\r\n', ...Array<string>(500).fill('..\r\n')], 9, 1, 7)
    await compare(['S: x\r\n', '\r\n', ...Array<string>(500).fill('..\r\n')], 9, 1, 0)
  })

  it('gives way to pipe() past Haraka’s spool_after, keeping nothing: exactly at it, then one past', async function () {
    const body = 'x'.repeat(98) + '\r\n' // 100 bytes
    for (const [limit, captured] of [
      [100, true],
      [99, false],
    ] as const) {
      // Haraka spools the message past spool_after: into a directory of this test's own
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capture-spool-'))
      const cfg = { main: { spool_after: limit, spool_dir: dir } }
      const ms = new MessageStream(cfg, `tspool${limit}`)
      const t = { message_stream: ms, cfg }
      captureBody(t as unknown as HarakaTransaction)
      ms.add_line(Buffer.from('Subject: x\r\n'))
      ms.add_line(Buffer.from('\r\n'))
      ms.add_line(Buffer.from(body))
      await new Promise<void>((resolve) => ms.add_line_end(resolve))
      const it = bodyPieces(t as unknown as HarakaTransaction, 65535)
      if (captured) assert.deepEqual(Buffer.concat(await collect(it!)), Buffer.from(body))
      else assert.equal(it, undefined, `spool_after ${limit}: read through pipe()`)
      ms.destroy()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('spool_after resolves as haraka-message-stream does: unset 25 MiB, -1 never, a number', function () {
    assert.equal(spoolAfter(undefined), 25 * 1024 * 1024)
    assert.equal(spoolAfter({ main: {} }), 25 * 1024 * 1024)
    assert.equal(spoolAfter({ main: { spool_after: -1 } }), Infinity)
    assert.equal(spoolAfter({ main: { spool_after: '1048576' } }), 1048576)
    assert.equal(spoolAfter({ main: { spool_after: 'x' } }), 25 * 1024 * 1024)
  })

  it('gives way to pipe() when a line comes as a string, or the stream was replaced', function () {
    const ms = new MessageStream({ main: {} }, 'tstr')
    const t = { message_stream: ms } as unknown as HarakaTransaction
    captureBody(t)
    ms.add_line('Subject: x\r\n')
    assert.equal(bodyPieces(t, 100), undefined)
    const u = { message_stream: new MessageStream({ main: {} }, 'tnew') }
    assert.equal(bodyPieces(u as unknown as HarakaTransaction, 100), undefined)
  })
})
