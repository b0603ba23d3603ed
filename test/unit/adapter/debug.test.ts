/**
 * Debug lines: the step line (verdict, reply, failure code, ms), the packet
 * trace (macros with names and values, MAIL arguments, a body cut to its
 * first 64 bytes), and the level read at every line so that a change (a
 * reload) applies to an open connection at once.
 */
import assert from 'node:assert/strict'

import { ConnectionDebug, stepLine, traceLine } from '../../../lib/adapter/debug'
import type { DebugLevel } from '../../../lib/config'
import type { Step, StepResult } from '../../../lib/policy/chain'
import { encodeBody, encodeMacro, encodeMail } from '../../../lib/protocol/commands'
import { MacroStage } from '../../../lib/protocol/constants'
import type { Frame } from '../../../lib/protocol/frame'
import { encodeReply } from '../../../lib/protocol/replies'

/** A whole packet (length, code, data) -> the frame the session observes. */
function frame(packet: Buffer): Frame {
  return { code: packet.readUInt8(4), data: packet.subarray(5) }
}

describe('adapter: debug lines', () => {
  it('a step: milter, endpoint, stage, verdict, ms waited', () => {
    assert.equal(
      stepLine({
        milter: 'spam',
        endpoint: 'inet:11332@127.0.0.1',
        stage: 'mail',
        result: { kind: 'continue' },
        ms: 2.345,
      }),
      'milter debug spam (inet:11332@127.0.0.1) mail: continue 2.3 ms',
    )
    assert.equal(
      stepLine({
        milter: 'spam',
        endpoint: 'unix:/run/s.sock',
        stage: 'eom',
        result: {
          kind: 'replycode',
          reply: { code: 550, enhanced: '5.7.1', lines: [{ enhanced: '5.7.1', text: 'spam' }] },
        },
        ms: 40,
      }),
      'milter debug spam (unix:/run/s.sock) eom: replycode 550 5.7.1 spam 40.0 ms',
    )
    // a failure names its code; a milter that could not be opened waited for nothing
    assert.equal(
      stepLine({
        milter: 'spam',
        endpoint: 'inet:1@127.0.0.1',
        stage: 'connect',
        result: { kind: 'failed', code: 'E_X' },
        ms: undefined,
      }),
      'milter debug spam (inet:1@127.0.0.1) connect: failed E_X',
    )
  })

  it('the trace: macros with their names and values, MAIL arguments, replies', () => {
    const macros = encodeMacro(MacroStage.ENVFROM, [
      ['{mail_addr}', 'a@example.com'],
      ['i', 'ABC123'],
    ])
    assert.equal(
      traceLine('spam', 'send', frame(macros)),
      'milter trace spam > SMFIC_MACRO stage=SMFIC_MAIL macros={"{mail_addr}":"a@example.com","i":"ABC123"}',
    )
    assert.equal(
      traceLine('spam', 'send', frame(encodeMail(['<a@example.com>', 'SIZE=123']))),
      'milter trace spam > SMFIC_MAIL args=["<a@example.com>","SIZE=123"]',
    )
    assert.equal(
      traceLine('spam', 'recv', frame(encodeReply({ kind: 'continue' }))),
      'milter trace spam < SMFIR_CONTINUE',
    )
  })

  it('a body chunk: its size, and only its first 64 bytes, escaped on one line', () => {
    const body = Buffer.from('line one\r\n' + 'x'.repeat(100) + 'SECRET-TAIL\r\n')
    const line = traceLine('spam', 'send', frame(encodeBody(body)))
    assert.equal(
      line,
      `milter trace spam > SMFIC_BODY bytes=${body.length} preview="line one\\r\\n${'x'.repeat(54)}"`,
    )
    assert.ok(!line.includes('SECRET-TAIL'))
    assert.ok(!line.includes('\n'))
  })

  describe('ConnectionDebug', () => {
    function setup(start: DebugLevel) {
      let level = start
      const info: string[] = []
      const warn: string[] = []
      const dbg = new ConnectionDebug(() => level, {
        info: (t) => info.push(t),
        warn: (t) => warn.push(t),
      })
      return { dbg, info, warn, set: (l: DebugLevel) => (level = l) }
    }
    const mail = frame(encodeMail(['<a@example.com>']))
    const step = (
      result: StepResult,
      ms: number,
      endpoint = 'inet:1@127.0.0.1, inet:2@127.0.0.1',
    ): Step => ({
      milter: 'spam',
      endpoint,
      stage: 'mail',
      result,
      ms,
    })

    it('the level in force at each line: 0 nothing, 1 steps, 2 steps and packets', () => {
      const { dbg, info, set } = setup(0)
      const obs = dbg.observer('spam')
      obs.trace?.('send', mail)
      dbg.step(step({ kind: 'continue' }, 1))
      assert.deepEqual(info, [])
      set(1) // a reload, with the observer already attached
      obs.trace?.('send', mail)
      dbg.step(step({ kind: 'continue' }, 1))
      assert.deepEqual(info, [
        'milter debug spam (inet:1@127.0.0.1, inet:2@127.0.0.1) mail: continue 1.0 ms',
      ])
      set(2)
      obs.trace?.('send', mail)
      dbg.step(step({ kind: 'reject' }, 3, 'inet:2@127.0.0.1'))
      assert.deepEqual(info.slice(1), [
        'milter trace spam > SMFIC_MAIL args=["<a@example.com>"]',
        'milter debug spam (inet:2@127.0.0.1) mail: reject 3.0 ms',
      ])
      set(0)
      obs.trace?.('send', mail)
      dbg.step(step({ kind: 'continue' }, 1))
      assert.equal(info.length, 3)
    })

    it('tracing() says whether packets are wanted, at the level in force (2 and up)', () => {
      const { dbg, set } = setup(0)
      const obs = dbg.observer('spam')
      assert.equal(obs.tracing?.(), false)
      set(1)
      assert.equal(obs.tracing?.(), false)
      set(2)
      assert.equal(obs.tracing?.(), true)
    })

    it('session warnings go to the log whatever the level', () => {
      const { dbg, warn } = setup(0)
      dbg.observer('spam').warn?.('spam: symlist names an unknown stage')
      assert.deepEqual(warn, ['spam: symlist names an unknown stage'])
    })
  })
})
