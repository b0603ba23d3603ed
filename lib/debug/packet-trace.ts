/**
 * Milter packets as data for people and programs: the name and decoded
 * fields of every command and reply, and the exchange grouped by stage
 * (each command with the macros sent before it and the reply it got).
 * One wording for `haraka-milter check --trace` / --json and the plugin's
 * `debug = 2` packet trace. Pure: takes frames.
 */
import { decodeCommand, type Command } from '../protocol/commands'
import {
  actionNames,
  cmdName,
  Cmd,
  Family,
  hex,
  MACRO_STAGE_NAMES,
  protocolNames,
  Rep,
  repName,
} from '../protocol/constants'
import type { Frame } from '../protocol/frame'
import { decodeReply, type Modification, type Reply } from '../protocol/replies'
import { parseReplyCode, type SmtpReply } from '../protocol/replycode'

/** A decoded field value: text, a number, a list or a name -> value table. */
export type FieldValue =
  string | number | boolean | string[] | Readonly<Record<string, string | string[]>>

/** The fields of one packet, by name. */
export type Fields = Record<string, FieldValue>

/** One packet of the trace. */
export interface PacketReport {
  dir: 'send' | 'recv'
  /** SMFIC_* for what we sent, SMFIR_* for what the milter sent. */
  name: string
  fields: Fields
  /** The code byte and the payload, as hex (the 4-byte length is left out). */
  hex: string
}

/** One modification, decoded. */
export type ModificationReport =
  | { kind: 'addheader'; name: string; value: string }
  | { kind: 'insheader' | 'chgheader'; index: number; name: string; value: string }
  | { kind: 'addrcpt' | 'delrcpt'; rcpt: string }
  | { kind: 'addrcpt_par'; rcpt: string; args?: string }
  | { kind: 'chgfrom'; sender: string; args?: string }
  | { kind: 'quarantine'; reason: string }
  | { kind: 'replbody'; bytes: number }

/** A reply: its packet name, its kind and, for SMFIR_REPLYCODE, the SMTP reply. */
export interface ReplyReport {
  name: string
  kind: string
  /** SMFIR_REPLYCODE: the reply as the milter wrote it, and parsed. */
  text?: string
  code?: number
  enhanced?: string
  lines?: SmtpReply['lines']
  /** SMFIR_REPLYCODE that does not parse: why. */
  error?: string
}

/** One step of the exchange: the command, the macros sent with it, the reply. */
export interface StagePacketsReport {
  /** connect, helo, mail, rcpt, data, header, eoh, body, eom, unknown. */
  stage: string
  command: string
  fields: Fields
  /** The macros of the SMFIC_MACRO packet sent just before the command. */
  macros: Record<string, string>
  /** SMFIR_PROGRESS packets before the reply. */
  progress: number
  /** The final reply; absent when the milter was told not to answer (SMFIP_NR_*). */
  reply?: ReplyReport
  /** Modifications sent before the final reply (end of message only). */
  modifications?: ModificationReport[]
}

const STAGE_OF: ReadonlyMap<number, string> = new Map<number, string>([
  [Cmd.CONNECT, 'connect'],
  [Cmd.HELO, 'helo'],
  [Cmd.MAIL, 'mail'],
  [Cmd.RCPT, 'rcpt'],
  [Cmd.DATA, 'data'],
  [Cmd.HEADER, 'header'],
  [Cmd.EOH, 'eoh'],
  [Cmd.BODY, 'body'],
  [Cmd.BODYEOB, 'eom'],
  [Cmd.UNKNOWN, 'unknown'],
])

const FAMILY_NAMES: ReadonlyMap<number, string> = new Map([
  [Family.UNKNOWN, 'unknown'],
  [Family.UNIX, 'unix'],
  [Family.INET, 'inet'],
  [Family.INET6, 'inet6'],
])

/** Header values, addresses and macro values are UTF-8 (invalid bytes become U+FFFD). */
function text(b: Buffer): string {
  return b.toString('utf8')
}

function commandFields(c: Command): Fields {
  switch (c.cmd) {
    case 'optneg':
      return {
        version: c.version,
        actions: hex(c.actions),
        actionNames: actionNames(c.actions),
        protocol: hex(c.protocol),
        protocolNames: protocolNames(c.protocol),
      }
    case 'macro':
      return { stage: cmdName(c.stageCmd), macros: macroTable(c.pairs) }
    case 'connect': {
      const f: Fields = {
        hostname: text(c.hostname),
        family: FAMILY_NAMES.get(c.family) ?? hex(c.family),
      }
      if (c.port !== undefined) f['port'] = c.port
      if (c.address !== undefined) f['address'] = text(c.address)
      return f
    }
    case 'helo':
      return { helo: text(c.helo) }
    case 'mail':
    case 'rcpt':
      return { args: c.args.map(text) }
    case 'header':
      return { name: text(c.name), value: text(c.value) }
    case 'body':
      return bodyFields(c.chunk)
    case 'unknown':
      return { line: text(c.line) }
    case 'data':
    case 'eoh':
    case 'eob':
    case 'abort':
    case 'quit':
    case 'quit_nc':
      return {}
  }
}

/** How much of a body chunk its fields show (`preview`); `bytes` is its whole size. */
const BODY_PREVIEW_BYTES = 64

/** A body chunk (SMFIC_BODY, SMFIR_REPLBODY): its size and its first bytes as text. */
function bodyFields(chunk: Buffer): Fields {
  if (chunk.length === 0) return { bytes: 0 }
  return { bytes: chunk.length, preview: text(chunk.subarray(0, BODY_PREVIEW_BYTES)) }
}

function macroTable(pairs: ReadonlyArray<readonly [Buffer, Buffer]>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of pairs) out[text(name)] = text(value)
  return out
}

/** A modification with its byte fields as text. */
export function modificationReport(m: Modification): ModificationReport {
  switch (m.kind) {
    case 'addheader':
      return { kind: m.kind, name: text(m.name), value: text(m.value) }
    case 'insheader':
    case 'chgheader':
      return { kind: m.kind, index: m.index, name: text(m.name), value: text(m.value) }
    case 'addrcpt':
    case 'delrcpt':
      return { kind: m.kind, rcpt: text(m.rcpt) }
    case 'addrcpt_par':
      return m.args === undefined
        ? { kind: m.kind, rcpt: text(m.rcpt) }
        : { kind: m.kind, rcpt: text(m.rcpt), args: text(m.args) }
    case 'chgfrom':
      return m.args === undefined
        ? { kind: m.kind, sender: text(m.sender) }
        : { kind: m.kind, sender: text(m.sender), args: text(m.args) }
    case 'quarantine':
      return { kind: m.kind, reason: text(m.reason) }
    case 'replbody':
      return { kind: m.kind, bytes: m.chunk.length }
  }
}

/** The fields of a reply (modifications: their fields without the kind). */
function replyFields(r: Reply): Fields {
  switch (r.kind) {
    case 'optneg': {
      const requested: Record<string, string[]> = {}
      for (const [stage, names] of r.symlist) requested[MACRO_STAGE_NAMES[stage]] = names
      const f: Fields = {
        version: r.version,
        actions: hex(r.actions),
        actionNames: actionNames(r.actions),
        protocol: hex(r.protocol),
        protocolNames: protocolNames(r.protocol),
      }
      if (r.symlist.size > 0) f['macrosRequested'] = requested
      if (r.symlistWarnings.length > 0) f['symlistWarnings'] = r.symlistWarnings
      return f
    }
    case 'replycode':
      return { text: text(r.text) }
    case 'continue':
    case 'accept':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'skip':
    case 'progress':
    case 'shutdown':
    case 'conn_fail':
      return {}
    case 'replbody':
      return bodyFields(r.chunk)
    default: {
      const fields: Fields = { ...modificationReport(r) }
      delete fields['kind']
      return fields
    }
  }
}

/**
 * The name of a reply packet. The answer to OPTNEG travels with the command's
 * own code ('O'): it is named as the reply to SMFIC_OPTNEG, not as the command.
 */
function replyName(code: number): string {
  return code === Rep.OPTNEG ? 'SMFIC_OPTNEG reply' : repName(code)
}

/** Name and fields of one packet; a packet that does not decode says why in `error`. */
export function describePacket(dir: 'send' | 'recv', f: Frame): { name: string; fields: Fields } {
  const name = dir === 'send' ? cmdName(f.code) : replyName(f.code)
  try {
    const fields = dir === 'send' ? commandFields(decodeCommand(f)) : replyFields(decodeReply(f))
    return { name, fields }
  } catch (e) {
    return { name, fields: { error: e instanceof Error ? e.message : String(e) } }
  }
}

/** Name and fields of one packet, with its hex. */
export function packetReport(dir: 'send' | 'recv', f: Frame): PacketReport {
  const hexText = Buffer.concat([Buffer.of(f.code), f.data]).toString('hex')
  return { dir, ...describePacket(dir, f), hex: hexText }
}

/** A reply as a ReplyReport (SMFIR_REPLYCODE parsed as an SMTP reply). */
function replyReport(f: Frame): ReplyReport {
  const name = replyName(f.code)
  let r: Reply
  try {
    r = decodeReply(f)
  } catch (e) {
    return { name, kind: 'malformed', error: e instanceof Error ? e.message : String(e) }
  }
  if (r.kind !== 'replycode') return { name, kind: r.kind }
  const raw = text(r.text)
  const parsed = parseReplyCode(raw)
  if (!parsed.ok) return { name, kind: r.kind, text: raw, error: parsed.error }
  const out: ReplyReport = { name, kind: r.kind, text: raw, code: parsed.reply.code }
  if (parsed.reply.enhanced !== undefined) out.enhanced = parsed.reply.enhanced
  out.lines = parsed.reply.lines
  return out
}

const MODIFICATION_KINDS: ReadonlySet<string> = new Set<Modification['kind']>([
  'addheader',
  'insheader',
  'chgheader',
  'replbody',
  'addrcpt',
  'addrcpt_par',
  'delrcpt',
  'chgfrom',
  'quarantine',
])

function isModification(r: Reply): r is Modification {
  return MODIFICATION_KINDS.has(r.kind)
}

function decodesCommand(f: Frame): Command | undefined {
  try {
    return decodeCommand(f)
  } catch {
    return undefined
  }
}

function decodes(f: Frame): Reply | undefined {
  try {
    return decodeReply(f)
  } catch {
    return undefined
  }
}

/**
 * Groups a session's packets by stage: every command that carries a step
 * (CONNECT ... BODYEOB, UNKNOWN) with the macros sent just before it and what
 * the milter answered. OPTNEG, ABORT and QUIT are not stages.
 */
export function stagesFromPackets(
  packets: ReadonlyArray<{ dir: 'send' | 'recv'; frame: Frame }>,
): StagePacketsReport[] {
  const out: StagePacketsReport[] = []
  let macros: Record<string, string> = {}
  let current: StagePacketsReport | undefined
  for (const { dir, frame } of packets) {
    if (dir === 'send') {
      if (frame.code === Cmd.MACRO) {
        const c = decodesCommand(frame)
        if (c?.cmd === 'macro') macros = { ...macros, ...macroTable(c.pairs) }
        continue
      }
      const stage = STAGE_OF.get(frame.code)
      if (stage === undefined) {
        current = undefined
        continue
      }
      current = {
        stage,
        command: cmdName(frame.code),
        fields: packetReport(dir, frame).fields,
        macros,
        progress: 0,
      }
      macros = {}
      out.push(current)
      continue
    }
    if (current === undefined) continue
    const r = decodes(frame)
    if (r?.kind === 'progress') current.progress++
    else if (r !== undefined && isModification(r))
      (current.modifications ??= []).push(modificationReport(r))
    else {
      current.reply = replyReport(frame)
      current = undefined
    }
  }
  return out
}

function fieldText(v: FieldValue): string {
  if (typeof v === 'string')
    return /^[\x21-\x7e]+$/.test(v) && !v.includes('"') ? v : JSON.stringify(v)
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  return JSON.stringify(v)
}

/** `name=value ...` for one line of text. */
export function formatFields(fields: Fields): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${fieldText(v)}`)
    .join(' ')
}

/** A packet as text: its name, then its fields (`SMFIC_HELO helo=mx`). */
export function packetText(p: { name: string; fields: Fields }): string {
  const f = formatFields(p.fields)
  return f ? `${p.name} ${f}` : p.name
}

/** One trace line of the CLI: direction, name, fields, then the hex. */
export function formatPacket(p: PacketReport): string {
  return `${p.dir === 'send' ? '>>' : '<<'} ${packetText(p)} hex=${p.hex}`
}
