/**
 * Replay: what a milter joining late is told again, in order, with the
 * macros each step had, and when a refusal ends the replay.
 */
import assert from 'node:assert/strict'

import { Replay, replaySteps, type ReplayStep } from '../../../lib/policy/replay'
import type { Outcome } from '../../../lib/policy/smtp-replies'
import type { MacroLookup } from '../../../lib/session/macros'
import type { MilterSession } from '../../../lib/session/session'
import type { Verdict } from '../../../lib/session/types'

/** A session that records each call with its first argument and the macro `{m}`. */
function recorder(): { session: MilterSession; calls: string[] } {
  const calls: string[] = []
  const rec =
    (name: string) =>
    (first: unknown, ...rest: unknown[]): Promise<Verdict> => {
      const macros = rest.find((r) => typeof r === 'function') as MacroLookup | undefined
      const arg = Array.isArray(first) ? first.join(' ') : String(first)
      calls.push(`${name} ${arg} ${String(macros?.('{m}') ?? '-')}`)
      return Promise.resolve({ kind: 'continue' })
    }
  const session = {
    connect: rec('connect'),
    helo: rec('helo'),
    mail: rec('mail'),
    rcpt: rec('rcpt'),
  } as unknown as MilterSession
  return { session, calls }
}

const m =
  (v: string): MacroLookup =>
  (n) =>
    n === '{m}' ? v : undefined

async function runAll(steps: readonly ReplayStep[], session: MilterSession): Promise<void> {
  for (const s of steps) await s.run(session)
}

const REFUSED: Outcome = {
  action: 'reject',
  reply: { code: 550, lines: [{ text: 'no' }] },
  milter: 'm',
  cause: 'verdict',
}

describe('policy: Replay', () => {
  it('client: CONNECT then the last HELO, with their macros', async () => {
    const r = new Replay()
    r.connect('client.example', { family: 'inet', address: '192.0.2.1', port: 1 }, m('c'))
    r.helo('first', m('h1'))
    r.helo('second', m('h2'))
    const { session, calls } = recorder()
    await runAll(r.client, session)
    assert.deepEqual(calls, ['connect client.example c', 'helo second h2'])
  })

  it('message: MAIL then every recipient kept; a new message forgets them, not the client', async () => {
    const r = new Replay()
    r.helo('h', undefined)
    r.mail(['<s@example.org>', 'SIZE=10'], m('f'))
    r.rcpt(['<a@example.com>'], m('a'))
    r.rcpt(['<b@example.com>'], undefined)
    const { session, calls } = recorder()
    await runAll(r.message, session)
    assert.deepEqual(calls, [
      'mail <s@example.org> SIZE=10 f',
      'rcpt <a@example.com> a',
      'rcpt <b@example.com> -',
    ])
    r.newMessage()
    assert.deepEqual(r.message, [])
    assert.deepEqual(
      r.client.map((s) => s.stage),
      ['helo'],
    )
  })

  it('replaySteps: a refusal at CONNECT, HELO or MAIL ends it; one at a kept RCPT does not', async () => {
    const r = new Replay()
    r.mail(['<s@example.org>'], undefined)
    r.rcpt(['<a@example.com>'], undefined)
    r.rcpt(['<b@example.com>'], undefined)
    const asked: string[] = []
    const rcptRefused = await replaySteps(r.message, (s) => {
      asked.push(s.stage)
      return Promise.resolve(s.stage === 'rcpt' ? REFUSED : { action: 'continue' })
    })
    assert.deepEqual(rcptRefused, { action: 'continue' })
    assert.deepEqual(asked, ['mail', 'rcpt', 'rcpt'])
    asked.length = 0
    const mailRefused = await replaySteps(r.message, (s) => {
      asked.push(s.stage)
      return Promise.resolve(REFUSED)
    })
    assert.equal(mailRefused, REFUSED)
    assert.deepEqual(asked, ['mail'])
  })
})
