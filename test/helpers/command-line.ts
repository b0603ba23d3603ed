/**
 * The command line of the bench and soak scripts: node:util parseArgs (strict: an unknown flag is
 * an error; values as `--flag=VALUE` or `--flag VALUE`), the usage text after a parse error, and
 * `--help` printing it. Each script declares its flags (with `help`) and converts the values.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'

export function parseCommandLine<T extends ParseArgsConfig>(
  config: T,
  usage: string,
): ReturnType<typeof parseArgs<T>> {
  let parsed: ReturnType<typeof parseArgs<T>>
  try {
    parsed = parseArgs(config)
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : String(e)}\n${usage}`, { cause: e })
  }
  if ((parsed.values as Record<string, unknown>)['help'] === true) {
    process.stdout.write(`${usage}\n`)
    process.exit(0)
  }
  return parsed
}
