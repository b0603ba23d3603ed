/**
 * THE table of milter wire constants, checked against libmilter's mfdef.h
 * and mfapi.h (Debian libmilter-dev 8.17.1.9). Nothing else in the code
 * base spells a command letter or a flag value.
 */

/** Commands, client -> milter (SMFIC_*). */
export const Cmd = {
  ABORT: 0x41, //    'A' SMFIC_ABORT     no reply
  BODY: 0x42, //     'B' SMFIC_BODY      raw chunk
  CONNECT: 0x43, //  'C' SMFIC_CONNECT
  MACRO: 0x44, //    'D' SMFIC_MACRO     no reply
  BODYEOB: 0x45, //  'E' SMFIC_BODYEOB   modifications + final reply
  HELO: 0x48, //     'H' SMFIC_HELO
  QUIT_NC: 0x4b, //  'K' SMFIC_QUIT_NC   [v6] no reply, next is CONNECT
  HEADER: 0x4c, //   'L' SMFIC_HEADER
  MAIL: 0x4d, //     'M' SMFIC_MAIL
  EOH: 0x4e, //      'N' SMFIC_EOH       [v2]
  OPTNEG: 0x4f, //   'O' SMFIC_OPTNEG
  QUIT: 0x51, //     'Q' SMFIC_QUIT      no reply
  RCPT: 0x52, //     'R' SMFIC_RCPT
  DATA: 0x54, //     'T' SMFIC_DATA      [v4]
  UNKNOWN: 0x55, //  'U' SMFIC_UNKNOWN   [v3]
} as const
export type Cmd = (typeof Cmd)[keyof typeof Cmd]

/** Replies, milter -> client (SMFIR_*), plus the OPTNEG answer. */
export const Rep = {
  ADDRCPT: 0x2b, //     '+' SMFIR_ADDRCPT      modification
  DELRCPT: 0x2d, //     '-' SMFIR_DELRCPT      modification
  ADDRCPT_PAR: 0x32, // '2' SMFIR_ADDRCPT_PAR  [v6] modification
  SHUTDOWN: 0x34, //    '4' SMFIR_SHUTDOWN     final: 421 and close
  ACCEPT: 0x61, //      'a' SMFIR_ACCEPT       final
  REPLBODY: 0x62, //    'b' SMFIR_REPLBODY     modification
  CONTINUE: 0x63, //    'c' SMFIR_CONTINUE     final
  DISCARD: 0x64, //     'd' SMFIR_DISCARD      final
  CHGFROM: 0x65, //     'e' SMFIR_CHGFROM      [v6] modification
  CONN_FAIL: 0x66, //   'f' SMFIR_CONN_FAIL    final (never sent by libmilter)
  ADDHEADER: 0x68, //   'h' SMFIR_ADDHEADER    modification
  INSHEADER: 0x69, //   'i' SMFIR_INSHEADER    modification
  SETSYMLIST: 0x6c, //  'l' SMFIR_SETSYMLIST   only inside the OPTNEG reply
  CHGHEADER: 0x6d, //   'm' SMFIR_CHGHEADER    modification
  OPTNEG: 0x4f, //      'O' SMFIC_OPTNEG       negotiation answer
  PROGRESS: 0x70, //    'p' SMFIR_PROGRESS     intermediate
  QUARANTINE: 0x71, //  'q' SMFIR_QUARANTINE   modification (not final)
  REJECT: 0x72, //      'r' SMFIR_REJECT       final
  SKIP: 0x73, //        's' SMFIR_SKIP         [v6] final for the event
  TEMPFAIL: 0x74, //    't' SMFIR_TEMPFAIL     final
  REPLYCODE: 0x79, //   'y' SMFIR_REPLYCODE    final
} as const
export type Rep = (typeof Rep)[keyof typeof Rep]

/** Action flags (SMFIF_*): what the milter may do at end of message. */
export const Act = {
  ADDHDRS: 1 << 0, //     0x001 'h' and 'i'
  CHGBODY: 1 << 1, //     0x002 'b'
  ADDRCPT: 1 << 2, //     0x004 '+'
  DELRCPT: 1 << 3, //     0x008 '-'
  CHGHDRS: 1 << 4, //     0x010 'm'                        [v2]
  QUARANTINE: 1 << 5, //  0x020 'q'                        [v2]
  CHGFROM: 1 << 6, //     0x040 'e'                        [v6]
  ADDRCPT_PAR: 1 << 7, // 0x080 '2'                        [v6]
  SETSYMLIST: 1 << 8, //  0x100 symlist in the OPTNEG reply [v6]
} as const
export type Act = (typeof Act)[keyof typeof Act]

/** SMFI_V2_ACTS, SMFI_CURR_ACTS (SMFI_V1_ACTS, 0x0f, is not needed: version 1 is never offered). */
export const ACTS_V2 = 0x3f
export const ACTS_V6 = 0x1ff

/** Protocol flags (SMFIP_*): steps to omit, replies to skip, features. */
export const Proto = {
  NOCONNECT: 1 << 0, //   0x000001 omit CONNECT
  NOHELO: 1 << 1, //      0x000002 omit HELO
  NOMAIL: 1 << 2, //      0x000004 omit MAIL
  NORCPT: 1 << 3, //      0x000008 omit RCPT
  NOBODY: 1 << 4, //      0x000010 omit BODY
  NOHDRS: 1 << 5, //      0x000020 omit HEADER
  NOEOH: 1 << 6, //       0x000040 omit EOH                          [v2]
  NR_HDR: 1 << 7, //      0x000080 no reply to HEADER (SMFIP_NOHREPL)
  NOUNKNOWN: 1 << 8, //   0x000100 omit UNKNOWN                      [v3]
  NODATA: 1 << 9, //      0x000200 omit DATA                         [v4]
  SKIP: 1 << 10, //       0x000400 the MTA understands SMFIR_SKIP    [v6]
  RCPT_REJ: 1 << 11, //   0x000800 also send rejected RCPTs          [v6]
  NR_CONN: 1 << 12, //    0x001000 no reply to CONNECT               [v6]
  NR_HELO: 1 << 13, //    0x002000 no reply to HELO                  [v6]
  NR_MAIL: 1 << 14, //    0x004000 no reply to MAIL                  [v6]
  NR_RCPT: 1 << 15, //    0x008000 no reply to RCPT                  [v6]
  NR_DATA: 1 << 16, //    0x010000 no reply to DATA                  [v6]
  NR_UNKN: 1 << 17, //    0x020000 no reply to UNKNOWN               [v6]
  NR_EOH: 1 << 18, //     0x040000 no reply to EOH                   [v6]
  NR_BODY: 1 << 19, //    0x080000 no reply to BODY                  [v6]
  HDR_LEADSPC: 1 << 20, //0x100000 header values keep leading space  [v6]
  MDS_256K: 1 << 28, //   0x10000000 256 KiB - 1 packets (FFR, internal)
  MDS_1M: 1 << 29, //     0x20000000 1 MiB - 1 packets (FFR, internal)
} as const
export type Proto = (typeof Proto)[keyof typeof Proto]

/** SMFI_CURR_PROT, SMFI_INTERNAL (the v1/v2 masks are not needed: the offer is built from flags). */
export const PROTO_V6 = 0x1fffff
export const PROTO_INTERNAL = 0x70000000

/** Connect address families (SMFIA_*). */
export const Family = {
  UNKNOWN: 0x55, // 'U' no port or address follows
  UNIX: 0x4c, //    'L' unix socket path
  INET: 0x34, //    '4' IPv4 dotted quad
  INET6: 0x36, //   '6' IPv6 text
} as const
export type Family = (typeof Family)[keyof typeof Family]

/** Macro stages as symlist ids (SMFIM_*). EOM is 5 and EOH 6: not protocol order. */
export const MacroStage = {
  CONNECT: 0,
  HELO: 1,
  ENVFROM: 2,
  ENVRCPT: 3,
  DATA: 4,
  EOM: 5,
  EOH: 6,
} as const
export type MacroStage = (typeof MacroStage)[keyof typeof MacroStage]

/** The command byte a MACRO packet carries for each stage. */
export const MACRO_STAGE_CMD: Readonly<Record<MacroStage, Cmd>> = {
  [MacroStage.CONNECT]: Cmd.CONNECT,
  [MacroStage.HELO]: Cmd.HELO,
  [MacroStage.ENVFROM]: Cmd.MAIL,
  [MacroStage.ENVRCPT]: Cmd.RCPT,
  [MacroStage.DATA]: Cmd.DATA,
  [MacroStage.EOM]: Cmd.BODYEOB,
  [MacroStage.EOH]: Cmd.EOH,
}

/** Names of the macro stages, as used in config files and logs. */
export const MACRO_STAGE_NAMES: Readonly<Record<MacroStage, string>> = {
  [MacroStage.CONNECT]: 'connect',
  [MacroStage.HELO]: 'helo',
  [MacroStage.ENVFROM]: 'mail',
  [MacroStage.ENVRCPT]: 'rcpt',
  [MacroStage.DATA]: 'data',
  [MacroStage.EOM]: 'eom',
  [MacroStage.EOH]: 'eoh',
}

/** The 4-byte length prefix (MILTER_LEN_BYTES). */
export const LEN_BYTES = 4
/** Largest BODY chunk and default largest packet data (MILTER_CHUNK_SIZE). */
export const CHUNK_SIZE = 65535
/** Packet data limits by negotiated MDS bit. */
export const MDS_64K = 65535
export const MDS_256K = 262143
export const MDS_1M = 1048575
/** Highest protocol version we speak (SMFI_PROT_VERSION). */
export const PROTOCOL_VERSION = 6
/** Lowest protocol version anyone speaks. */
export const MIN_PROTOCOL_VERSION = 2

function invert(table: Readonly<Record<string, number>>, prefix: string): Map<number, string> {
  return new Map(Object.entries(table).map(([k, v]) => [v, prefix + k]))
}

const CMD_NAMES = invert(Cmd, 'SMFIC_')
const REP_NAMES = invert(Rep, 'SMFIR_')
REP_NAMES.set(Rep.OPTNEG, 'SMFIC_OPTNEG')

function hexCode(c: number): string {
  const ch = c >= 0x20 && c < 0x7f ? ` '${String.fromCharCode(c)}'` : ''
  return `0x${c.toString(16).padStart(2, '0')}${ch}`
}

/** SMFIC_RCPT for 0x52; hex and letter for anything unknown. */
export function cmdName(c: number): string {
  return CMD_NAMES.get(c) ?? `unknown command ${hexCode(c)}`
}

/** SMFIR_ACCEPT for 0x61; hex and letter for anything unknown. */
export function repName(c: number): string {
  return REP_NAMES.get(c) ?? `unknown reply ${hexCode(c)}`
}

function flagNames(table: Readonly<Record<string, number>>, mask: number): string[] {
  const names = Object.entries(table)
    .filter(([, v]) => (mask & v) !== 0)
    .map(([k]) => k)
  const known = Object.values(table).reduce((a, v) => a | v, 0)
  const rest = mask & ~known
  if (rest !== 0) names.push(`0x${(rest >>> 0).toString(16)}`)
  return names
}

/** ['ADDHDRS', 'CHGBODY'] for 0x3. */
export function actionNames(mask: number): string[] {
  return flagNames(Act, mask)
}

/** ['NOCONNECT', 'NR_HDR'] for 0x81. */
export function protocolNames(mask: number): string[] {
  return flagNames(Proto, mask)
}

/** 0x1ff as the hex text libmilter and Sendmail log. */
export function hex(mask: number): string {
  return `0x${(mask >>> 0).toString(16)}`
}
