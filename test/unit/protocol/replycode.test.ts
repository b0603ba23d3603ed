import assert from 'node:assert/strict'

import {
  formatReplyLine,
  formatSmtpReply,
  parseReplyCode,
  replyTexts,
  serverReply,
  smtpLines,
  type SmtpReply,
} from '../../../lib/protocol/replycode'

function ok(raw: string): SmtpReply {
  const r = parseReplyCode(raw)
  if (!r.ok) assert.fail(`${JSON.stringify(raw)} refused: ${r.error}`)
  return r.reply
}

function refused(raw: string): string {
  const r = parseReplyCode(raw)
  if (r.ok) assert.fail(`${JSON.stringify(raw)} accepted as ${JSON.stringify(r.reply)}`)
  assert.ok(r.error.length > 0)
  return r.error
}

describe('parseReplyCode: valid replies', () => {
  it('accepts a single line with an enhanced code', () => {
    assert.deepStrictEqual(ok('550 5.7.1 Message refused'), {
      code: 550,
      enhanced: '5.7.1',
      lines: [{ enhanced: '5.7.1', text: 'Message refused' }],
    })
  })

  it('accepts a single line without an enhanced code', () => {
    assert.deepStrictEqual(ok('451 Try later'), { code: 451, lines: [{ text: 'Try later' }] })
  })

  it('accepts a multi-line reply joined by CRLF', () => {
    assert.deepStrictEqual(ok('550-5.7.0 a\r\n550 5.7.0 b'), {
      code: 550,
      enhanced: '5.7.0',
      lines: [
        { enhanced: '5.7.0', text: 'a' },
        { enhanced: '5.7.0', text: 'b' },
      ],
    })
  })

  it('accepts the multi-line reply captured from smfi_setmlreply (§3.4)', () => {
    const r = ok('450-4.2.0 line one\r\n450 4.2.0 line two')
    assert.equal(r.code, 450)
    assert.deepStrictEqual(
      r.lines.map((l) => l.text),
      ['line one', 'line two'],
    )
  })

  it('accepts 421 (the caller closes the SMTP session)', () => {
    assert.equal(ok('421 4.7.0 Server closing connection').code, 421)
    assert.equal(ok('421-4.7.0 a\r\n421 4.7.0 b').code, 421)
  })

  it('accepts a bare code with no text', () => {
    assert.deepStrictEqual(ok('554'), { code: 554, lines: [{ text: '' }] })
  })

  it('turns %% into % and drops a lone % (Postfix)', () => {
    assert.equal(ok('550 5.7.1 100%% sure').lines[0]?.text, '100% sure')
    assert.equal(ok('550 5.7.1 50% off').lines[0]?.text, '50 off')
    assert.equal(ok('550 5.7.1 %%%').lines[0]?.text, '%')
  })

  it('does not take a non-matching dotted word for an enhanced code', () => {
    const r = ok('550 5.7.1x refused')
    assert.equal(r.enhanced, undefined)
    assert.equal(r.lines[0]?.text, '5.7.1x refused')
  })

  it('accepts a trailing CRLF after the last line', () => {
    assert.equal(ok('550 5.7.1 no\r\n').lines.length, 1)
  })
})

describe('parseReplyCode: invalid replies', () => {
  const cases: Array<[string, string]> = [
    ['a 2xx code', '250 ok'],
    ['a 2xx code with an enhanced code', '250 2.0.0 ok'],
    ['a 3xx code', '354 go ahead'],
    ['a 1xx code', '100 hmm'],
    ['a 6xx code', '600 6.0.0 x'],
    ['an enhanced class that does not match (550 4.7.1)', '550 4.7.1 x'],
    ['an enhanced class that does not match (451 5.7.1)', '451 5.7.1 x'],
    ['a 2.x.x enhanced code on a 5xx reply', '550 2.0.0 x'],
    ['a mismatched enhanced class on a continuation line', '550-5.7.0 a\r\n550 4.7.0 b'],
    ['different codes across lines', '550-5.7.0 a\r\n551 5.7.0 b'],
    ['4xx and 5xx across lines', '450-4.7.0 a\r\n550 5.7.0 b'],
    ['a last line with "-"', '550-5.7.0 a\r\n550-5.7.0 b'],
    ['a single line with "-"', '550-5.7.1 only'],
    ['a continuation line without "-"', '550 5.7.0 a\r\n550 5.7.0 b'],
    ['lines joined by bare LF', '550-5.7.0 a\n550 5.7.0 b'],
    ['an empty reply', ''],
    ['garbage', 'garbage'],
    ['a two-digit code', '55 x'],
    ['a four-digit code', '5500 x'],
    ['a code not at the start', ' 550 x'],
    ['a tab after the code', '550\tx'],
    ['an empty line in the middle', '550-a\r\n\r\n550 b'],
  ]
  for (const [name, raw] of cases) {
    it(`refuses ${name}`, () => {
      refused(raw)
    })
  }

  it('says which codes were mixed', () => {
    assert.match(refused('550-5.7.0 a\r\n551 5.7.0 b'), /550.*551/)
  })
})

describe('formatSmtpReply', () => {
  const roundTrip = [
    '550 5.7.1 Message refused',
    '451 Try later',
    '550-5.7.0 a\r\n550 5.7.0 b',
    '421-4.7.0 first\r\n421-4.7.0 second\r\n421 4.7.0 third',
    '554',
  ]
  for (const raw of roundTrip) {
    it(`gives back ${JSON.stringify(raw)} after parsing`, () => {
      assert.equal(formatSmtpReply(ok(raw)).join('\r\n'), raw)
    })
  }

  it('puts "-" after every line but the last', () => {
    const lines = formatSmtpReply(ok('550-a\r\n550-b\r\n550 c'))
    assert.deepStrictEqual(lines, ['550-a', '550-b', '550 c'])
  })

  it('re-parses its own output to the same reply', () => {
    const r = ok('450-4.2.0 x\r\n450 y')
    assert.deepStrictEqual(ok(formatSmtpReply(r).join('\r\n')), r)
  })
})

describe('protocol: REPLYCODE text made fit for SMTP (RFC 5321)', () => {
  it('a 100,000-character line is cut to fit 512 octets with its code and CRLF', () => {
    const r = ok(`550 5.7.1 ${'x'.repeat(100_000)}`)
    for (const line of formatSmtpReply(r)) assert.ok(line.length + 2 <= 512, `${line.length}`)
    assert.equal(formatSmtpReply(r)[0]?.length, 510)
  })

  it('without an enhanced code too', () => {
    const r = ok(`451 ${'y'.repeat(1000)}`)
    assert.equal(formatSmtpReply(r)[0]?.length, 510)
  })

  it('8-bit bytes become ?, never U+FFFD', () => {
    const raw = Buffer.concat([Buffer.from('550 5.7.1 Caf'), Buffer.from([0xe9, 0xc3, 0xbc])])
    const r = ok(raw.toString('latin1'))
    assert.deepEqual(r.lines, [{ enhanced: '5.7.1', text: 'Caf???' }])
  })

  it('more than 32 lines is malformed (libmilter sends at most 32)', () => {
    const lines = Array.from({ length: 33 }, (_, i) => `550${i === 32 ? ' ' : '-'}5.7.1 l${i}`)
    const r = parseReplyCode(lines.join('\r\n'))
    assert.equal(r.ok, false)
    const ok32 = lines.slice(0, 31).concat('550 5.7.1 last')
    assert.equal(ok(ok32.join('\r\n')).lines.length, 32)
  })
})

describe('protocol: the one SMTP reply formatter', () => {
  const reply = {
    code: 550,
    enhanced: '5.7.1',
    lines: [
      { enhanced: '5.7.1', text: 'first' },
      { text: 'second' },
      { enhanced: '5.7.1', text: '' },
    ],
  }

  it('replyTexts: each line as Haraka sends it after the code', () => {
    assert.deepEqual(replyTexts(reply), ['5.7.1 first', 'second', '5.7.1'])
  })

  it('formatSmtpReply: SMTP lines, `-` on all but the last', () => {
    assert.deepEqual(formatSmtpReply(reply), ['550-5.7.1 first', '550-second', '550 5.7.1'])
  })

  it('smtpLines: a line with no text has no trailing space', () => {
    assert.deepEqual(smtpLines(451, ['']), ['451'])
  })

  it('formatReplyLine: the code once, the lines joined for a log line', () => {
    assert.equal(formatReplyLine(reply), '550 5.7.1 first / second / 5.7.1')
  })
})

describe('serverReply: a reply read from a server (the quarantine release)', () => {
  it('splits an enhanced code of the reply’s class off each line, keeps the rest as text', () => {
    assert.deepEqual(serverReply(250, ['2.0.0 Ok: queued as X', 'PIPELINING']), {
      code: 250,
      enhanced: '2.0.0',
      lines: [{ enhanced: '2.0.0', text: 'Ok: queued as X' }, { text: 'PIPELINING' }],
    })
    // a 5.x.x on a 4xx reply is text, not its enhanced code
    assert.deepEqual(serverReply(450, ['5.7.1 odd']), { code: 450, lines: [{ text: '5.7.1 odd' }] })
    assert.equal(
      formatReplyLine(serverReply(550, ['5.1.1 no such user', 'bye'])),
      '550 5.1.1 no such user / bye',
    )
  })
})
