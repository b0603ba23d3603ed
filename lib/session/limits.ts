/**
 * The bounds on what a milter may send (milter.ini max_* keys): checked as
 * its answer is read, packet by packet, so the excess is never buffered.
 * Going over one is a MilterLimitError (MILTER_ERR_LIMIT) naming the key,
 * the figure and the stage. Knows nothing of sockets or Haraka: the
 * adapter passes Haraka's own bounds in as numbers.
 */
import { MilterLimitError } from '../errors'
import { MacroStage } from '../protocol/constants'
import type { Modification, SymList } from '../protocol/replies'

/** The configured bounds of one milter. */
export interface Limits {
  /** Modifications (every kind but body chunks) in one end-of-message answer. */
  maxModifications: number
  /** ADDHEADER and INSHEADER in one answer. */
  maxAddedHeaders: number
  /** Bytes of header names and values in one answer, and the header block after edits. */
  maxHeaderBytes: number
  /** Replacement body bytes; undefined: Haraka's own max message size. */
  maxReplacementBody: number | undefined
  /** Macro names a milter may ask for at one stage (SETSYMLIST). */
  maxMacroNames: number
  /** Macro names a milter may ask for over all stages. */
  maxMacroNamesTotal: number
}

/** The defaults (config/milter.ini documents each). */
export const DEFAULT_LIMITS: Limits = {
  maxModifications: 10_000,
  maxAddedHeaders: 1000,
  maxHeaderBytes: 1024 * 1024,
  maxReplacementBody: undefined,
  maxMacroNames: 100,
  maxMacroNamesTotal: 300,
}

/** The replacement body bound when neither milter.ini nor Haraka gives one (Haraka's default). */
const FALLBACK_MAX_BODY = 26_214_400

/** The bounds of one end of message, with the MTA's own folded in. */
export interface EomLimits {
  maxModifications: number
  maxAddedHeaders: number
  maxHeaderBytes: number
  /** The effective bound, and the name of the setting it came from (for the error). */
  maxReplacementBody: number
  replacementBodyKey: string
  /** Header lines the MTA accepts on input (Haraka's connection.ini [headers] max_lines). */
  maxHeaderLines: number | undefined
}

/** What the MTA itself accepts (undefined or 0: no bound of its own). */
export interface MtaBounds {
  maxMessageBytes?: number | undefined
  maxHeaderLines?: number | undefined
}

/**
 * The bounds for one message: the milter's, with the replacement body never
 * over the MTA's max message size (the key can only lower it).
 */
export function eomLimits(limits: Limits | undefined, mta: MtaBounds | undefined): EomLimits {
  const l = limits ?? DEFAULT_LIMITS
  const mtaBody =
    mta?.maxMessageBytes !== undefined && mta.maxMessageBytes > 0 ? mta.maxMessageBytes : undefined
  let maxReplacementBody = FALLBACK_MAX_BODY
  let replacementBodyKey = 'max_replacement_body (default)'
  if (mtaBody !== undefined) {
    maxReplacementBody = mtaBody
    replacementBodyKey = 'connection.ini [max] bytes'
  }
  if (
    l.maxReplacementBody !== undefined &&
    (mtaBody === undefined || l.maxReplacementBody < mtaBody)
  ) {
    maxReplacementBody = l.maxReplacementBody
    replacementBodyKey = 'max_replacement_body'
  }
  const lines = mta?.maxHeaderLines
  return {
    maxModifications: l.maxModifications,
    maxAddedHeaders: l.maxAddedHeaders,
    maxHeaderBytes: l.maxHeaderBytes,
    maxReplacementBody,
    replacementBodyKey,
    maxHeaderLines: lines !== undefined && lines > 0 ? lines : undefined,
  }
}

function over(
  name: string,
  stage: string,
  key: string,
  what: string,
  figure: number,
  max: number,
): MilterLimitError {
  return new MilterLimitError(
    key,
    figure,
    max,
    stage,
    `${name}: ${what} at ${stage}: ${figure} is over ${key} = ${max}`,
  )
}

/** Counts one end-of-message answer as it is read; throws at the first packet over a bound. */
export class EomCounter {
  private modifications = 0
  private addedHeaders = 0
  private headerBytes = 0
  private bodyBytes = 0

  constructor(
    private readonly name: string,
    private readonly limits: EomLimits,
  ) {}

  /** A modification other than a body chunk. */
  modification(m: Modification): void {
    const l = this.limits
    if (++this.modifications > l.maxModifications)
      throw over(
        this.name,
        'eom',
        'max_modifications',
        'too many modifications',
        this.modifications,
        l.maxModifications,
      )
    if (m.kind !== 'addheader' && m.kind !== 'insheader' && m.kind !== 'chgheader') return
    if (m.kind !== 'chgheader' && ++this.addedHeaders > l.maxAddedHeaders)
      throw over(
        this.name,
        'eom',
        'max_added_headers',
        'too many added headers',
        this.addedHeaders,
        l.maxAddedHeaders,
      )
    // Each added header is a line at least: more of them than Haraka takes header lines would
    // fail the check of the block after the edits anyway (checkHeaderBlock), so fail now,
    // before the rest of the flood is read and held
    const lines = l.maxHeaderLines
    if (m.kind !== 'chgheader' && lines !== undefined && this.addedHeaders > lines)
      throw over(
        this.name,
        'eom',
        'connection.ini [headers] max_lines',
        'more added headers than Haraka takes header lines',
        this.addedHeaders,
        lines,
      )
    this.headerBytes += m.name.length + m.value.length
    if (this.headerBytes > l.maxHeaderBytes)
      throw over(
        this.name,
        'eom',
        'max_header_bytes',
        'too many header bytes',
        this.headerBytes,
        l.maxHeaderBytes,
      )
  }

  /** A REPLBODY chunk of `n` bytes. */
  body(n: number): void {
    this.bodyBytes += n
    if (this.bodyBytes > this.limits.maxReplacementBody)
      throw over(
        this.name,
        'eom',
        this.limits.replacementBodyKey,
        'replacement body too large (bytes)',
        this.bodyBytes,
        this.limits.maxReplacementBody,
      )
  }
}

/**
 * The size of a header block as it would be delivered: lines (a folded
 * field counts each of its lines) and bytes (`Name:value` CRLF).
 */
export function headerBlockSize(fields: ReadonlyArray<{ name: string; value: string }>): {
  lines: number
  bytes: number
} {
  let lines = 0
  let bytes = 0
  for (const f of fields) {
    lines += 1
    for (let i = f.value.indexOf('\n'); i >= 0; i = f.value.indexOf('\n', i + 1)) lines++
    bytes += Buffer.byteLength(f.name) + 1 + Buffer.byteLength(f.value) + 2
  }
  return { lines, bytes }
}

/**
 * The header block after a milter's edits must stay within the MTA's line
 * limit and max_header_bytes, unless the message already went over before
 * the edits (the milter did not make it worse).
 */
export function checkHeaderBlock(
  name: string,
  limits: EomLimits,
  before: { lines: number; bytes: number },
  after: { lines: number; bytes: number },
): void {
  const lines = limits.maxHeaderLines
  if (lines !== undefined && after.lines > lines && after.lines > before.lines)
    throw over(
      name,
      'eom',
      'connection.ini [headers] max_lines',
      'too many header lines after edits',
      after.lines,
      lines,
    )
  if (after.bytes > limits.maxHeaderBytes && after.bytes > before.bytes)
    throw over(
      name,
      'eom',
      'max_header_bytes',
      'header block too large after edits (bytes)',
      after.bytes,
      limits.maxHeaderBytes,
    )
}

const STAGE_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(MacroStage).map(([k, v]) => [v as number, k.toLowerCase()]),
)

/** Bytes one macro name may take in a symlist, with its separator (names are short: `{rcpt_host}`). */
const SYMLIST_NAME_BYTES = 256

/**
 * The largest OPTNEG reply payload the macro limits allow: version, actions
 * and protocol (12 bytes), then per stage its id, the names and a NUL. A
 * larger reply fails negotiation as it arrives, before it is read whole: a
 * milter asking for 800,000 names would otherwise be buffered and split first.
 */
export function optnegReplyBound(limits: Limits | undefined): number {
  const l = limits ?? DEFAULT_LIMITS
  return 12 + STAGE_NAMES.size * 5 + l.maxMacroNamesTotal * SYMLIST_NAME_BYTES
}

/** The error for an OPTNEG reply larger than optnegReplyBound. */
export function optnegTooLarge(
  name: string,
  limits: Limits | undefined,
  bytes: number,
): MilterLimitError {
  const l = limits ?? DEFAULT_LIMITS
  const max = optnegReplyBound(limits)
  return new MilterLimitError(
    'max_macro_names_total',
    bytes,
    max,
    'negotiate',
    `${name}: an OPTNEG reply of ${bytes} bytes at negotiate is more than max_macro_names_total = ${l.maxMacroNamesTotal} names can take (${max} bytes)`,
  )
}

/** A SETSYMLIST asking for more macro names than allowed fails negotiation. */
export function checkSymlist(name: string, symlist: SymList, limits: Limits | undefined): void {
  const l = limits ?? DEFAULT_LIMITS
  let total = 0
  for (const [stage, names] of symlist) {
    total += names.length
    if (names.length > l.maxMacroNames)
      throw over(
        name,
        'negotiate',
        'max_macro_names',
        `SETSYMLIST asks for too many macro names for stage ${STAGE_NAMES.get(stage) ?? stage}`,
        names.length,
        l.maxMacroNames,
      )
  }
  if (total > l.maxMacroNamesTotal)
    throw over(
      name,
      'negotiate',
      'max_macro_names_total',
      'SETSYMLIST asks for too many macro names in all',
      total,
      l.maxMacroNamesTotal,
    )
}
