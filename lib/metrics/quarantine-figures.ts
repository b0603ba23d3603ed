/**
 * The quarantine as the metrics see it when scraped: the entries held now
 * (counted from the store's listings) and the releases and deletes the CLI
 * recorded in the events file (lib/quarantine/events.ts), per milter. Read
 * at most once per CACHE_MS (a scrape and the summary timer share it), one
 * read at a time, so the cost is bounded whatever the scrape rate.
 */
import { EventCounts } from '../quarantine/events'
import { countEntries } from '../quarantine/store'

/** What the quarantine metrics show. */
export interface QuarantineFigures {
  entries: number
  released: ReadonlyMap<string, number>
  deleted: ReadonlyMap<string, number>
}

/** How long one reading of the store serves. */
export const CACHE_MS = 5000

export class QuarantineReader {
  private events: EventCounts | undefined
  private last: { at: number; figures: QuarantineFigures } | undefined
  private pending: { events: EventCounts; figures: Promise<QuarantineFigures> } | undefined

  constructor(private readonly now: () => number = Date.now) {}

  /** The figures of the store in `dir` (a new dir, after a reload, starts afresh). */
  read(dir: string): Promise<QuarantineFigures> {
    if (this.events?.dir !== dir) {
      this.events = new EventCounts(dir)
      this.last = undefined
    }
    const last = this.last
    if (last && this.now() - last.at < CACHE_MS) return Promise.resolve(last.figures)
    const events = this.events
    if (this.pending?.events === events) return this.pending.figures
    const pending = {
      events,
      figures: (async () => {
        await events.update()
        const figures: QuarantineFigures = {
          entries: await countEntries(dir),
          released: new Map(events.released),
          deleted: new Map(events.deleted),
        }
        if (this.events === events) this.last = { at: this.now(), figures }
        return figures
      })().finally(() => {
        if (this.pending === pending) this.pending = undefined
      }),
    }
    this.pending = pending
    return pending.figures
  }
}
