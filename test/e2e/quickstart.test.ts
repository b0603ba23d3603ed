/**
 * `npm start` (test/run-haraka.js), the quick start, as a smoke test: the
 * script itself, on free ports, with the demo's own Node.js milter
 * (DEMO_MILTER=node: no python3-milter needed), its Haraka directory and
 * mail in a temporary DEMO_RUN_DIR, and DEMO_ONCE=1 so it stops after its
 * test message. The message must be delivered carrying the demo milter's
 * headers. Bounded in time; every process the script started is stopped
 * (by the script, and by pid here if it did not).
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { freePort, REPO_ROOT } from '../helpers/paths'

const SCRIPT = path.join(REPO_ROOT, 'test', 'run-haraka.js')
const BOUND_MS = 45000

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('npm start (test/run-haraka.js) smoke test', function () {
  this.timeout(BOUND_MS + 15000)
  let runDir: string
  let child: ChildProcess | undefined
  /** The pids the script reported (demo milter, Haraka), killed here if still alive. */
  const pids: number[] = []

  before(() => {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-quickstart-'))
  })

  after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM') // the script stops its children on SIGTERM
      await new Promise((r) => setTimeout(r, 3000))
      child.kill('SIGKILL')
    }
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL')
    fs.rmSync(runDir, { recursive: true, force: true })
  })

  it('delivers its test message with the demo milter’s headers, then stops everything (DEMO_ONCE=1)', async () => {
    const env = {
      ...process.env,
      HARAKA_PORT: String(await freePort()),
      DEMO_MILTER_PORT: String(await freePort()),
      DEMO_MILTER: 'node',
      DEMO_RUN_DIR: runDir,
      DEMO_ONCE: '1',
    }
    const c = spawn(process.execPath, [SCRIPT], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child = c
    let stderr = ''
    c.stdout?.resume() // Haraka's log, passed through
    c.stderr?.setEncoding('utf8')
    c.stderr?.on('data', (d: string) => {
      stderr += d
      for (const m of d.matchAll(/\(pid (\d+)\)|Haraka pid (\d+)/g)) pids.push(Number(m[1] ?? m[2]))
    })
    const code = await new Promise<number | null>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`not done within ${BOUND_MS} ms:\n${stderr}`)),
        BOUND_MS,
      )
      c.on('exit', (exitCode) => {
        clearTimeout(timer)
        resolve(exitCode)
      })
    })
    assert.equal(code, 0, stderr)
    assert.match(
      stderr,
      /demo milter running on inet:\d+@127\.0\.0\.1 \(pid \d+\): demo\/milter\.js/,
    )
    assert.match(stderr, /DEMO_ONCE: delivered with the milter header, stopping/)
    assert.equal(pids.length, 2, `the milter's and Haraka's pids: ${stderr}`)

    const mail = fs.readdirSync(path.join(runDir, 'mail')).filter((f) => f.endsWith('.eml'))
    assert.equal(mail.length, 1)
    const text = fs.readFileSync(path.join(runDir, 'mail', mail[0]!), 'utf8')
    const header = text.slice(
      0,
      text.indexOf('\r\n\r\n') >= 0 ? text.indexOf('\r\n\r\n') : text.indexOf('\n\n'),
    )
    assert.match(header, /^X-Milter-Demo: added by the demo milter\r?$/m)
    assert.match(header, /^X-Milter-Demo-First: /, 'inserted at the top')
    assert.match(header, /^Subject: npm start test message\r?$/m)

    // nothing the script started is left running
    const end = Date.now() + 10000
    while (pids.some(alive) && Date.now() < end) await new Promise((r) => setTimeout(r, 100))
    assert.deepEqual(pids.filter(alive), [], 'the demo milter and Haraka have exited')
  })
})
