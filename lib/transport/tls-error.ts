/**
 * One line for a TLS failure, wherever it surfaces: during the handshake
 * (dial.ts) or as an alert after the handshake seemed complete (TLS 1.3
 * sends certificate_required once the client has started writing, so it
 * arrives while the session waits for OPTNEG). The alert's name, Node's
 * code, and a hint at the milter.ini key to look at; OpenSSL's raw text
 * (with its embedded newline under TLS 1.2) is reduced to its reason.
 */

/** Error codes of the TLS layer (certificate, name, protocol, alerts), not of the TCP connection. */
export function isTlsError(err: { code?: string | undefined }): boolean {
  return /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED|HOSTNAME)/.test(
    err.code ?? '',
  )
}

/** Alerts a TLS server sends when it wants a (different) client certificate. */
const CLIENT_CERT_ALERTS = new Set([
  'certificate required',
  'handshake failure',
  'bad certificate',
  'unknown ca',
  'certificate unknown',
  'certificate expired',
  'certificate revoked',
  'unsupported certificate',
  'access denied',
])

/** The alert a TLS error reports (`certificate required`), if it is one from the peer. */
function tlsAlertName(err: { code?: string | undefined; message: string }): string | undefined {
  const fromCode = /_ALERT_([A-Z0-9_]+)$/.exec(err.code ?? '')?.[1]
  if (fromCode) return fromCode.toLowerCase().replace(/_/g, ' ')
  return /(?:sslv3|tlsv1[0-9]*) alert ([a-z ]+)/i.exec(err.message)?.[1]?.trim().toLowerCase()
}

/**
 * `REASON (CODE); hint` on one line: REASON is the peer's alert or the
 * certificate check's complaint.
 */
export function describeTlsError(err: { code?: string | undefined; message: string }): string {
  const alert = tlsAlertName(err)
  const code = err.code ?? ''
  // OpenSSL: "...:error:0A000410:SSL routines:FUNC:REASON:FILE:LINE:SSL alert number 40\n"
  const reason =
    /SSL routines:[^:]*:([^:\n]+)/.exec(err.message)?.[1]?.trim() ??
    err.message.split(/\r?\n/)[0]?.trim() ??
    ''
  const what = alert !== undefined ? `the milter sent the TLS alert "${alert}"` : reason
  const codeText = code !== '' && !what.includes(code) ? ` (${code})` : ''
  let hint = ''
  if (alert !== undefined && CLIENT_CERT_ALERTS.has(alert))
    hint =
      '; the milter probably requires a client certificate it accepts: set tls_cert and tls_key'
  else if (/^(CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED)/.test(code))
    hint = "; the milter's certificate is not trusted: check tls_ca"
  else if (/HOSTNAME|ERR_TLS_CERT_ALTNAME/.test(code))
    hint = "; the name does not match the milter's certificate: check tls_servername"
  return `${what}${codeText}${hint}`.replace(/\s*[\r\n]+\s*/g, ' ')
}
