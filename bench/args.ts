/** The bench's command line (node:util parseArgs). */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type { ParseArgsConfig } from 'node:util'

import { parseCommandLine } from '../test/helpers/command-line'

export const SECTIONS = ['codec', 'session', 'memory', 'e2e', 'smtp'] as const
export type Section = (typeof SECTIONS)[number]

export const SECTION_TITLES: Readonly<Record<Section, string>> = {
  codec: '1. Codec (lib/protocol)',
  session: '2. Session throughput (openSession + sendContent, one connection)',
  memory: '3. Memory',
  e2e: '4. End to end through Haraka',
  smtp: '5. SMTP load: Haraka (+ plugin + milters) and Postfix, side by side',
}

export const SMTP_SIZES = ['2k', '100k', '10m'] as const
export type SmtpSize = (typeof SMTP_SIZES)[number]

export interface Options {
  quick: boolean
  json: boolean
  sections: Set<Section>
  /** Minimum wall time per codec figure, ms. */
  minMs: number
  smallMessages: number
  largeMessages: number
  largeBodyBytes: number
  replbodyBytes: number
  e2eMessages: number
  e2eConnections: number
  fakeSameThread: boolean
  /** Internal: this process is the fresh child that runs the memory section. */
  memoryChild: boolean
  /** smtp: messages per load run (per size; 10 MB runs send a tenth, at least 20). */
  smtpMessages: number
  /** smtp: concurrent SMTP sessions. */
  smtpConcurrency: number
  /** smtp: interleaved rounds (median and spread over them). */
  smtpRounds: number
  smtpSizes: SmtpSize[]
  /** smtp: messages per SMTP session to run (1, 10). */
  smtpPerSession: number[]
  /** smtp: variant names to run (undefined: all). */
  smtpVariants: string[] | undefined
  /** smtp: load generator. */
  smtpLoad: 'auto' | 'smtp-source' | 'node'
  /** smtp: the 50 MB memory runs. */
  smtpMemory: boolean
  /** smtp: only the memory runs. */
  smtpMemoryOnly: boolean
  smtpMemoryMiB: number
  /** smtp: the goals run (variants, sizes, memory and many-sessions runs) and its table. */
  smtpGoals: boolean
  /** smtp: concurrent SMTP sessions of the many-sessions run (0: skip it). */
  smtpSessions: number
  /** smtp: write a V8 CPU profile of each Haraka process of these variants into this dir. */
  cpuProfDir: string | undefined
  /**
   * smtp: a built checkout of an earlier commit: every Haraka variant with a milter also runs
   * with that plugin (VARIANT@before), interleaved with the current one.
   */
  before: string | undefined
}

/** The variants --smtp-goals runs. */
export const GOAL_VARIANTS = [
  'haraka',
  'haraka+noop',
  'haraka+noop-nr',
  'postfix',
  'postfix+noop',
  'postfix+noop-nr',
] as const

const USAGE = `usage: node dist/bench/bench.js [flags]
  --quick               smaller counts (codec 250 ms per figure, 100 small / 5 large
                        messages, 20 MiB REPLBODY, 40 e2e messages; smtp: 400 messages,
                        2 rounds, 2 KB and 100 KB, 1 message per session, no memory runs)
  --json                print JSON instead of the table
  --only=LIST           sections to run: ${SECTIONS.join(',')} (default all)
  --skip=LIST           sections to leave out
  --messages=N          small messages per session run (default 500)
  --large=N             1 MiB messages per session run (default 20)
  --large-mib=N         size of the large bodies in MiB (default 1)
  --replbody-mib=N      size of the REPLBODY in the memory test (default 50)
  --e2e-messages=N      messages sent through Haraka per run (default 200)
  --connections=N       concurrent SMTP connections for e2e (default 4)
  --min-ms=N            minimum time per codec figure (default 1000)
  --fake-same-thread    run the fake milter of section 2 on the main thread
  smtp section:
  --smtp-messages=N     messages per load run (default 2000; 10 MB runs: N/10, at least 20)
  --smtp-concurrency=N  concurrent SMTP sessions (default 20)
  --smtp-rounds=N       interleaved rounds, median and spread over them (default 3)
  --smtp-sizes=LIST     message sizes: ${SMTP_SIZES.join(',')} (default all)
  --smtp-per-session=LIST  messages per SMTP session (default 1,10)
  --smtp-variants=LIST  variants to run (default all; see the table for names)
  --smtp-load=WHICH     auto (smtp-source if installed), smtp-source or node
  --smtp-memory-mib=N   body size of the memory runs (default 50; 0 = skip them)
  --smtp-memory-only    only the memory runs (also in --quick)
  --smtp-goals          the issue's goals, each against Postfix in the same run: Haraka,
                        Postfix, each + no-op and + no-op no-reply at 2k,100k,10m (1 msg/session),
                        one 10 MiB message (memory), --smtp-sessions concurrent sessions;
                        prints a goals table (flags after it override its choices)
  --smtp-sessions=N     the many-sessions run: N concurrent sessions through Haraka + no-op,
                        Haraka nodes=2 + no-op and Postfix + no-op (default 500 with
                        --smtp-goals, else 0 = skip)
  --cpu-prof=DIR        write V8 CPU profiles of the Haraka processes into DIR
  --before=DIR          a built checkout of an earlier commit (git worktree add DIR COMMIT;
                        node_modules; npm run build): every Haraka variant with a milter also
                        runs with that plugin as VARIANT@before, in the same rounds (the goals
                        table gets a before column; the memory and many-sessions runs a row)
  --help                this text`

/** Every flag (values as `--flag=VALUE` or `--flag VALUE`); `--memory-child` is internal. */
const FLAGS = {
  quick: { type: 'boolean' },
  json: { type: 'boolean' },
  only: { type: 'string' },
  skip: { type: 'string' },
  messages: { type: 'string' },
  large: { type: 'string' },
  'large-mib': { type: 'string' },
  'replbody-mib': { type: 'string' },
  'e2e-messages': { type: 'string' },
  connections: { type: 'string' },
  'min-ms': { type: 'string' },
  'fake-same-thread': { type: 'boolean' },
  'memory-child': { type: 'boolean' },
  'smtp-messages': { type: 'string' },
  'smtp-concurrency': { type: 'string' },
  'smtp-rounds': { type: 'string' },
  'smtp-sizes': { type: 'string' },
  'smtp-per-session': { type: 'string' },
  'smtp-variants': { type: 'string' },
  'smtp-load': { type: 'string' },
  'smtp-memory-mib': { type: 'string' },
  'smtp-memory-only': { type: 'boolean' },
  'smtp-goals': { type: 'boolean' },
  'smtp-sessions': { type: 'string' },
  'cpu-prof': { type: 'string' },
  before: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options']

/** Parses the command line; flags apply in order (--smtp-goals sets choices later flags override). */
export function parseArgs(argv: readonly string[]): Options {
  const parsed = parseCommandLine(
    { args: [...argv], options: FLAGS, strict: true, tokens: true },
    USAGE,
  )
  const quick = parsed.values.quick === true
  const o: Options = {
    quick,
    json: false,
    sections: new Set(SECTIONS),
    minMs: quick ? 250 : 1000,
    smallMessages: quick ? 100 : 500,
    largeMessages: quick ? 5 : 20,
    largeBodyBytes: 1024 * 1024,
    replbodyBytes: (quick ? 20 : 50) * 1024 * 1024,
    e2eMessages: quick ? 40 : 200,
    e2eConnections: 4,
    fakeSameThread: false,
    memoryChild: false,
    smtpMessages: quick ? 400 : 2000,
    smtpConcurrency: 20,
    smtpRounds: quick ? 2 : 3,
    smtpSizes: quick ? ['2k', '100k'] : [...SMTP_SIZES],
    smtpPerSession: quick ? [1] : [1, 10],
    smtpVariants: undefined,
    smtpLoad: 'auto',
    smtpMemory: !quick,
    smtpMemoryOnly: false,
    smtpMemoryMiB: 50,
    smtpGoals: false,
    smtpSessions: 0,
    cpuProfDir: undefined,
    before: undefined,
  }
  const list = (v: string): Section[] =>
    v.split(',').map((s) => {
      const t = s.trim()
      if (!(SECTIONS as readonly string[]).includes(t))
        throw new Error(`unknown section "${t}" (use ${SECTIONS.join(', ')})`)
      return t as Section
    })
  const int = (v: string, flag: string, min = 1): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs an integer >= ${min}`)
    return n
  }
  for (const t of parsed.tokens) {
    if (t.kind !== 'option') continue
    const flag = t.rawName
    const value = t.value ?? ''
    switch (t.name) {
      case 'quick':
      case 'help':
        break
      case 'json':
        o.json = true
        break
      case 'only':
        o.sections = new Set(list(value))
        break
      case 'skip':
        for (const s of list(value)) o.sections.delete(s)
        break
      case 'messages':
        o.smallMessages = int(value, flag)
        break
      case 'large':
        o.largeMessages = int(value, flag)
        break
      case 'large-mib':
        o.largeBodyBytes = int(value, flag) * 1024 * 1024
        break
      case 'replbody-mib':
        o.replbodyBytes = int(value, flag) * 1024 * 1024
        break
      case 'e2e-messages':
        o.e2eMessages = int(value, flag)
        break
      case 'connections':
        o.e2eConnections = int(value, flag)
        break
      case 'min-ms':
        o.minMs = int(value, flag)
        break
      case 'fake-same-thread':
        o.fakeSameThread = true
        break
      case 'memory-child':
        o.memoryChild = true
        break
      case 'smtp-messages':
        o.smtpMessages = int(value, flag)
        break
      case 'smtp-concurrency':
        o.smtpConcurrency = int(value, flag)
        break
      case 'smtp-rounds':
        o.smtpRounds = int(value, flag)
        break
      case 'smtp-sizes':
        o.smtpSizes = value.split(',').map((s) => {
          const t = s.trim().toLowerCase()
          if (!(SMTP_SIZES as readonly string[]).includes(t))
            throw new Error(`unknown size "${t}" (use ${SMTP_SIZES.join(', ')})`)
          return t as SmtpSize
        })
        break
      case 'smtp-per-session':
        o.smtpPerSession = value.split(',').map((s) => int(s.trim(), flag))
        break
      case 'smtp-variants':
        o.smtpVariants = value.split(',').map((s) => s.trim())
        break
      case 'smtp-load':
        if (value !== 'auto' && value !== 'smtp-source' && value !== 'node')
          throw new Error(`${flag}: auto, smtp-source or node`)
        o.smtpLoad = value
        break
      case 'smtp-memory-mib':
        o.smtpMemoryMiB = int(value, flag, 0)
        o.smtpMemory = o.smtpMemoryMiB > 0
        break
      case 'smtp-memory-only':
        o.smtpMemoryOnly = true
        o.smtpMemory = true
        break
      case 'smtp-goals':
        o.smtpGoals = true
        o.smtpSizes = [...SMTP_SIZES]
        o.smtpPerSession = [1]
        o.smtpVariants = [...GOAL_VARIANTS]
        o.smtpMemory = true
        o.smtpMemoryMiB = 10
        o.smtpSessions = 500
        break
      case 'smtp-sessions':
        o.smtpSessions = int(value, flag, 0)
        break
      case 'cpu-prof':
        if (value === '') throw new Error(`${flag} needs a directory`)
        o.cpuProfDir = value
        break
      case 'before':
        o.before = builtPlugin(value, flag)
        break
    }
  }
  return o
}

/** The absolute root of a built plugin checkout (its package.json `main` exists), or throws. */
function builtPlugin(dir: string, flag: string): string {
  const root = path.resolve(dir)
  let main: unknown
  try {
    main = (
      JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { main?: unknown }
    ).main
  } catch {
    throw new Error(`${flag}: no package.json in ${root}`)
  }
  if (typeof main !== 'string' || !fs.existsSync(path.join(root, main)))
    throw new Error(`${flag}: ${root} is not built (no ${String(main)}; run npm run build there)`)
  return root
}
