/**
 * The quarantine store: one held message is two files in `<dir>/<YYYYMMDD>/`,
 * `<id>.eml` (the message exactly as it would have been delivered) and
 * `<id>.json` (its envelope and why it was held). Each is written to a
 * dot-named temporary file, synced, and linked into place (which fails if the
 * name exists, so nothing is overwritten); the .eml first, the .json last. A
 * listing shows only entries whose .json exists, so it never shows one
 * half-written. Knows nothing of Haraka: the plugin writes, the CLI reads.
 *
 * Nothing here follows a symbolic link inside the store (lib/quarantine/files):
 * a day folder, `.json`, `.eml` or claim that is not a plain directory or
 * regular file is refused with QUARANTINE_ERR_UNSAFE. How a release or
 * delete claims an entry, and how a dead one's claim is taken back:
 * lib/quarantine/claim.
 */
import { lstat, mkdir, readdir, unlink } from 'node:fs/promises'
import * as path from 'node:path'
import type { Readable } from 'node:stream'
import {
  acquireClaim,
  claimFileOf,
  readClaim,
  recoverFolder,
  type Claim,
  type ClaimOp,
  type ClaimState,
} from './claim'
import { QuarantineError } from './quarantine-error'
import { assertDirectory, readRegular, regularOrUndefined, unsafe, writeOnce } from './files'

export { QuarantineError } from './quarantine-error'
export { CLAIM_STALE_MS, type Claim, type ClaimOp } from './claim'

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
  /** May be empty (a milter removed every recipient): release then needs --rcpt. */
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
  /** The claim of a release or delete at work on it (or one that died, not yet taken back). */
  claim: ClaimState | undefined
}

/** What is happening to an entry: `held`, or a release or delete at work on it. */
export type EntryState = 'held' | 'releasing' | 'deleting'

/** Ids are Haraka transaction uuids (`UUID.N`): letters, digits, '-', '.', no path parts. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/
const DAY_PATTERN = /^[0-9]{8}$/

/** Throws unless `id` is a well-formed entry id (so it cannot name a path outside the store). */
export function checkId(id: string): string {
  if (id.length > 200 || !ID_PATTERN.test(id))
    throw new QuarantineError(
      `invalid quarantine id ${JSON.stringify(id)}`,
      'QUARANTINE_ERR_INVALID',
    )
  return id
}

/** `YYYYMMDD` of a date, UTC. */
function dayOf(d: Date): string {
  return d.toISOString().slice(0, 10).replace(/-/g, '')
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
  await assertDirectory(folder) // a link planted as the day folder is never written through
  const eml = path.join(folder, `${meta.id}.eml`)
  const json = path.join(folder, `${meta.id}.json`)
  await writeOnce(eml, message)
  try {
    await writeOnce(json, Buffer.from(`${JSON.stringify(meta, null, 2)}\n`))
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

/** The day folders of the store, oldest first; one that is not a plain directory goes to `problems`. */
async function dayFolders(dir: string, problems: string[]): Promise<string[]> {
  const out: string[] = []
  for (const day of (await readdirOrEmpty(dir)).filter((d) => DAY_PATTERN.test(d)).sort()) {
    const folder = path.join(dir, day)
    const st = await lstat(folder)
    if (st.isDirectory()) out.push(folder)
    else problems.push(unsafe(folder, st, 'directory').message)
  }
  return out
}

/** Reads the entry whose sidecar is `json`; undefined when incomplete or not an entry. */
async function readEntry(folder: string, id: string): Promise<QuarantineEntry | undefined> {
  const json = path.join(folder, `${id}.json`)
  const eml = path.join(folder, `${id}.eml`)
  const st = await regularOrUndefined(eml)
  if (!st) return undefined
  const sidecar = await readRegular(json)
  if (!sidecar) return undefined
  const meta = parseMeta(sidecar.data.toString('utf8'), json)
  if (meta.id !== id) throw new QuarantineError(`${json}: holds id ${meta.id}`)
  const claim = await readClaim(claimFileOf(folder, id))
  return { meta, eml, json, size: st.size, claim }
}

/** `held`, or what the claim on it is doing. */
export function entryState(e: QuarantineEntry): EntryState {
  if (!e.claim) return 'held'
  return e.claim.record?.op === 'delete' ? 'deleting' : 'releasing'
}

/** The held message, read without following a link. */
export async function readMessage(e: QuarantineEntry): Promise<Buffer> {
  const r = await readRegular(e.eml)
  if (!r)
    throw new QuarantineError(`quarantine entry ${e.meta.id} is gone`, 'QUARANTINE_ERR_NOT_FOUND')
  return r.data
}

/**
 * Takes back stale claims (lib/quarantine/claim) in the whole store, or of
 * one id; returns what was done, in words. Failures go to `problems`.
 */
export async function recoverClaims(
  dir: string,
  problems: string[],
  onlyId?: string,
): Promise<string[]> {
  const done: string[] = []
  for (const folder of await dayFolders(dir, problems)) {
    const names = await readdirOrEmpty(folder)
    done.push(...(await recoverFolder(folder, names, problems, onlyId)))
  }
  return done
}

/** Every complete entry, oldest first; `problems` collects sidecars that cannot be read. */
export async function listEntries(
  dir: string,
  problems: string[] = [],
): Promise<QuarantineEntry[]> {
  const out: QuarantineEntry[] = []
  for (const folder of await dayFolders(dir, problems)) {
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

/**
 * How many entries the store holds (releasing and deleting ones included),
 * from the directory listings alone (no file is read): a sidecar is linked
 * last, so a `.json` is a complete entry. For the metrics' gauge.
 */
export async function countEntries(dir: string): Promise<number> {
  let n = 0
  for (const folder of await dayFolders(dir, [])) {
    for (const name of await readdirOrEmpty(folder))
      if (name.endsWith('.json') && ID_PATTERN.test(name.slice(0, -'.json'.length))) n += 1
  }
  return n
}

/**
 * The entry with this id; QuarantineError when the id is invalid, its files
 * are unsafe, or there is none. Day folders that are not plain directories
 * are skipped and named in `problems`.
 */
export async function findEntry(
  dir: string,
  id: string,
  problems: string[] = [],
): Promise<QuarantineEntry> {
  checkId(id)
  for (const folder of await dayFolders(dir, problems)) {
    const e = await readEntry(folder, id)
    if (e) return e
  }
  throw new QuarantineError(`no quarantine entry ${id} in ${dir}`, 'QUARANTINE_ERR_NOT_FOUND')
}

/**
 * Claims an entry for a release or delete (lib/quarantine/claim): one
 * process at a time; a stale claim is taken back first.
 */
export function claimEntry(e: QuarantineEntry, op: ClaimOp): Promise<Claim> {
  return acquireClaim({ id: e.meta.id, json: e.json, eml: e.eml }, op)
}
