#!/usr/bin/env node
/**
 * haraka-milter config [--config DIR/milter.ini] [--probe] [--json]
 * haraka-milter check --config milter.ini --milter NAME ... MESSAGE.eml
 * haraka-milter check --milter SOCKET [flags] MESSAGE.eml
 * haraka-milter quarantine list|show|release|delete ... (see lib/cli/quarantine)
 *
 * The commands are lib/cli/run-command.ts; this file gives them the process's
 * arguments and streams, and turns their result into the exit status.
 */
import { runCommand } from '../lib/cli/run-command'

runCommand(process.argv.slice(2), {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
}).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(
      `haraka-milter: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
    )
    process.exit(2)
  },
)
