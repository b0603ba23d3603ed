/**
 * Haraka state -> the facts skip_* conditions look at (the decisions are
 * lib/policy/conditions.ts). Address classes come from haraka-net-utils,
 * the classification Haraka itself uses for remote.is_private.
 */
import { is_private_ip } from 'haraka-net-utils'

import type { ClientFacts, MessageFacts } from '../policy/conditions'
import { authUser, clientIp } from './facts'
import type { HarakaAddress, HarakaConnection } from './haraka'

/** The client at CONNECT: its address (IPv4-mapped IPv6 as IPv4) and whether it is private. */
export function clientFacts(c: HarakaConnection): ClientFacts {
  const ip = clientIp(c)
  return { ip, private: ip !== undefined && is_private_ip(ip) }
}

/** The SIZE= a client declared at MAIL, if it is a number. */
function declaredSize(esmtp: Record<string, string | null> | undefined): number | undefined {
  for (const [k, v] of Object.entries(esmtp ?? {})) {
    if (k.toUpperCase() !== 'SIZE' || v === null || !/^[0-9]{1,15}$/.test(v)) continue
    return Number(v)
  }
  return undefined
}

/** A message at MAIL: AUTH, relaying, the sender's domain, the declared size. */
export function messageFacts(
  c: HarakaConnection,
  from: HarakaAddress,
  esmtp: Record<string, string | null> | undefined,
): MessageFacts {
  return {
    authenticated: Boolean(authUser(c)),
    relaying: c.relaying,
    senderDomain: from.isNull() ? '' : (from.host ?? '').toLowerCase(),
    declaredSize: declaredSize(esmtp),
  }
}
