/** describeTlsError: one line, the alert's name, Node's code, the milter.ini key to look at. */
import assert from 'node:assert/strict'
import { describeTlsError, isTlsError } from '../../../lib/transport/tls-error'

describe('transport: TLS failures in one line', () => {
  it('TLS 1.2: the raw OpenSSL text (embedded newline) becomes the alert and a hint', () => {
    const err = {
      code: 'ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE',
      message:
        'C0E7:error:0A000410:SSL routines:ssl3_read_bytes:ssl/tls alert handshake failure:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1605:SSL alert number 40\n',
    }
    assert.ok(isTlsError(err))
    const text = describeTlsError(err)
    assert.equal(
      text,
      'the milter sent the TLS alert "handshake failure" (ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE); the milter probably requires a client certificate it accepts: set tls_cert and tls_key',
    )
    assert.ok(!text.includes('\n'))
  })

  it('TLS 1.3 certificate_required; a certificate check names tls_ca or tls_servername', () => {
    assert.match(
      describeTlsError({ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', message: 'x\n' }),
      /^the milter sent the TLS alert "certificate required" .*set tls_cert and tls_key$/,
    )
    assert.match(
      describeTlsError({
        code: 'SELF_SIGNED_CERT_IN_CHAIN',
        message: 'self-signed certificate in certificate chain',
      }),
      /^self-signed certificate in certificate chain \(SELF_SIGNED_CERT_IN_CHAIN\); .*check tls_ca$/,
    )
    assert.match(
      describeTlsError({
        code: 'ERR_TLS_CERT_ALTNAME_INVALID',
        message: "Hostname/IP does not match certificate's altnames",
      }),
      /check tls_servername$/,
    )
    assert.ok(!isTlsError({ code: 'ECONNREFUSED' }))
  })
})
