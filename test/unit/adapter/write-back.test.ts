/**
 * Applying the content phase's result to a haraka-test-fixtures
 * transaction: header list rebuilt in place, envelope, replacement body
 * (a new message stream), and the quarantine copy.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import {
  envelopeOf,
  headerFields,
  writeBody,
  writeEnvelope,
  writeHeaders,
  writeQuarantine,
} from '../../../lib/adapter/write-back'
import { transactionState } from '../../../lib/adapter/state'
import { BodySpool } from '../../../lib/body-spool'
import type { HeaderField } from '../../../lib/message/headers'
import {
  MESSAGE,
  addr,
  connection,
  feed,
  read,
  transaction,
  type FixtureConnection,
  type FixtureTransaction,
} from './fixture'

async function withMessage(
  lines: string[] = MESSAGE,
  before: (t: FixtureTransaction) => void = () => undefined,
): Promise<{ c: FixtureConnection; t: FixtureTransaction }> {
  const c = connection({ ip: '192.0.2.10', helo: 'client.example.net' })
  const t = transaction(c, 'sender@example.org', ['a@example.com', 'b@example.com'])
  before(t)
  await feed(c, t, lines)
  return { c, t }
}

function names(fields: readonly HeaderField[]): string[] {
  return fields.map((f) => f.name)
}

let tmp: string
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-apply-'))
})
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true })
})

describe('adapter: apply', () => {
  describe('headerFields', () => {
    it("hides Haraka's own Received (first, with `id <uuid>`)", async () => {
      const { t } = await withMessage()
      const f = headerFields(t)
      assert.deepEqual(names(f), ['Received', 'From', 'To', 'Subject', 'X-Folded'])
      assert.equal(f[0]?.hidden, true)
      assert.ok(f[0]?.value.includes(`id ${t.uuid}`))
      assert.ok(f.slice(1).every((x) => x.hidden === undefined))
    })

    it('values keep their leading space and folds, without the final newline', async () => {
      const { t } = await withMessage()
      const f = headerFields(t)
      assert.deepEqual(f[1], { name: 'From', value: ' Sender <sender@example.org>' })
      assert.deepEqual(f[3], { name: 'Subject', value: ' hello' })
      assert.deepEqual(f[4], { name: 'X-Folded', value: ' part one\n\tpart two' })
      assert.match(f[0]?.value ?? '', /\r\n\tby /, "Haraka's Received keeps its CRLF folds")
    })

    it('does not hide another Received', async () => {
      const { t } = await withMessage(['Received: from upstream by mx id ABC', ...MESSAGE])
      const f = headerFields(t)
      assert.deepEqual(names(f).slice(0, 3), ['Received', 'Received', 'From'])
      assert.equal(f[0]?.hidden, true)
      assert.equal(f[1]?.hidden, undefined)
    })

    it('does not hide a first Received that is not ours (add_received=false)', async () => {
      const c = connection()
      const t = transaction(c)
      for (const l of ['Received: from upstream by mx id ABC', ...MESSAGE])
        t.add_data(Buffer.from(`${l.startsWith('.') ? '.' : ''}${l}\r\n`))
      await new Promise<void>((resolve) => t.end_data(resolve))
      const f = headerFields(t)
      assert.equal(f[0]?.name, 'Received')
      assert.equal(f[0]?.hidden, undefined)
    })

    it("hides Haraka's Received below a header added at MAIL (haraka-plugin-spf's Received-SPF)", async () => {
      // spf adds Received-SPF with add_leading_header in hook_mail, before
      // DATA; Haraka's Received is then header_list[1].
      const { t } = await withMessage(MESSAGE, (tx) => {
        tx.add_leading_header(
          'Received-SPF',
          'Pass (mx: domain of example.org designates 192.0.2.10)',
        )
      })
      assert.match(t.header.header_list[0] ?? '', /^Received-SPF:/)
      assert.match(t.header.header_list[1] ?? '', new RegExp(`id ${t.uuid}`))
      const f = headerFields(t)
      assert.equal(f[0]?.hidden, undefined, 'Received-SPF is sent')
      assert.equal(f[1]?.hidden, true, "Haraka's own Received is hidden")
    })
  })

  describe('writeHeaders', () => {
    it('rebuilds header_list in place; header.get() reflects the change', async () => {
      const { t } = await withMessage()
      const list = t.header.header_list
      const f = headerFields(t)
      const edited: HeaderField[] = [
        f[0]!,
        { name: 'X-Inserted', value: ' at 1' },
        f[1]!,
        { name: 'Subject', value: ' changed' },
        f[4]!,
        { name: 'X-Added', value: ' last' },
      ]
      writeHeaders(t, edited)
      assert.equal(t.header.header_list, list, 'the same array object')
      assert.equal(t.header.header_list.length, 6)
      assert.equal(t.header.get('Subject').trim(), 'changed')
      assert.equal(t.header.get('To'), '', 'the deleted header is gone from the index')
      assert.equal(t.header.get('X-Added').trim(), 'last')
      assert.equal(t.header.get('X-Inserted').trim(), 'at 1')
      assert.equal(t.header.get('X-Folded'), 'part one\n\tpart two\n')
      assert.equal(t.header.get_all('Received').length, 1)
    })

    it('reading the message stream afterwards emits the new headers and the original body', async () => {
      const { t } = await withMessage()
      const f = headerFields(t)
      writeHeaders(t, [...f.filter((x) => x.name !== 'To'), { name: 'X-Milter', value: ' yes' }])
      const out = await read(t.message_stream)
      const [head, body] = out.split('\r\n\r\n')
      const lines = (head ?? '').split('\r\n')
      assert.match(lines[0] ?? '', /^Received: from client\.example\.net/)
      assert.deepEqual(
        lines.filter((l) => !/^\s/.test(l) && !l.startsWith('Received')),
        [
          'From: Sender <sender@example.org>',
          'Subject: hello',
          'X-Folded: part one',
          'X-Milter: yes',
        ],
      )
      assert.ok(lines.includes('\tpart two'))
      assert.equal(body, 'Body line one\r\n.starts with a dot\r\nlast line\r\n')
    })

    it('headerFields -> writeHeaders is an identity (Received folds included)', async () => {
      const { t } = await withMessage()
      const before = [...t.header.header_list]
      const data = await read(t.message_stream)
      writeHeaders(t, headerFields(t))
      assert.deepEqual(t.header.header_list, before)
      assert.equal(await read(t.message_stream), data)
    })
  })

  describe('writeEnvelope', () => {
    it('replaces mail_from and rcpt_to, keeping Address objects of unchanged recipients', async () => {
      const { t } = await withMessage()
      const a = t.rcpt_to[0]
      writeEnvelope(t, {
        from: { address: 'new@example.org', args: 'SIZE=100' },
        rcpts: [{ address: 'a@EXAMPLE.com' }, { address: 'c@example.com', args: 'NOTIFY=NEVER' }],
      })
      assert.equal(t.mail_from.address, 'new@example.org')
      assert.equal(t.mail_from.format(), '<new@example.org>')
      assert.equal(t.rcpt_to.length, 2)
      assert.equal(t.rcpt_to[0], a, 'the same Address object')
      assert.equal(t.rcpt_to[1]?.address, 'c@example.com')
      assert.equal(t.rcpt_to[1]?.host, 'example.com')
      assert.equal(t.rcpt_to[1]?.format(), '<c@example.com>')
      assert.deepEqual(t.notes['milter_envelope_args'], {
        mail: 'SIZE=100',
        rcpt: { 'c@example.com': 'NOTIFY=NEVER' },
      })
    })

    it('an unchanged sender keeps its Address object', async () => {
      const { t } = await withMessage()
      const from = t.mail_from
      writeEnvelope(t, envelopeOf(t))
      assert.equal(t.mail_from, from)
      assert.deepEqual(t.notes['milter_envelope_args'], { mail: undefined, rcpt: {} })
    })

    it('the null sender', async () => {
      const { t } = await withMessage()
      writeEnvelope(t, { from: { address: '' }, rcpts: [{ address: 'a@example.com' }] })
      assert.equal(t.mail_from.isNull(), true)
      assert.equal(t.mail_from.format(), '<>')
    })

    it('envelopeOf is the plain-data view', async () => {
      const { t } = await withMessage()
      t.rcpt_to.push(addr('c@example.com'))
      assert.deepEqual(envelopeOf(t), {
        from: { address: 'sender@example.org' },
        rcpts: [
          { address: 'a@example.com' },
          { address: 'b@example.com' },
          { address: 'c@example.com' },
        ],
      })
    })
  })

  describe('writeBody', () => {
    async function spool(...chunks: string[]): Promise<BodySpool> {
      const s = new BodySpool(tmp)
      for (const c of chunks) await s.write(Buffer.from(c))
      return s
    }

    it('swaps message_stream for one yielding the replacement body, headers kept', async () => {
      const { t } = await withMessage()
      const old = t.message_stream
      const s = await spool('Replaced line 1\n.dot line\r\nno newline at the end')
      await writeBody(t, s, 1)
      await s.dispose()
      assert.notEqual(t.message_stream, old)
      const out = await read(t.message_stream)
      const [head, body] = out.split('\r\n\r\n')
      assert.match(head ?? '', /^Received: /)
      assert.match(head ?? '', /\r\nSubject: hello\r\n/)
      assert.equal(body, 'Replaced line 1\r\n.dot line\r\nno newline at the end\r\n')
    })

    it('the stored form is dot-stuffed (a relay sees `..`), get_data unstuffs', async () => {
      const { t } = await withMessage()
      const s = await spool('.one\n..two\n')
      await writeBody(t, s, 2)
      await s.dispose()
      assert.equal(await read(t.message_stream, { skip_headers: true }), '.one\r\n..two\r\n')
      assert.equal(
        await read(t.message_stream, { skip_headers: true, dot_stuffed: false }),
        '..one\r\n...two\r\n',
      )
    })

    it('the new stream shares the live header list', async () => {
      const { t } = await withMessage()
      const s = await spool('body\n')
      await writeBody(t, s, 3)
      await s.dispose()
      writeHeaders(t, [...headerFields(t), { name: 'X-After', value: ' swap' }])
      assert.match(await read(t.message_stream), /\r\nX-After: swap\r\n\r\nbody\r\n$/)
    })

    it('an empty replacement body', async () => {
      const { t } = await withMessage()
      const s = await spool('')
      await writeBody(t, s, 4)
      await s.dispose()
      assert.equal(await read(t.message_stream, { skip_headers: true }), '')
      assert.match(await read(t.message_stream), /\r\n\r\n$/)
    })
  })

  describe('writeQuarantine', () => {
    const held = { kind: 'hold' as const, reason: 'one: virus\r\nfound', milters: ['one'] }

    it('writes <dir>/<YYYYMMDD>/<uuid>.eml (the plain message) and <uuid>.json (envelope, reason)', async () => {
      const { c, t } = await withMessage()
      transactionState(t).mailArgs = { SIZE: '400', BODY: '8BITMIME' }
      const file = await writeQuarantine(c, t, tmp, held)
      const day = new Date().toISOString().slice(0, 10).replace(/-/g, '')
      assert.equal(file, path.join(tmp, day, `${t.uuid}.eml`))
      const text = fs.readFileSync(file, 'utf8')
      assert.ok(text.startsWith('Received: '), text.slice(0, 80))
      assert.ok(text.endsWith('\r\n\r\nBody line one\r\n.starts with a dot\r\nlast line\r\n'))
      // The message can still be read afterwards (delivery, another plugin).
      assert.equal(await read(t.message_stream), text)
      const meta = JSON.parse(fs.readFileSync(path.join(tmp, day, `${t.uuid}.json`), 'utf8'))
      assert.equal(meta.version, 1)
      assert.equal(meta.id, t.uuid)
      assert.equal(meta.transaction, t.uuid)
      assert.equal(meta.reason, 'one: virus found')
      assert.deepEqual(meta.milters, ['one'])
      assert.equal(meta.kind, 'hold')
      assert.deepEqual(meta.sender, {
        address: 'sender@example.org',
        args: ['SIZE=400', 'BODY=8BITMIME'],
      })
      assert.deepEqual(meta.recipients, [
        { address: 'a@example.com', args: [] },
        { address: 'b@example.com', args: [] },
      ])
      assert.deepEqual(meta.client, {
        ip: '192.0.2.10',
        host: c.remote.host ?? '',
        helo: 'client.example.net',
      })
      assert.ok(!Number.isNaN(Date.parse(meta.time)))
    })

    it("stores CHGFROM's and ADDRCPT_PAR's arguments from the envelope edits", async () => {
      const { c, t } = await withMessage()
      transactionState(t).mailArgs = { SIZE: '400' }
      writeEnvelope(t, {
        from: { address: 'bounce@example.org', args: 'RET=HDRS' },
        rcpts: [{ address: 'a@example.com' }, { address: 'p@example.net', args: 'NOTIFY=NEVER' }],
      })
      await writeQuarantine(c, t, tmp, held)
      const day = new Date().toISOString().slice(0, 10).replace(/-/g, '')
      const meta = JSON.parse(fs.readFileSync(path.join(tmp, day, `${t.uuid}.json`), 'utf8'))
      assert.deepEqual(meta.sender, { address: 'bounce@example.org', args: ['RET=HDRS'] })
      assert.deepEqual(meta.recipients, [
        { address: 'a@example.com', args: [] },
        { address: 'p@example.net', args: ['NOTIFY=NEVER'] },
      ])
    })

    it('creates the directory, and refuses to overwrite an existing copy', async () => {
      const { c, t } = await withMessage()
      const dir = path.join(tmp, 'deep', 'er')
      await writeQuarantine(c, t, dir, held)
      await assert.rejects(writeQuarantine(c, t, dir, held), /EEXIST/)
    })
  })
})
