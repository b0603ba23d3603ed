/**
 * The release path against a scripted SMTP server on loopback: parameters
 * only where the server offers them, dot-stuffing, all-or-nothing on a
 * refused recipient, and the CLI keeping the entry (exit 1, the server's
 * reply) when the server refuses.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { parseHostPort, quarantineCommand, quarantineDirOf } from '../../../lib/cli/quarantine'
import { dataBlock, filterParams, sendMessage } from '../../../lib/quarantine/smtp'
import { listEntries, writeEntry, type QuarantineMeta } from '../../../lib/quarantine/store'

interface Fake {
  port: number
  commands: string[]
  data: string[]
  close(): Promise<void>
}

/** An SMTP server answering 250 to everything except what `refuse` names (command prefix -> reply). */
async function fakeServer(ehlo: string[], refuse: Record<string, string> = {}): Promise<Fake> {
  const commands: string[] = []
  const data: string[] = []
  const server = net.createServer((s) => {
    let buf = ''
    let inData = false
    s.write('220 fake ESMTP\r\n')
    s.on('data', (d) => {
      buf += d.toString('latin1')
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n')
          if (end < 0) return
          data.push(buf.slice(0, end + 2))
          buf = buf.slice(end + 5)
          inData = false
          s.write(refuse['.'] ?? '250 2.0.0 queued\r\n')
          continue
        }
        const nl = buf.indexOf('\r\n')
        if (nl < 0) return
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 2)
        commands.push(line)
        const r = Object.entries(refuse).find(([k]) => k !== '.' && line.startsWith(k))
        if (r) s.write(`${r[1]}\r\n`)
        else if (line.startsWith('EHLO'))
          s.write([`250-fake`, ...ehlo.map((e) => `250-${e}`), '250 HELP\r\n'].join('\r\n'))
        else if (line === 'DATA') {
          inData = true
          s.write('354 go ahead\r\n')
        } else if (line === 'QUIT') s.end('221 bye\r\n')
        else s.write('250 ok\r\n')
      }
    })
    s.on('error', () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    port,
    commands,
    data,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve())
      }),
  }
}

const FROM = { address: 'alice@example.org', args: ['SIZE=10', 'BODY=8BITMIME', 'AUTH=<>'] }
const RCPTS = [
  { address: 'bob@example.com', args: [] },
  { address: 'carol@example.net', args: ['NOTIFY=NEVER'] },
]

describe('quarantine release', () => {
  let fake: Fake | undefined
  let dir: string
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-release-'))
  })
  afterEach(async () => {
    await fake?.close()
    fake = undefined
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('filterParams keeps what the server offers, SIZE with the real size, never AUTH', () => {
    const ext = new Set(['SIZE', '8BITMIME'])
    assert.deepEqual(filterParams(['SIZE=10', 'BODY=8BITMIME', 'AUTH=<>', 'RET=HDRS'], ext, 99), {
      kept: ['SIZE=99', 'BODY=8BITMIME'],
      dropped: ['AUTH=<>', 'RET=HDRS'],
    })
    assert.deepEqual(filterParams(['NOTIFY=NEVER'], new Set(['DSN'])).kept, ['NOTIFY=NEVER'])
  })

  it('dataBlock: CRLF, dot-stuffed, final dot', () => {
    assert.equal(dataBlock(Buffer.from('a\n.b\r\n..c')).toString(), 'a\r\n..b\r\n...c\r\n.\r\n')
    assert.equal(dataBlock(Buffer.from('.x\r\n\r\n.\r\n')).toString(), '..x\r\n\r\n..\r\n.\r\n')
  })

  it('dataBlock: a dot after a bare CR is content, not a line start (sent unchanged)', () => {
    const held = Buffer.from('Subject: x\r\n\r\na\r.b\r\r.\r\n.end\r\n', 'latin1')
    const block = dataBlock(held)
    assert.equal(block.toString('latin1'), 'Subject: x\r\n\r\na\r.b\r\r.\r\n..end\r\n.\r\n')
    // what a receiver stores: the block without the final dot, un-stuffed at CRLF line starts
    const stored = block
      .subarray(0, block.length - 3)
      .toString('latin1')
      .replace(/(^|\r\n)\./g, '$1')
    assert.equal(stored, held.toString('latin1'))
  })

  it('sends the envelope and the message, parameters only where offered', async () => {
    fake = await fakeServer(['SIZE 1000', '8BITMIME', 'PIPELINING'])
    const r = await sendMessage({
      host: '127.0.0.1',
      port: fake.port,
      helo: 'release.test',
      from: FROM,
      rcpts: RCPTS,
      message: Buffer.from('Subject: x\r\n\r\n.dot\r\n'),
    })
    assert.equal(r.reply.code, 250)
    assert.deepEqual(r.dropped, ['AUTH=<>', 'NOTIFY=NEVER'])
    assert.deepEqual(fake.commands.slice(0, 5), [
      'EHLO release.test',
      'MAIL FROM:<alice@example.org> SIZE=20 BODY=8BITMIME',
      'RCPT TO:<bob@example.com>',
      'RCPT TO:<carol@example.net>',
      'DATA',
    ])
    assert.deepEqual(fake.data, ['Subject: x\r\n\r\n..dot\r\n'])
  })

  it('a refused recipient ends the session before DATA (nobody gets it)', async () => {
    fake = await fakeServer([], { 'RCPT TO:<carol': '550 5.1.1 no such user' })
    await assert.rejects(
      sendMessage({
        host: '127.0.0.1',
        port: fake.port,
        helo: 'h',
        from: FROM,
        rcpts: RCPTS,
        message: Buffer.from('x\r\n'),
      }),
      /RCPT TO:<carol@example\.net> refused: 550 5\.1\.1 no such user/,
    )
    assert.ok(!fake.commands.includes('DATA'))
    assert.deepEqual(fake.data, [])
  })

  it('the CLI keeps the entry and exits 1 with the reply when the server refuses; releases it later', async () => {
    const meta: QuarantineMeta = {
      version: 1,
      id: 'ABC.1',
      time: new Date().toISOString(),
      transaction: 'ABC.1',
      sender: FROM,
      recipients: RCPTS,
      reason: 'one: why',
      milters: ['one'],
      kind: 'hold',
      client: { ip: '192.0.2.1', host: '', helo: 'c' },
    }
    await writeEntry(dir, meta, Buffer.from('Subject: x\r\n\r\nbody\r\n'))
    fake = await fakeServer([], { '.': '451 4.3.0 try later\r\n' })
    const out: string[] = []
    const err: string[] = []
    const io = { out: (t: string) => out.push(t), err: (t: string) => err.push(t) }
    const to = `127.0.0.1:${fake.port}`
    assert.equal(await quarantineCommand(['release', 'ABC.1', '--dir', dir, '--to', to], io), 1)
    assert.match(
      err.join(''),
      /release of ABC\.1 failed, entry kept: message refused: 451 4\.3\.0 try later/,
    )
    assert.deepEqual(
      (await listEntries(dir)).map((e) => e.meta.id),
      ['ABC.1'],
    )
    await fake.close()
    fake = await fakeServer([])
    const to2 = `127.0.0.1:${fake.port}`
    assert.equal(await quarantineCommand(['release', 'ABC.1', '--dir', dir, '--to', to2], io), 0)
    assert.deepEqual(await listEntries(dir), [])
    assert.equal(await quarantineCommand(['release', 'ABC.1', '--dir', dir, '--to', to2], io), 1)
    assert.equal(fake.data.length, 1)
  })

  it('a greeting of endless continuation lines is refused, not buffered', async () => {
    const server = net.createServer((s) => {
      s.on('error', () => undefined)
      s.write('220-hello\r\n'.repeat(5000))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as net.AddressInfo).port
    try {
      await assert.rejects(
        sendMessage({
          host: '127.0.0.1',
          port,
          helo: 'h',
          from: FROM,
          rcpts: RCPTS,
          message: Buffer.from('x\r\n'),
          timeoutMs: 5000,
        }),
        /more than 1000 reply lines/,
      )
    } finally {
      server.close()
    }
  })

  it('an unreachable server keeps the entry', async () => {
    const meta: QuarantineMeta = {
      version: 1,
      id: 'DEF.1',
      time: new Date().toISOString(),
      transaction: 'DEF.1',
      sender: FROM,
      recipients: RCPTS,
      reason: 'one: why',
      milters: ['one'],
      kind: 'hold',
      client: { ip: '', host: '', helo: '' },
    }
    await writeEntry(dir, meta, Buffer.from('x\r\n'))
    const closed = await fakeServer([])
    const port = closed.port
    await closed.close()
    const io = { out: () => undefined, err: () => undefined }
    assert.equal(
      await quarantineCommand(['release', 'DEF.1', '--dir', dir, '--to', `127.0.0.1:${port}`], io),
      1,
    )
    assert.equal((await listEntries(dir)).length, 1)
  })

  it('an entry with no recipient left is listed, shown and deleted; release needs --rcpt', async () => {
    const meta: QuarantineMeta = {
      version: 1,
      id: 'NORCPT.1',
      time: new Date().toISOString(),
      transaction: 'NORCPT.1',
      sender: FROM,
      recipients: [],
      reason: 'one: why',
      milters: ['one'],
      kind: 'hold',
      client: { ip: '192.0.2.1', host: '', helo: 'c' },
    }
    await writeEntry(dir, meta, Buffer.from('Subject: x\r\n\r\nbody\r\n'))
    const out: string[] = []
    const err: string[] = []
    const io = { out: (t: string) => out.push(t), err: (t: string) => err.push(t) }
    assert.equal(await quarantineCommand(['list', '--dir', dir], io), 0)
    assert.match(
      out.join(''),
      /^NORCPT\.1 {2}held {2}\S+ {2}\d+ {2}<alice@example\.org> {2}\(none\) {2}one: why$/m,
    )
    out.length = 0
    assert.equal(await quarantineCommand(['show', 'NORCPT.1', '--dir', dir], io), 0)
    assert.match(out.join(''), /^recipient: \(none: release needs --rcpt\)$/m)
    assert.match(out.join(''), /^state: held$/m)

    fake = await fakeServer([])
    const to = `127.0.0.1:${fake.port}`
    assert.equal(await quarantineCommand(['release', 'NORCPT.1', '--dir', dir, '--to', to], io), 1)
    assert.match(
      err.join(''),
      /NORCPT\.1 has no recipient left .*release it with --rcpt ADDRESS, or delete it/,
    )
    assert.equal(fake.commands.length, 0, 'nothing sent')
    assert.equal((await listEntries(dir)).length, 1, 'kept')
    await assert.rejects(
      quarantineCommand(
        ['release', 'NORCPT.1', '--dir', dir, '--to', to, '--rcpt', 'not an address'],
        io,
      ),
      /--rcpt must be an address/,
    )
    const args = [
      'release',
      'NORCPT.1',
      '--dir',
      dir,
      '--to',
      to,
      '--rcpt',
      '<postmaster@example.org>',
    ]
    assert.equal(await quarantineCommand([...args, '--rcpt', 'abuse@example.org'], io), 0)
    assert.deepEqual(
      fake.commands.filter((c) => c.startsWith('RCPT')),
      ['RCPT TO:<postmaster@example.org>', 'RCPT TO:<abuse@example.org>'],
    )
    assert.equal(fake.data.length, 1)
    assert.deepEqual(await listEntries(dir), [])

    await writeEntry(dir, { ...meta, id: 'NORCPT.2' }, Buffer.from('x\r\n'))
    assert.equal(await quarantineCommand(['delete', 'NORCPT.2', '--dir', dir], io), 0)
    assert.deepEqual(await listEntries(dir), [])
  })

  it('reads [quarantine] dir from milter.ini; parses HOST:PORT', () => {
    assert.equal(
      quarantineDirOf('[main]\ndir = /no\n[quarantine]\naction = hold\n dir = /q/here \n'),
      '/q/here',
    )
    assert.equal(quarantineDirOf('[main]\nmilters = a\n'), undefined)
    assert.deepEqual(parseHostPort('127.0.0.1:2526'), { host: '127.0.0.1', port: 2526 })
    assert.deepEqual(parseHostPort('[::1]:25'), { host: '::1', port: 25 })
    assert.throws(() => parseHostPort('localhost'), /HOST:PORT/)
    assert.throws(() => parseHostPort('h:0'), /HOST:PORT/)
  })
})
