/**
 * Interoperability: MIMEDefang (Debian 12 package `mimedefang`, 3.3), unchanged, as a milter
 * for Haraka through this plugin: `mimedefang-multiplexor` with the filter rules of
 * test/fixtures/mimedefang/mimedefang-filter, and `mimedefang -y` on inet:PORT@127.0.0.1.
 *
 * MIMEDefang registers with libmilter asking for every action it may use (the message edits,
 * recipients, sender, quarantine) and refuses an MTA that offers fewer; it gets them all from
 * our full offer (protocol 6, actions 0x1ff). Each effect is MIMEDefang's own, asserted on what
 * the receiving sink gets or the SMTP client is told: headers added (ADDHEADER); an .exe
 * attachment replaced by a warning (Content-Type re-set with CHGHEADER, body replaced with
 * REPLBODY); a bounce (REPLYCODE 554 5.7.1); envelope and header edits (ADDRCPT, DELRCPT,
 * CHGFROM, CHGHEADER, INSHEADER).
 *
 * One MIMEDefang and one Haraka for the file.
 */
import assert from 'node:assert/strict'

import { socketMilter } from '../helpers/check'
import { runCheck } from '../../lib/cli/check'
import {
  assertMimeDefangInstalled,
  startMimeDefang,
  stopAllMimeDefang,
  type RunningMimeDefang,
} from '../helpers/daemons/mimedefang'
import { startHaraka, type RunningHaraka } from '../helpers/haraka'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const BOUNDARY = '=-=-=interop-boundary-42=-=-='

/** The "program": its base64 must not survive the filter. */
const EXE_BYTES = Buffer.from('MZ\x90\x00\x03\x00\x00\x00EVIL-PAYLOAD-MARKER-0123456789', 'latin1')
const EXE_BASE64 = EXE_BYTES.toString('base64')

const TEXT_PART = 'Hi Bob,\r\n\r\nhere is the program you asked for.\r\n\r\nAlice\r\n'

function headerBlock(subject: string, id: string, extra: string[] = []): string[] {
  return [
    ...extra,
    'From: Alice <alice@example.org>',
    'To: Bob <bob@example.com>',
    `Subject: ${subject}`,
    'Date: Mon, 23 Nov 2026 10:00:00 +0000',
    `Message-Id: <${id}@example.org>`,
    'MIME-Version: 1.0',
  ]
}

/** multipart/mixed: a text part and an `evil.exe` attachment. */
function withAttachment(subject: string, id: string, extra: string[] = []): string {
  return [
    ...headerBlock(subject, id, extra),
    `Content-Type: multipart/mixed; boundary="${BOUNDARY}"`,
    '',
    'This is a multi-part message in MIME format.',
    '',
    `--${BOUNDARY}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    TEXT_PART,
    `--${BOUNDARY}`,
    'Content-Type: application/octet-stream; name="evil.exe"',
    'Content-Disposition: attachment; filename="evil.exe"',
    'Content-Transfer-Encoding: base64',
    '',
    EXE_BASE64,
    '',
    `--${BOUNDARY}--`,
    '',
  ].join('\r\n')
}

const CLEAN_BODY = 'Hi Bob,\r\n\r\nlunch on Friday at noon?\r\n\r\nAlice\r\n'

function clean(subject: string, id: string, extra: string[] = []): string {
  return [
    ...headerBlock(subject, id, extra),
    'Content-Type: text/plain; charset=us-ascii',
    '',
    CLEAN_BODY,
  ].join('\r\n')
}

function milterIni(socket: string): string {
  return `
[main]
milters = mimedefang
default_action = tempfail

[milter.mimedefang]
socket = ${socket}
connect_timeout = 10
command_timeout = 30
content_timeout = 60
`
}

function names(m: SinkMessage): string[] {
  return m.headers.map(([n]) => n)
}

function only(m: SinkMessage, name: string): string {
  const values = headerValues(m, name)
  assert.equal(
    values.length,
    1,
    `exactly one ${name} header expected, got ${JSON.stringify(values)}`,
  )
  return values[0]!
}

/** Haraka's transaction id, from its Received header ("with ESMTP id <uuid>.1"). */
function transactionId(m: SinkMessage): string {
  const match = /\bid ([0-9A-F-]{36}\.\d+)/.exec(only(m, 'Received'))
  assert.ok(match, `no transaction id in ${only(m, 'Received')}`)
  return match[1]!
}

describe('interop: MIMEDefang milter (mimedefang -y with mimedefang-multiplexor)', function () {
  this.timeout(120000)
  let md: RunningMimeDefang
  let haraka: RunningHaraka
  let sink: Sink

  before(async function () {
    this.timeout(120000)
    assertMimeDefangInstalled()
    sink = await startSink()
    md = await startMimeDefang()
    haraka = await startHaraka({
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: { 'milter.ini': milterIni(md.socket) },
    })
  })

  afterEach(() => sink?.clear())

  after(async function () {
    this.timeout(60000)
    await haraka?.stop()
    await stopAllMimeDefang()
    await sink?.stop()
  })

  function send(data: string, rcpts = ['bob@example.com']): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', haraka.port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts,
      data,
    })
  }

  async function deliveredAfter(r: SendMailResult): Promise<SinkMessage> {
    assert.equal(
      r.accepted,
      true,
      `not accepted: ${JSON.stringify(r.last)}\n${haraka.log().slice(-3000)}`,
    )
    const [m] = await sink.waitForMessages(1, 20000)
    assert.ok(m)
    return m
  }

  it('negotiates protocol 6 with the full offer (actions 0x1ff) and sets its macro lists', async () => {
    const report = await runCheck({
      milter: md.socket,
      def: socketMilter(md.socket),
      message: Buffer.from(clean('negotiation', 'md-neg')),
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      clientIp: '127.0.0.1',
      clientName: 'localhost',
      helo: 'localhost',
      macros: {},
      trace: false,
    })
    assert.equal(report.verdict, 'accept', JSON.stringify(report))
    assert.ok(report.negotiated)
    assert.equal(report.negotiated.version, 6)
    // MIMEDefang takes every action offered, SETSYMLIST included (-y)
    assert.equal(report.negotiated.actionsHex, '0x1ff')
    // ... and wants every stage, each with a reply (no NO_* / NR_* flags)
    assert.deepEqual(report.negotiated.protocol, [])
    for (const stage of ['connect', 'helo', 'mail', 'rcpt', 'eom']) {
      const wanted = report.negotiated.macrosRequested[stage]
      assert.ok(
        wanted,
        `no macro list for ${stage}: ${JSON.stringify(report.negotiated.macrosRequested)}`,
      )
      for (const macro of ['i', 'j', '_', '{daemon_name}', '{mail_addr}', '{rcpt_addr}'])
        assert.ok(wanted.includes(macro), `${macro} requested at ${stage}: ${wanted.join(' ')}`)
    }
  })

  it('replaces an .exe attachment with a warning and adds its headers', async () => {
    const r = await send(withAttachment('the program', 'md-exe'))
    const m = await deliveredAfter(r)
    const body = m.body.toString('latin1')

    assert.deepEqual(headerValues(m, 'X-MIMEDefang-Test'), ['yes'])
    assert.match(only(m, 'X-Scanned-By'), /^MIMEDefang 3\.\d/)
    // the attachment is gone: neither its bytes nor its file name as an attachment
    assert.ok(!body.includes(EXE_BASE64), body)
    assert.ok(!body.includes('application/octet-stream'), body)
    assert.ok(!/filename="evil\.exe"/.test(body), body)
    // ... replaced by MIMEDefang's warning, naming it
    assert.match(body, /The attachment evil\.exe was removed by the interop test filter\./)
    // the text part is still there, and the MIME structure still holds
    assert.ok(body.includes('here is the program you asked for.'), body)
    assert.equal(only(m, 'Content-Type'), `multipart/mixed; boundary="${BOUNDARY}"`)
    assert.equal(body.split(`--${BOUNDARY}\r\n`).length - 1, 2, body)
    assert.ok(body.includes(`--${BOUNDARY}--`), body)
    // MIMEDefang writes the new body with bare LF: it arrives with CRLF only
    assert.ok(!/[^\r]\n/.test(body), 'bare LF in the delivered body')
  })

  it('passes a clean message unchanged apart from its headers; it saw the SMTP envelope', async () => {
    const r = await send(clean('Lunch on Friday', 'md-clean'))
    const m = await deliveredAfter(r)
    assert.equal(m.body.toString('latin1'), CLEAN_BODY)
    assert.deepEqual(headerValues(m, 'X-MIMEDefang-Test'), ['yes'])
    assert.match(only(m, 'X-Scanned-By'), /^MIMEDefang 3\.\d/)
    // what MIMEDefang learnt from CONNECT, HELO, MAIL, RCPT and the {i} macro (SETSYMLIST)
    assert.equal(
      only(m, 'X-MIMEDefang-Envelope'),
      `relay=127.0.0.1 helo=client.example.org sender=<alice@example.org> rcpts=<bob@example.com> qid=${transactionId(m)}`,
    )
    assert.equal(m.mailFrom, 'alice@example.org')
    assert.deepEqual(m.rcptTo, ['bob@example.com'])
  })

  it('bounces with the filter’s 554 5.7.1 reply; nothing is delivered', async () => {
    const r = await send(clean('mimedefang-bounce please', 'md-bounce'))
    assert.equal(r.accepted, false)
    assert.equal(r.last?.code, 554, JSON.stringify(r.last))
    assert.equal(r.last?.enhanced, '5.7.1')
    assert.equal(r.last?.text, '5.7.1 Refused by the interop test filter')
    assert.equal(sink.messages.length, 0)
  })

  it('changes sender, recipients and headers (CHGFROM, ADDRCPT, DELRCPT, CHGHEADER, INSHEADER)', async () => {
    const r = await send(clean('mimedefang-reroute please', 'md-reroute', ['X-Remove-Me: gone']))
    const m = await deliveredAfter(r)
    assert.equal(m.mailFrom, 'bounces@example.org')
    assert.deepEqual(m.rcptTo, ['carol@example.net'])
    assert.equal(only(m, 'Subject'), '[rerouted] mimedefang-reroute')
    assert.deepEqual(headerValues(m, 'X-Remove-Me'), [])
    // INSHEADER at 0: above everything, Haraka's own Received header included (as in Sendmail)
    assert.deepEqual(names(m).slice(0, 3), ['X-Inserted-Top', 'Received', 'From'])
    assert.deepEqual(headerValues(m, 'X-Inserted-Top'), ['first'])
    assert.equal(m.body.toString('latin1'), CLEAN_BODY)
  })
})
