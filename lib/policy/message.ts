/**
 * The content phase for one milter of the chain: headers, EOH, body and end
 * of message, then its edits validated as a whole (all or none) and applied
 * to the message as the previous milters left it. A replacement body is
 * spooled to disk; the spool belongs to the MessageResult, whose owner calls
 * dispose() once the message has been written (or refused).
 */
import { setImmediate as nextTurn } from 'node:timers/promises'

import { BodySpool } from '../body-spool'
import { EnvelopeEditor, type Envelope } from '../message/envelope'
import { HeaderEditor, type HeaderField } from '../message/headers'
import { sortModifications } from '../message/modifications'
import { Proto } from '../protocol/constants'
import type { Modification } from '../protocol/replies'
import { sendContent } from '../session/content'
import {
  checkHeaderBlock,
  eomLimits,
  headerBlockSize,
  type Limits,
  type MtaBounds,
} from '../session/limits'
import type { MacroLookup } from '../session/macros'
import type { MilterSession, Verdict } from '../session/session'
import type { Outcome } from './smtp-replies'

/** The message as the content phase starts. */
export interface MessageInput {
  headers: HeaderField[]
  envelope: Envelope
  /** The original body, unstuffed, CRLF; may be called once per milter. */
  body: () => AsyncIterable<Buffer>
  eohMacros?: MacroLookup
  eomMacros?: MacroLookup
  /** The message's size in bytes as received (for skip_larger_than). */
  size?: number
  /** What the MTA itself accepts (its max message size and header lines): edits stay within. */
  mta?: MtaBounds
}

/** What one milter changed. */
export interface MilterEdits {
  milter: string
  /** Modifications other than body chunks, in the order received. */
  modifications: Modification[]
  count: number
  bodyReplaced: boolean
}

/** The result of the content phase: outcome plus the edited message. */
export interface MessageResult {
  outcome: Outcome
  headers: HeaderField[]
  headersChanged: boolean
  envelope: Envelope
  envelopeChanged: boolean
  /** The replacement body, when a milter replaced it (owned by this result: see dispose). */
  body?: BodySpool
  /** QUARANTINE reasons (and failed milters with default_action quarantine). */
  quarantine: string[]
  /** Which milters modified what, for logs, results and the CLI. */
  edits: MilterEdits[]
  /**
   * The milter whose edits left the message without a recipient (undefined
   * while one is left). The message is then discarded, never sent on.
   */
  recipientsDeletedBy?: string
  /** Removes the spooled replacement body, if any. Safe to call more than once. */
  dispose(): Promise<void>
}

/** A new result for the message as it arrived. */
export function startResult(input: MessageInput): MessageResult {
  const result: MessageResult = {
    outcome: { action: 'continue' },
    headers: input.headers,
    headersChanged: false,
    envelope: input.envelope,
    envelopeChanged: false,
    quarantine: [],
    edits: [],
    dispose: async () => {
      await result.body?.dispose()
    },
  }
  return result
}

/** How one milter answered the message. */
export type ContentAnswer =
  | { kind: 'verdict'; verdict: Verdict }
  | {
      kind: 'edited'
      verdict: Verdict
      quarantine: string | undefined
      /** What it changed (undefined: nothing). */
      edits: MilterEdits | undefined
    }

/**
 * Runs the content phase on one milter and, when it lets the message go on,
 * applies its edits to `result`. Throws (MilterError, HeaderEditError,
 * EnvelopeEditError) when the milter fails or its edits are invalid; then
 * nothing of its edits is applied. With `apply: false` (a shadow milter)
 * the edits are validated and returned but `result` is left as it was, and
 * a replacement body is read and dropped, never spooled.
 */
export async function runMilterContent(
  name: string,
  s: MilterSession,
  input: MessageInput,
  result: MessageResult,
  opts: {
    spoolDir: string | undefined
    headerFolds: 'flatten' | 'keep'
    apply?: boolean
    /** The milter's bounds (absent: the defaults). */
    limits?: Limits | undefined
  },
  isContinue: (v: Verdict) => boolean,
): Promise<ContentAnswer> {
  const apply = opts.apply ?? true
  const spool = apply ? new BodySpool(opts.spoolDir) : undefined
  const previousBody = result.body
  const limits = eomLimits(opts.limits, input.mta)
  try {
    const eom = await sendContent(s, {
      headers: result.headers
        .filter((h) => !h.hidden)
        .map((h) => ({ name: h.name, value: Buffer.from(h.value, 'utf8') })),
      body: previousBody ? previousBody.chunks() : input.body(),
      ...(input.eohMacros ? { eohMacros: input.eohMacros } : {}),
      ...(input.eomMacros ? { eomMacros: input.eomMacros } : {}),
      // a shadow milter's replacement body is read and dropped
      onReplaceBody: spool ? (chunk) => spool.write(chunk) : () => undefined,
      eomLimits: limits,
    })
    if (!isContinue(eom.verdict)) {
      await spool?.dispose()
      return { kind: 'verdict', verdict: eom.verdict }
    }
    // Validate every edit before applying any (all or none).
    const sorted = sortModifications(eom.modifications)
    const leadspc = (s.negotiated.protocol & Proto.HDR_LEADSPC) !== 0
    const { headers, envelope } = await applyEdits(result, sorted, leadspc, opts.headerFolds)
    if (sorted.headerEdits.length > 0)
      checkHeaderBlock(name, limits, headerBlockSize(result.headers), headerBlockSize(headers))
    const count = eom.modifications.length
    const edits: MilterEdits | undefined =
      count > 0 || eom.bodyReplaced
        ? { milter: name, modifications: eom.modifications, count, bodyReplaced: eom.bodyReplaced }
        : undefined
    const quarantine = sorted.quarantine === undefined ? undefined : `${name}: ${sorted.quarantine}`
    if (!spool) return { kind: 'edited', verdict: eom.verdict, quarantine, edits }
    if (eom.bodyReplaced) await spool.finish()
    result.headers = headers
    result.headersChanged ||= sorted.headerEdits.length > 0
    result.envelope = envelope
    result.envelopeChanged ||= sorted.envelopeEdits.length > 0
    if (sorted.envelopeEdits.length > 0) {
      if (envelope.rcpts.length > 0) delete result.recipientsDeletedBy
      else result.recipientsDeletedBy ??= name
    }
    if (eom.bodyReplaced) {
      result.body = spool
      await previousBody?.dispose()
    } else {
      await spool.dispose()
    }
    if (edits) result.edits.push(edits)
    return { kind: 'edited', verdict: eom.verdict, quarantine, edits }
  } catch (e) {
    await spool?.dispose()
    throw e
  }
}

/** Edits applied between two turns of the event loop (a long answer must not hold the others). */
const EDITS_PER_TURN = 2000

/** Applies one milter's edits in order, yielding to the event loop now and then. */
async function applyEdits(
  result: MessageResult,
  sorted: ReturnType<typeof sortModifications>,
  leadingSpace: boolean,
  folds: 'flatten' | 'keep',
): Promise<{ headers: HeaderField[]; envelope: Envelope }> {
  let n = 0
  let headers = result.headers
  if (sorted.headerEdits.length > 0) {
    const editor = new HeaderEditor(result.headers, leadingSpace, folds)
    for (const e of sorted.headerEdits) {
      editor.apply(e)
      if (++n % EDITS_PER_TURN === 0) await nextTurn()
    }
    headers = editor.result()
  }
  let envelope = result.envelope
  if (sorted.envelopeEdits.length > 0) {
    const editor = new EnvelopeEditor(result.envelope)
    for (const e of sorted.envelopeEdits) {
      editor.apply(e)
      if (++n % EDITS_PER_TURN === 0) await nextTurn()
    }
    envelope = editor.result()
  }
  return { headers, envelope }
}
