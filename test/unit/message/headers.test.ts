import assert from 'node:assert/strict'

import {
  HeaderEditError,
  applyHeaderEdits,
  checkHeaderName,
  flattenHeaderValue,
  formatHeaderBlock,
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
