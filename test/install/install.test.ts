/**
 * The package as an operator installs it, following the README's "Installing into
 * Haraka, from nothing" steps in a fresh directory: Haraka installed with
 * `npm install -g Haraka` (into a scratch prefix, npm_config_prefix), `haraka -i`, the
 * package from the `npm pack` tarball and from a git URL (`git+file://`), the README's own
 * `sed` line putting `milter` before the queue plugin, the README's minimal milter.ini
 * (its socket pointed at a real libmilter filter, test/milters/scripted.py), smtp_forward
 * to a real receiving server (test/helpers/sink.ts), and the README's first test message
 * (its curl command when curl is installed). The message must arrive with the milter's
 * header. `haraka-milter --help` must run from the installed bin.
 *
 * Two departures from the README, both for a machine without DNS: the sender domain is
 * not resolvable, so mail_from.is_resolvable is commented out; and `npm install -g Haraka`
 * asks for the Haraka version of this checkout, so npm can take it from its cache.
 *
 * What is packed and cloned is a snapshot of this working tree (tracked and
 * untracked files that .gitignore does not exclude), committed to a scratch
 * git repository, so the test checks the code as it is, not the last commit.
 */
import assert from 'node:assert/strict'
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
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

/** Whether curl is on PATH (the README's test message uses it; else the same over our client). */
function hasCurl(): boolean {
  return spawnSync('curl', ['--version'], { stdio: 'ignore' }).status === 0
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

/** The README's fenced blocks of one language, in order, unindented. */
function readmeBlocks(lang: string): string[] {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8')
  return [...text.matchAll(new RegExp(`^( *)\`\`\`${lang}\\n([\\s\\S]*?)^\\1\`\`\``, 'gm'))].map(
    (m) =>
      (m[2] ?? '')
        .split('\n')
        .map((l) => l.slice((m[1] ?? '').length))
        .join('\n'),
  )
}

/** The README's shell line that starts with `prefix` (one line, as written). */
function readmeLine(prefix: string): string {
  const line = readmeBlocks('sh')
    .flatMap((b) => b.split('\n'))
    .find((l) => l.startsWith(prefix))
  assert.ok(line, `the README has a shell line starting with ${prefix}`)
  return line
}

/** The README's minimal milter.ini: the ini block that has [main] milters = and one milter. */
function readmeMilterIni(): string {
  const block = readmeBlocks('ini').find((b) => /^\[main\]\nmilters = /m.test(b))
  assert.ok(block, 'the README has a minimal milter.ini')
  return block
}

/** `haraka -c dir` (the haraka bin given), resolved once Haraka logs that it listens on `address`. */
async function startHarakaIn(harakaBin: string, dir: string, address: string): Promise<Haraka> {
  const logFile = path.join(dir, 'haraka.log')
  const fd = fs.openSync(logFile, 'a')
  const child = spawn(process.execPath, [harakaBin, '-c', dir], {
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
  let harakaBin: string
  const harakas: Haraka[] = []

  before(async function () {
    assertPymilterInstalled()
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-install-'))
    // README step 1: npm install -g Haraka (global = a scratch prefix here)
    const prefix = path.join(work, 'global')
    const version = (
      JSON.parse(fs.readFileSync(path.join(HARAKA_BIN, '..', '..', 'package.json'), 'utf8')) as {
        version: string
      }
    ).version
    const global = await run(
      'npm',
      ['install', '-g', '--prefer-offline', `--prefix=${prefix}`, `Haraka@${version}`],
      work,
      150_000,
    )
    assert.equal(global.code, 0, `npm install -g Haraka:\n${global.stdout}\n${global.stderr}`)
    harakaBin = path.join(prefix, 'bin', 'haraka')
    assert.ok(fs.existsSync(harakaBin), `npm install -g put haraka in ${harakaBin}`)
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
      // README step 2: haraka -i
      await mustRun(harakaBin, ['-i', dir], work)
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
      // every command's usage: config, check and quarantine
      assert.match(help.stdout, /^usage: haraka-milter config \[--config/)
      assert.match(help.stdout, /^usage: haraka-milter check --milter SOCKET/m)
      assert.match(help.stdout, /^usage: haraka-milter quarantine list/m)

      // README step 4: the README's own sed line puts milter before the queue plugin
      const port = await freePort()
      const cfg = (name: string): string => path.join(dir, 'config', name)
      await mustRun('bash', ['-c', readmeLine('sed -i ')], dir)
      const plugins = fs.readFileSync(cfg('plugins'), 'utf8').split('\n')
      const at = (name: string): number => plugins.findIndex((l) => l.trim() === name)
      assert.ok(
        at('milter') >= 0 && at('milter') === at('queue/smtp_forward') - 1,
        'milter just before the queue plugin',
      )
      fs.writeFileSync(
        cfg('plugins'),
        plugins
          // no DNS here: the sender domain cannot be resolved
          .map((l) => (l.trim() === 'mail_from.is_resolvable' ? `# ${l}` : l))
          .join('\n'),
      )
      fs.writeFileSync(
        cfg('smtp_forward.ini'),
        `[main]\nhost=127.0.0.1\nport=${sink.port}\nenable_tls=false\n`,
      )
      fs.writeFileSync(cfg('host_list'), 'example.com\n')
      // README step 5: the minimal milter.ini, its socket pointed at the test's milter
      const milterIni = readmeMilterIni().replace(/^socket = .*$/m, `socket = ${milterSocket}`)
      assert.match(milterIni, new RegExp(`socket = ${milterSocket}`))
      fs.writeFileSync(cfg('milter.ini'), milterIni)
      // README step 6: listen on a port that needs no root
      fs.writeFileSync(cfg('smtp.ini'), `listen=127.0.0.1:${port}\nnodes=0\n`)
      fs.writeFileSync(cfg('me'), 'install.test\n')

      const haraka = await startHarakaIn(harakaBin, dir, `127.0.0.1:${port}`)
      harakas.push(haraka)
      sink.clear()
      // README step 6 (cont.): the first test message, with the README's printf and curl lines
      const subject = 'first test'
      if (hasCurl()) {
        const send = [
          readmeLine("printf 'From: "),
          readmeLine('curl ').replace('smtp://127.0.0.1:2525', `smtp://127.0.0.1:${port}`),
        ].join('\n')
        const sent = await run('bash', ['-ec', send], dir)
        assert.equal(sent.code, 0, `${send}\n${sent.stdout}\n${sent.stderr}\n${haraka.log()}`)
      } else {
        const r = await sendMailTo('127.0.0.1', port, {
          helo: 'client.example.org',
          from: 'alice@example.org',
          rcpts: ['bob@example.com'],
          data: `From: alice@example.org\r\nTo: bob@example.com\r\nSubject: ${subject}\r\n\r\nhello\r\n`,
        })
        assert.equal(r.accepted, true, `${JSON.stringify(r.replies)}\n${haraka.log()}`)
      }
      // README step 7: where to look: the next hop has the milter's edit, and the log has one
      // line per milter (logged as the transaction ends)
      const [msg] = await sink.waitForMessages(1, 10_000)
      assert.ok(msg)
      assert.deepEqual(headerValues(msg, 'Subject'), [subject])
      assert.deepEqual(headerValues(msg, MILTER_HEADER), ['edited by scripted.py'])
      assert.deepEqual(msg.rcptTo, ['bob@example.com'])
      const logLine = /\[milter\] opendkim \(.*\): stages connect,helo,mail,rcpt,data,eom;/
      for (let i = 0; i < 50 && !logLine.test(haraka.log()); i++)
        await new Promise((r) => setTimeout(r, 100))
      assert.match(haraka.log(), logLine)
      assert.doesNotMatch(haraka.log(), /Cannot find module|\[CRIT\]/)
      await haraka.stop()
    })
  }
})
