/**
 * The gauges' figures from the pool and the configuration: every configured
 * endpoint appears (0 sessions, up) until something happens to it.
 */
import type { MilterConfig } from '../config'
import type { MilterPool } from '../pool'
import type { GaugeFigures } from './recorder'

export function poolFigures(
  cfg: MilterConfig | undefined,
  pool: MilterPool | undefined,
): GaugeFigures {
  const out: GaugeFigures = { open: [], pooled: [], endpoints: [] }
  const open = new Map<string, number>()
  for (const c of pool?.live.counts() ?? []) open.set(`${c.milter}|${c.endpoint}`, c.open)
  const idle = pool?.idleByMilter() ?? new Map<string, number>()
  for (const def of cfg?.milters.values() ?? []) {
    for (const ep of def.endpoints) {
      const key = `${def.name}|${ep.text}`
      out.open.push({ milter: def.name, endpoint: ep.text, open: open.get(key) ?? 0 })
      open.delete(key)
      const up = (pool?.breakerState(def.name, ep.text) ?? 'closed') === 'closed'
      out.endpoints.push({ milter: def.name, endpoint: ep.text, up })
    }
    out.pooled.push({ milter: def.name, pooled: idle.get(def.name) ?? 0 })
  }
  // sessions of milters or endpoints a reload removed, still open
  for (const [key, n] of open) {
    const i = key.indexOf('|')
    out.open.push({ milter: key.slice(0, i), endpoint: key.slice(i + 1), open: n })
  }
  return out
}
