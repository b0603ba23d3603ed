/**
 * Edit application cost through the pure functions (no sockets, no Haraka):
 * the milliseconds for answers of the sizes that froze Haraka before the
 * edits were indexed (20,000 ADDRCPT, 40,000 CHGHEADER) and 100,000 of each
 * kind. `npm run bench:edits`.
 */
import { performance } from 'node:perf_hooks'

import { applyEnvelopeEdits, type Envelope, type EnvelopeEdit } from '../lib/message/envelope'
import { applyHeaderEdits, type HeaderEdit, type HeaderField } from '../lib/message/headers'

const BASE: HeaderField[] = [
  { name: 'Received', value: ' from us', hidden: true },
  { name: 'Subject', value: ' s' },
]
const ENV: Envelope = { from: { address: 'a@example.org' }, rcpts: [{ address: 'r@example.com' }] }

function headersOf(n: number, name: string): HeaderField[] {
  const out = [...BASE]
  for (let i = 0; i < n; i++) out.push({ name, value: ` ${i}` })
  return out
}

function time(label: string, run: () => number): void {
  const t0 = performance.now()
  const size = run()
  const ms = performance.now() - t0
  console.log(`${label.padEnd(44)} ${ms.toFixed(1).padStart(9)} ms  (result: ${size})`)
}

function addrcpt(n: number): EnvelopeEdit[] {
  return Array.from({ length: n }, (_, i) => ({ kind: 'addrcpt', rcpt: `<u${i}@example.com>` }))
}

function chgheader(n: number): HeaderEdit[] {
  return Array.from({ length: n }, (_, i) => ({
    kind: 'chgheader',
    index: i + 1,
    name: 'X-C',
    value: `c${i}`,
  }))
}

const N = 100_000
time('20,000 ADDRCPT', () => applyEnvelopeEdits(ENV, addrcpt(20_000)).rcpts.length)
time(
  '40,000 CHGHEADER (of 40,000 headers)',
  () => applyHeaderEdits(headersOf(40_000, 'X-C'), chgheader(40_000), false).length,
)
time('100,000 ADDRCPT', () => applyEnvelopeEdits(ENV, addrcpt(N)).rcpts.length)
time('100,000 ADDRCPT + 100,000 DELRCPT', () => {
  const dels: EnvelopeEdit[] = Array.from({ length: N }, (_, i) => ({
    kind: 'delrcpt',
    rcpt: `u${i}@example.com`,
  }))
  return applyEnvelopeEdits(ENV, [...addrcpt(N), ...dels]).rcpts.length
})
time(
  '100,000 ADDHEADER',
  () =>
    applyHeaderEdits(
      BASE,
      Array.from({ length: N }, (_, i) => ({ kind: 'addheader', name: 'X-A', value: `${i}` })),
      false,
    ).length,
)
time(
  '100,000 INSHEADER at 1',
  () =>
    applyHeaderEdits(
      BASE,
      Array.from({ length: N }, (_, i) => ({
        kind: 'insheader',
        index: 1,
        name: 'X-I',
        value: `${i}`,
      })),
      false,
    ).length,
)
time(
  '100,000 CHGHEADER (of 100,000 headers)',
  () => applyHeaderEdits(headersOf(N, 'X-C'), chgheader(N), false).length,
)
time(
  '100,000 CHGHEADER deletes (#1 each time)',
  () =>
    applyHeaderEdits(
      headersOf(N, 'X-C'),
      Array.from({ length: N }, () => ({ kind: 'chgheader', index: 1, name: 'X-C', value: '' })),
      false,
    ).length,
)
time('100,000 mixed header edits', () => {
  const edits: HeaderEdit[] = []
  for (let i = 0; i < N; i++) {
    const k = i % 4
    if (k === 0) edits.push({ kind: 'addheader', name: 'X-M', value: `${i}` })
    else if (k === 1) edits.push({ kind: 'insheader', index: i % 97, name: 'X-M', value: `${i}` })
    else if (k === 2) edits.push({ kind: 'chgheader', index: i % 89, name: 'x-m', value: `c${i}` })
    else edits.push({ kind: 'chgheader', index: i % 83, name: 'X-M', value: '' })
  }
  return applyHeaderEdits(BASE, edits, false).length
})
