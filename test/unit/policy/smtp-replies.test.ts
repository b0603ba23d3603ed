/**
 * answerAt: every reply legal where it is given (RFC 5321 §4.3.2), and
 * reply_code = enhanced_only.
 */
import assert from 'node:assert/strict'

import { answerAt, REPLIES, type Outcome } from '../../../lib/policy/smtp-replies'
import type { Stage } from '../../../lib/policy/stage'

const verdict = (action: 'reject' | 'tempfail' | 'shutdown', code: number): Outcome => ({
  action,
  reply: {
    code,
    enhanced: `${String(code)[0]}.7.1`,
    lines: [{ enhanced: `${String(code)[0]}.7.1`, text: 'no' }],
  },
  milter: 'm',
  cause: 'verdict',
})
const failure = (action: 'reject' | 'tempfail' | 'shutdown'): Outcome => ({
  action,
  reply:
    action === 'reject'
      ? REPLIES.failReject
      : action === 'tempfail'
        ? REPLIES.tempfail
        : REPLIES.failShutdown,
  milter: 'm',
  cause: 'failure',
})

function code(o: Outcome): number | 'continue' {
  return o.action === 'continue' || o.action === 'discard' ? 'continue' : o.reply.code
}

/** RFC 5321 4.3.2: the codes each point may answer with (continue = 220/250). */
const LEGAL: Record<'connect' | 'helo', ReadonlyArray<number | 'continue'>> = {
  connect: ['continue', 421, 554],
  helo: ['continue', 421, 502, 504, 550],
}

describe('policy: answerAt', () => {
  const outcomes: Outcome[] = [
    verdict('reject', 550),
    verdict('reject', 554),
    verdict('reject', 553),
    verdict('tempfail', 451),
    verdict('tempfail', 450),
    verdict('shutdown', 421),
    failure('reject'),
    failure('tempfail'),
    failure('shutdown'),
  ]

  for (const stage of ['connect', 'helo'] as const) {
    for (const mode of ['milter', 'enhanced_only'] as const) {
      it(`${stage} (${mode}): only codes RFC 5321 allows there`, () => {
        for (const o of outcomes) {
          const c = code(answerAt(stage, o, mode))
          assert.ok(LEGAL[stage].includes(c), `${stage}: ${JSON.stringify(o)} -> ${c}`)
        }
      })
    }
  }

  it('a reject at CONNECT is a 554 greeting with the milter text; a tempfail greets 220', () => {
    const o = answerAt('connect', verdict('reject', 550), 'milter')
    assert.ok(o.action === 'reject')
    assert.equal(o.reply.code, 554)
    assert.deepEqual(o.reply.lines, [{ enhanced: '5.7.1', text: 'no' }])
    assert.deepEqual(answerAt('connect', verdict('tempfail', 451), 'milter'), {
      action: 'continue',
    })
  })

  it('failures at CONNECT or HELO greet (the chain gives them at MAIL); shutdown is 421 anywhere', () => {
    for (const stage of ['connect', 'helo'] as Stage[]) {
      assert.deepEqual(answerAt(stage, failure('reject'), 'milter'), { action: 'continue' })
      assert.deepEqual(answerAt(stage, failure('tempfail'), 'milter'), { action: 'continue' })
      assert.equal(code(answerAt(stage, failure('shutdown'), 'milter')), 421)
    }
  })

  it('later stages keep the milter code; enhanced_only gives 550/451 and keeps 421', () => {
    for (const stage of ['mail', 'rcpt', 'data', 'eom'] as Stage[]) {
      assert.equal(code(answerAt(stage, verdict('reject', 553), 'milter')), 553)
      assert.equal(code(answerAt(stage, verdict('reject', 553), 'enhanced_only')), 550)
      assert.equal(code(answerAt(stage, verdict('tempfail', 450), 'enhanced_only')), 451)
      assert.equal(code(answerAt(stage, verdict('shutdown', 421), 'enhanced_only')), 421)
    }
  })

  it('continue and discard pass unchanged', () => {
    const d: Outcome = { action: 'discard', milter: 'm' }
    assert.equal(answerAt('eom', d, 'milter'), d)
    assert.deepEqual(answerAt('connect', { action: 'continue' }, 'milter'), { action: 'continue' })
  })
})
