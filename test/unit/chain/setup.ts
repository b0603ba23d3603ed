/**
 * Shared setup of the chain unit tests: MilterChains over in-process fake
 * milters, milter definitions from milter.ini keys, and a stock message.
 */
import assert from 'node:assert/strict'

import {
  MilterChain,
  type ChainEvent,
  type MessageInput,
  type Outcome,
} from '../../../lib/policy/chain'
import { parseMilterConfig, type MilterDef } from '../../../lib/config'
import { MilterConnectError } from '../../../lib/errors'
import type { ConnectAddress } from '../../../lib/protocol/commands'
import type { MilterSession } from '../../../lib/session/session'
import { FakeMilter, type Script } from './fake-milter'

export const ADDR: ConnectAddress = { family: 'inet', address: '192.0.2.10', port: 52100 }

let fakes: FakeMilter[] = []
let chains: MilterChain[] = []

afterEach(async () => {
  for (const c of chains) c.close()
  chains = []
  await Promise.all(fakes.map((f) => f.close()))
  fakes = []
})

/**
 * Definitions for milters named in order, each with its default_action, or
 * `action;key=value;...` for more milter.ini keys.
 */
export function defs(spec: Record<string, string>): MilterDef[] {
  const names = Object.keys(spec)
  const ini: Record<string, Record<string, unknown>> = { main: { milters: names.join(' ') } }
  for (const n of names) {
    const [action, ...extra] = (spec[n] ?? '').split(';')
    ini[`milter.${n}`] = {
      ...Object.fromEntries(extra.map((kv) => kv.split('='))),
      socket: 'inet:1@127.0.0.1', // never dialled: `open` is injected
      default_action: action,
      connect_timeout: 2,
      command_timeout: 2,
      content_timeout: 2,
    }
  }
  return [...parseMilterConfig(ini).milters.values()]
}

export interface Setup {
  chain: MilterChain
  fake: Record<string, FakeMilter>
  events: ChainEvent[]
  /** `milter@stage: reason` of every skip_* condition that left a milter out. */
  skips: string[]
}

/**
 * A chain over `milters` (name -> default_action). Names in `scripts` get
 * a fake milter with that script; the others cannot be opened
 * (MilterConnectError).
 */
export async function setup(
  milters: Record<string, string>,
  scripts: Record<string, Script>,
  mixedRecipients: 'defer' | 'union' = 'defer',
): Promise<Setup> {
  const fake: Record<string, FakeMilter> = {}
  for (const [name, script] of Object.entries(scripts)) {
    const f = await FakeMilter.start(script)
    fakes.push(f)
    fake[name] = f
  }
  const events: ChainEvent[] = []
  const skips: string[] = []
  const chain = new MilterChain({
    milters: defs(milters),
    open: (def): Promise<MilterSession> => {
      const f = fake[def.name]
      if (!f) return Promise.reject(new MilterConnectError(`${def.name}: connect ECONNREFUSED`))
      return f.open(def)
    },
    onEvent: (e) => events.push(e),
    onSkip: (milter, stage, reason) => skips.push(`${milter}@${stage}: ${reason}`),
    mixedRecipients,
  })
  chains.push(chain)
  return { chain, fake, events, skips }
}

export const pass: Script = () => undefined

export function only(cmd: string, answer: ReturnType<Script>): Script {
  return (c) => (c.cmd === cmd ? answer : undefined)
}

export const CONTINUE: Outcome = { action: 'continue' }

/** CONNECT, HELO, MAIL, RCPT, DATA, each expected to continue. */
export async function toData(chain: MilterChain): Promise<void> {
  assert.deepEqual(await chain.connect('client.example.net', ADDR), CONTINUE)
  assert.deepEqual(await chain.helo('client.example.net'), CONTINUE)
  assert.deepEqual(await chain.mail(['<s@example.org>']), CONTINUE)
  assert.deepEqual(await chain.rcpt(['<r@example.com>']), CONTINUE)
  assert.deepEqual(await chain.data(), CONTINUE)
}

export function message(over: Partial<MessageInput> = {}): MessageInput {
  return {
    headers: [
      { name: 'Received', value: ' from us by us id X', hidden: true },
      { name: 'From', value: ' s@example.org' },
      { name: 'Subject', value: ' hello' },
    ],
    envelope: { from: { address: 's@example.org' }, rcpts: [{ address: 'r@example.com' }] },
    body: async function* () {
      yield await Promise.resolve(Buffer.from('line one\r\n'))
      yield Buffer.from('line two\r\n')
    },
    ...over,
  }
}

/** `name: value` of the HEADER commands a milter received. */
export function headersSeen(f: FakeMilter): string[] {
  return f.last.all('header').map((h) => `${h.name.toString()}: ${h.value.toString()}`)
}
