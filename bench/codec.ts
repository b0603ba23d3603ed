/** 1. Codec: FrameDecoder on mixed reply streams cut at random points, the encoders, decodeReply. */
import { encodeBody, encodeHeader } from '../lib/protocol/commands'
import { MacroStage } from '../lib/protocol/constants'
import { FrameDecoder, type Frame } from '../lib/protocol/frame'
import { decodeReply, encodeReply, type Reply } from '../lib/protocol/replies'
import type { Options } from './args'
import { fmt, n, record } from './report'
import { MB, REPLBODY_SOURCE, b, between, blackhole, prng, rate, textBlock } from './stats'

/** One reply drawn from a mix that looks like real milter traffic. */
function mixedReply(rng: () => number): Reply {
  const r = rng()
  if (r < 0.55) return { kind: 'continue' }
  if (r < 0.6) return { kind: 'progress' }
  if (r < 0.7) return { kind: 'addheader', name: b('X-Spam-Score'), value: b('2.3 (bayes 0.41)') }
  if (r < 0.74)
    return {
      kind: 'insheader',
      index: 1,
      name: b('Authentication-Results'),
      value: b('mx.example.org; dkim=pass header.d=example.com header.s=sel1 header.b=AbCdEf12'),
    }
  if (r < 0.78) return { kind: 'chgheader', index: 1, name: b('Subject'), value: b('[SPAM] hi') }
  if (r < 0.8) return { kind: 'replycode', text: b('550 5.7.1 Message rejected by policy') }
  if (r < 0.82) return { kind: 'quarantine', reason: b('suspicious attachment') }
  if (r < 0.84)
    return { kind: 'addrcpt_par', rcpt: b('<archive@example.org>'), args: b('NOTIFY=NEVER') }
  if (r < 0.86) return { kind: 'chgfrom', sender: b('<bounce@example.org>'), args: b('SIZE=2048') }
  if (r < 0.88) return { kind: 'delrcpt', rcpt: b('<bob@example.net>') }
  if (r < 0.89) return OPTNEG_REPLY
  if (r < 0.97) {
    const kinds = ['accept', 'reject', 'tempfail', 'discard', 'skip'] as const
    return { kind: kinds[Math.floor(rng() * kinds.length)] ?? 'accept' }
  }
  return { kind: 'replbody', chunk: REPLBODY_SOURCE.subarray(0, between(rng, 1, 65535)) }
}

export const OPTNEG_REPLY: Reply = {
  kind: 'optneg',
  version: 6,
  actions: 0x1ff,
  protocol: 0x1fffff & ~0x800,
  symlist: new Map([
    [MacroStage.CONNECT, ['j', '{client_addr}', '{client_name}']],
    [MacroStage.ENVFROM, ['i', '{auth_authen}', '{mail_addr}']],
    [MacroStage.EOM, ['{msg_id}']],
  ]),
  symlistWarnings: [],
}

interface Stream {
  bytes: Buffer
  frames: number
}

function buildStream(n: number, make: (rng: () => number) => Reply, seed: number): Stream {
  const rng = prng(seed)
  const parts: Buffer[] = []
  for (let i = 0; i < n; i++) parts.push(encodeReply(make(rng)))
  return { bytes: Buffer.concat(parts), frames: n }
}

/** The stream as chunks cut at random points, sizes uniform in [lo, hi]. */
function cut(stream: Buffer, lo: number, hi: number, seed: number): Buffer[] {
  const rng = prng(seed)
  const out: Buffer[] = []
  for (let off = 0; off < stream.length;) {
    const n = Math.min(between(rng, lo, hi), stream.length - off)
    out.push(stream.subarray(off, off + n))
    off += n
  }
  return out
}

function decodeAll(chunks: readonly Buffer[], expect: number): number {
  const dec = new FrameDecoder()
  let n = 0
  for (const c of chunks) {
    const frames = dec.push(c)
    n += frames.length
    for (const f of frames) blackhole.value += f.code
  }
  if (n !== expect || dec.pending !== 0)
    throw new Error(`FrameDecoder returned ${n} frames of ${expect} (${dec.pending} pending)`)
  return n
}

function benchDecoder(
  label: string,
  stream: Stream,
  lo: number,
  hi: number,
  what: string,
  o: Options,
): void {
  const chunks = cut(stream.bytes, lo, hi, 42)
  const r = rate(() => decodeAll(chunks, stream.frames), o.minMs)
  const runs = r.ops / stream.frames
  const mbps = ((runs * stream.bytes.length) / MB / r.ms) * 1000
  const desc =
    `${n(stream.frames)} ${what} (${fmt(stream.bytes.length / MB)} MB) in ` +
    `${n(chunks.length)} chunks of ${n(lo)}-${n(hi)} B, decoded ${n(runs)}x in ${fmt(r.ms)} ms`
  record('codec', `FrameDecoder, ${label}`, r.perSec, 'frames/s', desc)
  record('codec', `FrameDecoder, ${label}`, mbps, 'MB/s', desc)
}

export function codecSection(o: Options): void {
  const mixedN = o.quick ? 5000 : 20000
  const mixed = buildStream(mixedN, mixedReply, 1)
  const mixWhat = 'mixed replies (55% CONTINUE, headers, rcpt/from edits, 3% REPLBODY 1-65535 B)'
  benchDecoder('mixed, socket-sized cuts', mixed, 1, 65536, mixWhat, o)
  const tiny = buildStream(o.quick ? 1000 : 3000, mixedReply, 2)
  benchDecoder('mixed, tiny cuts', tiny, 1, 64, mixWhat, o)
  const bodyStream = buildStream(
    o.quick ? 100 : 400,
    () => ({ kind: 'replbody', chunk: REPLBODY_SOURCE }),
    3,
  )
  benchDecoder('REPLBODY 65535 B', bodyStream, 1, 65536, 'REPLBODY frames of 65535 B', o)

  // encoders
  const name = 'Subject'
  const value = b('Quarterly report: figures for the third quarter, final version')
  const hdr = rate(() => {
    for (let i = 0; i < 10000; i++) blackhole.value += encodeHeader(name, value).length
    return 10000
  }, o.minMs)
  record(
    'codec',
    'encodeHeader',
    hdr.perSec,
    'packets/s',
    `encodeHeader('Subject', ${value.length}-byte Buffer): ${n(hdr.ops)} packets in ${fmt(hdr.ms)} ms`,
  )
  for (const size of [65535, 2048]) {
    const chunk = textBlock(size, 5)
    const per = size > 10000 ? 200 : 5000
    const r = rate(() => {
      for (let i = 0; i < per; i++) blackhole.value += encodeBody(chunk).length
      return per
    }, o.minMs)
    const desc = `encodeBody(${size}-byte chunk), frame allocated and payload copied each time: ${n(r.ops)} packets in ${fmt(r.ms)} ms`
    record('codec', `encodeBody ${size} B`, r.perSec, 'packets/s', desc)
    record('codec', `encodeBody ${size} B`, (r.perSec * size) / MB, 'MB/s', desc)
  }

  // decodeReply
  const frames: Frame[] = new FrameDecoder().push(mixed.bytes)
  const mixedDec = rate(() => {
    for (const f of frames) blackhole.value += decodeReply(f).kind.length
    return frames.length
  }, o.minMs)
  record(
    'codec',
    'decodeReply, mixed',
    mixedDec.perSec,
    'replies/s',
    `decodeReply over the ${n(frames.length)} frames of the mixed stream: ${n(mixedDec.ops)} replies in ${fmt(mixedDec.ms)} ms`,
  )
  const one = (label: string, reply: Reply): void => {
    const [f] = new FrameDecoder().push(encodeReply(reply))
    if (!f) throw new Error('no frame')
    const r = rate(() => {
      for (let i = 0; i < 10000; i++) blackhole.value += decodeReply(f).kind.length
      return 10000
    }, o.minMs)
    record(
      'codec',
      `decodeReply, ${label}`,
      r.perSec,
      'replies/s',
      `decodeReply of one ${label} frame (${f.data.length} B payload), repeated ${n(r.ops)}x`,
    )
  }
  one('CONTINUE', { kind: 'continue' })
  one('ADDHEADER', { kind: 'addheader', name: b('X-Spam-Score'), value: b('2.3 (bayes 0.41)') })
  one('OPTNEG+symlist', OPTNEG_REPLY)
}
