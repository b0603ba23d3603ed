/**
 * The haraka-milter commands (config, check, quarantine) on an argument
 * list, writing through an Io: bin/haraka-milter.ts runs them on
 * process.argv and the process's streams; the tests call them in-process.
 *
 * Both check forms get their milter definition from the configuration
 * parser (lib/cli/config-file.ts): milter.ini, or one built from the flags.
 */
import * as fs from 'node:fs'
import { parseArgs } from 'node:util'
import type { MilterConfig } from '../config'
import { runCheck } from './check'
import { configPath, flagsConfig, loadConfig } from './config-file'
import { envelopeOf } from './envelope-from-headers'
import { QUARANTINE_USAGE, quarantineCommand, UsageError, type Io } from './quarantine'
import { exitCode, formatReport, jsonReport } from './print-check'
import { configExitCode, configView, formatConfigView, probeAll } from './show-config'

const CONFIG_USAGE = `usage: haraka-milter config [--config DIR/milter.ini] [--probe] [--json]

Prints the effective configuration after defaults (per listener: its milters in order and
source channel; per milter: endpoints, TLS, timeouts, default action, mode, conditions,
limits), then every warning and error the plugin would log. --probe connects to each
endpoint, negotiates and reports the version, actions, steps and macros the milter asked
for, without sending mail. --config defaults to config/milter.ini.
Exit status: 0 ok, 1 an error (or an endpoint that failed its probe), 2 usage.
`

const CHECK_USAGE = `usage: haraka-milter check --milter SOCKET [milter flags] [envelope] MESSAGE.eml
       haraka-milter check --config milter.ini --milter NAME [envelope] MESSAGE.eml
envelope: [--from ADDR] [--rcpt ADDR]... [--client-ip IP] [--client-name NAME]
       [--helo NAME] [--macro NAME=VALUE]... [--out FILE] [--json] [--trace]
milter flags (the milter.ini keys of the same names; with --config, milter.ini's apply):
       [--protocol 2..6] [--timeout SECONDS] [--header-folds flatten|keep]
       [--reply-code milter|enhanced_only] [--tls] [--tls-ca FILE] [--tls-cert FILE]
       [--tls-key FILE] [--tls-servername NAME] [--tls-insecure]

SOCKET: inet:PORT@HOST, inet6:PORT@HOST, unix:/path, local:/path, HOST:PORT or [V6ADDR]:PORT
The verdict, the reply and the edited message are what Haraka with the plugin would answer
and deliver. Without --from and --rcpt the envelope comes from the message's Return-Path
(else From), To and Cc.
Exit status: 0 accepted, 1 rejected or temp-failed, 2 error.
`

const USAGE = `${CONFIG_USAGE}\n${CHECK_USAGE}\n${QUARANTINE_USAGE}`

class Usage extends Error {}

function macros(list: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const m of list) {
    const eq = m.indexOf('=')
    if (eq <= 0) throw new Usage(`--macro needs NAME=VALUE, got "${m}"`)
    out[m.slice(0, eq)] = m.slice(eq + 1)
  }
  return out
}

async function configCommand(args: string[], io: Io): Promise<number> {
  const { values: v } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      probe: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  })
  if (v.help) {
    io.out(CONFIG_USAGE)
    return 0
  }
  const loaded = loadConfig(configPath(v.config))
  const view = configView(loaded)
  if (v.probe && loaded.cfg) view.probes = await probeAll(loaded.cfg)
  io.out(v.json ? `${JSON.stringify(view, null, 2)}\n` : formatConfigView(view))
  return configExitCode(view)
}

/** The flags that set milter.ini keys, and those keys ([milter.NAME] or [main]). */
const KEY_FLAGS: ReadonlyArray<[string, 'milter' | 'main', string]> = [
  ['protocol', 'milter', 'protocol'],
  ['header-folds', 'milter', 'header_folds'],
  ['tls-ca', 'milter', 'tls_ca'],
  ['tls-cert', 'milter', 'tls_cert'],
  ['tls-key', 'milter', 'tls_key'],
  ['tls-servername', 'milter', 'tls_servername'],
  ['reply-code', 'main', 'reply_code'],
]

async function checkCommand(args: string[], io: Io): Promise<number> {
  const parsed = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      milter: { type: 'string' },
      from: { type: 'string' },
      rcpt: { type: 'string', multiple: true, default: [] },
      'client-ip': { type: 'string', default: '127.0.0.1' },
      'client-name': { type: 'string', default: 'localhost' },
      helo: { type: 'string', default: 'localhost' },
      macro: { type: 'string', multiple: true, default: [] },
      protocol: { type: 'string' },
      timeout: { type: 'string' },
      'header-folds': { type: 'string' },
      'reply-code': { type: 'string' },
      tls: { type: 'boolean' },
      'tls-ca': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-servername': { type: 'string' },
      'tls-insecure': { type: 'boolean' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
      trace: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  })
  const v = parsed.values
  if (v.help) {
    io.out(CHECK_USAGE)
    return 0
  }
  if (!v.milter) throw new Usage('--milter is required')
  if (parsed.positionals.length !== 1) throw new Usage('exactly one MESSAGE.eml is required')
  const given = (name: string): boolean => (v as Record<string, unknown>)[name] !== undefined
  let cfg: MilterConfig
  if (v.config !== undefined) {
    const set = [...KEY_FLAGS.map(([f]) => f), 'timeout', 'tls', 'tls-insecure'].filter(given)
    if (set.length > 0)
      throw new Usage(`--${set[0]} cannot be used with --config: milter.ini sets it`)
    const loaded = loadConfig(configPath(v.config))
    for (const w of loaded.warnings) io.err(`haraka-milter: warning: ${w}\n`)
    if (!loaded.cfg) {
      io.err(`haraka-milter: ${loaded.error ?? 'no configuration'}\n`)
      return 2
    }
    cfg = loaded.cfg
    if (!cfg.milters.has(v.milter))
      throw new Usage(
        `${loaded.file} has no milter "${v.milter}" (milters: ${[...cfg.milters.keys()].join(', ') || 'none'})`,
      )
  } else {
    const keys: Record<string, string> = {}
    const main: Record<string, string> = {}
    for (const [flag, sec, key] of KEY_FLAGS) {
      const val = (v as Record<string, unknown>)[flag]
      if (typeof val === 'string') (sec === 'main' ? main : keys)[key] = val
    }
    const t = v.timeout ?? '30'
    for (const k of ['connect_timeout', 'command_timeout', 'content_timeout', 'eom_timeout'])
      keys[k] = t
    if (v.tls || ['tls-ca', 'tls-cert', 'tls-key', 'tls-servername', 'tls-insecure'].some(given))
      keys['tls'] = 'true'
    if (v['tls-insecure']) keys['tls_reject_unauthorized'] = 'false'
    try {
      cfg = flagsConfig({ socket: v.milter, keys, main })
    } catch (e) {
      // the parser names the ini key; the operator typed a flag
      const msg = e instanceof Error ? e.message : String(e)
      const m = /^command line \[[^\]]+\] ([a-z_]+): (.*)$/s.exec(msg)
      const key = m?.[1] ?? ''
      const flag =
        key === 'socket'
          ? 'milter'
          : key.endsWith('_timeout')
            ? 'timeout'
            : (KEY_FLAGS.find(([, , k]) => k === key)?.[0] ?? key)
      throw new Usage(m ? `--${flag}: ${m[2]}` : msg)
    }
  }
  const def = cfg.milters.get(v.config !== undefined ? v.milter : 'check')
  if (!def) throw new Usage(`no milter "${v.milter}"`)
  const file = parsed.positionals[0] as string
  let message: Buffer
  try {
    message = fs.readFileSync(file)
  } catch (e) {
    throw new Usage(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`)
  }
  const fromHeaders = envelopeOf(message)
  const from = v.from ?? fromHeaders.from ?? 'sender@example.org'
  const rcpts =
    v.rcpt.length > 0
      ? v.rcpt
      : fromHeaders.rcpts.length > 0
        ? fromHeaders.rcpts
        : ['recipient@example.org']
  const report = await runCheck({
    milter: v.milter,
    def,
    message,
    from,
    rcpts,
    clientIp: v['client-ip'],
    clientName: v['client-name'],
    helo: v.helo,
    macros: macros(v.macro),
    trace: v.trace,
    replyCode: cfg.replyCode,
    ...(v.config !== undefined ? { daemonName: cfg.daemonName } : {}),
  })
  if (v.out && report.output) fs.writeFileSync(v.out, report.output)
  io.out(v.json ? `${JSON.stringify(jsonReport(report), null, 2)}\n` : formatReport(report))
  return exitCode(report)
}

/**
 * Runs one command line (without the node and script arguments); resolves
 * to the exit status. Usage mistakes are exit 2 with the usage on `io.err`;
 * anything else unexpected rejects (the bin prints it and exits 2).
 */
export async function runCommand(argv: readonly string[], io: Io): Promise<number> {
  const [command, ...args] = argv
  switch (command) {
    case '--help':
    case '-h':
    case 'help':
      io.out(USAGE)
      return 0
    case 'quarantine':
      try {
        return await quarantineCommand(args, io)
      } catch (e) {
        if (e instanceof UsageError) {
          io.err(`haraka-milter: ${e.message}\n${QUARANTINE_USAGE}`)
          return 2
        }
        throw e
      }
    case 'config':
    case 'check':
      try {
        return command === 'config' ? await configCommand(args, io) : await checkCommand(args, io)
      } catch (e) {
        // parseArgs throws TypeErrors with a code for unknown or malformed flags
        const usage =
          e instanceof Usage ||
          (e as { code?: unknown }).code?.toString().startsWith('ERR_PARSE_ARGS')
        if (!usage) throw e
        io.err(
          `haraka-milter: ${(e as Error).message}\n${command === 'config' ? CONFIG_USAGE : CHECK_USAGE}`,
        )
        return 2
      }
    default:
      io.err(
        `haraka-milter: ${command ? `unknown command "${command}"` : 'missing command'}\n${USAGE}`,
      )
      return 2
  }
}
