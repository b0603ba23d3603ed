import assert from 'node:assert/strict'

import {
  cleanReason,
  describeModification,
  sortModifications,
} from '../../../lib/message/modifications'
import type { Modification } from '../../../lib/protocol/replies'

const b = (s: string): Buffer => Buffer.from(s, 'utf8')

describe('sortModifications', () => {
  it('splits header and envelope edits, keeping the order within each', () => {
    const mods: Modification[] = [
      { kind: 'addheader', name: b('X-A'), value: b('1') },
      { kind: 'addrcpt', rcpt: b('<n@o>') },
      { kind: 'chgheader', index: 2, name: b('X-A'), value: b('') },
      { kind: 'delrcpt', rcpt: b('<r@y>') },
      { kind: 'insheader', index: 0, name: b('X-B'), value: b('é') },
      { kind: 'addrcpt_par', rcpt: b('<p@q>'), args: b('NOTIFY=NEVER') },
      { kind: 'addrcpt_par', rcpt: b('<s@t>') },
      { kind: 'chgfrom', sender: b('<f@g>'), args: b('BODY=8BITMIME') },
      { kind: 'chgfrom', sender: b('<>') },
      { kind: 'replbody', chunk: b('ignored') },
    ]
    assert.deepStrictEqual(sortModifications(mods), {
      headerEdits: [
        { kind: 'addheader', name: 'X-A', value: '1' },
        { kind: 'chgheader', index: 2, name: 'X-A', value: '' },
        { kind: 'insheader', index: 0, name: 'X-B', value: 'é' },
      ],
      envelopeEdits: [
        { kind: 'addrcpt', rcpt: '<n@o>' },
        { kind: 'delrcpt', rcpt: '<r@y>' },
        { kind: 'addrcpt', rcpt: '<p@q>', args: 'NOTIFY=NEVER' },
        { kind: 'addrcpt', rcpt: '<s@t>' },
        { kind: 'chgfrom', sender: '<f@g>', args: 'BODY=8BITMIME' },
        { kind: 'chgfrom', sender: '<>' },
      ],
    })
  })

  it('keeps the last QUARANTINE reason, on one line', () => {
    const out = sortModifications([
      { kind: 'quarantine', reason: b('first') },
      { kind: 'quarantine', reason: b('spam\r\nX-Injected: yes') },
    ])
    assert.equal(out.quarantine, 'spam X-Injected: yes')
  })
})

describe('cleanReason', () => {
  it('strips CR, LF and other control characters', () => {
    assert.equal(cleanReason(b('a\r\nb\tc\0d')), 'a b c d')
  })

  it('limits the reason to 200 characters', () => {
    assert.equal(cleanReason(b('x'.repeat(500))).length, 200)
  })

  it('gives a default for an empty reason', () => {
    assert.ok(cleanReason(b('\r\n')).length > 0)
  })
})

describe('describeModification', () => {
  it('says delete for a CHGHEADER with an empty value and change otherwise', () => {
    assert.match(
      describeModification({ kind: 'chgheader', index: 1, name: b('Subject'), value: b('') }),
      /^delete header Subject #1/,
    )
    assert.match(
      describeModification({ kind: 'chgheader', index: 1, name: b('Subject'), value: b('x') }),
      /^change header Subject #1/,
    )
  })

  it('gives the size of a body chunk', () => {
    assert.match(describeModification({ kind: 'replbody', chunk: Buffer.alloc(7) }), /7 bytes/)
  })
})
