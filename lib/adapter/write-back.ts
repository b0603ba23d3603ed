/**
 * Applies the content phase's result to the Haraka transaction: the header
 * list (rebuilt in place so the message stream emits it), the envelope, and
 * a replaced body (a new message stream). What delivers the message
 * (smtp_forward, outbound, lmtp) reads these, so it sees every edit.
 */
import type { Transform } from 'node:stream'
import type { BodySpool } from '../body-spool'
import { addressKey, type Envelope } from '../message/envelope'
import type { HeaderField } from '../message/headers'
import { STORE_VERSION, writeEntry, type QuarantineMeta } from '../quarantine/store'
import type {
  HarakaAddress,
  HarakaConnection,
  HarakaMessageStream,
  HarakaTransaction,
} from './haraka'
import { CHUNK_SIZE } from '../protocol/constants'
import { Coalescer } from '../util/coalesce'
import { transactionState } from './state'

/** The message is read in pieces of the largest BODY packet: each goes out without another copy. */
const READ_PIECE = CHUNK_SIZE

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

/** Why a copy is kept, as milter_queue knows it. */
export interface HeldCopy {
  kind: 'hold' | 'discard'
  reason: string
  milters: string[]
}

function splitArgs(args: string | undefined): string[] | undefined {
  return args === undefined ? undefined : args.split(/\s+/).filter(Boolean)
}

/**
 * The envelope to store: the sender with CHGFROM's arguments when a milter
 * gave some, else MAIL FROM's; each recipient with ADDRCPT_PAR's arguments
 * when it has some, else its RCPT TO's (recorded at the rcpt hook: Haraka
 * keeps no ESMTP parameters).
 */
function storedEnvelope(t: HarakaTransaction): Pick<QuarantineMeta, 'sender' | 'recipients'> {
  const notes = t.notes['milter_envelope_args'] as
    { mail?: string; rcpt?: Record<string, string> } | undefined
  const rcptArgs = new Map(
    Object.entries(notes?.rcpt ?? {}).map(([a, v]) => [addressKey(a), splitArgs(v) ?? []]),
  )
  return {
    sender: {
      address: t.mail_from.address,
      args: splitArgs(notes?.mail) ?? esmtpParams(transactionState(t).mailArgs),
    },
    recipients: t.rcpt_to.map((r) => {
      const key = addressKey(r.address)
      const given = transactionState(t).rcptArgs?.get(key)
      return {
        address: r.address,
        args: rcptArgs.get(key) ?? (given ? esmtpParams(given) : []),
      }
    }),
  }
}

function esmtpParams(params: Record<string, string | null>): string[] {
  return Object.entries(params).map(([k, v]) =>
    v === null ? k.toUpperCase() : `${k.toUpperCase()}=${v}`,
  )
}

/**
 * Stores the message with its envelope in the quarantine store
 * (`<dir>/<YYYYMMDD>/<uuid>.eml` and `.json`, see lib/quarantine/store).
 * The .eml is the message as it would have been delivered, with no marker
 * of ours; the reason is in the .json.
 */
export async function writeQuarantine(
  c: HarakaConnection,
  t: HarakaTransaction,
  dir: string,
  held: HeldCopy,
): Promise<string> {
  const meta: QuarantineMeta = {
    version: STORE_VERSION,
    id: t.uuid,
    time: new Date().toISOString(),
    transaction: t.uuid,
    ...storedEnvelope(t),
    reason: held.reason.replace(/[\r\n]+/g, ' '),
    milters: held.milters,
    kind: held.kind,
    client: {
      ip: c.remote.ip ?? '',
      host: c.remote.host ?? '',
      helo: c.hello.host ?? '',
    },
  }
  return writeEntry(dir, meta, readMessage(t))
}

/**
 * A read of the transaction's message, the one way the plugin reads it. A
 * reader that stopped early (a milter that failed in the middle of the
 * body) may have left its pipe behind, which haraka-message-stream keeps
 * until a later tick and which makes a new pipe throw: it is torn down
 * first. An error of the message stream ends the read with that error
 * (the stream's own pipe would leave the reader waiting for ever).
 */
export function readMessage(t: HarakaTransaction, options?: Record<string, unknown>): Transform {
  const ms = t.message_stream
  const out = new Coalescer(READ_PIECE)
  const onError = (e: Error): void => {
    out.destroy(e)
  }
  ms.unpipe?.()
  ms.once('error', onError)
  out.once('close', () => ms.removeListener('error', onError))
  ms.pipe(out, options)
  return out
}
