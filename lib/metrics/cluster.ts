/**
 * Haraka's cluster mode (`nodes` in smtp.ini): each worker records its own
 * metrics; the master, which serves them, asks every worker for its
 * registry's JSON over the cluster IPC channel and sums them with
 * prom-client's AggregatorRegistry.aggregate (counters and histograms
 * summed, endpoint_up the lowest). The request is ours rather than
 * AggregatorRegistry.clusterMetrics(): the summary line needs each worker's
 * figures, not the text, and a worker that does not answer in time must
 * not hold a scrape for long.
 */
import cluster from 'node:cluster'

import { AggregatorRegistry, type Registry } from 'prom-client'

import type { MetricJson } from './recorder'

const REQUEST = 'haraka-plugin-milter:metrics?'
const RESPONSE = 'haraka-plugin-milter:metrics'

interface Request {
  type: typeof REQUEST
  id: number
}

interface Response {
  type: typeof RESPONSE
  id: number
  metrics: MetricJson[]
}

function isRequest(m: unknown): m is Request {
  return typeof m === 'object' && m !== null && (m as { type?: unknown }).type === REQUEST
}

function isResponse(m: unknown): m is Response {
  if (typeof m !== 'object' || m === null) return false
  const r = m as { type?: unknown; id?: unknown; metrics?: unknown }
  return r.type === RESPONSE && typeof r.id === 'number' && Array.isArray(r.metrics)
}

// ---- worker ----------------------------------------------------------------

let answer: (() => Promise<MetricJson[]>) | undefined
let answering = false

/**
 * In a worker: answers the master's requests with `metrics()` (the latest
 * one given; installed once per process). An error answers with nothing.
 */
export function answerMaster(metrics: () => Promise<MetricJson[]>): void {
  answer = metrics
  if (answering || !cluster.isWorker) return
  answering = true
  process.on('message', (m: unknown) => {
    if (!isRequest(m)) return
    const get = answer ?? (() => Promise.resolve([]))
    get()
      .catch(() => [])
      .then((metrics) => {
        const res: Response = { type: RESPONSE, id: m.id, metrics }
        process.send?.(res, undefined, {}, () => undefined)
      })
      .catch(() => undefined)
  })
}

// ---- master ----------------------------------------------------------------

/** Each answering worker's metrics, and how many were asked. */
export interface Gathered {
  asked: number
  /** Worker pid -> its metrics. */
  workers: Map<number, MetricJson[]>
}

interface Pending {
  gathered: Gathered
  /** Called at each answer: resolves once every worker asked has answered. */
  done: () => void
}

const pending = new Map<number, Pending>()
let nextId = 1
let listening = false

function listen(): void {
  if (listening) return
  listening = true
  cluster.on('message', (worker, m: unknown) => {
    if (!isResponse(m)) return
    const p = pending.get(m.id)
    const pid = worker.process.pid
    if (!p || pid === undefined) return
    p.gathered.workers.set(pid, m.metrics)
    p.done()
  })
}

/** In the master: every connected worker's metrics, or those that answered within `timeoutMs`. */
export function gatherWorkers(timeoutMs: number): Promise<Gathered> {
  listen()
  const id = nextId++
  const gathered: Gathered = { asked: 0, workers: new Map() }
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish(), timeoutMs)
    const finish = (): void => {
      clearTimeout(timer)
      pending.delete(id)
      resolve(gathered)
    }
    let sending = true
    const check = (): void => {
      if (!sending && gathered.workers.size >= gathered.asked) finish()
    }
    pending.set(id, { gathered, done: check })
    const req: Request = { type: REQUEST, id }
    for (const w of Object.values(cluster.workers ?? {})) {
      if (!w?.isConnected()) continue
      gathered.asked++
      const gone = (): void => {
        // the worker is going away: not waited for
        gathered.asked--
        check()
      }
      try {
        w.send(req, undefined, {}, (err) => {
          if (err) gone()
        })
      } catch {
        gone()
      }
    }
    sending = false
    check()
  })
}

/** The workers' metrics summed into one registry. */
export function aggregate(gathered: Gathered): Registry {
  return AggregatorRegistry.aggregate([...gathered.workers.values()])
}
