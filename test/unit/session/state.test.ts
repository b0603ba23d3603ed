/**
 * The session's transition table: every state change is an event, legal
 * only where libmilter would accept what it stands for.
 */
import assert from 'node:assert/strict'

import { transition, type Event, type State } from '../../../lib/session/state'

const ALL: State[] = [
  'negotiated',
  'ready',
  'mail',
  'rcpt',
  'data',
  'header',
  'eoh',
  'body',
  'messageDone',
  'connectionDone',
  'failed',
  'closed',
]

function from(e: Event): Array<[State, State | undefined]> {
  return ALL.map((s) => [s, transition(s, e)])
}

describe('session: state transitions', () => {
  it('a message runs negotiated -> ready -> mail -> rcpt -> data -> header -> eoh -> body -> ready', () => {
    let s: State = 'negotiated'
    const steps = [
      'connect',
      'helo',
      'mail',
      'rcpt',
      'rcpt',
      'data',
      'header',
      'eoh',
      'body',
    ] as const
    const seen: State[] = []
    for (const step of steps) {
      const to = transition(s, { kind: 'continued', step })
      assert.ok(to, `${step} from ${s}`)
      s = to
      seen.push(s)
    }
    assert.deepEqual(seen, [
      'ready',
      'ready',
      'mail',
      'rcpt',
      'rcpt',
      'data',
      'header',
      'eoh',
      'body',
    ])
    assert.equal(transition(s, { kind: 'eomAnswered' }), 'ready')
  })

  it('steps out of order are refused (libmilter would drop them and the client hang)', () => {
    assert.equal(transition('negotiated', { kind: 'continued', step: 'mail' }), undefined)
    assert.equal(transition('ready', { kind: 'continued', step: 'rcpt' }), undefined)
    assert.equal(transition('mail', { kind: 'continued', step: 'data' }), undefined)
    assert.equal(transition('rcpt', { kind: 'continued', step: 'body' }), undefined)
    assert.equal(transition('ready', { kind: 'eomAnswered' }), undefined)
  })

  it('failed and closed are final (a milter that ended the connection stays answered)', () => {
    for (const e of [
      { kind: 'reset' },
      { kind: 'continued', step: 'helo' },
      { kind: 'quitNc' },
      { kind: 'eomAnswered' },
    ] as Event[]) {
      assert.equal(transition('failed', e), undefined)
      assert.equal(transition('closed', e), undefined)
    }
    assert.equal(transition('connectionDone', { kind: 'closed' }), 'connectionDone')
    assert.equal(transition('ready', { kind: 'closed' }), 'closed')
  })

  it('messageEnded from inside a message or at MAIL; connectionEnded only at CONNECT/HELO', () => {
    const ended = from({ kind: 'messageEnded' }).filter(([, to]) => to === 'messageDone')
    assert.deepEqual(
      ended.map(([s]) => s),
      ['ready', 'mail', 'rcpt', 'data', 'header', 'eoh', 'body', 'messageDone'],
    )
    const conn = from({ kind: 'connectionEnded' }).filter(([, to]) => to === 'connectionDone')
    assert.deepEqual(
      conn.map(([s]) => s),
      ['negotiated', 'ready'],
    )
  })

  it('QUIT_NC only between messages; every state may fail', () => {
    assert.deepEqual(
      from({ kind: 'quitNc' })
        .filter(([, to]) => to === 'negotiated')
        .map(([s]) => s),
      ['ready', 'messageDone'],
    )
    for (const s of ALL) assert.ok(transition(s, { kind: 'failed' }) !== undefined, s)
  })
})
