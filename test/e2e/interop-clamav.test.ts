/**
 * Interoperability: ClamAV through Haraka with the plugin. The real Debian clamd and
 * clamav-milter (unchanged) run as our own processes, offline: clamd's only database is a
 * one-line hash signature (`.hdb`) of test/fixtures/clamav/test-payload.txt, written by this
 * test, so a message carrying that file as an attachment is "infected" and nothing else is.
 * Haraka delivers through queue/smtp_forward to a sink.
 *
 * Three clamav-milter instances share one clamd, one Haraka listener each:
 * - `reject`: OnInfected Reject with RejectMsg "%v": SMFIR_REPLYCODE 550 5.7.1 naming the virus;
 * - `reject_default`: OnInfected Reject without RejectMsg: a bare SMFIR_REJECT;
 * - `quarantine`: OnInfected Quarantine (the Debian default): SMFIR_QUARANTINE.
 * All run with AddHeader Replace: clean mail gets X-Virus-Scanned / X-Virus-Status: Clean,
 * replacing any such headers already present.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'

import {
  CLAMAV_FIXTURES,
  assertClamAvInstalled,
  startClamavMilter,
  startClamd,
  stopAllClamAv,
  type RunningClamavMilter,
  type RunningClamd,
} from '../helpers/daemons/clamav'
import { startHaraka, stopAllHarakas } from '../helpers/haraka'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { sendMailTo, type SendMailResult } from '../helpers/smtp-client'

const SIGNATURE_NAME = 'Haraka.Milter.Interop.Test'
/** clamd appends .UNOFFICIAL to the names of signatures that are not from an official database. */
const REPORTED_NAME = `${SIGNATURE_NAME}.UNOFFICIAL`
const PAYLOAD = readFileSync(path.join(CLAMAV_FIXTURES, 'test-payload.txt'))
const REPORT_HOSTNAME = 'clamav.haraka.test'

let seq = 0

function rfc2822Date(d = new Date()): string {
  return d.toUTCString().replace(/GMT$/, '+0000')
}

function base64Lines(data: Buffer): string[] {
  return data.toString('base64').match(/.{1,76}/g) ?? []
}

/** A multipart message with a text part and `attachment` as application/octet-stream. */
function messageWithAttachment(
  attachment: Buffer,
  extraHeaders: string[] = [],
): { id: string; data: string; textPart: string } {
  seq++
  const id = `<clamav-interop-${seq}.${process.pid}@example.org>`
  const boundary = `=_haraka_milter_interop_${seq}`
  const textPart = 'Please find the document attached.'
  const data = [
    'From: Alice Example <alice@example.org>',
    'To: Bob Example <bob@example.com>',
    'Subject: the document',
    `Date: ${rfc2822Date()}`,
    `Message-Id: ${id}`,
    ...extraHeaders,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    textPart,
    '',
    `--${boundary}`,
    'Content-Type: application/octet-stream; name="document.bin"',
    'Content-Disposition: attachment; filename="document.bin"',
    'Content-Transfer-Encoding: base64',
    '',
    ...base64Lines(attachment),
    `--${boundary}--`,
    '',
  ].join('\r\n')
  return { id, data, textPart }
}

describe('interop: ClamAV (clamav-milter + clamd) through Haraka', function () {
  this.timeout(120000)
  let sink: Sink
  let clamd: RunningClamd
  let milters: Record<'reject' | 'rejectDefault' | 'quarantine', RunningClamavMilter>
  let ports: Record<'reject' | 'rejectDefault' | 'quarantine', number>
  let quarantineDir: string
  let harakaLog: () => string

  before(async function () {
    this.timeout(90000)
    assertClamAvInstalled()
    sink = await startSink()
    quarantineDir = await mkdtemp(path.join(os.tmpdir(), 'clamav-quarantine-'))
    clamd = await startClamd({ signatures: [{ name: SIGNATURE_NAME, content: PAYLOAD }] })
    const common = {
      AddHeader: 'Replace',
      ReportHostname: REPORT_HOSTNAME,
    }
    const [reject, rejectDefault, quarantine] = await Promise.all([
      startClamavMilter({
        clamdSocket: clamd.clamdSocket,
        settings: { ...common, OnInfected: 'Reject', RejectMsg: '"Virus found: %v"' },
      }),
      startClamavMilter({
        clamdSocket: clamd.clamdSocket,
        settings: { ...common, OnInfected: 'Reject' },
      }),
      startClamavMilter({
        clamdSocket: clamd.clamdSocket,
        settings: { ...common, OnInfected: 'Quarantine' },
      }),
    ])
    milters = { reject, rejectDefault, quarantine }
    ports = {
      reject: await freePort(),
      rejectDefault: await freePort(),
      quarantine: await freePort(),
    }
    const haraka = await startHaraka({
      listeners: [ports.reject, ports.rejectDefault, ports.quarantine].map((p) => `127.0.0.1:${p}`),
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `
[main]
milters = clamav_reject, clamav_reject_default, clamav_quarantine
default_action = tempfail
connect_timeout = 5
command_timeout = 10
content_timeout = 60

[quarantine]
action = hold
dir = ${quarantineDir}

[milter.clamav_reject]
socket = ${reject.socket}

[milter.clamav_reject_default]
socket = ${rejectDefault.socket}

[milter.clamav_quarantine]
socket = ${quarantine.socket}

[listener.reject]
listen = 127.0.0.1:${ports.reject}
milters = clamav_reject

[listener.reject_default]
listen = 127.0.0.1:${ports.rejectDefault}
milters = clamav_reject_default

[listener.quarantine]
listen = 127.0.0.1:${ports.quarantine}
milters = clamav_quarantine
`,
      },
    })
    harakaLog = () => haraka.log()
  })

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      for (const [name, m] of Object.entries(milters ?? {})) {
        process.stderr.write(`--- clamav-milter ${name} log:\n${m.log()}\n`)
      }
      process.stderr.write(
        `--- clamd log tail:\n${clamd?.log().split('\n').slice(-10).join('\n')}\n`,
      )
      process.stderr.write(
        `--- Haraka log tail:\n${harakaLog?.().split('\n').slice(-40).join('\n')}\n`,
      )
    }
    sink?.clear()
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllClamAv()
    await sink?.stop()
    if (quarantineDir) await rm(quarantineDir, { recursive: true, force: true })
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

  function assertCleanHeaders(msg: SinkMessage): void {
    assert.deepEqual(headerValues(msg, 'X-Virus-Status'), ['Clean'])
    const scanned = headerValues(msg, 'X-Virus-Scanned')
    assert.equal(scanned.length, 1, JSON.stringify(scanned))
    assert.match(
      scanned[0]!,
      new RegExp(`^clamav-milter \\d+\\.\\d+\\.\\d+ at ${REPORT_HOSTNAME}$`),
    )
  }

  it('clamd itself detects the test payload with the one-signature database', async () => {
    assert.equal(await clamd.scan(PAYLOAD), `stream: ${REPORTED_NAME} FOUND`)
    assert.equal(await clamd.scan(Buffer.concat([PAYLOAD, Buffer.from('x')])), 'stream: OK')
  })

  it('rejects a message with an infected attachment at end of data: 550 5.7.1 with the virus name', async () => {
    const m = messageWithAttachment(PAYLOAD)
    const r = await send(ports.reject, m.data)
    assert.equal(r.replies.data?.code, 354)
    assert.equal(r.replies.message?.code, 550, JSON.stringify(r.replies.message))
    assert.equal(r.replies.message?.text, `5.7.1 Virus found: ${REPORTED_NAME}`)
    assert.equal(r.accepted, false)
    assert.equal(sink.messages.length, 0)
    // LogInfected Full: the envelope and Message-Id come from the macros the plugin sent
    assert.match(
      milters.reject.log(),
      new RegExp(
        `Message [0-9A-F-]{36}\\.1 from <alice@example\\.org> to <bob@example\\.com> with subject 'the document' message-id '${escapeRegExp(m.id)}' date '[^']+' infected by ${escapeRegExp(REPORTED_NAME)}$`,
        'm',
      ),
    )
  })

  it('rejects with the plugin’s default end-of-message reply when clamav-milter sends a bare REJECT', async () => {
    const m = messageWithAttachment(PAYLOAD)
    const r = await send(ports.rejectDefault, m.data)
    assert.equal(r.replies.message?.code, 554, JSON.stringify(r.replies.message))
    assert.equal(r.replies.message?.enhanced, '5.7.1')
    assert.equal(r.accepted, false)
    assert.equal(sink.messages.length, 0)
  })

  it('quarantines (holds) a message with an infected attachment with OnInfected Quarantine', async () => {
    const m = messageWithAttachment(PAYLOAD)
    const r = await send(ports.quarantine, m.data)
    assert.equal(r.replies.message?.code, 250, JSON.stringify(r.replies.message))
    assert.equal(sink.messages.length, 0)
    const held = readdirSync(quarantineDir, { recursive: true, withFileTypes: true }).filter(
      (e) => e.isFile() && e.name.endsWith('.eml'),
    )
    assert.equal(held.length, 1, JSON.stringify(held.map((e) => e.name)))
    const emlPath = path.join(held[0]!.parentPath, held[0]!.name)
    const copy = readFileSync(emlPath, 'utf8')
    const meta = JSON.parse(readFileSync(emlPath.replace(/\.eml$/, '.json'), 'utf8'))
    assert.equal(meta.reason, 'clamav_quarantine: quarantined by clamav-milter')
    // the held copy carries clamav-milter's header edits (AddHeader on infected mail)
    const headerBlock = copy.slice(0, copy.indexOf('\r\n\r\n') + 2)
    assert.ok(headerBlock.includes(`Message-Id: ${m.id}\r\n`), headerBlock)
    assert.ok(headerBlock.includes(`X-Virus-Status: Infected (${REPORTED_NAME})\r\n`), headerBlock)
    assert.match(
      headerBlock,
      /X-Virus-Scanned: clamav-milter \d+\.\d+\.\d+ at clamav\.haraka\.test\r\n/,
    )
    assert.ok(copy.includes(base64Lines(PAYLOAD)[0]!), copy)
  })

  it('passes a clean message, adding X-Virus-Scanned and X-Virus-Status: Clean', async () => {
    for (const port of [ports.reject, ports.rejectDefault, ports.quarantine]) {
      const clean = Buffer.concat([PAYLOAD, Buffer.from('x')])
      const m = messageWithAttachment(clean)
      const r = await send(port, m.data)
      assert.equal(r.accepted, true, JSON.stringify(r.replies))
      const msg = await delivered()
      assertCleanHeaders(msg)
      assert.deepEqual(headerValues(msg, 'Message-Id'), [m.id])
      assert.ok(msg.body.toString().includes(base64Lines(clean)[0]!))
      sink.clear()
    }
  })

  it('AddHeader Replace: replaces X-Virus-* headers the message already carries', async () => {
    const m = messageWithAttachment(Buffer.from('harmless\n'), [
      'X-Virus-Scanned: forged by the sender',
      'X-Virus-Status: Clean, honestly',
    ])
    const r = await send(ports.reject, m.data)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const msg = await delivered()
    assertCleanHeaders(msg)
  })
})

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
