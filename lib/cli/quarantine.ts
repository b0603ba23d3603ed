/**
 * `haraka-milter quarantine list|show|release|delete`: the operator's view
 * of the quarantine store (lib/quarantine/store) and the way out of it.
 * A release re-injects the message over SMTP with its stored envelope; it is
 * meant for a loopback listener without milters ([listener.release] with
 * `milters =` empty), so the bypass comes from where the message is
 * injected, never from anything in the message.
 */
import { existsSync, readFileSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { parseArgs } from 'node:util'
import { parseIni } from '../ini'
import { formatReplyLine } from '../protocol/replycode'
import { appendEvent, EVENTS_FILE } from '../quarantine/events'
import { sendMessage, SmtpSendError } from '../quarantine/smtp'
import {
  CLAIM_STALE_MS,
  claimEntry,
  entryState,
  findEntry,
  listEntries,
  QuarantineError,
  readMessage,
  recoverClaims,
  type QuarantineEntry,
  type StoredAddress,
} from '../quarantine/store'

/** Where the plugin stores held messages when milter.ini names no dir. */
const DEFAULT_QUARANTINE_DIR = '/var/spool/haraka/milter-quarantine'

export const QUARANTINE_USAGE = `usage: haraka-milter quarantine list [--dir DIR | --config milter.ini] [--json]
       haraka-milter quarantine show ID [--dir DIR | --config milter.ini] [--json]
       haraka-milter quarantine release ID --to HOST:PORT [--rcpt ADDRESS]... [--helo NAME]
                                          [--timeout SECONDS] [--dir DIR | --config milter.ini]
       haraka-milter quarantine delete ID [--dir DIR | --config milter.ini]

--dir defaults to [quarantine] dir of the milter.ini given with --config, else
${DEFAULT_QUARANTINE_DIR}.
list shows each entry's state: held, or releasing / deleting while a release or delete
is at work on it.
release sends the message with its stored envelope to HOST:PORT (a listener without milters,
e.g. [listener.release] listen = 127.0.0.1:2526 with milters = empty) and removes the entry
as soon as the server accepted it; on a refusal it keeps the entry and exits 1 with the reply.
--rcpt (repeatable) sends to these recipients instead of the stored ones; an entry with no
recipient left (a milter removed them all) is released only with --rcpt, or deleted.
A release or delete that was killed is taken back by the next list, release or delete once
its process is gone, or after ${CLAIM_STALE_MS / 60000} minutes without a refresh (another host, a hung process).
Killed between the server's 250 and removing the entry (an instant), a release is delivered
again by the next release: twice, never zero times.
Symbolic links and other non-regular files inside DIR are refused, never followed.
Exit status: 0 done, 1 not found, busy or refused, 2 usage error.
`

/** Where the command writes. */
export interface Io {
  out(text: string): void
  err(text: string): void
}

/** A usage mistake: exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UsageError'
  }
}

/** `[quarantine] dir` of a milter.ini text, if set, read as the plugin reads the file (lib/ini.ts). */
export function quarantineDirOf(ini: string): string | undefined {
  const dir = parseIni(ini)['quarantine']?.['dir']
  return typeof dir === 'string' || typeof dir === 'number' ? String(dir) || undefined : undefined
}

/** `HOST:PORT` or `[V6]:PORT`. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(text)
  const port = Number(m?.[3])
  const host = m?.[1] ?? m?.[2]
  if (!m || host === undefined || port < 1 || port > 65535)
    throw new UsageError(`--to must be HOST:PORT or [IPV6]:PORT, not "${text}"`)
  return { host, port }
}

function bracket(a: StoredAddress): string {
  return [`<${a.address}>`, ...a.args].join(' ')
}

function claimSummary(e: QuarantineEntry): Record<string, unknown> | undefined {
  const c = e.claim
  if (!c) return undefined
  return {
    ...(c.record
      ? { op: c.record.op, pid: c.record.pid, host: c.record.host, time: c.record.time }
      : {}),
    stale: c.stale ?? false,
  }
}

function summary(e: QuarantineEntry): Record<string, unknown> {
  const m = e.meta
  return {
    id: m.id,
    state: entryState(e),
    ...(e.claim ? { claim: claimSummary(e) } : {}),
    time: m.time,
    sender: m.sender.address,
    recipients: m.recipients.map((r) => r.address),
    reason: m.reason,
    size: e.size,
  }
}

function showText(e: QuarantineEntry): string {
  const m = e.meta
  const lines = [
    `id: ${m.id}`,
    `time: ${m.time}`,
    `transaction: ${m.transaction}`,
    `kind: ${m.kind}`,
    `reason: ${m.reason}`,
    `milters: ${m.milters.join(', ')}`,
    `state: ${stateText(e)}`,
    `client: ${m.client.ip}${m.client.host ? ` (${m.client.host})` : ''} helo ${m.client.helo}`,
    `sender: ${bracket(m.sender)}`,
    ...(m.recipients.length > 0
      ? m.recipients.map((r) => `recipient: ${bracket(r)}`)
      : ['recipient: (none: release needs --rcpt)']),
    `size: ${e.size}`,
    `message: ${e.eml}`,
  ]
  return `${lines.join('\n')}\n`
}

function stateText(e: QuarantineEntry): string {
  const c = e.claim
  if (!c) return 'held'
  const r = c.record
  const who = r ? ` by pid ${r.pid} on ${r.host} since ${r.time}` : ''
  return `${entryState(e)}${who}${c.stale ? ` (stale: ${c.stale})` : ''}`
}

function rcptText(e: QuarantineEntry): string {
  const rcpts = e.meta.recipients.map((r) => `<${r.address}>`).join(',')
  return rcpts === '' ? '(none)' : rcpts
}

/** Takes back dead releases and deletes (all, or of one id), saying so on stderr. */
async function recover(dir: string, io: Io, onlyId?: string): Promise<void> {
  const problems: string[] = []
  for (const done of await recoverClaims(dir, problems, onlyId)) io.err(`haraka-milter: ${done}\n`)
  for (const p of problems) io.err(`haraka-milter: skipped ${p}\n`)
}

/** findEntry, naming on stderr the day folders it had to skip. */
async function find(dir: string, id: string, io: Io): Promise<QuarantineEntry> {
  const problems: string[] = []
  try {
    return await findEntry(dir, id, problems)
  } finally {
    for (const p of problems) io.err(`haraka-milter: skipped ${p}\n`)
  }
}

function oneId(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`quarantine ${what} takes exactly one ID`)
  return positionals[0] as string
}

/** Runs `quarantine ...` (argv after `quarantine`); returns the exit status. */
export async function quarantineCommand(argv: string[], io: Io): Promise<number> {
  const [sub, ...rest] = argv
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.out(QUARANTINE_USAGE)
    return sub === undefined ? 2 : 0
  }
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        dir: { type: 'string' },
        config: { type: 'string' },
        json: { type: 'boolean', default: false },
        to: { type: 'string' },
        rcpt: { type: 'string', multiple: true },
        helo: { type: 'string' },
        timeout: { type: 'string', default: '60' },
      },
    })
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e))
  }
  const v = parsed.values
  let dir = v.dir
  if (dir === undefined && v.config !== undefined) {
    let text: string
    try {
      text = readFileSync(v.config, 'utf8')
    } catch (e) {
      throw new UsageError(`cannot read ${v.config}: ${e instanceof Error ? e.message : String(e)}`)
    }
    dir = quarantineDirOf(text)
  }
  dir ??= DEFAULT_QUARANTINE_DIR
  try {
    switch (sub) {
      case 'list': {
        if (parsed.positionals.length > 0) throw new UsageError('quarantine list takes no ID')
        if (!existsSync(dir)) {
          // an empty listing here would read as "nothing held" when the path is simply wrong
          io.err(
            `haraka-milter: no quarantine directory ${dir}: nothing was ever held there, or --dir / --config (its [quarantine] dir) names another\n`,
          )
          return 1
        }
        await recover(dir, io)
        const problems: string[] = []
        const entries = await listEntries(dir, problems)
        for (const p of problems) io.err(`haraka-milter: skipped ${p}\n`)
        if (v.json) io.out(`${JSON.stringify(entries.map(summary), null, 2)}\n`)
        else
          for (const e of entries) {
            const m = e.meta
            const head = `${m.id}  ${entryState(e)}  ${m.time}  ${e.size}`
            io.out(`${head}  <${m.sender.address}>  ${rcptText(e)}  ${m.reason}\n`)
          }
        return 0
      }
      case 'show': {
        const e = await find(dir, oneId(parsed.positionals, 'show'), io)
        const json = { ...e.meta, size: e.size, state: entryState(e), claim: claimSummary(e) }
        io.out(v.json ? `${JSON.stringify(json, null, 2)}\n` : showText(e))
        return 0
      }
      case 'delete': {
        const id = oneId(parsed.positionals, 'delete')
        await recover(dir, io, id)
        const e = await find(dir, id, io)
        const claim = await claimEntry(e, 'delete')
        await claim.finish()
        await recordEvent(dir, 'delete', e, io)
        io.out(`deleted ${id}\n`)
        return 0
      }
      case 'release':
        return await release(dir, parsed.positionals, v, io)
      default:
        throw new UsageError(`unknown quarantine command "${sub}"`)
    }
  } catch (e) {
    if (e instanceof QuarantineError) {
      io.err(`haraka-milter: ${e.message}\n`)
      return 1
    }
    throw e
  }
}

async function release(
  dir: string,
  positionals: string[],
  v: { to?: string; rcpt?: string[]; helo?: string; timeout: string },
  io: Io,
): Promise<number> {
  const id = oneId(positionals, 'release')
  if (v.to === undefined) throw new UsageError('quarantine release needs --to HOST:PORT')
  const to = parseHostPort(v.to)
  const timeout = Number(v.timeout)
  if (!(timeout > 0)) throw new UsageError('--timeout must be a positive number of seconds')
  const rcpts = v.rcpt?.map((address) => ({ address: parseAddress(address), args: [] }))
  await recover(dir, io, id)
  const e = await find(dir, id, io)
  const recipients = rcpts ?? e.meta.recipients
  if (recipients.length === 0)
    throw new QuarantineError(
      `quarantine entry ${id} has no recipient left (a milter removed them all): ` +
        'release it with --rcpt ADDRESS, or delete it',
      'QUARANTINE_ERR_NO_RECIPIENTS',
    )
  // claimed first: a second release (or a delete) is refused while this one runs
  const claim = await claimEntry(e, 'release')
  let sent
  try {
    sent = await sendMessage({
      host: to.host,
      port: to.port,
      helo: v.helo ?? os.hostname(),
      from: e.meta.sender,
      rcpts: recipients,
      message: await readMessage(e),
      timeoutMs: timeout * 1000,
    })
  } catch (err) {
    await claim.release()
    if (err instanceof SmtpSendError) {
      io.err(`haraka-milter: release of ${id} failed, entry kept: ${err.message}\n`)
      return 1
    }
    throw err
  }
  // recorded at once: from the 250 to this removal a crash means a second delivery
  try {
    await claim.finish()
  } catch (err) {
    await claim.release().catch(() => undefined)
    io.err(
      `haraka-milter: ${id} was delivered (${formatReplyLine(sent.reply)}) but its entry could not be ` +
        `removed: ${err instanceof Error ? err.message : String(err)}; delete it, or a release ` +
        'would deliver it again\n',
    )
    return 1
  }
  await recordEvent(dir, 'release', e, io)
  if (sent.dropped.length > 0)
    io.err(
      `haraka-milter: parameters not offered by ${v.to}, left out: ${sent.dropped.join(' ')}\n`,
    )
  io.out(`released ${id} to ${v.to}: ${formatReplyLine(sent.reply)}\n`)
  return 0
}

/**
 * Appends a done release or delete to the events file, which Haraka's
 * metrics count (lib/quarantine/events.ts). The entry is gone by then: a
 * failure here costs a count, not the operation, so it is a warning.
 */
async function recordEvent(
  dir: string,
  op: 'release' | 'delete',
  e: QuarantineEntry,
  io: Io,
): Promise<void> {
  const event = { time: new Date().toISOString(), op, id: e.meta.id, milters: e.meta.milters }
  await appendEvent(dir, event).catch((err: unknown) =>
    io.err(
      `haraka-milter: ${op} of ${e.meta.id} not counted in ${path.join(dir, EVENTS_FILE)} (metrics): ${err instanceof Error ? err.message : String(err)}\n`,
    ),
  )
}

/** A --rcpt address: `user@domain` or `<user@domain>`, no spaces, brackets or line breaks. */
function parseAddress(text: string): string {
  const a = /^<(.*)>$/.exec(text)?.[1] ?? text
  if (!/^[^\s<>@]+@[^\s<>@]+$/.test(a))
    throw new UsageError(`--rcpt must be an address like user@example.com, not "${text}"`)
  return a
}
