/**
 * The package as an operator installs it: `npm pack` tarball and git URL
 * (`git+file://`), each into a fresh Haraka directory made by `haraka -i`,
 * with `milter` added to config/plugins before the queue plugin and a real
 * libmilter filter (test/milters/scripted.py) configured. Haraka is started,
 * a message goes in over SMTP and must arrive at a real receiving server
 * (test/helpers/sink.ts) with the milter's header. `haraka-milter --help`
 * must run from the installed bin.
 *
 * What is packed and cloned is a snapshot of this working tree (tracked and
 * untracked files that .gitignore does not exclude), committed to a scratch
 * git repository, so the test checks the code as it is, not the last commit.
 */
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
} from '../helpers/milter-process'
import { HARAKA_BIN, REPO_ROOT, freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { sendMailTo } from '../helpers/smtp-client'

const PACKAGE = 'haraka-plugin-milter'
const MILTER_HEADER = 'X-Milter-Install-Test'

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * The environment for nested npm and git runs: without the npm_* variables
 * that `npm test` sets for its own package, which would leak into them.
 */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^npm_/i.test(k)) env[k] = v
  }
  return {
    ...env,
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    npm_config_loglevel: 'warn',
  }
}

function run(cmd: string, args: string[], cwd: string, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { cwd, env: cleanEnv(), timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0
        resolve({ code, stdout, stderr })
      },
    )
  })
}

async function mustRun(cmd: string, args: string[], cwd: string): Promise<Run> {
  const r = await run(cmd, args, cwd)
  assert.equal(
    r.code,
    0,
    `${cmd} ${args.join(' ')} (in ${cwd}) failed with ${String(r.code)}:\n${r.stdout}\n${r.stderr}`,
  )
  return r
}

/** This working tree, minus what git ignores, as a one-commit git repository at `dest`. */
async function snapshot(dest: string): Promise<void> {
  const list = await mustRun(
    'git',
    ['ls-files', '-z', '--cached', '--others', '--exclude-standard'],
    REPO_ROOT,
  )
  fs.mkdirSync(dest, { recursive: true })
  for (const rel of list.stdout.split('\0').filter(Boolean)) {
    const from = path.join(REPO_ROOT, rel)
    if (!fs.existsSync(from)) continue // deleted in the working tree
    fs.mkdirSync(path.dirname(path.join(dest, rel)), { recursive: true })
    fs.copyFileSync(from, path.join(dest, rel))
  }
  await mustRun('git', ['init', '-q'], dest)
  await mustRun('git', ['add', '-A'], dest)
  await mustRun(
    'git',
    [
      '-c',
      'user.name=install test',
      '-c',
      'user.email=install@test',
      'commit',
      '-q',
      '-m',
      'snapshot',
    ],
    dest,
  )
}

interface Haraka {
  child: ChildProcess
  log: () => string
  stop: () => Promise<void>
}

/** `haraka -c dir`, resolved once Haraka logs that it listens on `address`. */
async function startHarakaIn(dir: string, address: string): Promise<Haraka> {
  const logFile = path.join(dir, 'haraka.log')
  const fd = fs.openSync(logFile, 'a')
  const child = spawn(process.execPath, [HARAKA_BIN, '-c', dir], {
    cwd: dir,
    env: cleanEnv(),
    stdio: ['ignore', fd, fd],
  })
  fs.closeSync(fd)
  const log = (): string => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '')
  let exited = false
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true
      resolve()
    }),
  )
  const stop = async (): Promise<void> => {
    if (!exited && child.pid !== undefined) {
      process.kill(child.pid, 'SIGTERM')
      const timer = setTimeout(() => {
        if (!exited && child.pid !== undefined) process.kill(child.pid, 'SIGKILL')
      }, 3000)
      await exit
      clearTimeout(timer)
    }
  }
  const deadline = Date.now() + 20_000
  while (!log().includes(`Listening on ${address}`)) {
    if (exited || Date.now() > deadline) {
      await stop()
      assert.fail(`Haraka in ${dir} did not start listening on ${address}:\n${log()}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return { child, log, stop }
}

describe('install: npm pack tarball and git URL into a fresh Haraka (real milter, real SMTP)', function () {
  // two npm installs (the git one installs devDependencies to build), two Haraka starts
  this.timeout(180_000)

  let work: string
  let src: string
  let tarball: string
  let packedFiles: string[]
  let sink: Sink
  let milterSocket: string
  const harakas: Haraka[] = []

  before(async function () {
    assertPymilterInstalled()
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-install-'))
    src = path.join(work, 'src')
    await snapshot(src)
    // npm pack runs prepack (clean) and prepare (the runtime build), which needs the
    // devDependencies: borrow this checkout's node_modules (after the snapshot commit,
    // so the link is not part of what the git URL install clones)
    fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(src, 'node_modules'), 'dir')
    const packed = await mustRun('npm', ['pack', '--json', '--pack-destination', work], src)
    const info = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as Array<{
      filename: string
      files: Array<{ path: string }>
    }>
    assert.ok(info[0], packed.stdout)
    tarball = path.join(work, info[0].filename)
    packedFiles = info[0].files.map((f) => f.path).sort()
    sink = await startSink()
    const milter = await startScriptedMilter({
      eom: [{ op: 'addheader', name: MILTER_HEADER, value: 'edited by scripted.py' }],
    })
    milterSocket = milter.socket
  })

  after(async function () {
    for (const h of harakas) await h.stop()
    await stopAllMilters()
    await sink?.stop()
    if (work && !process.env['KEEP_INSTALL_DIR']) fs.rmSync(work, { recursive: true, force: true })
  })

  it('the tarball holds only what runs: plugin, lib, CLI, default config, README, LICENSE, types', function () {
    for (const f of [
      'LICENSE',
      'README.md',
      'package.json',
      'config/milter.ini',
      'dist/plugins/milter.js',
      'dist/plugins/milter.d.ts',
      'dist/bin/haraka-milter.js',
      'dist/lib/config.js',
    ])
      assert.ok(packedFiles.includes(f), `${f} is in the tarball`)
    const unwanted = packedFiles.filter(
      (f) =>
        f.endsWith('.map') ||
        f.endsWith('.ts') !== f.endsWith('.d.ts') ||
        !/^(dist\/(plugins|lib|bin)\/|config\/milter\.ini$|README\.md$|LICENSE$|package\.json$)/.test(
          f,
        ),
    )
    assert.deepEqual(unwanted, [], 'nothing else (no tests, bench, sources or source maps)')
    for (const f of packedFiles.filter((x) => x.endsWith('.js')))
      assert.doesNotMatch(
        fs.readFileSync(path.join(src, f), 'utf8'),
        /sourceMappingURL/,
        `${f} points to no source map`,
      )
  })

  const paths: Array<[string, () => string]> = [
    ['npm pack tarball', () => tarball],
    ['git+file:// URL', () => `git+file://${src}`],
  ]
  for (const [title, spec] of paths) {
    it(`${title}: haraka -i, npm install, milter in config/plugins, mail delivered with the milter's edit`, async function () {
      const dir = path.join(work, title.replace(/\W+/g, '-'))
      await mustRun(process.execPath, [HARAKA_BIN, '-i', dir], work)
      const install = await run('npm', ['install', '--prefer-offline', spec()], dir)
      assert.equal(install.code, 0, `npm install ${spec()}:\n${install.stdout}\n${install.stderr}`)
      const pkgDir = path.join(dir, 'node_modules', PACKAGE)
      assert.ok(
        fs.existsSync(path.join(pkgDir, 'dist', 'plugins', 'milter.js')),
        `${pkgDir}/dist/plugins/milter.js was installed`,
      )
      assert.ok(!fs.existsSync(path.join(pkgDir, 'dist', 'test')), 'no dist/test installed')

      // the CLI, from the bin npm linked
      const help = await run(
        path.join(dir, 'node_modules', '.bin', 'haraka-milter'),
        ['--help'],
        dir,
      )
      assert.equal(help.code, 0, help.stderr)
      assert.match(help.stdout, /^usage: haraka-milter check --milter SOCKET/)

      // the operator's steps: milter before the queue plugin, a milter.ini, delivery to the sink
      const port = await freePort()
      const cfg = (name: string): string => path.join(dir, 'config', name)
      const plugins = fs.readFileSync(cfg('plugins'), 'utf8').split('\n')
      const queueAt = plugins.findIndex((l) => l.trim() === 'queue/smtp_forward')
      assert.ok(queueAt > 0, 'haraka -i lists queue/smtp_forward')
      plugins.splice(queueAt, 0, 'milter')
      fs.writeFileSync(
        cfg('plugins'),
        plugins
          // no DNS here: the sender domain cannot be resolved
          .map((l) => (l.trim() === 'mail_from.is_resolvable' ? `# ${l}` : l))
          .join('\n'),
      )
      fs.writeFileSync(cfg('smtp.ini'), `listen=127.0.0.1:${port}\nnodes=0\n`)
      fs.writeFileSync(cfg('host_list'), 'example.com\n')
      fs.writeFileSync(cfg('me'), 'install.test\n')
      fs.writeFileSync(
        cfg('smtp_forward.ini'),
        `[main]\nhost=127.0.0.1\nport=${sink.port}\nenable_tls=false\n`,
      )
      fs.writeFileSync(
        cfg('milter.ini'),
        [
          '[main]',
          'milters = scripted',
          '',
          '[milter.scripted]',
          `socket = ${milterSocket}`,
          // not reaching the milter must not pass as a delivery
          'default_action = reject',
          '',
        ].join('\n'),
      )

      const haraka = await startHarakaIn(dir, `127.0.0.1:${port}`)
      harakas.push(haraka)
      sink.clear()
      const subject = `installed from ${title}`
      const r = await sendMailTo('127.0.0.1', port, {
        helo: 'client.example.org',
        from: 'alice@example.org',
        rcpts: ['bob@example.com'],
        data: `From: alice@example.org\r\nTo: bob@example.com\r\nSubject: ${subject}\r\n\r\nhello\r\n`,
      })
      assert.equal(r.accepted, true, `${JSON.stringify(r.replies)}\n${haraka.log()}`)
      const [msg] = await sink.waitForMessages(1, 10_000)
      assert.ok(msg)
      assert.deepEqual(headerValues(msg, 'Subject'), [subject])
      assert.deepEqual(headerValues(msg, MILTER_HEADER), ['edited by scripted.py'])
      assert.deepEqual(msg.rcptTo, ['bob@example.com'])
      assert.doesNotMatch(haraka.log(), /Cannot find module|\[CRIT\]/)
      await haraka.stop()
    })
  }
})
