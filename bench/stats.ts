/** Small tools shared by the benchmarks: numbers, test data, timing, memory sampling. */
import { performance } from 'node:perf_hooks'
import * as v8 from 'node:v8'
import * as vm from 'node:vm'
import { isMainThread } from 'node:worker_threads'

export const MB = 1e6
export const MiB = 1024 * 1024

export const b = (s: string): Buffer => Buffer.from(s, 'latin1')

/** Deterministic PRNG (mulberry32), so every run cuts the streams the same way. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Integer in [lo, hi]. */
export function between(rng: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo + 1))
}

/** Text of `bytes` bytes: 76 letters and spaces, CRLF, repeated. */
export function textBlock(bytes: number, seed = 1): Buffer {
  const rng = prng(seed)
  const out = Buffer.allocUnsafe(bytes)
  let col = 0
  for (let i = 0; i < bytes; i++) {
    if (col === 76) {
      out[i] = 0x0d
      col++
    } else if (col === 77) {
      out[i] = 0x0a
      col = 0
    } else {
      out[i] = rng() < 0.15 ? 0x20 : 0x61 + Math.floor(rng() * 26)
      col++
    }
  }
  return out
}

/** The q-quantile (0..1) of ascending `sorted` (nearest rank). */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]!
}

/** Median of the finite values (mean of the middle two for an even count); NaN if none. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((x, y) => x - y)
  if (v.length === 0) return NaN
  const mid = v.length >> 1
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2
}

/** (max - min) / median of the finite values, as a fraction; NaN for fewer than two. */
export function spread(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x))
  if (v.length < 2) return NaN
  return (Math.max(...v) - Math.min(...v)) / median(v)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A gc() function: --expose-gc if given, else enabled at run time; undefined if impossible. */
function findGc(): (() => void) | undefined {
  const g: unknown = (globalThis as { gc?: unknown }).gc
  if (typeof g === 'function') return g as () => void
  try {
    v8.setFlagsFromString('--expose-gc')
    const fn: unknown = vm.runInNewContext('gc')
    if (typeof fn === 'function') return fn as () => void
  } catch {
    // not available
  }
  return undefined
}

export const gc = isMainThread ? findGc() : undefined

export async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc?.()
    await sleep(20)
  }
}

export function rss(): number {
  return process.memoryUsage.rss()
}

export interface MemPeak {
  /** Peak RSS minus RSS at the start. */
  growth: number
  base: number
  /** Peak minus start of the memory held by Buffers/ArrayBuffers (live or not yet collected). */
  buffersGrowth: number
}

/** Samples RSS and Buffer memory every 10 ms; stop() returns the peak growth over the start. */
export class RssSampler {
  private readonly start = process.memoryUsage()
  private peak = this.start.rss
  private peakBuffers = this.start.arrayBuffers
  private readonly timer = setInterval(() => this.sample(), 10)

  sample(): void {
    const m = process.memoryUsage()
    if (m.rss > this.peak) this.peak = m.rss
    if (m.arrayBuffers > this.peakBuffers) this.peakBuffers = m.arrayBuffers
  }

  stop(): MemPeak {
    clearInterval(this.timer)
    this.sample()
    return {
      growth: this.peak - this.start.rss,
      base: this.start.rss,
      buffersGrowth: this.peakBuffers - this.start.arrayBuffers,
    }
  }
}

/** Runs `run` (which returns the number of operations it did) until minMs passed; ops/s. */
export function rate(
  run: () => number,
  minMs: number,
): { perSec: number; ops: number; ms: number } {
  run() // warm-up
  let ops = 0
  let rounds = 0
  const t0 = performance.now()
  let t = t0
  while (t - t0 < minMs || rounds < 3) {
    ops += run()
    rounds++
    t = performance.now()
  }
  const ms = t - t0
  return { perSec: (ops / ms) * 1000, ops, ms }
}

/** Keeps results alive so the JIT cannot drop the work. */
export const blackhole = { value: 0 }

/** 65535 bytes of text: the payload of the REPLBODY frames the benchmarks use. */
export const REPLBODY_SOURCE = textBlock(65535, 7)
