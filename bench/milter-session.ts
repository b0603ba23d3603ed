/** One milter session driven directly (openSession + sendContent): the session and memory benchmarks. */
import { sendContent, type ContentHeader } from '../lib/session/content'
import { POSTFIX_DEFAULT_MACROS, type MacroLookup } from '../lib/session/macros'
import { openSession } from '../lib/session/open'
import type { MilterSession, SessionOptions } from '../lib/session/session'
import { parseSocketSpec } from '../lib/transport/spec'
import { b } from './stats'

export const MACRO_VALUES: Readonly<Record<string, string>> = {
  j: 'mx.example.org',
  '{daemon_name}': 'haraka-bench',
  '{daemon_addr}': '127.0.0.1',
  v: 'Haraka',
  _: 'client.example.com [192.0.2.10]',
  i: '4F1A2B3C4D',
  '{mail_addr}': 'alice@example.com',
  '{mail_host}': 'example.com',
  '{mail_mailer}': 'smtp',
  '{rcpt_addr}': 'bob@example.net',
  '{rcpt_host}': 'example.net',
  '{rcpt_mailer}': 'smtp',
}

export const lookup: MacroLookup = (name) => MACRO_VALUES[name]

export function sessionOptions(): SessionOptions {
  return {
    name: 'bench',
    timeouts: { connectMs: 10_000, commandMs: 30_000, contentMs: 120_000 },
    macros: POSTFIX_DEFAULT_MACROS,
  }
}

export function benchHeaders(seq: number): ContentHeader[] {
  const h: Array<[string, string]> = [
    [
      'Received',
      ' from client.example.com (client.example.com [192.0.2.10])\r\n\tby mx.example.org',
    ],
    ['From', ' Alice <alice@example.com>'],
    ['To', ' Bob <bob@example.net>'],
    ['Subject', ` Benchmark message ${seq}`],
    ['Date', ' Tue, 01 Apr 2025 10:00:00 +0000'],
    ['Message-ID', ` <bench-${seq}@example.com>`],
    ['MIME-Version', ' 1.0'],
    ['Content-Type', ' text/plain; charset=utf-8'],
    ['Content-Transfer-Encoding', ' 8bit'],
    ['X-Mailer', ' haraka-plugin-milter bench'],
  ]
  return h.map(([name, value]) => ({ name, value: b(value) }))
}

export async function openBenchSession(socket: string): Promise<MilterSession> {
  const s = await openSession(parseSocketSpec(socket), sessionOptions())
  const v = await s.connect(
    'client.example.com',
    { family: 'inet', address: '192.0.2.10', port: 40000 },
    lookup,
  )
  if (v.kind !== 'continue') throw new Error(`CONNECT answered ${v.kind}`)
  const h = await s.helo('client.example.com', lookup)
  if (h.kind !== 'continue') throw new Error(`HELO answered ${h.kind}`)
  return s
}

/** MAIL, RCPT, DATA and sendContent; throws unless every step continued. */
export async function oneMessage(
  s: MilterSession,
  seq: number,
  body: Buffer,
  onReplaceBody?: (chunk: Buffer) => Promise<void>,
): Promise<void> {
  const steps = [
    await s.mail(['<alice@example.com>', 'SIZE=4096'], lookup),
    await s.rcpt(['<bob@example.net>'], lookup),
    await s.data(lookup),
  ]
  for (const v of steps) if (v.kind !== 'continue') throw new Error(`milter answered ${v.kind}`)
  const content = {
    headers: benchHeaders(seq),
    body: [body],
    eohMacros: lookup,
    eomMacros: lookup,
    ...(onReplaceBody ? { onReplaceBody } : {}),
  }
  const r = await sendContent(s, content)
  if (r.verdict.kind !== 'continue') throw new Error(`end of message: ${r.verdict.kind}`)
}
