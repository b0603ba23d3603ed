/**
 * The configuration reference (docs/configuration.md), generated from the
 * key table so it cannot drift from what the parser reads: `npm run
 * docs:config` writes it, and a unit test checks the committed file. Pure.
 */
import { KEYS, SECTIONS, type KeyDef, type SectionKind } from './config-keys'

const TITLES: Readonly<Record<SectionKind, string>> = {
  main: '[main]',
  milter: '[milter.NAME]',
  listener: '[listener.NAME]',
  macros: '[macros]',
  quarantine: '[quarantine]',
  metrics: '[metrics]',
  destination_channel: '[destination_channel]',
  optin: '[optin]',
}

const INTROS: Readonly<Record<SectionKind, string>> = {
  main: 'Settings for the whole plugin. Every key of [milter.NAME] marked "also [main]" may be set here too, as the default for every milter.',
  milter:
    'One section per milter named in [main] `milters`. A key marked "also [main]" takes its value from [main] when the section does not set it.',
  listener:
    'Per Haraka listen address: which milters run, and {source_channel}. Connections on other addresses use [main] `default_milters`.',
  macros: 'The macro names sent at each stage, for every milter.',
  quarantine: 'What SMFIR_QUARANTINE, and default_action = quarantine, do.',
  metrics: 'Prometheus metrics and the periodic summary line.',
  destination_channel:
    'The {destination_channel} macro per recipient. Other keys are `DOMAIN = channel`.',
  optin:
    'The {optin} macro per recipient: exact address, then domain, then default. Other keys are `ADDRESS = value` or `DOMAIN = value`.',
}

const TYPES: Readonly<Record<KeyDef['type'], string>> = {
  string: 'text',
  list: 'list',
  enum: 'one of',
  bool: 'true/false',
  int: 'integer',
  seconds: 'seconds',
  bytes: 'bytes (K, M, G)',
  file: 'PEM file',
  sockets: 'endpoint list',
  listen: 'IP:PORT list',
  networks: 'address/CIDR list',
  domains: 'domain list',
  macros: 'macro names',
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|')
}

function typeText(k: KeyDef): string {
  if (k.type === 'enum') return (k.values ?? []).join(' \\| ')
  if (k.type === 'int') return `integer ${k.min ?? 0} to ${k.max ?? ''}`
  return TYPES[k.type]
}

function defaultText(k: KeyDef): string {
  if (k.required) return '(required)'
  if (k.default !== '') return `\`${k.default}\``
  return k.defaultText ?? ''
}

/** The whole reference, as markdown. */
export function configurationReference(): string {
  const out: string[] = [
    '# milter.ini reference',
    '',
    '<!-- Generated from lib/config-keys.ts by `npm run docs:config`: edit the table, not this file. -->',
    '',
    'What this page is for: looking up a milter.ini key. Only the keys you change are needed in',
    'your file; Haraka reads the rest from these defaults.',
    '',
    'Every key, its type, its default and when a change applies. "reload": Haraka re-reads',
    'milter.ini when it changes, and new SMTP connections use the new settings (a file with an',
    'error keeps the previous configuration). `haraka-milter config` prints the effective',
    'configuration of a file, with every warning and error.',
    '',
  ]
  for (const kind of SECTIONS) {
    const keys = KEYS.filter((k) => k.sections.includes(kind))
    const inherits = kind === 'milter'
    out.push(`## ${TITLES[kind]}`, '', INTROS[kind], '')
    out.push(
      inherits
        ? '| key | type | default | applies | also [main] | description |'
        : '| key | type | default | applies | description |',
      inherits ? '|---|---|---|---|---|---|' : '|---|---|---|---|---|',
    )
    for (const k of keys) {
      const also = k.sections.includes('main') ? 'yes' : ''
      const cols = [
        `\`${k.name}\``,
        typeText(k),
        cell(defaultText(k)),
        k.applies,
        ...(inherits ? [also] : []),
        cell(k.doc),
      ]
      out.push(`| ${cols.join(' | ')} |`)
    }
    out.push('')
  }
  return out.join('\n')
}
