#!/usr/bin/env node
// `npm start`: the product working, in the foreground. Ctrl-C stops everything.
//
// 1. Starts the demo milter on 127.0.0.1:18891 (DEMO_MILTER_PORT; a port no well-known
//    milter uses), with demo/milter-script.json: it adds an X-Milter-Demo header to every
//    message and inserts X-Milter-Demo-First at the top. The milter is
//    test/milters/scripted.py (a real libmilter filter) when /usr/bin/python3 has the
//    Milter module (Debian: python3-milter), else demo/milter.js (Node.js, this package's
//    protocol code). If the port is taken, npm start stops: it never talks to a milter it
//    did not start.
// 2. Runs Haraka with the plugin from this checkout on the configuration in demo/config/,
//    copied to demo/run/haraka/ with the ports filled in.
// 3. Sends one test message (node demo/send.js does the same) and prints where it was
//    delivered: the demo queue plugin (demo/plugins/demo_deliver.js) writes each message,
//    with the milters' edits, to demo/run/mail/<id>.eml.
//
// Environment: HARAKA_HOST (127.0.0.1), HARAKA_PORT (2525), DEMO_MILTER_PORT (18891),
// DEMO_SEND=0 to skip the test message, DEMO_MILTER=node|pymilter to choose the demo
// milter instead of the automatic choice (DEMO_MILTER=node shows what a machine without
// python3-milter sees), DEMO_RUN_DIR (demo/run) for the Haraka directory, the delivered
// mail and the milter's log, DEMO_ONCE=1 to stop after the test message instead of
// running on: exit 0 when it was delivered with the milter's X-Milter-Demo header, else 1
// (the smoke test, test/e2e/quickstart.test.ts, runs it so).
'use strict'

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { sendMail, demoMessage } = require('../demo/send')

const repoRoot = path.resolve(__dirname, '..')
const demoDir = path.join(repoRoot, 'demo')
const runDir = path.resolve(process.env.DEMO_RUN_DIR || path.join(demoDir, 'run'))
const once = process.env.DEMO_ONCE === '1'
const harakaDir = path.join(runDir, 'haraka')
const mailDir = path.join(runDir, 'mail')
const harakaBin = path.join(repoRoot, 'node_modules', 'Haraka', 'bin', 'haraka')
const PYTHON = '/usr/bin/python3'

const children = new Set()
let stopping = false
/** The Haraka child, once started. */
let haraka
/** The exit status once stopping: 1 when DEMO_ONCE's test message was not delivered as it should be. */
let result = 0

function say(msg) {
  process.stderr.write(`run-haraka: ${msg}\n`)
}

function fail(msg) {
  say(msg)
  stopAll()
  process.exit(1)
}

function rel(p) {
  return path.relative(process.cwd(), p) || '.'
}

function portFromEnv(name, dflt) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 1 || n > 65535) fail(`${name}="${raw}" is not a port number`)
  return n
}

/** Resolves true when host:port can be bound (nothing listens there), false on EADDRINUSE. */
function portIsFree(host, port) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', (err) => (err.code === 'EADDRINUSE' ? resolve(false) : reject(err)))
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(true)))
  })
}

/** Sets `key = value` in `[section]` (null: the top, before any section) of an ini text. */
function setIniKey(text, section, key, value) {
  const lines = text.split('\n')
  let inSection = section === null
  let insertAt = section === null ? 0 : -1
  for (let i = 0; i < lines.length; i++) {
    const header = /^\s*\[([^\]]+)\]/.exec(lines[i])
    if (header) {
      if (inSection) break
      inSection = header[1].trim() === section
      if (inSection) insertAt = i + 1
      continue
    }
    if (inSection && new RegExp(`^\\s*${key}\\s*=`).test(lines[i])) {
      lines[i] = `${key} = ${value}`
      return lines.join('\n')
    }
  }
  if (insertAt === -1) return `${text.replace(/\n*$/, '\n')}\n[${section}]\n${key} = ${value}\n`
  lines.splice(insertAt, 0, `${key} = ${value}`)
  return lines.join('\n')
}

/** demo/config -> demo/run/haraka/config with the ports, plus plugins and the package link. */
function prepareHarakaDir(host, port, milterPort) {
  const configDir = path.join(harakaDir, 'config')
  fs.rmSync(configDir, { recursive: true, force: true })
  fs.cpSync(path.join(demoDir, 'config'), configDir, { recursive: true })
  const edit = (name, fn) => {
    const file = path.join(configDir, name)
    fs.writeFileSync(file, fn(fs.readFileSync(file, 'utf8')))
  }
  const listen = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`
  edit('smtp.ini', (t) => setIniKey(t, null, 'listen', listen))
  edit('milter.ini', (t) => setIniKey(t, 'milter.demo', 'socket', `inet:${milterPort}@127.0.0.1`))
  fs.writeFileSync(path.join(configDir, 'demo_deliver.ini'), `[main]\ndir = ${mailDir}\n`)

  const pluginsDir = path.join(harakaDir, 'plugins')
  fs.rmSync(pluginsDir, { recursive: true, force: true })
  fs.cpSync(path.join(demoDir, 'plugins'), pluginsDir, { recursive: true })

  // Haraka loads `milter` as the package haraka-plugin-milter from <dir>/node_modules
  const linkDir = path.join(harakaDir, 'node_modules')
  const link = path.join(linkDir, 'haraka-plugin-milter')
  fs.mkdirSync(linkDir, { recursive: true })
  fs.rmSync(link, { force: true })
  fs.symlinkSync(path.relative(linkDir, repoRoot), link, 'dir')
  fs.mkdirSync(mailDir, { recursive: true })
  return listen
}

function pymilterMissing() {
  const r = spawnSync(PYTHON, ['-c', 'import Milter'], { stdio: 'ignore' })
  return r.error !== undefined || r.status !== 0
}

/** The demo milter to run: [command, script, name for the terminal]. */
function chooseDemoMilter() {
  const choice = process.env.DEMO_MILTER || 'auto'
  const pymilter = [PYTHON, path.join(repoRoot, 'test', 'milters', 'scripted.py')]
  const node = [process.execPath, path.join(demoDir, 'milter.js')]
  if (choice === 'pymilter') return { argv: pymilter, name: 'test/milters/scripted.py (pymilter)' }
  if (choice === 'node') return { argv: node, name: 'demo/milter.js (Node.js)' }
  if (choice !== 'auto') fail(`DEMO_MILTER="${choice}": use node or pymilter (or leave it unset)`)
  return pymilterMissing()
    ? { argv: node, name: 'demo/milter.js (Node.js; python3-milter is not installed)' }
    : { argv: pymilter, name: 'test/milters/scripted.py (pymilter, libmilter)' }
}

/** Starts the demo milter on 127.0.0.1:port; resolves once it printed READY. */
function startDemoMilter(milter, port) {
  const [cmd, ...args] = milter.argv
  const child = spawn(
    cmd,
    [
      ...args,
      '--socket',
      `inet:${port}@127.0.0.1`,
      '--script',
      path.join(demoDir, 'milter-script.json'),
      '--log',
      path.join(runDir, 'milter-events.jsonl'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  children.add(child)
  child.on('exit', () => children.delete(child))
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d) => (stderr += d))
  return new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`no READY within 10 s: ${stderr}`)), 10_000)
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => {
      out += d
      if (/^READY$/m.test(out)) {
        clearTimeout(timer)
        resolve(child)
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`exited with code ${code}: ${stderr.trim()}`))
    })
  })
}

function stopAll() {
  if (stopping) return
  stopping = true
  for (const child of children) {
    try {
      // Haraka shuts down cleanly on SIGINT; the demo milters on SIGTERM
      process.kill(child.pid, child === haraka ? 'SIGINT' : 'SIGTERM')
    } catch {
      // already gone
    }
  }
}

/** The header block of a delivered file, for the terminal. */
function headerBlock(file) {
  const text = fs.readFileSync(file, 'utf8')
  const end = text.indexOf('\n\n')
  return end < 0 ? text : text.slice(0, end)
}

async function sendTestMessage(host, port) {
  const from = 'alice@example.org'
  const rcpts = ['bob@example.com']
  const r = await sendMail({
    host,
    port,
    from,
    rcpts,
    data: demoMessage(from, rcpts, 'npm start test message'),
  })
  const last = r.final
  if (!r.accepted) {
    say(`the test message was not accepted (at ${r.failedAt}): ${last}`)
    return false
  }
  const m = /delivered to (\S+\.eml)/.exec(last)
  if (!m || !fs.existsSync(m[1])) {
    say(`the test message was accepted (${last}) but no delivered file was named`)
    return false
  }
  const header = headerBlock(m[1])
  say(`test message delivered to ${rel(m[1])}; its header, as the milter left it:`)
  process.stderr.write(
    `${header
      .split('\n')
      .map((l) => `    ${l}`)
      .join('\n')}\n`,
  )
  if (!/^X-Milter-Demo:/m.test(header)) {
    say(
      'the X-Milter-Demo header is missing: the milter did not edit the message (see the log above)',
    )
    return false
  }
  return true
}

async function main() {
  const major = Number(process.versions.node.split('.')[0])
  if (major < 22)
    fail(
      `Node.js ${process.version} is too old: Haraka 3.3 needs 22 or later; ` +
        `run . .ci/node22.sh first (it puts Node 22 on PATH), then npm ci && npm start`,
    )
  if (!fs.existsSync(harakaBin)) fail(`Haraka not found at ${rel(harakaBin)}: run npm ci first`)
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'))
  if (!fs.existsSync(path.join(repoRoot, pkg.main)))
    fail(`${pkg.main} does not exist: run npm run build first`)

  const host = process.env.HARAKA_HOST || '127.0.0.1'
  const port = portFromEnv('HARAKA_PORT', 2525)
  const milterPort = portFromEnv('DEMO_MILTER_PORT', 18891)
  if (!(await portIsFree(host, port)))
    fail(
      `port ${port} on ${host} is already in use (another npm start?); ` +
        `choose another with HARAKA_PORT, e.g. HARAKA_PORT=2526 npm start`,
    )

  if (!(await portIsFree('127.0.0.1', milterPort)))
    fail(
      `port ${milterPort} on 127.0.0.1 (the demo milter's) is already in use; ` +
        `choose another with DEMO_MILTER_PORT, e.g. DEMO_MILTER_PORT=${milterPort + 1} npm start`,
    )

  fs.mkdirSync(runDir, { recursive: true })
  const milter = chooseDemoMilter()
  let milterChild
  try {
    milterChild = await startDemoMilter(milter, milterPort)
  } catch (err) {
    fail(`the demo milter ${milter.name} did not start: ${err.message}`)
  }
  say(
    `demo milter running on inet:${milterPort}@127.0.0.1 (pid ${milterChild.pid}): ${milter.name}; ` +
      `what it receives: ${rel(path.join(runDir, 'milter-events.jsonl'))}`,
  )

  const listen = prepareHarakaDir(host, port, milterPort)
  say(`starting Haraka on ${listen} with ${rel(path.join(demoDir, 'config'))}`)
  haraka = spawn(process.execPath, [harakaBin, '-c', harakaDir], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
    // own process group: a terminal Ctrl-C reaches only us, and we forward it once
    detached: true,
  })
  children.add(haraka)
  say(`Haraka pid ${haraka.pid}`)

  let listening = false
  let out = ''
  haraka.stdout.setEncoding('utf8')
  haraka.stdout.on('data', (d) => {
    process.stdout.write(d)
    if (listening) return
    out += d
    if (out.includes(`Listening on ${listen}`)) {
      listening = true
      out = ''
      say(`Haraka is listening on ${listen}; delivered mail goes to ${rel(mailDir)}/`)
      if (once) {
        sendTestMessage(host, port)
          .catch((err) => {
            say(`could not send the test message: ${err.message}`)
            return false
          })
          .then((ok) => {
            result = ok ? 0 : 1
            say(`DEMO_ONCE: ${ok ? 'delivered with the milter header' : 'failed'}, stopping`)
            stopAll()
          })
      } else if (process.env.DEMO_SEND !== '0') {
        sendTestMessage(host, port)
          .catch((err) => say(`could not send the test message: ${err.message}`))
          .finally(() =>
            say(
              `send more with: node demo/send.js --port ${port} [--to bob@example.com] [FILE.eml]; Ctrl-C stops`,
            ),
          )
      }
    }
  })

  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      say(`${signal} received, stopping`)
      stopAll()
    })
  }
  // never leave a child running behind us
  process.on('exit', () => {
    for (const child of children) {
      try {
        process.kill(child.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  })
  haraka.on('error', (err) => fail(`cannot start Haraka: ${err.message}`))
  haraka.on('exit', (code, signal) => {
    children.delete(haraka)
    if (!stopping && !listening) say(`Haraka exited before it listened on ${listen}`)
    else say(`Haraka exited (${signal ? `signal ${signal}` : `code ${code}`})`)
    stopAll()
    process.exit(stopping ? result : (code ?? 1))
  })
}

main().catch((err) => fail(err.stack || String(err)))
