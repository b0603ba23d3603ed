/**
 * milter.ini mistakes that are not errors: an unknown (usually misspelled)
 * key or section, and a [milter.NAME] section that `milters =` does not
 * list. Each becomes one warning naming the file, section and key, with the
 * nearest known name when one is close, so that `defualt_action = accept`
 * does not silently leave the default (tempfail) in force. The known keys
 * are the table's (config-keys.ts). Pure.
 */
import { DATA_SECTIONS, keysOf, sectionKind, SECTIONS } from './config-keys'

/** Every key each section kind takes (`milter.NAME`, `listener.NAME` for the named ones). */
export const KNOWN_KEYS: Readonly<Record<string, readonly string[]>> = Object.fromEntries(
  SECTIONS.map((kind) => [
    kind === 'milter' || kind === 'listener' ? `${kind}.NAME` : kind,
    keysOf(kind),
  ]),
)

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

/** The key table for a section name. */
function tableFor(section: string): readonly string[] | undefined {
  const kind = sectionKind(section)
  return kind === undefined ? undefined : keysOf(kind)
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
      if (DATA_SECTIONS.has(sectionKind(section) ?? 'main')) {
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
