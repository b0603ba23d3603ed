/**
 * Where the CLI gets its milter definitions: only from the configuration
 * parser, as the plugin does. Either milter.ini itself (read with
 * lib/ini.ts, haraka-config's rules and the plugin's options) or, for
 * `check --milter SOCKET`, a one-milter ini built from the flags, so that
 * every default is the table's.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { INI_OPTIONS, parseMilterConfig, type MilterConfig } from '../config'
import { isMilterError } from '../errors'
import { parseIni } from '../ini'

/** A configuration file as the plugin would load it. */
export interface LoadedConfig {
  file: string
  cfg?: MilterConfig
  /** The error the plugin would log at logcrit (and refuse mail with), if any. */
  error?: string
  /** What the plugin would log at logwarn: unreadable lines, unknown keys... */
  warnings: string[]
}

/** `--config` names the file or the directory holding milter.ini. */
export function configPath(arg: string | undefined): string {
  const p = arg ?? path.join('config', 'milter.ini')
  try {
    if (fs.statSync(p).isDirectory()) return path.join(p, 'milter.ini')
  } catch {
    // not there: reading it says so
  }
  return p
}

/** Reads and parses a milter.ini; never throws (a problem is `error`). */
export function loadConfig(file: string): LoadedConfig {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    return { file, error: `cannot read ${file}: ${(e as Error).message}`, warnings: [] }
  }
  const warnings: string[] = []
  const ini = parseIni(text, INI_OPTIONS, (line) =>
    warnings.push(`${file}: invalid line, ignored: ${line}`),
  )
  try {
    const cfg = parseMilterConfig(ini, file)
    return { file, cfg, warnings: [...warnings, ...cfg.warnings] }
  } catch (e) {
    if (isMilterError(e)) return { file, error: e.message, warnings }
    throw e
  }
}

/** The milter.ini keys `check` takes as flags, for a milter given by its socket. */
export interface MilterFlags {
  socket: string
  /** [milter.NAME] keys (protocol, *_timeout, header_folds, tls...). */
  keys: Record<string, string>
  /** [main] keys (reply_code, daemon_name). */
  main: Record<string, string>
}

/** The configuration of one milter named `check`, from flags, through the same parser. */
export function flagsConfig(f: MilterFlags): MilterConfig {
  return parseMilterConfig(
    { main: { milters: 'check', ...f.main }, 'milter.check': { socket: f.socket, ...f.keys } },
    'command line',
  )
}
