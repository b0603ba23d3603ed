/**
 * decodeReply(frame) -> Reply: every reply a milter can send, parsed
 * strictly against its layout as Postfix does (milter-protocol.md §1.6.4): a missing NUL, a
 * short field, trailing bytes or data on an empty reply is a protocol
 * error. encodeReply is the inverse, for test servers and traces.
 */
import { MilterProtocolError } from '../errors'
import { Reader, Writer } from './bytes'
import { MacroStage, Rep, repName } from './constants'
import { encodeFrame, type Frame } from './frame'

/** Replies without payload. */
export type BareReplyKind =
  | 'continue'
  | 'accept'
  | 'reject'
  | 'tempfail'
  | 'discard'
  | 'skip'
  | 'progress'
  | 'shutdown'
  | 'conn_fail'

/** A modification: legal only between BODYEOB and its final reply. */
export type Modification =
  | { kind: 'addheader'; name: Buffer; value: Buffer }
  | { kind: 'insheader'; index: number; name: Buffer; value: Buffer }
  | { kind: 'chgheader'; index: number; name: Buffer; value: Buffer }
  | { kind: 'replbody'; chunk: Buffer }
  | { kind: 'addrcpt'; rcpt: Buffer }
  | { kind: 'addrcpt_par'; rcpt: Buffer; args?: Buffer }
  | { kind: 'delrcpt'; rcpt: Buffer }
  | { kind: 'chgfrom'; sender: Buffer; args?: Buffer }
  | { kind: 'quarantine'; reason: Buffer }

/** Macro lists a milter asked for in its OPTNEG reply, by stage. */
export type SymList = Map<MacroStage, string[]>

/** The OPTNEG answer. */
export interface OptnegReply {
  kind: 'optneg'
  version: number
  actions: number
  protocol: number
  symlist: SymList
  /** Entries that were skipped (unknown stage) or cut short. */
  symlistWarnings: string[]
}

/** Every reply, as a discriminated union on `kind`. */
export type Reply =
  { kind: BareReplyKind } | { kind: 'replycode'; text: Buffer } | Modification | OptnegReply

const BARE_KINDS: ReadonlyMap<number, BareReplyKind> = new Map<number, BareReplyKind>([
  [Rep.CONTINUE, 'continue'],
  [Rep.ACCEPT, 'accept'],
  [Rep.REJECT, 'reject'],
  [Rep.TEMPFAIL, 'tempfail'],
  [Rep.DISCARD, 'discard'],
  [Rep.SKIP, 'skip'],
  [Rep.PROGRESS, 'progress'],
  [Rep.SHUTDOWN, 'shutdown'],
  [Rep.CONN_FAIL, 'conn_fail'],
])

const BARE_CODES: ReadonlyMap<BareReplyKind, number> = new Map(
  [...BARE_KINDS].map(([code, kind]) => [kind, code]),
)

const STAGE_IDS = new Set<number>(Object.values(MacroStage))

/** Parses the symlist appended to an OPTNEG reply (milter-protocol.md §4.7), Postfix-style lenient. */
function decodeSymlist(r: Reader, warnings: string[]): SymList {
  const out: SymList = new Map()
  while (r.remaining > 0) {
    if (r.remaining < 5) {
      warnings.push(`truncated symlist entry of ${r.remaining} bytes`)
      r.rest()
      break
    }
    const stage = r.u32('symlist stage')
    let list: Buffer
    try {
      list = r.cstring('symlist macros')
    } catch {
      warnings.push(`symlist entry for stage ${stage} has no NUL`)
      r.rest()
      break
    }
    if (!STAGE_IDS.has(stage)) {
      warnings.push(`symlist entry for unknown stage ${stage} ignored`)
      continue
    }
    const names = list
      .toString('latin1')
      .split(/[\s,]+/)
      .filter(Boolean)
    out.set(stage as MacroStage, names)
  }
  return out
}

function decodeOptneg(r: Reader): OptnegReply {
  const version = r.u32('version')
  const actions = r.u32('actions')
  const protocol = r.u32('protocol')
  const symlistWarnings: string[] = []
  const symlist = decodeSymlist(r, symlistWarnings)
  return { kind: 'optneg', version, actions, protocol, symlist, symlistWarnings }
}

/** One or two strings: `rcpt\0` or `rcpt\0 args\0`. */
function oneOrTwo(r: Reader, first: string): [Buffer, Buffer | undefined] {
  const a = r.cstring(first)
  const b = r.remaining > 0 ? r.cstring('ESMTP arguments') : undefined
  return [a, b]
}

function decodePayload(code: number, r: Reader): Reply {
  switch (code) {
    case Rep.REPLYCODE:
      return { kind: 'replycode', text: r.cstring('reply text') }
    case Rep.ADDHEADER:
      return { kind: 'addheader', name: r.cstring('header name'), value: r.cstring('header value') }
    case Rep.INSHEADER:
    case Rep.CHGHEADER: {
      const index = r.u32('header index')
      const name = r.cstring('header name')
      const value = r.cstring('header value')
      return { kind: code === Rep.INSHEADER ? 'insheader' : 'chgheader', index, name, value }
    }
    case Rep.REPLBODY:
      return { kind: 'replbody', chunk: r.rest() }
    case Rep.ADDRCPT:
      return { kind: 'addrcpt', rcpt: r.cstring('recipient') }
    case Rep.DELRCPT:
      return { kind: 'delrcpt', rcpt: r.cstring('recipient') }
    case Rep.ADDRCPT_PAR: {
      const [rcpt, args] = oneOrTwo(r, 'recipient')
      return args ? { kind: 'addrcpt_par', rcpt, args } : { kind: 'addrcpt_par', rcpt }
    }
    case Rep.CHGFROM: {
      const [sender, args] = oneOrTwo(r, 'sender')
      return args ? { kind: 'chgfrom', sender, args } : { kind: 'chgfrom', sender }
    }
    case Rep.QUARANTINE:
      return { kind: 'quarantine', reason: r.cstring('reason') }
    case Rep.OPTNEG:
      return decodeOptneg(r)
    case Rep.SETSYMLIST:
      throw new MilterProtocolError('SMFIR_SETSYMLIST is never valid as a packet')
    default: {
      const kind = BARE_KINDS.get(code)
      if (!kind) throw new MilterProtocolError(`${repName(code)}`)
      return { kind }
    }
  }
}

/** Decodes one reply frame strictly. Throws only MilterProtocolError. */
export function decodeReply(frame: Frame): Reply {
  const r = new Reader(frame.data, repName(frame.code))
  const reply = decodePayload(frame.code, r)
  r.end()
  return reply
}

/** Names as latin1, the way decodeSymlist reads them, so any byte round-trips. */
function encodeSymlist(w: Writer, symlist: SymList): void {
  for (const [stage, names] of symlist) {
    w.u32(stage).cstring(Buffer.from(names.join(' '), 'latin1'))
  }
}

function encodeTwo(w: Writer, a: Buffer, b: Buffer | undefined): Buffer {
  w.cstring(a)
  if (b) w.cstring(b)
  return w.toBuffer()
}

/** Encodes a reply (the milter side), for test servers and golden vectors. */
export function encodeReply(reply: Reply): Buffer {
  const w = new Writer()
  switch (reply.kind) {
    case 'optneg':
      w.u32(reply.version).u32(reply.actions).u32(reply.protocol)
      encodeSymlist(w, reply.symlist)
      return encodeFrame(Rep.OPTNEG, w.toBuffer())
    case 'replycode':
      return encodeFrame(Rep.REPLYCODE, w.cstring(reply.text).toBuffer())
    case 'addheader':
      return encodeFrame(Rep.ADDHEADER, w.cstring(reply.name).cstring(reply.value).toBuffer())
    case 'insheader':
    case 'chgheader': {
      const code = reply.kind === 'insheader' ? Rep.INSHEADER : Rep.CHGHEADER
      return encodeFrame(
        code,
        w.u32(reply.index).cstring(reply.name).cstring(reply.value).toBuffer(),
      )
    }
    case 'replbody':
      return encodeFrame(Rep.REPLBODY, reply.chunk)
    case 'addrcpt':
      return encodeFrame(Rep.ADDRCPT, w.cstring(reply.rcpt).toBuffer())
    case 'delrcpt':
      return encodeFrame(Rep.DELRCPT, w.cstring(reply.rcpt).toBuffer())
    case 'addrcpt_par':
      return encodeFrame(Rep.ADDRCPT_PAR, encodeTwo(w, reply.rcpt, reply.args))
    case 'chgfrom':
      return encodeFrame(Rep.CHGFROM, encodeTwo(w, reply.sender, reply.args))
    case 'quarantine':
      return encodeFrame(Rep.QUARANTINE, w.cstring(reply.reason).toBuffer())
    default:
      return encodeFrame(BARE_CODES.get(reply.kind) as number)
  }
}
