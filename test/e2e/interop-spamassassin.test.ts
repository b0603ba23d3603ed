/**
 * Interoperability: SpamAssassin through Haraka with the plugin. The real Debian spamd and
 * spamass-milter (unchanged) run as our own processes on loopback, offline (spamd -L, local
 * rules only); Haraka delivers through queue/smtp_forward to a sink. GTUBE makes the verdict
 * deterministic (score 1000 from a local body rule).
 *
 * Two spamass-milter instances share one spamd:
 * - `reject`: `spamass-milter -r 15` rejects mail scoring 15 or more at end of message
 *   (SMFIR_REPLYCODE "550 5.7.1 Blocked by SpamAssassin"), tags the rest;
 * - `tag`: no -r, spam is only tagged: X-Spam-* headers, Subject rewritten and the body
 *   replaced by SpamAssassin's report (report_safe 1).
 */
import assert from 'node:assert/strict'

import {
  assertSpamAssassinInstalled,
  startSpamassMilter,
  startSpamd,
  stopAllSpamAssassin,
  type RunningSpamd,
} from '../helpers/daemons/spamassassin'
import { startHaraka, stopAllHarakas } from '../helpers/haraka'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'
/** Matches the local rule HARAKA_MILTER_INTEROP_MEDIUM (score 8) in the fixture local.cf. */
const MEDIUM_SPAM_MARKER = 'haraka-milter-interop-medium-spam'

let seq = 0

function rfc2822Date(d = new Date()): string {
  // 'Mon, 23 Nov 2026 22:02:08 GMT' -> 'Mon, 23 Nov 2026 22:02:08 +0000'
  return d.toUTCString().replace(/GMT$/, '+0000')
}

function message(subject: string, bodyLines: string[]): { id: string; data: string } {
  seq++
  const id = `<sa-interop-${seq}.${process.pid}@example.org>`
  const data = [
    'From: Alice Example <alice@example.org>',
    'To: Bob Example <bob@example.com>',
    `Subject: ${subject}`,
    `Date: ${rfc2822Date()}`,
    `Message-Id: ${id}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    ...bodyLines,
    '',
  ].join('\r\n')
  return { id, data }
}

const CLEAN_BODY = [
  'Hi Bob,',
  '',
  'shall we meet for lunch on Thursday at noon? The usual place is fine with me.',
  '',
  'Alice',
]

function header(m: SinkMessage, name: string): string {
  const values = headerValues(m, name)
  assert.equal(values.length, 1, `exactly one ${name} header: ${JSON.stringify(values)}`)
  return values[0]!.replace(/\r?\n[ \t]+/g, ' ')
}

/** The score in an X-Spam-Status value: 'Yes, score=1000.0 required=5.0 ...' -> 1000. */
function score(status: string): number {
  const m = /\bscore=(-?[\d.]+)/.exec(status)
  assert.ok(m, `no score in X-Spam-Status: ${status}`)
  return Number(m[1])
}

/** spamd's verdict line for a GTUBE message: spam, score about 1000 (GTUBE scores 1000). */
function assertGtubeVerdict(line: string): void {
  const m = /result: Y (\d+) - (\S+)/.exec(line)
  assert.ok(m, line)
  assert.ok(Number(m[1]) >= 900, line)
  assert.ok(m[2]!.split(',').includes('GTUBE'), line)
}

describe('interop: SpamAssassin (spamass-milter + spamd) through Haraka', function () {
  this.timeout(120000)
  let sink: Sink
  let spamd: RunningSpamd
  let rejectPort: number
  let tagPort: number
  let harakaLog: () => string

  before(async function () {
    this.timeout(90000)
    assertSpamAssassinInstalled()
    sink = await startSink()
    spamd = await startSpamd()
    const [rejecting, tagging] = await Promise.all([
      startSpamassMilter({ spamdPort: spamd.port, args: ['-r', '15'] }),
      startSpamassMilter({ spamdPort: spamd.port }),
    ])
    rejectPort = await freePort()
    tagPort = await freePort()
    const haraka = await startHaraka({
      listeners: [`127.0.0.1:${rejectPort}`, `127.0.0.1:${tagPort}`],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `
[main]
milters = sa_reject, sa_tag
default_action = tempfail
connect_timeout = 5
command_timeout = 10
content_timeout = 60

[milter.sa_reject]
socket = ${rejecting.socket}

[milter.sa_tag]
socket = ${tagging.socket}

[listener.reject]
listen = 127.0.0.1:${rejectPort}
milters = sa_reject

[listener.tag]
listen = 127.0.0.1:${tagPort}
milters = sa_tag
`,
      },
    })
    harakaLog = () => haraka.log()
  })

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      process.stderr.write(
        `--- spamd log tail:\n${spamd?.output().split('\n').slice(-20).join('\n')}\n`,
      )
      process.stderr.write(
        `--- Haraka log tail:\n${harakaLog?.().split('\n').slice(-40).join('\n')}\n`,
      )
    }
    sink?.clear()
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllSpamAssassin()
    await sink?.stop()
  })

  function send(port: number, data: string): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data,
    })
  }

  async function delivered(): Promise<SinkMessage> {
    const [m] = await sink.waitForMessages(1, 20000)
    assert.ok(m)
    return m
  }

  /** spamd's "result:" log line for the message with this Message-Id. */
  function spamdResult(id: string): string {
    const line = spamd
      .output()
      .split('\n')
      .find((l) => l.includes('spamd: result:') && l.includes(`mid=${id}`))
    assert.ok(line, `spamd logged no result for ${id}:\n${spamd.output()}`)
    return line
  }

  it('rejects GTUBE at end of data with spamass-milter -r 15: 550 5.7.1 Blocked by SpamAssassin', async () => {
    const m = message('cheap meds', ['Buy now!', '', GTUBE])
    const r = await send(rejectPort, m.data)
    assert.equal(r.replies.data?.code, 354)
    assert.equal(r.replies.message?.code, 550, JSON.stringify(r.replies.message))
    assert.equal(r.replies.message?.text, '5.7.1 Blocked by SpamAssassin')
    assert.equal(r.accepted, false)
    assertGtubeVerdict(spamdResult(m.id))
    assert.equal(sink.messages.length, 0)
  })

  it('delivers spam below the -r threshold, tagged (local rule, score 8 < 15)', async () => {
    const m = message('medium spam', ['Hello,', '', `this message carries ${MEDIUM_SPAM_MARKER}.`])
    const r = await send(rejectPort, m.data)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const msg = await delivered()
    assert.deepEqual(headerValues(msg, 'X-Spam-Flag'), ['YES'])
    const status = header(msg, 'X-Spam-Status')
    assert.match(
      status,
      /^Yes, score=[\d.]+ required=5\.0 tests=.*\bHARAKA_MILTER_INTEROP_MEDIUM\b/,
    )
    // 8 from the local rule, give or take SpamAssassin's own small scores (ALL_TRUSTED -1...)
    assert.ok(score(status) >= 5 && score(status) < 15, status)
    assert.deepEqual(headerValues(msg, 'Message-Id'), [m.id])
  })

  it('tag mode: GTUBE is delivered with X-Spam-Flag: YES, the Subject rewritten and the report body', async () => {
    const m = message('cheap meds', ['Buy now!', '', GTUBE])
    const r = await send(tagPort, m.data)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const msg = await delivered()
    assert.deepEqual(headerValues(msg, 'X-Spam-Flag'), ['YES'])
    const status = header(msg, 'X-Spam-Status')
    assert.match(status, /^Yes, score=\d+\.\d required=5\.0 tests=.*\bGTUBE\b/)
    assert.ok(score(status) >= 900, status)
    assert.match(header(msg, 'X-Spam-Checker-Version'), /^SpamAssassin 4\.\d+\.\d+ /)
    assert.match(header(msg, 'X-Spam-Level'), /^\*{50}$/)
    assert.deepEqual(headerValues(msg, 'Subject'), ['[SPAM] cheap meds'])
    // report_safe 1: the original is attached to SpamAssassin's report (SMFIR_REPLBODY and a
    // changed Content-Type)
    const contentType = header(msg, 'Content-Type')
    const boundary = /^multipart\/mixed; boundary="([^"]+)"$/.exec(contentType)
    assert.ok(boundary, contentType)
    const body = msg.body.toString()
    assert.ok(body.includes(`--${boundary[1]}\r\n`), body)
    assert.match(body, /Spam detection software, running on the system/)
    assert.match(body, /Content-Type: message\/rfc822; x-spam-type=original/)
    assert.ok(body.includes(GTUBE), body)
    assert.ok(body.includes(`Message-Id: ${m.id}`), body)
    assertGtubeVerdict(spamdResult(m.id))
  })

  it('passes a clean message unchanged but for X-Spam-Status: No and X-Spam-Checker-Version', async () => {
    for (const port of [tagPort, rejectPort]) {
      const m = message('lunch on thursday', CLEAN_BODY)
      const r = await send(port, m.data)
      assert.equal(r.accepted, true, JSON.stringify(r.replies))
      const msg = await delivered()
      const status = header(msg, 'X-Spam-Status')
      assert.match(status, /^No, score=-?[\d.]+ required=5\.0 tests=/)
      assert.ok(score(status) < 5, status)
      assert.match(header(msg, 'X-Spam-Checker-Version'), /^SpamAssassin 4\.\d+\.\d+ /)
      assert.deepEqual(headerValues(msg, 'X-Spam-Flag'), [])
      assert.deepEqual(headerValues(msg, 'Subject'), ['lunch on thursday'])
      assert.equal(header(msg, 'Content-Type'), 'text/plain; charset=us-ascii')
      assert.equal(msg.body.toString(), `${CLEAN_BODY.join('\r\n')}\r\n`)
      assert.match(spamdResult(m.id), /result: \. -?[\d.]+ - /)
      sink.clear()
    }
  })
})
