/**
 * The per-message INFO lines (lib/adapter/log.ts reportMessage): the
 * SMTP reply goes on the line of the milter that decided it, not on its
 * neighbours'.
 */
import assert from 'node:assert/strict'

import { reportMessage } from '../../../lib/adapter/log'
import type { HarakaConnection } from '../../../lib/adapter/haraka'
import { parseMilterConfig } from '../../../lib/config'
import { MilterReports } from '../../../lib/policy/milter-reports'

const CFG = parseMilterConfig({
  main: { milters: 'down spam' },
  'milter.down': { socket: 'inet:1@127.0.0.1', default_action: 'accept' },
  'milter.spam': { socket: 'inet:2@127.0.0.1' },
})

function lines(refusal: { milter: string; reply: string } | undefined): string[] {
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
  reportMessage({ name: 'milter' }, c, r.take([down, spam]), refusal)
  return out
}

describe('adapter: per-message report lines', () => {
  it('the reply is on the deciding milter’s line only', () => {
    const [down, spam] = lines({ milter: 'spam', reply: '550 5.7.1 Command rejected' })
    assert.doesNotMatch(down ?? '', /reply/)
    assert.match(
      spam ?? '',
      /verdict reject@rcpt; edits none; waited 2 ms; reply 550 5\.7\.1 Command rejected$/,
    )
  })

  it('a refusal the plugin decided (recipient rules) is on every line', () => {
    const out = lines({ milter: 'recipient rules', reply: '452 4.5.3 Try again' })
    assert.equal(out.length, 2)
    for (const l of out) assert.match(l, /; reply 452 4\.5\.3 Try again$/)
  })

  it('no refusal, no reply', () => {
    for (const l of lines(undefined)) assert.doesNotMatch(l, /reply/)
  })
})
