/**
 * Fuzz properties for the decoders that read what a milter sends: decodeReply
 * (every reply code, the OPTNEG reply with its symlist, REPLYCODE texts) and
 * FrameDecoder (any byte stream, cut anywhere). One module, two users:
 *
 *   - test/fuzz/run.ts (`npm run fuzz`): a million cases and more, figures;
 *   - test/unit/protocol/fuzz.test.ts: a few thousand per property, fixed
 *     seed, inside `npm run check`.
 *
 * Every property checks against an independent model: the byte builders of
 * test/helpers/bytes.ts and small reference decoders written here from the
 * layouts, never from lib/protocol. Nothing here asserts a time; timings
 * are only collected into FuzzStats for the script to print.
 */
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import { inspect } from 'node:util'

import * as fc from 'fast-check'

import { MilterError, MilterProtocolError } from '../../lib/errors'
import { MDS_1M, Rep } from '../../lib/protocol/constants'
import { DEFAULT_MAX_FRAME_DATA, FrameDecoder, type Frame } from '../../lib/protocol/frame'
import { decodeReply, encodeReply, type Reply, type SymList } from '../../lib/protocol/replies'
import { ch, cstr, frame, u32 } from '../helpers/bytes'

// ---------------------------------------------------------------------------
// Targets and statistics

/** What the properties saw, for the script's report (the unit tests ignore it). */
export interface FuzzStats {
  /** Per target: inputs decoded and inputs refused with a protocol error. */
  outcomes: Map<string, { decoded: number; refused: number }>
  /** FrameDecoder, large inputs: decode time per byte in 1-byte pieces, ns. */
  oneByteNsPerByte: number[]
  /** FrameDecoder, large inputs: decode time per byte in one piece, ns. */
  onePieceNsPerByte: number[]
  /** Largest FrameDecoder `pending` seen, and the limit + 5 of that decoder. */
  maxPending: { bytes: number; bound: number }
}

export function newStats(): FuzzStats {
  return {
    outcomes: new Map(),
    oneByteNsPerByte: [],
    onePieceNsPerByte: [],
    maxPending: { bytes: 0, bound: 0 },
  }
}

function count(stats: FuzzStats, target: string, outcome: 'decoded' | 'refused'): void {
  let o = stats.outcomes.get(target)
  if (!o) stats.outcomes.set(target, (o = { decoded: 0, refused: 0 }))
  o[outcome]++
}

/** How one target ran: enough to report and replay a failure. */
export interface FuzzOutcome {
  failed: boolean
  numRuns: number
  numSkipped: number
  /** fast-check's own report: seed, path and the shrunk counterexample. */
  report: string | undefined
}

export interface FuzzTarget {
  readonly name: string
  readonly what: string
  /** Share of the total case count in the full run (the shares add up to 1)... */
  readonly share: number
  /** ...or, for expensive targets, a number of cases per million of the total (6 at least). */
  readonly perMillion: number
  /** Cases in the unit-suite run. */
  readonly unitRuns: number
  /** Runs the property and reports (never throws for a failing property). */
  check(stats: FuzzStats, numRuns: number, seed: number): FuzzOutcome
  /** Runs the property with fc.assert: throws fast-check's report on failure. */
  assert(stats: FuzzStats, numRuns: number, seed: number): void
}

function target<T>(
  spec: Omit<FuzzTarget, 'check' | 'assert'>,
  arbitrary: fc.Arbitrary<T>,
  predicate: (value: T, stats: FuzzStats) => void,
): FuzzTarget {
  const property = (stats: FuzzStats): fc.IPropertyWithHooks<[T]> =>
    fc.property(arbitrary, (v) => predicate(v, stats))
  return {
    ...spec,
    check(stats, numRuns, seed) {
      const details = fc.check(property(stats), { numRuns, seed })
      return {
        failed: details.failed,
        numRuns: details.numRuns,
        numSkipped: details.numSkips,
        report: details.failed ? fc.defaultReportMessage(details) : undefined,
      }
    },
    assert(stats, numRuns, seed) {
      fc.assert(property(stats), { numRuns, seed })
    },
  }
}

// ---------------------------------------------------------------------------
// Errors

/** Fails unless e is a MilterProtocolError (so of the MilterError hierarchy, with its code). */
export function assertProtocolError(e: unknown, what: string): void {
  if (!(e instanceof MilterError)) assert.fail(`${what}: threw ${inspect(e)}, not a MilterError`)
  assert.ok(e instanceof MilterProtocolError, `${what}: threw ${e.name}, not a protocol error`)
  assert.equal(e.code, 'MILTER_ERR_PROTOCOL', what)
}

// ---------------------------------------------------------------------------
// Byte arbitraries

const toBuffer = (a: Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.length)

/** Any bytes, NUL and small values frequent so that strings and integers sometimes parse. */
function anyBytes(maxLength: number): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc.uint8Array({ maxLength }).map(toBuffer),
    fc
      .array(
        fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 255 })),
        {
          maxLength,
        },
      )
      .map((a) => Buffer.from(a)),
  )
}

const TEXT_UNITS = [...'abcxyz019 <>@.-=%{}_,\t\r\n'].map((c) => c.charCodeAt(0))

/** Bytes without NUL: the contents of a `str\0` field. */
function noNulBytes(maxLength: number): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc.uint8Array({ min: 1, max: 255, maxLength }).map(toBuffer),
    fc.array(fc.constantFrom(...TEXT_UNITS), { maxLength }).map((a) => Buffer.from(a)),
  )
}

/** A uint32, often one of the edge values. */
const u32Value: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(0, 1, 2, 5, 6, 7, 0x1ff, 0x7fffffff, 0x80000000, 0xffffffff),
  fc.integer({ min: 0, max: 16 }),
  fc
    .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }))
    .map(([hi, lo]) => hi * 0x10000 + lo),
)

/** A payload made of fields, so that well-formed layouts come up often. */
const payload: fc.Arbitrary<Buffer> = fc
  .array(
    fc.oneof(
      { weight: 3, arbitrary: u32Value.map(u32) },
      { weight: 4, arbitrary: noNulBytes(24).map(cstr) },
      { weight: 2, arbitrary: anyBytes(16) },
      { weight: 1, arbitrary: fc.constant(Buffer.of(0)) },
    ),
    { maxLength: 5 },
  )
  .map((parts) => Buffer.concat(parts))

const REPLY_CODES: readonly number[] = Object.values(Rep)

/** A code byte: mostly a reply letter, sometimes anything. */
const codeByte: fc.Arbitrary<number> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...REPLY_CODES) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) },
)

// ---------------------------------------------------------------------------
// Reference model of the reply layouts (§3, §4.7), independent of replies.ts

type Field = 'u32' | 'cstr' | 'cstr?' | 'rest'
type Layout = readonly Field[] | 'optneg'

const BARE: ReadonlyArray<[string, Reply['kind']]> = [
  ['c', 'continue'],
  ['a', 'accept'],
  ['r', 'reject'],
  ['t', 'tempfail'],
  ['d', 'discard'],
  ['s', 'skip'],
  ['p', 'progress'],
  ['4', 'shutdown'],
  ['f', 'conn_fail'],
]

/** Code letter -> the kind decodeReply must give and the payload layout. */
const LAYOUTS: ReadonlyMap<number, { kind: Reply['kind']; layout: Layout }> = new Map([
  ...BARE.map(([c, kind]): [number, { kind: Reply['kind']; layout: Layout }] => [
    ch(c),
    { kind, layout: [] },
  ]),
  [ch('y'), { kind: 'replycode', layout: ['cstr'] }],
  [ch('h'), { kind: 'addheader', layout: ['cstr', 'cstr'] }],
  [ch('i'), { kind: 'insheader', layout: ['u32', 'cstr', 'cstr'] }],
  [ch('m'), { kind: 'chgheader', layout: ['u32', 'cstr', 'cstr'] }],
  [ch('b'), { kind: 'replbody', layout: ['rest'] }],
  [ch('+'), { kind: 'addrcpt', layout: ['cstr'] }],
  [ch('-'), { kind: 'delrcpt', layout: ['cstr'] }],
  [ch('2'), { kind: 'addrcpt_par', layout: ['cstr', 'cstr?'] }],
  [ch('e'), { kind: 'chgfrom', layout: ['cstr', 'cstr?'] }],
  [ch('q'), { kind: 'quarantine', layout: ['cstr'] }],
  [ch('O'), { kind: 'optneg', layout: 'optneg' }],
  // 'l' (SETSYMLIST) and every other byte: never a valid packet
])

/** Does the payload fit the layout exactly? */
function fits(layout: Layout, data: Buffer): boolean {
  if (layout === 'optneg') return data.length >= 12 // the symlist is lenient
  let pos = 0
  for (const f of layout) {
    if (f === 'rest') pos = data.length
    else if (f === 'u32') {
      if (data.length - pos < 4) return false
      pos += 4
    } else if (f === 'cstr?' && pos === data.length) {
      continue
    } else {
      let nul = pos
      while (nul < data.length && data[nul] !== 0) nul++
      if (nul === data.length) return false
      pos = nul + 1
    }
  }
  return pos === data.length
}

/** A payload laid out for the code, then often damaged at one end. */
function layoutPayload(layout: Layout): fc.Arbitrary<Buffer> {
  const fields: Array<fc.Arbitrary<Buffer>> =
    layout === 'optneg'
      ? [u32Value.map(u32), u32Value.map(u32), u32Value.map(u32), payload]
      : layout.map((f) =>
          f === 'u32'
            ? u32Value.map(u32)
            : f === 'cstr'
              ? noNulBytes(24).map(cstr)
              : f === 'cstr?'
                ? fc.oneof(fc.constant(Buffer.alloc(0)), noNulBytes(24).map(cstr))
                : anyBytes(64),
        )
  return fc
    .tuple(
      fc.tuple(...fields).map((parts) => Buffer.concat(parts)),
      fc.constantFrom('keep', 'keep', 'drop', 'add'),
      anyBytes(3),
    )
    .map(([b, damage, extra]) =>
      damage === 'drop'
        ? b.subarray(0, Math.max(0, b.length - 1 - ((extra[0] ?? 0) % 4)))
        : damage === 'add'
          ? Buffer.concat([b, extra.length > 0 ? extra : Buffer.of(0)])
          : b,
    )
}

// ---------------------------------------------------------------------------
// OPTNEG symlists: the model

/** Bytes decodeSymlist splits macro names on: JS \s within latin1, and comma. */
const SEPARATORS = [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x2c, 0xa0]
const NAME_BYTES = Array.from({ length: 255 }, (_, i) => i + 1).filter(
  (b) => !SEPARATORS.includes(b),
)

/** A macro name: usual ones, or any bytes that are neither NUL nor separators. */
const macroName: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('j', 'i', '_', '{client_addr}', '{auth_authen}', '{mail_addr}', '{rcpt_addr}'),
  fc
    .array(fc.constantFrom(...NAME_BYTES), { minLength: 1, maxLength: 12 })
    .map((a) => Buffer.from(a).toString('latin1')),
)

const separator: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(' ', ',', ', ', '\t', '  '),
  fc
    .array(fc.constantFrom(...SEPARATORS), { minLength: 1, maxLength: 3 })
    .map((a) => Buffer.from(a).toString('latin1')),
)

const KNOWN_STAGES = [0, 1, 2, 3, 4, 5, 6]

interface SymEntry {
  stage: number
  names: string[]
  seps: string[]
  lead: string
  trail: string
}

const symEntry: fc.Arbitrary<SymEntry> = fc.record({
  stage: fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...KNOWN_STAGES) },
    { weight: 1, arbitrary: u32Value },
  ),
  names: fc.array(macroName, { maxLength: 5 }),
  seps: fc.array(separator, { minLength: 5, maxLength: 5 }),
  lead: fc.oneof(fc.constant(''), separator),
  trail: fc.oneof(fc.constant(''), separator),
})

function entryText(e: SymEntry): Buffer {
  let s = e.lead
  e.names.forEach((n, i) => {
    s += (i > 0 ? (e.seps[i] ?? ' ') : '') + n
  })
  return Buffer.from(s + e.trail, 'latin1')
}

type SymTail =
  { kind: 'none' } | { kind: 'short'; bytes: Buffer } | { kind: 'nonul'; bytes: Buffer }

const symTail: fc.Arbitrary<SymTail> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<SymTail>({ kind: 'none' }) },
  {
    weight: 1,
    arbitrary: fc
      .uint8Array({ minLength: 1, maxLength: 4 })
      .map((a): SymTail => ({ kind: 'short', bytes: toBuffer(a) })),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(u32Value, noNulBytes(10)).map(([stage, text]): SymTail => ({
      kind: 'nonul',
      bytes: Buffer.concat([u32(stage), text]),
    })),
  },
)

interface OptnegCase {
  version: number
  actions: number
  protocol: number
  entries: SymEntry[]
  tail: SymTail
  /** Cut the payload to this many bytes (below 12: must be refused), or keep it whole. */
  cutTo: number | undefined
}

const optnegCase: fc.Arbitrary<OptnegCase> = fc.record({
  version: u32Value,
  actions: u32Value,
  protocol: u32Value,
  entries: fc.array(symEntry, { maxLength: 6 }),
  tail: symTail,
  cutTo: fc.oneof(
    { weight: 9, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 11 }) },
  ),
})

/** What decodeReply must make of the case: the symlist map and the number of warnings. */
function optnegModel(c: OptnegCase): { symlist: SymList; warnings: number } {
  const symlist: SymList = new Map()
  let warnings = 0
  for (const e of c.entries) {
    if (!KNOWN_STAGES.includes(e.stage)) warnings++
    else symlist.set(e.stage as 0, [...e.names])
  }
  if (c.tail.kind !== 'none') warnings++
  return { symlist, warnings }
}

// ---------------------------------------------------------------------------
// Replies as values, and an encoder independent of replies.ts

const bareKind = fc.constantFrom(...BARE.map(([, k]) => k))

const optnegReply: fc.Arbitrary<Reply> = fc
  .record({
    version: u32Value,
    actions: u32Value,
    protocol: u32Value,
    stages: fc.uniqueArray(fc.constantFrom(...KNOWN_STAGES), { maxLength: 7 }),
    lists: fc.array(fc.array(macroName, { maxLength: 4 }), { minLength: 7, maxLength: 7 }),
  })
  .map(({ version, actions, protocol, stages, lists }) => ({
    kind: 'optneg' as const,
    version,
    actions,
    protocol,
    symlist: new Map(stages.map((s, i) => [s as 0, lists[i] ?? []])),
    symlistWarnings: [],
  }))

const str = noNulBytes(32)

const anyReply: fc.Arbitrary<Reply> = fc.oneof(
  bareKind.map((kind): Reply => ({ kind }) as Reply),
  str.map((text): Reply => ({ kind: 'replycode', text })),
  fc.tuple(str, str).map(([name, value]): Reply => ({ kind: 'addheader', name, value })),
  fc
    .tuple(fc.constantFrom('insheader' as const, 'chgheader' as const), u32Value, str, str)
    .map(([kind, index, name, value]): Reply => ({ kind, index, name, value })),
  anyBytes(300).map((chunk): Reply => ({ kind: 'replbody', chunk })),
  str.map((rcpt): Reply => ({ kind: 'addrcpt', rcpt })),
  str.map((rcpt): Reply => ({ kind: 'delrcpt', rcpt })),
  str.map((reason): Reply => ({ kind: 'quarantine', reason })),
  fc
    .tuple(str, fc.option(str, { nil: undefined }))
    .map(([rcpt, args]): Reply =>
      args ? { kind: 'addrcpt_par', rcpt, args } : { kind: 'addrcpt_par', rcpt },
    ),
  fc
    .tuple(str, fc.option(str, { nil: undefined }))
    .map(([sender, args]): Reply =>
      args ? { kind: 'chgfrom', sender, args } : { kind: 'chgfrom', sender },
    ),
  optnegReply,
)

/** The wire bytes of a reply, built with the test helpers only. */
function independentEncoding(r: Reply): Buffer {
  switch (r.kind) {
    case 'replycode':
      return frame('y', cstr(r.text))
    case 'addheader':
      return frame('h', cstr(r.name), cstr(r.value))
    case 'insheader':
      return frame('i', u32(r.index), cstr(r.name), cstr(r.value))
    case 'chgheader':
      return frame('m', u32(r.index), cstr(r.name), cstr(r.value))
    case 'replbody':
      return frame('b', r.chunk)
    case 'addrcpt':
      return frame('+', cstr(r.rcpt))
    case 'delrcpt':
      return frame('-', cstr(r.rcpt))
    case 'quarantine':
      return frame('q', cstr(r.reason))
    case 'addrcpt_par':
      return frame('2', cstr(r.rcpt), ...(r.args ? [cstr(r.args)] : []))
    case 'chgfrom':
      return frame('e', cstr(r.sender), ...(r.args ? [cstr(r.args)] : []))
    case 'optneg':
      return frame(
        'O',
        u32(r.version),
        u32(r.actions),
        u32(r.protocol),
        ...[...r.symlist].map(([stage, names]) =>
          Buffer.concat([u32(stage), cstr(Buffer.from(names.join(' '), 'latin1'))]),
        ),
      )
    default: {
      const letter = BARE.find(([, k]) => k === r.kind)?.[0]
      assert.ok(letter, `no code for ${r.kind}`)
      return frame(letter)
    }
  }
}

// ---------------------------------------------------------------------------
// FrameDecoder: a reference decoder, fragmentation and the per-push check

interface RefFrame {
  code: number
  data: Buffer
  /** Offset just after the frame. */
  end: number
}

/** The frames of a whole stream and, if a bad length comes, how many bytes reveal it. */
function referenceFrames(stream: Buffer, limit: number): { frames: RefFrame[]; errorAt?: number } {
  const frames: RefFrame[] = []
  let off = 0
  while (stream.length - off >= 4) {
    const len =
      stream[off]! * 0x1000000 +
      stream[off + 1]! * 0x10000 +
      stream[off + 2]! * 0x100 +
      stream[off + 3]!
    if (len === 0 || len - 1 > limit) return { frames, errorAt: off + 4 }
    if (stream.length - off - 4 < len) break
    frames.push({
      code: stream[off + 4]!,
      data: stream.subarray(off + 5, off + 4 + len),
      end: off + 4 + len,
    })
    off += 4 + len
  }
  return { frames }
}

/** How a stream is cut into pushes. */
export type Cuts =
  | { kind: 'whole' }
  | { kind: 'bytes' }
  /** Piece sizes, used in turn (0 = an empty push). */
  | { kind: 'sizes'; sizes: number[] }

function cutsArb(maxPiece: number): fc.Arbitrary<Cuts> {
  return fc.oneof(
    fc.constant<Cuts>({ kind: 'whole' }),
    fc.constant<Cuts>({ kind: 'bytes' }),
    fc
      .array(fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: maxPiece })), {
        minLength: 1,
        maxLength: 12,
      })
      .map((sizes): Cuts => ({ kind: 'sizes', sizes })),
  )
}

/** Calls visit(from, to) for each piece, in order; the pieces cover the stream. */
function eachPiece(length: number, cuts: Cuts, visit: (from: number, to: number) => void): void {
  if (cuts.kind === 'whole') return visit(0, length)
  if (cuts.kind === 'bytes') {
    for (let i = 0; i < length; i++) visit(i, i + 1)
    return
  }
  let off = 0
  let i = 0
  let idle = 0
  while (off < length) {
    const n = cuts.sizes[i++ % cuts.sizes.length]!
    const to = Math.min(length, off + n)
    visit(off, to)
    off = to
    if (n > 0) idle = 0
    else if (++idle > cuts.sizes.length) {
      visit(off, length) // only empty pushes in the list: finish in one piece
      off = length
    }
  }
}

/**
 * Pushes the stream in pieces and checks every step against the reference:
 * the frames out so far, `pending` (exactly the bytes after the last
 * complete frame, never more than was pushed nor limit + 5), the refusal in
 * exactly the push that completes a bad length, and the poisoning after it.
 */
function checkPushes(
  stream: Buffer,
  cuts: Cuts,
  limit: number,
  stats: FuzzStats,
): 'decoded' | 'refused' {
  const ref = referenceFrames(stream, limit)
  const d = new FrameDecoder(limit)
  let pushed = 0
  let out = 0
  let error: unknown
  let maxPending = 0
  eachPiece(stream.length, cuts, (from, to) => {
    if (error !== undefined) return
    const before = pushed
    pushed = to
    let frames: Frame[]
    try {
      frames = d.push(stream.subarray(from, to))
    } catch (e) {
      assertProtocolError(e, `push of bytes ${from}-${to}`)
      if (ref.errorAt === undefined || pushed < ref.errorAt || before >= ref.errorAt) {
        assert.fail(`refused bytes ${from}-${to}; the bad length is at ${ref.errorAt}`)
      }
      assert.equal(d.pending, 0, 'pending after an error')
      error = e
      return
    }
    if (ref.errorAt !== undefined && pushed >= ref.errorAt) {
      assert.fail(`accepted the bad length ending at ${ref.errorAt} (pushed ${pushed})`)
    }
    for (const f of frames) {
      const r = ref.frames[out++]
      if (!r) assert.fail(`frame #${out} is one too many`)
      if (f.code !== r.code || !f.data.equals(r.data)) {
        assert.fail(
          `frame #${out} differs: code ${f.code} of ${r.code}, ${f.data.length} B of ${r.data.length}`,
        )
      }
    }
    const next = ref.frames[out]
    if (next && next.end <= pushed)
      assert.fail(`frame #${out + 1} complete at ${next.end} but not out`)
    const lastEnd = out > 0 ? ref.frames[out - 1]!.end : 0
    if (d.pending !== pushed - lastEnd) assert.equal(d.pending, pushed - lastEnd, 'pending')
    if (d.pending > maxPending) maxPending = d.pending
  })
  assert.ok(maxPending <= limit + 5, `pending reached ${maxPending}`)
  if (maxPending > stats.maxPending.bytes)
    stats.maxPending = { bytes: maxPending, bound: limit + 5 }
  if (error !== undefined) {
    assert.throws(
      () => d.push(Buffer.of(0, 0, 0, 1, 0x63)),
      (e: unknown) => e === error,
    )
    return 'refused'
  }
  assert.ok(ref.errorAt === undefined || stream.length < ref.errorAt, 'bad length never refused')
  assert.equal(out, ref.frames.length, 'frames out')
  return 'decoded'
}

type Segment =
  | { kind: 'frame'; code: number; data: Buffer }
  | { kind: 'zero'; after: Buffer }
  | { kind: 'over'; by: number }
  | { kind: 'garbage'; bytes: Buffer }
  | { kind: 'short'; code: number; data: Buffer; missing: number }

const segment: fc.Arbitrary<Segment> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .tuple(codeByte, anyBytes(120))
      .map(([code, data]): Segment => ({ kind: 'frame', code, data })),
  },
  { weight: 1, arbitrary: anyBytes(3).map((after): Segment => ({ kind: 'zero', after })) },
  {
    weight: 1,
    arbitrary: fc
      .oneof(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 0x7fffffff }))
      .map((by): Segment => ({ kind: 'over', by })),
  },
  { weight: 1, arbitrary: anyBytes(12).map((bytes): Segment => ({ kind: 'garbage', bytes })) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(codeByte, anyBytes(20), fc.integer({ min: 1, max: 100 }))
      .map(([code, data, missing]): Segment => ({ kind: 'short', code, data, missing })),
  },
)

function segmentBytes(s: Segment, limit: number): Buffer {
  switch (s.kind) {
    case 'frame':
      return frame(s.code, s.data)
    case 'zero':
      return Buffer.concat([u32(0), s.after])
    case 'over':
      return u32(Math.min(0xffffffff, limit + 2 + s.by))
    case 'garbage':
      return s.bytes
    case 'short':
      return Buffer.concat([u32(s.data.length + 1 + s.missing), Buffer.of(s.code), s.data])
  }
}

/** A deterministic filler, so large inputs come from a seed, not a huge array. */
function filled(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size)
  let x = seed | 1
  for (let i = 0; i < size; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    b[i] = x & 0xff
  }
  return b
}

/** Small frames (0-300 B of data, codes at random) up to at least `size` bytes. */
function manyFrames(size: number, seed: number): Buffer {
  const pool = filled(Math.max(4096, size), seed)
  const parts: Buffer[] = []
  let total = 0
  for (let i = 0; total < size; i++) {
    const at = (i * 7919) % (pool.length - 301)
    const n = pool[at]! + (pool[at + 1]! % 46)
    const f = frame(pool[at + 2]!, pool.subarray(at + 3, at + 3 + n))
    parts.push(f)
    total += f.length
  }
  return Buffer.concat(parts)
}

/** Decodes in one piece or in 1-byte pieces, timing only the push calls. */
function timedDecode(
  stream: Buffer,
  limit: number,
  oneByte: boolean,
): { ns: number; frames: number } {
  const d = new FrameDecoder(limit)
  let frames = 0
  let ms = 0
  if (!oneByte) {
    const t = performance.now()
    frames = d.push(stream).length
    ms = performance.now() - t
  } else {
    const BLOCK = 65536
    for (let off = 0; off < stream.length; off += BLOCK) {
      const end = Math.min(stream.length, off + BLOCK)
      const pieces: Buffer[] = []
      for (let i = off; i < end; i++) pieces.push(stream.subarray(i, i + 1))
      const t = performance.now()
      for (const p of pieces) frames += d.push(p).length
      ms += performance.now() - t
    }
  }
  assert.equal(d.pending, 0, 'pending after the timed decode')
  return { ns: ms * 1e6, frames }
}

// ---------------------------------------------------------------------------
// The targets

const decodeAnyFrame = target(
  {
    name: 'decodeReply: any frame',
    what: 'every reply letter and any byte, payloads of u32/string/raw fields; checked against a reference layout, canonical re-encoding',
    share: 0.4,
    perMillion: 0,
    unitRuns: 5000,
  },
  codeByte.chain((code) =>
    fc.record({
      code: fc.constant(code),
      data: fc.oneof(payload, layoutPayload(LAYOUTS.get(code)?.layout ?? [])),
    }),
  ),
  ({ code, data }, stats) => {
    const spec = LAYOUTS.get(code)
    const shouldFit = spec !== undefined && fits(spec.layout, data)
    let reply: Reply
    try {
      reply = decodeReply({ code, data })
    } catch (e) {
      assertProtocolError(e, `decodeReply(0x${code.toString(16)})`)
      assert.ok(!shouldFit, `refused a well-formed ${spec?.kind} frame: ${String(e)}`)
      count(stats, 'decodeReply: any frame', 'refused')
      return
    }
    assert.ok(shouldFit, `accepted a malformed frame with code 0x${code.toString(16)}`)
    assert.equal(reply.kind, spec?.kind)
    count(stats, 'decodeReply: any frame', 'decoded')
    const bytes = frame(code, data)
    if (reply.kind !== 'optneg') {
      // strict layouts: a reply that decodes has exactly one encoding
      assert.ok(encodeReply(reply).equals(bytes), `re-encoding of ${reply.kind} differs`)
      return
    }
    const again = decodeReply(frameOf(encodeReply(reply)))
    assert.deepStrictEqual(again, { ...reply, symlistWarnings: [] })
  },
)

function frameOf(bytes: Buffer): Frame {
  assert.equal(bytes.readUInt32BE(0), bytes.length - 4)
  return { code: bytes[4]!, data: bytes.subarray(5) }
}

const decodeOptneg = target(
  {
    name: 'decodeReply: OPTNEG + symlist',
    what: 'version/actions/protocol words, symlist entries for known and unknown stages, any separators, truncated and unterminated tails, short payloads',
    share: 0.15,
    perMillion: 0,
    unitRuns: 3000,
  },
  optnegCase,
  (c, stats) => {
    const whole = Buffer.concat([
      u32(c.version),
      u32(c.actions),
      u32(c.protocol),
      ...c.entries.map((e) => Buffer.concat([u32(e.stage), cstr(entryText(e))])),
      c.tail.kind === 'none' ? Buffer.alloc(0) : c.tail.bytes,
    ])
    const data = c.cutTo === undefined ? whole : whole.subarray(0, c.cutTo)
    let reply: Reply
    try {
      reply = decodeReply({ code: Rep.OPTNEG, data })
    } catch (e) {
      assertProtocolError(e, 'decodeReply(OPTNEG)')
      assert.ok(data.length < 12, `refused an OPTNEG of ${data.length} bytes: ${String(e)}`)
      count(stats, 'decodeReply: OPTNEG + symlist', 'refused')
      return
    }
    assert.ok(data.length >= 12, `accepted an OPTNEG of ${data.length} bytes`)
    assert.equal(reply.kind, 'optneg')
    if (reply.kind !== 'optneg') return
    count(stats, 'decodeReply: OPTNEG + symlist', 'decoded')
    const model = optnegModel(c)
    assert.equal(reply.version, c.version)
    assert.equal(reply.actions, c.actions)
    assert.equal(reply.protocol, c.protocol)
    assert.deepStrictEqual(reply.symlist, model.symlist)
    assert.equal(reply.symlistWarnings.length, model.warnings, reply.symlistWarnings.join('; '))
    // normalised: encoding what was understood gives the same reply back, without warnings
    const again = decodeReply(frameOf(encodeReply(reply)))
    assert.deepStrictEqual(again, { ...reply, symlistWarnings: [] })
  },
)

/** One SMTP reply line, well-formed or not. */
const smtpLine: fc.Arbitrary<string> = fc
  .record({
    code: fc.oneof(
      fc.constantFrom('550', '554', '451', '421', '250', '999', '5', ''),
      fc.stringMatching(/^[0-9]{3}$/),
    ),
    sep: fc.constantFrom('-', ' ', ''),
    enhanced: fc.oneof(
      fc.constant(''),
      fc.constantFrom('5.7.1 ', '4.7.0 ', '2.0.0 ', '5.1.1\t'),
      fc.stringMatching(/^[0-9]\.[0-9]{1,4}\.[0-9]{1,4} $/),
    ),
    text: noNulBytes(40).map((b) => b.toString('latin1')),
  })
  .map(({ code, sep, enhanced, text }) => code + sep + enhanced + text)

type Ending = 'nul' | 'none' | 'trailing' | 'embedded'

const decodeReplyCode = target(
  {
    name: 'decodeReply: REPLYCODE',
    what: 'SMTP reply texts (multi-line, enhanced codes, %, CR/LF, any latin1) and raw bytes; terminated, unterminated, trailing bytes, embedded NUL',
    share: 0.15,
    perMillion: 0,
    unitRuns: 3000,
  },
  fc.record({
    text: fc.oneof(
      fc
        .tuple(fc.array(smtpLine, { minLength: 1, maxLength: 4 }), fc.boolean())
        .map(([lines, crlf]) => Buffer.from(lines.join('\r\n') + (crlf ? '\r\n' : ''), 'latin1')),
      noNulBytes(80),
    ),
    ending: fc.constantFrom<Ending>('nul', 'nul', 'none', 'trailing', 'embedded'),
    extra: noNulBytes(8),
  }),
  ({ text, ending, extra }, stats) => {
    const data =
      ending === 'nul'
        ? cstr(text)
        : ending === 'none'
          ? text
          : ending === 'trailing'
            ? Buffer.concat([cstr(text), extra, Buffer.of(0x20)])
            : Buffer.concat([cstr(text), cstr(extra)])
    let reply: Reply
    try {
      reply = decodeReply({ code: Rep.REPLYCODE, data })
    } catch (e) {
      assertProtocolError(e, 'decodeReply(REPLYCODE)')
      assert.notEqual(ending, 'nul', `refused a terminated REPLYCODE: ${String(e)}`)
      count(stats, 'decodeReply: REPLYCODE', 'refused')
      return
    }
    assert.equal(ending, 'nul', `accepted a REPLYCODE ending '${ending}'`)
    assert.equal(reply.kind, 'replycode')
    if (reply.kind !== 'replycode') return
    count(stats, 'decodeReply: REPLYCODE', 'decoded')
    assert.ok(reply.text.equals(text), 'text differs')
    assert.ok(encodeReply(reply).equals(frame('y', data)), 're-encoding differs')
  },
)

const roundTrip = target(
  {
    name: 'encodeReply -> FrameDecoder -> decodeReply',
    what: 'every reply kind as a value: encodeReply matches the independent byte builders; decoded through a FrameDecoder cut anywhere, the value comes back',
    share: 0.15,
    perMillion: 0,
    unitRuns: 3000,
  },
  fc.record({ replies: fc.array(anyReply, { minLength: 1, maxLength: 4 }), cuts: cutsArb(64) }),
  ({ replies, cuts }, stats) => {
    const encoded = replies.map((r) => {
      const bytes = encodeReply(r)
      assert.ok(bytes.equals(independentEncoding(r)), `encodeReply(${r.kind}) bytes differ`)
      return bytes
    })
    const stream = Buffer.concat(encoded)
    const d = new FrameDecoder()
    const frames: Frame[] = []
    eachPiece(stream.length, cuts, (from, to) => frames.push(...d.push(stream.subarray(from, to))))
    assert.equal(d.pending, 0)
    assert.equal(frames.length, replies.length)
    frames.forEach((f, i) => assert.deepStrictEqual(decodeReply(f), replies[i]))
    count(stats, 'encodeReply -> FrameDecoder -> decodeReply', 'decoded')
  },
)

const frameStreams = target(
  {
    name: 'FrameDecoder: byte streams',
    what: 'frames, length 0, over-limit lengths, garbage and truncated frames, cut whole / in 1-byte pieces / at random sizes incl. empty pushes; checked push by push against a reference',
    share: 0.15,
    perMillion: 0,
    unitRuns: 2000,
  },
  fc.record({
    limit: fc.constantFrom(MDS_1M, DEFAULT_MAX_FRAME_DATA),
    segments: fc.array(segment, { maxLength: 12 }),
    cuts: cutsArb(200),
  }),
  ({ limit, segments, cuts }, stats) => {
    const stream = Buffer.concat(segments.map((s) => segmentBytes(s, limit)))
    const outcome = checkPushes(stream, cuts, limit, stats)
    // identical frames whatever the cutting: the same bytes pushed whole
    if (cuts.kind !== 'whole')
      assert.equal(checkPushes(stream, { kind: 'whole' }, limit, stats), outcome)
    count(stats, 'FrameDecoder: byte streams', outcome)
  },
)

/** Large FrameDecoder inputs: one frame of up to maxSize bytes, or many small frames. */
export function largeFrames(maxSize: number, unitRuns: number): FuzzTarget {
  const name = 'FrameDecoder: large inputs'
  return target(
    {
      name,
      what: `one frame of 0.5-${(maxSize / 2 ** 20).toFixed(0)} MiB (edges around 1 MiB and the limit) or many small frames, cut whole / in 1-byte pieces / at sizes up to 70000; timed whole and in 1-byte pieces`,
      share: 0,
      perMillion: 40,
      unitRuns,
    },
    fc.record({
      shape: fc.constantFrom('one-frame', 'one-frame', 'many-frames'),
      size: fc.oneof(
        fc.constantFrom(MDS_1M - 1, MDS_1M, MDS_1M + 1, MDS_1M + 2),
        fc.integer({ min: 512 * 1024, max: maxSize }),
      ),
      seed: fc.integer({ min: 1, max: 0x7fffffff }),
      limit: fc.constantFrom(MDS_1M, DEFAULT_MAX_FRAME_DATA),
      cuts: fc.oneof(
        fc.constant<Cuts>({ kind: 'bytes' }),
        fc.constant<Cuts>({ kind: 'whole' }),
        fc
          .array(fc.integer({ min: 0, max: 70000 }), { minLength: 1, maxLength: 8 })
          .map((sizes): Cuts => ({ kind: 'sizes', sizes })),
      ),
    }),
    ({ shape, size, seed, limit, cuts }, stats) => {
      const stream =
        shape === 'one-frame'
          ? Buffer.concat([frame('b', filled(size, seed)), frame('c')])
          : manyFrames(size, seed)
      const outcome = checkPushes(stream, cuts, limit, stats)
      count(stats, name, outcome)
      if (outcome !== 'decoded' || cuts.kind === 'sizes') return
      const t = timedDecode(stream, limit, cuts.kind === 'bytes')
      assert.equal(t.frames, referenceFrames(stream, limit).frames.length)
      const perByte = t.ns / stream.length
      if (cuts.kind === 'bytes') stats.oneByteNsPerByte.push(perByte)
      else stats.onePieceNsPerByte.push(perByte)
    },
  )
}

/**
 * Fixed timing probes, so every run prints comparable figures: 4 MiB as one
 * REPLBODY frame and as small frames, each decoded in 1-byte pieces and in
 * one piece.
 */
export function timingProbes(stats: FuzzStats): void {
  const size = 4 * 1024 * 1024
  const streams = [Buffer.concat([frame('b', filled(size, 1)), frame('c')]), manyFrames(size, 2)]
  for (const stream of streams) {
    const expected = referenceFrames(stream, DEFAULT_MAX_FRAME_DATA).frames.length
    for (const oneByte of [true, false]) {
      const t = timedDecode(stream, DEFAULT_MAX_FRAME_DATA, oneByte)
      assert.equal(t.frames, expected)
      ;(oneByte ? stats.oneByteNsPerByte : stats.onePieceNsPerByte).push(t.ns / stream.length)
    }
  }
}

/** Every target of the full run, in order. */
export function allTargets(largeMaxSize = 6 * 1024 * 1024): FuzzTarget[] {
  return [
    decodeAnyFrame,
    decodeOptneg,
    decodeReplyCode,
    roundTrip,
    frameStreams,
    largeFrames(largeMaxSize, 4),
  ]
}
