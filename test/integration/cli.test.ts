/**
 * `haraka-milter check` and `config` against a real libmilter filter
 * (test/milters/scripted.py): exit status, the human and JSON reports,
 * --out, --trace, and what the filter saw. The commands run in-process
 * (lib/cli/run-command.ts with an Io); one smoke test per command (check,
 * config, quarantine) spawns dist/bin/haraka-milter.js for the process
 * boundary: argv, stdout, stderr, the exit status.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import {
  assertPymilterInstalled,
  freePort,
  repoRoot,
  startScriptedMilter,
  stopAllMilters,
  type MilterEventName,
  type EventOf,
  type MilterScript,
  type StartedMilter,
  type Transport,
} from '../helpers/milter-process'
import { makeCerts, startTlsProxy, type TestCerts, type TlsProxy } from '../helpers/tls'
import { runCommand } from '../../lib/cli/run-command'

const CLI = path.join(repoRoot(), 'dist', 'bin', 'haraka-milter.js')

const HEADER_TEXT =
  'From: Alice <alice@example.com>\r\n' +
  'To: Bob <bob@example.net>\r\n' +
  'Subject: Original subject\r\n' +
  'Message-ID: <cli-1@example.com>\r\n'
const BODY = 'Hello Bob,\r\nthis is the original body.\r\n'
const MESSAGE = HEADER_TEXT + '\r\n' + BODY

const USAGE = /usage: haraka-milter check --milter SOCKET/

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs a command in-process, as the bin would; never rejects (a non-zero exit is a result). */
async function runCli(args: string[]): Promise<Run> {
  let stdout = ''
  let stderr = ''
  const io = { out: (t: string) => void (stdout += t), err: (t: string) => void (stderr += t) }
  try {
    return { code: await runCommand(args, io), stdout, stderr }
  } catch (e) {
    // what the bin prints and exits with
    stderr += `haraka-milter: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`
    return { code: 2, stdout, stderr }
  }
}

/** Runs dist/bin/haraka-milter.js in a process (the smoke tests); never rejects. */
function runBin(args: string[], timeoutMs = 20000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { timeout: timeoutMs, encoding: 'utf8' },
      (err, stdout, stderr) => {
        let code: number | null = 0
        if (err) code = typeof err.code === 'number' ? err.code : null
        resolve({ code, stdout, stderr })
      },
    )
  })
}

function sha256(text: string): string {
  return createHash('sha256').update(Buffer.from(text, 'latin1')).digest('hex')
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '')
}

function one<K extends MilterEventName>(m: StartedMilter, kind: K): EventOf<K> {
  const list = m.eventsOf(kind)
  assert.equal(list.length, 1, `expected one ${kind} event, got ${list.length}`)
  return list[0]!
}

type Fields = Record<string, unknown>

/** The JSON report, as bin/haraka-milter.ts prints it (lib/check.ts CheckJson). */
interface JsonReport {
  milter: string
  verdict: string
  reply?: { code: number; enhanced?: string; lines: Array<{ enhanced?: string; text: string }> }
  stages: Array<{
    stage: string
    command: string
    fields: Fields
    macros: Record<string, string>
    progress: number
    reply?: {
      name: string
      kind: string
      text?: string
      code?: number
      enhanced?: string
      lines?: Array<{ enhanced?: string; text: string }>
    }
    modifications?: Array<Record<string, unknown>>
  }>
  modifications: Array<Record<string, unknown>>
  negotiated?: {
    version: number
    actions: string[]
    protocol: string[]
    actionsHex: string
    protocolHex: string
    macrosRequested: Record<string, string[]>
  }
  envelope?: { from: string; rcpts: string[] }
  quarantine?: string
  error?: { code: string; message: string }
  trace?: Array<{ dir: 'send' | 'recv'; name: string; fields: Fields; hex: string }>
  outputBytes?: number
}

function parseJson(stdout: string): JsonReport {
  const doc: unknown = JSON.parse(stdout)
  assert.ok(typeof doc === 'object' && doc !== null && !Array.isArray(doc), 'one JSON object')
  return doc as JsonReport
}

const EDITS: MilterScript = {
  eom: [
    { op: 'addheader', name: 'X-Scanned', value: 'clean' },
    { op: 'chgheader', name: 'Subject', index: 1, value: 'Edited subject' },
    { op: 'replacebody', text: 'Replaced body.\r\n' },
    { op: 'addrcpt', rcpt: '<added@example.org>' },
    { op: 'chgfrom', sender: '<bounce@example.org>', params: 'BODY=8BITMIME' },
  ],
}

const EDIT_LINES = [
  'modifications:',
  '  add header X-Scanned: "clean"',
  '  change header Subject #1: "Edited subject"',
  '  add recipient <added@example.org>',
  '  change sender to <bounce@example.org> BODY=8BITMIME',
  '  replace body (16 bytes)',
]

describe('haraka-milter check (CLI) against libmilter (scripted.py)', function () {
  this.timeout(30000)

  let dir: string
  let msgFile: string

  before(function () {
    // A missing pymilter must fail the suite, never skip it.
    assertPymilterInstalled()
    assert.ok(fs.existsSync(CLI), `${CLI} is missing: run npx tsc -p tsconfig.json first`)
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'haraka-milter-cli-'))
    msgFile = path.join(dir, 'message.eml')
    fs.writeFileSync(msgFile, MESSAGE)
  })

  afterEach(async function () {
    await stopAllMilters()
  })

  after(async function () {
    await stopAllMilters()
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  })

  async function start(script: MilterScript, transport: Transport = 'inet') {
    return startScriptedMilter(script, { transport })
  }

  it('(process) an accepted message with edits: exit 0, negotiated options, stages, modifications, verdict', async function () {
    const m = await start(EDITS)
    const out = path.join(dir, 'edited.eml')
    const r = await runBin([
      'check',
      '--milter',
      m.socket,
      '--from',
      'alice@example.com',
      '--rcpt',
      'bob@example.net',
      '--out',
      out,
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.equal(r.stderr, '')
    const l = lines(r.stdout)
    assert.equal(l[0], `milter: ${m.socket}`)
    assert.equal(
      l[1],
      'negotiated: version 6, actions 0x1ff [ADDHDRS CHGBODY ADDRCPT DELRCPT CHGHDRS QUARANTINE CHGFROM ADDRCPT_PAR SETSYMLIST], protocol 0x0 []',
    )
    assert.deepEqual(l.slice(2), [
      'connect: continue',
      'helo: continue',
      'mail: continue',
      'rcpt <bob@example.net>: continue',
      'data: continue',
      'eom: continue',
      ...EDIT_LINES,
      'envelope: from <bounce@example.org> to <bob@example.net> <added@example.org>',
      'verdict: accept',
    ])

    // --out: the message as the edits leave it
    assert.equal(
      fs.readFileSync(out, 'latin1'),
      'From: Alice <alice@example.com>\r\n' +
        'To: Bob <bob@example.net>\r\n' +
        'Subject: Edited subject\r\n' +
        'Message-ID: <cli-1@example.com>\r\n' +
        'X-Scanned: clean\r\n' +
        '\r\n' +
        'Replaced body.\r\n',
    )

    // the filter's side
    const c = one(m, 'connect')
    assert.equal(c.hostname, 'localhost')
    assert.deepEqual(c.hostaddr, ['127.0.0.1', 0])
    assert.equal(one(m, 'helo').helo, 'localhost')
    assert.deepEqual(one(m, 'envfrom').args, ['<alice@example.com>'])
    assert.deepEqual(one(m, 'envrcpt').args, ['<bob@example.net>'])
    one(m, 'data')
    const eom = one(m, 'eom')
    assert.deepEqual(eom.headers, [
      ['From', 'Alice <alice@example.com>'],
      ['To', 'Bob <bob@example.net>'],
      ['Subject', 'Original subject'],
      ['Message-ID', '<cli-1@example.com>'],
    ])
    assert.equal(eom.body, BODY)
    assert.equal(eom.bodySha256, sha256(BODY))
    await m.waitForEvent((e) => e.event === 'close')
    assert.equal(m.eventsOf('error').length, 0)
  })

  it('a message with bare LF line ends reaches the filter with CRLF', async function () {
    const m = await start({})
    const file = path.join(dir, 'lf.eml')
    fs.writeFileSync(file, 'Subject: lf\n\nline one\nline two\n')
    const r = await runCli(['check', '--milter', m.socket, file])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const eom = one(m, 'eom')
    assert.deepEqual(eom.headers, [['Subject', 'lf']])
    assert.equal(eom.body, 'line one\r\nline two\r\n')
    assert.match(r.stdout, /^verdict: accept$/m)
    // with no --from / --rcpt and no From / To headers, the defaults
    assert.equal(one(m, 'envfrom').sender, '<sender@example.org>')
    assert.equal(one(m, 'envrcpt').rcpt, '<recipient@example.org>')
  })

  it('insheader at 0 and a header deletion land in --out', async function () {
    const m = await start({
      eom: [
        { op: 'insheader', index: 0, name: 'X-Top', value: 'first' },
        { op: 'chgheader', name: 'To', index: 1, value: '' },
        { op: 'addrcpt_par', rcpt: '<par@example.org>', params: 'NOTIFY=NEVER' },
        { op: 'delrcpt', rcpt: '<bob@example.net>' },
      ],
    })
    const out = path.join(dir, 'ins.eml')
    const r = await runCli(['check', '--milter', m.socket, '--out', out, msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const l = lines(r.stdout)
    const i = l.indexOf('modifications:')
    assert.deepEqual(l.slice(i, i + 5), [
      'modifications:',
      '  insert header at 0 X-Top: "first"',
      '  delete header To #1',
      '  add recipient <par@example.org> NOTIFY=NEVER',
      '  delete recipient <bob@example.net>',
    ])
    // no --from / --rcpt: the envelope from the message's From and To
    assert.ok(l.includes('envelope: from <alice@example.com> to <par@example.org>'), r.stdout)
    assert.equal(
      fs.readFileSync(out, 'latin1'),
      'X-Top: first\r\n' +
        'From: Alice <alice@example.com>\r\n' +
        'Subject: Original subject\r\n' +
        'Message-ID: <cli-1@example.com>\r\n' +
        '\r\n' +
        BODY,
    )
  })

  it('8-bit (UTF-8) headers: the filter sees the bytes and --out keeps them and the edits as UTF-8', async function () {
    const m = await start({
      eom: [
        { op: 'addheader', name: 'X-Note', value: 'café €' },
        { op: 'chgheader', name: 'Subject', index: 1, value: 'Ünïcødé' },
      ],
    })
    const file = path.join(dir, 'utf8.eml')
    const out = path.join(dir, 'utf8-out.eml')
    fs.writeFileSync(file, 'From: Jürgen <j@example.com>\r\nSubject: Grüße\r\n\r\nbody\r\n', 'utf8')
    const r = await runCli(['check', '--milter', m.socket, '--out', out, file])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.deepEqual(one(m, 'eom').headers, [
      ['From', 'Jürgen <j@example.com>'],
      ['Subject', 'Grüße'],
    ])
    assert.match(r.stdout, /^ {2}add header X-Note: "café €"$/m)
    const written = fs.readFileSync(out)
    const expected = Buffer.from(
      'From: Jürgen <j@example.com>\r\nSubject: Ünïcødé\r\nX-Note: café €\r\n\r\nbody\r\n',
      'utf8',
    )
    assert.equal(written.toString('hex'), expected.toString('hex'), written.toString('utf8'))
  })

  it('--json prints one JSON document: stages with command, macros and reply; modifications as fields', async function () {
    const m = await start(EDITS)
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--rcpt',
      'bob@example.net',
      '--json',
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const doc = parseJson(r.stdout)
    assert.equal(doc.verdict, 'accept')
    assert.equal(doc.milter, m.socket)
    assert.equal(doc.reply, undefined, 'an accepted message has no reply')
    const CONTINUE = { name: 'SMFIR_CONTINUE', kind: 'continue' }
    assert.deepEqual(
      doc.stages.map((s) => [s.stage, s.command, s.reply]),
      [
        ['connect', 'SMFIC_CONNECT', CONTINUE],
        ['helo', 'SMFIC_HELO', CONTINUE],
        ['mail', 'SMFIC_MAIL', CONTINUE],
        ['rcpt', 'SMFIC_RCPT', CONTINUE],
        ['data', 'SMFIC_DATA', CONTINUE],
        ['header', 'SMFIC_HEADER', CONTINUE],
        ['header', 'SMFIC_HEADER', CONTINUE],
        ['header', 'SMFIC_HEADER', CONTINUE],
        ['header', 'SMFIC_HEADER', CONTINUE],
        ['eoh', 'SMFIC_EOH', CONTINUE],
        ['body', 'SMFIC_BODY', CONTINUE],
        ['eom', 'SMFIC_BODYEOB', CONTINUE],
      ],
    )
    const stage = (name: string) => doc.stages.find((s) => s.stage === name)!
    // the command's fields, decoded
    assert.deepEqual(stage('connect').fields, {
      hostname: 'localhost',
      family: 'inet',
      port: 0,
      address: '127.0.0.1',
    })
    assert.deepEqual(stage('helo').fields, { helo: 'localhost' })
    assert.deepEqual(stage('mail').fields, { args: ['<alice@example.com>'] })
    assert.deepEqual(stage('rcpt').fields, { args: ['<bob@example.net>'] })
    assert.deepEqual(stage('header').fields, { name: 'From', value: 'Alice <alice@example.com>' })
    assert.deepEqual(stage('body').fields, { bytes: Buffer.byteLength(BODY), preview: BODY })
    // the macros sent with each command, as the filter received them
    const seen = one(m, 'connect').macros
    assert.deepEqual(stage('connect').macros, seen)
    assert.equal(stage('connect').macros['{client_addr}'], '127.0.0.1')
    assert.equal(stage('rcpt').macros['{rcpt_addr}'], 'bob@example.net')
    // libmilter's view accumulates the stages: what we sent at a stage is in it
    const sent = (stageName: string, filterSaw: Record<string, string>) => {
      const macros = stage(stageName).macros
      assert.ok(Object.keys(macros).length > 0, `macros sent at ${stageName}`)
      for (const [k, v] of Object.entries(macros))
        assert.equal(filterSaw[k], v, `${stageName} ${k}`)
    }
    sent('rcpt', one(m, 'envrcpt').macros)
    sent('eom', one(m, 'eom').macros)
    assert.deepEqual(stage('helo').macros, {}, 'no HELO macro has a value here')
    // end of message: the modifications as received, before the final reply
    assert.deepEqual(stage('eom').modifications, [
      { kind: 'addheader', name: 'X-Scanned', value: 'clean' },
      { kind: 'chgheader', index: 1, name: 'Subject', value: 'Edited subject' },
      { kind: 'replbody', bytes: 16 },
      { kind: 'addrcpt', rcpt: '<added@example.org>' },
      { kind: 'chgfrom', sender: '<bounce@example.org>', args: 'BODY=8BITMIME' },
    ])
    // and as applied: the body replacement last, as one entry
    assert.deepEqual(doc.modifications, [
      { kind: 'addheader', name: 'X-Scanned', value: 'clean' },
      { kind: 'chgheader', index: 1, name: 'Subject', value: 'Edited subject' },
      { kind: 'addrcpt', rcpt: '<added@example.org>' },
      { kind: 'chgfrom', sender: '<bounce@example.org>', args: 'BODY=8BITMIME' },
      { kind: 'replbody', bytes: 16 },
    ])
    assert.deepEqual(doc.negotiated, {
      version: 6,
      actions: [
        'ADDHDRS',
        'CHGBODY',
        'ADDRCPT',
        'DELRCPT',
        'CHGHDRS',
        'QUARANTINE',
        'CHGFROM',
        'ADDRCPT_PAR',
        'SETSYMLIST',
      ],
      protocol: [],
      actionsHex: '0x1ff',
      protocolHex: '0x0',
      macrosRequested: {},
    })
    assert.deepEqual(doc.envelope, {
      from: '<bounce@example.org>',
      rcpts: ['<bob@example.net>', '<added@example.org>'],
    })
    assert.equal(doc.trace, undefined, 'no trace without --trace')
    assert.equal(doc.error, undefined)
    assert.equal(typeof doc.outputBytes, 'number')
  })

  it('--json: a header delete and an insert carry kind, index, name and value', async function () {
    const m = await start({
      eom: [
        { op: 'insheader', index: 0, name: 'X-Top', value: 'first' },
        { op: 'chgheader', name: 'To', index: 1, value: '' },
        { op: 'quarantine', reason: 'looks odd' },
      ],
    })
    const r = await runCli(['check', '--milter', m.socket, '--json', msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const doc = parseJson(r.stdout)
    assert.deepEqual(doc.modifications, [
      { kind: 'insheader', index: 0, name: 'X-Top', value: 'first' },
      { kind: 'chgheader', index: 1, name: 'To', value: '' },
      { kind: 'quarantine', reason: 'looks odd' },
    ])
    assert.equal(doc.quarantine, 'looks odd')
  })

  it('--json reports the macros a filter requested', async function () {
    const m = await start({ symlist: { connect: 'j {client_addr}', eom: ['i'] } })
    const r = await runCli(['check', '--milter', m.socket, '--json', msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const doc = parseJson(r.stdout)
    assert.deepEqual(doc.negotiated?.macrosRequested, {
      connect: ['j', '{client_addr}'],
      eom: ['i'],
    })
    // only the requested CONNECT macros were sent
    const macros = one(m, 'connect').macros
    assert.deepEqual(Object.keys(macros).sort(), ['j', '{client_addr}'])
    assert.equal(macros['{client_addr}'], '127.0.0.1')
  })

  it('--trace adds every packet both ways, decoded (name and fields), then its hex', async function () {
    const m = await start({
      symlist: { connect: 'j {client_addr}' },
      progress: { eom: 1 },
      eom: [{ op: 'addheader', name: 'X-T', value: 't' }],
    })
    const r = await runCli(['check', '--milter', m.socket, '--trace', msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const l = lines(r.stdout)
    const packets = l.filter((x) => x.startsWith('>> ') || x.startsWith('<< '))
    assert.equal(
      packets[0],
      '>> SMFIC_OPTNEG version=6 actions=0x1ff ' +
        'actionNames=["ADDHDRS","CHGBODY","ADDRCPT","DELRCPT","CHGHDRS","QUARANTINE","CHGFROM","ADDRCPT_PAR","SETSYMLIST"] ' +
        'protocol=0x1ff7ff protocolNames=["NOCONNECT","NOHELO","NOMAIL","NORCPT","NOBODY","NOHDRS","NOEOH","NR_HDR","NOUNKNOWN","NODATA","SKIP","NR_CONN","NR_HELO","NR_MAIL","NR_RCPT","NR_DATA","NR_UNKN","NR_EOH","NR_BODY","HDR_LEADSPC"] ' +
        'hex=4f00000006000001ff001ff7ff',
    )
    // the milter's answer to OPTNEG is named as the reply, not as the command
    assert.match(
      packets[1]!,
      /^<< SMFIC_OPTNEG reply version=6 actions=0x1ff actionNames=\[.*\] protocol=0x0 protocolNames=\[\] macrosRequested=\{"connect":\["j","\{client_addr\}"\]\} hex=4f00000006000001ff00000000/,
    )
    assert.equal(
      packets[2],
      `>> SMFIC_MACRO stage=SMFIC_CONNECT macros={"j":"${os.hostname()}","{client_addr}":"127.0.0.1"} hex=${Buffer.from(`DCj\0${os.hostname()}\0{client_addr}\x00127.0.0.1\0`).toString('hex')}`,
    )
    assert.equal(
      packets[3],
      `>> SMFIC_CONNECT hostname=localhost family=inet port=0 address=127.0.0.1 hex=${Buffer.from('Clocalhost\x004\x00\x00127.0.0.1\0', 'latin1').toString('hex')}`,
    )
    assert.equal(packets[4], '<< SMFIR_CONTINUE hex=63')
    assert.ok(
      packets.includes(
        `>> SMFIC_HELO helo=localhost hex=${Buffer.from('Hlocalhost\0').toString('hex')}`,
      ),
    )
    assert.ok(
      packets.includes(
        `>> SMFIC_HEADER name=Subject value="Original subject" hex=${Buffer.from('LSubject\0Original subject\0').toString('hex')}`,
      ),
      packets.join('\n'),
    )
    const body = Buffer.from('B' + BODY, 'latin1').toString('hex')
    assert.ok(
      packets.includes(
        `>> SMFIC_BODY bytes=${Buffer.byteLength(BODY)} preview=${JSON.stringify(BODY)} hex=${body}`,
      ),
      packets.join('\n'),
    )
    assert.ok(packets.includes('>> SMFIC_BODYEOB hex=45'))
    assert.ok(packets.includes('<< SMFIR_PROGRESS hex=70'))
    assert.ok(
      packets.includes(
        `<< SMFIR_ADDHEADER name=X-T value=t hex=${Buffer.from('hX-T\0t\0').toString('hex')}`,
      ),
      packets.join('\n'),
    )
    // the final reply, then our QUIT (written through the same path, so traced too)
    assert.equal(packets[packets.length - 2], '<< SMFIR_CONTINUE hex=63')
    assert.equal(packets[packets.length - 1], '>> SMFIC_QUIT hex=51')
    const names = packets.map((p) => p.split(' ')[1])
    for (const n of ['SMFIC_CONNECT', 'SMFIC_HELO', 'SMFIC_MAIL', 'SMFIC_RCPT', 'SMFIC_DATA']) {
      assert.ok(names.includes(n), `${n} in the trace`)
    }
    assert.equal(names.filter((n) => n === 'SMFIC_HEADER').length, 4)
    assert.match(r.stdout, /^verdict: accept$/m)

    // and as a `trace` array in JSON, with the same fields as data
    const j = await runCli(['check', '--milter', m.socket, '--trace', '--json', msgFile])
    assert.equal(j.code, 0)
    const doc = parseJson(j.stdout)
    assert.ok(doc.trace)
    assert.equal(doc.trace.length, packets.length)
    assert.deepEqual(doc.trace[0], {
      dir: 'send',
      name: 'SMFIC_OPTNEG',
      fields: {
        version: 6,
        actions: '0x1ff',
        actionNames: [
          'ADDHDRS',
          'CHGBODY',
          'ADDRCPT',
          'DELRCPT',
          'CHGHDRS',
          'QUARANTINE',
          'CHGFROM',
          'ADDRCPT_PAR',
          'SETSYMLIST',
        ],
        protocol: '0x1ff7ff',
        protocolNames: [
          'NOCONNECT',
          'NOHELO',
          'NOMAIL',
          'NORCPT',
          'NOBODY',
          'NOHDRS',
          'NOEOH',
          'NR_HDR',
          'NOUNKNOWN',
          'NODATA',
          'SKIP',
          'NR_CONN',
          'NR_HELO',
          'NR_MAIL',
          'NR_RCPT',
          'NR_DATA',
          'NR_UNKN',
          'NR_EOH',
          'NR_BODY',
          'HDR_LEADSPC',
        ],
      },
      hex: '4f00000006000001ff001ff7ff',
    })
    assert.equal(doc.trace[1]?.name, 'SMFIC_OPTNEG reply')
    assert.deepEqual(doc.trace[1]?.fields['macrosRequested'], { connect: ['j', '{client_addr}'] })
    assert.deepEqual(
      doc.trace.find((p) => p.name === 'SMFIR_ADDHEADER'),
      {
        dir: 'recv',
        name: 'SMFIR_ADDHEADER',
        fields: { name: 'X-T', value: 't' },
        hex: Buffer.from('hX-T\0t\0').toString('hex'),
      },
    )
    assert.deepEqual(doc.trace.slice(-2), [
      { dir: 'recv', name: 'SMFIR_CONTINUE', fields: {}, hex: '63' },
      { dir: 'send', name: 'SMFIC_QUIT', fields: {}, hex: '51' },
    ])
    // the eom stage counts the progress packet
    assert.equal(doc.stages.find((s) => s.stage === 'eom')?.progress, 1)
  })

  it('a single-line reply code at EOB: exit 1 with the reply line, no --out written', async function () {
    const m = await start({
      reply: { eom: { code: '554', xcode: '5.7.1', text: 'Spam detected' } },
      eom: [{ op: 'addheader', name: 'X-Moot', value: '1' }],
    })
    const out = path.join(dir, 'rejected.eml')
    const r = await runCli(['check', '--milter', m.socket, '--out', out, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    const l = lines(r.stdout)
    const i = l.indexOf('eom: replycode 554')
    assert.ok(i > 0, r.stdout)
    assert.equal(l[i + 1], '  554 5.7.1 Spam detected')
    assert.equal(l[l.length - 1], 'verdict: reject (554 5.7.1 Spam detected)')
    assert.equal(fs.existsSync(out), false)
    one(m, 'eom')
  })

  it('a multi-line reply code at EOB: exit 1 with every line', async function () {
    const m = await start({
      reply: { eom: { code: '550', xcode: '5.7.1', lines: ['first line', 'second line'] } },
    })
    const r = await runCli(['check', '--milter', m.socket, '--json', msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    const doc = parseJson(r.stdout)
    assert.equal(doc.verdict, 'reject')
    const lines550 = [
      { enhanced: '5.7.1', text: 'first line' },
      { enhanced: '5.7.1', text: 'second line' },
    ]
    assert.deepEqual(doc.reply, { code: 550, enhanced: '5.7.1', lines: lines550 })
    assert.deepEqual(doc.stages[doc.stages.length - 1]?.reply, {
      name: 'SMFIR_REPLYCODE',
      kind: 'replycode',
      text: '550-5.7.1 first line\r\n550 5.7.1 second line',
      code: 550,
      enhanced: '5.7.1',
      lines: lines550,
    })
    const t = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(t.code, 1)
    assert.match(t.stdout, /^ {2}550-5\.7\.1 first line\n {2}550 5\.7\.1 second line$/m)
    assert.match(
      t.stdout,
      /^verdict: reject \(550-5\.7\.1 first line \/ 550 5\.7\.1 second line\)$/m,
    )
  })

  it('a plain reject at EOB: the reply Haraka gives after DATA, 554 5.7.1 Message rejected', async function () {
    const m = await start({ reply: { eom: 'reject' } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, /^verdict: reject \(554 5\.7\.1 Message rejected\)$/m)
  })

  it('a 421 reply code closes the session: verdict shutdown, as the plugin answers it', async function () {
    const m = await start({ reply: { mail: { code: '421', xcode: '4.7.0', text: 'going away' } } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, /^verdict: shutdown \(421 4\.7\.0 going away\)$/m)
  })

  it('a tempfail at CONNECT is answered at MAIL (a greeting may not be 451)', async function () {
    const m = await start({ reply: { connect: 'tempfail' } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, /^connect: tempfail$/m)
    assert.match(r.stdout, /^verdict: tempfail \(451 4\.7\.1 /m)
  })

  it('--reply-code enhanced_only and --header-folds keep, as in milter.ini', async function () {
    const m = await start({
      reply: { mail: { code: '553', xcode: '5.1.8', text: 'bad sender domain' } },
    })
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--reply-code',
      'enhanced_only',
      msgFile,
    ])
    assert.match(r.stdout, /^verdict: reject \(550 5\.1\.8 bad sender domain\)$/m)
    const k = await start({
      eom: [{ op: 'addheader', name: 'X-Folded', value: 'a=1;\n\tb=2' }],
    })
    const out = path.join(dir, 'folds.eml')
    const kept = await runCli([
      'check',
      '--milter',
      k.socket,
      '--header-folds',
      'keep',
      '--out',
      out,
      msgFile,
    ])
    assert.equal(kept.code, 0, kept.stdout + kept.stderr)
    assert.match(fs.readFileSync(out, 'utf8'), /\r\nX-Folded: a=1;\r\n\tb=2\r\n/)
    await runCli(['check', '--milter', k.socket, '--out', out, msgFile])
    assert.match(fs.readFileSync(out, 'utf8'), /\r\nX-Folded: a=1; b=2\r\n/)
  })

  it('tempfail at EOB: exit 1', async function () {
    const m = await start({ reply: { eom: 'tempfail' } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, /^eom: tempfail$/m)
    assert.match(r.stdout, /^verdict: tempfail \(451 /m)
  })

  it('a plain reject at MAIL: exit 1, later stages not run', async function () {
    const m = await start({ reply: { mail: 'reject' } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.deepEqual(lines(r.stdout).slice(2), [
      'connect: continue',
      'helo: continue',
      'mail: reject',
      'verdict: reject (550 5.7.1 Command rejected)',
    ])
    assert.equal(m.eventsOf('envrcpt').length, 0)
    assert.equal(m.eventsOf('eom').length, 0)
  })

  it('discard at EOB: exit 0 with verdict discard', async function () {
    const m = await start({ reply: { eom: 'discard' } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /^verdict: discard$/m)
  })

  it('a quarantine is reported', async function () {
    const m = await start({ eom: [{ op: 'quarantine', reason: 'looks odd' }] })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /^ {2}quarantine: looks odd$/m)
    assert.match(r.stdout, /^quarantine: looks odd$/m)
  })

  it('a milter that is not listening: exit 2 with MILTER_ERR_CONNECT', async function () {
    const port = await freePort()
    const r = await runCli(['check', '--milter', `inet:${port}@127.0.0.1`, msgFile])
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(
      r.stdout,
      /^error: MILTER_ERR_CONNECT: cannot connect to milter at inet:\d+@127\.0\.0\.1/m,
    )
    assert.match(r.stdout, /^verdict: error$/m)
    const j = await runCli([
      'check',
      '--milter',
      `unix:${path.join(dir, 'no-such.sock')}`,
      '--json',
      msgFile,
    ])
    assert.equal(j.code, 2)
    const doc = parseJson(j.stdout)
    assert.equal(doc.verdict, 'error')
    assert.equal(doc.error?.code, 'MILTER_ERR_CONNECT')
  })

  it('a filter requiring what we do not offer: exit 2 with MILTER_ERR_NEGOTIATE and our masks', async function () {
    // we never offer SMFIP_RCPT_REJ; libmilter hangs up
    const m = await start({ protocol: { rcptRej: true } })
    const r = await runCli(['check', '--milter', m.socket, msgFile])
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(r.stdout, /^error: MILTER_ERR_NEGOTIATE: .*actions=0x1ff, protocol=0x1ff7ff/m)
    assert.equal(m.eventsOf('connect').length, 0)
  })

  it('a filter slower than --timeout: exit 2 with MILTER_ERR_TIMEOUT', async function () {
    const m = await start({ sleepMs: { eom: 1500 } })
    const t0 = Date.now()
    const r = await runCli(['check', '--milter', m.socket, '--timeout', '0.3', msgFile])
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(r.stdout, /^error: MILTER_ERR_TIMEOUT: milter content timeout after 300 ms/m)
    assert.ok(Date.now() - t0 < 1500, 'the CLI did not wait for the filter')
  })

  describe('bad arguments: exit 2 with a usage message', function () {
    const cases: Array<[string, (file: string) => string[], RegExp]> = [
      ['no --milter', (f) => ['check', f], /--milter is required/],
      ['no command', () => [], /missing command/],
      [
        'an unknown command',
        (f) => ['scan', '--milter', 'inet:1@127.0.0.1', f],
        /unknown command "scan"/,
      ],
      [
        'a bad --protocol',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', '--protocol', '7', f],
        /--protocol: must be an integer from 2 to 6, not "7"/,
      ],
      [
        'a non-numeric --protocol',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', '--protocol', 'six', f],
        /--protocol: must be an integer from 2 to 6, not "six"/,
      ],
      [
        'an unreadable file',
        () => ['check', '--milter', 'inet:1@127.0.0.1', '/nonexistent/message.eml'],
        /cannot read \/nonexistent\/message\.eml/,
      ],
      [
        'no message file',
        () => ['check', '--milter', 'inet:1@127.0.0.1'],
        /exactly one MESSAGE\.eml is required/,
      ],
      [
        'two message files',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', f, f],
        /exactly one MESSAGE\.eml is required/,
      ],
      [
        'a --macro without =',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', '--macro', 'novalue', f],
        /--macro needs NAME=VALUE/,
      ],
      [
        'a bad --timeout',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', '--timeout', '0', f],
        /--timeout: must be a number of seconds/,
      ],
      [
        'an unknown option',
        (f) => ['check', '--milter', 'inet:1@127.0.0.1', '--frobnicate', f],
        /Unknown option '--frobnicate'/,
      ],
    ]
    for (const [title, args, reason] of cases) {
      it(title, async function () {
        const r = await runCli(args(msgFile))
        assert.equal(r.code, 2, r.stdout + r.stderr)
        assert.match(r.stderr, reason)
        assert.match(r.stderr, USAGE)
        assert.equal(r.stdout, '', 'nothing on stdout: no report was run')
      })
    }

    // bin/haraka-milter.ts does not validate --milter before running the check:
    // a bad spec is reported as MILTER_ERR_CONFIG on stdout, without the usage.
    it('a bad socket spec (unrecognised, relative unix path, port out of range)', async function () {
      const specs: Array<[string, RegExp]> = [
        ['bogus', /unrecognised milter socket "bogus"/],
        ['unix:milter.sock', /unix socket path must be absolute/],
        ['inet:70000@127.0.0.1', /port 70000 out of range/],
      ]
      for (const [spec, reason] of specs) {
        const r = await runCli(['check', '--milter', spec, msgFile])
        assert.equal(r.code, 2, r.stdout + r.stderr)
        assert.match(r.stdout + r.stderr, reason)
        assert.match(r.stderr, USAGE, `usage on stderr for --milter ${spec}`)
        assert.equal(r.stdout, '', `nothing on stdout for --milter ${spec}: no report was run`)
      }
    })

    it('--help prints the usage on stdout with exit 0', async function () {
      for (const args of [['check', '--help'], ['--help'], ['-h'], ['help']]) {
        const r = await runCli(args)
        assert.equal(r.code, 0, args.join(' '))
        assert.match(r.stdout, USAGE)
        assert.equal(r.stderr, '')
      }
    })
  })

  it('--protocol 2: negotiates version 2, no DATA reaches the filter, edits still apply', async function () {
    const m = await start({ eom: [{ op: 'addheader', name: 'X-V2', value: 'yes' }] })
    const out = path.join(dir, 'v2.eml')
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--protocol',
      '2',
      '--out',
      out,
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(
      r.stdout,
      /^negotiated: version 2, actions 0x3f \[ADDHDRS CHGBODY ADDRCPT DELRCPT CHGHDRS QUARANTINE\], protocol 0x300 \[NOUNKNOWN NODATA\]$/m,
    )
    assert.match(r.stdout, /^ {2}add header X-V2: "yes"$/m)
    assert.match(r.stdout, /^verdict: accept$/m)
    assert.ok(r.stdout.startsWith(`milter: ${m.socket}\n`))
    assert.equal(m.eventsOf('data').length, 0)
    assert.equal(one(m, 'negotiate').offered.actions, 0x3f)
    assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
    assert.match(fs.readFileSync(out, 'latin1'), /\r\nX-V2: yes\r\n\r\nHello Bob,/)
  })

  it('--macro NAME=VALUE and the client options reach the filter', async function () {
    const m = await start({})
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--macro',
      '{auth_authen}=alice',
      '--macro',
      'auth_type=PLAIN',
      '--macro',
      'i=QID4242',
      '--client-ip',
      '192.0.2.7',
      '--client-name',
      'mail.example.com',
      '--helo',
      'helo.example.com',
      '--from',
      '<alice@example.com>',
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const c = one(m, 'connect')
    assert.equal(c.hostname, 'mail.example.com')
    assert.deepEqual(c.hostaddr, ['192.0.2.7', 0])
    assert.equal(c.macros['{auth_authen}'], 'alice')
    assert.equal(c.macros['{auth_type}'], 'PLAIN')
    assert.equal(c.macros['{client_addr}'], '192.0.2.7')
    assert.equal(c.macros['{client_name}'], 'mail.example.com')
    assert.equal(one(m, 'helo').helo, 'helo.example.com')
    const from = one(m, 'envfrom')
    assert.equal(from.sender, '<alice@example.com>')
    assert.equal(from.macros['i'], 'QID4242')
    assert.equal(from.macros['{mail_addr}'], 'alice@example.com')
    assert.equal(one(m, 'eom').macros['i'], 'QID4242')
  })

  it('--rcpt twice, one rejected by the filter: the other continues and the message is accepted', async function () {
    const m = await start({
      reply: {
        rcpt: {
          '<bad@example.com>': { code: '550', xcode: '5.1.1', text: 'No such user' },
          '*': 'continue',
        },
      },
      eom: [{ op: 'addheader', name: 'X-Rcpt', value: 'ok' }],
    })
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--rcpt',
      'bad@example.com',
      '--rcpt',
      'good@example.com',
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const l = lines(r.stdout)
    const i = l.indexOf('rcpt <bad@example.com>: replycode 550')
    assert.ok(i > 0, r.stdout)
    assert.equal(l[i + 1], '  550 5.1.1 No such user')
    assert.equal(l[i + 2], 'rcpt <good@example.com>: continue')
    assert.ok(l.includes('envelope: from <alice@example.com> to <good@example.com>'), r.stdout)
    assert.equal(l[l.length - 1], 'verdict: accept')
    assert.deepEqual(
      m.eventsOf('envrcpt').map((e) => [e.rcpt, e.macros['{rcpt_addr}']]),
      [
        ['<bad@example.com>', 'bad@example.com'],
        ['<good@example.com>', 'good@example.com'],
      ],
    )
    assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
  })

  it('every --rcpt rejected: exit 1, no DATA, the reply Haraka gave the last RCPT', async function () {
    const m = await start({ reply: { rcpt: 'reject' } })
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--rcpt',
      'a@example.com',
      '--rcpt',
      'b@example.com',
      msgFile,
    ])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, /^verdict: reject \(550 5\.7\.1 Command rejected\)$/m)
    assert.equal(m.eventsOf('envrcpt').length, 2)
    assert.equal(m.eventsOf('data').length, 0)
  })

  it('over a unix socket, with an IPv6 client address', async function () {
    const m = await start(EDITS, 'unix')
    assert.match(m.socket, /^unix:\//)
    const out = path.join(dir, 'unix.eml')
    const r = await runCli([
      'check',
      '--milter',
      m.socket,
      '--client-ip',
      '2001:db8::7',
      '--out',
      out,
      msgFile,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /^verdict: accept$/m)
    const c = one(m, 'connect')
    assert.equal(c.familyName, 'inet6')
    assert.ok(Array.isArray(c.hostaddr))
    assert.equal(c.hostaddr[0], '2001:db8::7')
    assert.match(fs.readFileSync(out, 'latin1'), /^Subject: Edited subject\r$/m)
    assert.equal(one(m, 'eom').bodySha256, sha256(BODY))
  })
})

describe('haraka-milter config and check --config (CLI) against libmilter (scripted.py)', function () {
  this.timeout(30000)
  let dir: string

  before(function () {
    assertPymilterInstalled()
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'haraka-milter-config-'))
  })

  after(async function () {
    await stopAllMilters()
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  })

  function writeIni(name: string, text: string): string {
    const file = path.join(dir, name)
    fs.writeFileSync(file, text)
    return file
  }

  it('(process) config --probe: the effective configuration, the warnings, each endpoint negotiated; exit 0', async function () {
    const m = await startScriptedMilter({}, { transport: 'inet' })
    const file = writeIni(
      'ok.ini',
      `[main]\nmilters = dkim\ndefualt_action = accept\n\n[milter.dkim]\nsocket = ${m.socket}\ncommand_timeout = 7\n` +
        `[listener.submission]\nlisten = 127.0.0.1:587\nmilters = dkim\nsource_channel = tcp_auth\n`,
    )
    const r = await runBin(['config', '--config', file, '--probe'])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const l = lines(r.stdout)
    assert.equal(l[0], `${file}: ok`)
    assert.ok(
      l.includes('listener submission (127.0.0.1:587): milters dkim; source_channel tcp_auth'),
      r.stdout,
    )
    assert.ok(l.includes('listener * (any other address): milters dkim; source_channel tcp_local'))
    assert.ok(l.includes(`  endpoints: ${m.socket}`))
    assert.ok(l.includes('  default_action: tempfail; failure_scope: message'), r.stdout)
    assert.ok(l.includes('  timeouts: connect 10s, command 7s, content 300s, eom 300s'))
    assert.ok(l.some((x) => x.startsWith(`probe dkim ${m.socket}: ok, version 6, actions 0x1ff`)))
    assert.ok(
      l.includes(
        `warning: ${file} [main] defualt_action: unknown key, ignored (did you mean default_action?)`,
      ),
      r.stdout,
    )
    const j = await runCli(['config', '--config', file, '--probe', '--json'])
    assert.equal(j.code, 0)
    const doc = JSON.parse(j.stdout)
    assert.equal(doc.ok, true)
    assert.deepEqual(doc.milters[0].endpoints, [m.socket])
    assert.equal(doc.probes[0].ok, true)
    assert.equal(doc.probes[0].negotiated.version, 6)
  })

  it('config: an error exits 1 and says what the plugin would log; a dead endpoint fails its probe', async function () {
    const bad = writeIni(
      'bad.ini',
      '[main]\nmilters = x\n[milter.x]\nsocket = inet:1@127.0.0.1\nprotocol = 9\n',
    )
    const r = await runCli(['config', '--config', bad])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(
      r.stdout,
      /^error: .*bad\.ini \[milter\.x\] protocol: must be an integer from 2 to 6, not "9"$/m,
    )
    const down = writeIni(
      'down.ini',
      '[main]\nmilters = x\n[milter.x]\nsocket = inet:1@127.0.0.1\nconnect_timeout = 2\n',
    )
    const p = await runCli(['config', '--config', down, '--probe'])
    assert.equal(p.code, 1, p.stdout + p.stderr)
    assert.match(p.stdout, /^probe x inet:1@127\.0\.0\.1: FAILED MILTER_ERR_CONNECT: /m)
  })

  it('check --config --milter NAME: the configured milter with its settings, envelope from the headers', async function () {
    const m = await startScriptedMilter(
      { reply: { mail: { code: '553', xcode: '5.1.8', text: 'bad sender' } } },
      { transport: 'inet' },
    )
    const file = writeIni(
      'check.ini',
      `[main]\nmilters = one\nreply_code = enhanced_only\n[milter.one]\nsocket = ${m.socket}\n`,
    )
    const msg = path.join(dir, 'm.eml')
    fs.writeFileSync(
      msg,
      'Return-Path: <bounce@example.org>\r\nFrom: a@example.com\r\nTo: "B" <b@example.net>, c@example.net\r\nSubject: x\r\n\r\nbody\r\n',
    )
    const r = await runCli(['check', '--config', file, '--milter', 'one', msg])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    // enhanced_only from [main]: 550 with the milter's enhanced code and text
    assert.match(r.stdout, /^verdict: reject \(550 5\.1\.8 bad sender\)$/m)
    assert.equal(one(m, 'envfrom').sender, '<bounce@example.org>')
    const refused = await runCli([
      'check',
      '--config',
      file,
      '--milter',
      'one',
      '--protocol',
      '2',
      msg,
    ])
    assert.equal(refused.code, 2)
    assert.match(refused.stderr, /--protocol cannot be used with --config/)
    const unknown = await runCli(['check', '--config', file, '--milter', 'two', msg])
    assert.equal(unknown.code, 2)
    assert.match(unknown.stderr, /has no milter "two" \(milters: one\)/)
  })

  describe('check over TLS, with the milter.ini keys as flags', function () {
    let certs: TestCerts
    let port: number
    const proxies: TlsProxy[] = []

    before(async function () {
      certs = makeCerts()
      const m = await startScriptedMilter(
        { eom: [{ op: 'addheader', name: 'X-Tls', value: 'yes' }] },
        { transport: 'inet' },
      )
      port = Number(/^inet:(\d+)@/.exec(m.socket)?.[1])
    })

    after(async function () {
      for (const p of proxies) await p.stop()
      certs?.remove()
    })

    async function proxy(maxVersion?: 'TLSv1.2'): Promise<string> {
      const p = await startTlsProxy({
        cert: certs.serverCert,
        key: certs.serverKey,
        target: port,
        clientCa: certs.ca,
        ...(maxVersion ? { maxVersion } : {}),
      })
      proxies.push(p)
      return `inet:${p.port}@127.0.0.1`
    }

    const msg = (): string => {
      const f = path.join(dir, 'tls.eml')
      fs.writeFileSync(f, MESSAGE)
      return f
    }

    it('with the client certificate: the milter is reached over TLS and edits the message', async function () {
      const r = await runCli([
        'check',
        '--milter',
        await proxy(),
        '--tls-ca',
        certs.ca,
        '--tls-cert',
        certs.clientCert,
        '--tls-key',
        certs.clientKey,
        msg(),
      ])
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.match(r.stdout, /^ {2}add header X-Tls: "yes"$/m)
    })

    for (const version of ['TLSv1.3', 'TLSv1.2'] as const)
      it(`${version}, no client certificate: a TLS connect failure naming the alert, with the hint, on one line`, async function () {
        const socket = await proxy(version === 'TLSv1.2' ? 'TLSv1.2' : undefined)
        const r = await runCli(['check', '--milter', socket, '--tls-ca', certs.ca, msg()])
        assert.equal(r.code, 2, r.stdout + r.stderr)
        const line = lines(r.stdout).find((l) => l.startsWith('error: '))
        assert.ok(line, r.stdout)
        assert.match(
          line,
          /^error: MILTER_ERR_CONNECT: .*TLS.* failed: the milter sent the TLS alert "(certificate required|handshake failure)" \(ERR_SSL_[\w/]+\); the milter probably requires a client certificate it accepts: set tls_cert and tls_key/,
        )
        assert.doesNotMatch(r.stdout, /MILTER_ERR_NEGOTIATE|protocol steps/)
        if (version === 'TLSv1.3') assert.match(line, /certificate required/)
      })

    it('config --probe reports the same failure for a configured TLS milter', async function () {
      const socket = await proxy()
      const file = path.join(dir, 'tls.ini')
      fs.writeFileSync(
        file,
        `[main]\nmilters = t\n[milter.t]\nsocket = ${socket}\ntls = true\ntls_ca = ${certs.ca}\n`,
      )
      const r = await runCli(['config', '--config', file, '--probe'])
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.match(
        r.stdout,
        /^probe t inet:\d+@127\.0\.0\.1: FAILED MILTER_ERR_CONNECT: .*TLS alert "certificate required".*set tls_cert and tls_key$/m,
      )
    })
  })
})

describe('haraka-milter quarantine (CLI)', function () {
  it('(process) list on an empty store: exit 0, [] with --json; an unknown subcommand: exit 2 with the usage', async function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'haraka-milter-quarantine-'))
    try {
      const r = await runBin(['quarantine', 'list', '--json', '--dir', dir])
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), [])
      const bad = await runBin(['quarantine', 'bogus'])
      assert.equal(bad.code, 2)
      assert.equal(bad.stdout, '')
      assert.match(
        bad.stderr,
        /^haraka-milter: unknown quarantine command "bogus"\nusage: haraka-milter quarantine list/,
      )
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
