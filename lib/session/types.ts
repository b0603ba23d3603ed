/**
 * The types a session is used through: the stream it runs on, its options,
 * and what it answers (verdicts, end-of-message results).
 */
import type { Frame } from '../protocol/frame'
import type { Modification } from '../protocol/replies'
import type { SmtpReply } from '../protocol/replycode'
import type { Limits } from './limits'
import type { MacroLists } from './macros'

/** The duplex byte stream a session runs on (a net.Socket satisfies it). */
export interface MilterStream {
  write(data: Uint8Array, done?: (err?: Error | null) => void): boolean
  /** Bytes accepted by write() and not yet handed to the kernel. */
  readonly writableLength?: number
  /** Gathers writes until uncork() (net.Socket: one writev, no copy); optional. */
  cork?(): void
  uncork?(): void
  destroy(): void
  end(): void
  on(event: 'data', listener: (chunk: Buffer) => void): unknown
  on(event: 'close' | 'drain', listener: () => void): unknown
  on(event: 'error', listener: (err: Error) => void): unknown
  once(event: 'close' | 'drain', listener: () => void): unknown
  removeListener(event: 'close' | 'drain', listener: () => void): unknown
  /** Flow control: frames are read faster than a slow consumer (a body spool) takes them. */
  pause?(): unknown
  resume?(): unknown
}

/** A milter's answer to one step. */
export type Verdict =
  | { kind: 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'skip' }
  | { kind: 'shutdown' | 'conn_fail' }
  | { kind: 'replycode'; reply: SmtpReply }

/** The outcome of end of message: final verdict, modifications in order, body replacement. */
export interface EomResult {
  verdict: Verdict
  /** Every modification except body chunks, in the order received. */
  modifications: Modification[]
  /** True when the milter sent REPLBODY (even an empty one). */
  bodyReplaced: boolean
  /** The replacement body, when no onReplaceBody sink was given. */
  replacementBody?: Buffer
}

/** The timeouts (milter-protocol.md §7.3), in milliseconds. */
export interface Timeouts {
  connectMs: number
  commandMs: number
  contentMs: number
  /**
   * Total time from SMFIC_BODYEOB to the final reply (Sendmail's T=E):
   * SMFIR_PROGRESS re-arms contentMs but cannot extend this. Default: none.
   */
  eomMs?: number
}

/** Optional observers: packet trace (what the seed calls DEBUG=2) and warnings. */
export interface SessionObserver {
  trace?(dir: 'send' | 'recv', frame: Frame): void
  /**
   * Whether `trace` wants packets now (absent: always). A sent BODY packet's data is joined
   * into one buffer only for the trace, so a session asks first instead of copying every
   * body for a trace that is off.
   */
  tracing?(): boolean
  warn?(message: string): void
  debug?(message: string): void
}

/** How to run a session. */
export interface SessionOptions {
  /** The milter's name, for errors and logs. */
  name: string
  /** Offered protocol version (2 to 6). Default 6. */
  version?: number
  /** Offered actions, cut down to the version's mask. Default all. */
  actions?: number
  timeouts: Timeouts
  /** Configured macro names per stage; a milter's symlist overrides a stage. */
  macros: MacroLists
  /** Largest reply payload accepted from the milter. */
  maxReplyBytes?: number
  /** Bounds on what the milter may ask for and send (default: DEFAULT_LIMITS). */
  limits?: Limits
  observer?: SessionObserver
  /**
   * Called once SMFIC_BODYEOB is in the kernel: asks it to acknowledge the milter's reply
   * packets at once (TCP_QUICKACK, lib/transport/quickack.ts), so a milter that writes a
   * modification and then its verdict, under Nagle, does not wait for our delayed ACK.
   */
  ackPromptly?: (() => void) | undefined
}
