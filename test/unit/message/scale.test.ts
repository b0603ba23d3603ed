/**
 * Edit application at scale: the indexed editors give exactly what applying
 * each edit to the plain list gives (checked against a straightforward
 * reference on random answers), and 100,000 edits of each kind complete
 * (quadratic code would take minutes here; nothing is timed).
 */
import assert from 'node:assert/strict'

import {
  addressKey,
  applyEnvelopeEdits,
  type Envelope,
  type EnvelopeEdit,
} from '../../../lib/message/envelope'
import {
  applyHeaderEdits,
  milterValueToField,
  type HeaderEdit,
  type HeaderField,
} from '../../../lib/message/headers'
import { OrderTree } from '../../../lib/message/order-tree'

/** The semantics documented in lib/message/headers.ts, applied naively to a list. */
function referenceHeaders(
  input: readonly HeaderField[],
  edits: readonly HeaderEdit[],
): HeaderField[] {
  const fields = input.map((f) => ({ ...f }))
  for (const e of edits) {
    const value = milterValueToField(e.value, false, e.name.length)
    if (e.kind === 'addheader') fields.push({ name: e.name, value })
    else if (e.kind === 'insheader')
      fields.splice(Math.min(Math.max(0, e.index), fields.length), 0, { name: e.name, value })
    else {
      let seen = 0
      let at = -1
      for (let i = 0; i < fields.length; i++) {
        const f = fields[i] as HeaderField
        if (f.hidden || f.name.toLowerCase() !== e.name.toLowerCase()) continue
        if (++seen === Math.max(1, e.index)) {
          at = i
          break
        }
      }
      if (at < 0) {
        if (e.value !== '') fields.push({ name: e.name, value })
      } else if (e.value === '') fields.splice(at, 1)
      else fields[at] = { name: e.name, value }
    }
  }
  return fields
}

function referenceEnvelope(env: Envelope, edits: readonly EnvelopeEdit[]): Envelope {
  let rcpts = [...env.rcpts]
  let from = env.from
  for (const e of edits) {
    if (e.kind === 'chgfrom') from = { address: e.sender }
    else if (e.kind === 'addrcpt') {
      if (!rcpts.some((r) => addressKey(r.address) === addressKey(e.rcpt)))
        rcpts.push({ address: e.rcpt })
    } else rcpts = rcpts.filter((r) => addressKey(r.address) !== addressKey(e.rcpt))
  }
  return { from, rcpts }
}

/** A small deterministic generator (the same cases on every run). */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1
  return (n) => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s % n
  }
}

const NAMES = ['X-A', 'x-a', 'X-B', 'Subject', 'Received']

function randomHeaderEdits(r: (n: number) => number, count: number): HeaderEdit[] {
  const out: HeaderEdit[] = []
  for (let i = 0; i < count; i++) {
    const name = NAMES[r(NAMES.length)] as string
    const value = r(4) === 0 ? '' : `v${i}`
    switch (r(3)) {
      case 0:
        out.push({ kind: 'addheader', name, value: value || 'x' })
        break
      case 1:
        out.push({ kind: 'insheader', index: r(12) - 1, name, value: value || 'x' })
        break
      default:
        out.push({ kind: 'chgheader', index: r(6), name, value })
    }
  }
  return out
}

describe('OrderTree', () => {
  it('keeps positions through inserts and removals like an array does', () => {
    const r = rng(7)
    const tree = new OrderTree<number>()
    const nodes = []
    const plain: number[] = []
    for (let i = 0; i < 3000; i++) {
      if (plain.length > 0 && r(3) === 0) {
        const k = r(plain.length)
        const node = tree.at(k)
        assert.ok(node)
        assert.equal(tree.indexOf(node), k)
        tree.remove(node)
        plain.splice(k, 1)
      } else {
        const k = r(plain.length + 2)
        nodes.push(tree.insertAt(k, i))
        plain.splice(k, 0, i)
      }
    }
    assert.deepEqual(tree.values(), plain)
    assert.equal(tree.size, plain.length)
  })
})

describe('header edits: the index gives the plain list semantics', () => {
  for (let seed = 1; seed <= 40; seed++) {
    it(`random answer #${seed}`, () => {
      const r = rng(seed)
      const input: HeaderField[] = [
        { name: 'Received', value: ' from us', hidden: true },
        { name: 'X-A', value: ' 1' },
        { name: 'Subject', value: ' s' },
        { name: 'x-a', value: ' 2' },
        { name: 'Received', value: ' from them' },
      ]
      const edits = randomHeaderEdits(r, 200)
      assert.deepEqual(applyHeaderEdits(input, edits, false), referenceHeaders(input, edits))
    })
  }
})

describe('envelope edits: the index gives the plain list semantics', () => {
  for (let seed = 1; seed <= 20; seed++) {
    it(`random answer #${seed}`, () => {
      const r = rng(seed)
      const env: Envelope = {
        from: { address: 'a@example.org' },
        rcpts: [
          { address: 'u1@example.com' },
          { address: 'U1@EXAMPLE.com' },
          { address: 'u2@x.com' },
        ],
      }
      const edits: EnvelopeEdit[] = []
      for (let i = 0; i < 300; i++) {
        const rcpt = `u${r(8)}@${r(2) ? 'example.com' : 'EXAMPLE.COM'}`
        edits.push(r(2) ? { kind: 'addrcpt', rcpt } : { kind: 'delrcpt', rcpt })
      }
      assert.deepEqual(applyEnvelopeEdits(env, edits), referenceEnvelope(env, edits))
    })
  }
})

describe('100,000 edits of each kind complete', function () {
  // Not a timed test: the figures are bench:edits'. A quadratic application would take minutes
  // here (and fail at this bound); a linear one well under a second, with room for a loaded
  // CI machine.
  this.timeout(30_000)
  const N = 100_000
  const base: HeaderField[] = [
    { name: 'Received', value: ' from us', hidden: true },
    { name: 'Subject', value: ' s' },
  ]
  const env: Envelope = {
    from: { address: 'a@example.org' },
    rcpts: [{ address: 'r@example.com' }],
  }

  it('ADDRCPT', () => {
    const edits: EnvelopeEdit[] = []
    for (let i = 0; i < N; i++) edits.push({ kind: 'addrcpt', rcpt: `<u${i}@example.com>` })
    const out = applyEnvelopeEdits(env, edits)
    assert.equal(out.rcpts.length, N + 1)
    assert.equal(out.rcpts[N]?.address, `u${N - 1}@example.com`)
  })

  it('DELRCPT (of recipients added first)', () => {
    const edits: EnvelopeEdit[] = []
    for (let i = 0; i < N; i++) edits.push({ kind: 'addrcpt', rcpt: `u${i}@example.com` })
    for (let i = 0; i < N; i += 2) edits.push({ kind: 'delrcpt', rcpt: `u${i}@EXAMPLE.com` })
    const out = applyEnvelopeEdits(env, edits)
    assert.equal(out.rcpts.length, N / 2 + 1)
    assert.equal(out.rcpts[1]?.address, 'u1@example.com')
  })

  it('ADDHEADER', () => {
    const edits: HeaderEdit[] = []
    for (let i = 0; i < N; i++) edits.push({ kind: 'addheader', name: 'X-Add', value: `${i}` })
    const out = applyHeaderEdits(base, edits, false)
    assert.equal(out.length, N + 2)
    assert.deepEqual(out[N + 1], { name: 'X-Add', value: ` ${N - 1}` })
  })

  it('INSHEADER (at the top, each above the last)', () => {
    const edits: HeaderEdit[] = []
    for (let i = 0; i < N; i++)
      edits.push({ kind: 'insheader', index: 1, name: 'X-Ins', value: `${i}` })
    const out = applyHeaderEdits(base, edits, false)
    assert.equal(out.length, N + 2)
    assert.equal(out[0]?.hidden, true)
    assert.deepEqual(out[1], { name: 'X-Ins', value: ` ${N - 1}` })
    assert.deepEqual(out[N], { name: 'X-Ins', value: ' 0' })
  })

  it('CHGHEADER changes and deletes (each resolved against the list left by the others)', () => {
    const many: HeaderField[] = [...base]
    for (let i = 0; i < N; i++) many.push({ name: 'X-C', value: ` ${i}` })
    const edits: HeaderEdit[] = []
    // change every header, then delete every other one from the top: always #1, #2, #3...
    for (let i = 1; i <= N; i++)
      edits.push({ kind: 'chgheader', index: i, name: 'x-c', value: `c${i}` })
    for (let i = 1; i <= N / 2; i++)
      edits.push({ kind: 'chgheader', index: i, name: 'X-C', value: '' })
    const out = applyHeaderEdits(many, edits, false)
    assert.equal(out.length, N / 2 + 2)
    // deleting #1, then #2 of what is left, ... removes c1, c3, c5, ...
    assert.deepEqual(out[2], { name: 'x-c', value: ' c2' })
    assert.deepEqual(out[3], { name: 'x-c', value: ' c4' })
  })

  it('a mix of every kind', () => {
    const r = rng(99)
    const edits = randomHeaderEdits(r, N)
    const out = applyHeaderEdits(base, edits, false)
    assert.ok(out.length > 2)
    const env2: EnvelopeEdit[] = []
    for (let i = 0; i < N; i++) {
      const rcpt = `u${r(N / 10)}@example.com`
      env2.push(r(2) ? { kind: 'addrcpt', rcpt } : { kind: 'delrcpt', rcpt })
    }
    assert.ok(applyEnvelopeEdits(env, env2).rcpts.length > 0)
  })
})
