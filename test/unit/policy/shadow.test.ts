/**
 * Shadow mode: what a shadow milter's verdicts, failures and edits do (log
 * lines, the state it is left in), never an outcome other than continue.
 */
import assert from 'node:assert/strict'

import { MilterConnectError } from '../../../lib/errors'
import { STAGES } from '../../../lib/policy/stage'
import { outcomeOf, verdictEffect } from '../../../lib/policy/verdicts'
import { enforced, shadowEdits, shadowFailure, shadowVerdict } from '../../../lib/policy/shadow'
import type { Stage } from '../../../lib/policy/stage'
import type { Verdict } from '../../../lib/session/types'
import { milterDef } from './defs'

const at = (stage: Stage, v: Verdict) => shadowVerdict(stage, v, outcomeOf(stage, v, 'm'))

describe('policy: shadow mode', () => {
  it('enforced: only mode = shadow is not', () => {
    assert.equal(enforced(milterDef()), true)
    assert.equal(enforced(milterDef({ mode: 'enforce' })), true)
    assert.equal(enforced(milterDef({ mode: 'shadow' })), false)
  })

  it('continue and skip: nothing to log, nothing changes', () => {
    assert.deepEqual(at('rcpt', { kind: 'continue' }), { outcome: { action: 'continue' } })
    assert.deepEqual(at('eom', { kind: 'skip' }), { outcome: { action: 'continue' } })
  })

  it('a reject at RCPT: the reply it would have given, for the message only', () => {
    const fx = at('rcpt', { kind: 'reject' })
    assert.deepEqual(fx.outcome, { action: 'continue' })
    assert.equal(fx.event?.level, 'notice')
    assert.equal(
      fx.event?.message,
      'shadow: would reject with 550 5.7.1 Command rejected; not enforced',
    )
    assert.equal(fx.next, undefined)
  })

  it('a multi-line reply code is logged line by line', () => {
    const fx = at('mail', {
      kind: 'replycode',
      reply: {
        code: 451,
        enhanced: '4.7.1',
        lines: [{ enhanced: '4.7.1', text: 'greylisted' }, { text: 'come back later' }],
      },
    })
    assert.equal(
      fx.event?.message,
      'shadow: would tempfail with 451 4.7.1 greylisted / come back later; not enforced',
    )
  })

  it('a verdict at CONNECT/HELO, or SHUTDOWN anywhere, ends its part in the connection', () => {
    assert.deepEqual(at('connect', { kind: 'reject' }).next, { kind: 'done' })
    assert.deepEqual(at('helo', { kind: 'accept' }).next, { kind: 'done' })
    assert.equal(
      at('helo', { kind: 'discard' }).event?.message,
      'shadow: would discard (no effect here); not enforced',
    )
    assert.deepEqual(at('rcpt', { kind: 'shutdown' }).next, { kind: 'done' })
    assert.equal(
      at('eom', { kind: 'discard' }).event?.message,
      'shadow: would discard; not enforced',
    )
    assert.equal(at('eom', { kind: 'accept' }).next, undefined)
  })

  it('a failure: a warning; failure_scope decides whether it is back for the next message', () => {
    const msg = shadowFailure(
      milterDef({ mode: 'shadow' }),
      new MilterConnectError('refused'),
      'endpoint=x',
    )
    assert.deepEqual(msg.outcome, { action: 'continue' })
    assert.equal(msg.event?.message, 'refused; endpoint=x; shadow: not enforced')
    assert.equal(msg.event?.level, 'warn')
    assert.equal(msg.next?.kind === 'failed' && msg.next.scope, 'message')
    const ses = shadowFailure(
      milterDef({ mode: 'shadow', failure_scope: 'session' }),
      new MilterConnectError('refused'),
      'endpoint=x',
    )
    assert.deepEqual(ses.next, { kind: 'done' })
  })

  it('edits: counted by kind, with a body replacement and a quarantine', () => {
    assert.equal(shadowEdits(undefined, undefined), undefined)
    assert.equal(
      shadowEdits(
        {
          modifications: [
            { kind: 'addheader', name: Buffer.from('X-A'), value: Buffer.from('1') },
            { kind: 'addheader', name: Buffer.from('X-B'), value: Buffer.from('2') },
            { kind: 'delrcpt', rcpt: Buffer.from('<a@b>') },
          ],
          bodyReplaced: true,
          milter: 'm',
          count: 3,
        },
        'spam',
      ),
      'shadow: would edit addheader=2 delrcpt=1 replbody=1 quarantine (spam); not applied',
    )
  })

  it('never decides: every verdict at every stage is a continue for the chain', () => {
    const def = milterDef({ mode: 'shadow', default_action: 'reject' })
    const verdicts: Verdict[] = [
      { kind: 'accept' },
      { kind: 'reject' },
      { kind: 'tempfail' },
      { kind: 'discard' },
      { kind: 'shutdown' },
      { kind: 'conn_fail' },
      { kind: 'replycode', reply: { code: 421, lines: [{ text: 'bye' }] } },
    ]
    for (const stage of STAGES)
      for (const v of verdicts)
        assert.deepEqual(verdictEffect(def, stage, v, outcomeOf(stage, v, 'm')).outcome, {
          action: 'continue',
        })
  })
})
