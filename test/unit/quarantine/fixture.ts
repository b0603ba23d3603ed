/** A held entry's metadata and message for the quarantine unit tests. */
import type { QuarantineMeta } from '../../../lib/quarantine/store'

/** A small message as held. */
export const MESSAGE = Buffer.from('Subject: x\r\n\r\nbody\r\n')

/** One recipient, one milter, a hold. */
export function heldMeta(id: string): QuarantineMeta {
  return {
    version: 1,
    id,
    time: '2026-03-04T05:06:07.000Z',
    transaction: id,
    sender: { address: 'alice@example.org', args: [] },
    recipients: [{ address: 'bob@example.com', args: [] }],
    reason: 'one: why',
    milters: ['one'],
    kind: 'hold',
    client: { ip: '192.0.2.1', host: '', helo: 'c' },
  }
}
