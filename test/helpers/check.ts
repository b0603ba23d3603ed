/** A milter definition for runCheck, as `haraka-milter check --milter SOCKET` builds it. */
import type { MilterDef } from '../../lib/config'
import { flagsConfig } from '../../lib/cli/config-file'

export function socketMilter(socket: string, timeoutSeconds = 30): MilterDef {
  const t = String(timeoutSeconds)
  const cfg = flagsConfig({
    socket,
    keys: { connect_timeout: t, command_timeout: t, content_timeout: t, eom_timeout: t },
    main: {},
  })
  const def = cfg.milters.get('check')
  if (!def) throw new Error('no milter')
  return def
}
