/**
 * data_post: run the content phase and apply its result to the
 * transaction (edits, quarantine, discard), returning the outcome to answer.
 */
import type { MessageResult, MilterChain, Outcome } from '../policy/chain'
import type { MilterConfig } from '../config'
import { REPLIES } from '../policy/smtp-replies'
import type { MtaBounds } from '../session/limits'
import type { MacroLookup } from '../session/macros'
import {
  envelopeOf,
  headerFields,
  readMessage,
  writeBody,
  writeEnvelope,
  writeHeaders,
} from './write-back'
import { bodyPieces } from './body-capture'
import type { HarakaConnection, HarakaTransaction } from './haraka'
import { transactionState } from './state'

/** The disposition recorded on the transaction, if any, with its reason for the log. */
export function dispositionOf(
  t: HarakaTransaction,
): { kind: 'discard' | 'hold'; reason: string; milters: string[] } | undefined {
  const d = transactionState(t).disposition
  if (!d) return undefined
  return d.kind === 'discard'
    ? { kind: 'discard', reason: `discarded by ${d.milter}`, milters: [d.milter] }
    : { kind: 'hold', reason: d.reason, milters: d.milters }
}

/** Runs headers..EOB through the chain on the transaction's message. */
export function runContent(
  chain: MilterChain,
  t: HarakaTransaction,
  macros: MacroLookup,
): Promise<MessageResult> {
  const msgId = t.header.get('Message-Id').trim()
  const eom: MacroLookup = (n) => (n === '{msg_id}' ? msgId || undefined : macros(n))
  return chain.message({
    headers: headerFields(t),
    envelope: envelopeOf(t),
    body: () =>
      bodyPieces(t) ?? {
        [Symbol.asyncIterator]: (): AsyncIterator<Buffer> =>
          readMessage(t, { skip_headers: true })[Symbol.asyncIterator](),
      },
    eohMacros: macros,
    eomMacros: eom,
    ...(typeof t.data_bytes === 'number' ? { size: t.data_bytes } : {}),
    mta: mtaBounds(t.cfg),
  })
}

function positive(v: unknown): number | undefined {
  const n = typeof v === 'string' ? Number(v) : v
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : undefined
}

/**
 * Haraka's own bounds, from the transaction's connection.ini: a milter's
 * edits never make a message Haraka would not accept on input (more header
 * lines than [headers] max_lines, a body over [max] bytes).
 */
function mtaBounds(cfg: unknown): MtaBounds {
  const c = (typeof cfg === 'object' && cfg !== null ? cfg : {}) as {
    headers?: { max_lines?: unknown }
    max?: { bytes?: unknown }
  }
  // Haraka's own fallback when max_lines is not set (transaction.js)
  return {
    maxHeaderLines: positive(c.headers?.max_lines) ?? 1000,
    maxMessageBytes: positive(c.max?.bytes),
  }
}

let replaced = 0

const AR = 'authentication-results'

function normalise(v: string): string {
  return v.replace(/\s+/g, ' ').trim()
}

/**
 * Haraka replaces every Authentication-Results header with its own after
 * data_post when a plugin recorded auth results (connection.js
 * data_post_respond): remember the ones milters added, to restore at queue.
 */
function rememberAuthResults(t: HarakaTransaction, r: MessageResult): void {
  const before = new Set(t.header.get_all(AR).map(normalise))
  const added = r.headers
    .filter((h) => !h.hidden && h.name.toLowerCase() === AR && !before.has(normalise(h.value)))
    .map((h) => normalise(h.value))
  if (added.length > 0) transactionState(t).authResults = added
}

/** Restores milter-added Authentication-Results that Haraka removed (run at queue). */
export function restoreAuthResults(t: HarakaTransaction): number {
  const wanted = transactionState(t).authResults
  if (!wanted) return 0
  const have = new Set(t.header.get_all(AR).map(normalise))
  const missing = wanted.filter((v) => !have.has(v))
  for (const v of [...missing].reverse()) t.add_leading_header('Authentication-Results', v)
  return missing.length
}

/** Applies edits and quarantine; returns the outcome to answer the final dot with. */
export async function applyStageResult(
  this: { name: string },
  r: MessageResult,
  cfg: MilterConfig,
  c: HarakaConnection,
  t: HarakaTransaction,
): Promise<Outcome> {
  try {
    if (r.outcome.action === 'discard') {
      transactionState(t).disposition = { kind: 'discard', milter: r.outcome.milter }
      return r.outcome
    }
    if (r.outcome.action !== 'continue') return r.outcome
    if (transactionState(t).disposition) return r.outcome // discarded earlier (MAIL, RCPT or DATA)
    if (r.recipientsDeletedBy !== undefined) {
      // Never a transaction without a recipient sent on: as if the milter had said DISCARD.
      const milter = r.recipientsDeletedBy
      c.logwarn(this, `${milter} deleted every recipient: message discarded (250, not delivered)`)
      transactionState(t).disposition = { kind: 'discard', milter }
      return { action: 'discard', milter }
    }
    if (r.headersChanged) {
      rememberAuthResults(t, r)
      writeHeaders(t, r.headers)
    }
    if (r.envelopeChanged) writeEnvelope(t, r.envelope)
    if (r.body) await writeBody(t, r.body, ++replaced)
    for (const e of r.edits) {
      t.results.add(this, { pass: `${e.milter}(edits:${e.count}${e.bodyReplaced ? ',body' : ''})` })
    }
    if (r.quarantine.length > 0) return quarantine(this, cfg, c, t, r.quarantine)
    return r.outcome
  } finally {
    await r.dispose()
  }
}

function quarantine(
  plugin: { name: string },
  cfg: MilterConfig,
  c: HarakaConnection,
  t: HarakaTransaction,
  reasons: string[],
): Outcome {
  // each reason is `<milter>: <text>`
  const reason = reasons.join('; ')
  const milters = [...new Set(reasons.map((q) => q.split(':')[0] ?? 'milter'))]
  c.lognotice(plugin, `quarantine (${cfg.quarantine.action}): ${reason}`)
  t.results.add(plugin, { quarantine: reason })
  switch (cfg.quarantine.action) {
    case 'hold':
      transactionState(t).disposition = { kind: 'hold', reason, milters }
      return { action: 'continue' }
    case 'tag':
      t.add_header(cfg.quarantine.tagHeader, reason)
      return { action: 'continue' }
    case 'reject':
      return {
        action: 'reject',
        milter: milters[0] ?? 'milter',
        cause: 'verdict',
        reply: REPLIES.quarantined,
      }
  }
}
