#!/usr/bin/env node
/**
 * haraka-milter check --milter SOCKET [--from ADDR] [--rcpt ADDR]...
 *   [--client-ip IP] [--client-name NAME] [--helo NAME] [--macro NAME=VALUE]...
 *   [--protocol 2|6] [--timeout SECONDS] [--out FILE] [--json] [--trace] MESSAGE.eml
 *
 * Exit status: 0 accepted, 1 rejected or temp-failed, 2 error.
 */
import * as fs from 'node:fs'
import { parseArgs } from 'node:util'
import { runCheck } from '../lib/cli/check'
import { exitCode, formatReport, jsonReport } from '../lib/cli/report'
import { parseSocketSpec } from '../lib/transport/spec'

const USAGE = `usage: haraka-milter check --milter SOCKET [--from ADDR] [--rcpt ADDR]...
       [--client-ip IP] [--client-name NAME] [--helo NAME] [--macro NAME=VALUE]...
       [--protocol 2|3|4|5|6] [--timeout SECONDS] [--header-folds flatten|keep]
       [--reply-code milter|enhanced_only] [--out FILE] [--json] [--trace] MESSAGE.eml

SOCKET: inet:PORT@HOST, inet6:PORT@HOST, unix:/path, local:/path, HOST:PORT or [V6ADDR]:PORT
--header-folds and --reply-code are the milter.ini keys of the same names: the verdict, the reply
and the edited message are what Haraka with the plugin would answer and deliver.
Exit status: 0 accepted, 1 rejected or temp-failed, 2 error.
`

function fail(msg: string): never {
  process.stderr.write(`haraka-milter: ${msg}\n${USAGE}`)
  process.exit(2)
}

function macros(list: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const m of list) {
    const eq = m.indexOf('=')
    if (eq <= 0) fail(`--macro needs NAME=VALUE, got "${m}"`)
    out[m.slice(0, eq)] = m.slice(eq + 1)
  }
  return out
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    process.stdout.write(USAGE)
    return 0
  }
  if (argv[0] !== 'check') fail(argv[0] ? `unknown command "${argv[0]}"` : 'missing command')
  let parsed
  try {
    parsed = parseArgs({
      args: argv.slice(1),
      allowPositionals: true,
      options: {
        milter: { type: 'string' },
        from: { type: 'string', default: 'sender@example.org' },
        rcpt: { type: 'string', multiple: true, default: [] },
        'client-ip': { type: 'string', default: '127.0.0.1' },
        'client-name': { type: 'string', default: 'localhost' },
        helo: { type: 'string', default: 'localhost' },
        macro: { type: 'string', multiple: true, default: [] },
        protocol: { type: 'string', default: '6' },
        timeout: { type: 'string', default: '30' },
        'header-folds': { type: 'string', default: 'flatten' },
        'reply-code': { type: 'string', default: 'milter' },
        out: { type: 'string' },
        json: { type: 'boolean', default: false },
        trace: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    })
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e))
  }
  const v = parsed.values
  if (v.help) {
    process.stdout.write(USAGE)
    return 0
  }
  if (!v.milter) fail('--milter is required')
  try {
    parseSocketSpec(v.milter)
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e))
  }
  if (parsed.positionals.length !== 1) fail('exactly one MESSAGE.eml is required')
  const protocol = Number(v.protocol)
  if (![2, 3, 4, 5, 6].includes(protocol)) fail(`--protocol must be 2 to 6, not "${v.protocol}"`)
  const timeout = Number(v.timeout)
  if (!(timeout > 0)) fail(`--timeout must be a positive number of seconds`)
  const headerFolds = v['header-folds']
  if (headerFolds !== 'flatten' && headerFolds !== 'keep')
    fail(`--header-folds must be flatten or keep, not "${headerFolds}"`)
  const replyCode = v['reply-code']
  if (replyCode !== 'milter' && replyCode !== 'enhanced_only')
    fail(`--reply-code must be milter or enhanced_only, not "${replyCode}"`)
  const file = parsed.positionals[0] as string
  let message: Buffer
  try {
    message = fs.readFileSync(file)
  } catch (e) {
    fail(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`)
  }
  const rcpts = v.rcpt.length > 0 ? v.rcpt : ['recipient@example.org']
  const report = await runCheck({
    milter: v.milter,
    message,
    from: v.from,
    rcpts,
    clientIp: v['client-ip'],
    clientName: v['client-name'],
    helo: v.helo,
    macros: macros(v.macro),
    protocol,
    timeoutMs: timeout * 1000,
    trace: v.trace,
    headerFolds,
    replyCode,
  })
  if (v.out && report.output) fs.writeFileSync(v.out, report.output)
  process.stdout.write(
    v.json ? `${JSON.stringify(jsonReport(report), null, 2)}\n` : formatReport(report),
  )
  return exitCode(report)
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(
      `haraka-milter: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
    )
    process.exit(2)
  },
)
