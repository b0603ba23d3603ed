/**
 * The quarantine's events file, `<dir>/events.log`: one JSON line per
 * release or delete, appended by the CLI once the entry is gone. The CLI is
 * a short-lived process; Haraka's /metrics reads this file when scraped and
 * counts the lines per operation and milter (EventCounts), so the counts
 * are those of the file: they survive Haraka restarts, and removing or
 * truncating the file starts them again from zero (a counter reset to
 * Prometheus). A line is one write with O_APPEND, so two CLI processes do
 * not interleave; the store's listing ignores the file (not a day folder).
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import * as path from 'node:path'
import type { ClaimOp } from './claim'
import { lstatOrUndefined, READ_FLAGS, unsafe } from './files'

/** The file's name in the quarantine directory. */
export const EVENTS_FILE = 'events.log'

/** One line of the file. */
export interface QuarantineEvent {
  /** ISO 8601, UTC. */
  time: string
  op: ClaimOp
  id: string
  /** The milters that held it (the entry's `milters`). */
  milters: string[]
}

const APPEND_FLAGS =
  constants.O_WRONLY |
  constants.O_APPEND |
  constants.O_CREAT |
  constants.O_NOFOLLOW |
  constants.O_NONBLOCK

/**
 * Read at most this much at a time (1 MiB): the file grows without limit
 * until an operator removes it. An event line is far shorter; a chunk with
 * no line end in it is no event and is skipped.
 */
const READ_CHUNK = 1024 * 1024

/** Appends one event (mode 0600 when it creates the file; a link there is refused). */
export async function appendEvent(dir: string, e: QuarantineEvent): Promise<void> {
  const file = path.join(dir, EVENTS_FILE)
  const fh = await open(file, APPEND_FLAGS, 0o600)
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw unsafe(file, st)
    await fh.write(Buffer.from(`${JSON.stringify(e)}\n`))
  } finally {
    await fh.close()
  }
}

function isEvent(o: unknown): o is QuarantineEvent {
  const e = o as Partial<QuarantineEvent> | null
  return (
    typeof e === 'object' &&
    e !== null &&
    (e.op === 'release' || e.op === 'delete') &&
    Array.isArray(e.milters) &&
    e.milters.every((m) => typeof m === 'string')
  )
}

/**
 * The releases and deletes in a quarantine's events file, per milter, read
 * incrementally: each update() reads only what was appended since the last
 * (a line not yet complete waits for the next). A file replaced (another
 * inode) or shorter than what was read is read again from the start.
 * Lines that are not events are skipped. Callers run one update at a time.
 */
export class EventCounts {
  readonly released = new Map<string, number>()
  readonly deleted = new Map<string, number>()
  private ino = -1
  private offset = 0

  constructor(readonly dir: string) {}

  async update(): Promise<void> {
    const file = path.join(this.dir, EVENTS_FILE)
    const st = await lstatOrUndefined(file)
    if (!st) return this.restart(-1)
    if (!st.isFile()) throw unsafe(file, st)
    if (st.ino !== this.ino || st.size < this.offset) this.restart(st.ino)
    if (st.size === this.offset) return
    const fh = await open(file, READ_FLAGS)
    try {
      const buf = Buffer.alloc(Math.min(READ_CHUNK, st.size - this.offset))
      while (this.offset < st.size) {
        const length = Math.min(buf.length, st.size - this.offset)
        const { bytesRead } = await fh.read(buf, 0, length, this.offset)
        if (bytesRead === 0) break
        const text = buf.subarray(0, bytesRead)
        const end = text.lastIndexOf(0x0a) + 1 // whole lines only
        if (end === 0) {
          if (bytesRead < READ_CHUNK) break // a line not yet complete waits for the next update
          this.offset += bytesRead // longer than any event: skipped
          continue
        }
        this.offset += end
        for (const line of text.subarray(0, end).toString('utf8').split('\n')) this.count(line)
      }
    } finally {
      await fh.close()
    }
  }

  private restart(ino: number): void {
    this.ino = ino
    this.offset = 0
    this.released.clear()
    this.deleted.clear()
  }

  private count(line: string): void {
    if (line.trim() === '') return
    let e: unknown
    try {
      e = JSON.parse(line)
    } catch {
      return
    }
    if (!isEvent(e)) return
    const m = e.op === 'release' ? this.released : this.deleted
    for (const milter of e.milters) m.set(milter, (m.get(milter) ?? 0) + 1)
  }
}
