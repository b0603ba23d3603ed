/**
 * Interoperability: rspamd (Debian 12 package `rspamd`, 3.4), unchanged, as a milter for
 * Haraka through this plugin: its proxy worker with `milter = yes` and `self_scan = yes`,
 * offline, with the stock rules plus two test rules (test/fixtures/rspamd).
 *
 * Each effect is rspamd's own, asserted on what the SMTP client is told or what the receiving
 * sink gets: GTUBE is refused with rspamd's 554 5.7.1; a clean message gets the milter_headers
 * headers (ADDHEADER), Authentication-Results and a DKIM-Signature (INSHEADER at 1) that a real
 * verifier accepts; upstream X-Spam flags are deleted (CHGHEADER with an empty value); the "add
 * header" action replaces them with X-Spam: Yes (delete, then CHGHEADER index 1 of a header no
 * longer there = add); "rewrite subject" changes the Subject in place (CHGHEADER).
 *
 * One rspamd and one Haraka for the file (rspamd needs a few seconds to start).
 */
import assert from 'node:assert/strict'

import { socketMilter } from '../helpers/check'
import { runCheck } from '../../lib/cli/check'
import {
  assertRspamdInstalled,
  startRspamd,
  stopAllRspamd,
  type RunningRspamd,
} from '../helpers/daemons/rspamd'
import { startHaraka, type RunningHaraka } from '../helpers/haraka'
import { verifyWithOpenDkim } from '../helpers/opendkim'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const DAEMON_NAME = 'haraka-interop'

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'

const BODY = [
  'Hi Bob,',
  '',
  'shall we have lunch on Friday at noon? The usual place is fine with me.',
  '',
  'Alice',
  '',
].join('\r\n')

/**
 * The current time as an RFC 5322 date: rspamd scores a Date far from now (DATE_IN_PAST,
 * DATE_IN_FUTURE), which would move the messages between actions.
 */
function rfc5322Date(d = new Date()): string {
  return d.toUTCString().replace(/GMT$/, '+0000')
}

/** A plain, well-formed message from alice@example.org to bob@example.com. */
function message(
  subject: string,
  opts: { id: string; extraHeaders?: string[]; body?: string },
): string {
  return [
    'From: Alice <alice@example.org>',
    'To: Bob <bob@example.com>',
    `Subject: ${subject}`,
    `Date: ${rfc5322Date()}`,
    `Message-Id: <${opts.id}@example.org>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    ...(opts.extraHeaders ?? []),
    '',
    opts.body ?? BODY,
  ].join('\r\n')
}

function milterIni(socket: string): string {
  return `
[main]
milters = rspamd
daemon_name = ${DAEMON_NAME}
default_action = tempfail

[milter.rspamd]
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

/** A header value with its folds undone (CRLF + whitespace -> one space). */
function unfold(value: string): string {
  return value.replace(/\r?\n[ \t]+/g, ' ')
}

describe('interop: rspamd milter (rspamd_proxy, milter = yes)', function () {
  this.timeout(120000)
  let rspamd: RunningRspamd
  let haraka: RunningHaraka
  let sink: Sink

  before(async function () {
    this.timeout(180000)
    assertRspamdInstalled()
    sink = await startSink()
    rspamd = await startRspamd()
    haraka = await startHaraka({
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: { 'milter.ini': milterIni(rspamd.socket) },
    })
  })

  afterEach(() => sink?.clear())

  after(async function () {
    this.timeout(60000)
    await haraka?.stop()
    await stopAllRspamd()
    await sink?.stop()
  })

  function send(data: string): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', haraka.port, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
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

  /** rspamd's one log line for the message with this Message-Id. */
  function scanLog(id: string): string {
    const line = rspamd
      .output()
      .split('\n')
      .find((l) => l.includes('rspamd_task_write_log') && l.includes(`<${id}@example.org>`))
    assert.ok(
      line,
      `rspamd logged no scan of <${id}@example.org>:\n${rspamd.output().slice(-3000)}`,
    )
    return line
  }

  it('negotiates protocol 6 with the full offer (actions 0x1ff)', async () => {
    const report = await runCheck({
      milter: rspamd.socket,
      def: socketMilter(rspamd.socket),
      message: Buffer.from(message('negotiation', { id: 'rspamd-neg' })),
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
    assert.equal(report.negotiated.actionsHex, '0x1ff')
    // rspamd asks for no replies before the end of the message (NR_* for every stage)
    for (const step of ['NR_CONN', 'NR_HELO', 'NR_MAIL', 'NR_RCPT', 'NR_DATA', 'NR_HDR', 'NR_EOH'])
      assert.ok(
        report.negotiated.protocol.includes(step),
        `${step} in ${report.negotiated.protocol.join(' ')}`,
      )
  })

  it('rejects GTUBE with rspamd’s 554 5.7.1 reply; nothing is delivered', async () => {
    const r = await send(message('GTUBE test', { id: 'rspamd-gtube', body: `${GTUBE}\r\n` }))
    assert.equal(r.accepted, false)
    assert.equal(r.last?.code, 554, JSON.stringify(r.last))
    assert.equal(r.last?.enhanced, '5.7.1')
    assert.equal(r.last?.text, '5.7.1 Gtube pattern')
    assert.match(scanLog('rspamd-gtube'), /\(reject\).*GTUBE/)
    assert.equal(sink.messages.length, 0)
  })

  it('passes a clean message with rspamd’s headers and a DKIM signature that verifies', async () => {
    const r = await send(message('Lunch on Friday', { id: 'rspamd-clean' }))
    const m = await deliveredAfter(r)
    assert.equal(m.body.toString(), BODY)
    assert.match(scanLog('rspamd-clean'), /\(no action\)/)

    // ADDHEADER: milter_headers
    const result = unfold(only(m, 'X-Spamd-Result'))
    assert.match(result, /^default: False \[-?\d+\.\d\d \/ 15\.00\];/)
    // rspamd saw the SMTP envelope as sent: the symbols comparing it with the headers
    assert.match(result, /FROM_EQ_ENVFROM\(/)
    assert.match(result, /TO_MATCH_ENVRCPT_ALL\(/)
    assert.match(result, /DKIM_SIGNED\(0\.00\)\[example\.org:s=rspamd\]/)
    assert.doesNotMatch(result, /DATE_IN_|INVALID_DATE|MISSING_/)
    assert.match(only(m, 'X-Spam-Status'), /^No, score=-?\d+\.\d\d$/)
    assert.ok(only(m, 'X-Rspamd-Server').length > 0)
    // the queue id rspamd reports is the {i} macro: Haraka's transaction id (in its Received)
    const received = only(m, 'Received')
    const queueId = only(m, 'X-Rspamd-Queue-Id')
    assert.match(queueId, /^[0-9A-F-]{36}\.1$/)
    assert.ok(received.includes(queueId), `${queueId} not in Received: ${received}`)
    assert.equal(headerValues(m, 'X-Spam').length, 0)

    // INSHEADER at index 1 (Authentication-Results from milter_headers, then DKIM-Signature):
    // right after Haraka's own Received header, each new one above the previous
    assert.deepEqual(names(m).slice(0, 4), [
      'Received',
      'DKIM-Signature',
      'Authentication-Results',
      'From',
    ])
    assert.match(only(m, 'Authentication-Results'), new RegExp(`^${DAEMON_NAME};`))

    // rspamd's signature covers the headers and body exactly as delivered
    const dkim = unfold(only(m, 'DKIM-Signature'))
    assert.match(dkim, /\bd=example\.org;/)
    assert.match(dkim, /\bs=rspamd;/)
    const verification = verifyWithOpenDkim(m.raw, [rspamd.dkimKey])
    assert.equal(verification.pass, true, verification.output)
  })

  it('deletes the X-Spam flags a message arrives with (CHGHEADER, empty value)', async () => {
    const r = await send(
      message('Lunch on Friday', {
        id: 'rspamd-flags',
        extraHeaders: ['X-Spam: yes', 'X-Other: kept', 'X-Spam: forged'],
      }),
    )
    const m = await deliveredAfter(r)
    assert.equal(headerValues(m, 'X-Spam').length, 0, JSON.stringify(m.headers))
    assert.deepEqual(headerValues(m, 'X-Other'), ['kept'])
    // rspamd did see them
    assert.match(unfold(only(m, 'X-Spamd-Result')), /SPAM_FLAG\(/)
    assert.match(only(m, 'X-Spam-Status'), /^No, /)
  })

  it('"add header" action: the upstream flag is replaced by X-Spam: Yes', async () => {
    const r = await send(
      message('haraka-rspamd-spammy offer', { id: 'rspamd-spammy', extraHeaders: ['X-Spam: no'] }),
    )
    const m = await deliveredAfter(r)
    assert.match(scanLog('rspamd-spammy'), /\(add header\)/)
    // deleted (milter_headers, then the action), then CHGHEADER X-Spam #1 "Yes" on no header
    assert.deepEqual(headerValues(m, 'X-Spam'), ['Yes'])
    assert.match(only(m, 'X-Spam-Status'), /^Yes, score=\d+\.\d\d$/)
    assert.match(unfold(only(m, 'X-Spamd-Result')), /HARAKA_TEST_SPAMMY\(9\.00\)/)
    assert.equal(m.body.toString(), BODY)
  })

  it('"rewrite subject" action: the Subject is changed in place (CHGHEADER)', async () => {
    const r = await send(message('haraka-rspamd-rewrite offer', { id: 'rspamd-rewrite' }))
    const m = await deliveredAfter(r)
    assert.match(scanLog('rspamd-rewrite'), /\(rewrite subject\)/)
    assert.equal(only(m, 'Subject'), '[SPAM] haraka-rspamd-rewrite offer')
    // same place as before: after To, before Date
    const n = names(m)
    assert.equal(n.indexOf('Subject'), n.indexOf('To') + 1)
    assert.equal(n.indexOf('Date'), n.indexOf('Subject') + 1)
    assert.match(only(m, 'X-Spam-Status'), /^Yes, /)
  })

  it('stayed offline: no system resolver, no remote maps, no DNS lookups for the scans', () => {
    const log = rspamd.output()
    assert.doesNotMatch(log, /from resolv\.conf/)
    assert.doesNotMatch(log, /https?:\/\/|rspamd\.com/)
    const scans = log.split('\n').filter((l) => l.includes('rspamd_task_write_log'))
    assert.ok(scans.length >= 5, log.slice(-3000))
    for (const l of scans) assert.match(l, /dns req: 0,/)
  })
})
