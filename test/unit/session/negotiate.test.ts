import assert from 'node:assert/strict'

import { MilterNegotiationError } from '../../../lib/errors'
import type { OptnegReply, SymList } from '../../../lib/protocol/replies'
import { offerFor, validateOptneg, type Offer } from '../../../lib/session/negotiate'

// Values from docs/milter-protocol.md §4.3-§4.5, written out, not imported.
const NOUNKNOWN = 0x100
const NODATA = 0x200
const RCPT_REJ = 0x800
const NR_HDR = 0x80
const HDR_LEADSPC = 0x100000
const MDS_256K = 0x10000000
const MDS_1M = 0x20000000
const RESERVED_INTERNAL = 0x40000000

function reply(version: number, actions: number, protocol: number, symlist?: SymList): OptnegReply {
  return {
    kind: 'optneg',
    version,
    actions,
    protocol,
    symlist: symlist ?? new Map(),
    symlistWarnings: [],
  }
}

function negotiationError(fn: () => unknown): MilterNegotiationError {
  let thrown: unknown
  try {
    fn()
  } catch (e) {
    thrown = e
  }
  assert.ok(
    thrown instanceof MilterNegotiationError,
    `expected MilterNegotiationError: ${String(thrown)}`,
  )
  assert.equal(thrown.code, 'MILTER_ERR_NEGOTIATE')
  return thrown
}

describe('offerFor', () => {
  it('offers version 6, actions 0x1FF and every protocol bit but RCPT_REJ at v6', () => {
    assert.deepStrictEqual(offerFor(6), {
      version: 6,
      actions: 0x1ff,
      protocol: 0x1fffff & ~RCPT_REJ,
    })
    assert.equal(offerFor(6).protocol, 0x1ff7ff)
  })

  it('offers 0x3F / 0x7F at v2', () => {
    assert.deepStrictEqual(offerFor(2), { version: 2, actions: 0x3f, protocol: 0x7f })
  })

  it('offers protocol 0x17F at v3 and 0x37F at v4 and v5', () => {
    assert.equal(offerFor(3).protocol, 0x17f)
    assert.equal(offerFor(4).protocol, 0x37f)
    assert.equal(offerFor(5).protocol, 0x37f)
    assert.equal(offerFor(3).actions, 0x3f)
    assert.equal(offerFor(4).version, 4)
  })

  it('cuts requested actions down to the version mask', () => {
    assert.equal(offerFor(6, 0x03).actions, 0x03)
    assert.equal(offerFor(2, 0x1ff).actions, 0x3f)
    assert.equal(offerFor(6, 0xffffffff).actions, 0x1ff)
    assert.equal(offerFor(6, 0).actions, 0)
  })

  for (const bad of [0, 1, 7, 2.5, Number.NaN, -6]) {
    it(`refuses version ${bad}`, () => {
      assert.throws(() => offerFor(bad), RangeError)
    })
  }
})

describe('validateOptneg', () => {
  const v6: Offer = offerFor(6)

  it('accepts the §4.1 libmilter answer as is', () => {
    const n = validateOptneg(v6, reply(6, 0x1, 0))
    assert.equal(n.version, 6)
    assert.equal(n.actions, 0x1)
    assert.equal(n.protocol, 0)
    assert.equal(n.maxDataBytes, 65535)
    assert.deepStrictEqual(n.offer, v6)
  })

  it('accepts a lower version and forces NOUNKNOWN and NODATA for v2', () => {
    const n = validateOptneg(v6, reply(2, 0x3f, 0x10))
    assert.equal(n.version, 2)
    assert.equal(n.protocol, 0x10 | NOUNKNOWN | NODATA)
  })

  it('forces only NODATA for v3', () => {
    const n = validateOptneg(v6, reply(3, 0, 0))
    assert.equal(n.protocol, NODATA)
  })

  it('forces nothing for v4 and v6', () => {
    assert.equal(validateOptneg(v6, reply(4, 0, 0)).protocol, 0)
    assert.equal(validateOptneg(v6, reply(6, 0, NR_HDR)).protocol, NR_HDR)
  })

  it('refuses a version higher than offered and names both', () => {
    const e = negotiationError(() => validateOptneg(offerFor(4), reply(6, 0, 0)))
    assert.match(e.message, /6/)
    assert.match(e.message, /4/)
    negotiationError(() => validateOptneg(v6, reply(7, 0, 0)))
  })

  it('refuses version 1 and 0', () => {
    negotiationError(() => validateOptneg(v6, reply(1, 0, 0)))
    negotiationError(() => validateOptneg(v6, reply(0, 0, 0)))
  })

  it('refuses actions beyond the offer, naming both masks in hex', () => {
    const offer = offerFor(6, 0x33)
    const e = negotiationError(() => validateOptneg(offer, reply(6, 0x3f, 0)))
    assert.match(e.message, /0x3f/)
    assert.match(e.message, /0x33/)
    assert.match(e.message, /0xc/)
  })

  it('refuses action bits no version defines', () => {
    const e = negotiationError(() => validateOptneg(v6, reply(6, 0x200, 0)))
    assert.match(e.message, /0x200/)
    assert.match(e.message, /0x1ff/)
  })

  it('refuses protocol bits beyond the offer, naming both masks in hex', () => {
    const e = negotiationError(() => validateOptneg(v6, reply(6, 0, RCPT_REJ)))
    assert.match(e.message, /0x800/)
    assert.match(e.message, /0x1ff7ff/)
  })

  it('refuses v6 protocol bits from a v2 offer', () => {
    const e = negotiationError(() => validateOptneg(offerFor(2), reply(2, 0, HDR_LEADSPC)))
    assert.match(e.message, /0x100000/)
    assert.match(e.message, /0x7f/)
  })

  it('masks off MDS and the other SMFI_INTERNAL bits before checking', () => {
    const n = validateOptneg(v6, reply(6, 0, MDS_256K | MDS_1M | RESERVED_INTERNAL | NR_HDR))
    assert.equal(n.protocol, NR_HDR)
  })

  it('honours an echoed MDS bit only if we offered it', () => {
    assert.equal(validateOptneg(v6, reply(6, 0, MDS_1M)).maxDataBytes, 65535)
    assert.equal(validateOptneg(v6, reply(6, 0, MDS_256K)).maxDataBytes, 65535)
    const mdsOffer: Offer = { ...v6, protocol: v6.protocol | MDS_256K | MDS_1M }
    assert.equal(validateOptneg(mdsOffer, reply(6, 0, MDS_256K)).maxDataBytes, 262143)
    assert.equal(validateOptneg(mdsOffer, reply(6, 0, MDS_1M)).maxDataBytes, 1048575)
    assert.equal(validateOptneg(mdsOffer, reply(6, 0, MDS_1M | MDS_256K)).maxDataBytes, 1048575)
    const only256: Offer = { ...v6, protocol: v6.protocol | MDS_256K }
    assert.equal(validateOptneg(only256, reply(6, 0, MDS_1M)).maxDataBytes, 65535)
    assert.equal(validateOptneg(mdsOffer, reply(6, 0, 0)).maxDataBytes, 65535)
  })

  it('carries the symlist through', () => {
    const symlist: SymList = new Map([
      [0, ['j', '{daemon_name}']],
      [3, []],
    ])
    const n = validateOptneg(v6, reply(6, 0x101, HDR_LEADSPC | NR_HDR, symlist))
    assert.deepStrictEqual(n.symlist, symlist)
    assert.equal(n.actions, 0x101)
  })

  it('does not trim or intersect a valid request', () => {
    const n = validateOptneg(v6, reply(6, 0x1ff, 0x1ff7ff))
    assert.equal(n.actions, 0x1ff)
    assert.equal(n.protocol, 0x1ff7ff)
  })
})
