/**
 * `haraka-milter quarantine list|show|release|delete`: the operator's view
 * of the quarantine store (lib/quarantine/store) and the way out of it.
 * A release re-injects the message over SMTP with its stored envelope; it is
 * meant for a loopback listener without milters ([listener.release] with
 * `milters =` empty), so the bypass comes from where the message is
 * injected, never from anything in the message.
 */
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import * as os from 'node:os'
import { parseArgs } from 'node:util'
import { formatReply, sendMessage, SmtpSendError } from '../quarantine/smtp'
import {
  claimEntry,
  findEntry,
  listEntries,
  QuarantineError,
  type QuarantineEntry,
  type StoredAddress,
} from '../quarantine/store'

/** Where the plugin stores held messages when milter.ini names no dir. */
export const DEFAULT_QUARANTINE_DIR = '/var/spool/haraka/milter-quarantine'

export const QUARANTINE_USAGE = `usage: haraka-milter quarantine list [--dir DIR | --config milter.ini] [--json]
       haraka-milter quarantine show ID [--dir DIR | --config milter.ini] [--json]
       haraka-milter quarantine release ID --to HOST:PORT [--helo NAME] [--timeout SECONDS]
                                          [--dir DIR | --config milter.ini]
       haraka-milter quarantine delete ID [--dir DIR | --config milter.ini]

--dir defaults to [quarantine] dir of the milter.ini given with --config, else
${DEFAULT_QUARANTINE_DIR}.
release sends the message with its stored envelope to HOST:PORT (a listener without milters,
e.g. [listener.release] listen = 127.0.0.1:2526 with milters = empty) and removes the entry
once the server accepted it; on a refusal it keeps the entry and exits 1 with the reply.
Exit status: 0 done, 1 not found or refused, 2 usage error.
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

/** `[quarantine] dir` of a milter.ini text, if set (a minimal ini reader: sections, key = value). */
export function quarantineDirOf(ini: string): string | undefined {
  let section = ''
  let dir: string | undefined
  for (const raw of ini.split(/\r?\n/)) {
    const line = raw.trim()
    if (line === '' || line.startsWith(';') || line.startsWith('#')) continue
    const s = /^\[([^\]]+)\]$/.exec(line)
    if (s) {
      section = (s[1] ?? '').trim()
      continue
    }
    const eq = line.indexOf('=')
    if (section === 'quarantine' && eq > 0 && line.slice(0, eq).trim() === 'dir') {
      const v = line.slice(eq + 1).trim()
      dir = v === '' ? undefined : v
    }
  }
  return dir
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

function summary(e: QuarantineEntry): Record<string, unknown> {
  const m = e.meta
  return {
    id: m.id,
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
    `client: ${m.client.ip}${m.client.host ? ` (${m.client.host})` : ''} helo ${m.client.helo}`,
    `sender: ${bracket(m.sender)}`,
    ...m.recipients.map((r) => `recipient: ${bracket(r)}`),
    `size: ${e.size}`,
    `message: ${e.eml}`,
  ]
  return `${lines.join('\n')}\n`
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
        const problems: string[] = []
        const entries = await listEntries(dir, problems)
        for (const p of problems) io.err(`haraka-milter: skipped ${p}\n`)
        if (v.json) io.out(`${JSON.stringify(entries.map(summary), null, 2)}\n`)
        else
          for (const e of entries) {
            const m = e.meta
            const rcpts = m.recipients.map((r) => `<${r.address}>`).join(',')
            io.out(`${m.id}  ${m.time}  ${e.size}  <${m.sender.address}>  ${rcpts}  ${m.reason}\n`)
          }
        return 0
      }
      case 'show': {
        const e = await findEntry(dir, oneId(parsed.positionals, 'show'))
        io.out(v.json ? `${JSON.stringify({ ...e.meta, size: e.size }, null, 2)}\n` : showText(e))
        return 0
      }
      case 'delete': {
        const e = await findEntry(dir, oneId(parsed.positionals, 'delete'))
        const claim = await claimEntry(e)
        await claim.finish()
        io.out(`deleted ${e.meta.id}\n`)
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
  v: { to?: string; helo?: string; timeout: string },
  io: Io,
): Promise<number> {
  const id = oneId(positionals, 'release')
  if (v.to === undefined) throw new UsageError('quarantine release needs --to HOST:PORT')
  const to = parseHostPort(v.to)
  const timeout = Number(v.timeout)
  if (!(timeout > 0)) throw new UsageError('--timeout must be a positive number of seconds')
  const e = await findEntry(dir, id)
  const message = await readFile(e.eml)
  // taken out of the listing first: a second release (or delete) finds nothing
  const claim = await claimEntry(e)
  try {
    const sent = await sendMessage({
      host: to.host,
      port: to.port,
      helo: v.helo ?? os.hostname(),
      from: e.meta.sender,
      rcpts: e.meta.recipients,
      message,
      timeoutMs: timeout * 1000,
    })
    await claim.finish()
    if (sent.dropped.length > 0)
      io.err(
        `haraka-milter: parameters not offered by ${v.to}, left out: ${sent.dropped.join(' ')}\n`,
      )
    io.out(`released ${id} to ${v.to}: ${formatReply(sent.reply)}\n`)
    return 0
  } catch (err) {
    await claim.restore()
    if (err instanceof SmtpSendError) {
      io.err(`haraka-milter: release of ${id} failed, entry kept: ${err.message}\n`)
      return 1
    }
    throw err
  }
}
