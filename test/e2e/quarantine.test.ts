/**
 * End to end: a quarantine an operator can act on. A real Haraka with the
 * plugin, a real pymilter filter that adds a recipient and quarantines, the
 * `haraka-milter quarantine` CLI as an operator runs it, and a real
 * receiving sink behind Haraka's smtp_forward. The release goes to a
 * dedicated loopback listener whose `milters =` is empty: the bypass comes
 * from where the message is injected, not from anything in it.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { startHaraka, stopAllHarakas } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort, REPO_ROOT } from '../helpers/paths'
import { startSink, type Sink } from '../helpers/sink'
import { sendMailTo } from '../helpers/smtp-client'

const CLI = path.join(REPO_ROOT, 'dist', 'bin', 'haraka-milter.js')

const MESSAGE = [
  'From: Alice <alice@example.org>',
  'To: bob@example.com',
  'Subject: held for review',
  'Message-Id: <quarantine-1@example.org>',
  '',
  'Hello Bob,',
  '.leading dot line',
  '',
].join('\r\n')

interface CliResult {
  code: number
  stdout: string
  stderr: string
}

function cli(...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 30000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

describe('quarantine end to end (hold with envelope, list, show, release, delete)', function () {
  this.timeout(60000)

  let sink: Sink
  let milter: StartedMilter
  let dir: string
  let configDir: string
  let inbound: number
  let releasePort: number

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    dir = await mkdtemp(path.join(os.tmpdir(), 'milter-quarantine-e2e-'))
    configDir = await mkdtemp(path.join(os.tmpdir(), 'milter-quarantine-ini-'))
    const milterPort = await freePort()
    inbound = await freePort()
    releasePort = await freePort()
    milter = await startScriptedMilter(
      {
        eom: [
          { op: 'addrcpt', rcpt: '<carol@example.net>' },
          { op: 'quarantine', reason: 'looks like phishing' },
        ],
      },
      { port: milterPort },
    )
    const ini = `
[main]
milters = scan
connect_timeout = 3
command_timeout = 5
content_timeout = 5

[quarantine]
action = hold
dir = ${dir}

[milter.scan]
socket = inet:${milterPort}@127.0.0.1

[listener.inbound]
listen = 127.0.0.1:${inbound}
milters = scan

; released messages: loopback only, no milters
[listener.release]
listen = 127.0.0.1:${releasePort}
milters =
`
    writeFileSync(path.join(configDir, 'milter.ini'), ini)
    await startHaraka({
      listeners: [`127.0.0.1:${inbound}`, `127.0.0.1:${releasePort}`],
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: { 'milter.ini': ini },
    })
  })

  after(async () => {
    await stopAllMilters()
    await stopAllHarakas()
    await sink?.stop()
    if (dir) await rm(dir, { recursive: true, force: true })
    if (configDir) await rm(configDir, { recursive: true, force: true })
  })

  async function hold(): Promise<string> {
    const before = new Set(await listIds())
    const r = await sendMailTo('127.0.0.1', inbound, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: MESSAGE,
      mailParams: 'SIZE=400 BODY=8BITMIME',
      rcptParams: 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com',
    })
    assert.equal(r.replies.message?.code, 250, JSON.stringify(r.replies))
    assert.match(r.replies.message?.text ?? '', /held for review/)
    const added = (await listIds()).filter((id) => !before.has(id))
    assert.equal(added.length, 1, 'one new entry')
    return added[0] as string
  }

  async function listIds(): Promise<string[]> {
    const r = await cli('quarantine', 'list', '--dir', dir, '--json')
    assert.equal(r.code, 0, r.stderr)
    return (JSON.parse(r.stdout) as Array<{ id: string }>).map((e) => e.id)
  }

  it('holds a message with both recipients (one added by ADDRCPT); list and show print the envelope', async () => {
    const id = await hold()
    const list = JSON.parse((await cli('quarantine', 'list', '--dir', dir, '--json')).stdout)
    const entry = list.find((e: { id: string }) => e.id === id)
    assert.equal(entry.sender, 'alice@example.org')
    assert.deepEqual(entry.recipients, ['bob@example.com', 'carol@example.net'])
    assert.equal(entry.reason, 'scan: looks like phishing')
    assert.ok(entry.size > MESSAGE.length)
    // the .eml is the plain message, no marker of ours
    const day = readdirSync(dir)[0] as string
    const eml = readFileSync(path.join(dir, day, `${id}.eml`), 'utf8')
    assert.match(eml, /^Received: /)
    assert.doesNotMatch(eml, /X-Milter-Quarantine/)

    const text = await cli('quarantine', 'list', '--config', path.join(configDir, 'milter.ini'))
    assert.equal(text.code, 0, text.stderr)
    assert.match(
      text.stdout,
      new RegExp(
        `^${id.replace(/\./g, '\\.')}  \\S+  \\d+  <alice@example\\.org>  <bob@example\\.com>,<carol@example\\.net>  scan: looks like phishing$`,
        'm',
      ),
    )

    const show = await cli('quarantine', 'show', id, '--dir', dir)
    assert.equal(show.code, 0, show.stderr)
    assert.match(show.stdout, /^sender: <alice@example\.org> SIZE=400 BODY=8BITMIME$/m)
    // RCPT TO's ESMTP parameters are kept (Haraka stores none): the milter got them, and so does the envelope
    assert.match(
      show.stdout,
      /^recipient: <bob@example\.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example\.com$/m,
    )
    assert.deepEqual(milter.eventsOf('envrcpt').at(-1)?.args, [
      '<bob@example.com>',
      'NOTIFY=SUCCESS,FAILURE',
      'ORCPT=rfc822;bob@example.com',
    ])
    assert.match(show.stdout, /^recipient: <carol@example\.net>$/m)
    assert.match(show.stdout, /^reason: scan: looks like phishing$/m)
    assert.match(show.stdout, /^milters: scan$/m)
    assert.match(show.stdout, new RegExp(`^transaction: ${id.replace(/\./g, '\\.')}$`, 'm'))
    assert.match(show.stdout, /^client: 127\.0\.0\.1.* helo client\.example\.org$/m)
    assert.equal(sink.messages.length, 0, 'nothing delivered while held')
  })

  it('release --to the milter-less listener delivers it once to both recipients, unmodified; a second release fails', async () => {
    const [id] = await listIds()
    assert.ok(id)
    const day = readdirSync(dir)[0] as string
    const held = readFileSync(path.join(dir, day, `${id}.eml`))
    const connectsBefore = milter.eventsOf('connect').length

    const r = await cli(
      'quarantine',
      'release',
      id,
      '--dir',
      dir,
      '--to',
      `127.0.0.1:${releasePort}`,
      '--helo',
      'release.test',
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(
      r.stdout,
      new RegExp(`^released ${id.replace(/\./g, '\\.')} to 127\\.0\\.0\\.1:${releasePort}: 250 `),
    )
    const [m] = await sink.waitForMessages(1, 15000)
    assert.ok(m)
    assert.equal(m.mailFrom, 'alice@example.org')
    assert.deepEqual(m.rcptTo, ['bob@example.com', 'carol@example.net'])
    // as held, below the Received line of the release listener
    assert.ok(m.raw.subarray(m.raw.length - held.length).equals(held), m.raw.toString())
    const added = m.raw.subarray(0, m.raw.length - held.length).toString()
    assert.match(added, /^Received: from release\.test /)
    assert.equal(added.match(/^\S/gm)?.length, 1, `exactly one header added: ${added}`)
    assert.equal(
      milter.eventsOf('connect').length,
      connectsBefore,
      'the milter never saw the release',
    )

    assert.deepEqual(await listIds(), [])
    const again = await cli(
      'quarantine',
      'release',
      id,
      '--dir',
      dir,
      '--to',
      `127.0.0.1:${releasePort}`,
    )
    assert.equal(again.code, 1)
    assert.match(again.stderr, /no quarantine entry/)
    await new Promise((resolve) => setTimeout(resolve, 1000))
    assert.equal(sink.messages.length, 1, 'delivered exactly once')
  })

  it('release into a listener with milters is held again: the message carries no bypass', async () => {
    const id = await hold()
    sink.clear()
    const r = await cli('quarantine', 'release', id, '--dir', dir, '--to', `127.0.0.1:${inbound}`)
    assert.equal(r.code, 0, r.stderr)
    const ids = await listIds()
    assert.equal(ids.length, 1, 'held again under a new id')
    assert.notEqual(ids[0], id)
    assert.equal(sink.messages.length, 0)
    const del = await cli('quarantine', 'delete', ids[0] as string, '--dir', dir)
    assert.equal(del.code, 0, del.stderr)
  })

  it('delete removes a held entry; unknown and malformed ids are refused', async () => {
    const id = await hold()
    const del = await cli('quarantine', 'delete', id, '--dir', dir)
    assert.equal(del.code, 0, del.stderr)
    assert.equal(del.stdout, `deleted ${id}\n`)
    assert.deepEqual(await listIds(), [])
    const day = readdirSync(dir)[0] as string
    assert.deepEqual(readdirSync(path.join(dir, day)), [])
    assert.equal((await cli('quarantine', 'show', id, '--dir', dir)).code, 1)
    const bad = await cli('quarantine', 'show', '../../etc/passwd', '--dir', dir)
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /invalid quarantine id/)
    assert.equal((await cli('quarantine', 'release', 'x.1', '--dir', dir)).code, 2, 'no --to')
  })
})
