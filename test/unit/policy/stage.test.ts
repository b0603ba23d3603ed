/** The Stage list and the tables keyed by it. */
import assert from 'node:assert/strict'

import { outcomeOf } from '../../../lib/policy/verdicts'
import { isConnectionStage, SCOPE, STAGES } from '../../../lib/policy/stage'

describe('policy: stages', () => {
  it('every stage has a scope, and only the listed stages', () => {
    assert.deepEqual(Object.keys(SCOPE).sort(), [...STAGES].sort())
    assert.deepEqual(
      STAGES.filter((s) => isConnectionStage(s)),
      ['connect', 'helo'],
    )
  })

  it('a reject without text: 554 at CONNECT and end of message, 550 elsewhere', () => {
    const codes = STAGES.map((s) => {
      const o = outcomeOf(s, { kind: 'reject' }, 'm')
      return o.action === 'reject' ? `${s}:${o.reply.code}` : `${s}:${o.action}`
    })
    assert.deepEqual(codes, [
      'connect:554',
      'helo:550',
      'mail:550',
      'rcpt:550',
      'data:550',
      'eom:554',
      'unknown:550',
      'abort:550',
    ])
  })
})
