/**
 * The plugin's hooks, loaded with haraka-test-fixtures from the compiled
 * plugin, driven with fixture connections against an in-process fake
 * milter that milter.ini (in a test config directory) points at.
 */
import { transactionState } from '../../../lib/adapter/state'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

import type { Command } from '../../../lib/protocol/commands'
import { Family } from '../../../lib/protocol/constants'
import {
  FakeMilter,
  R,
  addheader,
  chgheader,
  replycode,
  type Answer,
  type Script,
} from '../chain/fake-milter'
import {
  MESSAGE,
  addr,
  connection,
  constants,
  feed,
  fixtures,
  loadPlugin,
  plain,
  read,
  transaction,
  type FixtureConnection,
  type FixtureTransaction,
  type HookCall,
  type LoadedPlugin,
} from './fixture'

const CONT = undefined // next() without a code: Haraka's CONT
const DENY = constants['deny']
const DENYSOFT = constants['denysoft']
const DENYSOFTDISCONNECT = constants['denysoftdisconnect']
const OK = constants['ok']

function writeConfig(dir: string, ini: string): void {
  fs.mkdirSync(path.join(dir, 'config'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'config', 'milter.ini'), ini)
  fs.writeFileSync(path.join(dir, 'config', 'host_list'), 'example.com\n')
}

function timeouts(): string {
  return 'connect_timeout = 2\ncommand_timeout = 2\ncontent_timeout = 2\n'
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

function call(
  plugin: LoadedPlugin,
  method: string,
  c: FixtureConnection,
  ...args: unknown[]
): Promise<HookCall> {
  return fixtures.callHook(plugin, method, c, ...args)
}

/** Asserts a DSN-style message: constructor DSN, code and reply lines. */
function assertDsn(msg: unknown, code: number, reply: string[]): void {
  assert.ok(msg && typeof msg === 'object', `a DSN object, got ${String(msg)}`)
  assert.equal(msg.constructor.name, 'DSN')
  const d = msg as { code: unknown; reply: unknown }
  assert.equal(d.code, code)
  assert.deepEqual(d.reply, reply)
}

/** The `NAME(stage:CODE)` prefix of each err result (the rest is the message). */
function codes(errs: string[]): string[] {
  return errs.map((e) => e.split(' ')[0] ?? '')
}

/** connection.results.get('milter') (or a transaction's), with defaults. */
function results(store: { get(name: string): unknown }): {
  pass: string[]
  fail: string[]
  err: string[]
} {
  const r = (store.get('milter') ?? {}) as Partial<Record<'pass' | 'fail' | 'err', string[]>>
  return { pass: r.pass ?? [], fail: r.fail ?? [], err: r.err ?? [] }
}

function only(cmd: Command['cmd'], answer: Answer): Script {
  return (c) => (c.cmd === cmd ? answer : undefined)
}

const text = (b: Buffer | undefined): string | undefined => b?.toString('utf8')

describe('adapter: plugin hooks (haraka-test-fixtures)', function () {
  this.timeout(5000)

  let dir: string
  let fake: FakeMilter
  let plugin: LoadedPlugin
  const open: FixtureConnection[] = []

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-hooks-'))
    fake = await FakeMilter.start()
    writeConfig(
      dir,
      `[main]\nmilters = fake\n\n[milter.fake]\nsocket = ${fake.spec}\n${timeouts()}\n` +
        `[quarantine]\ndir = ${path.join(dir, 'quarantine')}\n\n` +
        `[listener.internal]\nlisten = :2526\nmilters =\nsource_channel = internal\n\n` +
        // a section that only sets source_channel keeps [main]'s milters
        `[listener.channel]\nlisten = :2527\nsource_channel = chan\n`,
    )
    plugin = loadPlugin(dir)
  })

  after(async () => {
    plugin.milter?.close()
    await fake.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  beforeEach(() => {
    fake.script = () => undefined
  })

  afterEach(async () => {
    for (const c of open.splice(0)) await call(plugin, 'hook_disconnect', c)
  })

  function client(): FixtureConnection {
    const c = connection({ ip: '192.0.2.10', host: 'mx.example.net' })
    c.remote.port = 52100
    c.local.ip = '127.0.0.1'
    c.local.port = 25
    open.push(c)
    return c
  }

  /** CONNECT and EHLO, expected to continue. */
  async function greet(c: FixtureConnection): Promise<void> {
    assert.equal((await call(plugin, 'hook_connect', c)).rc, CONT)
    c.hello.host = 'mx.example.net'
    c.hello.verb = 'EHLO'
    assert.equal((await call(plugin, 'hook_ehlo', c, 'mx.example.net')).rc, CONT)
  }

  /**
   * MAIL, and per address RCPT at rcpt_ok as Haraka does it: the recipient
   * is already in rcpt_to and is popped again when refused.
   */
  async function envelope(
    c: FixtureConnection,
    rcpts: string[] = ['rcpt@example.com'],
  ): Promise<FixtureTransaction> {
    const t = transaction(c, 'sender@example.org', [])
    assert.equal((await call(plugin, 'hook_mail', c, [t.mail_from, {}])).rc, CONT)
    for (const r of rcpts) {
      const a = addr(r)
      t.rcpt_to.push(a)
      const res = await call(plugin, 'milter_rcpt', c, a)
      if (res.rc !== CONT) t.rcpt_to.pop()
    }
    return t
  }

  it('loads from the compiled output with the test config', () => {
    assert.ok(plugin.milter?.cfg)
    assert.equal(plugin.milter.error, undefined)
    assert.deepEqual([...plugin.milter.cfg.milters.keys()], ['fake'])
    assert.deepEqual(plugin.hooks['rcpt_ok'], ['milter_rcpt'])
    assert.deepEqual(plugin.hooks['queue'], ['milter_queue'])
    assert.ok(plugin.timeout > 6, `hook timeout ${plugin.timeout} s covers the milter timeouts`)
  })

  it('continue at every stage: what the milter is sent', async () => {
    const c = client()
    await greet(c)
    const m = fake.last
    const connect = m.all('connect')[0]
    assert.ok(connect)
    assert.equal(text(connect.hostname), 'mx.example.net')
    assert.equal(connect.family, Family.INET)
    assert.equal(connect.port, 52100)
    assert.equal(text(connect.address), '192.0.2.10')
    const cm = m.macros('connect')
    assert.equal(cm.get('{client_addr}'), '192.0.2.10')
    assert.equal(cm.get('{daemon_addr}'), '127.0.0.1')
    assert.equal(cm.get('{source_channel}'), 'tcp_local')
    assert.equal(cm.get('_'), 'mx.example.net [192.0.2.10]')
    assert.equal(text(m.all('helo')[0]?.helo), 'mx.example.net')

    const t = transaction(c, 'sender@example.org', [])
    const mail = await call(plugin, 'hook_mail', c, [
      t.mail_from,
      { SIZE: '1234', BODY: '8BITMIME' },
    ])
    assert.equal(mail.rc, CONT)
    assert.deepEqual(m.all('mail')[0]?.args.map(text), [
      '<sender@example.org>',
      'SIZE=1234',
      'BODY=8BITMIME',
    ])
    assert.equal(m.macros('mail').get('i'), t.uuid)
    assert.equal(m.macros('mail').get('{mail_addr}'), 'sender@example.org')
    assert.deepEqual(plain(transactionState(t as never).mailArgs), {
      SIZE: '1234',
      BODY: '8BITMIME',
    })

    const rcpt = addr('rcpt@example.com')
    t.rcpt_to.push(rcpt)
    assert.equal((await call(plugin, 'milter_rcpt', c, rcpt)).rc, CONT)
    assert.deepEqual(m.all('rcpt')[0]?.args.map(text), ['<rcpt@example.com>'])
    assert.equal(m.macros('rcpt').get('{rcpt_addr}'), 'rcpt@example.com')
    assert.equal(m.macros('rcpt').get('{rcpt_mailer}'), 'local', 'example.com is in host_list')
    assert.equal(m.macros('rcpt').get('{destination_channel}'), 'local')

    assert.equal((await call(plugin, 'hook_data', c)).rc, CONT)
    await feed(c, t, MESSAGE)
    const before = await read(t.message_stream)
    assert.equal((await call(plugin, 'hook_data_post', c)).rc, CONT)
    assert.deepEqual(
      m.all('header').map((x) => `${text(x.name)}:${text(x.value)}`),
      [
        'From:Sender <sender@example.org>',
        'To:rcpt@example.com',
        'Subject:hello',
        'X-Folded:part one\n\tpart two',
      ],
      "Haraka's Received is not sent",
    )
    assert.equal(
      Buffer.concat(m.all('body').map((b) => b.chunk)).toString(),
      'Body line one\r\n.starts with a dot\r\nlast line\r\n',
    )
    assert.equal(m.macros('eob').get('i'), t.uuid)
    assert.equal(await read(t.message_stream), before, 'nothing changed')
    assert.deepEqual(results(c.results).fail, [])

    await call(plugin, 'hook_disconnect', c)
    open.splice(open.indexOf(c), 1)
    await m.waitFor((x) => x.cmd === 'quit')
  })

  it('a listener section picks the milters and {source_channel}', async () => {
    const c = client()
    c.local.port = 2526
    const n = fake.conns.length
    assert.equal((await call(plugin, 'hook_connect', c)).rc, CONT)
    assert.equal(fake.conns.length, n, 'no milter for this listener')
  })

  it('a listener section without `milters` runs [main] milters, with its own {source_channel}', async () => {
    const c = client()
    c.local.port = 2527
    const n = fake.conns.length
    assert.equal((await call(plugin, 'hook_connect', c)).rc, CONT)
    assert.equal(fake.conns.length, n + 1, 'the [main] milter was contacted')
    await fake.last.waitFor((cmd) => cmd.cmd === 'connect')
    assert.equal(fake.last.macros('connect').get('{source_channel}'), 'chan')
  })

  it('reject at MAIL: deny with the DSN, result recorded', async () => {
    fake.script = only('mail', R.reject)
    const c = client()
    await greet(c)
    const t = transaction(c, 'sender@example.org', [])
    const r = await call(plugin, 'hook_mail', c, [t.mail_from, {}])
    assert.equal(r.rc, DENY)
    assertDsn(r.msg, 550, ['5.7.1 Command rejected'])
    assert.deepEqual(results(c.results).fail, ['fake(mail:reject)'])
  })

  it('reject at RCPT: only that recipient', async () => {
    fake.script = (cmd) =>
      cmd.cmd === 'rcpt' && text(cmd.args[0]) === '<bad@example.com>'
        ? replycode('550 5.1.1 <bad@example.com>: Recipient address rejected')
        : undefined
    const c = client()
    await greet(c)
    const t = transaction(c, 'sender@example.org', [])
    await call(plugin, 'hook_mail', c, [t.mail_from, {}])
    assert.equal((await call(plugin, 'milter_rcpt', c, addr('good@example.com'))).rc, CONT)
    const bad = await call(plugin, 'milter_rcpt', c, addr('bad@example.com'))
    assert.equal(bad.rc, DENY)
    assertDsn(bad.msg, 550, ['5.1.1 <bad@example.com>: Recipient address rejected'])
    assert.equal((await call(plugin, 'milter_rcpt', c, addr('good2@example.com'))).rc, CONT)
    assert.equal(fake.last.all('rcpt').length, 3)
    assert.deepEqual(results(c.results).fail, ['fake(rcpt:reject)'])
  })

  it('tempfail at MAIL: denysoft 451 4.7.1', async () => {
    fake.script = only('mail', R.tempfail)
    const c = client()
    await greet(c)
    const t = transaction(c)
    const r = await call(plugin, 'hook_mail', c, [t.mail_from, {}])
    assert.equal(r.rc, DENYSOFT)
    assertDsn(r.msg, 451, ['4.7.1 Service unavailable - try again later'])
  })

  it('a 421 reply code: denysoftdisconnect', async () => {
    fake.script = only('helo', replycode('421 4.7.0 mx closing'))
    const c = client()
    assert.equal((await call(plugin, 'hook_connect', c)).rc, CONT)
    const r = await call(plugin, 'hook_helo', c, 'mx.example.net')
    assert.equal(r.rc, DENYSOFTDISCONNECT)
    assertDsn(r.msg, 421, ['4.7.0 mx closing'])
    assert.deepEqual(results(c.results).fail, ['fake(helo:shutdown)'])
  })

  it('SMFIR_SHUTDOWN at RCPT: denysoftdisconnect 421', async () => {
    fake.script = only('rcpt', R.shutdown)
    const c = client()
    await greet(c)
    const t = transaction(c)
    await call(plugin, 'hook_mail', c, [t.mail_from, {}])
    const r = await call(plugin, 'milter_rcpt', c, addr('rcpt@example.com'))
    assert.equal(r.rc, DENYSOFTDISCONNECT)
    assertDsn(r.msg, 421, ['4.7.0 Server closing connection'])
  })

  it('a multi-line reject at end of message', async () => {
    fake.script = only('eob', replycode('554-5.7.1 line one', '554 5.7.1 line two'))
    const c = client()
    await greet(c)
    const t = await envelope(c)
    await call(plugin, 'hook_data', c)
    await feed(c, t, MESSAGE)
    const r = await call(plugin, 'hook_data_post', c)
    assert.equal(r.rc, DENY)
    assertDsn(r.msg, 554, ['5.7.1 line one', '5.7.1 line two'])
    assert.deepEqual(results(c.results).fail, ['fake(eom:reject)'])
  })

  it('end-of-message edits are applied to the transaction', async () => {
    fake.script = only('eob', [
      addheader('X-Milter', 'yes'),
      chgheader(1, 'Subject', 'changed'),
      { kind: 'replbody', chunk: Buffer.from('new body\n.dot\n') },
      { kind: 'addrcpt', rcpt: Buffer.from('<added@example.com>') },
      { kind: 'delrcpt', rcpt: Buffer.from('<rcpt@example.com>') },
      {
        kind: 'chgfrom',
        sender: Buffer.from('<bounce@example.org>'),
        args: Buffer.from('SIZE=10'),
      },
      R.continue,
    ])
    const c = client()
    await greet(c)
    const t = await envelope(c)
    const list = t.header.header_list
    await call(plugin, 'hook_data', c)
    await feed(c, t, MESSAGE)
    const r = await call(plugin, 'hook_data_post', c)
    assert.equal(r.rc, CONT)
    assert.equal(t.header.header_list, list)
    assert.equal(t.header.get('X-Milter').trim(), 'yes')
    assert.equal(t.header.get('Subject').trim(), 'changed')
    const out = await read(t.message_stream)
    assert.match(out, /^Received: /)
    assert.ok(out.endsWith('\r\nX-Milter: yes\r\n\r\nnew body\r\n.dot\r\n'), JSON.stringify(out))
    assert.deepEqual(
      t.rcpt_to.map((a) => a.address),
      ['added@example.com'],
    )
    assert.equal(t.mail_from.address, 'bounce@example.org')
    assert.deepEqual(t.notes['milter_envelope_args'], { mail: 'SIZE=10', rcpt: {} })
    assert.deepEqual(results(t.results).pass, ['fake(edits:5,body)'])
  })

  it('DISCARD at RCPT: the message is accepted at queue and not delivered', async () => {
    fake.script = only('rcpt', R.discard)
    const c = client()
    await greet(c)
    const t = await envelope(c)
    assert.deepEqual(plain(transactionState(t as never).disposition), {
      kind: 'discard',
      milter: 'fake',
    })
    assert.equal((await call(plugin, 'hook_data', c)).rc, CONT)
    await feed(c, t, MESSAGE)
    assert.equal((await call(plugin, 'hook_data_post', c)).rc, CONT)
    assert.ok(!fake.last.names.includes('data'), 'the milter is not asked about the rest')
    assert.ok(!fake.last.names.includes('header'))
    const q = await call(plugin, 'milter_queue', c)
    assert.equal(q.rc, OK)
    assert.equal(q.msg, 'Message accepted')
    assert.deepEqual(results(t.results).pass, ['discard'])
  })

  it('QUARANTINE (action hold): accepted at queue, copy written', async () => {
    fake.script = only('eob', [
      { kind: 'quarantine', reason: Buffer.from('suspicious') },
      R.continue,
    ])
    const c = client()
    await greet(c)
    const t = await envelope(c)
    await call(plugin, 'hook_data', c)
    await feed(c, t, MESSAGE)
    assert.equal((await call(plugin, 'hook_data_post', c)).rc, CONT)
    assert.deepEqual(plain(transactionState(t as never).disposition), {
      kind: 'hold',
      reason: 'fake: suspicious',
      milters: ['fake'],
    })
    const q = await call(plugin, 'milter_queue', c)
    assert.equal(q.rc, OK)
    assert.equal(q.msg, 'Message accepted', 'hold_reply: nothing tells the sender of the hold')
    const day = new Date().toISOString().slice(0, 10).replace(/-/g, '')
    const file = path.join(dir, 'quarantine', day, `${t.uuid}.eml`)
    assert.ok(fs.readFileSync(file, 'utf8').startsWith('Received: '))
    const meta = JSON.parse(fs.readFileSync(file.replace(/\.eml$/, '.json'), 'utf8'))
    assert.equal(meta.reason, 'fake: suspicious')
  })

  it('a message without a disposition passes the queue hook', async () => {
    const c = client()
    await greet(c)
    await envelope(c)
    assert.equal((await call(plugin, 'milter_queue', c)).rc, CONT)
  })

  describe('an unreachable milter and a bad configuration', () => {
    let other: string
    beforeEach(() => {
      other = fs.mkdtempSync(path.join(os.tmpdir(), 'milter-hooks-'))
    })
    afterEach(() => {
      fs.rmSync(other, { recursive: true, force: true })
    })

    for (const scope of ['message', 'session']) {
      it(`default_action tempfail on a failed open (failure_scope ${scope}): 220 greeting and HELO, 451 at MAIL`, async () => {
        writeConfig(
          other,
          `[main]\nmilters = down\nfailure_scope = ${scope}\n[milter.down]\nsocket = inet:${await closedPort()}@127.0.0.1\n${timeouts()}`,
        )
        const p = loadPlugin(other)
        const c = connection({ ip: '192.0.2.10' })
        // RFC 5321 4.3.2: a greeting may only be 220, 421 or 554; HELO may not be 451
        assert.equal((await call(p, 'hook_connect', c)).rc, CONT)
        const res = results(c.results)
        assert.deepEqual(codes(res.err), ['down(connect:MILTER_ERR_CONNECT)'])
        assert.match(res.err[0] ?? '', /cannot connect to milter at .*; default_action=tempfail$/)
        assert.deepEqual(res.fail, ['down(connect:tempfail,failure)'])
        assert.equal((await call(p, 'hook_ehlo', c, 'client.example.net')).rc, CONT)
        const t = transaction(c, 'sender@example.org', [])
        const r = await call(p, 'hook_mail', c, [t.mail_from, {}])
        assert.equal(r.rc, DENYSOFT)
        assertDsn(r.msg, 451, ['4.7.1 Service unavailable - try again later'])
        // message scope tried the milter again at MAIL; session scope did not
        assert.deepEqual(
          codes(results(c.results).err),
          scope === 'message'
            ? ['down(connect:MILTER_ERR_CONNECT)', 'down(mail:MILTER_ERR_CONNECT)']
            : ['down(connect:MILTER_ERR_CONNECT)'],
        )
        await call(p, 'hook_disconnect', c)
      })
    }

    it('default_action accept on a failed open: continue', async () => {
      writeConfig(
        other,
        `[main]\nmilters = down\n[milter.down]\nsocket = inet:${await closedPort()}@127.0.0.1\ndefault_action = accept\n`,
      )
      const p = loadPlugin(other)
      const c = connection({ ip: '192.0.2.10' })
      assert.equal((await call(p, 'hook_connect', c)).rc, CONT)
      assert.deepEqual(codes(results(c.results).err), ['down(connect:MILTER_ERR_CONNECT)'])
      await call(p, 'hook_disconnect', c)
    })

    it('a configuration error at startup: greeted, then every MAIL is refused with 451 4.3.5', async () => {
      writeConfig(other, `[main]\nmilters = nosection\n`)
      const p = loadPlugin(other)
      assert.match(p.milter?.error ?? '', /\[main\] milters: lists "nosection"/)
      const c = connection({ ip: '192.0.2.10' })
      assert.equal((await call(p, 'hook_connect', c)).rc, CONT)
      const t = transaction(c, 'sender@example.org', [])
      for (let i = 0; i < 2; i++) {
        const r = await call(p, 'hook_mail', c, [t.mail_from, {}])
        assert.equal(r.rc, DENYSOFT)
        assertDsn(r.msg, 451, ['4.3.5 Server configuration problem - try again later'])
      }
    })
  })
})
