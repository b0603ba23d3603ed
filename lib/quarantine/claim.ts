/**
 * Claims: how one process at a time releases or deletes an entry, and how
 * a claim whose process died is taken back.
 *
 * A claim is the file `.<id>.claim` beside the entry, linked into place
 * (so only one process can create it) and holding its owner:
 *
 *     { "op": "release", "pid": 4711, "host": "mx1", "time": "...", "token": "..." }
 *
 * The entry's files stay where they are while it is claimed: `list` shows
 * it as being released (or deleted). The owner refreshes the file's mtime
 * every CLAIM_REFRESH_MS. A claim is stale, and is taken back by the next
 * `list`, `release` or `delete`, when its process is gone (same host, pid
 * not alive) or its mtime is older than CLAIM_STALE_MS (another host, a
 * hung process, a reused pid).
 *
 * Finishing a claim removes the `.json` first (from then on the entry is
 * gone: for a release that is the record of the delivery), then the
 * `.eml`, then the claim. A stale claim whose `.json` is already gone is
 * such an interrupted removal, and taking it back completes it.
 *
 * Versions before claims renamed the `.json` to `.<id>.json.claimed` with
 * no owner; such a file older than CLAIM_STALE_MS is renamed back.
 *
 * A claim is written to `..<id>.claim.<token>.tmp` and linked into place; a
 * process killed before removing that temporary file leaves it, and taking
 * its claim back removes it too (one left without a claim goes once it is
 * CLAIM_STALE_MS old).
 */
import { randomBytes } from 'node:crypto'
import { link, lstat, lutimes, rename, unlink } from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { QuarantineError } from './quarantine-error'
import {
  lstatOrUndefined,
  readRegular,
  regularOrUndefined,
  syncDirectory,
  tmpName,
  unlinkIfThere,
  unsafe,
  writeOnce,
} from './files'

/** A claim not refreshed for this long is taken back (10 minutes). */
export const CLAIM_STALE_MS = 10 * 60 * 1000
/** How often a live claim refreshes its mtime (1 minute). */
const CLAIM_REFRESH_MS = 60 * 1000

/** What the claim is for. */
export type ClaimOp = 'release' | 'delete'

/** The content of a claim file: its owner and when it was made. */
export interface ClaimRecord {
  op: ClaimOp
  pid: number
  host: string
  /** When it was claimed (ISO 8601). */
  time: string
  /** Tells this claim from a later one of the same process. */
  token: string
}

/** A claim found on disk. */
export interface ClaimState {
  file: string
  /** undefined: unreadable (only its age can make it stale). */
  record: ClaimRecord | undefined
  /** Last refresh (the file's mtime), ms since the epoch. */
  refreshedMs: number
  /** Why it is stale; undefined while its owner may still be working. */
  stale: string | undefined
}

/** The paths of an entry, as far as a claim is concerned. */
export interface ClaimTarget {
  id: string
  json: string
  eml: string
}

/** `.<id>.claim` in the entry's day folder. */
export function claimFileOf(folder: string, id: string): string {
  return path.join(folder, `.${id}.claim`)
}

/** Whether `pid` is a live process on this host (EPERM: alive, someone else's). */
export function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Why a claim is stale at `nowMs`, or undefined (pure but for `alive`). */
export function staleReason(
  record: ClaimRecord | undefined,
  refreshedMs: number,
  nowMs: number,
  host: string = os.hostname(),
  alive: (pid: number) => boolean = pidAlive,
): string | undefined {
  if (record && record.host === host && !alive(record.pid)) return `process ${record.pid} is gone`
  const age = nowMs - refreshedMs
  if (age > CLAIM_STALE_MS) return `not refreshed for ${Math.round(age / 1000)} s`
  return undefined
}

function parseRecord(text: string): ClaimRecord | undefined {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    return undefined
  }
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>
  const ok =
    (o['op'] === 'release' || o['op'] === 'delete') &&
    typeof o['pid'] === 'number' &&
    typeof o['host'] === 'string' &&
    typeof o['time'] === 'string' &&
    typeof o['token'] === 'string'
  return ok ? (o as unknown as ClaimRecord) : undefined
}

/** The claim in `file`, if any (a link there is refused). */
export async function readClaim(file: string, nowMs = Date.now()): Promise<ClaimState | undefined> {
  const r = await readRegular(file)
  if (!r) return undefined
  const record = parseRecord(r.data.toString('utf8'))
  const refreshedMs = r.stat.mtimeMs
  return { file, record, refreshedMs, stale: staleReason(record, refreshedMs, nowMs) }
}

/** `pid 4711 on mx1 since <time>`. */
function ownerOf(c: ClaimState): string {
  const r = c.record
  return r ? `pid ${r.pid} on ${r.host} since ${r.time}` : `an unreadable claim (${c.file})`
}

function sameClaim(a: ClaimState, b: ClaimState): boolean {
  return a.record?.token === b.record?.token && a.refreshedMs === b.refreshedMs
}

/**
 * Removes a claim judged stale. It is first renamed aside (only one process
 * can), then compared with what was judged: if a fresh claim replaced it in
 * between, that one is put back. Returns whether the judged claim is gone.
 */
async function takeBack(judged: ClaimState): Promise<boolean> {
  const aside = `${judged.file}.${randomBytes(6).toString('hex')}.stale`
  try {
    await rename(judged.file, aside)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true
    throw e
  }
  const moved = await readClaim(aside)
  if (moved && !sameClaim(moved, judged)) {
    // XXX: a third process could claim in the instant the name is free
    await link(aside, judged.file).catch(() => undefined)
    await unlink(aside)
    return false
  }
  await unlinkIfThere(aside)
  // the killed owner's temporary file, if it died between linking and removing it
  if (judged.record) await unlinkIfThere(tmpName(judged.file, judged.record.token))
  return true
}

/** An entry's claim, held by this process. */
export class Claim {
  private timer: NodeJS.Timeout | undefined

  constructor(
    readonly target: ClaimTarget,
    readonly file: string,
    readonly record: ClaimRecord,
  ) {
    this.timer = setInterval(() => {
      const now = new Date()
      lutimes(this.file, now, now).catch(() => undefined)
    }, CLAIM_REFRESH_MS)
    this.timer.unref()
  }

  private stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /**
   * The operation is done: the entry is removed, its `.json` first and at
   * once (that removal is what records a release), synced to disk.
   */
  async finish(): Promise<void> {
    this.stop()
    const folder = path.dirname(this.target.json)
    await unlinkIfThere(this.target.json)
    await syncDirectory(folder).catch(() => undefined)
    await unlinkIfThere(this.target.eml)
    await this.dropIfOurs()
  }

  /** The operation failed: the entry is left as it was, unclaimed. */
  async release(): Promise<void> {
    this.stop()
    await this.dropIfOurs()
  }

  private async dropIfOurs(): Promise<void> {
    const now = await readClaim(this.file).catch(() => undefined)
    if (now?.record?.token === this.record.token) await unlinkIfThere(this.file)
  }
}

function gerund(op: ClaimOp): string {
  return op === 'release' ? 'released' : 'deleted'
}

/**
 * Claims an entry for `op`. A stale claim is taken back first; a live one
 * is QUARANTINE_ERR_CLAIMED; an entry that went away meanwhile is
 * QUARANTINE_ERR_NOT_FOUND.
 */
export async function acquireClaim(target: ClaimTarget, op: ClaimOp): Promise<Claim> {
  const folder = path.dirname(target.json)
  const file = claimFileOf(folder, target.id)
  const record: ClaimRecord = {
    op,
    pid: process.pid,
    host: os.hostname(),
    time: new Date().toISOString(),
    token: randomBytes(9).toString('base64url'),
  }
  for (let attempt = 0; ; attempt++) {
    try {
      const text = Buffer.from(`${JSON.stringify(record)}\n`)
      await writeOnce(file, text, tmpName(file, record.token))
      break
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    const held = await readClaim(file)
    if (held === undefined && attempt < 3) continue // released just now
    if (held === undefined || held.stale === undefined || attempt >= 3) {
      const what = held?.record ? gerund(held.record.op) : 'released or deleted'
      const by = held ? ` by ${ownerOf(held)}` : ''
      throw new QuarantineError(
        `quarantine entry ${target.id} is being ${what}${by}`,
        'QUARANTINE_ERR_CLAIMED',
      )
    }
    await takeBack(held)
  }
  const claim = new Claim(target, file, record)
  // a release or delete may have finished between finding the entry and claiming it
  if (!(await regularOrUndefined(target.json))) {
    await claim.release()
    throw new QuarantineError(`quarantine entry ${target.id} is gone`, 'QUARANTINE_ERR_NOT_FOUND')
  }
  return claim
}

const CLAIM_NAME = /^\.([A-Za-z0-9][A-Za-z0-9_.-]*)\.claim$/
const LEGACY_NAME = /^\.([A-Za-z0-9][A-Za-z0-9_.-]*)\.json\.claimed$/
const CLAIM_TMP_NAME = /^\.\.([A-Za-z0-9][A-Za-z0-9_.-]*)\.claim\.[A-Za-z0-9_-]+\.tmp$/

/**
 * Takes back the stale claims in one day folder (all, or those of `onlyId`):
 * a claimed entry is listed again, an interrupted removal is completed, a
 * pre-claim `.json.claimed` is renamed back. Returns what was done, in
 * words; failures go to `problems`.
 */
export async function recoverFolder(
  folder: string,
  names: readonly string[],
  problems: string[],
  onlyId?: string,
): Promise<string[]> {
  const done: string[] = []
  for (const name of names) {
    const t = CLAIM_TMP_NAME.exec(name)?.[1]
    if (t !== undefined && (onlyId === undefined || t === onlyId)) {
      await removeOldTmp(path.join(folder, name)).catch((e: unknown) => {
        problems.push(e instanceof Error ? e.message : String(e))
      })
      continue
    }
    const m = CLAIM_NAME.exec(name) ?? LEGACY_NAME.exec(name)
    const id = m?.[1]
    if (id === undefined || (onlyId !== undefined && id !== onlyId)) continue
    const target = {
      id,
      json: path.join(folder, `${id}.json`),
      eml: path.join(folder, `${id}.eml`),
    }
    try {
      const did = name.endsWith('.claimed')
        ? await recoverLegacy(path.join(folder, name), target)
        : await recoverClaim(path.join(folder, name), target)
      if (did) done.push(did)
    } catch (e) {
      problems.push(e instanceof Error ? e.message : String(e))
    }
  }
  return done
}

async function removeOldTmp(file: string): Promise<void> {
  const st = await lstatOrUndefined(file)
  if (st && Date.now() - st.mtimeMs > CLAIM_STALE_MS) await unlinkIfThere(file)
}

async function recoverClaim(file: string, target: ClaimTarget): Promise<string | undefined> {
  const claim = await readClaim(file)
  if (claim?.stale === undefined) return undefined
  const what = claim.record ? `${claim.record.op} by ${ownerOf(claim)}` : ownerOf(claim)
  if (await regularOrUndefined(target.json)) {
    if (!(await takeBack(claim))) return undefined
    return `took back ${target.id} from an interrupted ${what} (${claim.stale}): it is held again`
  }
  // the .json is gone: the operation had done its work (a release: delivered); finish the removal
  await unlinkIfThere(target.eml)
  if (!(await takeBack(claim))) return undefined
  return `completed the removal of ${target.id} left by an interrupted ${what} (${claim.stale})`
}

async function recoverLegacy(file: string, target: ClaimTarget): Promise<string | undefined> {
  const st = await lstat(file)
  if (!st.isFile()) throw unsafe(file, st)
  // a link() made the claim: the inode's ctime is when
  if (Date.now() - st.ctimeMs <= CLAIM_STALE_MS) return undefined
  if (await lstatOrUndefined(target.json))
    throw new QuarantineError(`both ${target.json} and ${file} exist; left as they are`)
  await link(file, target.json)
  await unlink(file)
  return `took back ${target.id} from an interrupted release of an older version: it is held again`
}
