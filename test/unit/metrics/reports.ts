/**
 * Per-message reports for the metrics tests, made by the chain's own
 * collector (MilterReports) so that they carry every field a real one has.
 */
import { parseMilterConfig } from '../../../lib/config'
import { MilterReports, type MilterReport } from '../../../lib/policy/milter-reports'
import type { Stage } from '../../../lib/policy/stage'
import type { Verdict } from '../../../lib/session/types'

export const CFG = parseMilterConfig({
  main: { milters: 'one two' },
  'milter.one': { socket: 'inet:1@127.0.0.1' },
  'milter.two': { socket: 'inet:2@127.0.0.1' },
})

/** One milter's report of a message answered at end of message after `waitMs`. */
export function report(
  milter: 'one' | 'two',
  waitMs: number,
  then: { verdict?: Verdict; failure?: { stage: Stage; code: string } } = {},
): MilterReport {
  const def = CFG.milters.get(milter)
  if (!def) throw new Error(`no milter ${milter}`)
  const r = new MilterReports()
  r.waited(def, 'eom', waitMs)
  if (then.verdict) r.verdict(def, 'eom', then.verdict)
  if (then.failure) r.failure(def, then.failure.stage, then.failure.code, 'accept')
  const [out] = r.take([def])
  if (!out) throw new Error('no report')
  return out
}
