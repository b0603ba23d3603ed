/**
 * End to end with a real OpenDKIM (Debian package opendkim): a real Haraka with the plugin,
 * real SMTP in, delivery through queue/smtp_forward to a receiving SMTP sink.
 *
 * - listener `out`: OpenDKIM signs (Mode s); the delivered bytes are verified by a real
 *   verifier, OpenDKIM's own test mode (`opendkim -t`), offline with the test public key.
 * - listener `in`: OpenDKIM verifies (Mode v) and adds Authentication-Results: the message
 *   signed on `out`, as delivered, passes; the same with one body byte changed fails.
 * - listener `strict`: OpenDKIM verifies with On-BadSignature reject: a broken signature is
 *   refused at end of DATA.
 * - listener `simple`: OpenDKIM signs with Canonicalization simple/simple (OpenDKIM's
 *   default), where the DKIM-Signature header's own folding is part of what is signed.
 *
 * Every daemon is started once for the suite and stopped by PID afterwards.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'

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

const FIXTURE = path.join(REPO_ROOT, 'test', 'fixtures', 'opendkim', 'message.eml')

interface Ports {
  out: number
  in: number
  strict: number
  simple: number
}

interface Milters {
  sign: RunningOpenDkim
  simple: RunningOpenDkim
  verify: RunningOpenDkim
  strict: RunningOpenDkim
}

function milterIni(p: Ports, m: Milters): string {
  return `
[main]
milters = dkimsign, dkimsimple, dkimverify, dkimstrict

[milter.dkimsign]
socket = ${m.sign.socket}

[milter.dkimsimple]
socket = ${m.simple.socket}
; keep OpenDKIM's folds: simple header canonicalization signs them
header_folds = keep

[milter.dkimverify]
socket = ${m.verify.socket}

[milter.dkimstrict]
socket = ${m.strict.socket}

[listener.out]
listen = 127.0.0.1:${p.out}
milters = dkimsign

[listener.in]
listen = 127.0.0.1:${p.in}
milters = dkimverify

[listener.strict]
listen = 127.0.0.1:${p.strict}
milters = dkimstrict

[listener.simple]
listen = 127.0.0.1:${p.simple}
milters = dkimsimple
`
}

/** DKIM tag list (RFC 6376 3.2) -> tag name -> value with all whitespace removed. */
function dkimTags(value: string): Record<string, string> {
  const tags: Record<string, string> = {}
  for (const part of value.split(';')) {
    const eq = part.indexOf('=')
    if (eq === -1) continue
    tags[part.slice(0, eq).trim()] = part.slice(eq + 1).replace(/\s+/g, '')
  }
  return tags
}

/** Changes one byte of the body: the first 'B' of 'Hello Bob,' becomes 'R'. */
function tamperBody(raw: Buffer): Buffer {
  const at = raw.indexOf('\r\n\r\nHello Bob,')
  assert.ok(at > 0, 'the body starts with "Hello Bob,"')
  const copy = Buffer.from(raw)
  copy[at + 4 + 'Hello '.length] = 'R'.charCodeAt(0)
  return copy
}

describe('OpenDKIM end to end (real Haraka, real OpenDKIM, verified delivery)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let ports: Ports
  let milters: Milters
  let key: DkimTestKey
  const pids: number[] = []
  const message = toCrlf(readFileSync(FIXTURE))

  before(async () => {
    // fails (not skips) with "install opendkim: apt-get install opendkim opendkim-tools"
    assertOpenDkimInstalled()
    key = generateDkimKey('example.org', 'test')
    sink = await startSink()
    milters = {
      sign: await startOpenDkim({ mode: 's', signingKey: key }),
      simple: await startOpenDkim({
        mode: 's',
        signingKey: key,
        canonicalization: 'simple/simple',
      }),
      verify: await startOpenDkim({ mode: 'v', publicKeys: [key] }),
      strict: await startOpenDkim({ mode: 'v', publicKeys: [key], onBadSignature: 'reject' }),
    }
    pids.push(milters.sign.pid, milters.simple.pid, milters.verify.pid, milters.strict.pid)
    ports = {
      out: await freePort(),
      in: await freePort(),
      strict: await freePort(),
      simple: await freePort(),
    }
    haraka = await startHaraka({
      listeners: [ports.out, ports.in, ports.strict, ports.simple].map((p) => `127.0.0.1:${p}`),
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
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
    await stopAllOpenDkims()
    await sink?.stop()
    for (const pid of pids) {
      assert.throws(() => process.kill(pid, 0), /ESRCH/, `process ${pid} is still running`)
    }
  })

  function send(port: number, data: Buffer, from = 'someone@example.org'): Promise<SendMailResult> {
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

  function names(m: SinkMessage): string[] {
    return m.headers.map(([n]) => n)
  }

  /** The message signed on listener `out`, as the sink received it. */
  async function signed(): Promise<SinkMessage> {
    return deliver(ports.out, message)
  }

  function authResults(m: SinkMessage): string {
    const ar = headerValues(m, 'Authentication-Results')
    assert.equal(ar.length, 1, `one Authentication-Results header: ${JSON.stringify(ar)}`)
    return ar[0]!
  }

  it('signs on listener out: DKIM-Signature d=example.org s=test on top, verified over the delivered bytes', async () => {
    const m = await signed()
    const sigs = headerValues(m, 'DKIM-Signature')
    assert.equal(sigs.length, 1, m.raw.toString())
    const tags = dkimTags(sigs[0]!)
    assert.equal(tags['v'], '1')
    assert.equal(tags['a'], 'rsa-sha256')
    assert.equal(tags['c'], 'relaxed/relaxed')
    assert.equal(tags['d'], 'example.org')
    assert.equal(tags['s'], 'test')
    const signedHeaders = (tags['h'] ?? '').toLowerCase().split(':')
    for (const h of ['from', 'to', 'subject', 'date']) assert.ok(signedHeaders.includes(h), h)
    assert.ok((tags['b'] ?? '').length > 300, 'a 2048-bit RSA signature')

    // OpenDKIM (Debian) sends SMFIR_INSHEADER index 0: above everything, Haraka's Received too
    assert.deepEqual(names(m).slice(0, 3), ['DKIM-Signature', 'Received', 'From'])
    assert.match(headerValues(m, 'Received')[0]!, /by haraka\.test/)
    // Header values are not rewritten: one space after the colon (HDR_LEADSPC negotiated)
    assert.match(m.raw.toString('latin1'), /^DKIM-Signature: v=1; /)
    // the body is delivered byte for byte
    const sentBody = message.subarray(message.indexOf('\r\n\r\n') + 4)
    assert.equal(m.body.toString('hex'), sentBody.toString('hex'))

    const result = verifyWithOpenDkim(m.raw, [key])
    assert.equal(result.pass, true, result.output)
    assert.deepEqual(result.results, [
      'verification (s=test, d=example.org, 2048-bit key) succeeded',
    ])
    assert.match(result.authenticationResults ?? '', /dkim=pass .*header\.d=example\.org/)

    // sanity of the verifier: the same bytes with one body byte changed do not verify
    const broken = verifyWithOpenDkim(tamperBody(m.raw), [key])
    assert.equal(broken.pass, false, broken.output)
  })

  it('does not sign mail whose From: domain is not the signing domain', async () => {
    const foreign = Buffer.from(
      message
        .toString('latin1')
        .replace('From: Someone <someone@example.org>', 'From: x@example.net'),
      'latin1',
    )
    const m = await deliver(ports.out, foreign, 'x@example.net')
    assert.deepEqual(headerValues(m, 'DKIM-Signature'), [])
    assert.deepEqual(headerValues(m, 'Authentication-Results'), [])
    assert.equal(names(m)[0], 'Received')
  })

  it('verifies on listener in: the delivered signed message gets Authentication-Results dkim=pass', async () => {
    const s = await signed()
    const b = dkimTags(headerValues(s, 'DKIM-Signature')[0]!)['b'] ?? ''

    const m = await deliver(ports.in, s.raw)
    const ar = authResults(m)
    // authserv-id is macro j (Haraka's config/me)
    assert.match(ar, /^haraka\.test;/)
    assert.match(ar, /\bdkim=pass\b/)
    assert.match(ar, /\bheader\.d=example\.org\b/)
    assert.match(ar, /\bheader\.s=test\b/)
    assert.ok(ar.includes(`header.b=${b.slice(0, 8)}`), ar)
    // A-R on top (INSHEADER 0), then this hop's Received, then the message as it arrived
    assert.deepEqual(names(m).slice(0, 5), [
      'Authentication-Results',
      'Received',
      'DKIM-Signature',
      'Received',
      'From',
    ])
    // still verifies after the second hop (a new Received and A-R above the signature)
    assert.equal(verifyWithOpenDkim(m.raw, [key]).pass, true)
  })

  it('verifies on listener in: one body byte changed gives dkim=fail, still delivered (On-BadSignature accept)', async () => {
    const s = await signed()
    const m = await deliver(ports.in, tamperBody(s.raw))
    const ar = authResults(m)
    assert.match(ar, /^haraka\.test;/)
    assert.match(ar, /\bdkim=fail reason="signature verification failed"/)
    assert.match(ar, /\bheader\.d=example\.org\b/)
    assert.doesNotMatch(ar, /dkim=pass/)
    assert.match(m.body.toString('utf8'), /^Hello Rob,/)
  })

  it('verifies on listener in: an unsigned message gets no Authentication-Results', async () => {
    const m = await deliver(ports.in, message)
    assert.deepEqual(headerValues(m, 'Authentication-Results'), [])
    assert.deepEqual(headerValues(m, 'DKIM-Signature'), [])
  })

  it('On-BadSignature reject: a broken signature is refused at end of DATA, a good one passes', async () => {
    const s = await signed()
    sink.clear()
    const r = await send(ports.strict, tamperBody(s.raw))
    assert.equal(r.accepted, false)
    assert.equal(r.replies.message?.code, 550, JSON.stringify(r.replies.message))
    assert.equal(r.replies.message?.text, '5.7.0 bad DKIM signature data')
    assert.equal(sink.messages.length, 0)

    const ok = await deliver(ports.strict, s.raw)
    assert.match(authResults(ok), /\bdkim=pass\b/)
  })

  it('Canonicalization simple/simple (OpenDKIM’s default) with header_folds = keep: the delivered signature verifies', async () => {
    const m = await deliver(ports.simple, message)
    const sig = headerValues(m, 'DKIM-Signature')
    assert.equal(sig.length, 1)
    assert.equal(dkimTags(sig[0]!)['c'], 'simple/simple')
    const result = verifyWithOpenDkim(m.raw, [key])
    assert.equal(
      result.pass,
      true,
      'with simple header canonicalization the DKIM-Signature header is signed with the folds ' +
        'OpenDKIM sent in SMFIR_INSHEADER (LF + TAB); they must be delivered as CRLF + TAB, not ' +
        `turned into spaces. Delivered:\nDKIM-Signature: ${sig[0]!}\n${result.results.join('\n')}`,
    )
  })
})
