/**
 * Reading the plugin's Prometheus endpoint in end-to-end tests: one scrape,
 * and one sample of the text format.
 */
import assert from 'node:assert/strict'
import * as http from 'node:http'

/** GET http://127.0.0.1:PORT/metrics. */
export function scrape(
  port: number,
  agent?: http.Agent,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const opts = { host: '127.0.0.1', port, path: '/metrics', timeout: 10000, agent }
    const req = http.get(opts, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('timeout', () => req.destroy(new Error('scrape timed out')))
    req.on('error', reject)
  })
}

/** The value of the one sample of `name` whose labels include `labels` (undefined when none). */
export function sample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found: number[] = []
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    )
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) found.push(Number(m[3]))
  }
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`)
  return found[0]
}
