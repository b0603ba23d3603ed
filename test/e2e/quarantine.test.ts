/**
 * End to end: a quarantine an operator can act on. A real Haraka with the
 * plugin, a real pymilter filter that adds a recipient and quarantines, the
 * `haraka-milter quarantine` CLI as an operator runs it, and a real
 * receiving sink behind Haraka's smtp_forward. The release goes to a
 * dedicated loopback listener whose `milters =` is empty: the bypass comes
 * from where the message is injected, not from anything in it.
 *
 * Crash safety: a release or delete killed with SIGKILL right after it
 * claimed the entry (a release held by a next hop that never greets; a
 * delete paused by a preload that wraps fs.promises.link) is listed as
 * being released, and the next release or delete takes the dead claim back:
 * the message reaches the sink exactly once.
 */
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import * as net from 'node:net'
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
import { sample, scrape } from '../helpers/scrape'
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

/** Starts the CLI without waiting for it; `node` options (e.g. --require) go first. */
function cliProcess(nodeArgs: string[], args: string[]): { child: ChildProcess; stderr: string[] } {
  const child = spawn(process.execPath, [...nodeArgs, CLI, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const stderr: string[] = []
  child.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()))
  return { child, stderr }
}

async function killHard(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
}

async function until(what: string, ok: () => boolean, timeoutMs = 15000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** A next hop that accepts connections and never says a word (no greeting). */
async function silentServer(): Promise<{ port: number; connections: number; close(): void }> {
  const sockets = new Set<net.Socket>()
  const state = { connections: 0 }
  const server = net.createServer((s) => {
    state.connections += 1
    sockets.add(s)
    s.on('error', () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    get connections() {
      return state.connections
    },
    close() {
      for (const s of sockets) s.destroy()
      server.close()
    },
  }
}

/**
 * Preloaded into a CLI: once a claim file is linked into place, say CLAIMED
 * on stderr and stop there for good, as a process killed at that point would.
 */
const PAUSE_AFTER_CLAIM = `
const fsp = require('node:fs/promises')
const link = fsp.link
fsp.link = async function (from, to) {
  await link(from, to)
  if (String(to).endsWith('.claim')) {
    process.stderr.write('CLAIMED\\n')
    setInterval(() => undefined, 1000)
    await new Promise(() => undefined)
  }
}
`

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
  let metricsPort: number

  before(async () => {
    assertPymilterInstalled()
    sink = await startSink()
    dir = await mkdtemp(path.join(os.tmpdir(), 'milter-quarantine-e2e-'))
    configDir = await mkdtemp(path.join(os.tmpdir(), 'milter-quarantine-ini-'))
    const milterPort = await freePort()
    inbound = await freePort()
    releasePort = await freePort()
    metricsPort = await freePort()
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

[metrics]
listen = 127.0.0.1:${metricsPort}

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

  async function hold(data: string | Buffer = MESSAGE): Promise<string> {
    const before = new Set(await listIds())
    const r = await sendMailTo('127.0.0.1', inbound, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data,
      mailParams: 'SIZE=400 BODY=8BITMIME',
      rcptParams: 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com',
    })
    assert.equal(r.replies.message?.code, 250, JSON.stringify(r.replies))
    // [quarantine] hold_reply's default: a discarded message's text, nothing of the hold
    assert.match(r.replies.message?.text ?? '', /^Message accepted \(/)
    const added = (await listIds()).filter((id) => !before.has(id))
    assert.equal(added.length, 1, 'one new entry')
    return added[0] as string
  }

  /** `haraka-milter quarantine <op> ...args --dir <dir>`. */
  function quarantine(op: string, ...args: string[]): Promise<CliResult> {
    return cli('quarantine', op, ...args, '--dir', dir)
  }

  /** `quarantine release <id> --to 127.0.0.1:<port>` (the milter-less listener unless told). */
  function release(id: string, port = releasePort, ...args: string[]): Promise<CliResult> {
    return quarantine('release', id, '--to', `127.0.0.1:${port}`, ...args)
  }

  /** The latest day folder (the directory also holds events.log, the CLI's release/delete record). */
  function lastDay(): string {
    return readdirSync(dir)
      .filter((d) => /^[0-9]{8}$/.test(d))
      .sort()
      .at(-1) as string
  }

  function emlOf(id: string): Buffer {
    const day = lastDay()
    return readFileSync(path.join(dir, day, `${id}.eml`))
  }

  interface Listed {
    id: string
    state: string
    claim?: { op: string; pid: number; stale: string | false }
  }

  async function listJson(): Promise<{ entries: Listed[]; stderr: string }> {
    const r = await quarantine('list', '--json')
    assert.equal(r.code, 0, r.stderr)
    return { entries: JSON.parse(r.stdout) as Listed[], stderr: r.stderr }
  }

  async function listIds(): Promise<string[]> {
    return (await listJson()).entries.map((e) => e.id)
  }

  it('holds a message with both recipients (one added by ADDRCPT); list and show print the envelope', async () => {
    const id = await hold()
    const list = JSON.parse((await quarantine('list', '--json')).stdout)
    const entry = list.find((e: { id: string }) => e.id === id)
    assert.equal(entry.sender, 'alice@example.org')
    assert.deepEqual(entry.recipients, ['bob@example.com', 'carol@example.net'])
    assert.equal(entry.reason, 'scan: looks like phishing')
    assert.ok(entry.size > MESSAGE.length)
    // the .eml is the plain message, no marker of ours
    const day = lastDay()
    const eml = readFileSync(path.join(dir, day, `${id}.eml`), 'utf8')
    assert.match(eml, /^Received: /)
    assert.doesNotMatch(eml, /X-Milter-Quarantine/)

    const text = await cli('quarantine', 'list', '--config', path.join(configDir, 'milter.ini'))
    assert.equal(text.code, 0, text.stderr)
    assert.match(
      text.stdout,
      new RegExp(
        `^${id.replace(/\./g, '\\.')}  held  \\S+  \\d+  <alice@example\\.org>  <bob@example\\.com>,<carol@example\\.net>  scan: looks like phishing$`,
        'm',
      ),
    )

    const show = await quarantine('show', id)
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
    const day = lastDay()
    const held = readFileSync(path.join(dir, day, `${id}.eml`))
    const connectsBefore = milter.eventsOf('connect').length

    const r = await release(id, releasePort, '--helo', 'release.test')
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
    const again = await release(id)
    assert.equal(again.code, 1)
    assert.match(again.stderr, /no quarantine entry/)
    await new Promise((resolve) => setTimeout(resolve, 1000))
    assert.equal(sink.messages.length, 1, 'delivered exactly once')
  })

  it('metrics: held counts the message, entries the store; released and deleted what the CLI did', async () => {
    const before = (await scrape(metricsPort)).body
    const count = (text: string, name: string): number =>
      sample(
        text,
        `haraka_milter_quarantine_${name}`,
        name === 'entries' ? {} : { milter: 'scan' },
      ) ?? 0
    const id = await hold()
    const other = await hold()
    // read from the store at most every 5 s: polled, not slept
    const settled = async (want: Record<string, number>): Promise<string> => {
      const end = Date.now() + 15000
      for (;;) {
        const text = (await scrape(metricsPort)).body
        const diff = Object.entries(want).filter(([k, n]) => count(text, k) !== n)
        if (diff.length === 0) return text
        if (Date.now() > end) throw new Error(`metrics not as ${JSON.stringify(want)}:\n${text}`)
        await new Promise((r) => setTimeout(r, 200))
      }
    }
    const held = count(before, 'held_total')
    const released = count(before, 'released_total')
    const deleted = count(before, 'deleted_total')
    await settled({ held_total: held + 2, entries: (await listIds()).length })
    sink.clear()
    const r = await release(id)
    assert.equal(r.code, 0, r.stderr)
    assert.equal((await quarantine('delete', other)).code, 0)
    const text = await settled({
      held_total: held + 2,
      released_total: released + 1,
      deleted_total: deleted + 1,
      entries: (await listIds()).length,
    })
    assert.match(text, /^# TYPE haraka_milter_quarantine_entries gauge$/m)
    await sink.waitForMessages(1, 15000)
  })

  it('release into a listener with milters is held again: the message carries no bypass', async () => {
    const id = await hold()
    sink.clear()
    const r = await release(id, inbound)
    assert.equal(r.code, 0, r.stderr)
    const ids = await listIds()
    assert.equal(ids.length, 1, 'held again under a new id')
    assert.notEqual(ids[0], id)
    assert.equal(sink.messages.length, 0)
    const del = await quarantine('delete', ids[0] as string)
    assert.equal(del.code, 0, del.stderr)
  })

  it('delete removes a held entry; unknown and malformed ids are refused', async () => {
    const id = await hold()
    const del = await quarantine('delete', id)
    assert.equal(del.code, 0, del.stderr)
    assert.equal(del.stdout, `deleted ${id}\n`)
    assert.deepEqual(await listIds(), [])
    const day = lastDay()
    assert.deepEqual(readdirSync(path.join(dir, day)), [])
    assert.equal((await quarantine('show', id)).code, 1)
    const bad = await quarantine('show', '../../etc/passwd')
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /invalid quarantine id/)
    assert.equal((await quarantine('release', 'x.1')).code, 2, 'no --to')
  })

  it('a release killed after its claim is listed as being released, then delivered exactly once by the next release', async () => {
    const id = await hold()
    const held = emlOf(id)
    sink.clear()
    const silent = await silentServer()
    try {
      const { child } = cliProcess(
        [],
        ['quarantine', 'release', id, '--dir', dir, '--to', `127.0.0.1:${silent.port}`],
      )
      // it connects only once it holds the claim; the next hop never greets, so it waits there
      await until('the release to connect', () => silent.connections > 0)
      const during = (await listJson()).entries.find((e) => e.id === id)
      assert.equal(during?.state, 'releasing')
      assert.equal(during?.claim?.op, 'release')
      assert.equal(during?.claim?.pid, child.pid)
      assert.equal(during?.claim?.stale, false)
      const busy = await release(id)
      assert.equal(busy.code, 1)
      assert.match(busy.stderr, new RegExp(`is being released by pid ${child.pid} on `))
      await killHard(child)

      const r = await release(id)
      assert.equal(r.code, 0, r.stderr)
      assert.match(
        r.stderr,
        new RegExp(
          `took back ${id.replace(/\./g, '\\.')} from an interrupted release by pid ${child.pid} .*process ${child.pid} is gone`,
        ),
      )
      const [m] = await sink.waitForMessages(1, 15000)
      assert.ok(m)
      assert.ok(m.raw.subarray(m.raw.length - held.length).equals(held))
      await new Promise((resolve) => setTimeout(resolve, 1000))
      assert.equal(sink.messages.length, 1, 'delivered exactly once')
      assert.deepEqual(await listIds(), [])
      const day = lastDay()
      assert.deepEqual(readdirSync(path.join(dir, day)), [], 'no claim, .json or .eml left')
    } finally {
      silent.close()
    }
  })

  it('a delete killed after its claim is listed as being deleted; the next list takes it back and a delete completes', async () => {
    const id = await hold()
    const preload = path.join(configDir, 'pause-after-claim.cjs')
    writeFileSync(preload, PAUSE_AFTER_CLAIM)
    const { child, stderr } = cliProcess(
      ['--require', preload],
      ['quarantine', 'delete', id, '--dir', dir],
    )
    await until('the delete to claim', () => stderr.join('').includes('CLAIMED'))
    const during = (await listJson()).entries.find((e) => e.id === id)
    assert.equal(during?.state, 'deleting')
    assert.equal(during?.claim?.pid, child.pid)
    await killHard(child)

    const text = await quarantine('list')
    assert.equal(text.code, 0, text.stderr)
    assert.match(
      text.stderr,
      new RegExp(
        `took back ${id.replace(/\./g, '\\.')} from an interrupted delete by pid ${child.pid}`,
      ),
    )
    assert.match(text.stdout, new RegExp(`^${id.replace(/\./g, '\\.')}  held  `, 'm'))
    const del = await quarantine('delete', id)
    assert.equal(del.code, 0, del.stderr)
    assert.deepEqual(await listIds(), [])
    const day = lastDay()
    assert.deepEqual(readdirSync(path.join(dir, day)), [], 'no claim, .json or .eml left')
    assert.equal(sink.messages.filter((m) => m.raw.includes(id)).length, 0)
  })

  it('a body with a bare CR before a dot is released byte for byte as held', async () => {
    const data = Buffer.from(
      [
        'From: Alice <alice@example.org>',
        'To: bob@example.com',
        'Subject: bare CR',
        '',
        'one\r.two',
        '\r.',
        '.three',
        'x\r\r..four',
        '',
      ].join('\r\n'),
      'latin1',
    )
    const id = await hold(data)
    const held = emlOf(id)
    assert.ok(
      held.includes(Buffer.from('one\r.two\r\n\r.\r\n.three\r\nx\r\r..four\r\n')),
      'held as sent',
    )
    sink.clear()
    const r = await release(id)
    assert.equal(r.code, 0, r.stderr)
    const [m] = await sink.waitForMessages(1, 15000)
    assert.ok(m)
    const tail = m.raw.subarray(m.raw.length - held.length)
    assert.equal(tail.toString('latin1'), held.toString('latin1'))
    assert.ok(tail.equals(held))
    assert.match(m.raw.subarray(0, m.raw.length - held.length).toString(), /^Received: /)
  })

  it('symbolic links planted in the quarantine directory are refused, never followed', async () => {
    const id = await hold()
    const day = lastDay()
    const secret = path.join(configDir, 'secret.txt')
    writeFileSync(secret, 'Subject: not for you\r\n\r\nroot:x:0:0\r\n')
    const fake = path.join(configDir, 'fake.json')
    writeFileSync(
      fake,
      JSON.stringify({
        version: 1,
        id: 'EVIL.1',
        time: new Date().toISOString(),
        transaction: 'EVIL.1',
        sender: { address: 'alice@example.org', args: [] },
        recipients: [{ address: 'bob@example.com', args: [] }],
        reason: 'planted',
        milters: [],
        kind: 'hold',
        client: { ip: '', host: '', helo: '' },
      }),
    )
    const links = [path.join(dir, day, 'EVIL.1.json'), path.join(dir, day, 'EVIL.1.eml')]
    symlinkSync(fake, links[0] as string)
    symlinkSync(secret, links[1] as string)
    sink.clear()
    try {
      const list = await quarantine('list')
      assert.equal(list.code, 0, list.stderr)
      assert.match(
        list.stderr,
        /skipped refused .*EVIL\.1\.(eml|json): it is a symbolic link, not a regular file \(never followed\)/,
      )
      assert.doesNotMatch(list.stdout, /EVIL/)
      assert.match(
        list.stdout,
        new RegExp(`^${id.replace(/\./g, '\\.')}  held  `, 'm'),
        'the real entry is still listed',
      )
      const show = await quarantine('show', 'EVIL.1')
      assert.equal(show.code, 1)
      assert.match(show.stderr, /refused .*symbolic link/)
      const rel = await release('EVIL.1')
      assert.equal(rel.code, 1)
      assert.match(rel.stderr, /refused .*symbolic link/)
      await new Promise((resolve) => setTimeout(resolve, 500))
      assert.equal(sink.messages.length, 0, 'the linked file was not delivered')
    } finally {
      for (const l of links) unlinkSync(l)
    }
    const del = await quarantine('delete', id)
    assert.equal(del.code, 0, del.stderr)
  })
})
