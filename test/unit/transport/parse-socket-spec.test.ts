import assert from 'node:assert/strict'

import { MilterConfigError } from '../../../lib/errors'
import { formatSocketSpec, parseSocketSpec, type SocketSpec } from '../../../lib/transport/spec'

describe('parseSocketSpec', () => {
  const valid: Array<[string, SocketSpec]> = [
    ['inet:8891@127.0.0.1', { kind: 'tcp', host: '127.0.0.1', port: 8891, family: 4 }],
    ['inet:127.0.0.1:8891', { kind: 'tcp', host: '127.0.0.1', port: 8891, family: 4 }],
    ['inet6:8891@::1', { kind: 'tcp', host: '::1', port: 8891, family: 6 }],
    ['inet6:8891@[::1]', { kind: 'tcp', host: '::1', port: 8891, family: 6 }],
    ['unix:/run/x.sock', { kind: 'unix', path: '/run/x.sock' }],
    ['local:/run/x.sock', { kind: 'unix', path: '/run/x.sock' }],
    ['/run/x.sock', { kind: 'unix', path: '/run/x.sock' }],
    ['127.0.0.1:8891', { kind: 'tcp', host: '127.0.0.1', port: 8891, family: 4 }],
    ['[::1]:8891', { kind: 'tcp', host: '::1', port: 8891, family: 6 }],
    ['localhost:8891', { kind: 'tcp', host: 'localhost', port: 8891, family: 0 }],
    ['inet:8891@milter.example', { kind: 'tcp', host: 'milter.example', port: 8891, family: 4 }],
    ['inet:1@h', { kind: 'tcp', host: 'h', port: 1, family: 4 }],
    ['inet:65535@h', { kind: 'tcp', host: 'h', port: 65535, family: 4 }],
    ['INET:8891@127.0.0.1', { kind: 'tcp', host: '127.0.0.1', port: 8891, family: 4 }],
    ['  unix:/run/x.sock  ', { kind: 'unix', path: '/run/x.sock' }],
  ]
  for (const [spec, expected] of valid) {
    it(`parses ${JSON.stringify(spec)}`, () => {
      assert.deepStrictEqual(parseSocketSpec(spec), expected)
    })
  }

  const invalid = [
    'inet:99999@h',
    'inet:0@h',
    'inet:abc@h',
    'inet:@h',
    'inet:8891@',
    'inet:8891',
    'unix:relative',
    'local:run/x.sock',
    'unix:',
    'inet6:8891@127.0.0.1',
    'inet:8891@::1',
    'inet6:8891@[::1',
    'tcp://x',
    'tcp://127.0.0.1:8891',
    '',
    '   ',
    'localhost',
    'localhost:http',
    '[::1]',
  ]
  for (const spec of invalid) {
    it(`refuses ${JSON.stringify(spec)} with MILTER_ERR_CONFIG`, () => {
      assert.throws(
        () => parseSocketSpec(spec),
        (e: unknown) => {
          assert.ok(e instanceof MilterConfigError, `got ${String(e)}`)
          assert.equal(e.code, 'MILTER_ERR_CONFIG')
          return true
        },
      )
    })
  }

  it('names the bad spec in the error', () => {
    assert.throws(() => parseSocketSpec('inet:99999@h'), /99999/)
  })
})

describe('formatSocketSpec', () => {
  for (const spec of ['inet:8891@127.0.0.1', 'inet6:8891@::1', 'unix:/run/x.sock']) {
    it(`formats ${spec} back to itself`, () => {
      assert.equal(formatSocketSpec(parseSocketSpec(spec)), spec)
    })
  }
})
