/** One milter definition from milter.ini keys, for the pure policy tests. */
import { parseMilterConfig, type MilterDef } from '../../../lib/config'

/** Milter `m` with the given milter.ini keys (socket and timeouts filled in). */
export function milterDef(keys: Record<string, string> = {}): MilterDef {
  const def = parseMilterConfig({
    main: { milters: 'm' },
    'milter.m': { socket: 'inet:1@127.0.0.1', ...keys },
  }).milters.get('m')
  if (!def) throw new Error('no milter m')
  return def
}
