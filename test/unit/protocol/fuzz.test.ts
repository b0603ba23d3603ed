/**
 * The fuzz properties of test/fuzz/properties.ts, a few thousand cases each
 * with a fixed seed, so `npm run check` runs them. `npm run fuzz` runs the
 * same properties a million times and more.
 */
import { allTargets, newStats } from '../../fuzz/properties'

const SEED = 0x6d696c74

describe('fuzz (fast-check, fixed seed)', function () {
  // the large-input target pushes a few MiB one byte at a time
  this.timeout(60_000)
  const stats = newStats()
  for (const t of allTargets(2 * 1024 * 1024)) {
    it(`${t.name}: ${t.unitRuns} cases`, () => {
      t.assert(stats, t.unitRuns, SEED)
    })
  }
})
