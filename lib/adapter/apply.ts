/**
 * Applies the content phase's result to the Haraka transaction: the header
 * list (rebuilt in place so the message stream emits it), the envelope, and
 * a replaced body (a new message stream). What delivers the message
 * (smtp_forward, outbound, lmtp) reads these, so it sees every edit.
 */
import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import * as path from 'node:path'
import type { BodySpool } from '../body-spool'
import { addressKey, type Envelope } from '../message/envelope'
import type { HeaderField } from '../message/headers'
import type { HarakaAddress, HarakaMessageStream, HarakaTransaction } from './haraka'

/** Haraka's own Received header at the top carries `id <transaction uuid>`. */
function isOwnReceived(entry: string, uuid: string): boolean {
  return /^received:/i.test(entry) && entry.includes(`id ${uuid}`)
}

/** header_list -> fields; Haraka's own Received is hidden from milters (as Postfix hides its own). */
export function headerFields(t: HarakaTransaction): HeaderField[] {
  // Another plugin may have added a leading header before Haraka parsed its own
  // Received (spf's Received-SPF at MAIL), so look for the first one carrying our id.
  let hidden = false
  return t.header.header_list.map((entry) => {
    const colon = entry.indexOf(':')
    const name = colon > 0 ? entry.slice(0, colon).trimEnd() : entry.trim()
    const value = colon > 0 ? entry.slice(colon + 1).replace(/\r?\n$/, '') : ''
    if (!hidden && isOwnReceived(entry, t.uuid)) {
      hidden = true
      return { name, value, hidden: true }
    }
    return { name, value }
  })
}

/** Rebuilds header_list in place (the stream holds that array) and the name index. */
export function writeHeaders(t: HarakaTransaction, fields: readonly HeaderField[]): void {
  const lines = fields.map((f) => `${f.name}:${f.value}\n`)
  const h = t.header
  h.header_list.length = 0
  for (const k of Object.keys(h.headers)) delete h.headers[k]
  for (const k of Object.keys(h.headers_decoded)) delete h.headers_decoded[k]
  h.parse(lines)
}

/** The transaction's envelope as plain data. */
export function envelopeOf(t: HarakaTransaction): Envelope {
  return {
    from: { address: t.mail_from.address },
    rcpts: t.rcpt_to.map((r) => ({ address: r.address })),
  }
}

// The package's types describe its ESM build; Haraka loads the CommonJS one.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Address } = require('@haraka/email-address') as {
  Address: new (a: string) => HarakaAddress
}

function toAddress(a: string): HarakaAddress {
  return new Address(`<${a}>`)
}

/** Sets sender and recipients; ESMTP args of CHGFROM/ADDRCPT_PAR go to notes for queue plugins. */
export function writeEnvelope(t: HarakaTransaction, env: Envelope): void {
  if (env.from.address !== t.mail_from.address) t.mail_from = toAddress(env.from.address)
  const existing = new Map(t.rcpt_to.map((r) => [addressKey(r.address), r]))
  t.rcpt_to = env.rcpts.map((r) => existing.get(addressKey(r.address)) ?? toAddress(r.address))
  const rcptArgs: Record<string, string> = {}
  for (const r of env.rcpts) if (r.args) rcptArgs[r.address] = r.args
  t.notes['milter_envelope_args'] = { mail: env.from.args, rcpt: rcptArgs }
}

interface StreamCtor {
  new (cfg: unknown, id: string, headers: string[]): HarakaMessageStream
}

/** Swaps in a new message stream holding the replacement body (wire form, dot-stuffed). */
export async function writeBody(t: HarakaTransaction, body: BodySpool, n: number): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const MessageStream = require('haraka-message-stream') as StreamCtor
  const ms = new MessageStream(t.cfg, `${t.uuid}-milter${n}`, t.header.header_list)
  let failure: Error | undefined
  ms.on('error', (err) => {
    failure = err
  })
  // The original body is not needed any more (the milters are done with it, and a failure
  // from here on refuses the message): free it before the new one is read in, so a large
  // message is not held twice.
  const old = t.message_stream
  t.message_stream = ms
  old.destroy()
  ms.add_line('\r\n')
  for await (const line of body.lines()) {
    ms.add_line(line[0] === 0x2e ? Buffer.concat([DOT, line]) : line)
  }
  await new Promise<void>((resolve) => ms.add_line_end(resolve))
  if (failure) throw failure
}

const DOT = Buffer.from('.')

/** Writes a copy of the message to `<dir>/<YYYYMMDD>/<uuid>.eml`, with the reason on top. */
export async function writeQuarantine(
  t: HarakaTransaction,
  dir: string,
  reason: string,
): Promise<string> {
  const day = new Date().toISOString().slice(0, 10).replace(/-/g, '')
  const folder = path.join(dir, day)
  await mkdir(folder, { recursive: true })
  const file = path.join(folder, `${t.uuid}.eml`)
  const out = createWriteStream(file, { flags: 'wx' })
  const done = new Promise<void>((resolve, reject) => {
    out.once('finish', resolve)
    out.once('error', reject)
  })
  out.write(`X-Milter-Quarantine-Reason: ${reason.replace(/[\r\n]+/g, ' ')}\r\n`)
  t.message_stream.pipe(out)
  await done
  return file
}
