/**
 * The session's transition table: every state change is an event, legal
 * only where libmilter would accept what it stands for.
 */
import assert from 'node:assert/strict'

import {
  NEGOTIATED,
  next,
  transition,
  type Event,
  type SessionState,
  type State,
} from '../../../lib/session/state-table'

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

  it('a restored state is validated: only the state UNKNOWN was sent in, and one UNKNOWN is legal from', () => {
    assert.equal(transition('rcpt', { kind: 'restored', state: 'rcpt' }), 'rcpt')
    assert.equal(transition('rcpt', { kind: 'restored', state: 'ready' }), undefined)
    assert.equal(transition('body', { kind: 'restored', state: 'body' }), undefined)
    assert.equal(transition('negotiated', { kind: 'restored', state: 'negotiated' }), undefined)
  })

  it('failing is legal from every state, closed and failed included', () => {
    for (const s of ALL) assert.equal(transition(s, { kind: 'failed' }), 'failed', s)
  })
})

describe('session: qualified state (next)', () => {
  function run(events: Event[], start: SessionState = NEGOTIATED): SessionState {
    let s = start
    for (const e of events) {
      const to = next(s, e)
      assert.ok(to, `${e.kind} from ${s.at}`)
      s = to
    }
    return s
  }
  const toRcpt: Event[] = [
    { kind: 'continued', step: 'connect' },
    { kind: 'continued', step: 'mail' },
    { kind: 'continued', step: 'rcpt' },
  ]

  it('SKIP at a repeated step is remembered until the next step, an abort or the end of the message', () => {
    const skipped = run([...toRcpt, { kind: 'skipped', step: 'rcpt' }])
    assert.deepEqual(skipped, { at: 'rcpt', skipping: 'rcpt' })
    assert.deepEqual(run([{ kind: 'restored', state: 'rcpt' }], skipped), skipped)
    assert.deepEqual(run([{ kind: 'continued', step: 'data' }], skipped), { at: 'data' })
    assert.deepEqual(run([{ kind: 'reset' }], skipped), { at: 'ready' })
    assert.deepEqual(run([{ kind: 'messageEnded' }], skipped), { at: 'messageDone' })
  })

  it('SKIP at a step that does not repeat (MAIL, DATA, EOH) leaves nothing to skip', () => {
    assert.deepEqual(run([...toRcpt.slice(0, 1), { kind: 'skipped', step: 'mail' }]), {
      at: 'mail',
    })
  })

  it('QUIT_NC is possible only after a completed end of message, until the next MAIL or HELO', () => {
    const body: Event[] = [
      ...toRcpt,
      { kind: 'continued', step: 'data' },
      { kind: 'continued', step: 'eoh' },
      { kind: 'skipped', step: 'body' },
    ]
    assert.deepEqual(run(body), { at: 'body', skipping: 'body' })
    const done = run([...body, { kind: 'eomAnswered' }])
    assert.deepEqual(done, { at: 'ready', afterEob: true })
    assert.deepEqual(run([{ kind: 'restored', state: 'ready' }], done), done)
    // libmilter drops QUIT_NC after HELO (its HELO row has none, milter-protocol.md §5.3)
    assert.deepEqual(run([{ kind: 'continued', step: 'helo' }], done), { at: 'ready' })
    assert.deepEqual(run([{ kind: 'skipped', step: 'helo' }], done), { at: 'ready' })
    assert.deepEqual(run([{ kind: 'continued', step: 'mail' }], done), { at: 'mail' })
    assert.deepEqual(run([{ kind: 'quitNc' }], done), NEGOTIATED)
    assert.deepEqual(run([{ kind: 'failed' }], done), { at: 'failed' })
  })

  it('an illegal event is refused with the qualifiers as they were', () => {
    assert.equal(next({ at: 'ready', afterEob: true }, { kind: 'eomAnswered' }), undefined)
  })
})
