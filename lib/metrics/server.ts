/**
 * The metrics endpoint: GET /metrics answers the Prometheus text format;
 * anything else is 404 (405 for other methods). A port that cannot be
 * bound is one ERROR line and no endpoint, never a crash; a failed render
 * is a 503 with the reason. Requests are bounded in time.
 */
import * as http from 'node:http'

/** What a scrape answers. */
export interface Rendered {
  status: number
  contentType: string
  body: string
}

export interface MetricsServerOptions {
  host: string
  port: number
  /** The address as configured, for log lines. */
  text: string
  render: () => Promise<Rendered>
  log: { info(text: string): void; error(text: string): void }
}

/** A running endpoint. */
export interface MetricsServer {
  /** Stops listening and closes its connections. */
  close(): Promise<void>
}

export function startMetricsServer(opts: MetricsServerOptions): MetricsServer {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('Not found: try /metrics\n')
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end()
      return
    }
    opts
      .render()
      .catch((e: unknown): Rendered => ({
        status: 503,
        contentType: 'text/plain',
        body: `metrics unavailable: ${e instanceof Error ? e.message : String(e)}\n`,
      }))
      .then((r) => {
        res.writeHead(r.status, { 'Content-Type': r.contentType })
        res.end(req.method === 'HEAD' ? undefined : r.body)
      })
      .catch(() => res.destroy())
  })
  server.headersTimeout = 10_000
  server.requestTimeout = 15_000
  server.keepAliveTimeout = 5_000
  server.on('clientError', (_e, socket) => socket.destroy())
  let closed = false
  server.on('error', (e: Error) => {
    opts.log.error(`metrics: cannot listen on ${opts.text}: ${e.message}; no metrics endpoint`)
  })
  server.on('listening', () => {
    // closed while the address was being bound
    if (closed) return void server.close()
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host
    opts.log.info(`metrics: Prometheus endpoint at http://${host}:${opts.port}/metrics`)
  })
  server.listen(opts.port, opts.host)
  server.unref()
  return {
    close: () =>
      new Promise((resolve) => {
        closed = true
        if (!server.listening) return resolve()
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
