/**
 * Macro lists per stage: the configured lists, overridden per milter by the
 * lists it asked for in negotiation (milter-protocol.md §6.6), and the values looked up when a
 * stage is reported.
 */
import { MacroStage } from '../protocol/constants'

/** The values known at a stage, by canonical name (`j`, `{client_addr}`). */
export type MacroLookup = (name: string) => string | Buffer | undefined

/** Configured macro names per stage. */
export type MacroLists = ReadonlyMap<MacroStage, readonly string[]>

/** `client_addr` and `{client_addr}` -> `{client_addr}`; `j` and `{j}` -> `j`. */
export function canonicalMacroName(name: string): string {
  const bare = name.startsWith('{') && name.endsWith('}') ? name.slice(1, -1) : name
  return bare.length === 1 ? bare : `{${bare}}`
}

/** Postfix's default lists (mail_params.h, current), the starting point for milter.ini. */
export const POSTFIX_DEFAULT_MACROS: MacroLists = new Map<MacroStage, readonly string[]>([
  [MacroStage.CONNECT, ['j', '{daemon_name}', '{daemon_addr}', 'v', '_']],
  [
    MacroStage.HELO,
    ['{tls_version}', '{cipher}', '{cipher_bits}', '{cert_subject}', '{cert_issuer}'],
  ],
  [
    MacroStage.ENVFROM,
    [
      'i',
      '{auth_type}',
      '{auth_authen}',
      '{auth_author}',
      '{mail_addr}',
      '{mail_host}',
      '{mail_mailer}',
    ],
  ],
  [MacroStage.ENVRCPT, ['i', '{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}']],
  [MacroStage.DATA, ['i']],
  [MacroStage.EOH, ['i']],
  [MacroStage.EOM, ['i']],
])

/** Each list's names in canonical form without duplicates, worked out once per list. */
const CANONICAL = new WeakMap<readonly string[], readonly string[]>()

function canonicalList(names: readonly string[]): readonly string[] {
  let list = CANONICAL.get(names)
  if (!list) {
    list = [...new Set(names.map(canonicalMacroName))]
    CANONICAL.set(names, list)
  }
  return list
}

/** The pairs to send: names with a defined value, in list order, without duplicates. */
export function macroPairs(
  names: readonly string[],
  lookup: MacroLookup | undefined,
): Array<[string, string | Buffer]> {
  if (!lookup) return []
  const out: Array<[string, string | Buffer]> = []
  for (const name of canonicalList(names)) {
    const value = lookup(name)
    if (value === undefined) continue
    out.push([
      name,
      typeof value === 'string'
        ? value.includes('\0')
          ? value.replace(/\0/g, '')
          : value
        : Buffer.from(value.filter((b) => b !== 0)),
    ])
  }
  return out
}

/** The macro lists sent by default: Postfix's, plus the client macros and the seed's channels. */
export const DEFAULT_MACROS: MacroLists = new Map<MacroStage, readonly string[]>([
  ...POSTFIX_DEFAULT_MACROS,
  [
    MacroStage.CONNECT,
    [
      ...(POSTFIX_DEFAULT_MACROS.get(MacroStage.CONNECT) ?? []),
      '{client_addr}',
      '{client_name}',
      '{client_port}',
      '{client_ptr}',
      '{client_resolve}',
      '{source_channel}',
    ],
  ],
  [
    MacroStage.ENVRCPT,
    [...(POSTFIX_DEFAULT_MACROS.get(MacroStage.ENVRCPT) ?? []), '{destination_channel}', '{optin}'],
  ],
  [MacroStage.EOM, ['i', '{msg_id}']],
])
