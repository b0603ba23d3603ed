/**
 * The end-of-message stall, per kind of milter (`npm run bench:stall`): a milter that writes its
 * end-of-message modification and its verdict apart, Nagle on, used to make the verdict wait for
 * our delayed ACK (about 40 ms). The plugin now asks for prompt ACKs (TCP_QUICKACK) once the EOB
 * packet is written (lib/transport/quickack.ts). For each milter kind this prints the median
 * time, one message at a time:
 *
 * - `session`: SMFIC_BODYEOB written -> final reply, one MilterSession in a child process, with
 *   prompt ACKs and without (the child preloads bench/no-quickack-preload.ts, so koffi cannot
 *   load), over TCP, and over a unix socket where the milter can listen on one;
 * - `SMTP`: the final dot sent -> the reply to it, through Haraka + plugin (with and without,
 *   the same preload in Haraka) and through Postfix with the same milter (one SMTP session per
 *   message, the three interleaved message by message).
 *
 * Milters: test/milters/addheader.c (libmilter, C), pymilter (test/milters/scripted.py),
 * OpenDKIM signing, rspamd (proxy worker in milter mode) and a split-write milter without
 * libmilter (test/helpers/stall-milters.ts). Every process started is stopped at the end.
 *
 *   node dist/bench/stall.js [--messages=N] [--rounds=R] [--only=c,py,...] [--no-smtp] [--json]
 */
import { spawn } from 'node:child_process'
import * as path from 'node:path'

import type { ConnectAddress } from '../lib/protocol/commands'
import { DEFAULT_MACROS, type MacroLookup } from '../lib/session/macros'
import { openSession } from '../lib/session/open'
import { parseSocketSpec } from '../lib/transport/spec'
import { startRspamd, stopAllRspamd } from '../test/helpers/daemons/rspamd'
import { startScriptedMilter, stopAllMilters } from '../test/helpers/milter-process'
import { generateDkimKey, startOpenDkim, stopAllOpenDkims } from '../test/helpers/opendkim'
import { SmtpClient } from '../test/helpers/smtp-client'
import {
  startCAddHeader,
  startSplitWriteMilter,
  stopCAddHeaders,
  type StallTransport,
} from '../test/helpers/stall-milters'
import { postfixMissing } from './smtp/postfix'
import { startHarakaServer, startPostfixServer, type Server } from './smtp/servers'
import { formatColumns } from './report'

const NO_QUICKACK = path.join(__dirname, 'no-quickack-preload.js')

// ---------------------------------------------------------------------------
// One message: the headers, the body and the macros both paths send

const FROM = 'alice@example.com'
const TO = 'bob@example.com'
const BODY = 'Hi Bob,\r\n\r\nshall we have lunch on Friday?\r\n\r\nAlice\r\n'

function headerLines(n: number): Array<[string, string]> {
  return [
    ['From', ` Alice <${FROM}>`],
    ['To', ` Bob <${TO}>`],
    ['Subject', ` lunch ${n}`],
    ['Date', ` ${new Date().toUTCString().replace(/GMT$/, '+0000')}`],
    ['Message-ID', ` <stall-${n}-${Date.now()}@example.com>`],
  ]
}

const CLIENT: ConnectAddress = { family: 'inet', address: '127.0.0.1', port: 52100 }
const macros: MacroLookup = (n) =>
  n === 'i' ? 'QID1' : n === 'j' ? 'mx.example.com' : n === '{daemon_name}' ? 'mx' : undefined

// ---------------------------------------------------------------------------
// Child: one session, N messages, EOB written -> final reply

async function child(socket: string, count: number): Promise<void> {
  const s = await openSession(parseSocketSpec(socket), {
    name: 'stall',
    timeouts: { connectMs: 10_000, commandMs: 10_000, contentMs: 10_000 },
    macros: DEFAULT_MACROS,
  })
  await s.connect('client.example', CLIENT, macros)
  await s.helo('client.example', macros)
  const times: number[] = []
  for (let n = 0; n < count; n++) {
    await s.mail([`<${FROM}>`], macros)
    await s.rcpt([`<${TO}>`], macros)
    await s.data(macros)
    for (const [name, value] of headerLines(n)) await s.header(name, Buffer.from(value))
    await s.eoh(macros)
    await s.body(Buffer.from(BODY))
    const t0 = process.hrtime.bigint()
    const r = await s.endOfMessage(macros)
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
    if (r.modifications.length === 0) throw new Error(`${socket}: no modification at EOM`)
  }
  s.quit()
  process.stdout.write(JSON.stringify(times))
}

function runChild(socket: string, count: number, noQuickAck: boolean): Promise<number[]> {
  const args = [
    ...(noQuickAck ? ['--require', NO_QUICKACK] : []),
    __filename,
    '--child',
    socket,
    String(count),
  ]
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    c.stdout.on('data', (d: Buffer) => (out += d.toString()))
    c.stderr.on('data', (d: Buffer) => (err += d.toString()))
    c.on('exit', (code) => {
      if (code === 0) resolve(JSON.parse(out) as number[])
      else reject(new Error(`stall child for ${socket} exited ${String(code)}: ${err}`))
    })
  })
}

// ---------------------------------------------------------------------------
// SMTP: the final dot -> its reply

async function smtpMessage(port: number, n: number): Promise<number> {
  const c = await SmtpClient.connect('127.0.0.1', port, { timeoutMs: 20_000 })
  try {
    await c.command('EHLO stall.example.com')
    const mail = await c.command(`MAIL FROM:<${FROM}>`)
    const rcpt = await c.command(`RCPT TO:<${TO}>`)
    const data = await c.command('DATA')
    if (mail.code !== 250 || rcpt.code !== 250 || data.code !== 354)
      throw new Error(`port ${port}: ${mail.code} ${rcpt.code} ${data.code}`)
    const msg = `${headerLines(n)
      .map(([k, v]) => `${k}:${v}\r\n`)
      .join('')}\r\n${BODY}`
    const t0 = process.hrtime.bigint()
    const r = await c.sendData(msg)
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    if (r.code !== 250) throw new Error(`port ${port}: final reply ${r.raw}`)
    await c.quit()
    return ms
  } finally {
    await c.close()
  }
}

// ---------------------------------------------------------------------------
// Milter kinds

interface Running {
  socket: string
  stop(): Promise<void>
}

interface Kind {
  key: string
  name: string
  start(t: StallTransport): Promise<Running>
  /** Transports it can listen on here. */
  transports: readonly StallTransport[]
}

const dkimKey = generateDkimKey('example.com', 'stall')

const KINDS: readonly Kind[] = [
  {
    key: 'c',
    name: 'libmilter C (addheader.c)',
    start: (t) => startCAddHeader(t),
    transports: ['inet', 'unix'],
  },
  {
    key: 'py',
    name: 'pymilter (scripted.py)',
    start: (t) =>
      startScriptedMilter(
        { eom: [{ op: 'addheader', name: 'X-Stall', value: 'added' }] },
        { transport: t },
      ),
    transports: ['inet', 'unix'],
  },
  {
    key: 'opendkim',
    name: 'OpenDKIM 2.11 signing',
    start: () => startOpenDkim({ mode: 's', signingKey: dkimKey }),
    transports: ['inet'],
  },
  { key: 'rspamd', name: 'rspamd 3.4 (milter)', start: () => startRspamd(), transports: ['inet'] },
  {
    key: 'split',
    name: 'no libmilter, 2 writes',
    start: (t) => startSplitWriteMilter(t),
    transports: ['inet', 'unix'],
  },
]

// ---------------------------------------------------------------------------
// Figures

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}

interface Row {
  milter: string
  path: string
  fix: number[]
  noFix: number[]
  postfix: number[]
}

function ms(xs: readonly number[]): string {
  if (xs.length === 0) return '-'
  const v = median(xs)
  return v >= 10 ? v.toFixed(1) : v.toFixed(2)
}

function printTable(rows: readonly Row[]): void {
  const head = ['milter', 'path', 'with fix', 'without', 'ratio', 'Postfix', 'n']
  const body = rows.map((r) => [
    r.milter,
    r.path,
    ms(r.fix),
    ms(r.noFix),
    r.noFix.length ? (median(r.noFix) / median(r.fix)).toFixed(0) + 'x' : '-',
    ms(r.postfix),
    String(r.fix.length),
  ])
  for (const l of formatColumns(head, body)) console.log(l)
  console.log(
    'median ms, one message at a time. session: SMFIC_BODYEOB written -> final reply (one ' +
      'MilterSession); SMTP: final dot -> its reply (Haraka + plugin; Postfix 3.7 with the same milter)',
  )
}

// ---------------------------------------------------------------------------
// Main

interface Args {
  messages: number
  rounds: number
  only: Set<string> | undefined
  smtp: boolean
  json: boolean
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { messages: 10, rounds: 3, only: undefined, smtp: true, json: false }
  for (const arg of argv) {
    const [k, v = ''] = arg.split('=', 2) as [string, string?]
    if (k === '--messages') a.messages = Number(v)
    else if (k === '--rounds') a.rounds = Number(v)
    else if (k === '--only') a.only = new Set(v.split(','))
    else if (k === '--no-smtp') a.smtp = false
    else if (k === '--json') a.json = true
    else throw new Error(`unknown argument ${arg}`)
  }
  return a
}

async function measureKind(kind: Kind, a: Args): Promise<Row[]> {
  const stops: Array<() => Promise<void>> = []
  const servers: Server[] = []
  try {
    const tcp = await kind.start('inet')
    stops.push(() => tcp.stop())
    const unix = kind.transports.includes('unix') ? await kind.start('unix') : undefined
    if (unix) stops.push(() => unix.stop())
    const session: Row = {
      milter: kind.name,
      path: 'session, TCP',
      fix: [],
      noFix: [],
      postfix: [],
    }
    const sessionUnix: Row = { ...session, path: 'session, unix', fix: [], noFix: [], postfix: [] }
    const smtp: Row = { ...session, path: 'SMTP, TCP', fix: [], noFix: [], postfix: [] }
    let haraka: Server | undefined
    let harakaNoQa: Server | undefined
    let postfix: Server | undefined
    if (a.smtp) {
      const base = { mta: 'haraka' as const, base: 'haraka' }
      haraka = await startHarakaServer({ ...base, name: `haraka+${kind.key}` }, tcp.socket)
      servers.push(haraka)
      harakaNoQa = await startHarakaServer(
        { ...base, name: `haraka+${kind.key}-noqa`, noQuickAck: true },
        tcp.socket,
      )
      servers.push(harakaNoQa)
      if (postfixMissing() === undefined) {
        postfix = await startPostfixServer(
          { name: `postfix+${kind.key}`, mta: 'postfix', base: 'postfix' },
          tcp.socket,
        )
        servers.push(postfix)
      }
    }
    for (let round = 0; round < a.rounds; round++) {
      session.fix.push(...(await runChild(tcp.socket, a.messages, false)))
      session.noFix.push(...(await runChild(tcp.socket, a.messages, true)))
      if (unix) sessionUnix.fix.push(...(await runChild(unix.socket, a.messages, false)))
      if (!haraka || !harakaNoQa) continue
      for (let n = 0; n < a.messages; n++) {
        smtp.fix.push(await smtpMessage(haraka.port, n))
        smtp.noFix.push(await smtpMessage(harakaNoQa.port, n))
        if (postfix) smtp.postfix.push(await smtpMessage(postfix.port, n))
      }
    }
    return [session, ...(unix ? [sessionUnix] : []), ...(a.smtp ? [smtp] : [])]
  } finally {
    for (const s of servers) await s.stop()
    for (const stop of stops.reverse()) await stop()
  }
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2))
  const rows: Row[] = []
  try {
    for (const kind of KINDS) {
      if (a.only && !a.only.has(kind.key)) continue
      process.stderr.write(`stall: ${kind.name}...\n`)
      rows.push(...(await measureKind(kind, a)))
    }
  } finally {
    await stopCAddHeaders()
    await stopAllMilters()
    await stopAllOpenDkims()
    await stopAllRspamd()
  }
  if (a.json) console.log(JSON.stringify(rows, null, 2))
  else printTable(rows)
}

if (process.argv[2] === '--child') {
  child(process.argv[3] ?? '', Number(process.argv[4] ?? 10)).catch((e: unknown) => {
    console.error(e)
    process.exit(1)
  })
} else {
  main().catch((e: unknown) => {
    console.error(e)
    process.exit(1)
  })
}
