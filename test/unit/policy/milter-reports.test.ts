/**
 * The per-milter, per-message report: stages once each in order, every
 * decision with its stage, edits by kind, time waited, and the one-line form.
 */
import assert from 'node:assert/strict'

import { parseMilterConfig } from '../../../lib/config'
import { MilterReports, formatMilterReport } from '../../../lib/policy/milter-reports'

const cfg = parseMilterConfig({
  main: { milters: 'a b' },
  'milter.a': { socket: 'inet:8891@127.0.0.1' },
  'milter.b': { socket: 'unix:/run/b.sock' },
})
const A = cfg.milters.get('a')!
const B = cfg.milters.get('b')!

describe('policy: per-message milter reports', () => {
  it('collects stages, decisions, edits and time; take() returns chain order and starts afresh', () => {
    const r = new MilterReports()
    r.waited(B, 'mail', 1)
    r.waited(A, 'mail', 2)
    r.waited(A, 'rcpt', 1)
    r.waited(A, 'rcpt', 1)
    r.verdict(A, 'rcpt', { kind: 'reject' })
    r.verdict(A, 'rcpt', { kind: 'continue' })
    r.waited(A, 'eom', 5.4)
    r.edits(A, {
      milter: 'a',
      count: 3,
      bodyReplaced: true,
      modifications: [
        { kind: 'addheader', name: Buffer.from('X'), value: Buffer.from('1') },
        { kind: 'addheader', name: Buffer.from('Y'), value: Buffer.from('2') },
        { kind: 'delrcpt', rcpt: Buffer.from('<x@example.com>') },
      ],
    })
    r.verdict(A, 'eom', { kind: 'accept' })
    r.failure(B, 'rcpt', 'MILTER_ERR_TIMEOUT', 'tempfail')
    const [a, b] = r.take([A, B])
    assert.deepEqual(a, {
      milter: 'a',
      mode: 'enforce',
      endpoint: 'inet:8891@127.0.0.1',
      stages: ['mail', 'rcpt', 'eom'],
      verdict: 'reject@rcpt, accept@eom',
      edits: { addheader: 2, delrcpt: 1, replbody: 1 },
      waitMs: 9.4,
      waits: [
        { stage: 'mail', ms: 2 },
        { stage: 'rcpt', ms: 1 },
        { stage: 'rcpt', ms: 1 },
        { stage: 'eom', ms: 5.4 },
      ],
      outcomes: [
        { stage: 'rcpt', kind: 'reject' },
        { stage: 'eom', kind: 'accept' },
      ],
    })
    assert.equal(
      formatMilterReport(a),
      'a (inet:8891@127.0.0.1): stages mail,rcpt,eom; verdict reject@rcpt, accept@eom; edits addheader=2 delrcpt=1 replbody=1; waited 9 ms',
    )
    assert.equal(b?.verdict, 'failed MILTER_ERR_TIMEOUT@rcpt (default_action=tempfail)')
    assert.deepEqual(b?.stages, ['mail', 'rcpt'])
    assert.deepEqual(b?.outcomes, [{ stage: 'rcpt', kind: 'failed', code: 'MILTER_ERR_TIMEOUT' }])
    assert.deepEqual(r.take([A, B]), [])
  })

  it('a milter that only continued: verdict continue, edits none', () => {
    const r = new MilterReports()
    r.waited(A, 'connect', 0.2)
    r.verdict(A, 'connect', { kind: 'continue' })
    assert.equal(
      formatMilterReport(r.take([A])[0]!),
      'a (inet:8891@127.0.0.1): stages connect; verdict continue; edits none; waited 0 ms',
    )
  })
})
