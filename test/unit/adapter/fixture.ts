/**
 * haraka-test-fixtures, typed for these tests: connections, transactions
 * holding a message as Haraka stores it (wire form, Haraka's Received
 * first), and the plugin loaded from its compiled output.
 */
import type {
  HarakaAddress,
  HarakaConnection,
  HarakaHeader,
  HarakaMessageStream,
  HarakaTransaction,
} from '../../../lib/adapter/haraka'
import type { MilterPlugin } from '../../../plugins/milter'

/** The fixture transaction: the adapter's view plus what tests drive. */
export interface FixtureTransaction extends Omit<
  HarakaTransaction,
  'message_stream' | 'results' | 'header'
> {
  header: HarakaHeader & { get_all(name: string): readonly string[] }
  message_stream: HarakaMessageStream & {
    get_data(options: Record<string, unknown>, cb: (data: Buffer) => void): void
  }
  results: {
    add(plugin: unknown, obj: Record<string, unknown>): unknown
    get(name: string): unknown
  }
  header_lines: string[]
  add_data(line: Buffer): void
  end_data(cb: () => void): void
  add_leading_header(name: string, value: string): void
}

/** The fixture connection. */
export interface FixtureConnection extends Omit<HarakaConnection, 'transaction' | 'results'> {
  transaction: FixtureTransaction | null
  results: {
    add(plugin: unknown, obj: Record<string, unknown>): unknown
    get(name: string): unknown
  }
  cfg: { headers: Record<string, unknown>; main: Record<string, unknown> }
  init_transaction(): void
}

/** The result of a hook call. */
export interface HookCall {
  rc: number | undefined
  msg: unknown
}

/** The plugin object as the fixtures build it. */
export type LoadedPlugin = MilterPlugin & { register(): void; hooks: Record<string, string[]> }

interface Fixtures {
  makeConnection(opts?: Record<string, unknown>): FixtureConnection
  makePlugin(name: string, opts?: { register?: boolean; configDir?: string }): LoadedPlugin
  callHook(
    plugin: unknown,
    method: string,
    connection: unknown,
    ...args: unknown[]
  ): Promise<HookCall>
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const fixtures = require('haraka-test-fixtures') as Fixtures

// Test config directories come and go: no file watchers (the fixtures share this reader).
// eslint-disable-next-line @typescript-eslint/no-require-imports
;(require('haraka-config/lib/reader') as { watch_files: boolean }).watch_files = false

/**
 * A plain copy of an object the plugin made: the plugin runs in the
 * fixtures' vm context, so its objects have another Object prototype and
 * are never deepStrictEqual to a literal.
 */
export function plain(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v)) as unknown
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Address } = require('@haraka/email-address') as {
  Address: new (a: string) => HarakaAddress
}

/** haraka-constants (the fixtures install them as globals too). */
// eslint-disable-next-line @typescript-eslint/no-require-imports
export const constants = require('haraka-constants') as Record<string, number>

/** An Address from `user@host` or `<user@host>`. */
export function addr(a: string): HarakaAddress {
  return new Address(a.startsWith('<') ? a : `<${a}>`)
}

/** A silent fixture connection that keeps header lines (max_lines) as Haraka does. */
export function connection(opts: Record<string, unknown> = {}): FixtureConnection {
  const c = fixtures.makeConnection({ silent: true, ...opts })
  c.cfg.headers['max_lines'] = 1000
  return c
}

/** Haraka's Received line (connection.js received_line), with its CRLF folds. */
export function receivedLine(c: FixtureConnection, t: FixtureTransaction): string {
  return (
    `from ${c.hello.host ?? 'client'} ([${c.remote.ip ?? ''}])\r\n` +
    `\tby ${c.local.host ?? 'haraka'} (Haraka/3.3.4) with ESMTP id ${t.uuid}\r\n` +
    `\tenvelope-from ${t.mail_from.format()};\r\n\tThu, 01 Jan 2026 00:00:00 +0000`
  )
}

/** Starts a transaction like Haraka's MAIL: uuid `<conn uuid>.1`, sender and recipients. */
export function transaction(
  c: FixtureConnection,
  from = 'sender@example.org',
  rcpts: string[] = ['rcpt@example.com'],
): FixtureTransaction {
  c.init_transaction()
  const t = c.transaction
  if (!t) throw new Error('no transaction')
  t.uuid = `${c.uuid}.1`
  t.mail_from = addr(from)
  t.rcpt_to = rcpts.map(addr)
  return t
}

/**
 * Feeds a message the way Haraka does after DATA: its Received header
 * first, then each line in wire form (CRLF, dot-stuffed), then the end.
 * `lines` are unstuffed message lines (headers, blank line, body).
 */
export async function feed(
  c: FixtureConnection,
  t: FixtureTransaction,
  lines: string[],
): Promise<void> {
  t.add_data(Buffer.from(`Received: ${receivedLine(c, t)}\r\n`))
  for (const l of lines) t.add_data(Buffer.from(`${l.startsWith('.') ? '.' : ''}${l}\r\n`))
  await new Promise<void>((resolve) => t.end_data(resolve))
}

/** The whole message as a reader gets it (default: CRLF, unstuffed). */
export function read(
  ms: FixtureTransaction['message_stream'],
  options: Record<string, unknown> = {},
): Promise<string> {
  return new Promise((resolve) => ms.get_data(options, (b) => resolve(b.toString('utf8'))))
}

/** A standard message: three headers, a body with a dot line. */
export const MESSAGE = [
  'From: Sender <sender@example.org>',
  'To: rcpt@example.com',
  'Subject: hello',
  'X-Folded: part one',
  '\tpart two',
  '',
  'Body line one',
  '.starts with a dot',
  'last line',
]

/**
 * Loads the compiled plugin with haraka-test-fixtures. The repository has
 * a top-level `plugins/` directory, so the fixtures take it for a Haraka
 * checkout and look for `plugins/<name>.js`, not at package.json `main`
 * (`makePlugin('milter')` finds nothing); the path below resolves to
 * `dist/plugins/milter.js`.
 */
export function loadPlugin(configDir?: string, quiet = true): LoadedPlugin {
  const plugin = fixtures.makePlugin('../dist/plugins/milter', {
    register: false,
    ...(configDir ? { configDir } : {}),
  })
  plugin.name = 'milter'
  if (quiet) {
    const p = plugin as unknown as Record<string, unknown>
    for (const m of ['logdebug', 'loginfo', 'lognotice', 'logwarn', 'logerror', 'logcrit'])
      p[m] = () => undefined
  }
  plugin.register()
  return plugin
}
