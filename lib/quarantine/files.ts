/**
 * File primitives of the quarantine store that never follow a symbolic
 * link: whoever can write into the store directory could otherwise plant a
 * link that makes the CLI (often run as root) read, deliver or write a file
 * elsewhere. A link or any other non-regular file where a store file
 * belongs is refused with QUARANTINE_ERR_UNSAFE, never followed.
 */
import { randomBytes } from 'node:crypto'
import { constants, type Stats } from 'node:fs'
import { link, lstat, open, unlink } from 'node:fs/promises'
import * as path from 'node:path'
import type { Readable } from 'node:stream'
import { QuarantineError } from './quarantine-error'

/** Opens for reading without following a link, and without blocking on a FIFO. */
export const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code
}

/** `a symbolic link`, `a directory`, ...: what a path is, for a refusal. */
function kindOf(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link'
  if (st.isDirectory()) return 'a directory'
  if (st.isFIFO()) return 'a FIFO'
  if (st.isSocket()) return 'a socket'
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'a device'
  return 'a regular file'
}

/** The refusal of `file`, which is `st` where a `wanted` belongs. */
export function unsafe(file: string, st: Stats, wanted = 'regular file'): QuarantineError {
  return new QuarantineError(
    `refused ${file}: it is ${kindOf(st)}, not a ${wanted} (never followed)`,
    'QUARANTINE_ERR_UNSAFE',
  )
}

/** lstat, or undefined when nothing is there. */
export async function lstatOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await lstat(p)
  } catch (e) {
    if (errno(e) === 'ENOENT') return undefined
    throw e
  }
}

/** lstat of a path that must be a regular file when it exists. */
export async function regularOrUndefined(file: string): Promise<Stats | undefined> {
  const st = await lstatOrUndefined(file)
  if (st && !st.isFile()) throw unsafe(file, st)
  return st
}

/** Throws QUARANTINE_ERR_UNSAFE unless `dir` is a directory itself (not a link to one). */
export async function assertDirectory(dir: string): Promise<void> {
  const st = await lstat(dir)
  if (!st.isDirectory()) throw unsafe(dir, st, 'directory')
}

/**
 * Reads a regular file, opened with O_NOFOLLOW and checked with fstat;
 * undefined when it does not exist.
 */
export async function readRegular(
  file: string,
): Promise<{ data: Buffer; stat: Stats } | undefined> {
  let fh
  try {
    fh = await open(file, READ_FLAGS)
  } catch (e) {
    if (errno(e) === 'ENOENT') return undefined
    if (errno(e) === 'ELOOP') throw unsafe(file, await lstat(file))
    throw e
  }
  try {
    const stat = await fh.stat()
    if (!stat.isFile()) throw unsafe(file, stat)
    return { data: await fh.readFile(), stat }
  } finally {
    await fh.close()
  }
}

/** `.<name of final>.<tag>.tmp` beside `final` (tag: random unless given). */
export function tmpName(final: string, tag = randomBytes(6).toString('hex')): string {
  return path.join(path.dirname(final), `.${path.basename(final)}.${tag}.tmp`)
}

/**
 * Writes `data` to a new temporary file, syncs it, and links it to `final`:
 * never overwriting (EEXIST when `final` exists, even as a link), never
 * showing a partly written `final`. `tmp` must be a name no one else uses.
 */
export async function writeOnce(
  final: string,
  data: Buffer | Readable,
  tmp = tmpName(final),
): Promise<void> {
  // 'wx' is O_CREAT | O_EXCL: it fails on an existing name, a link included
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

/** unlink that treats "already gone" as done. */
export async function unlinkIfThere(file: string): Promise<void> {
  await unlink(file).catch((e: unknown) => {
    if (errno(e) !== 'ENOENT') throw e
  })
}

/** Makes the directory entries of `dir` durable (a removal survives a crash of the machine). */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}
