/**
 * Interoperability: OpenDMARC (Debian package opendmarc) BEHIND OpenDKIM in one milter chain,
 * through a real Haraka with the plugin, real SMTP in, delivery to a receiving SMTP sink.
 *
 * OpenDMARC does not verify DKIM itself: it takes the DKIM result from the
 * Authentication-Results header fields of the message whose authserv-id it trusts. In the chain
 * `dkimverify, dmarc` that header is the one OpenDKIM (milter 1) added at end of message: the
 * plugin must hand milter 1's edits to milter 2 (Postfix semantics) for DMARC to pass.
 *
 * - listener `out`: OpenDKIM signs (d=example.org, s=test): produces the signed messages.
 * - listener `in`: OpenDKIM verifies, then OpenDMARC evaluates (RejectFailures false: it only
 *   adds Authentication-Results).
 * - listener `strict`: the same chain with OpenDMARC's RejectFailures and HoldQuarantinedMessages
 *   true: p=reject failures are refused with 550 5.7.1, p=quarantine failures are quarantined
 *   (SMFIR_QUARANTINE; the plugin's [quarantine] action = tag delivers them with a header).
 * - a Haraka plugin `fake_spf` records `spf=pass` with connection.auth_results() for the sender
 *   spfpass@..., as haraka-plugin-spf would (which needs DNS): Haraka's own
 *   Authentication-Results, which OpenDMARC trusts too.
 * - listener `dmarconly`: OpenDMARC without OpenDKIM in front (the control: a valid signature
 *   alone does not make DMARC pass when nobody reports it).
 *
 * Offline: OpenDKIM reads the public key from a file (TestPublicKeys), OpenDMARC the DMARC
 * records from its fake DNS table (TestDNSData, test/fixtures/opendmarc/test-dns-data):
 * example.org p=reject, example.net p=quarantine, example.com p=none.
 *
 * Every daemon is started once for the file and stopped by PID afterwards.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'

import {
  assertOpenDmarcInstalled,
  evaluateWithOpenDmarc,
  startOpenDmarc,
  stopAllOpenDmarcs,
  type RunningOpenDmarc,
} from '../helpers/daemons/opendmarc'
import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertOpenDkimInstalled,
  generateDkimKey,
  startOpenDkim,
  stopAllOpenDkims,
  verifyWithOpenDkim,
  type DkimTestKey,
  type RunningOpenDkim,
} from '../helpers/opendkim'
import { REPO_ROOT, freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink, type SinkMessage } from '../helpers/sink'
import { sendMailTo, toCrlf, type SendMailResult } from '../helpers/smtp-client'

const FIXTURE = path.join(REPO_ROOT, 'test', 'fixtures', 'opendmarc', 'message.eml')

/** Stands in for haraka-plugin-spf (offline): SPF pass for the sender spfpass@<domain>. */
const FAKE_SPF_PLUGIN = `
exports.hook_mail = function (next, connection, params) {
  const from = params[0]
  if (from && from.user === 'spfpass') {
    connection.auth_results('spf=pass smtp.mailfrom=' + from.host)
  }
  next()
}
`

interface Ports {
  out: number
  in: number
  strict: number
  dmarconly: number
}

interface Milters {
  sign: RunningOpenDkim
  verify: RunningOpenDkim
  dmarc: RunningOpenDmarc
  dmarcReject: RunningOpenDmarc
}

function milterIni(p: Ports, m: Milters): string {
  return `
[main]
milters = dkimsign, dkimverify, dmarc, dmarcreject

[quarantine]
; deliver quarantined mail with a header, so the test sees it
action = tag
tag_header = X-Milter-Quarantine

[milter.dkimsign]
socket = ${m.sign.socket}

[milter.dkimverify]
socket = ${m.verify.socket}

[milter.dmarc]
socket = ${m.dmarc.socket}

[milter.dmarcreject]
socket = ${m.dmarcReject.socket}

[listener.out]
listen = 127.0.0.1:${p.out}
milters = dkimsign

[listener.in]
listen = 127.0.0.1:${p.in}
milters = dkimverify, dmarc

[listener.strict]
listen = 127.0.0.1:${p.strict}
milters = dkimverify, dmarcreject

[listener.dmarconly]
listen = 127.0.0.1:${p.dmarconly}
milters = dmarc
`
}

/** Changes one byte of the body: the first 'B' of 'Hello Bob,' becomes 'R'. */
function tamperBody(raw: Buffer): Buffer {
  const at = raw.indexOf('\r\n\r\nHello Bob,')
  assert.ok(at > 0, 'the body starts with "Hello Bob,"')
  const copy = Buffer.from(raw)
  copy[at + 4 + 'Hello '.length] = 'R'.charCodeAt(0)
  return copy
}

/** The message with its From: address replaced. */
function withFrom(raw: Buffer, from: string): Buffer {
  const text = raw.toString('latin1')
  const replaced = text.replace(/^From: .*$/m, `From: ${from}`)
  assert.notEqual(replaced, text)
  return Buffer.from(replaced, 'latin1')
}

/** The message without its first `name` header field (and that field's folded lines). */
function withoutFirstHeader(raw: Buffer, name: string): Buffer {
  const text = raw.toString('latin1')
  const re = new RegExp(`^${name}:.*\\r\\n(?:[ \\t].*\\r\\n)*`, 'im')
  const replaced = text.replace(re, '')
  assert.notEqual(replaced, text, `no ${name} header`)
  return Buffer.from(replaced, 'latin1')
}

/** Authentication-Results value with its folds unfolded and whitespace runs made single. */
function unfold(value: string): string {
  return value.replace(/\r?\n/g, '').replace(/\s+/g, ' ').trim()
}

describe('OpenDMARC behind OpenDKIM in one milter chain (real Haraka, real daemons)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let ports: Ports
  let milters: Milters
  let key: DkimTestKey
  const pids: number[] = []
  const message = toCrlf(readFileSync(FIXTURE))

  before(async () => {
    // fail (not skip) with the apt-get line when a daemon is missing
    assertOpenDkimInstalled()
    assertOpenDmarcInstalled()
    key = generateDkimKey('example.org', 'test')
    sink = await startSink()
    milters = {
      sign: await startOpenDkim({ mode: 's', signingKey: key }),
      verify: await startOpenDkim({ mode: 'v', publicKeys: [key] }),
      // no AuthservID: OpenDMARC takes macro j (Haraka's `me`, haraka.test) for its own
      // Authentication-Results and, by default, trusts that same authserv-id
      dmarc: await startOpenDmarc(),
      dmarcReject: await startOpenDmarc({ rejectFailures: true, holdQuarantinedMessages: true }),
    }
    pids.push(milters.sign.pid, milters.verify.pid, milters.dmarc.pid, milters.dmarcReject.pid)
    ports = {
      out: await freePort(),
      in: await freePort(),
      strict: await freePort(),
      dmarconly: await freePort(),
    }
    haraka = await startHaraka({
      listeners: [ports.out, ports.in, ports.strict, ports.dmarconly].map((p) => `127.0.0.1:${p}`),
      plugins: ['fake_spf', 'milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      pluginFiles: { fake_spf: FAKE_SPF_PLUGIN },
      sinkPort: sink.port,
      config: { 'milter.ini': milterIni(ports, milters) },
    })
    pids.push(haraka.pid)
  })

  afterEach(() => {
    sink.clear()
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllOpenDmarcs()
    await stopAllOpenDkims()
    await sink?.stop()
    for (const pid of pids) {
      assert.throws(() => process.kill(pid, 0), /ESRCH/, `process ${pid} is still running`)
    }
  })

  function send(port: number, data: Buffer, from = 'alice@example.org'): Promise<SendMailResult> {
    return sendMailTo('127.0.0.1', port, {
      helo: 'client.example.org',
      from,
      rcpts: ['bob@example.com'],
      data,
      mailParams: 'BODY=8BITMIME',
    })
  }

  /** Send, expect a 250, return the one message the sink received. */
  async function deliver(port: number, data: Buffer, from?: string): Promise<SinkMessage> {
    sink.clear()
    const r = await send(port, data, from)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    const [m] = await sink.waitForMessages(1, 10000)
    assert.ok(m)
    assert.equal(sink.messages.length, 1)
    return m
  }

  /** Send, expect the end of DATA refused, nothing delivered. */
  async function refuse(port: number, data: Buffer, from?: string): Promise<SendMailResult> {
    sink.clear()
    const r = await send(port, data, from)
    assert.equal(r.accepted, false, JSON.stringify(r.replies))
    // give a wrongly queued message the time to arrive before checking there is none
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.equal(sink.messages.length, 0)
    return r
  }

  function names(m: SinkMessage): string[] {
    return m.headers.map(([n]) => n)
  }

  /** The Authentication-Results values of `m`, unfolded, top first. */
  function authResults(m: SinkMessage): string[] {
    return headerValues(m, 'Authentication-Results').map(unfold)
  }

  /** The fixture as signed by OpenDKIM on listener `out` and delivered. */
  async function signed(): Promise<SinkMessage> {
    const m = await deliver(ports.out, message)
    assert.equal(headerValues(m, 'DKIM-Signature').length, 1, 'signed by OpenDKIM')
    assert.equal(verifyWithOpenDkim(m.raw, [key]).pass, true)
    return m
  }

  it('a message signed by OpenDKIM: OpenDKIM adds dkim=pass, OpenDMARC behind it reads that and adds dmarc=pass', async () => {
    const s = await signed()
    const m = await deliver(ports.in, s.raw)
    const ar = authResults(m)
    assert.equal(ar.length, 2, JSON.stringify(ar))
    // OpenDMARC (milter 2) inserts at index 0, above what OpenDKIM (milter 1) inserted
    assert.match(
      ar[0]!,
      /^haraka\.test; dmarc=pass \(p=reject dis=none\) header\.from=example\.org$/,
    )
    assert.match(
      ar[1]!,
      /^haraka\.test; dkim=pass \(2048-bit key\) header\.d=example\.org header\.i=@example\.org\b/,
    )
    assert.deepEqual(names(m).slice(0, 6), [
      'Authentication-Results',
      'Authentication-Results',
      'Received',
      'DKIM-Signature',
      'Received',
      'From',
    ])
    // the body is delivered byte for byte, the signature still verifies
    assert.equal(m.body.toString('hex'), s.body.toString('hex'))
    assert.equal(verifyWithOpenDkim(m.raw, [key]).pass, true)

    // the same verdict from OpenDMARC's own test mode over the delivered bytes without its
    // header: no Haraka, no milter protocol in between
    const offline = evaluateWithOpenDmarc(withoutFirstHeader(m.raw, 'Authentication-Results'))
    assert.equal(offline.authenticationResults, ar[0], offline.output)
  })

  it('control: the same signed message through OpenDMARC alone gets dmarc=fail (nobody reported the DKIM pass)', async () => {
    const s = await signed()
    const m = await deliver(ports.dmarconly, s.raw)
    assert.deepEqual(authResults(m), [
      'haraka.test; dmarc=fail (p=reject dis=none) header.from=example.org',
    ])
  })

  it('an unsigned message from example.org (p=reject): no dkim result, dmarc=fail, delivered when RejectFailures is false', async () => {
    const m = await deliver(ports.in, message)
    assert.deepEqual(authResults(m), [
      'haraka.test; dmarc=fail (p=reject dis=none) header.from=example.org',
    ])
    assert.deepEqual(headerValues(m, 'DKIM-Signature'), [])
  })

  it('a tampered signed message: dkim=fail from OpenDKIM, then dmarc=fail from OpenDMARC', async () => {
    const s = await signed()
    const m = await deliver(ports.in, tamperBody(s.raw))
    const ar = authResults(m)
    assert.equal(ar.length, 2, JSON.stringify(ar))
    assert.equal(ar[0], 'haraka.test; dmarc=fail (p=reject dis=none) header.from=example.org')
    assert.match(ar[1]!, /^haraka\.test; dkim=fail reason="signature verification failed"/)
    assert.match(m.body.toString('utf8'), /^Hello Rob,/)
  })

  it('RejectFailures: a tampered or unsigned message from example.org (p=reject) is refused with 550 5.7.1', async () => {
    const s = await signed()
    for (const data of [tamperBody(s.raw), message]) {
      const r = await refuse(ports.strict, data)
      assert.equal(r.replies.message?.code, 550, JSON.stringify(r.replies.message))
      assert.equal(r.replies.message?.text, '5.7.1 rejected by DMARC policy for example.org')
    }
    // and the intact signed message passes the same chain
    const ok = await deliver(ports.strict, s.raw)
    assert.equal(
      authResults(ok)[0],
      'haraka.test; dmarc=pass (p=reject dis=none) header.from=example.org',
    )
  })

  it('RejectFailures: an unsigned message from example.net (p=quarantine) is quarantined (SMFIR_QUARANTINE), here tagged and delivered', async () => {
    const data = withFrom(message, 'Carol <carol@example.net>')
    const m = await deliver(ports.strict, data, 'carol@example.net')
    assert.deepEqual(authResults(m), [
      'haraka.test; dmarc=fail (p=quarantine dis=quarantine) header.from=example.net',
    ])
    // the plugin's tag: '<milter name>: <reason OpenDMARC gave to smfi_quarantine>'
    assert.deepEqual(headerValues(m, 'X-Milter-Quarantine'), [
      'dmarcreject: quarantined by DMARC policy for example.net',
    ])
  })

  it('p=none (example.com) and no DMARC record (example.info): delivered with dmarc=fail / dmarc=none even with RejectFailures', async () => {
    const none = await deliver(
      ports.strict,
      withFrom(message, 'dave@example.com'),
      'dave@example.com',
    )
    assert.deepEqual(authResults(none), [
      'haraka.test; dmarc=fail (p=none dis=none) header.from=example.com',
    ])
    const norecord = await deliver(
      ports.strict,
      withFrom(message, 'erin@example.info'),
      'erin@example.info',
    )
    assert.deepEqual(authResults(norecord), [
      'haraka.test; dmarc=none (p=none dis=none) header.from=example.info',
    ])
  })

  it('a forged "Authentication-Results: haraka.test; dkim=pass" from the client is not trusted: Haraka renames it before the milters see it', async () => {
    const forged = Buffer.concat([
      Buffer.from(
        'Authentication-Results: haraka.test; dkim=pass header.d=example.org header.i=@example.org\r\n',
      ),
      message,
    ])
    // Haraka core (connection.ini [headers] clean_auth_results, default true) moves every
    // Authentication-Results the client sent to Original-Authentication-Results at end of DATA
    const m = await deliver(ports.in, forged)
    assert.deepEqual(authResults(m), [
      'haraka.test; dmarc=fail (p=reject dis=none) header.from=example.org',
    ])
    assert.deepEqual(headerValues(m, 'Original-Authentication-Results').map(unfold), [
      'haraka.test; dkim=pass header.d=example.org header.i=@example.org',
    ])
    const r = await refuse(ports.strict, forged)
    assert.equal(r.replies.message?.text, '5.7.1 rejected by DMARC policy for example.org')
  })

  it("Haraka's own SPF result (an Authentication-Results from a Haraka plugin) reaches OpenDMARC: an unsigned message passes DMARC on SPF alignment", async () => {
    // fake_spf records 'spf=pass smtp.mailfrom=example.org' with connection.auth_results(), as
    // haraka-plugin-spf does; Haraka adds its Authentication-Results at end of DATA, before the
    // milters run, and OpenDMARC trusts it (authserv-id haraka.test)
    const m = await deliver(ports.strict, message, 'spfpass@example.org')
    assert.deepEqual(headerValues(m, 'DKIM-Signature'), [])
    // the same message without the SPF result is refused: the pass came from that header
    const refused = await refuse(ports.strict, message, 'alice@example.org')
    assert.equal(refused.replies.message?.code, 550)
  })

  it('the milters’ Authentication-Results are delivered when a Haraka plugin records auth results too (haraka-plugin-spf, auth, ...)', async () => {
    const s = await signed()
    const m = await deliver(ports.in, s.raw, 'spfpass@example.org')
    const ar = authResults(m)
    assert.ok(
      ar.some((v) => /^haraka\.test; spf=pass smtp\.mailfrom=example\.org$/.test(v)),
      `Haraka's own: ${JSON.stringify(ar)}`,
    )
    // KNOWN PLUGIN ISSUE: the plugin writes the milters' header edits into transaction.header
    // in its data_post hook; Haraka core's data_post_respond then (connection.js, "assemble A-R
    // header") calls transaction.remove_header('Authentication-Results') and adds only its own
    // whenever connection.auth_results() has anything, so OpenDKIM's and OpenDMARC's
    // Authentication-Results are silently dropped from the delivered message.
    assert.ok(
      ar.some((v) => /^haraka\.test; dkim=pass .*header\.d=example\.org\b/.test(v)),
      `OpenDKIM's Authentication-Results is delivered: ${JSON.stringify(ar)}`,
    )
    assert.ok(
      ar.includes('haraka.test; dmarc=pass (p=reject dis=none) header.from=example.org'),
      `OpenDMARC's Authentication-Results is delivered: ${JSON.stringify(ar)}`,
    )
  })
})
