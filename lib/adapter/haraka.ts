/**
 * The subset of Haraka 3.3's objects the plugin uses. Haraka ships no
 * TypeScript declarations; these mirror haraka-plugin-api.md (verified).
 */

/** Is the domain one of ours (Haraka's host_list)? */
export type LocalDomain = (domain: string) => boolean

/** `next(code, msg)` of a hook. */
export type Next = (code?: number, msg?: unknown) => void

/** @haraka/email-address Address (3.3: `address` is a string getter). */
export interface HarakaAddress {
  readonly address: string
  readonly user: string | null
  readonly host: string | null
  readonly original?: string
  format(): string
  isNull(): boolean
}

/** haraka-notes: a plain object with get/set helpers. */
export interface Notes {
  [key: string]: unknown
}

/** haraka-results. */
export interface Results {
  add(plugin: unknown, obj: Record<string, unknown>): unknown
}

/** haraka-email-message Header. */
export interface HarakaHeader {
  header_list: string[]
  headers: Record<string, unknown>
  headers_decoded: Record<string, unknown>
  get(name: string): string
  get_all(name: string): readonly string[]
  parse(lines: string[]): void
}

/** haraka-message-stream MessageStream. */
export interface HarakaMessageStream {
  [Symbol.asyncIterator](options?: Record<string, unknown>): AsyncIterator<Buffer>
  pipe(dest: NodeJS.WritableStream, options?: Record<string, unknown>): unknown
  /** Tears down a pipe still in progress (haraka-message-stream 2.x), so a new one can start. */
  unpipe?(): void
  add_line(line: Buffer | string): void
  add_line_end(cb?: () => void): void
  destroy(): void
  on(event: 'error', listener: (err: Error) => void): unknown
  once(event: 'error', listener: (err: Error) => void): unknown
  removeListener(event: 'error', listener: (err: Error) => void): unknown
}

/** The transaction. */
export interface HarakaTransaction {
  uuid: string
  mail_from: HarakaAddress
  rcpt_to: HarakaAddress[]
  header: HarakaHeader
  message_stream: HarakaMessageStream
  notes: Notes
  results: Results
  /** Bytes received after 354 (the final dot included, Haraka's Received excluded). */
  data_bytes?: number
  cfg: unknown
  add_header(name: string, value: string): void
  add_leading_header(name: string, value: string): void
}

/** The connection. */
export interface HarakaConnection {
  uuid: string
  remote: {
    ip?: string
    port?: number
    host?: string | null
    is_private?: boolean
    is_local?: boolean
  }
  local: { ip?: string; port?: number; host?: string; info?: string }
  hello: { verb?: string | null; host?: string | null }
  tls: {
    enabled?: boolean
    verified?: boolean
    cipher?: { name?: string; standardName?: string; version?: string }
    peerCertificate?: { subject?: { CN?: string }; issuer?: { CN?: string } }
  }
  relaying: boolean
  notes: Notes
  results: Results
  transaction: HarakaTransaction | null
  loginfo(plugin: unknown, ...args: unknown[]): void
  lognotice(plugin: unknown, ...args: unknown[]): void
  logwarn(plugin: unknown, ...args: unknown[]): void
  logerror(plugin: unknown, ...args: unknown[]): void
  logdebug(plugin: unknown, ...args: unknown[]): void
}

/** The plugin object `this` is bound to in hooks. */
export interface HarakaPlugin {
  name: string
  timeout: number
  config: {
    get(name: string, ...args: unknown[]): unknown
  }
  register_hook(hook: string, method: string, priority?: number): void
  loginfo(...args: unknown[]): void
  logwarn(...args: unknown[]): void
  logerror(...args: unknown[]): void
  logcrit(...args: unknown[]): void
}
