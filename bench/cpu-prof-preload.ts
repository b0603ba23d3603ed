/**
 * `node --cpu-prof` for processes whose command line the bench does not own (Haraka, started by
 * test/helpers/haraka.ts): Node refuses --cpu-prof in NODE_OPTIONS, so the bench passes
 * `NODE_OPTIONS=--require <this file>` and BENCH_CPU_PROF_DIR. The V8 profiler starts at
 * once; at exit (Haraka exits through process.exit() on SIGINT) the profile is written to
 * BENCH_CPU_PROF_DIR/<BENCH_CPU_PROF_NAME or haraka>-<pid>.cpuprofile, the format `node --cpu-prof`
 * writes (the bench names each file after its variant).
 */
import * as fs from 'node:fs'
import * as inspector from 'node:inspector'
import * as path from 'node:path'

const dir = process.env['BENCH_CPU_PROF_DIR']
// a file name part: the variant, without what a file name cannot hold
const name = (process.env['BENCH_CPU_PROF_NAME'] ?? 'haraka').replace(/[^\w.@+-]/g, '_')
if (dir) {
  const session = new inspector.Session()
  session.connect()
  session.post('Profiler.enable')
  // 1 ms, as --cpu-prof-interval's default
  session.post('Profiler.setSamplingInterval', { interval: 1000 })
  session.post('Profiler.start')
  process.on('exit', () => {
    // an in-process session answers synchronously, so this completes inside 'exit'
    session.post('Profiler.stop', (err, res) => {
      if (err) return
      fs.mkdirSync(dir, { recursive: true })
      fs.writeFileSync(
        path.join(dir, `${name}-${process.pid}.cpuprofile`),
        JSON.stringify(res.profile),
      )
    })
  })
}
