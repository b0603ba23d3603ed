/**
 * One policy: the same milter conversation run through a real Haraka with
 * the plugin (real SMTP, delivered to a real receiving server) and through
 * `haraka-milter check --config milter.ini --milter NAME` gives the same
 * verdict, the same SMTP reply and the same edited message. The CLI reads
 * the very milter.ini Haraka was given, takes the definition of each
 * configured milter from it, and the envelope from the message's headers.
 * The milter is the real libmilter test filter.
 */
import assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { runCheck, type CheckReport } from '../../lib/cli/check'
import { loadConfig } from '../../lib/cli/config-file'
import { envelopeOf } from '../../lib/cli/envelope-from-headers'
import { formatHeaderBlock, parseMessage } from '../../lib/message/headers'
import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type MilterScript,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { startSink, type Sink } from '../helpers/sink'
import { SmtpClient, type Reply } from '../helpers/smtp-client'

const MESSAGE = [
  'From: Alice <alice@example.org>',
  'To: Bob <bob@example.com>',
  'Subject: parity',
  'Message-ID: <parity-1@example.org>',
  'X-Old: first',
  'X-Old: second',
  '',
  'Hello Bob,',
  '.a line starting with a dot',
  'bye',
  '',
].join('\r\n')

interface Scenario {
  name: string
  script: MilterScript
  /** Extra [milter.m] keys. */
  keys?: Record<string, string>
  /** The milter is not started. */
  down?: boolean
}

const SCENARIOS: Scenario[] = [
  { name: 'pass through', script: {} },
  {
    name: 'header edits (add, insert, change, delete)',
    script: {
      eom: [
        { op: 'addheader', name: 'X-Added', value: 'added value' },
        { op: 'insheader', index: 1, name: 'X-Inserted', value: 'inserted' },
        { op: 'chgheader', name: 'Subject', index: 1, value: 'changed subject' },
        { op: 'chgheader', name: 'X-Old', index: 2, value: '' },
      ],
    },
  },
  {
    name: 'a folded header value, flattened',
    script: { eom: [{ op: 'addheader', name: 'X-Folded', value: 'a=1;\n\tb=2;\n\tc=3' }] },
  },
  {
    name: 'a folded header value with header_folds = keep',
    script: { eom: [{ op: 'addheader', name: 'X-Folded', value: 'a=1;\n\tb=2;\n\tc=3' }] },
    keys: { header_folds: 'keep' },
  },
  {
    name: 'replaced body',
    script: { eom: [{ op: 'replacebody', text: 'new body\n.dotted\nlast line' }] },
  },
  { name: 'reject at end of message', script: { reply: { eom: 'reject' } } },
  { name: 'tempfail at end of message', script: { reply: { eom: 'tempfail' } } },
  {
    name: 'multi-line reply code at end of message',
    script: {
      reply: { eom: { code: '550', xcode: '5.7.1', lines: ['first line', 'second line'] } },
    },
  },
  {
    name: 'reply code at MAIL',
    script: { reply: { mail: { code: '553', xcode: '5.1.8', text: 'bad sender' } } },
  },
  { name: 'reject at HELO', script: { reply: { helo: 'reject' } } },
  { name: 'tempfail at CONNECT (given at MAIL)', script: { reply: { connect: 'tempfail' } } },
  {
    name: '421 at RCPT',
    script: { reply: { rcpt: { code: '421', xcode: '4.7.0', text: 'going away' } } },
  },
  {
    name: 'reply_code = enhanced_only',
    script: { reply: { mail: { code: '553', xcode: '5.1.8', text: 'bad sender' } } },
    keys: { reply_code: 'enhanced_only' },
  },
  { name: 'every recipient rejected', script: { reply: { rcpt: 'reject' } } },
  {
    name: 'every recipient rejected with a reply code',
    script: { reply: { rcpt: { code: '550', xcode: '5.1.1', text: 'no such user' } } },
  },
  {
    name: 'default_action = accept, the milter down',
    script: {},
    keys: { default_action: 'accept' },
    down: true,
  },
]

/** What the client was told in the end: 'accepted', or the refusing reply's lines. */
function harakaOutcome(
  greeting: Reply,
  replies: Array<Reply | undefined>,
): { accepted: boolean; reply?: string[] } {
  for (const r of [greeting, ...replies]) {
    if (!r) continue
    if (r.code >= 400)
      return {
        accepted: false,
        reply: r.lines.map((l, i) => `${r.code}${i < r.lines.length - 1 ? '-' : ' '}${l}`),
      }
  }
  return { accepted: true }
}

function cliOutcome(r: CheckReport): { accepted: boolean; reply?: string[] } {
  assert.notEqual(r.verdict, 'error', JSON.stringify(r.error))
  return r.verdict === 'accept' || r.verdict === 'discard'
    ? { accepted: true }
    : { accepted: false, reply: r.reply ?? [] }
}

/** The message without Haraka's own Received header (the one milters are not shown), CRLF. */
function withoutOwnReceived(raw: Buffer): string {
  const { headers, body } = parseMessage(raw, 'utf8')
  const i = headers.findIndex((h) => /^received$/i.test(h.name) && /haraka\.test/.test(h.value))
  if (i >= 0) headers.splice(i, 1)
  return formatHeaderBlock(headers) + '\r\n' + body.toString('utf8')
}

describe('one policy: haraka-milter check and the plugin answer and deliver alike', function () {
  this.timeout(120000)
  let haraka: RunningHaraka
  let sink: Sink
  let milterPort: number
  let smtpPort: number
  let milter: StartedMilter | undefined
  let written = ''
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-parity-'))

  function ini(keys: Record<string, string> = {}): string {
    const main = keys['reply_code'] ? `reply_code = ${keys['reply_code']}\n` : ''
    const own = Object.entries(keys)
      .filter(([k]) => k !== 'reply_code')
      .map(([k, v]) => `${k} = ${v}\n`)
      .join('')
    return `[main]\nmilters = m\n${main}\n[milter.m]\nsocket = inet:${milterPort}@127.0.0.1\ncommand_timeout = 5\ncontent_timeout = 5\n${own}`
  }

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    milterPort = await freePort()
    smtpPort = await freePort()
    haraka = await startHaraka({
      listeners: [`127.0.0.1:${smtpPort}`],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: { 'milter.ini': ini() },
    })
    written = ini()
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
  })

  afterEach(async () => {
    await milter?.stop()
    milter = undefined
    sink.clear()
  })

  for (const sc of SCENARIOS) {
    it(sc.name, async () => {
      const text = ini(sc.keys)
      if (text !== written) {
        await haraka.writeConfig('milter.ini', text, { waitForReload: true })
        written = text
      }
      milter = sc.down ? undefined : await startScriptedMilter(sc.script, { port: milterPort })

      // through Haraka
      const c = await SmtpClient.connect('127.0.0.1', smtpPort)
      const replies: Array<Reply | undefined> = []
      const helo = await c.command('EHLO client.example.org')
      replies.push(helo)
      if (helo.code < 400) {
        const mail = await c.command('MAIL FROM:<alice@example.org>')
        replies.push(mail)
        if (mail.code < 400) {
          const rcpt = await c.command('RCPT TO:<bob@example.com>')
          replies.push(rcpt)
          if (rcpt.code < 400) {
            const data = await c.command('DATA')
            replies.push(data)
            if (data.code === 354) replies.push(await c.sendData(MESSAGE))
          }
        }
      }
      await c.close()
      const viaHaraka = harakaOutcome(c.greeting, replies)

      // through the CLI, same milter (restarted: a fresh filter state), same milter.ini
      await milter?.stop()
      milter = sc.down ? undefined : await startScriptedMilter(sc.script, { port: milterPort })
      const file = path.join(tmp, 'milter.ini')
      fs.writeFileSync(file, text)
      const loaded = loadConfig(file)
      assert.ok(loaded.cfg, loaded.error)
      const env = envelopeOf(Buffer.from(MESSAGE))
      assert.ok(env.from !== undefined)
      let report: CheckReport | undefined
      for (const def of loaded.cfg.milters.values()) {
        report = await runCheck({
          milter: def.name,
          def,
          message: Buffer.from(MESSAGE),
          from: env.from,
          rcpts: env.rcpts,
          clientIp: '127.0.0.1',
          clientName: 'localhost',
          helo: 'client.example.org',
          macros: {},
          trace: false,
          replyCode: loaded.cfg.replyCode,
          daemonName: loaded.cfg.daemonName,
        })
      }
      assert.ok(report)
      const viaCli = cliOutcome(report)

      assert.deepEqual(viaCli, viaHaraka, 'verdict and reply')
      if (viaHaraka.accepted) {
        const [delivered] = await sink.waitForMessages(1, 10000)
        assert.ok(delivered && report.output)
        assert.equal(report.output.toString('utf8'), withoutOwnReceived(delivered.raw))
      }
    })
  }
})
