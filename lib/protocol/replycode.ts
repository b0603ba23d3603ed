/**
 * SMFIR_REPLYCODE validation, as Postfix 3.12 does it (milter-protocol.md §3.4): every line
 * `ddd` then `-` (all but the last) or space/end (the last), the same 4xx or
 * 5xx code on every line, an enhanced status code whose class matches the
 * first digit, CRLF between lines. `%%` becomes `%` and a lone `%` is
 * dropped. A reply that fails is a milter failure, never forwarded.
 *
 * What reaches the SMTP client stays within RFC 5321: reply text is
 * US-ASCII (a byte outside printable ASCII becomes `?`, a control
 * character is dropped), each line at most 512 octets with its code and
 * CRLF (longer text is cut), at most 32 lines (libmilter's own maximum).
 */

/** A validated SMTP reply from a milter. */
export interface SmtpReply {
  /**
   * 421, 450, 550, ...: always 4xx or 5xx from a milter (parseReplyCode checks it); a reply
   * the quarantine release reads from a server may be 2xx or 3xx too (serverReply).
   */
  code: number
  /** The enhanced status code of the first line, e.g. '5.7.1', if any. */
  enhanced?: string
  /** Per line: the enhanced code given on that line (if any) and the text after it. */
  lines: Array<{ enhanced?: string; text: string }>
}

/** The outcome of validation: the reply, or why it is malformed. */
export type ReplyCodeResult = { ok: true; reply: SmtpReply } | { ok: false; error: string }

const LINE = /^([45][0-9][0-9])(?:([ -])(.*))?$/s

/** RFC 5321 4.5.3.1.5: a reply line is at most 512 octets, CRLF included. */
const MAX_REPLY_LINE = 512
/** libmilter's smfi_setmlreply takes at most 32 lines. */
const MAX_REPLY_LINES = 32
const ENHANCED = /^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:[ \t]+|$)/

/**
 * Postfix: `%%` -> `%`, a lone `%` is deleted. Control characters are
 * dropped, 8-bit bytes (the text is read as latin1) become `?`.
 */
function cleanText(text: string): string {
  return (
    text
      .replace(/%(%?)/g, '$1')
      // eslint-disable-next-line no-control-regex
      .replace(/[\x00-\x08\x0a-\x1f\x7f]/g, '')
      .replace(/[\u0080-\uffff]/g, '?')
  )
}

/** Cuts the text so `ddd-x.y.z text` CRLF fits in MAX_REPLY_LINE octets. */
function fit(text: string, enhanced: string | undefined): string {
  const room = MAX_REPLY_LINE - 2 - 4 - (enhanced ? enhanced.length + 1 : 0)
  return text.length > room ? text.slice(0, room) : text
}

function parseLine(
  line: string,
  isLast: boolean,
): { code: number; enhanced?: string; text: string } | string {
  const m = LINE.exec(line)
  if (!m) return `line "${line.slice(0, 40)}" does not start with a 4xx or 5xx code`
  const sep = m[2]
  if (!isLast && sep !== '-') return 'a continuation line lacks "-" after the code'
  if (isLast && sep === '-') return 'the last line has "-" after the code'
  const code = Number(m[1])
  let text = m[3] ?? ''
  const e = ENHANCED.exec(text)
  if (!e) return { code, text: fit(cleanText(text), undefined) }
  if (e[1] !== m[1]?.[0]) return `enhanced code ${e[1]}.${e[2]}.${e[3]} does not match ${code}`
  text = text.slice(e[0].length)
  const enhanced = `${e[1]}.${e[2]}.${e[3]}`
  return { code, enhanced, text: fit(cleanText(text), enhanced) }
}

/**
 * Validates the text of a REPLYCODE (without its NUL), given as a string
 * (read the bytes as latin1 so 8-bit bytes stay one character each).
 */
export function parseReplyCode(raw: string): ReplyCodeResult {
  if (raw.length === 0) return { ok: false, error: 'empty reply' }
  const rawLines = raw.replace(/\r\n$/, '').split('\r\n')
  if (rawLines.length > MAX_REPLY_LINES) {
    return { ok: false, error: `${rawLines.length} lines; at most ${MAX_REPLY_LINES} are allowed` }
  }
  const lines: SmtpReply['lines'] = []
  let code = 0
  for (let i = 0; i < rawLines.length; i++) {
    const parsed = parseLine(rawLines[i] ?? '', i === rawLines.length - 1)
    if (typeof parsed === 'string') return { ok: false, error: parsed }
    if (i === 0) code = parsed.code
    else if (parsed.code !== code)
      return { ok: false, error: `mixed codes ${code} and ${parsed.code}` }
    lines.push(
      parsed.enhanced ? { enhanced: parsed.enhanced, text: parsed.text } : { text: parsed.text },
    )
  }
  const enhanced = lines[0]?.enhanced
  return { ok: true, reply: enhanced ? { code, enhanced, lines } : { code, lines } }
}

/*
 * The one formatter of an SmtpReply, for every place that answers a client,
 * logs a reply or shows one (plugin, adapter logs, chain events, CLI).
 * Haraka's DSN is the model: a code and the text of each line.
 */

/** Each line's text after the code: its enhanced code (if any) and its text (`5.7.1 Denied`). */
export function replyTexts(reply: SmtpReply): string[] {
  return reply.lines.map((l) =>
    [l.enhanced, l.text].filter((s) => s !== undefined && s !== '').join(' '),
  )
}

/** SMTP lines from a code and the text of each line: `550-a`, `550 b` (no CRLF). */
export function smtpLines(code: number, texts: readonly string[]): string[] {
  const last = texts.length - 1
  return texts.map((t, i) => `${code}${i < last ? '-' : ' '}${t}`.trimEnd())
}

/** The reply as SMTP lines (`550-5.7.1 a`, `550 5.7.1 b`), for the CLI and the wire. */
export function formatSmtpReply(reply: SmtpReply): string[] {
  return smtpLines(reply.code, replyTexts(reply))
}

/**
 * A server's reply as read off the wire (code and the text of each line), with an enhanced
 * code of the reply's own class split off each line that starts with one (RFC 3463).
 */
export function serverReply(code: number, texts: readonly string[]): SmtpReply {
  const cls = String(code)[0]
  const lines = texts.map((t) => {
    const m = /^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: (.*))?$/s.exec(t)
    return m && m[1] === cls
      ? { enhanced: `${m[1]}.${m[2]}.${m[3]}`, text: m[4] ?? '' }
      : { text: t }
  })
  const first = lines[0]?.enhanced
  return first === undefined ? { code, lines } : { code, enhanced: first, lines }
}

/** The reply on one log line: the code once, then each line's text (`550 5.7.1 a / 5.7.1 b`). */
export function formatReplyLine(reply: SmtpReply): string {
  return `${reply.code} ${replyTexts(reply).join(' / ')}`
}
