/**
 * Golden byte vectors, written from docs/milter-protocol.md (§2, §3.4, §3.5,
 * §4.1, §4.7 and the §9 capture from real libmilter 1.0.1), never from our
 * encoder. Hex strings are copied from the document; the rest is built
 * with the independent helpers in test/helpers/bytes.ts.
 */
import type { Command } from '../../../lib/protocol/commands'
import type { Reply } from '../../../lib/protocol/replies'
import { ch, cstr, frame, hex, u16, u32, u8 } from '../../helpers/bytes'

/** A packet the client sends and what decodeCommand must make of it. */
export interface CommandVector {
  name: string
  bytes: Buffer
  decoded: Command
}

/** A packet a milter sends and what decodeReply must make of it. */
export interface ReplyVector {
  name: string
  bytes: Buffer
  reply: Reply
}

/** Prefixes a spec hex line that starts at the code byte with its uint32 length. */
export function packet(body: Buffer): Buffer {
  return Buffer.concat([u32(body.length), body])
}

const b = (s: string): Buffer => Buffer.from(s, 'latin1')

// ---- commands (client -> milter) -------------------------------------------------------------

/** §2.2 / §9 #1: the default Sendmail/Postfix offer, 17 bytes. */
export const OPTNEG_V6_DEFAULT = hex('00 00 00 0d 4f | 00 00 00 06 | 00 00 01 ff | 00 1f ff ff')

/** §2.3 / §9 #3: MACRO 'C' j=mx.example.org. */
export const MACRO_CONNECT_J = hex(
  '00 00 00 13 44 43 6a 00 6d 78 2e 65 78 61 6d 70 6c 65 2e 6f 72 67 00',
)

/** §2.4 / §9 #4: CONNECT client.example.com, IPv4 192.0.2.10 port 52100. */
export const CONNECT_INET =
  hex(`00 00 00 22 43  63 6c 69 65 6e 74 2e 65 78 61 6d 70 6c 65 2e 63 6f 6d 00
  34  cb 84  31 39 32 2e 30 2e 32 2e 31 30 00`)

/** §9 #6: HELO client.example.com. */
export const HELO_CLIENT = hex(`00 00 00 14 48 63 6c 69 65 6e 74 2e 65 78 61 6d 70 6c 65 2e 63 6f
  6d 00`)

/** docs/style.md: encodeHelo('mx.example'). */
export const HELO_MX = hex('0000000c 48 6d782e6578616d706c65 00')

/** §9 #8: MAIL <alice@example.com> SIZE=1234. */
export const MAIL_SIZE = hex(`00 00 00 1f 4d 3c 61 6c 69 63 65 40 65 78 61 6d 70 6c 65 2e 63 6f
  6d 3e 00 53 49 5a 45 3d 31 32 33 34 00`)

/** §9 #10: RCPT <bob@example.net>. */
export const RCPT_BOB = hex(`00 00 00 13 52 3c 62 6f 62 40 65 78 61 6d 70 6c 65 2e 6e 65 74 3e
  00`)

/** §9 #12, #18, #22, #25 and the other payload-less commands. */
export const DATA = hex('00 00 00 01 54')
export const EOH = hex('00 00 00 01 4e')
export const BODYEOB = hex('00 00 00 01 45')
export const QUIT = hex('00 00 00 01 51')
export const ABORT = hex('00 00 00 01 41')
export const QUIT_NC = hex('00 00 00 01 4b')

/** §9 #14: HEADER From alice@example.com (one leading space already stripped). */
export const HEADER_FROM = hex(`00 00 00 18 4c 46 72 6f 6d 00 61 6c 69 63 65 40 65 78 61 6d 70 6c
  65 2e 63 6f 6d 00`)

/** §2.8 / §9 #16: HEADER Subject: Hi. */
export const HEADER_SUBJECT = hex('00 00 00 0c 4c 53 75 62 6a 65 63 74 00 48 69 00')

/** §9 #20: BODY "Hello\r\n", raw, no NUL. */
export const BODY_HELLO = hex('00 00 00 08 42 48 65 6c 6c 6f 0d 0a')

export const COMMAND_VECTORS: readonly CommandVector[] = [
  {
    name: 'OPTNEG v6 default offer',
    bytes: OPTNEG_V6_DEFAULT,
    decoded: { cmd: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
  },
  {
    name: 'OPTNEG v2 dialect',
    bytes: frame('O', u32(2), u32(0x3f), u32(0x7f)),
    decoded: { cmd: 'optneg', version: 2, actions: 0x3f, protocol: 0x7f },
  },
  {
    name: 'MACRO connect j',
    bytes: MACRO_CONNECT_J,
    decoded: { cmd: 'macro', stageCmd: ch('C'), pairs: [[b('j'), b('mx.example.org')]] },
  },
  {
    name: 'MACRO eom with two pairs',
    bytes: frame('D', u8(ch('E')), cstr('i'), cstr('4XyZ1'), cstr('{msg_id}'), cstr('<a@b>')),
    decoded: {
      cmd: 'macro',
      stageCmd: ch('E'),
      pairs: [
        [b('i'), b('4XyZ1')],
        [b('{msg_id}'), b('<a@b>')],
      ],
    },
  },
  {
    name: 'MACRO eoh with no pairs (§6.2: 00 00 00 02 44 <cmd>)',
    bytes: hex('00 00 00 02 44 4e'),
    decoded: { cmd: 'macro', stageCmd: ch('N'), pairs: [] },
  },
  {
    name: 'MACRO with an empty value',
    bytes: frame('D', u8(ch('H')), cstr('{tls_version}'), cstr('')),
    decoded: { cmd: 'macro', stageCmd: ch('H'), pairs: [[b('{tls_version}'), b('')]] },
  },
  {
    name: 'CONNECT family unknown (no port, no address)',
    bytes: frame('C', cstr('localhost'), u8(ch('U'))),
    decoded: { cmd: 'connect', hostname: b('localhost'), family: ch('U') },
  },
  {
    name: 'CONNECT family unix (port 0, path)',
    bytes: frame('C', cstr('localhost'), u8(ch('L')), u16(0), cstr('/run/smtp.sock')),
    decoded: {
      cmd: 'connect',
      hostname: b('localhost'),
      family: ch('L'),
      port: 0,
      address: b('/run/smtp.sock'),
    },
  },
  {
    name: 'CONNECT family inet (§2.4 example)',
    bytes: CONNECT_INET,
    decoded: {
      cmd: 'connect',
      hostname: b('client.example.com'),
      family: ch('4'),
      port: 52100,
      address: b('192.0.2.10'),
    },
  },
  {
    name: 'CONNECT family inet6 (bare address)',
    bytes: frame('C', cstr('[2001:db8::1]'), u8(ch('6')), u16(0xfffe), cstr('2001:db8::1')),
    decoded: {
      cmd: 'connect',
      hostname: b('[2001:db8::1]'),
      family: ch('6'),
      port: 0xfffe,
      address: b('2001:db8::1'),
    },
  },
  {
    name: 'HELO client.example.com (§9 #6)',
    bytes: HELO_CLIENT,
    decoded: { cmd: 'helo', helo: b('client.example.com') },
  },
  {
    name: 'HELO mx.example (style.md)',
    bytes: HELO_MX,
    decoded: { cmd: 'helo', helo: b('mx.example') },
  },
  {
    name: 'MAIL with SIZE (§9 #8)',
    bytes: MAIL_SIZE,
    decoded: { cmd: 'mail', args: [b('<alice@example.com>'), b('SIZE=1234')] },
  },
  {
    name: 'MAIL null sender with two ESMTP args',
    bytes: frame('M', cstr('<>'), cstr('BODY=8BITMIME'), cstr('SMTPUTF8')),
    decoded: { cmd: 'mail', args: [b('<>'), b('BODY=8BITMIME'), b('SMTPUTF8')] },
  },
  {
    name: 'RCPT without args (§9 #10)',
    bytes: RCPT_BOB,
    decoded: { cmd: 'rcpt', args: [b('<bob@example.net>')] },
  },
  {
    name: 'RCPT with NOTIFY and ORCPT',
    bytes: frame(
      'R',
      cstr('<bob@example.net>'),
      cstr('NOTIFY=SUCCESS,FAILURE'),
      cstr('ORCPT=rfc822;bob@example.net'),
    ),
    decoded: {
      cmd: 'rcpt',
      args: [
        b('<bob@example.net>'),
        b('NOTIFY=SUCCESS,FAILURE'),
        b('ORCPT=rfc822;bob@example.net'),
      ],
    },
  },
  { name: 'DATA', bytes: DATA, decoded: { cmd: 'data' } },
  {
    name: 'HEADER From (§9 #14)',
    bytes: HEADER_FROM,
    decoded: { cmd: 'header', name: b('From'), value: b('alice@example.com') },
  },
  {
    name: 'HEADER Subject (§2.8)',
    bytes: HEADER_SUBJECT,
    decoded: { cmd: 'header', name: b('Subject'), value: b('Hi') },
  },
  {
    name: 'HEADER with an empty value',
    bytes: frame('L', cstr('X-Empty'), cstr('')),
    decoded: { cmd: 'header', name: b('X-Empty'), value: b('') },
  },
  {
    name: 'HEADER folded with bare LF, 8-bit bytes kept',
    bytes: frame('L', cstr('X-Fold'), cstr(Buffer.from([0x61, 0x0a, 0x09, 0xe9]))),
    decoded: { cmd: 'header', name: b('X-Fold'), value: Buffer.from([0x61, 0x0a, 0x09, 0xe9]) },
  },
  { name: 'EOH', bytes: EOH, decoded: { cmd: 'eoh' } },
  {
    name: 'BODY Hello (§9 #20)',
    bytes: BODY_HELLO,
    decoded: { cmd: 'body', chunk: b('Hello\r\n') },
  },
  {
    name: 'BODY with NUL and CR bytes kept raw',
    bytes: frame('B', Buffer.from([0x00, 0x0d, 0x41, 0x00])),
    decoded: { cmd: 'body', chunk: Buffer.from([0x00, 0x0d, 0x41, 0x00]) },
  },
  { name: 'BODYEOB', bytes: BODYEOB, decoded: { cmd: 'eob' } },
  { name: 'ABORT', bytes: ABORT, decoded: { cmd: 'abort' } },
  { name: 'QUIT', bytes: QUIT, decoded: { cmd: 'quit' } },
  { name: 'QUIT_NC', bytes: QUIT_NC, decoded: { cmd: 'quit_nc' } },
  {
    name: 'UNKNOWN',
    bytes: frame('U', cstr('XFOO bar baz')),
    decoded: { cmd: 'unknown', line: b('XFOO bar baz') },
  },
]

// ---- replies (milter -> client) --------------------------------------------------------------

/** §4.1 / §9 #2: libmilter with every callback and SMFIF_ADDHDRS. */
export const OPTNEG_REPLY_ADDHDRS = hex('00 00 00 0d 4f 00 00 00 06 00 00 00 01 00 00 00 00')

/** §4.7: 53 bytes, symlist for stage 0 and 3. */
export const OPTNEG_REPLY_SYMLIST = hex(`00 00 00 31 4f  00 00 00 06  00 00 01 01  00 10 00 80
  00 00 00 00  6a 20 7b 64 61 65 6d 6f 6e 5f 6e 61 6d 65 7d 00
  00 00 00 03  7b 72 63 70 74 5f 61 64 64 72 7d 00`)

/** §3.4: the multi-line reply smfi_setmlreply produced. */
export const REPLYCODE_MULTILINE = packet(
  hex(`79 34 35 30 2d 34 2e 32 2e 30 20 6c 69 6e 65 20 6f 6e 65 0d 0a 34 35 30 20 34 2e 32 2e 30
  20 6c 69 6e 65 20 74 77 6f 00`),
)

/** §9 #23: ADDHEADER X-Test: yes. */
export const ADDHEADER_XTEST = hex('00 00 00 0c 68 58 2d 54 65 73 74 00 79 65 73 00')

/** §9 #5 and the other replies with no payload. */
export const CONTINUE = hex('00 00 00 01 63')

const bare = (letter: string): Buffer => frame(letter)

export const REPLY_VECTORS: readonly ReplyVector[] = [
  { name: 'CONTINUE', bytes: CONTINUE, reply: { kind: 'continue' } },
  { name: 'ACCEPT', bytes: bare('a'), reply: { kind: 'accept' } },
  { name: 'REJECT', bytes: bare('r'), reply: { kind: 'reject' } },
  { name: 'TEMPFAIL', bytes: bare('t'), reply: { kind: 'tempfail' } },
  { name: 'DISCARD', bytes: bare('d'), reply: { kind: 'discard' } },
  { name: 'SKIP', bytes: bare('s'), reply: { kind: 'skip' } },
  { name: 'PROGRESS', bytes: bare('p'), reply: { kind: 'progress' } },
  { name: 'SHUTDOWN', bytes: bare('4'), reply: { kind: 'shutdown' } },
  { name: 'CONN_FAIL', bytes: bare('f'), reply: { kind: 'conn_fail' } },
  {
    name: 'REPLYCODE single line',
    bytes: frame('y', cstr('550 5.7.1 Message refused')),
    reply: { kind: 'replycode', text: b('550 5.7.1 Message refused') },
  },
  {
    name: 'REPLYCODE multi-line (§3.4 capture)',
    bytes: REPLYCODE_MULTILINE,
    reply: { kind: 'replycode', text: b('450-4.2.0 line one\r\n450 4.2.0 line two') },
  },
  {
    name: 'QUARANTINE (§3.5 capture)',
    bytes: packet(hex('71 62 65 63 61 75 73 65 00')),
    reply: { kind: 'quarantine', reason: b('because') },
  },
  {
    name: 'ADDHEADER (§9 #23)',
    bytes: ADDHEADER_XTEST,
    reply: { kind: 'addheader', name: b('X-Test'), value: b('yes') },
  },
  {
    name: 'ADDHEADER (§3.5 capture, without length)',
    bytes: packet(hex('68 58 2d 54 65 73 74 00 79 65 73 00')),
    reply: { kind: 'addheader', name: b('X-Test'), value: b('yes') },
  },
  {
    name: 'INSHEADER at 0 (§3.5 capture)',
    bytes: packet(hex('69 00 00 00 00 58 2d 54 6f 70 00 74 00')),
    reply: { kind: 'insheader', index: 0, name: b('X-Top'), value: b('t') },
  },
  {
    name: 'INSHEADER at 1 with a folded value',
    bytes: frame('i', u32(1), cstr('DKIM-Signature'), cstr('v=1;\n\tb=abc')),
    reply: { kind: 'insheader', index: 1, name: b('DKIM-Signature'), value: b('v=1;\n\tb=abc') },
  },
  {
    name: 'CHGHEADER delete the first Subject (§3.5 capture)',
    bytes: packet(hex('6d 00 00 00 01 53 75 62 6a 65 63 74 00 00')),
    reply: { kind: 'chgheader', index: 1, name: b('Subject'), value: b('') },
  },
  {
    name: 'CHGHEADER index 0xffffffff is read unsigned',
    bytes: frame('m', u32(0xffffffff), cstr('X-Spam'), cstr('yes')),
    reply: { kind: 'chgheader', index: 0xffffffff, name: b('X-Spam'), value: b('yes') },
  },
  {
    name: 'REPLBODY (§3.5 capture)',
    bytes: packet(hex('62 6e 65 77 0d 0a')),
    reply: { kind: 'replbody', chunk: b('new\r\n') },
  },
  {
    name: 'REPLBODY empty (smfi_replacebody with length 0)',
    bytes: hex('00 00 00 01 62'),
    reply: { kind: 'replbody', chunk: Buffer.alloc(0) },
  },
  {
    name: 'REPLBODY with NUL bytes kept raw',
    bytes: frame('b', Buffer.from([0x00, 0x41, 0x00])),
    reply: { kind: 'replbody', chunk: Buffer.from([0x00, 0x41, 0x00]) },
  },
  {
    name: 'ADDRCPT',
    bytes: frame('+', cstr('<carol@example.org>')),
    reply: { kind: 'addrcpt', rcpt: b('<carol@example.org>') },
  },
  {
    name: 'ADDRCPT_PAR without args (§3.5 capture)',
    bytes: packet(hex('32 3c 63 40 64 3e 00')),
    reply: { kind: 'addrcpt_par', rcpt: b('<c@d>') },
  },
  {
    name: 'ADDRCPT_PAR with args',
    bytes: frame('2', cstr('<c@d>'), cstr('NOTIFY=NEVER ORCPT=rfc822;x@y')),
    reply: { kind: 'addrcpt_par', rcpt: b('<c@d>'), args: b('NOTIFY=NEVER ORCPT=rfc822;x@y') },
  },
  {
    name: 'DELRCPT',
    bytes: frame('-', cstr('<bob@example.net>')),
    reply: { kind: 'delrcpt', rcpt: b('<bob@example.net>') },
  },
  {
    name: 'CHGFROM with args (§3.5 capture)',
    bytes: packet(hex('65 3c 61 40 62 3e 00 42 4f 44 59 3d 38 42 49 54 4d 49 4d 45 00')),
    reply: { kind: 'chgfrom', sender: b('<a@b>'), args: b('BODY=8BITMIME') },
  },
  {
    name: 'CHGFROM without args (null sender)',
    bytes: frame('e', cstr('<>')),
    reply: { kind: 'chgfrom', sender: b('<>') },
  },
  {
    name: 'OPTNEG without symlist (§4.1)',
    bytes: OPTNEG_REPLY_ADDHDRS,
    reply: {
      kind: 'optneg',
      version: 6,
      actions: 0x1,
      protocol: 0,
      symlist: new Map(),
      symlistWarnings: [],
    },
  },
  {
    name: 'OPTNEG with symlist (§4.7 capture)',
    bytes: OPTNEG_REPLY_SYMLIST,
    reply: {
      kind: 'optneg',
      version: 6,
      actions: 0x101,
      protocol: 0x00100080,
      symlist: new Map([
        [0, ['j', '{daemon_name}']],
        [3, ['{rcpt_addr}']],
      ]),
      symlistWarnings: [],
    },
  },
  {
    name: 'OPTNEG with an empty symlist entry (send no macros at that stage)',
    bytes: frame('O', u32(6), u32(0x100), u32(0), u32(5), cstr('')),
    reply: {
      kind: 'optneg',
      version: 6,
      actions: 0x100,
      protocol: 0,
      symlist: new Map([[5, []]]),
      symlistWarnings: [],
    },
  },
]

/** OPTNEG whose symlist has an unknown stage 9 between two good entries (Postfix: skip it). */
export const OPTNEG_UNKNOWN_STAGE = frame(
  'O',
  u32(6),
  u32(0x100),
  u32(0),
  u32(1),
  cstr('{cipher}'),
  u32(9),
  cstr('{bogus}'),
  u32(6),
  cstr('i'),
)

/** The §9 capture, client side, in order (OPTNEG .. QUIT). */
export const WORKED_EXAMPLE_CLIENT: readonly Buffer[] = [
  OPTNEG_V6_DEFAULT,
  MACRO_CONNECT_J,
  CONNECT_INET,
  HELO_CLIENT,
  MAIL_SIZE,
  RCPT_BOB,
  DATA,
  HEADER_FROM,
  HEADER_SUBJECT,
  EOH,
  BODY_HELLO,
  BODYEOB,
  QUIT,
]

/** The §9 capture, milter side, in order (OPTNEG reply .. final CONTINUE). */
export const WORKED_EXAMPLE_MILTER: readonly Buffer[] = [
  OPTNEG_REPLY_ADDHDRS,
  CONTINUE, // CONNECT
  CONTINUE, // HELO
  CONTINUE, // MAIL
  CONTINUE, // RCPT
  CONTINUE, // DATA
  CONTINUE, // HEADER From
  CONTINUE, // HEADER Subject
  CONTINUE, // EOH
  CONTINUE, // BODY
  ADDHEADER_XTEST,
  CONTINUE, // final
]
