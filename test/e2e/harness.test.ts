import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import { REPO_ROOT, freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { SmtpClient, sendMailTo } from '../helpers/smtp-client'

// Proves the end-to-end harness on a real Haraka without the milter plugin.
describe('e2e harness (Haraka + sink + SMTP client, no milter)', function () {
  this.timeout(60000)

  let sink: Sink
  let haraka: RunningHaraka

  before(async function () {
    sink = await startSink()
    haraka = await startHaraka({
      listeners: ['127.0.0.1', '[::1]'],
      plugins: ['rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
    })
  })

  after(async function () {
    await stopAllHarakas()
    await sink.stop()
  })

  beforeEach(function () {
    sink.clear()
  })

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      process.stderr.write(
        `--- Haraka log tail ---\n${haraka.log().split('\n').slice(-80).join('\n')}\n`,
      )
    }
  })

  it('paths: REPO_ROOT is this package, freePort gives a bindable port', async function () {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
      name: string
    }
    assert.equal(pkg.name, 'haraka-plugin-milter')
    const port = await freePort()
    assert.ok(Number.isInteger(port) && port > 0 && port < 65536)
  })

  it('writes a minimal install dir with the plugin symlink and single-process smtp.ini', function () {
    assert.equal(haraka.listeners.length, 2)
    assert.equal(haraka.listeners[0]!.host, '127.0.0.1')
    assert.equal(haraka.listeners[1]!.host, '::1')
    const smtpIni = fs.readFileSync(path.join(haraka.dir, 'config', 'smtp.ini'), 'utf8')
    assert.match(
      smtpIni,
      new RegExp(`^listen=127\\.0\\.0\\.1:${haraka.ports[0]},\\[::1\\]:${haraka.ports[1]}$`, 'm'),
    )
    assert.match(smtpIni, /^nodes=0$/m)
    const link = path.join(haraka.dir, 'node_modules', 'haraka-plugin-milter')
    assert.equal(fs.realpathSync(link), fs.realpathSync(REPO_ROOT))
    assert.equal(
      fs.readFileSync(path.join(haraka.dir, 'config', 'plugins'), 'utf8'),
      'rcpt_to.in_host_list\nqueue/smtp_forward\n',
    )
  })

  it('delivers a message to the sink with the exact envelope, body and a Received header', async function () {
    const body = 'Line one\r\n.leading dot must survive\r\n\r\nLast line\r\n'
    const data =
      'From: Alice <alice@sender.test>\r\n' +
      'To: bob@example.com\r\n' +
      'Subject: harness test\r\n' +
      'X-Folded: first\r\n\tsecond\r\n' +
      '\r\n' +
      body

    const client = await SmtpClient.connect('127.0.0.1', haraka.ports[0]!)
    assert.equal(client.greeting.code, 220)
    const result = await client.sendMail({
      helo: 'client.test',
      from: 'alice@sender.test',
      rcpts: ['bob@example.com', 'carol@example.net'],
      data,
    })
    assert.equal(result.replies.helo?.code, 250)
    assert.equal(result.replies.mail?.code, 250)
    assert.deepEqual(
      result.replies.rcpts.map((r) => r.code),
      [250, 250],
    )
    assert.equal(result.replies.data?.code, 354)
    assert.equal(result.accepted, true, `final reply: ${result.replies.message?.raw ?? ''}`)
    const final = result.replies.message!
    assert.equal(final.code, 250)
    // smtp_forward relays the sink's reply text (with its enhanced code) and appends the uuid
    assert.equal(final.enhanced, '2.6.0')
    const m = /^2\.6\.0 sink queued (\d+) \(([0-9A-F-]+\.\d+)\)$/.exec(final.text)
    assert.ok(m, `unexpected final reply ${JSON.stringify(final.text)}`)
    const uuid = m[2]!
    const quit = await client.quit()
    assert.equal(quit.code, 221)

    const [msg] = await sink.waitForMessages(1, 10000)
    assert.ok(msg)
    assert.equal(msg.seq, Number(m[1]))
    assert.equal(msg.mailFrom, 'alice@sender.test')
    assert.deepEqual(msg.rcptTo, ['bob@example.com', 'carol@example.net'])
    assert.equal(msg.body.toString('utf8'), body)

    // Haraka adds exactly one Received header, as the first header, naming this transaction
    assert.equal(msg.headers[0]![0], 'Received')
    const received = headerValues(msg, 'Received')
    assert.equal(received.length, 1)
    assert.match(
      received[0]!,
      new RegExp(
        `^from client\\.test \\(.*\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby haraka\\.test \\(Haraka/3\\.3\\.4\\) ` +
          `with ESMTP id ${uuid.replace(/\./g, '\\.')}\\r\\n\\tenvelope-from <alice@sender\\.test>;\\r\\n\\t.+$`,
      ),
    )
    // the client's own headers follow unchanged, in order, folding preserved
    assert.deepEqual(msg.headers.slice(1), [
      ['From', 'Alice <alice@sender.test>'],
      ['To', 'bob@example.com'],
      ['Subject', 'harness test'],
      ['X-Folded', 'first\r\n\tsecond'],
    ])
  })

  it('rejects a recipient outside host_list with 5xx and delivers to the others only', async function () {
    const client = await SmtpClient.connect('127.0.0.1', haraka.ports[0]!)
    assert.equal((await client.command('EHLO client.test')).code, 250)
    assert.equal((await client.command('MAIL FROM:<alice@sender.test>')).code, 250)
    const bad = await client.command('RCPT TO:<mallory@elsewhere.test>')
    assert.equal(bad.code, 550)
    assert.equal(bad.text, 'I cannot deliver mail for <mallory@elsewhere.test>')
    await client.close()

    const result = await sendMailTo('127.0.0.1', haraka.ports[0]!, {
      helo: 'client.test',
      from: 'alice@sender.test',
      rcpts: ['nobody@elsewhere.test', 'bob@example.org'],
      data: 'Subject: partial\r\n\r\nhello\r\n',
    })
    assert.deepEqual(
      result.replies.rcpts.map((r) => r.code),
      [550, 250],
    )
    assert.equal(result.accepted, true)
    const [msg] = await sink.waitForMessages(1, 10000)
    assert.deepEqual(msg!.rcptTo, ['bob@example.org'])
    assert.equal(msg!.body.toString(), 'hello\r\n')
  })

  it('all recipients rejected: no DATA, nothing delivered', async function () {
    const result = await sendMailTo('127.0.0.1', haraka.ports[0]!, {
      helo: 'client.test',
      from: 'alice@sender.test',
      rcpts: ['x@elsewhere.test'],
      data: 'Subject: never\r\n\r\nnever\r\n',
    })
    assert.equal(result.accepted, false)
    assert.equal(result.replies.rcpts[0]!.code, 550)
    assert.equal(result.replies.data, undefined)
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(sink.messages.length, 0)
  })

  it('works over the IPv6 listener [::1]', async function () {
    const client = await SmtpClient.connect('::1', haraka.ports[1]!)
    assert.equal(client.greeting.code, 220)
    const ehlo = await client.command('EHLO v6.client.test')
    assert.equal(ehlo.code, 250)
    assert.ok(ehlo.lines.length > 1, 'EHLO reply is multi-line')
    assert.ok(ehlo.lines.includes('PIPELINING'), `EHLO: ${ehlo.raw}`)
    const result = await client.sendMail({
      from: 'v6@sender.test',
      rcpts: ['bob@example.com'],
      data: 'Subject: over v6\r\n\r\nsix\r\n',
    })
    assert.equal(result.accepted, true)
    await client.quit()
    const [msg] = await sink.waitForMessages(1, 10000)
    assert.equal(msg!.mailFrom, 'v6@sender.test')
    assert.deepEqual(msg!.rcptTo, ['bob@example.com'])
    const received = headerValues(msg!, 'Received')
    assert.equal(received.length, 1)
    assert.match(received[0]!, /^from v6\.client\.test \(.*\[::1\]\)\r\n\tby haraka\.test /)
    assert.equal(msg!.body.toString(), 'six\r\n')
  })

  it('parses multi-line replies and pipelined replies exactly', async function () {
    const client = await SmtpClient.connect('[::1]', haraka.ports[1]!)
    const [ehlo, mail, rcpt, rset] = await client.pipeline([
      'EHLO pipe.test',
      'MAIL FROM:<p@sender.test>',
      'RCPT TO:<bob@example.com>',
      'RSET',
    ])
    assert.equal(ehlo!.code, 250)
    assert.equal(ehlo!.raw.split('\r\n').length - 1, ehlo!.lines.length)
    assert.ok(ehlo!.raw.startsWith('250-'))
    assert.equal(mail!.code, 250)
    assert.equal(rcpt!.code, 250)
    assert.equal(rset!.code, 250)
    await client.quit()
    await client.closed
    assert.equal(client.isClosed, true)
  })
})

describe('e2e harness: startup failure and live config reload', function () {
  this.timeout(60000)

  after(async function () {
    await stopAllHarakas()
  })

  it('rejects with the log tail when Haraka cannot start', async function () {
    await assert.rejects(startHaraka({ plugins: ['no_such_plugin_xyz'] }), (err: Error) => {
      assert.match(err.message, /^startHaraka: Haraka did not start: /)
      assert.match(err.message, /no_such_plugin_xyz/)
      return true
    })
  })

  it('writeConfig + waitForReload: a host_list change is picked up live', async function () {
    const haraka = await startHaraka({ plugins: ['rcpt_to.in_host_list', 'queue/discard'] })
    const rcpt = async (addr: string): Promise<number> => {
      const c = await SmtpClient.connect('127.0.0.1', haraka.port)
      await c.command('EHLO reload.test')
      await c.command('MAIL FROM:<a@sender.test>')
      const reply = await c.command(`RCPT TO:<${addr}>`)
      await c.quit()
      return reply.code
    }
    assert.equal(await rcpt('x@added.test'), 550)
    await haraka.writeConfig('host_list', 'example.com\nadded.test\n', { waitForReload: true })
    assert.equal(await rcpt('x@added.test'), 250)
    await haraka.stop()
    assert.ok(!fs.existsSync(haraka.dir), 'install dir removed on stop')
    assert.match(haraka.log(), /Reloaded file: .*host_list/)
  })
})
