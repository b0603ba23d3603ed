/**
 * Packets as data: decoded names and fields both ways, the exchange grouped
 * by stage (macros before the command, progress, modifications, the final
 * reply), and the one-line text form.
 */
import assert from 'node:assert/strict'

import {
  encodeBare,
  encodeBody,
  encodeConnect,
  encodeHeader,
  encodeHelo,
  encodeMacro,
  encodeOptneg,
  encodeRcpt,
} from '../../../lib/protocol/commands'
import { Cmd, MacroStage } from '../../../lib/protocol/constants'
import type { Frame } from '../../../lib/protocol/frame'
import {
  describePacket,
  formatFields,
  formatPacket,
  packetReport,
  packetText,
  stagesFromPackets,
} from '../../../lib/debug/packet-trace'
import { encodeReply } from '../../../lib/protocol/replies'

/** A whole packet (length, code, data) -> the frame the session observes. */
function frame(packet: Buffer): Frame {
  return { code: packet.readUInt8(4), data: packet.subarray(5) }
}
const send = (p: Buffer) => ({ dir: 'send' as const, frame: frame(p) })
const recv = (p: Buffer) => ({ dir: 'recv' as const, frame: frame(p) })

describe('packet-report', () => {
  describe('packetReport', () => {
    it('a command: its SMFIC name and decoded fields, then the hex', () => {
      const p = packetReport('send', frame(encodeRcpt(['<bob@example.com>', 'NOTIFY=NEVER'])))
      assert.deepEqual(p, {
        dir: 'send',
        name: 'SMFIC_RCPT',
        fields: { args: ['<bob@example.com>', 'NOTIFY=NEVER'] },
        hex: Buffer.from('R<bob@example.com>\0NOTIFY=NEVER\0').toString('hex'),
      })
    })

    it('the answer to OPTNEG is named as a reply, with its masks and requested macros', () => {
      const p = packetReport(
        'recv',
        frame(
          encodeReply({
            kind: 'optneg',
            version: 6,
            actions: 0x1,
            protocol: 0x2,
            symlist: new Map([[MacroStage.CONNECT, ['j']]]),
            symlistWarnings: [],
          }),
        ),
      )
      assert.equal(p.name, 'SMFIC_OPTNEG reply')
      assert.deepEqual(p.fields, {
        version: 6,
        actions: '0x1',
        actionNames: ['ADDHDRS'],
        protocol: '0x2',
        protocolNames: ['NOHELO'],
        macrosRequested: { connect: ['j'] },
      })
      assert.equal(packetReport('send', frame(encodeOptneg(6, 0x1ff, 0))).name, 'SMFIC_OPTNEG')
    })

    it('modifications and reply codes both ways as fields', () => {
      const chg = encodeReply({
        kind: 'chgheader',
        index: 2,
        name: Buffer.from('Subject'),
        value: Buffer.from(''),
      })
      assert.deepEqual(packetReport('recv', frame(chg)).fields, {
        index: 2,
        name: 'Subject',
        value: '',
      })
      const body = encodeReply({ kind: 'replbody', chunk: Buffer.from('new body\r\n') })
      assert.deepEqual(packetReport('recv', frame(body)).fields, {
        bytes: 10,
        preview: 'new body\r\n',
      })
      const y = encodeReply({ kind: 'replycode', text: Buffer.from('550 5.7.1 no') })
      assert.deepEqual(packetReport('recv', frame(y)), {
        dir: 'recv',
        name: 'SMFIR_REPLYCODE',
        fields: { text: '550 5.7.1 no' },
        hex: Buffer.from('y550 5.7.1 no\0').toString('hex'),
      })
    })

    it('a body chunk: its size and its first 64 bytes, not the rest', () => {
      const chunk = Buffer.from('A'.repeat(60) + 'BCDE' + 'F'.repeat(1000))
      const p = packetReport('send', frame(encodeBody(chunk)))
      assert.deepEqual(p.fields, { bytes: 1064, preview: 'A'.repeat(60) + 'BCDE' })
      // an empty REPLBODY (the milter empties the body): no preview
      const empty = encodeReply({ kind: 'replbody', chunk: Buffer.alloc(0) })
      assert.deepEqual(packetReport('recv', frame(empty)).fields, { bytes: 0 })
      // the text escapes line ends and control bytes, so a body stays on one line
      assert.equal(
        packetText(describePacket('send', frame(encodeBody(Buffer.from('Hi\r\n\x00\tthere'))))),
        'SMFIC_BODY bytes=11 preview="Hi\\r\\n\\u0000\\tthere"',
      )
    })

    it('a packet that does not decode keeps its name and hex, and says why', () => {
      const p = packetReport('recv', { code: 0x68, data: Buffer.from('no-nul') })
      assert.equal(p.name, 'SMFIR_ADDHEADER')
      const error = p.fields['error']
      assert.ok(typeof error === 'string', 'an error text')
      assert.match(error, /NUL|missing|short/i)
      assert.equal(p.hex, Buffer.from('hno-nul').toString('hex'))
    })
  })

  describe('stagesFromPackets', () => {
    it('groups each command with the macros before it and its reply; OPTNEG is no stage', () => {
      const stages = stagesFromPackets([
        send(encodeOptneg(6, 0x1ff, 0)),
        recv(
          encodeReply({
            kind: 'optneg',
            version: 6,
            actions: 0x1ff,
            protocol: 0,
            symlist: new Map(),
            symlistWarnings: [],
          }),
        ),
        send(encodeMacro(MacroStage.CONNECT, [['{client_addr}', '192.0.2.1']])),
        send(encodeConnect('mx.example', { family: 'inet', address: '192.0.2.1', port: 25 })),
        recv(encodeReply({ kind: 'continue' })),
        send(encodeHelo('mx.example')),
        recv(
          encodeReply({
            kind: 'replycode',
            text: Buffer.from('451-4.7.1 first\r\n451 4.7.1 second'),
          }),
        ),
      ])
      assert.deepEqual(stages, [
        {
          stage: 'connect',
          command: 'SMFIC_CONNECT',
          fields: { hostname: 'mx.example', family: 'inet', port: 25, address: '192.0.2.1' },
          macros: { '{client_addr}': '192.0.2.1' },
          progress: 0,
          reply: { name: 'SMFIR_CONTINUE', kind: 'continue' },
        },
        {
          stage: 'helo',
          command: 'SMFIC_HELO',
          fields: { helo: 'mx.example' },
          macros: {},
          progress: 0,
          reply: {
            name: 'SMFIR_REPLYCODE',
            kind: 'replycode',
            text: '451-4.7.1 first\r\n451 4.7.1 second',
            code: 451,
            enhanced: '4.7.1',
            lines: [
              { enhanced: '4.7.1', text: 'first' },
              { enhanced: '4.7.1', text: 'second' },
            ],
          },
        },
      ])
    })

    it('an unanswered command (SMFIP_NR_*) has no reply; progress and modifications are counted', () => {
      const stages = stagesFromPackets([
        send(encodeHeader('Subject', 'x')), // NR_HDR: no reply
        send(encodeBare(Cmd.EOH)),
        recv(encodeReply({ kind: 'continue' })),
        send(encodeBare(Cmd.BODYEOB)),
        recv(encodeReply({ kind: 'progress' })),
        recv(encodeReply({ kind: 'progress' })),
        recv(encodeReply({ kind: 'addheader', name: Buffer.from('X-A'), value: Buffer.from('1') })),
        recv(encodeReply({ kind: 'quarantine', reason: Buffer.from('odd') })),
        recv(encodeReply({ kind: 'accept' })),
        send(encodeBare(Cmd.QUIT)),
      ])
      assert.deepEqual(
        stages.map((s) => [s.stage, s.reply?.kind, s.progress, s.modifications]),
        [
          ['header', undefined, 0, undefined],
          ['eoh', 'continue', 0, undefined],
          [
            'eom',
            'accept',
            2,
            [
              { kind: 'addheader', name: 'X-A', value: '1' },
              { kind: 'quarantine', reason: 'odd' },
            ],
          ],
        ],
      )
    })
  })

  describe('text', () => {
    it('plain tokens bare, anything else as JSON', () => {
      assert.equal(
        formatFields({ helo: 'mx.example', value: 'two words', port: 25, args: ['<a@b>'] }),
        'helo=mx.example value="two words" port=25 args=["<a@b>"]',
      )
    })
    it('a packet without the hex: name and fields (the plugin debug trace)', () => {
      assert.equal(
        packetText(
          describePacket('send', frame(encodeMacro(MacroStage.ENVFROM, [['{mail_addr}', 'a@b']]))),
        ),
        'SMFIC_MACRO stage=SMFIC_MAIL macros={"{mail_addr}":"a@b"}',
      )
      assert.equal(
        packetText(describePacket('recv', frame(encodeReply({ kind: 'continue' })))),
        'SMFIR_CONTINUE',
      )
    })
    it('one line: direction, name, fields, hex', () => {
      assert.equal(
        formatPacket(packetReport('send', frame(encodeHelo('mx')))),
        `>> SMFIC_HELO helo=mx hex=${Buffer.from('Hmx\0').toString('hex')}`,
      )
      assert.equal(
        formatPacket(packetReport('recv', frame(encodeReply({ kind: 'continue' })))),
        '<< SMFIR_CONTINUE hex=63',
      )
    })
  })
})
