/**
 * The MTAs under load: Haraka (test/helpers/haraka.ts) with or without the plugin and a milter,
 * with nodes=0 or nodes=2, accepting at the queue hook (a queue plugin answering OK); and the
 * bench's own Postfix (postfix.ts) with the same milters.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { setIniKeys, startHaraka, type RunningHaraka } from '../../test/helpers/haraka'
import { REPO_ROOT, freePort } from '../../test/helpers/paths'
import { startPostfix, type RunningPostfix } from './postfix'

export type MilterKind = 'noop' | 'noop-nr' | 'opendkim' | 'noop-replace' | 'addheader'

export interface Variant {
  name: string
  mta: 'haraka' | 'postfix'
  milter?: MilterKind
  /** Haraka cluster workers (0: one process). */
  nodes?: number
  /** The variant without a milter that this one is compared with. */
  base: string
  /** milter.ini reuse_connections = true (SMFIC_QUIT_NC between SMTP sessions). */
  reuse?: boolean
  /** Without prompt ACKs after EOB (TCP_QUICKACK): the plugin as before that change. */
  noQuickAck?: boolean
  /** The plugin's root Haraka loads (a built checkout, --before=DIR); undefined: this repository. */
  pluginRoot?: string
}

/** Suffix of a variant run with the plugin of --before=DIR. */
export const BEFORE = '@before'

/** `v` with the plugin built in `dir` (named `v.name@before`; its base, Haraka alone, is shared). */
export function beforeTwin(v: Variant, dir: string): Variant {
  return { ...v, name: `${v.name}${BEFORE}`, pluginRoot: dir }
}

export const VARIANTS: readonly Variant[] = [
  { name: 'haraka', mta: 'haraka', base: 'haraka' },
  { name: 'haraka+noop', mta: 'haraka', milter: 'noop', base: 'haraka' },
  { name: 'haraka+noop-nr', mta: 'haraka', milter: 'noop-nr', base: 'haraka' },
  { name: 'haraka+noop-reuse', mta: 'haraka', milter: 'noop', base: 'haraka', reuse: true },
  {
    name: 'haraka+noop-nr-reuse',
    mta: 'haraka',
    milter: 'noop-nr',
    base: 'haraka',
    reuse: true,
  },
  { name: 'haraka+opendkim', mta: 'haraka', milter: 'opendkim', base: 'haraka' },
  {
    name: 'haraka+opendkim-noqa',
    mta: 'haraka',
    milter: 'opendkim',
    base: 'haraka',
    noQuickAck: true,
  },
  { name: 'haraka+addheader', mta: 'haraka', milter: 'addheader', base: 'haraka' },
  {
    name: 'haraka+addheader-noqa',
    mta: 'haraka',
    milter: 'addheader',
    base: 'haraka',
    noQuickAck: true,
  },
  { name: 'haraka-n2', mta: 'haraka', nodes: 2, base: 'haraka-n2' },
  { name: 'haraka-n2+noop', mta: 'haraka', nodes: 2, milter: 'noop', base: 'haraka-n2' },
  { name: 'postfix', mta: 'postfix', base: 'postfix' },
  { name: 'postfix+noop', mta: 'postfix', milter: 'noop', base: 'postfix' },
  { name: 'postfix+noop-nr', mta: 'postfix', milter: 'noop-nr', base: 'postfix' },
  { name: 'postfix+opendkim', mta: 'postfix', milter: 'opendkim', base: 'postfix' },
  { name: 'postfix+addheader', mta: 'postfix', milter: 'addheader', base: 'postfix' },
]

/** A running MTA of one variant. */
export interface Server {
  readonly variant: Variant
  readonly port: number
  /** Root PID: Haraka (master with nodes=2), or Postfix's master. */
  readonly pid: number
  /** Waits until the MTA has finished with what it accepted (Postfix: queue empty). */
  settle(): Promise<void>
  stop(): Promise<void>
}

/** Largest message Haraka takes (connection.ini [max] bytes; its default is 25 MiB). */
const MAX_BYTES = 256 * 1024 * 1024

/** Haraka's queue hook, accepting every message and dropping it. */
const QUEUE_OK = `// bench: accept at the queue hook, deliver nowhere
exports.hook_queue = function (next) {
  next(OK)
}
`

export interface HarakaServerOptions {
  /** Directory for V8 CPU profiles (as node --cpu-prof) of every Haraka process. */
  cpuProfDir?: string | undefined
  /** More keys of the bench milter's [milter.bench] section, one `key = value` a line. */
  milterKeys?: readonly string[]
}

export async function startHarakaServer(
  v: Variant,
  milterSocket: string | undefined,
  opts: HarakaServerOptions = {},
): Promise<Server> {
  const spool = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-haraka-spool-'))
  const shipped = path.join(REPO_ROOT, 'node_modules', 'Haraka', 'config', 'connection.ini')
  const config: Record<string, string> = {
    'connection.ini': setIniKeys(fs.readFileSync(shipped, 'utf8'), {
      main: { spool_dir: spool },
      uuid: { deny_chars: '0', banner_chars: '6' },
      headers: { max_lines: '1000' },
      max: { bytes: String(MAX_BYTES) },
    }),
  }
  const plugins = ['rcpt_to.in_host_list', 'queue_ok']
  if (milterSocket) {
    plugins.unshift('milter')
    config['milter.ini'] = [
      '[main]',
      'milters = bench',
      ...(v.reuse ? ['reuse_connections = true'] : []),
      '',
      '[milter.bench]',
      `socket = ${milterSocket}`,
      ...(opts.milterKeys ?? []),
      '',
    ].join('\n')
  }
  let listeners: string[] | undefined
  if ((v.nodes ?? 0) > 0) {
    const port = await freePort('127.0.0.1')
    listeners = [`127.0.0.1:${port}`]
    config['smtp.ini'] = `listen=127.0.0.1:${port}\nnodes=${v.nodes}\n`
  }
  const env: Record<string, string> = {}
  const preloads: string[] = []
  if (opts.cpuProfDir) {
    fs.mkdirSync(opts.cpuProfDir, { recursive: true })
    // Node refuses --cpu-prof in NODE_OPTIONS: a preload starts the profiler instead
    preloads.push(path.join(__dirname, '..', 'cpu-prof-preload.js'))
    env['BENCH_CPU_PROF_DIR'] = path.resolve(opts.cpuProfDir)
    env['BENCH_CPU_PROF_NAME'] = v.name
  }
  if (v.noQuickAck) preloads.push(path.join(__dirname, '..', 'no-quickack-preload.js'))
  if (preloads.length > 0) env['NODE_OPTIONS'] = preloads.map((p) => `--require ${p}`).join(' ')
  let h: RunningHaraka
  try {
    // 'notice' is the quietest level at which the helper still sees "Listening on".
    h = await startHaraka({
      plugins,
      pluginFiles: { queue_ok: QUEUE_OK },
      logLevel: 'notice',
      config,
      env,
      ...(listeners ? { listeners } : {}),
      ...(v.pluginRoot !== undefined ? { pluginRoot: v.pluginRoot } : {}),
    })
  } catch (e) {
    fs.rmSync(spool, { recursive: true, force: true })
    throw e
  }
  return {
    variant: v,
    port: h.port,
    pid: h.pid,
    settle: () => Promise.resolve(),
    stop: async () => {
      // SIGINT: Haraka exits through process.exit(), so the preload writes its profile
      await h.stop(opts.cpuProfDir ? { signal: 'SIGINT', killAfterMs: 10_000 } : {})
      fs.rmSync(spool, { recursive: true, force: true })
    },
  }
}

/** Files under `dir`, recursively (0 when it is gone). */
function countFiles(dir: string): number {
  let n = 0
  let entries: fs.Dirent[]
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true })
  } catch {
    return 0
  }
  for (const e of entries) n += e.isDirectory() ? countFiles(path.join(dir, e.name)) : 1
  return n
}

export async function startPostfixServer(
  v: Variant,
  milterSocket: string | undefined,
): Promise<Server> {
  const p: RunningPostfix = await startPostfix(milterSocket ? { milters: [milterSocket] } : {})
  const queues = ['incoming', 'active', 'deferred', 'maildrop'].map((q) =>
    path.join(p.dir, 'queue', q),
  )
  return {
    variant: v,
    port: p.port,
    pid: p.pid,
    settle: async () => {
      const deadline = Date.now() + 60_000
      while (queues.some((q) => countFiles(q) > 0)) {
        if (Date.now() > deadline) throw new Error(`${v.name}: the queue did not drain in 60 s`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    },
    stop: () => p.stop(),
  }
}
