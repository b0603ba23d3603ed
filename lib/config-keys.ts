/**
 * Every milter.ini key, declared once: its section(s), type, default (as it
 * would be written in milter.ini), whether a change applies on reload or
 * needs a restart, and one line of documentation. This table drives the
 * parser's defaults and ranges (config.ts), the unknown-key warnings
 * (config-lint.ts) and the generated reference (config-docs.ts,
 * docs/configuration.md). Adding a key is one row here, plus where its
 * value goes in MilterDef or MilterConfig (config.ts). Pure.
 */
import { MACRO_STAGE_NAMES, MacroStage } from './protocol/constants'
import { DEFAULT_MACROS } from './session/macros'

/**
 * The section kinds. `milter` is every [milter.NAME] section, `listener`
 * every [listener.NAME]; a key of `main` that is also a `milter` key is the
 * default for every milter.
 */
export const SECTIONS = [
  'main',
  'milter',
  'listener',
  'macros',
  'quarantine',
  'metrics',
  'destination_channel',
  'optin',
] as const
export type SectionKind = (typeof SECTIONS)[number]

/** How a value is read. */
export type KeyType =
  | 'string'
  | 'list' // comma or space separated words
  | 'enum' // one of `values`
  | 'bool'
  | 'int' // integer from min to max
  | 'seconds' // 0 < n <= 3600, a trailing `s` allowed
  | 'bytes' // 10485760, 512K, 10M, 1G
  | 'file' // a path, read at load (PEM)
  | 'sockets' // milter endpoints
  | 'listen' // IP:PORT, [IPV6]:PORT or :PORT, one or a list
  | 'networks' // addresses and CIDR networks
  | 'domains' // domains, .domain for any subdomain
  | 'macros' // macro names

/** One key of milter.ini. */
export interface KeyDef {
  name: string
  /** The sections that take it; `main` with `milter`: the default for every milter. */
  sections: readonly SectionKind[]
  type: KeyType
  /** As written in milter.ini; '' = unset (see defaultText). */
  default: string
  /** What the reference says instead of an empty default ("the listener's name"). */
  defaultText?: string
  values?: readonly string[]
  min?: number
  max?: number
  required?: boolean
  /** reload: applies to new SMTP connections after milter.ini changes; restart: Haraka restart. */
  applies: 'reload' | 'restart'
  doc: string
}

const M: readonly SectionKind[] = ['main', 'milter']

/** Per-milter keys [main] also takes as the default for every milter, in reference order. */
const PER_MILTER: readonly KeyDef[] = [
  {
    name: 'balance',
    sections: M,
    type: 'enum',
    values: ['failover', 'round_robin'],
    default: 'failover',
    applies: 'reload',
    doc: 'With several endpoints: failover (the first that answers, in order) or round_robin (the first one tried rotates per session); an endpoint marked down by its breaker is skipped.',
  },
  {
    name: 'tls',
    sections: M,
    type: 'bool',
    default: 'false',
    applies: 'reload',
    doc: 'TLS to the milter (TCP endpoints only); the tls_* keys need tls = true.',
  },
  {
    name: 'tls_ca',
    sections: M,
    type: 'file',
    default: '',
    defaultText: "Node's CAs",
    applies: 'reload',
    doc: "CA certificate(s) (PEM) the milter's certificate must chain to.",
  },
  {
    name: 'tls_cert',
    sections: M,
    type: 'file',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'Client certificate (PEM), when the milter asks for one; needs tls_key.',
  },
  {
    name: 'tls_key',
    sections: M,
    type: 'file',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: "The client certificate's private key (PEM); needs tls_cert.",
  },
  {
    name: 'tls_reject_unauthorized',
    sections: M,
    type: 'bool',
    default: 'true',
    applies: 'reload',
    doc: 'false accepts any certificate (testing only).',
  },
  {
    name: 'protocol',
    sections: M,
    type: 'int',
    min: 2,
    max: 6,
    default: '6',
    applies: 'reload',
    doc: 'The milter protocol version offered.',
  },
  {
    name: 'default_action',
    sections: M,
    type: 'enum',
    values: ['accept', 'tempfail', 'reject', 'quarantine', 'shutdown'],
    default: 'tempfail',
    applies: 'reload',
    doc: 'What a failure of the milter (unreachable, timeout, protocol error) does to the mail; shutdown: 421 and disconnect.',
  },
  {
    name: 'connect_timeout',
    sections: M,
    type: 'seconds',
    default: '10',
    applies: 'reload',
    doc: 'Seconds for the dial and option negotiation.',
  },
  {
    name: 'command_timeout',
    sections: M,
    type: 'seconds',
    default: '30',
    applies: 'reload',
    doc: 'Seconds for each CONNECT/HELO/MAIL/RCPT/DATA reply.',
  },
  {
    name: 'content_timeout',
    sections: M,
    type: 'seconds',
    default: '300',
    applies: 'reload',
    doc: 'Seconds for each header/body/end-of-message reply (PROGRESS re-arms it).',
  },
  {
    name: 'eom_timeout',
    sections: M,
    type: 'seconds',
    default: '300',
    applies: 'reload',
    doc: "Seconds for the whole wait for the final reply to end of message (Sendmail's T=E); PROGRESS cannot extend it.",
  },
  {
    name: 'failure_scope',
    sections: M,
    type: 'enum',
    values: ['message', 'session'],
    default: 'message',
    applies: 'reload',
    doc: "How long a failure's default_action lasts: the message in flight, or the rest of the SMTP session (as Postfix does).",
  },
  {
    name: 'breaker_failures',
    sections: M,
    type: 'int',
    min: 0,
    max: 1000,
    default: '3',
    applies: 'reload',
    doc: 'Consecutive connect failures after which an endpoint is not dialled for a while (0: off).',
  },
  {
    name: 'breaker_backoff',
    sections: M,
    type: 'seconds',
    default: '5',
    applies: 'reload',
    doc: 'Seconds an open breaker waits before a probe, doubled after each failed probe.',
  },
  {
    name: 'breaker_backoff_max',
    sections: M,
    type: 'seconds',
    default: '60',
    applies: 'reload',
    doc: 'The most breaker_backoff grows to (not less than breaker_backoff).',
  },
  {
    name: 'header_folds',
    sections: M,
    type: 'enum',
    values: ['flatten', 'keep'],
    default: 'flatten',
    applies: 'reload',
    doc: 'Header values from the milter: one line (flatten) or their folds kept (keep, for DKIM signers with simple header canonicalization).',
  },
  {
    name: 'debug',
    sections: M,
    type: 'int',
    min: 0,
    max: 2,
    default: '0',
    applies: 'reload',
    doc: 'Debug lines at INFO: 0 off, 1 one line per stage, 2 also every packet, decoded; applies to open SMTP connections too.',
  },
  {
    name: 'skip_authenticated',
    sections: M,
    type: 'bool',
    default: 'false',
    applies: 'reload',
    doc: 'Do not contact the milter when the client authenticated (SMTP AUTH).',
  },
  {
    name: 'skip_relaying',
    sections: M,
    type: 'bool',
    default: 'false',
    applies: 'reload',
    doc: 'Do not contact the milter when the session relays.',
  },
  {
    name: 'skip_private_clients',
    sections: M,
    type: 'bool',
    default: 'false',
    applies: 'reload',
    doc: 'Do not contact the milter for private, loopback or link-local client addresses.',
  },
  {
    name: 'skip_clients',
    sections: M,
    type: 'networks',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'Do not contact the milter for clients in these addresses or CIDR networks.',
  },
  {
    name: 'skip_sender_domains',
    sections: M,
    type: 'domains',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: "Do not contact the milter when the envelope sender's domain is one of these (.example.net: any subdomain).",
  },
  {
    name: 'skip_recipient_domains',
    sections: M,
    type: 'domains',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'Do not ask the milter about recipients in these domains.',
  },
  {
    name: 'skip_larger_than',
    sections: M,
    type: 'bytes',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'Do not contact the milter for messages larger than this (SIZE= at MAIL, else the size received).',
  },
  {
    name: 'max_modifications',
    sections: M,
    type: 'int',
    min: 1,
    max: 10_000_000,
    default: '10000',
    applies: 'reload',
    doc: 'Modifications (all but body chunks) one end-of-message answer may hold; more is MILTER_ERR_LIMIT (default_action), checked as they arrive: a filter reacting to attacker mail must not freeze or bloat Haraka.',
  },
  {
    name: 'max_added_headers',
    sections: M,
    type: 'int',
    min: 1,
    max: 1_000_000,
    default: '1000',
    applies: 'reload',
    doc: 'ADDHEADER + INSHEADER in one answer; besides, the header block after edits never has more lines than Haraka accepts on input (connection.ini [headers] max_lines).',
  },
  {
    name: 'max_header_bytes',
    sections: M,
    type: 'bytes',
    default: '1M',
    applies: 'reload',
    doc: 'Bytes of header names and values in one answer, and of the header block after edits.',
  },
  {
    name: 'max_replacement_body',
    sections: M,
    type: 'bytes',
    default: '',
    defaultText: "Haraka's connection.ini [max] bytes (25M when unset)",
    applies: 'reload',
    doc: "Replacement body bytes (SMFIR_REPLBODY), counted as the chunks arrive; can only lower Haraka's own message size limit.",
  },
  {
    name: 'max_macro_names',
    sections: M,
    type: 'int',
    min: 1,
    max: 1_000,
    default: '100',
    applies: 'reload',
    doc: 'Macro names a milter may ask for at one stage (SETSYMLIST); more fails negotiation (default_action), and its endpoint is marked down at once. At most 1,000 (a milter asks for a few dozen).',
  },
  {
    name: 'max_macro_names_total',
    sections: M,
    type: 'int',
    min: 1,
    max: 10_000,
    default: '300',
    applies: 'reload',
    doc: 'Macro names over all stages; more fails negotiation. It also bounds the size of the OPTNEG reply read (12 + 5 per stage + 256 per name bytes: at most about 2.5 MB at the highest value, 10,000).',
  },
]

/** The macro stages a `macros.STAGE` key and a [macros] key name, in protocol order. */
const STAGES: ReadonlyArray<[string, MacroStage]> = [
  MacroStage.CONNECT,
  MacroStage.HELO,
  MacroStage.ENVFROM,
  MacroStage.ENVRCPT,
  MacroStage.DATA,
  MacroStage.EOH,
  MacroStage.EOM,
].map((s) => [MACRO_STAGE_NAMES[s], s])

/** Every key, in reference order. */
export const KEYS: readonly KeyDef[] = [
  // [main]
  {
    name: 'milters',
    sections: ['main'],
    type: 'list',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'The milters, in the order they are consulted; each needs a [milter.NAME] section.',
  },
  {
    name: 'default_milters',
    sections: ['main'],
    type: 'list',
    default: '',
    defaultText: 'all of milters, in order',
    applies: 'reload',
    doc: 'Milters for connections on a listener not named in a [listener.NAME] section.',
  },
  {
    name: 'source_channel',
    sections: ['main'],
    type: 'string',
    default: 'tcp_local',
    applies: 'reload',
    doc: '{source_channel} for connections on a listener without its own.',
  },
  {
    name: 'reply_code',
    sections: ['main'],
    type: 'enum',
    values: ['milter', 'enhanced_only'],
    default: 'milter',
    applies: 'reload',
    doc: "milter: send the milter's reply code as given; enhanced_only: 550 (or 451) with the milter's enhanced code and text.",
  },
  {
    name: 'discard',
    sections: ['main'],
    type: 'enum',
    values: ['drop', 'quarantine'],
    default: 'drop',
    applies: 'reload',
    doc: 'DISCARD: drop the message, or keep a copy in the quarantine directory.',
  },
  {
    name: 'reuse_connections',
    sections: ['main'],
    type: 'bool',
    default: 'false',
    applies: 'reload',
    doc: 'Keep milter connections open across SMTP sessions with SMFIC_QUIT_NC (libmilter 8.14+).',
  },
  {
    name: 'daemon_name',
    sections: ['main'],
    type: 'string',
    default: 'Haraka',
    applies: 'reload',
    doc: 'The {daemon_name} macro.',
  },
  {
    name: 'mixed_recipients',
    sections: ['main'],
    type: 'enum',
    values: ['defer', 'union'],
    default: 'defer',
    applies: 'reload',
    doc: 'Recipients needing different milters in one transaction: defer (4xx for the later group) or union (all milters for all recipients).',
  },
  // [milter.NAME]
  {
    name: 'socket',
    sections: ['milter'],
    type: 'sockets',
    default: '',
    required: true,
    applies: 'reload',
    doc: 'inet:PORT@HOST, inet6:PORT@HOST, unix:/path, local:/path, HOST:PORT or [V6ADDR]:PORT; several, comma or space separated, for failover or load balancing.',
  },
  ...PER_MILTER,
  {
    name: 'tls_servername',
    sections: ['milter'],
    type: 'string',
    default: '',
    defaultText: "the endpoint's host",
    applies: 'reload',
    doc: "The name the milter's certificate must carry (and SNI); a host name, not an IP address.",
  },
  {
    name: 'destination_channels',
    sections: ['milter'],
    type: 'list',
    default: '',
    defaultText: 'all',
    applies: 'reload',
    doc: 'Recipient rules: ask the milter only about recipients with one of these {destination_channel} values.',
  },
  {
    name: 'optin',
    sections: ['milter'],
    type: 'list',
    default: '',
    defaultText: 'all',
    applies: 'reload',
    doc: 'Recipient rules: ask the milter only about recipients with one of these {optin} values.',
  },
  {
    name: 'mode',
    sections: ['milter'],
    type: 'enum',
    values: ['enforce', 'shadow'],
    default: 'enforce',
    applies: 'reload',
    doc: 'shadow: consulted at every stage, verdicts and edits logged, nothing enforced, failures never affect the mail.',
  },
  ...STAGES.map(([stage]): KeyDef => ({
    name: `macros.${stage}`,
    sections: ['milter'],
    type: 'macros',
    default: '',
    defaultText: `[macros] ${stage}`,
    applies: 'reload',
    doc: `Macro names sent at ${stage} to this milter only.`,
  })),
  // [listener.NAME]
  {
    name: 'listen',
    sections: ['listener'],
    type: 'listen',
    default: '',
    required: true,
    applies: 'reload',
    doc: "The Haraka listen addresses this section is for: IP:PORT, [IPV6]:PORT, or :PORT for every address. A new address must also be in smtp.ini's listen, which Haraka reads only at start: a restart, not a reload.",
  },
  {
    name: 'milters',
    sections: ['listener'],
    type: 'list',
    default: '',
    defaultText: '[main] default_milters',
    applies: 'reload',
    doc: 'The milters for connections on this listener, in order. Without this key the listener runs [main] default_milters (a section added only for source_channel never switches filtering off); only an explicit empty `milters =` runs none.',
  },
  {
    name: 'source_channel',
    sections: ['listener'],
    type: 'string',
    default: '',
    defaultText: "the listener's name",
    applies: 'reload',
    doc: '{source_channel} for connections on this listener.',
  },
  // [macros]
  ...STAGES.map(([stage, s]): KeyDef => ({
    name: stage,
    sections: ['macros'],
    type: 'macros',
    default: (DEFAULT_MACROS.get(s) ?? []).join(' '),
    applies: 'reload',
    doc: `Macro names sent at ${stage} (a milter's own request, SETSYMLIST, takes precedence).`,
  })),
  // [quarantine]
  {
    name: 'action',
    sections: ['quarantine'],
    type: 'enum',
    values: ['hold', 'tag', 'reject'],
    default: 'hold',
    applies: 'reload',
    doc: 'What SMFIR_QUARANTINE (or default_action = quarantine) does: hold a copy and do not deliver, deliver tagged, or 550.',
  },
  {
    name: 'dir',
    sections: ['quarantine'],
    type: 'string',
    default: '/var/spool/haraka/milter-quarantine',
    applies: 'reload',
    doc: 'Where held (and, with discard = quarantine, discarded) messages are kept.',
  },
  {
    name: 'tag_header',
    sections: ['quarantine'],
    type: 'string',
    default: 'X-Milter-Quarantine',
    applies: 'reload',
    doc: 'The header action = tag adds, with the reason.',
  },
  {
    name: 'hold_reply',
    sections: ['quarantine'],
    type: 'string',
    default: 'Message accepted',
    applies: 'reload',
    doc: "The text of the 250 a held message gets (Haraka adds the transaction id). The default is a discarded message's and does not tell the sender the message was held; printable ASCII, one line.",
  },
  // [metrics]
  {
    name: 'listen',
    sections: ['metrics'],
    type: 'listen',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: 'The Prometheus endpoint, http://LISTEN/metrics (one IP:PORT or [IPV6]:PORT); keep it on loopback (a public address is allowed, with a warning).',
  },
  {
    name: 'summary_interval',
    sections: ['metrics'],
    type: 'int',
    min: 0,
    max: 86400,
    default: '0',
    applies: 'reload',
    doc: 'Seconds between one-line summaries in the log (0: none).',
  },
  // [destination_channel]
  {
    name: 'local',
    sections: ['destination_channel'],
    type: 'string',
    default: 'local',
    applies: 'reload',
    doc: '{destination_channel} of recipients in Haraka host_list; other keys: DOMAIN = channel.',
  },
  {
    name: 'relay',
    sections: ['destination_channel'],
    type: 'string',
    default: 'relay',
    applies: 'reload',
    doc: '{destination_channel} of other recipients.',
  },
  // [optin]
  {
    name: 'default',
    sections: ['optin'],
    type: 'string',
    default: '',
    defaultText: 'none',
    applies: 'reload',
    doc: '{optin} of recipients not listed; other keys: ADDRESS or DOMAIN = value.',
  },
]

/** Sections whose other keys are data (domains, addresses), not settings. */
export const DATA_SECTIONS: ReadonlySet<SectionKind> = new Set([
  'destination_channel',
  'optin',
] as const)

/** The section kind of a section name; undefined for an unknown section. */
export function sectionKind(section: string): SectionKind | undefined {
  if (section.startsWith('milter.')) return 'milter'
  if (section.startsWith('listener.')) return 'listener'
  return (SECTIONS as readonly string[]).includes(section) &&
    section !== 'milter' &&
    section !== 'listener'
    ? (section as SectionKind)
    : undefined
}

/** The row of `name` in a section kind, if that section takes it. */
export function keyDef(kind: SectionKind, name: string): KeyDef | undefined {
  return KEYS.find((k) => k.name === name && k.sections.includes(kind))
}

/** The key names a section kind takes, in table order. */
export function keysOf(kind: SectionKind): string[] {
  return KEYS.filter((k) => k.sections.includes(kind)).map((k) => k.name)
}
