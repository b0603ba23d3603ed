/**
 * The quarantine store: one held message is two files in `<dir>/<YYYYMMDD>/`,
 * `<id>.eml` (the message exactly as it would have been delivered) and
 * `<id>.json` (its envelope and why it was held). Each is written to a
 * dot-named temporary file, synced, and linked into place (which fails if the
 * name exists, so nothing is overwritten); the .eml first, the .json last. A
 * listing shows only entries whose .json exists, so it never shows one
 * half-written. Knows nothing of Haraka: the plugin writes, the CLI reads.
 */
import { randomBytes } from 'node:crypto'
import type { Stats } from 'node:fs'
import { link, mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises'
import * as path from 'node:path'
import type { Readable } from 'node:stream'

/** The format version written in every sidecar. */
export const STORE_VERSION = 1

/** One envelope address with its ESMTP parameters (`['NOTIFY=NEVER', 'SMTPUTF8']`). */
export interface StoredAddress {
  /** Without angle brackets; '' for the null sender. */
  address: string
  args: string[]
}

/** The sidecar `<id>.json`. */
export interface QuarantineMeta {
  version: number
  id: string
  /** When it was held (ISO 8601, UTC). */
  time: string
  /** Haraka's transaction uuid. */
  transaction: string
  sender: StoredAddress
  recipients: StoredAddress[]
  /** `<milter>: <reason>` entries joined by '; ' (or `discarded by <milter>`). */
  reason: string
  milters: string[]
  /** `hold` (SMFIR_QUARANTINE, action = hold) or `discard` (discard = quarantine). */
  kind: 'hold' | 'discard'
  client: { ip: string; host: string; helo: string }
}

/** A complete entry found in the store. */
export interface QuarantineEntry {
  meta: QuarantineMeta
  eml: string
  json: string
  /** Size of the .eml in bytes. */
  size: number
}

/** Ids are Haraka transaction uuids (`UUID.N`): letters, digits, '-', '.', no path parts. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/
const DAY_PATTERN = /^[0-9]{8}$/

/** Why a quarantine operation failed, in words for the operator. */
export class QuarantineError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'QuarantineError'
  }
}

/** Throws unless `id` is a well-formed entry id (so it cannot name a path outside the store). */
export function checkId(id: string): string {
  if (id.length > 200 || !ID_PATTERN.test(id))
    throw new QuarantineError(`invalid quarantine id ${JSON.stringify(id)}`)
  return id
}

/** `YYYYMMDD` of a date, UTC. */
export function dayOf(d: Date): string {
  return d.toISOString().slice(0, 10).replace(/-/g, '')
}

function tmpName(folder: string, final: string): string {
  return path.join(folder, `.${path.basename(final)}.${randomBytes(6).toString('hex')}.tmp`)
}

/** Writes `data` to a temporary file, syncs it, links it to `final` (never overwriting). */
async function writeOnce(folder: string, final: string, data: Buffer | Readable): Promise<void> {
  const tmp = tmpName(folder, final)
  const fh = await open(tmp, 'wx', 0o600)
  try {
    try {
      if (Buffer.isBuffer(data)) await fh.writeFile(data)
      else for await (const chunk of data) await fh.write(chunk as Buffer)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await link(tmp, final)
  } finally {
    await unlink(tmp).catch(() => undefined)
  }
}

/**
 * Stores one held message: `<dir>/<day>/<id>.eml`, then `<id>.json`.
 * Returns the .eml's path. The metadata's id must be a valid id.
 */
export async function writeEntry(
  dir: string,
  meta: QuarantineMeta,
  message: Buffer | Readable,
): Promise<string> {
  checkId(meta.id)
  const folder = path.join(dir, dayOf(new Date(meta.time)))
  await mkdir(folder, { recursive: true, mode: 0o700 })
  const eml = path.join(folder, `${meta.id}.eml`)
  const json = path.join(folder, `${meta.id}.json`)
  await writeOnce(folder, eml, message)
  try {
    await writeOnce(folder, json, Buffer.from(`${JSON.stringify(meta, null, 2)}\n`))
  } catch (e) {
    await unlink(eml).catch(() => undefined)
    throw e
  }
  return eml
}

function isAddress(v: unknown): v is StoredAddress {
  if (typeof v !== 'object' || v === null) return false
  const o = v as Record<string, unknown>
  return (
    typeof o['address'] === 'string' &&
    Array.isArray(o['args']) &&
    o['args'].every((a) => typeof a === 'string')
  )
}

/** Parses and checks a sidecar; throws QuarantineError when it is not one. */
export function parseMeta(text: string, file: string): QuarantineMeta {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (e) {
    throw new QuarantineError(`${file}: not JSON (${e instanceof Error ? e.message : String(e)})`)
  }
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>
  const client = (o['client'] ?? {}) as Record<string, unknown>
  const ok =
    o['version'] === STORE_VERSION &&
    typeof o['id'] === 'string' &&
    ID_PATTERN.test(o['id']) &&
    typeof o['time'] === 'string' &&
    typeof o['transaction'] === 'string' &&
    isAddress(o['sender']) &&
    Array.isArray(o['recipients']) &&
    o['recipients'].length > 0 &&
    o['recipients'].every(isAddress) &&
    typeof o['reason'] === 'string' &&
    Array.isArray(o['milters']) &&
    o['milters'].every((m) => typeof m === 'string') &&
    (o['kind'] === 'hold' || o['kind'] === 'discard') &&
    typeof client['ip'] === 'string' &&
    typeof client['host'] === 'string' &&
    typeof client['helo'] === 'string'
  if (!ok) throw new QuarantineError(`${file}: not a quarantine entry (version ${STORE_VERSION})`)
  return o as unknown as QuarantineMeta
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw e
  }
}

async function statOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await stat(file)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
}

/** Reads the entry whose sidecar is `json`; undefined when incomplete or not an entry. */
async function readEntry(folder: string, id: string): Promise<QuarantineEntry | undefined> {
  const json = path.join(folder, `${id}.json`)
  const eml = path.join(folder, `${id}.eml`)
  const st = await statOrUndefined(eml)
  if (!st?.isFile()) return undefined
  let text: string
  try {
    text = await readFile(json, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
  const meta = parseMeta(text, json)
  if (meta.id !== id) throw new QuarantineError(`${json}: holds id ${meta.id}`)
  return { meta, eml, json, size: st.size }
}

/** Every complete entry, oldest first; `problems` collects sidecars that cannot be read. */
export async function listEntries(
  dir: string,
  problems: string[] = [],
): Promise<QuarantineEntry[]> {
  const out: QuarantineEntry[] = []
  for (const day of (await readdirOrEmpty(dir)).filter((d) => DAY_PATTERN.test(d)).sort()) {
    const folder = path.join(dir, day)
    for (const name of (await readdirOrEmpty(folder)).sort()) {
      if (!name.endsWith('.json')) continue
      const id = name.slice(0, -'.json'.length)
      if (!ID_PATTERN.test(id)) continue // temporary files start with '.'
      try {
        const e = await readEntry(folder, id)
        if (e) out.push(e)
      } catch (err) {
        problems.push(err instanceof Error ? err.message : String(err))
      }
    }
  }
  return out.sort((a, b) => a.meta.time.localeCompare(b.meta.time) || a.json.localeCompare(b.json))
}

/** The entry with this id; QuarantineError when the id is invalid or there is none. */
export async function findEntry(dir: string, id: string): Promise<QuarantineEntry> {
  checkId(id)
  for (const day of (await readdirOrEmpty(dir)).filter((d) => DAY_PATTERN.test(d)).sort()) {
    const e = await readEntry(path.join(dir, day), id)
    if (e) return e
  }
  throw new QuarantineError(`no quarantine entry ${id} in ${dir}`)
}

/** Removes an entry: the .json first (it leaves the listing at once), then the .eml. */
export async function removeEntry(e: QuarantineEntry): Promise<void> {
  await unlink(e.json)
  await unlink(e.eml).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err
  })
}

/**
 * Takes an entry out of the listing for an operation (release): its .json is
 * renamed to a dot-named claim file, which only one process can do. Returns
 * `restore` (put it back: the operation failed) and `finish` (remove it).
 */
export async function claimEntry(
  e: QuarantineEntry,
): Promise<{ restore(): Promise<void>; finish(): Promise<void> }> {
  const claimed = path.join(path.dirname(e.json), `.${path.basename(e.json)}.claimed`)
  try {
    await link(e.json, claimed)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST')
      throw new QuarantineError(
        `quarantine entry ${e.meta.id} is being released by another process`,
      )
    if (code === 'ENOENT') throw new QuarantineError(`quarantine entry ${e.meta.id} is gone`)
    throw err
  }
  try {
    await unlink(e.json)
  } catch (err) {
    await unlink(claimed).catch(() => undefined)
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new QuarantineError(`quarantine entry ${e.meta.id} is gone`)
    throw err
  }
  return {
    restore: () => rename(claimed, e.json),
    finish: async () => {
      await unlink(e.eml).catch(() => undefined)
      await unlink(claimed)
    },
  }
}
