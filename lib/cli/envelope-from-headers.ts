/**
 * `check`'s envelope when the flags do not give it: from the message's own
 * headers, as an operator would resend it (the sender from Return-Path,
 * else From; the recipients from To, Cc).
 */
import { parseMessage } from '../message/headers'

/** The addresses in a header value: `<a@b>` ones, else bare `a@b` words. */
export function addressesIn(value: string): string[] {
  const bracketed = [...value.matchAll(/<([^<>]*)>/g)].map((m) => (m[1] ?? '').trim())
  if (bracketed.length > 0) return bracketed
  return [
    ...value.replace(/"[^"]*"|\([^)]*\)/g, ' ').matchAll(/[^\s<>,;:"()]+@[^\s<>,;:"()]+/g),
  ].map((m) => m[0])
}

/** The sender and recipients the message's headers name (undefined / empty when none). */
export function envelopeOf(message: Buffer): { from: string | undefined; rcpts: string[] } {
  const { headers } = parseMessage(message, 'utf8')
  const values = (name: string): string[] =>
    headers.filter((h) => h.name.toLowerCase() === name).map((h) => h.value)
  const first = (name: string): string | undefined => values(name).flatMap(addressesIn)[0]
  const from = first('return-path') ?? first('from')
  const rcpts = [...values('to'), ...values('cc')].flatMap(addressesIn).filter(Boolean)
  return { from, rcpts: [...new Set(rcpts)] }
}
