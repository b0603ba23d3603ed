/**
 * An ini parser that gives the values haraka-config's ini reader gives
 * (haraka-config/lib/readers/ini.js), so the CLI sees milter.ini as the
 * plugin does, without haraka-config (not a dependency of this package;
 * its config.get also watches the file, which would keep the CLI alive).
 * The same rules: `;` and `#` comments, [section] (default main), `key =
 * value` with surrounding space trimmed, `\` continuation lines, `key[]`
 * arrays, integers and decimals become numbers, declared booleans
 * (`section.key`, `*.key`, `+key` for a true default) become true/false.
 * test/unit/config/ini.test.ts parses the same files both ways. Pure.
 */

/** A parsed ini file. */
export type IniData = Record<string, Record<string, unknown>>

/** haraka-config's options: the keys read as booleans. */
export interface IniOptions {
  booleans?: readonly string[]
}

const RE = {
  section: /^\s*\[([^\]]*)\]\s*$/,
  param: /^\s*([\w@:._+\-/[\]]+)\s*(?:=\s*(.*?)\s*)?$/,
  comment: /^\s*[;#].*$/,
  blank: /^\s*$/,
  continuation: /\\[ \t]*$/,
  integer: /^-?\d+$/,
  float: /^-?\d+\.\d+$/,
  truth: /^(?:true|yes|ok|enabled|on|1)$/i,
  array: /^(.+)\[\]$/,
}

const UNSAFE = new Set(['__proto__', 'constructor', 'prototype'])

function section(): Record<string, unknown> {
  return Object.create(null) as Record<string, unknown>
}

/** Parses ini text; lines it cannot read are passed to `invalid` (haraka-config logs them). */
export function parseIni(
  text: string,
  options: IniOptions = {},
  invalid: (line: string) => void = () => {},
): IniData {
  const out = Object.create(null) as IniData
  out['main'] = section()
  const bools = new Set<string>()
  for (const decl of options.booleans ?? []) {
    const m = /^(?:([^. ]+)\.)?(.+)/.exec(decl)
    if (!m) continue
    let sec = m[1] ?? 'main'
    let key = m[2] ?? ''
    const dflt = sec.startsWith('+') || key.startsWith('+')
    sec = sec.replace(/^[-+]/, '')
    key = key.replace(/^[-+]/, '')
    if (UNSAFE.has(sec) || UNSAFE.has(key)) continue
    bools.add(`${sec}.${key}`)
    if (sec === '*') continue
    out[sec] ??= section()
    ;(out[sec] as Record<string, unknown>)[key] = dflt
  }
  let current = out['main']
  let currentName = 'main'
  let pre = ''
  for (const raw of text.split(/\r\n|\r|\n/)) {
    if (RE.comment.test(raw) || RE.blank.test(raw)) continue
    const s = RE.section.exec(raw)
    if (s) {
      currentName = (s[1] ?? '').trim()
      if (UNSAFE.has(currentName)) {
        invalid(raw)
        current = section()
      } else current = out[currentName] ??= section()
      continue
    }
    if (RE.continuation.test(raw)) {
      pre += raw.replace(RE.continuation, '')
      continue
    }
    const line = `${pre}${raw}`
    pre = ''
    const p = RE.param.exec(line)
    if (!p) {
      invalid(line)
      continue
    }
    const keyName = p[1] ?? ''
    const value = p[2]
    const arr = RE.array.exec(keyName)
    const key = arr ? (arr[1] ?? '') : keyName
    if (UNSAFE.has(key)) {
      invalid(line)
      continue
    }
    let v: unknown = value
    if (bools.has(`${currentName}.${keyName}`) || bools.has(`*.${keyName}`)) {
      current[keyName] = RE.truth.test(value ?? '')
      continue
    }
    if (value !== undefined && RE.integer.test(value)) v = parseInt(value, 10)
    else if (value !== undefined && RE.float.test(value)) v = parseFloat(value)
    if (arr) {
      const list = Array.isArray(current[key]) ? (current[key] as unknown[]) : []
      list.push(v)
      current[key] = list
    } else current[keyName] = v
  }
  return out
}
