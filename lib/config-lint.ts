/**
 * milter.ini mistakes that are not errors: an unknown (usually misspelled)
 * key or section, and a [milter.NAME] section that `milters =` does not
 * list. Each becomes one warning naming the file, section and key, with the
 * nearest known name when one is close, so that `defualt_action = accept`
 * does not silently leave the default (tempfail) in force. Pure.
 */

/** The macro stages a `macros.STAGE` key (and a [macros] key) may name. */
export const MACRO_STAGE_KEYS = ['connect', 'helo', 'mail', 'rcpt', 'data', 'eoh', 'eom'] as const

/** Keys a [milter.NAME] section takes, which [main] also takes as defaults for every milter. */
export const MILTER_KEYS: readonly string[] = [
  'socket',
  'balance',
  'tls',
  'tls_ca',
  'tls_cert',
  'tls_key',
  'tls_servername',
  'tls_reject_unauthorized',
  'protocol',
  'default_action',
  'connect_timeout',
  'command_timeout',
  'content_timeout',
  'eom_timeout',
  'header_folds',
  'failure_scope',
  'debug',
  'breaker_failures',
  'breaker_backoff',
  'breaker_backoff_max',
  'destination_channels',
  'optin',
  'mode',
  'skip_authenticated',
  'skip_relaying',
  'skip_private_clients',
  'skip_clients',
  'skip_sender_domains',
  'skip_recipient_domains',
  'skip_larger_than',
  'max_modifications',
  'max_added_headers',
  'max_header_bytes',
  'max_replacement_body',
  'max_macro_names',
  'max_macro_names_total',
  ...MACRO_STAGE_KEYS.map((s) => `macros.${s}`),
]

/** Keys of [main] beyond the per-milter defaults. */
const MAIN_ONLY_KEYS: readonly string[] = [
  'milters',
  'default_milters',
  'source_channel',
  'reply_code',
  'discard',
  'reuse_connections',
  'daemon_name',
  'mixed_recipients',
]

/** Per-milter keys that are not [main] defaults (the global macro lists are [macros]). */
const NOT_IN_MAIN: readonly string[] = [
  'socket',
  'tls_servername',
  'destination_channels',
  'optin',
  'mode',
  ...MACRO_STAGE_KEYS.map((s) => `macros.${s}`),
]

/** Every key each fixed section (or section kind) takes. */
export const KNOWN_KEYS: Readonly<Record<string, readonly string[]>> = {
  main: [...MAIN_ONLY_KEYS, ...MILTER_KEYS.filter((k) => !NOT_IN_MAIN.includes(k))],
  macros: MACRO_STAGE_KEYS,
  quarantine: ['action', 'dir', 'tag_header'],
  metrics: ['listen', 'summary_interval'],
  destination_channel: ['local', 'relay'],
  optin: ['default'],
  'milter.NAME': MILTER_KEYS,
  'listener.NAME': ['listen', 'milters', 'source_channel'],
}

/** Sections whose other keys are data (domains, addresses), not settings. */
const DATA_SECTIONS: ReadonlySet<string> = new Set(['destination_channel', 'optin'])

/**
 * Optimal string alignment distance: insertions, deletions, substitutions
 * and transpositions of neighbours each cost 1 (`defualt` is 1 from
 * `default`).
 */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1
  const cols = b.length + 1
  const d: number[][] = Array.from({ length: rows }, (_, i) =>
    Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  )
  const at = (i: number, j: number): number => d[i]?.[j] ?? Infinity
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, at(i - 2, j - 2) + 1)
      const row = d[i]
      if (row) row[j] = v
    }
  }
  return at(a.length, b.length)
}

/** The known name nearest to `word`, when it is close enough to be a likely typo. */
export function nearest(word: string, known: readonly string[]): string | undefined {
  const w = word.toLowerCase()
  let best: string | undefined
  let bestDistance = Infinity
  for (const k of known) {
    const dist = editDistance(w, k)
    if (dist < bestDistance) {
      best = k
      bestDistance = dist
    }
  }
  const limit = Math.max(2, Math.floor(w.length / 3))
  return bestDistance <= limit ? best : undefined
}

function didYouMean(word: string, known: readonly string[], wrap = (s: string) => s): string {
  const n = nearest(word, known)
  return n === undefined ? '' : ` (did you mean ${wrap(n)}?)`
}

/** The key table for a section name, and how the section is called in it. */
function tableFor(section: string): readonly string[] | undefined {
  if (section.startsWith('milter.')) return KNOWN_KEYS['milter.NAME']
  if (section.startsWith('listener.')) return KNOWN_KEYS['listener.NAME']
  return Object.hasOwn(KNOWN_KEYS, section) ? KNOWN_KEYS[section] : undefined
}

/** Known section names, for suggestions (`[quarantaine]`, `[miltre.x]`). */
function sectionSuggestion(section: string): string {
  const dot = section.indexOf('.')
  if (dot > 0) {
    const kind = nearest(section.slice(0, dot), ['milter', 'listener'])
    return kind === undefined ? '' : ` (did you mean [${kind}${section.slice(dot)}]?)`
  }
  const fixed = Object.keys(KNOWN_KEYS).filter((k) => !k.endsWith('.NAME'))
  return didYouMean(section, [...fixed, 'milter', 'listener'], (s) =>
    s === 'milter' || s === 'listener' ? `[${s}.NAME]` : `[${s}]`,
  )
}

/**
 * The warnings for a parsed milter.ini: unknown sections, unknown keys (with
 * the nearest known key), and [milter.NAME] sections that `listed` (the
 * names in `milters =`) leaves out, which are therefore not used.
 */
export function lintMilterIni(
  ini: Readonly<Record<string, Readonly<Record<string, unknown>> | undefined>>,
  file: string,
  listed: readonly string[],
): string[] {
  const warnings: string[] = []
  for (const [section, values] of Object.entries(ini)) {
    const known = tableFor(section)
    if (known === undefined) {
      warnings.push(`${file} [${section}]: unknown section, ignored${sectionSuggestion(section)}`)
      continue
    }
    const m = /^milter\.(.+)$/.exec(section)
    if (m?.[1] !== undefined && !listed.includes(m[1]))
      warnings.push(
        `${file} [${section}]: not listed in [main] milters, so this milter is not used`,
      )
    for (const key of Object.keys(values ?? {})) {
      if (known.includes(key)) continue
      if (DATA_SECTIONS.has(section)) {
        // domain or address keys; only a bare word close to a setting is suspicious
        if (/[.@]/.test(key) || nearest(key, known) === undefined) continue
        warnings.push(
          `${file} [${section}] ${key}: neither a domain nor an address${didYouMean(key, known)}`,
        )
        continue
      }
      warnings.push(`${file} [${section}] ${key}: unknown key, ignored${didYouMean(key, known)}`)
    }
  }
  return warnings
}
