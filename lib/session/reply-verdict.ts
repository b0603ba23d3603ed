/**
 * What a milter's reply means to the session: the verdict it carries, or
 * why it is a protocol error; and whether a modification is allowed by the
 * negotiated actions. Pure functions.
 */
import { Act, hex } from '../protocol/constants'
import type { Modification, Reply } from '../protocol/replies'
import { parseReplyCode } from '../protocol/replycode'
import type { Negotiated } from './negotiate'
import type { Verdict } from './types'

/** Which action bit allows which modification (milter-protocol.md §4.3). */
const MOD_ACTION: Readonly<Record<Modification['kind'], number>> = {
  addheader: Act.ADDHDRS,
  insheader: Act.ADDHDRS,
  chgheader: Act.CHGHDRS,
  replbody: Act.CHGBODY,
  addrcpt: Act.ADDRCPT,
  addrcpt_par: Act.ADDRCPT_PAR,
  delrcpt: Act.DELRCPT,
  chgfrom: Act.CHGFROM,
  quarantine: Act.QUARANTINE,
}

const MODIFICATION_KINDS = new Set<string>(Object.keys(MOD_ACTION))

/** True for SMFIR_ADDHEADER, REPLBODY and the other end-of-message modifications. */
export function isModification(r: Reply): r is Modification {
  return MODIFICATION_KINDS.has(r.kind)
}

/**
 * A modification we never offered the action for is fatal; one the milter
 * did not ask for but we offered is applied with a warning (as Postfix).
 */
export function modificationProblem(
  m: Modification,
  n: Negotiated,
): { fatal: boolean; text: string } | undefined {
  const bit = MOD_ACTION[m.kind]
  if ((n.offer.actions & bit) === 0) {
    return { fatal: true, text: `${m.kind} needs action ${hex(bit)}, which we did not offer` }
  }
  if ((n.actions & bit) === 0) {
    return {
      fatal: false,
      text: `milter did not negotiate ${hex(bit)} but sent ${m.kind}; applied`,
    }
  }
  return undefined
}

/** The verdict of a reply to `label`, or the protocol error it is. */
export function verdictOf(reply: Reply, label: string): Verdict | string {
  switch (reply.kind) {
    case 'continue':
    case 'accept':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'skip':
    case 'shutdown':
    case 'conn_fail':
      return { kind: reply.kind }
    case 'replycode': {
      // latin1: one character per byte, so 8-bit bytes can be made safe, not U+FFFD
      const parsed = parseReplyCode(reply.text.toString('latin1'))
      if (!parsed.ok) return `malformed SMFIR_REPLYCODE to ${label}: ${parsed.error}`
      return { kind: 'replycode', reply: parsed.reply }
    }
    default:
      return `unexpected ${reply.kind} in reply to ${label}`
  }
}
