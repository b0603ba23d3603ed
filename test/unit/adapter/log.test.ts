/**
 * The per-message INFO lines (lib/adapter/log.ts reportMessage): a
 * refusal goes on the line of the milter that decided it, not on its
 * neighbours', and says what it refused (the message, or one recipient).
 */
import assert from 'node:assert/strict'

import { reportMessage } from '../../../lib/adapter/log'
import type { HarakaConnection } from '../../../lib/adapter/haraka'
import type { Refusal } from '../../../lib/adapter/state'
import { parseMilterConfig } from '../../../lib/config'
import { MilterReports } from '../../../lib/policy/milter-reports'

const CFG = parseMilterConfig({
  main: { milters: 'down spam' },
  'milter.down': { socket: 'inet:1@127.0.0.1', default_action: 'accept' },
  'milter.spam': { socket: 'inet:2@127.0.0.1' },
})

function lines(refusals: Refusal[]): string[] {
  const down = CFG.milters.get('down')!
  const spam = CFG.milters.get('spam')!
  const r = new MilterReports()
  r.failure(down, 'connect', 'MILTER_ERR_CONNECT', 'accept')
  r.waited(spam, 'rcpt', 2)
  r.verdict(spam, 'rcpt', { kind: 'reject' })
  const out: string[] = []
  const c = {
    loginfo: (_p: unknown, text: string) => out.push(text),
  } as unknown as HarakaConnection
  reportMessage({ name: 'milter' }, c, r.take([down, spam]), refusals)
  return out
}

describe('adapter: per-message report lines', () => {
  it('a refusal is on the deciding milter’s line only, with what it refused', () => {
    const [down, spam] = lines([
      {
        milter: 'spam',
        stage: 'rcpt',
        reply: '550 5.7.1 Command rejected',
        recipient: '<x@example.com>',
      },
    ])
    assert.doesNotMatch(down ?? '', /refused|deferred/)
    assert.match(
      spam ?? '',
      /verdict reject@rcpt; edits none; waited 2 ms; recipient <x@example\.com> refused: 550 5\.7\.1 Command rejected$/,
    )
  })

  it('a refusal the plugin decided (recipient rules) is on every line, naming the recipient', () => {
    const out = lines([
      {
        milter: 'recipient rules',
        stage: 'rcpt',
        reply: '452 4.5.3 Try again',
        recipient: '<b@x>',
      },
    ])
    assert.equal(out.length, 2)
    for (const l of out) assert.match(l, /; recipient <b@x> deferred: 452 4\.5\.3 Try again$/)
  })

  it('a message refusal says so, after a recipient’s', () => {
    const [, spam] = lines([
      { milter: 'spam', stage: 'rcpt', reply: '550 5.1.1 No', recipient: '<x@example.com>' },
      { milter: 'spam', stage: 'eom', reply: '554 5.7.1 Message rejected' },
    ])
    assert.match(
      spam ?? '',
      /; recipient <x@example\.com> refused: 550 5\.1\.1 No; message refused at eom: 554 5\.7\.1 Message rejected$/,
    )
  })

  it('no refusal, nothing after the time waited', () => {
    for (const l of lines([])) assert.match(l, /waited \d+ ms$/)
  })
})
