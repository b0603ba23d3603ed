/**
 * Option negotiation (milter-protocol.md §4): what we offer for a protocol version, and the
 * validation of the milter's answer (milter-protocol.md §4.6). Pure functions.
 */
import { MilterNegotiationError } from '../errors'
import {
  ACTS_V2,
  ACTS_V6,
  MDS_1M,
  MDS_256K,
  MDS_64K,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PROTO_INTERNAL,
  PROTO_V6,
  Proto,
  hex,
} from '../protocol/constants'
import type { OptnegReply, SymList } from '../protocol/replies'

/** What we put in our OPTNEG. */
export interface Offer {
  version: number
  actions: number
  protocol: number
}

/** The options in force on one milter connection. */
export interface Negotiated {
  version: number
  /** Actions the milter asked for. */
  actions: number
  /** Protocol bits in force (MDS masked off, NOUNKNOWN/NODATA forced for old versions). */
  protocol: number
  /** Largest packet payload the milter accepts from us. */
  maxDataBytes: number
  symlist: SymList
  offer: Offer
}

/** The NO* steps a v2 milter may ask to omit (SMFI_V2_PROT). */
const NO_STEPS_V2 =
  Proto.NOCONNECT |
  Proto.NOHELO |
  Proto.NOMAIL |
  Proto.NORCPT |
  Proto.NOBODY |
  Proto.NOHDRS |
  Proto.NOEOH
/** v3 adds UNKNOWN, v4 DATA. */
const NO_STEPS_V3 = NO_STEPS_V2 | Proto.NOUNKNOWN
const NO_STEPS_V4 = NO_STEPS_V3 | Proto.NODATA
/** Every protocol bit we implement for v6: all of SMFI_CURR_PROT but RCPT_REJ (we never report rejected RCPTs). */
const PROTO_V6_IMPLEMENTED = PROTO_V6 & ~Proto.RCPT_REJ

/**
 * The offer for a protocol version, the way Postfix builds it: every NO*
 * step at every version (libmilter milters that lack a callback need them),
 * the v6 features only at v6.
 */
export function offerFor(version: number, actions?: number): Offer {
  if (!Number.isInteger(version) || version < MIN_PROTOCOL_VERSION || version > PROTOCOL_VERSION) {
    throw new RangeError(`milter protocol version must be 2 to 6, not ${version}`)
  }
  const maxActs = version >= 6 ? ACTS_V6 : ACTS_V2
  const acts = actions === undefined ? maxActs : actions & maxActs
  let protocol: number
  if (version >= 6) protocol = PROTO_V6_IMPLEMENTED
  else if (version >= 4) protocol = NO_STEPS_V4
  else if (version === 3) protocol = NO_STEPS_V3
  else protocol = NO_STEPS_V2
  return { version, actions: acts, protocol }
}

/** Validates the OPTNEG answer against our offer (milter-protocol.md §4.6). Throws MilterNegotiationError. */
export function validateOptneg(offer: Offer, reply: OptnegReply): Negotiated {
  const { version, actions } = reply
  if (version < MIN_PROTOCOL_VERSION || version > offer.version) {
    throw new MilterNegotiationError(
      `protocol version conflict: milter answered ${version}, we offered ${offer.version} (2 is the lowest)`,
    )
  }
  const extraActs = actions & ~offer.actions
  if (extraActs !== 0) {
    throw new MilterNegotiationError(
      `milter requires actions ${hex(actions)} but we offered ${hex(offer.actions)} (missing ${hex(extraActs)})`,
    )
  }
  const mds = reply.protocol & (Proto.MDS_1M | Proto.MDS_256K) & offer.protocol
  let protocol = reply.protocol & ~PROTO_INTERNAL
  const extraProto = protocol & ~offer.protocol
  if (extraProto !== 0) {
    throw new MilterNegotiationError(
      `milter requires protocol steps ${hex(protocol)} but we offered ${hex(offer.protocol)} (missing ${hex(extraProto)})`,
    )
  }
  if (version <= 2) protocol |= Proto.NOUNKNOWN
  if (version <= 3) protocol |= Proto.NODATA
  let maxDataBytes = MDS_64K
  if (mds & Proto.MDS_1M) maxDataBytes = MDS_1M
  else if (mds & Proto.MDS_256K) maxDataBytes = MDS_256K
  return { version, actions, protocol, maxDataBytes, symlist: reply.symlist, offer }
}
