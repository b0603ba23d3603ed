/**
 * Benchmarks: speed and memory figures, each printed with what was measured.
 * No pass/fail here (the speed and memory goals live here, not in the tests).
 *
 *   npm run bench                      full run, table
 *   npm run bench -- --quick           smaller counts
 *   npm run bench -- --json            JSON instead of the table
 *   npm run bench -- --only=codec,memory   sections: codec, session, memory, e2e, smtp
 *   npm run bench -- --help            every flag
 *
 * One module per section: codec.ts, session.ts, memory.ts, e2e.ts, smtp/section.ts; shared:
 * args.ts (command line), report.ts (figures, tables, output), stats.ts (numbers, test data,
 * sampling), milter-session.ts; the fake milter is the tests' (test/helpers/fake-milter.ts).
 *
 * Every child process is started through the test helpers (or bench/smtp/*) and stopped by PID
 * at the end, also on SIGINT/SIGTERM.
 */
import { stopAllOpenDkims } from '../test/helpers/opendkim'
import { stopAllHarakas } from '../test/helpers/haraka'
import { stopAllMilters } from '../test/helpers/milter-process'
import { SECTIONS, SECTION_TITLES, parseArgs, type Options, type Section } from './args'
import { codecSection } from './codec'
import { sessionSection } from './session'
import { e2eSection, stopActiveSink } from './e2e'
import { killChildren, memoryInChild, memorySection } from './memory'
import { figures, machine, note, notes, printTable, progress, setJsonMode, tables } from './report'
import { smtpSection, stopSmtp } from './smtp/section'
import { blackhole } from './stats'

async function cleanup(): Promise<void> {
  killChildren()
  await Promise.allSettled([
    stopSmtp(),
    stopAllMilters(),
    stopAllHarakas(),
    stopAllOpenDkims(),
    stopActiveSink(),
  ])
}

async function main(): Promise<number> {
  let o: Options
  try {
    o = parseArgs(process.argv.slice(2))
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`)
    return 2
  }
  setJsonMode(o.json || o.memoryChild)
  if (o.memoryChild) {
    try {
      await memorySection(o)
    } catch (e) {
      note(`memory aborted: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
      return 1
    } finally {
      await cleanup()
      process.stdout.write(`${JSON.stringify({ figures, notes })}\n`)
    }
    return 0
  }
  const onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\n${sig}: stopping child processes\n`)
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const m = machine()
  let failed = false
  const run: Record<Section, (o: Options) => Promise<void> | void> = {
    codec: codecSection,
    session: sessionSection,
    memory: memoryInChild,
    e2e: e2eSection,
    smtp: smtpSection,
  }
  try {
    for (const s of SECTIONS) {
      if (!o.sections.has(s)) continue
      progress(`${SECTION_TITLES[s]} ...`)
      try {
        await run[s](o)
      } catch (e) {
        failed = true
        note(`${s} aborted: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
      }
    }
  } finally {
    await cleanup()
  }
  if (o.json) {
    const { sections, memoryChild, ...rest } = o
    void memoryChild
    const out = {
      machine: m,
      options: { ...rest, sections: [...sections] },
      figures,
      tables: tables.map((t) => ({ section: t.section, title: t.title, rows: t.data })),
      notes,
    }
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
  } else {
    printTable(m, o)
  }
  if (blackhole.value === -1) process.stdout.write('\n')
  return failed ? 1 : 0
}

main().then(
  (code) => {
    process.exitCode = code
  },
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
    process.exitCode = 1
  },
)
