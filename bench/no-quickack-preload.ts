/**
 * For the bench's "before" rows: a Haraka started with `NODE_OPTIONS=--require <this file>`
 * cannot load koffi, so the plugin asks for no prompt ACKs (lib/transport/quickack.ts falls
 * back to a no-op), the behaviour before TCP_QUICKACK. The product has no switch for it.
 */
import Module from 'node:module'

type Load = (request: string, parent: unknown, isMain: boolean) => unknown
const mod = Module as unknown as { _load: Load }
const load = mod._load
mod._load = function (request: string, parent: unknown, isMain: boolean): unknown {
  if (request === 'koffi') throw new Error('koffi disabled by bench/no-quickack-preload')
  return load.call(this, request, parent, isMain)
}
