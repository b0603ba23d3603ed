import assert from 'node:assert/strict'

import {
  HeaderEditError,
  applyHeaderEdits,
  checkHeaderName,
  flattenHeaderValue,
  formatHeaderBlock,
  headerValueText,
  keepFolds,
  parseMessage,
  toCrlf,
  type HeaderEdit,
  type HeaderField,
} from '../../../lib/message/headers'

/** `Name: value` lines, for compact expectations. */
function lines(fields: readonly HeaderField[]): string[] {
  return fields.map((f) => `${f.name}:${f.value}`)
}

const TRACE: HeaderField = { name: 'Received', value: ' from us', hidden: true }

function block(...specs: string[]): HeaderField[] {
  return specs.map((s) => {
    const i = s.indexOf(':')
    return { name: s.slice(0, i), value: s.slice(i + 1) }
  })
}

const chg = (index: number, name: string, value: string): HeaderEdit => ({
  kind: 'chgheader',
  index,
  name,
  value,
})
const ins = (index: number, name: string, value: string): HeaderEdit => ({
  kind: 'insheader',
  index,
  name,
  value,
})
const add = (name: string, value: string): HeaderEdit => ({ kind: 'addheader', name, value })

describe('applyHeaderEdits: CHGHEADER', () => {
  const base = block('From: a', 'Subject: one', 'X-A: 1', 'x-a: 2', 'X-A: 3')

  it('replaces the n-th occurrence, counting from 1', () => {
    assert.deepStrictEqual(lines(applyHeaderEdits(base, [chg(2, 'X-A', 'two')], false)), [
      'From: a',
      'Subject: one',
      'X-A: 1',
      'X-A: two',
      'X-A: 3',
    ])
  })

  it('treats index 0 as 1', () => {
    assert.deepStrictEqual(
      lines(applyHeaderEdits(base, [chg(0, 'X-A', 'first')], false)).slice(2, 3),
      ['X-A: first'],
    )
  })

  it('matches the name case-insensitively', () => {
    const out = applyHeaderEdits(base, [chg(1, 'SUBJECT', 'two')], false)
    assert.deepStrictEqual(out[1], { name: 'SUBJECT', value: ' two' })
  })

  it('does not count the hidden trace header', () => {
    const input = [{ ...TRACE }, ...block('Received: from them', 'Subject: s')]
    const out = applyHeaderEdits(input, [chg(1, 'Received', 'changed')], false)
    assert.deepStrictEqual(lines(out), ['Received: from us', 'Received: changed', 'Subject: s'])
    assert.equal(out[0]?.hidden, true)
  })

  it('appends when the index is past the end and the value is not empty', () => {
    const out = applyHeaderEdits(base, [chg(4, 'X-A', 'four')], false)
    assert.deepStrictEqual(lines(out), [...lines(base), 'X-A: four'])
  })

  it('appends when no header of that name exists', () => {
    const out = applyHeaderEdits(base, [chg(1, 'X-New', 'v')], false)
    assert.deepStrictEqual(lines(out), [...lines(base), 'X-New: v'])
  })

  it('deletes with an empty value', () => {
    const out = applyHeaderEdits(base, [chg(1, 'Subject', '')], false)
    assert.deepStrictEqual(lines(out), ['From: a', 'X-A: 1', 'x-a: 2', 'X-A: 3'])
  })

  it('does nothing for an empty value past the end', () => {
    const out = applyHeaderEdits(base, [chg(9, 'X-A', ''), chg(1, 'X-None', '')], false)
    assert.deepStrictEqual(lines(out), lines(base))
  })

  it('resolves each index after the earlier deletions of the same answer (Postfix)', () => {
    // Postfix: delete #1 (value 1), then #2 of what is left (value 3). Sendmail would delete 1 and 2.
    const out = applyHeaderEdits(base, [chg(1, 'X-A', ''), chg(2, 'X-A', '')], false)
    assert.deepStrictEqual(lines(out), ['From: a', 'Subject: one', 'x-a: 2'])
  })

  it('gives the same result either way when deleting from the highest index down (rspamd)', () => {
    const out = applyHeaderEdits(
      base,
      [chg(3, 'X-A', ''), chg(2, 'X-A', ''), chg(1, 'X-A', 'only')],
      false,
    )
    assert.deepStrictEqual(lines(out), ['From: a', 'Subject: one', 'X-A: only'])
  })
})

describe('applyHeaderEdits: INSHEADER and ADDHEADER', () => {
  const input = (): HeaderField[] => [{ ...TRACE }, ...block('From: a', 'Subject: s')]

  it('inserts at 0 above everything, including the hidden trace header', () => {
    assert.deepStrictEqual(lines(applyHeaderEdits(input(), [ins(0, 'X-Top', 't')], false)), [
      'X-Top: t',
      'Received: from us',
      'From: a',
      'Subject: s',
    ])
  })

  it('inserts at 1 right below the trace header (rspamd DKIM-Signature)', () => {
    assert.deepStrictEqual(
      lines(applyHeaderEdits(input(), [ins(1, 'DKIM-Signature', 'v=1')], false)),
      ['Received: from us', 'DKIM-Signature: v=1', 'From: a', 'Subject: s'],
    )
  })

  it('appends when the index is past the end', () => {
    const out = applyHeaderEdits(
      input(),
      [ins(3, 'X-End', 'e'), ins(0xffffffff, 'X-Far', 'f')],
      false,
    )
    assert.deepStrictEqual(lines(out).slice(-2), ['X-End: e', 'X-Far: f'])
  })

  it('appends ADDHEADER after the last header', () => {
    assert.deepStrictEqual(
      lines(applyHeaderEdits(input(), [add('X-Test', 'yes')], false)).slice(-1),
      ['X-Test: yes'],
    )
  })

  it('applies edits in order, each against the list the previous ones left', () => {
    const out = applyHeaderEdits(
      input(),
      [add('X-A', '1'), ins(1, 'X-A', '0'), chg(2, 'x-a', 'changed')],
      false,
    )
    assert.deepStrictEqual(lines(out), [
      'Received: from us',
      'X-A: 0',
      'From: a',
      'Subject: s',
      'x-a: changed',
    ])
  })

  it('does not change its input', () => {
    const before = input()
    const copy = before.map((f) => ({ ...f }))
    applyHeaderEdits(before, [chg(1, 'From', ''), add('X', 'y'), ins(0, 'Y', 'z')], false)
    assert.deepStrictEqual(before, copy)
  })
})

describe('applyHeaderEdits: values and names', () => {
  it('adds one leading space unless leadingSpace is set', () => {
    assert.equal(applyHeaderEdits([], [add('X', 'v')], false)[0]?.value, ' v')
    assert.equal(applyHeaderEdits([], [add('X', 'v')], true)[0]?.value, 'v')
    assert.equal(applyHeaderEdits([], [add('X', '  v')], true)[0]?.value, '  v')
  })

  it('flattens folded values onto one line', () => {
    assert.equal(applyHeaderEdits([], [add('X', 'a\r\n\tb')], true)[0]?.value, 'a b')
    assert.equal(applyHeaderEdits([], [add('X', 'a\n\tb')], true)[0]?.value, 'a b')
    assert.equal(applyHeaderEdits([], [add('X', 'a\n\n\nb')], true)[0]?.value, 'a b')
    assert.equal(
      applyHeaderEdits([], [add('X', 'a\r\r\nInjected: yes')], true)[0]?.value,
      'a Injected: yes',
    )
  })

  it('removes NUL bytes', () => {
    assert.equal(applyHeaderEdits([], [add('X', 'a\0b\0')], false)[0]?.value, ' ab')
  })

  it('leaves no CR or LF in any stored value', () => {
    const out = applyHeaderEdits([], [add('X', '\r\na\rb\nc\r\n')], true)
    assert.doesNotMatch(out[0]?.value ?? '', /[\r\n]/)
  })

  for (const bad of ['Bad Name', 'X:Y', '', 'Ünicode', 'X\tY', 'X\r\nY', 'Nul\0']) {
    it(`refuses the header name ${JSON.stringify(bad)} with HeaderEditError`, () => {
      assert.throws(() => applyHeaderEdits([], [add(bad, 'v')], false), HeaderEditError)
      assert.throws(() => applyHeaderEdits([], [chg(1, bad, 'v')], false), HeaderEditError)
      assert.throws(() => applyHeaderEdits([], [ins(0, bad, 'v')], false), HeaderEditError)
      assert.throws(() => checkHeaderName(bad), HeaderEditError)
    })
  }

  it('accepts every printable ASCII name character except the colon', () => {
    checkHeaderName("X-Weird!#$%&'*+.^_`|~0123456789")
  })

  it('flattenHeaderValue keeps a value without line breaks as it is', () => {
    assert.equal(flattenHeaderValue('  a\tb  '), '  a\tb  ')
  })
})

describe('parseMessage', () => {
  it('splits a CRLF message into headers and body', () => {
    const m = parseMessage(Buffer.from('From: a\r\nSubject: Hi\r\n\r\nHello\r\n'))
    assert.deepStrictEqual(m.headers, block('From: a', 'Subject: Hi'))
    assert.equal(m.body.toString(), 'Hello\r\n')
  })

  it('splits an LF message and gives a CRLF body', () => {
    const m = parseMessage(Buffer.from('From: a\nSubject: Hi\n\nline 1\nline 2\n'))
    assert.deepStrictEqual(m.headers, block('From: a', 'Subject: Hi'))
    assert.equal(m.body.toString(), 'line 1\r\nline 2\r\n')
  })

  it('keeps folded headers as one field with the fold inside the value', () => {
    const m = parseMessage(Buffer.from('Subject: a\r\n\tb\r\n  c\r\nTo: x\r\n\r\n'))
    assert.deepStrictEqual(m.headers, [
      { name: 'Subject', value: ' a\r\n\tb\r\n  c' },
      { name: 'To', value: ' x' },
    ])
  })

  it('keeps the value raw: no leading space removed, tabs kept', () => {
    const m = parseMessage(Buffer.from('A:x\r\nB:  two\r\nC:\tt\r\n\r\n'))
    assert.deepStrictEqual(
      m.headers.map((h) => h.value),
      ['x', '  two', '\tt'],
    )
  })

  it('drops spaces between the name and the colon', () => {
    const m = parseMessage(Buffer.from('Subject : x\r\n\r\n'))
    assert.equal(m.headers[0]?.name, 'Subject')
  })

  it('gives an empty body when there is no blank line', () => {
    const m = parseMessage(Buffer.from('From: a\r\nSubject: s\r\n'))
    assert.equal(m.headers.length, 2)
    assert.equal(m.body.length, 0)
    const n = parseMessage(Buffer.from('From: a'))
    assert.deepStrictEqual(n.headers, block('From: a'))
    assert.equal(n.body.length, 0)
  })

  it('gives an empty body after the blank line', () => {
    const m = parseMessage(Buffer.from('From: a\r\n\r\n'))
    assert.equal(m.headers.length, 1)
    assert.equal(m.body.length, 0)
  })

  it('treats a message that starts with a blank line as all body', () => {
    const m = parseMessage(Buffer.from('\r\nFrom: not a header\r\n'))
    assert.equal(m.headers.length, 0)
    assert.equal(m.body.toString(), 'From: not a header\r\n')
  })

  it('keeps blank lines inside the body', () => {
    const m = parseMessage(Buffer.from('A: b\r\n\r\n\r\nx\r\n\r\n'))
    assert.equal(m.body.toString(), '\r\nx\r\n\r\n')
  })

  it('does not turn an mbox "From " line into a header', () => {
    const m = parseMessage(
      Buffer.from('From alice@example.com Mon Jan  1 00:00:00 2024\r\nSubject: s\r\n\r\nb\r\n'),
    )
    assert.deepStrictEqual(m.headers, block('Subject: s'))
  })

  it('does not turn an mbox "From " line without a colon into a header', () => {
    const m = parseMessage(Buffer.from('From alice@example.com\nSubject: s\n\nb\n'))
    assert.deepStrictEqual(m.headers, block('Subject: s'))
  })

  it('keeps 8-bit header bytes (latin1 round trip)', () => {
    const raw = Buffer.concat([
      Buffer.from('Subject: '),
      Buffer.from([0xc3, 0xa9]),
      Buffer.from('\r\n\r\n'),
    ])
    const m = parseMessage(raw)
    assert.deepStrictEqual(
      Buffer.from(m.headers[0]!.value, 'latin1'),
      Buffer.from([0x20, 0xc3, 0xa9]),
    )
  })

  it('formats a header block back to the CRLF text it came from', () => {
    const text = 'From: a\r\nSubject: a\r\n\tb\r\n'
    assert.equal(formatHeaderBlock(parseMessage(Buffer.from(`${text}\r\n`)).headers), text)
    assert.equal(formatHeaderBlock(block('X: a\n b')), 'X: a\r\n b\r\n')
  })
})

describe('toCrlf', () => {
  const cases: Array<[string, string, string]> = [
    ['turns bare LF into CRLF', 'a\nb\n', 'a\r\nb\r\n'],
    ['keeps CRLF as it is', 'a\r\nb\r\n', 'a\r\nb\r\n'],
    ['keeps a bare CR', 'a\rb\r', 'a\rb\r'],
    ['handles a leading LF', '\nx', '\r\nx'],
    ['handles mixed line ends', 'a\r\n\nb\n\r\n', 'a\r\n\r\nb\r\n\r\n'],
    ['leaves text without line ends alone', 'abc', 'abc'],
    ['handles an empty body', '', ''],
    ['handles LF runs', '\n\n', '\r\n\r\n'],
  ]
  for (const [what, input, expected] of cases) {
    it(what, () => {
      assert.equal(toCrlf(Buffer.from(input, 'latin1')).toString('latin1'), expected)
    })
  }
})

describe('message: header policy (RFC 5322 line limit, bytes kept)', () => {
  const add = (value: string): HeaderEdit => ({ kind: 'addheader', name: 'X-Long', value })

  /** Every physical line of the header block, in octets, CRLF excluded. */
  function lineOctets(fields: readonly HeaderField[]): number[] {
    return formatHeaderBlock(fields)
      .split('\r\n')
      .filter((l) => l !== '')
      .map((l) => Buffer.byteLength(l))
  }

  it('a long value with spaces is folded: every line within 998 octets, nothing lost', () => {
    const words = Array.from({ length: 400 }, (_, i) => `word${i}`).join(' ')
    const out = applyHeaderEdits([], [add(words)], false)
    for (const n of lineOctets(out)) assert.ok(n <= 998, `a line of ${n} octets`)
    assert.equal(out[0]?.value.replace(/\r\n/g, '').trim(), words)
  })

  it('a word that cannot be folded within 998 octets is refused, not delivered as one line', () => {
    assert.throws(
      () => applyHeaderEdits([], [add('x'.repeat(2000))], false),
      (e: unknown) =>
        e instanceof HeaderEditError && /no space to fold at; RFC 5322/.test(e.message),
    )
    // the same with header_folds = keep
    assert.throws(
      () => applyHeaderEdits([], [add(`a\n\t${'y'.repeat(1200)}`)], false, 'keep'),
      HeaderEditError,
    )
  })

  it('multi-byte text counts in octets', () => {
    // 400 x 'é' (2 octets) = 800 octets: fits; 600 x = 1200 octets, no space: refused
    assert.doesNotThrow(() => applyHeaderEdits([], [add('é'.repeat(400))], false))
    assert.throws(() => applyHeaderEdits([], [add('é'.repeat(600))], false), HeaderEditError)
  })

  it('a value over 64 KiB is refused', () => {
    const big = Array.from({ length: 20_000 }, () => 'abcd').join(' ')
    assert.throws(() => applyHeaderEdits([], [add(big)], false), /exceeds the limit of 65536/)
  })

  it('header_folds = keep: a whitespace-only continuation line is removed', () => {
    assert.equal(keepFolds('a\n \n\tb'), 'a\n\tb')
    assert.equal(keepFolds('a\r\n   \r\n b\r\n  '), 'a\n b')
    const out = applyHeaderEdits([], [add('v=1;\r\n \r\n\tb=abc')], false, 'keep')
    assert.equal(out[0]?.value, ' v=1;\n\tb=abc')
    for (const line of formatHeaderBlock(out).split('\r\n').slice(1, -1)) {
      assert.match(line, /^[ \t]+\S/, `continuation ${JSON.stringify(line)} has text`)
    }
  })

  it('header values keep their bytes: UTF-8 as sent, other 8-bit words as unknown-8bit encoded-words', () => {
    assert.equal(headerValueText(Buffer.from('Grüße aus Köln')), 'Grüße aus Köln')
    const latin1 = Buffer.concat([
      Buffer.from('Caf'),
      Buffer.from([0xe9]),
      Buffer.from(' au lait ü'),
    ])
    const text = headerValueText(latin1)
    assert.equal(text, '=?unknown-8bit?B?Q2Fm6Q==?= au lait ü')
    assert.ok(!text.includes('\ufffd'))
    // decoding the encoded-word gives the original bytes back
    const m = /=\?unknown-8bit\?B\?([^?]+)\?=/.exec(text)
    assert.deepEqual(Buffer.from(m?.[1] ?? '', 'base64'), Buffer.from([0x43, 0x61, 0x66, 0xe9]))
  })

  it('a long 8-bit word becomes several encoded-words of at most 75 characters', () => {
    const word = Buffer.alloc(200, 0xff)
    const text = headerValueText(word)
    const parts = text.split(' ')
    for (const p of parts) assert.ok(p.length <= 75, `${p.length}: ${p}`)
    const back = Buffer.concat(
      parts.map((p) => Buffer.from(/\?B\?([^?]+)\?=/.exec(p)?.[1] ?? '', 'base64')),
    )
    assert.deepEqual(back, word)
  })
})

describe('message: control characters and whitespace-only lines', () => {
  const add = (value: string): HeaderEdit => ({ kind: 'addheader', name: 'X-Ctl', value })

  for (const code of [0x01, 0x08, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f, 0x7f]) {
    it(`refuses a value carrying 0x${code.toString(16).padStart(2, '0')} (HeaderEditError)`, () => {
      const value = `a${String.fromCharCode(code)}b`
      assert.throws(
        () => applyHeaderEdits([], [add(value)], false),
        (e: unknown) => e instanceof HeaderEditError && /control character/.test(e.message),
      )
      assert.throws(() => applyHeaderEdits([], [add(value)], false, 'keep'), HeaderEditError)
    })
  }

  it('keeps HTAB, flattens CR/LF and removes NUL as before', () => {
    const out = applyHeaderEdits([], [add('a\tb\r\n c\x00d')], false)
    assert.deepEqual(out, [{ name: 'X-Ctl', value: ' a\tb cd' }])
  })

  /** The continuation lines of a folded value. */
  function continuations(fields: readonly HeaderField[]): string[] {
    return formatHeaderBlock(fields).split('\r\n').slice(1, -1)
  }

  it('folding a long run of spaces gives no whitespace-only line and loses nothing', () => {
    const value = `start${' '.repeat(300)}middle ${'w '.repeat(400)}end${' '.repeat(50)}`
    const out = applyHeaderEdits([], [add(value)], false)
    const lines = continuations(out)
    assert.ok(lines.length > 1)
    for (const l of lines) {
      assert.match(l, /^[ \t]/, 'a continuation starts with whitespace')
      assert.match(l, /[^ \t]/, `a whitespace-only line: ${JSON.stringify(l)}`)
      assert.ok(Buffer.byteLength(l) <= 998)
    }
    // unfolding (removing CRLF) gives the value back exactly
    assert.equal(out[0]?.value.replace(/\r\n/g, ''), ` ${value}`)
  })

  it('a run of tabs and spaces between words folds before the run, never inside it', () => {
    const value = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' \t  ')
    const out = applyHeaderEdits([], [add(value)], false)
    for (const l of continuations(out)) assert.match(l, /^[ \t]+w\d+/)
  })
})
