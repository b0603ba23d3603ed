/**
 * Encoders for every command a client sends (values -> Buffer), and the
 * decoder the other way, used for packet traces and by test servers.
 */
import { MilterProtocolError } from '../errors'
import { assertNoNul, Reader, Writer } from './bytes'
import { Cmd, Family, LEN_BYTES, MACRO_STAGE_CMD, type MacroStage } from './constants'
import { encodeFrame, frameHead, type Frame } from './frame'

/** A string field: text (sent as UTF-8) or raw bytes. */
export type Bytes = string | Buffer

/** The client side of CONNECT. */
export type ConnectAddress =
  | { family: 'unknown' }
  | { family: 'unix'; path: string }
  | { family: 'inet' | 'inet6'; address: string; port: number }

/** SMFIC_OPTNEG: the version, actions and protocol steps we offer. */
export function encodeOptneg(version: number, actions: number, protocol: number): Buffer {
  return encodeFrame(Cmd.OPTNEG, new Writer().u32(version).u32(actions).u32(protocol).toBuffer())
}

/** SMFIC_MACRO for one stage: name/value pairs, in order. */
export function encodeMacro(stage: MacroStage, pairs: ReadonlyArray<readonly [Bytes, Bytes]>) {
  const text = macroText(pairs)
  if (text !== undefined) {
    // the usual case, text only: one string written straight into the packet
    const n = Buffer.byteLength(text)
    const out = Buffer.allocUnsafe(LEN_BYTES + 2 + n)
    out.writeUInt32BE(n + 2, 0)
    out[LEN_BYTES] = Cmd.MACRO
    out[LEN_BYTES + 1] = MACRO_STAGE_CMD[stage]
    out.write(text, LEN_BYTES + 2, 'utf8')
    return out
  }
  const w = new Writer().u8(MACRO_STAGE_CMD[stage])
  for (const [name, value] of pairs) w.cstring(name).cstring(value)
  return encodeFrame(Cmd.MACRO, w.toBuffer())
}

/** `name\0value\0...` when every name and value is a string; undefined otherwise. */
function macroText(pairs: ReadonlyArray<readonly [Bytes, Bytes]>): string | undefined {
  let text = ''
  for (const [name, value] of pairs) {
    if (typeof name !== 'string' || typeof value !== 'string') return undefined
    assertNoNul(name)
    assertNoNul(value)
    text += `${name}\0${value}\0`
  }
  return text
}

/** SMFIC_CONNECT: hostname, family, and port and address unless the family is unknown. */
export function encodeConnect(hostname: Bytes, addr: ConnectAddress): Buffer {
  const w = new Writer().cstring(hostname)
  switch (addr.family) {
    case 'unknown':
      w.u8(Family.UNKNOWN)
      break
    case 'unix':
      w.u8(Family.UNIX).u16(0).cstring(addr.path)
      break
    case 'inet':
      w.u8(Family.INET).u16(addr.port).cstring(addr.address)
      break
    case 'inet6':
      w.u8(Family.INET6).u16(addr.port).cstring(addr.address)
      break
  }
  return encodeFrame(Cmd.CONNECT, w.toBuffer())
}

/** SMFIC_HELO with the HELO/EHLO argument. */
export function encodeHelo(helo: Bytes): Buffer {
  return encodeFrame(Cmd.HELO, new Writer().cstring(helo).toBuffer())
}

function encodeArgv(code: Cmd, args: readonly Bytes[]): Buffer {
  if (args.length === 0)
    throw new RangeError(`${code === Cmd.MAIL ? 'MAIL' : 'RCPT'} needs an address`)
  const w = new Writer()
  for (const a of args) w.cstring(a)
  return encodeFrame(code, w.toBuffer())
}

/** SMFIC_MAIL: `<addr>` then one string per ESMTP parameter. */
export function encodeMail(args: readonly Bytes[]): Buffer {
  return encodeArgv(Cmd.MAIL, args)
}

/** SMFIC_RCPT: `<addr>` then one string per ESMTP parameter. */
export function encodeRcpt(args: readonly Bytes[]): Buffer {
  return encodeArgv(Cmd.RCPT, args)
}

/** SMFIC_HEADER: name and value (value already stripped or not, per HDR_LEADSPC). */
export function encodeHeader(name: Bytes, value: Bytes): Buffer {
  return encodeFrame(Cmd.HEADER, new Writer().cstring(name).cstring(value).toBuffer())
}

/** SMFIC_BODY: 1 to 65535 raw bytes (the caller cuts the chunks). */
export function encodeBody(chunk: Buffer): Buffer {
  if (chunk.length === 0) throw new RangeError('an empty BODY packet kills libmilter sessions')
  return encodeFrame(Cmd.BODY, chunk)
}

/**
 * SMFIC_BODY without copying the chunk: the packet's first 5 bytes for a chunk of `length`
 * bytes, to be written followed by the chunk itself (the same bytes as encodeBody(chunk)).
 */
export function encodeBodyHead(length: number): Buffer {
  if (length === 0) throw new RangeError('an empty BODY packet kills libmilter sessions')
  return frameHead(Cmd.BODY, length)
}

/** SMFIC_UNKNOWN: the whole unrecognised command line without CRLF. */
export function encodeUnknown(line: Bytes): Buffer {
  return encodeFrame(Cmd.UNKNOWN, new Writer().cstring(line).toBuffer())
}

/** Commands with no payload: DATA, EOH, BODYEOB, ABORT, QUIT, QUIT_NC. */
export type BareCmd =
  | typeof Cmd.DATA
  | typeof Cmd.EOH
  | typeof Cmd.BODYEOB
  | typeof Cmd.ABORT
  | typeof Cmd.QUIT
  | typeof Cmd.QUIT_NC

/** A payload-less command (EOB is always sent empty, as Postfix does). */
export function encodeBare(code: BareCmd): Buffer {
  return encodeFrame(code)
}

/** A decoded command, as a milter sees it. */
export type Command =
  | { cmd: 'optneg'; version: number; actions: number; protocol: number }
  | { cmd: 'macro'; stageCmd: number; pairs: Array<[Buffer, Buffer]> }
  | { cmd: 'connect'; hostname: Buffer; family: number; port?: number; address?: Buffer }
  | { cmd: 'helo'; helo: Buffer }
  | { cmd: 'mail' | 'rcpt'; args: Buffer[] }
  | { cmd: 'header'; name: Buffer; value: Buffer }
  | { cmd: 'body'; chunk: Buffer }
  | { cmd: 'unknown'; line: Buffer }
  | { cmd: 'data' | 'eoh' | 'eob' | 'abort' | 'quit' | 'quit_nc' }

function argv(r: Reader): Buffer[] {
  const out: Buffer[] = []
  while (r.remaining > 0) out.push(r.cstring('argument'))
  return out
}

function decodeConnect(r: Reader): Command {
  const hostname = r.cstring('hostname')
  const family = r.u8('family')
  if (family === Family.UNKNOWN) return { cmd: 'connect', hostname, family }
  const port = r.u16('port')
  const address = r.cstring('address')
  return { cmd: 'connect', hostname, family, port, address }
}

const BARE: ReadonlyMap<number, Command> = new Map<number, Command>([
  [Cmd.DATA, { cmd: 'data' }],
  [Cmd.EOH, { cmd: 'eoh' }],
  [Cmd.BODYEOB, { cmd: 'eob' }],
  [Cmd.ABORT, { cmd: 'abort' }],
  [Cmd.QUIT, { cmd: 'quit' }],
  [Cmd.QUIT_NC, { cmd: 'quit_nc' }],
])

function decodePayload(code: number, r: Reader): Command {
  switch (code) {
    case Cmd.OPTNEG:
      return {
        cmd: 'optneg',
        version: r.u32('version'),
        actions: r.u32('actions'),
        protocol: r.u32('protocol'),
      }
    case Cmd.MACRO: {
      const stageCmd = r.u8('macro stage')
      const flat = argv(r)
      if (flat.length % 2 !== 0)
        throw new MilterProtocolError('malformed SMFIC_MACRO: odd number of strings')
      const pairs: Array<[Buffer, Buffer]> = []
      for (let i = 0; i < flat.length; i += 2)
        pairs.push([flat[i] as Buffer, flat[i + 1] as Buffer])
      return { cmd: 'macro', stageCmd, pairs }
    }
    case Cmd.CONNECT:
      return decodeConnect(r)
    case Cmd.HELO:
      return { cmd: 'helo', helo: r.cstring('helo') }
    case Cmd.MAIL:
    case Cmd.RCPT:
      return { cmd: code === Cmd.MAIL ? 'mail' : 'rcpt', args: argv(r) }
    case Cmd.HEADER:
      return { cmd: 'header', name: r.cstring('name'), value: r.cstring('value') }
    case Cmd.BODY:
      return { cmd: 'body', chunk: r.rest() }
    case Cmd.UNKNOWN:
      return { cmd: 'unknown', line: r.cstring('line') }
    default: {
      const bare = BARE.get(code)
      if (!bare) throw new MilterProtocolError(`unknown command code 0x${code.toString(16)}`)
      return bare
    }
  }
}

/** Decodes one command frame strictly: no missing NUL, no trailing bytes. */
export function decodeCommand(frame: Frame): Command {
  const r = new Reader(frame.data, `command 0x${frame.code.toString(16)}`)
  const c = decodePayload(frame.code, r)
  r.end()
  return c
}
