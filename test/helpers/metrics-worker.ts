/**
 * A cluster worker for the metrics tests (forked by the test, which is the
 * cluster primary): `answer` records two messages of milter `one` and
 * answers the primary's metrics requests, as a Haraka worker with metrics
 * does; `silent` never answers, as a worker stuck in a long task would not.
 * Says `ready` to the primary; stays up until killed.
 */
import { answerMaster } from '../../lib/metrics/cluster'
import { MilterMetrics } from '../../lib/metrics/recorder'
import { report } from '../unit/metrics/reports'

if (process.argv[2] === 'answer') {
  const m = new MilterMetrics()
  m.record([report('one', 2), report('one', 3)])
  answerMaster(() => m.registry.getMetricsAsJSON())
}
process.send?.('ready')
setInterval(() => undefined, 60_000)
