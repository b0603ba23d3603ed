import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import { HARAKA_BIN, REPO_ROOT, freePort } from './paths'

export interface HarakaOptions {
  /**
   * Listen addresses: 'host:port', '[v6]:port', or a host alone ('127.0.0.1', '::1', '[::1]')
   * which gets a free port. Default ['127.0.0.1'].
   */
  listeners?: string[]
  /** Lines of config/plugins, in order, e.g. ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward']. */
  plugins: string[]
  /**
   * Extra files under config/ (name -> content; names may contain '/' for subdirectories).
   * They replace the defaults this helper writes (smtp.ini, log.ini, connection.ini, me,
   * host_list, smtp_forward.ini, plugins are all overridable).
   */
  config?: Record<string, string>
  /** When given, write smtp_forward.ini forwarding to 127.0.0.1:sinkPort without TLS. */
  sinkPort?: number
  /** Domains for config/host_list (default example.com, example.net, example.org). */
  hostList?: string[]
  /** config/me, Haraka's host name in the greeting and Received header (default haraka.test). */
  me?: string
  /** config/log.ini level (default 'debug'). */
  logLevel?: string
  /**
   * Plain Haraka plugins (name -> JavaScript source), written to `<dir>/plugins/<name>.js`
   * where Haraka finds them before its own; list them in `plugins` by that name.
   */
  pluginFiles?: Record<string, string>
  /** Extra environment variables for the Haraka process. */
  env?: Record<string, string>
  /** How long to wait for every listener (default 20000 ms). */
  startTimeoutMs?: number
  /**
   * The plugin's package root that `milter` loads (its package.json `main`, built): default this
   * repository; the bench points it at a built checkout of an older commit to run both side by side.
   */
  pluginRoot?: string
}

export interface Listener {
  host: string
  port: number
  /** 'host:port' or '[v6]:port', as written into smtp.ini and as Haraka logs it. */
  address: string
}

export interface StopOptions {
  /** Signal to send first (default SIGTERM, which Haraka does not trap: immediate exit). */
  signal?: NodeJS.Signals
  /** Grace period before SIGKILL (default 3000 ms). */
  killAfterMs?: number
}

export interface RunningHaraka {
  /** The install directory (`haraka -c <dir>`). */
  readonly dir: string
  readonly pid: number
  readonly listeners: Listener[]
  /** Ports of `listeners`, same order. */
  readonly ports: number[]
  /** The first listener's port. */
  readonly port: number
  /** Path of the file holding Haraka's stdout+stderr. */
  readonly logFile: string
  /** Everything Haraka has written to stdout/stderr so far. */
  log(): string
  /** Resolves with the exit code/signal once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /**
   * Write config/<name>. With `waitForReload`, resolves only after Haraka logged
   * "Reloaded file: <path>" (haraka-config re-reads a changed file ~5 s after the last change,
   * and only files some code has read with watching enabled).
   */
  writeConfig(
    name: string,
    content: string,
    opts?: { waitForReload?: boolean; timeoutMs?: number },
  ): Promise<void>
  /**
   * Resolve once the log (from character offset `since`, e.g. an earlier `log().length`)
   * matches `pattern`; returns the match. Rejects after `timeoutMs` (default 20000) with the log tail, or when Haraka exits.
   */
  waitForLog(
    pattern: RegExp | string,
    timeoutMs?: number,
    since?: number,
  ): Promise<RegExpMatchArray>
  /** SIGTERM (or opts.signal) by PID, SIGKILL after 3 s, wait for exit, remove `dir`. */
  stop(opts?: StopOptions): Promise<void>
}

const running = new Set<RunningHaraka>()
const livePids = new Set<number>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last resort if a test run ends without stopAllHarakas(): never leave servers behind.
  process.on('exit', () => {
    for (const pid of livePids) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  })
}

/** Stop every Haraka started by this process (for `after()` hooks). */
export async function stopAllHarakas(): Promise<void> {
  await Promise.all([...running].map((h) => h.stop()))
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function tail(text: string, lines = 60): string {
  return text.split('\n').slice(-lines).join('\n')
}

async function resolveListener(spec: string): Promise<Listener> {
  let host: string
  let port = 0
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec)
  if (v6) {
    host = v6[1]!
    if (v6[2] !== undefined) port = Number(v6[2])
  } else if (net.isIPv6(spec)) {
    host = spec
  } else {
    const m = /^([^:]+)(?::(\d+))?$/.exec(spec)
    if (!m) throw new Error(`startHaraka: cannot parse listener ${JSON.stringify(spec)}`)
    host = m[1]!
    if (m[2] !== undefined) port = Number(m[2])
  }
  if (port === 0) port = await freePort(host)
  const address = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`
  return { host, port, address }
}

const HARAKA_CONNECTION_INI = path.join(
  path.dirname(path.dirname(HARAKA_BIN)),
  'config',
  'connection.ini',
)

/**
 * Set `key=value` in `[section]` of an ini text: replaces an existing (or commented-out) key
 * line of that section, else inserts the key right after the section header, else appends the
 * section.
 */
export function setIniKeys(text: string, values: Record<string, Record<string, string>>): string {
  const lines = text.split('\n')
  for (const [section, keys] of Object.entries(values)) {
    for (const [key, value] of Object.entries(keys)) {
      const header = lines.findIndex((l) => l.trim() === `[${section}]`)
      if (header === -1) {
        lines.push('', `[${section}]`, `${key}=${value}`)
        continue
      }
      let end = lines.length
      for (let i = header + 1; i < lines.length; i++) {
        if (/^\s*\[/.test(lines[i]!)) {
          end = i
          break
        }
      }
      const keyRe = new RegExp(`^\\s*[;#]?\\s*${escapeRegExp(key)}\\s*=`)
      let found = -1
      for (let i = header + 1; i < end; i++) {
        if (keyRe.test(lines[i]!)) {
          found = i
          if (!/^\s*[;#]/.test(lines[i]!)) break // prefer the active line
        }
      }
      if (found === -1) lines.splice(header + 1, 0, `${key}=${value}`)
      else lines[found] = `${key}=${value}`
    }
  }
  return lines.join('\n')
}

function writeFile(file: string, content: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, content)
}

function defaultConfig(
  dir: string,
  opts: HarakaOptions,
  listeners: Listener[],
): Record<string, string> {
  const files: Record<string, string> = {
    'smtp.ini': [
      `listen=${listeners.map((l) => l.address).join(',')}`,
      '; one process: plugin state, logs and PIDs stay simple in tests',
      'nodes=0',
      '',
    ].join('\n'),
    'log.ini': [
      '[main]',
      `level=${opts.logLevel ?? 'debug'}`,
      'timestamps=true',
      'format=default',
      '',
    ].join('\n'),
    plugins: `${opts.plugins.join('\n')}\n`,
    me: `${opts.me ?? 'haraka.test'}\n`,
    host_list: `${(opts.hostList ?? ['example.com', 'example.net', 'example.org']).join('\n')}\n`,
    // Core config files come ONLY from the install dir (no merge with Haraka's shipped copy),
    // so start from the shipped connection.ini, as `haraka -i` does, and adjust it.
    'connection.ini': setIniKeys(fs.readFileSync(HARAKA_CONNECTION_INI, 'utf8'), {
      main: { spool_dir: path.join(dir, 'spool') },
      uuid: { deny_chars: '0', banner_chars: '6' },
      headers: { max_lines: '1000' },
    }),
  }
  if (opts.sinkPort !== undefined) {
    files['smtp_forward.ini'] = [
      '[main]',
      'host=127.0.0.1',
      `port=${opts.sinkPort}`,
      'enable_tls=false',
      'enable_outbound=false',
      '',
    ].join('\n')
  }
  return files
}

/**
 * Create a throw-away Haraka install directory and run Haraka on it (single process, `nodes=0`).
 * The plugin under development is loadable as `milter` through the symlink
 * `<dir>/node_modules/haraka-plugin-milter` -> REPO_ROOT or `opts.pluginRoot` (its package.json
 * `main`).
 * Resolves once Haraka logged "Listening on <address>" for every listener.
 */
export async function startHaraka(opts: HarakaOptions): Promise<RunningHaraka> {
  installExitHook()
  const listeners = await Promise.all((opts.listeners ?? ['127.0.0.1']).map(resolveListener))

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'haraka-e2e-'))
  const configDir = path.join(dir, 'config')
  fs.mkdirSync(configDir, { recursive: true })
  fs.mkdirSync(path.join(dir, 'spool'), { recursive: true })
  fs.mkdirSync(path.join(dir, 'node_modules'), { recursive: true })
  fs.symlinkSync(
    opts.pluginRoot ?? REPO_ROOT,
    path.join(dir, 'node_modules', 'haraka-plugin-milter'),
    'dir',
  )

  const files = { ...defaultConfig(dir, opts, listeners), ...(opts.config ?? {}) }
  for (const [name, content] of Object.entries(files))
    writeFile(path.join(configDir, name), content)
  for (const [name, source] of Object.entries(opts.pluginFiles ?? {}))
    writeFile(path.join(dir, 'plugins', `${name}.js`), source)

  const logFile = path.join(dir, 'haraka.log')
  const logFd = fs.openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(process.execPath, [HARAKA_BIN, '-c', dir], {
      cwd: dir,
      env: { ...process.env, ...(opts.env ?? {}) },
      stdio: ['ignore', logFd, logFd],
    })
  } finally {
    fs.closeSync(logFd)
  }
  const pid = child.pid
  if (pid === undefined) {
    throw new Error(`startHaraka: spawn failed for ${HARAKA_BIN}`)
  }
  livePids.add(pid)

  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal }
      livePids.delete(pid)
      resolve(exitInfo)
    })
  })

  let finalLog: string | null = null
  const log = (): string => {
    if (finalLog !== null) return finalLog
    try {
      return fs.readFileSync(logFile, 'utf8')
    } catch {
      return ''
    }
  }

  const waitForLog = (
    pattern: RegExp | string,
    timeoutMs = 20000,
    since = 0,
  ): Promise<RegExpMatchArray> => {
    const re = typeof pattern === 'string' ? new RegExp(escapeRegExp(pattern)) : pattern
    const deadline = Date.now() + timeoutMs
    return new Promise((resolve, reject) => {
      const poll = (): void => {
        const text = log()
        const m = re.exec(text.slice(since))
        if (m) {
          resolve(m)
          return
        }
        if (exitInfo !== null) {
          reject(
            new Error(
              `Haraka (pid ${pid}) exited (code ${String(exitInfo.code)}, signal ${String(
                exitInfo.signal,
              )}) before logging ${String(re)}; log tail:\n${tail(text)}`,
            ),
          )
          return
        }
        if (Date.now() > deadline) {
          reject(
            new Error(
              `Haraka (pid ${pid}): ${String(re)} not logged within ${timeoutMs} ms; log tail:\n${tail(text)}`,
            ),
          )
          return
        }
        setTimeout(poll, 50)
      }
      poll()
    })
  }

  let stopping: Promise<void> | null = null
  const handle: RunningHaraka = {
    dir,
    pid,
    listeners,
    ports: listeners.map((l) => l.port),
    port: listeners[0]!.port,
    logFile,
    log,
    exited,
    waitForLog,
    async writeConfig(name, content, wopts = {}) {
      const file = path.join(configDir, name)
      const before = log().length
      writeFile(file, content)
      if (wopts.waitForReload) {
        await waitForLog(`Reloaded file: ${file}`, wopts.timeoutMs ?? 20000, before)
      }
    },
    stop(sopts: StopOptions = {}): Promise<void> {
      if (stopping) return stopping
      stopping = (async () => {
        if (exitInfo === null) {
          try {
            process.kill(pid, sopts.signal ?? 'SIGTERM')
          } catch {
            // already gone
          }
          const timer = setTimeout(() => {
            try {
              process.kill(pid, 'SIGKILL')
            } catch {
              // already gone
            }
          }, sopts.killAfterMs ?? 3000)
          await exited
          clearTimeout(timer)
        }
        running.delete(handle)
        finalLog = log()
        if (!process.env['KEEP_HARAKA_DIR']) {
          fs.rmSync(dir, { recursive: true, force: true })
        } else {
          process.stderr.write(`KEEP_HARAKA_DIR: Haraka install dir kept at ${dir}\n`)
        }
      })()
      return stopping
    },
  }
  running.add(handle)

  // Readiness is taken from Haraka's own "Listening on <address>" line (logged from the
  // listener's 'listening' event) rather than by probing with a TCP connection, which would run
  // every plugin's connect hooks (and e.g. open a milter session) before the test starts.
  const deadline = Date.now() + (opts.startTimeoutMs ?? 20000)
  try {
    for (const l of listeners) {
      await waitForLog(
        new RegExp(`Listening on ${escapeRegExp(l.address)}(?:\\s|$)`, 'm'),
        Math.max(0, deadline - Date.now()),
      )
    }
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    await handle.stop()
    throw new Error(`startHaraka: Haraka did not start: ${message}`, { cause: err })
  }
  return handle
}
