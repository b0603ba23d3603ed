/**
 * Per-recipient filtering: which milters a recipient needs (recipient
 * rules), and whether it may join the message under way (all recipients of
 * a message get the same milters: `defer` the ones needing another set, or
 * run the `union`).
 */
import type { MilterDef } from '../config'
import { recipientSkip } from './conditions'
import { REPLIES, type Outcome } from './smtp-replies'

/** What the recipient rules and conditions of a milter look at. */
export interface RecipientFacts {
  destinationChannel: string
  optin: string | undefined
  /** The recipient's domain (for skip_recipient_domains). */
  domain?: string
}

/** Recipients needing different milters in one message. */
export type MixedRecipients = 'defer' | 'union'

/** Recipient rules (destination channel, opt-in) enable a milter for some recipients only. */
function hasRecipientRules(def: MilterDef): boolean {
  return def.destinationChannels.length > 0 || def.optin.length > 0
}

/**
 * A milter with recipient rules or skip_recipient_domains depends on the
 * recipient: it is contacted only from the first recipient that needs it.
 */
export function dependsOnRecipient(def: MilterDef): boolean {
  return hasRecipientRules(def) || (def.skip?.recipientDomains.length ?? 0) > 0
}

/** Is a recipient-dependent milter enabled for this recipient? */
export function enabledFor(def: MilterDef, facts: RecipientFacts | undefined): boolean {
  if (!facts) return false
  if (recipientSkip(def.skip, facts.domain ?? '') !== undefined) return false
  if (!hasRecipientRules(def)) return true
  if (def.destinationChannels.includes(facts.destinationChannel)) return true
  return facts.optin !== undefined && def.optin.includes(facts.optin)
}

function sameSet<T>(a: ReadonlySet<T>, b: ReadonlySet<T>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x))
}

/** A recipient's place in the message: refused (defer), or the milters that join with it. */
export type Route<T> =
  { kind: 'defer'; outcome: Outcome } | { kind: 'join'; join: T[]; set: Set<T> }

/**
 * Where a recipient needing `wanted` goes, given the rule milters already in
 * the message (`current`, undefined before the first recipient).
 */
export function route<T>(
  wanted: ReadonlySet<T>,
  current: ReadonlySet<T> | undefined,
  policy: MixedRecipients,
): Route<T> {
  if (policy === 'defer') {
    if (current !== undefined && !sameSet(wanted, current)) {
      const outcome: Outcome = {
        action: 'tempfail',
        reply: REPLIES.defer,
        milter: 'recipient rules',
        cause: 'verdict',
      }
      return { kind: 'defer', outcome }
    }
    return { kind: 'join', join: current === undefined ? [...wanted] : [], set: new Set(wanted) }
  }
  return {
    kind: 'join',
    join: [...wanted].filter((s) => !current?.has(s)),
    set: new Set([...(current ?? []), ...wanted]),
  }
}
