/**
 * Several endpoints per milter and TLS, through a real Haraka with real
 * libmilter filters (pymilter):
 *
 * - failover when the first endpoint refuses connections, its breaker
 *   opening so later sessions skip it, and its return (after the probe the
 *   first endpoint has the traffic again);
 * - failover when the first endpoint hangs (a TCP server that accepts and
 *   never answers: misbehaviour libmilter cannot produce), bounded by
 *   connect_timeout once, then skipped at once;
 * - round_robin spreading sessions over two filters (CONNECTs each logged);
 * - TLS to a filter behind a TLS terminator with certificates made by
 *   openssl: a trusted certificate with the right name (and a client
 *   certificate) delivers the filter's edit; an untrusted CA or a wrong name
 *   fails the handshake, the milter's default_action applies and the log
 *   names the TLS error.
 */
import assert from 'node:assert/strict'

import { startHaraka, stopAllHarakas, type RunningHaraka } from '../helpers/haraka'
import {
  assertPymilterInstalled,
  startScriptedMilter,
  stopAllMilters,
  type StartedMilter,
} from '../helpers/milter-process'
import { freePort } from '../helpers/paths'
import { headerValues, startSink, type Sink } from '../helpers/sink'
import { sendMailTo } from '../helpers/smtp-client'
import {
  makeCerts,
  startSilentServer,
  startTlsProxy,
  type TestCerts,
  type TlsProxy,
} from '../helpers/tls'

function count(text: string, re: RegExp): number {
  return text.match(new RegExp(re.source, 'g'))?.length ?? 0
}

function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

const header = (name: string, value: string) => ({
  eom: [{ op: 'addheader' as const, name, value }],
})

describe('several endpoints and TLS end to end (real Haraka, real libmilter)', function () {
  this.timeout(60000)
  let haraka: RunningHaraka
  let sink: Sink
  let certs: TestCerts
  let live: StartedMilter
  let rr1: StartedMilter
  let rr2: StartedMilter
  let tlsBackend: StartedMilter
  let primary: StartedMilter | undefined
  let silent: Awaited<ReturnType<typeof startSilentServer>>
  const proxies: TlsProxy[] = []
  let deadPort: number
  let goodProxy: TlsProxy
  let port: Record<'fo' | 'hang' | 'rr' | 'good' | 'badca' | 'badname', number>

  before(async () => {
    assertPymilterInstalled()
    certs = makeCerts('milter.test')
    sink = await startSink()
    deadPort = await freePort()
    live = await startScriptedMilter(header('X-Endpoint', 'live'))
    rr1 = await startScriptedMilter(header('X-Endpoint', 'rr1'))
    rr2 = await startScriptedMilter(header('X-Endpoint', 'rr2'))
    tlsBackend = await startScriptedMilter(header('X-Tls', 'yes'))
    silent = await startSilentServer()
    const tlsPort = Number(tlsBackend.socket.replace(/^inet:(\d+)@.*$/, '$1'))
    goodProxy = await startTlsProxy({
      cert: certs.serverCert,
      key: certs.serverKey,
      target: tlsPort,
      clientCa: certs.ca,
    })
    const plainProxy = await startTlsProxy({
      cert: certs.serverCert,
      key: certs.serverKey,
      target: tlsPort,
    })
    proxies.push(goodProxy, plainProxy)
    const names = ['fo', 'hang', 'rr', 'good', 'badca', 'badname'] as const
    const ports = await Promise.all(names.map(() => freePort()))
    port = Object.fromEntries(names.map((n, i) => [n, ports[i]])) as typeof port
    const listeners = names.map(
      (n) => `[listener.${n}]\nlisten = 127.0.0.1:${port[n]}\nmilters = ${n}\n`,
    )
    haraka = await startHaraka({
      listeners: names.map((n) => `127.0.0.1:${port[n]}`),
      plugins: ['milter', 'rcpt_to.in_host_list', 'queue/smtp_forward'],
      sinkPort: sink.port,
      config: {
        'milter.ini': `[main]
milters = ${names.join(', ')}
default_action = tempfail
command_timeout = 5
content_timeout = 5

[milter.fo]
socket = inet:${deadPort}@127.0.0.1, ${live.socket}
connect_timeout = 2
breaker_failures = 2
breaker_backoff = 1
breaker_backoff_max = 1

[milter.hang]
socket = inet:${silent.port}@127.0.0.1 ${live.socket}
connect_timeout = 1
breaker_failures = 1
breaker_backoff = 60

[milter.rr]
socket = ${rr1.socket}, ${rr2.socket}
balance = round_robin

[milter.good]
socket = inet:${goodProxy.port}@127.0.0.1
tls = true
tls_ca = ${certs.ca}
tls_cert = ${certs.clientCert}
tls_key = ${certs.clientKey}
tls_servername = ${certs.serverName}

[milter.badca]
socket = inet:${plainProxy.port}@127.0.0.1
tls = true
tls_ca = ${certs.otherCa}
tls_servername = ${certs.serverName}

[milter.badname]
socket = inet:${plainProxy.port}@127.0.0.1
default_action = accept
tls = true
tls_ca = ${certs.ca}
tls_servername = wrong.test

${listeners.join('\n')}`,
      },
    })
  })

  after(async () => {
    await stopAllHarakas()
    await stopAllMilters()
    for (const p of proxies) await p.stop()
    await silent?.stop()
    await sink?.stop()
    certs?.remove()
  })

  afterEach(() => sink.clear())

  function send(to: number, subject = 'endpoints'): ReturnType<typeof sendMailTo> {
    return sendMailTo('127.0.0.1', to, {
      helo: 'client.example.org',
      from: 'alice@example.org',
      rcpts: ['bob@example.com'],
      data: `Subject: ${subject}\r\n\r\nbody\r\n`,
    })
  }

  async function delivered(n: number, name: string): Promise<string[]> {
    const ms = await sink.waitForMessages(n, 10000)
    return ms.map((m) => headerValues(m, name).join(','))
  }

  it('failover: the first endpoint refused -> the second, then skipped; used again when back', async () => {
    const since = haraka.log().length
    const dead = `inet:${deadPort}@127.0.0.1`
    for (let i = 0; i < 4; i++) {
      const r = await send(port.fo)
      assert.equal(r.accepted, true, JSON.stringify(r.replies))
    }
    assert.deepEqual(await delivered(4, 'X-Endpoint'), ['live', 'live', 'live', 'live'])
    let log = haraka.log().slice(since)
    // dialled twice (each session failing over at once), then its breaker opened
    assert.equal(
      count(
        log,
        // on the SMTP connection's log line: its id names the session that failed over
        new RegExp(
          `\\[INFO\\] \\[[0-9A-F-]{36}\\] \\[milter\\] fo: failed over to ${esc(live.socket)}: ${esc(dead)} failed \\(cannot connect`,
        ),
      ),
      2,
      log,
    )
    assert.equal(
      count(
        log,
        // WARN, not ERROR: the other endpoint serves
        new RegExp(
          `\\[WARN\\].*fo: marked down after 2 consecutive connect failure\\(s\\) to ${esc(dead)}.*sessions use the milter's other endpoints`,
        ),
      ),
      1,
      log,
    )
    assert.equal(
      count(
        log,
        new RegExp(`fo: session on ${esc(live.socket)} \\(${esc(dead)} marked down, skipped\\)`),
      ),
      2,
      log,
    )
    assert.equal(count(log, /\[ERROR\].*\bfo\(/), 0, 'no session failed')
    // the per-message line names the endpoint each message actually went through
    assert.equal(
      count(log, new RegExp(`\\[milter\\] fo \\(${esc(live.socket)}\\): stages `)),
      4,
      log,
    )

    // the first endpoint comes back: after the back-off a session probes it, and it has the traffic again
    primary = await startScriptedMilter(header('X-Endpoint', 'primary'), { port: deadPort })
    await new Promise((r) => setTimeout(r, 1200))
    sink.clear()
    for (let i = 0; i < 2; i++) assert.equal((await send(port.fo)).accepted, true)
    assert.deepEqual(await delivered(2, 'X-Endpoint'), ['primary', 'primary'])
    log = haraka.log().slice(since)
    assert.equal(count(log, new RegExp(`fo: ${esc(dead)} is back up`)), 1, log)
    assert.equal(primary.eventsOf('connect').length, 2)
  })

  it('failover: a first endpoint that accepts and never answers costs connect_timeout once', async () => {
    const since = haraka.log().length
    const t0 = Date.now()
    const first = await send(port.hang)
    const firstMs = Date.now() - t0
    assert.equal(first.accepted, true, JSON.stringify(first.replies))
    assert.ok(firstMs >= 900, `the first session waited connect_timeout (${firstMs} ms)`)
    const t1 = Date.now()
    const second = await send(port.hang)
    const secondMs = Date.now() - t1
    assert.equal(second.accepted, true)
    assert.ok(secondMs < 700, `the second session skipped the hung endpoint (${secondMs} ms)`)
    assert.deepEqual(await delivered(2, 'X-Endpoint'), ['live', 'live'])
    assert.equal(silent.accepted, 1, 'the hung endpoint was dialled once')
    const log = haraka.log().slice(since)
    assert.match(
      log,
      new RegExp(
        `hang: failed over to ${esc(live.socket)}: inet:${silent.port}@127\\.0\\.0\\.1 failed \\(milter connect timeout after 1000 ms`,
      ),
    )
  })

  it('round_robin: sessions spread over both filters', async () => {
    const before1 = rr1.eventsOf('connect').length
    const before2 = rr2.eventsOf('connect').length
    for (let i = 0; i < 6; i++) assert.equal((await send(port.rr)).accepted, true)
    const got = await delivered(6, 'X-Endpoint')
    assert.equal(rr1.eventsOf('connect').length - before1, 3)
    assert.equal(rr2.eventsOf('connect').length - before2, 3)
    assert.deepEqual([...got].sort(), ['rr1', 'rr1', 'rr1', 'rr2', 'rr2', 'rr2'])
  })

  it('TLS: trusted CA, right name, client certificate -> the milter edits the message', async () => {
    const r = await send(port.good)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(await delivered(1, 'X-Tls'), ['yes'])
    assert.ok(goodProxy.secured >= 1)
  })

  it('TLS: an untrusted CA fails the handshake; default_action (tempfail) applies, the log names the error', async () => {
    const since = haraka.log().length
    const r = await send(port.badca)
    assert.equal(r.accepted, false)
    assert.equal(r.replies.mail?.code, 451)
    const log = haraka.log().slice(since)
    assert.match(
      log,
      /\[ERROR\].*badca\(connect:MILTER_ERR_CONNECT\) TLS handshake with milter at inet:\d+@127\.0\.0\.1 failed: (self[- ]signed certificate in certificate chain|unable to verify the first certificate|unable to get local issuer certificate).*default_action=tempfail$/m,
    )
  })

  it('TLS: a certificate for another name fails the handshake; default_action (accept) applies', async () => {
    const since = haraka.log().length
    const r = await send(port.badname)
    assert.equal(r.accepted, true, JSON.stringify(r.replies))
    assert.deepEqual(await delivered(1, 'X-Tls'), [''])
    const log = haraka.log().slice(since)
    assert.match(
      log,
      /\[ERROR\].*badname\(connect:MILTER_ERR_CONNECT\) TLS handshake with milter at inet:\d+@127\.0\.0\.1 failed: Hostname\/IP does not match certificate's altnames: Host: wrong\.test\..*default_action=accept$/m,
    )
  })
})
