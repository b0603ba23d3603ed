/**
 * Chain outcomes -> Haraka hook results and DSN objects (Haraka sends an
 * object whose constructor is named DSN verbatim: code and reply lines).
 */
import assert from 'node:assert/strict'

import {
  DSN,
  hookCode,
  respond,
  toDsn,
  toHookResult,
  type HookResult,
} from '../../../lib/adapter/reply'
import { noteDiscard, type TransactionState } from '../../../lib/adapter/state'
import type { Outcome } from '../../../lib/policy/chain'
import type { SmtpReply } from '../../../lib/protocol/replycode'

const R550: SmtpReply = {
  code: 550,
  enhanced: '5.7.1',
  lines: [{ enhanced: '5.7.1', text: 'Command rejected' }],
}

function msgOf(r: HookResult): DSN {
  assert.notEqual(r.kind, 'cont')
  assert.ok(r.kind !== 'cont')
  return r.msg
}

describe('adapter: reply', () => {
  describe('toDsn', () => {
    it('a class named DSN with the code and one string per line', () => {
      const d = toDsn(R550)
      assert.ok(d instanceof DSN)
      assert.equal(d.constructor.name, 'DSN')
      assert.equal(d.code, 550)
      assert.deepEqual(d.reply, ['5.7.1 Command rejected'])
    })

    it('multi-line replies keep every line and its own enhanced code', () => {
      const d = toDsn({
        code: 554,
        enhanced: '5.7.1',
        lines: [
          { enhanced: '5.7.1', text: 'first line' },
          { text: 'no code here' },
          { enhanced: '5.7.0', text: 'third' },
        ],
      })
      assert.equal(d.code, 554)
      assert.deepEqual(d.reply, ['5.7.1 first line', 'no code here', '5.7.0 third'])
    })

    it('a line with only an enhanced code, or nothing at all', () => {
      assert.deepEqual(toDsn({ code: 450, lines: [{ enhanced: '4.2.0', text: '' }] }).reply, [
        '4.2.0',
      ])
      assert.deepEqual(toDsn({ code: 450, lines: [] }).reply, [''])
    })

    it('sends the code as given (answerAt decided it)', () => {
      for (const code of [421, 450, 451, 452, 550, 551, 553, 554])
        assert.equal(toDsn({ code, lines: [{ text: 'x' }] }).code, code)
    })

    it('toString() is the reply as sent, for Haraka log lines (not "[object Object]")', () => {
      assert.equal(String(toDsn(R550)), '550 5.7.1 Command rejected')
      const multi = toDsn({
        code: 554,
        lines: [{ enhanced: '5.7.1', text: 'first' }, { text: 'second' }],
      })
      assert.equal(multi.toString(), '554-5.7.1 first / 554 second')
      assert.equal(String(toDsn({ code: 450, lines: [] })), '450')
    })
  })

  describe('toHookResult', () => {
    it('continue and discard -> cont (discard is a 250 handled at queue)', () => {
      assert.deepEqual(toHookResult({ action: 'continue' }), { kind: 'cont' })
      assert.deepEqual(toHookResult({ action: 'discard', milter: 'a' }), { kind: 'cont' })
    })

    const cases: Array<[Outcome['action'], HookResult['kind']]> = [
      ['reject', 'deny'],
      ['tempfail', 'denysoft'],
      ['shutdown', 'denysoftdisconnect'],
    ]
    for (const [action, kind] of cases) {
      it(`${action} -> ${kind} with the reply as a DSN`, () => {
        const reply: SmtpReply = {
          code: action === 'reject' ? 553 : action === 'shutdown' ? 421 : 450,
          lines: [
            { enhanced: action === 'reject' ? '5.1.3' : '4.7.0', text: 'line 1' },
            { text: 'line 2' },
          ],
        }
        const o = { action, reply, milter: 'm', cause: 'verdict' } as Outcome
        const r = toHookResult(o)
        assert.equal(r.kind, kind)
        const d = msgOf(r)
        assert.equal(d.constructor.name, 'DSN')
        assert.equal(d.code, reply.code)
        assert.equal(d.reply.length, 2)
        assert.equal(d.reply[1], 'line 2')
      })
    }
  })

  describe('respond', () => {
    it('continue and discard: next() with nothing; a reject: DENY and the DSN', () => {
      const calls: unknown[][] = []
      const next = (...args: unknown[]): void => void calls.push(args)
      respond(next, { action: 'continue' })
      respond(next, { action: 'discard', milter: 'm' })
      respond(next, { action: 'reject', reply: R550, milter: 'm', cause: 'verdict' })
      assert.deepEqual(calls.slice(0, 2), [[], []])
      assert.equal(calls[2]?.[0], hookCode('deny'))
      assert.ok(calls[2]?.[1] instanceof DSN)
      assert.equal(String(calls[2]?.[1]), '550 5.7.1 Command rejected')
    })
  })

  describe('noteDiscard', () => {
    it('the first discard of a transaction is the one taken at queue', () => {
      const st: TransactionState = { mailArgs: {} }
      noteDiscard(st, { action: 'continue' })
      assert.equal(st.disposition, undefined)
      noteDiscard(st, { action: 'discard', milter: 'a' })
      noteDiscard(st, { action: 'discard', milter: 'b' })
      assert.deepEqual(st.disposition, { kind: 'discard', milter: 'a' })
    })
  })
})
