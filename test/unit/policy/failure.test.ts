/**
 * failureOf: a milter's failure as one decision (outcome, state left in,
 * log line, reported action), for each default_action and failure_scope.
 */
import assert from 'node:assert/strict'

import {
  MilterConnectError,
  MilterProtocolError,
  MilterStateError,
  MilterTimeoutError,
  MilterUnavailableError,
} from '../../../lib/errors'
import { HeaderEditError } from '../../../lib/message/headers'
import { asMilterError, failureOf } from '../../../lib/policy/failure'
import { REPLIES } from '../../../lib/policy/smtp-replies'
import { milterDef } from './defs'

const EP = 'inet:1@127.0.0.1'

describe('policy: failureOf', () => {
  it('tempfail: 451 4.7.1 for the message (failure_scope = message, the default)', () => {
    const f = failureOf(
      milterDef({ default_action: 'tempfail' }),
      new MilterTimeoutError('command', 2000, 'RCPT'),
      EP,
    )
    assert.deepEqual(f.outcome, {
      action: 'tempfail',
      reply: REPLIES.tempfail,
      milter: 'm',
      cause: 'failure',
    })
    assert.deepEqual(f.next, {
      kind: 'failed',
      outcome: f.outcome,
      quarantine: undefined,
      scope: 'message',
    })
    assert.equal(f.action, 'tempfail')
    assert.equal(f.error.code, 'MILTER_ERR_TIMEOUT')
    assert.equal(f.event?.level, 'error')
    assert.equal(f.event?.code, 'MILTER_ERR_TIMEOUT')
    assert.match(f.event?.message ?? '', /; endpoint=inet:1@127\.0\.0\.1; default_action=tempfail$/)
  })

  it('reject: 550 5.5.0; shutdown: 421 and always for the session', () => {
    const reject = failureOf(
      milterDef({ default_action: 'reject' }),
      new MilterConnectError('x'),
      EP,
    )
    assert.equal(reject.outcome.action, 'reject')
    assert.ok(reject.outcome.action === 'reject' && reject.outcome.reply === REPLIES.failReject)
    const shut = failureOf(
      milterDef({ default_action: 'shutdown' }),
      new MilterConnectError('x'),
      EP,
    )
    assert.ok(shut.outcome.action === 'shutdown' && shut.outcome.reply === REPLIES.failShutdown)
    assert.equal(shut.next?.kind === 'failed' && shut.next.scope, 'session')
  })

  it('accept: carry on; with failure_scope = session the milter is done for the connection', () => {
    const msg = failureOf(milterDef({ default_action: 'accept' }), new MilterConnectError('x'), EP)
    assert.deepEqual(msg.outcome, { action: 'continue' })
    assert.equal(msg.next?.kind, 'failed')
    const ses = failureOf(
      milterDef({ default_action: 'accept', failure_scope: 'session' }),
      new MilterConnectError('x'),
      EP,
    )
    assert.deepEqual(ses.next, { kind: 'done' })
  })

  it('quarantine: the message goes on, marked with the milter and the error code', () => {
    const f = failureOf(
      milterDef({ default_action: 'quarantine', failure_scope: 'session' }),
      new MilterProtocolError('bad'),
      EP,
    )
    assert.deepEqual(f.outcome, { action: 'continue' })
    assert.deepEqual(f.next, {
      kind: 'failed',
      outcome: { action: 'continue' },
      quarantine: 'm: milter failed (MILTER_ERR_PROTOCOL)',
      scope: 'session',
    })
  })

  it('a milter marked down is noted at info (the breaker logged it once)', () => {
    const f = failureOf(milterDef(), new MilterUnavailableError('down'), EP)
    assert.equal(f.event?.level, 'info')
  })

  it('a shadow milter: continue whatever its default_action, a warning, reported as none', () => {
    const f = failureOf(
      milterDef({ default_action: 'reject', mode: 'shadow' }),
      new MilterConnectError('refused'),
      EP,
    )
    assert.deepEqual(f.outcome, { action: 'continue' })
    assert.equal(f.action, 'none (shadow)')
    assert.equal(f.event?.level, 'warn')
    assert.match(f.event?.message ?? '', /refused; endpoint=.*; shadow: not enforced$/)
  })
})

describe('policy: asMilterError', () => {
  it('keeps a MilterError, makes an invalid edit a protocol error and anything else a state error', () => {
    const t = new MilterTimeoutError('content', 1, 'EOB')
    assert.equal(asMilterError('m', t), t)
    const edit = asMilterError('m', new HeaderEditError('bad header name'))
    assert.ok(edit instanceof MilterProtocolError)
    assert.match(edit.message, /^m: bad header name/)
    assert.ok(asMilterError('m', new TypeError('oops')) instanceof MilterStateError)
  })
})
