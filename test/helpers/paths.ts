import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'

const PACKAGE_NAME = 'haraka-plugin-milter'

function findRepoRoot(start: string): string {
  let dir = path.resolve(start)
  for (;;) {
    const pkgFile = path.join(dir, 'package.json')
    if (fs.existsSync(pkgFile)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(pkgFile, 'utf8')) as { name?: unknown }
        if (pkg.name === PACKAGE_NAME) return dir
      } catch {
        // unreadable package.json: keep walking up
      }
    }
    const parent = path.dirname(dir)
    if (parent === dir) {
      throw new Error(`cannot find the ${PACKAGE_NAME} package.json above ${start}`)
    }
    dir = parent
  }
}

/** Absolute path of the repository (the directory holding this package's package.json). */
export const REPO_ROOT: string = findRepoRoot(__dirname)

/** The Haraka start script installed as a dev dependency. */
export const HARAKA_BIN: string = path.join(REPO_ROOT, 'node_modules', 'Haraka', 'bin', 'haraka')

/** Strip the brackets of an IPv6 literal: '[::1]' -> '::1'. */
export function bareHost(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

/**
 * A TCP port that was free on `host` a moment ago: binds port 0, reads the port the kernel
 * chose, closes. (Another process could take it before the caller binds it; on loopback in
 * tests that is good enough.)
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen({ host: bareHost(host), port: 0, exclusive: true }, () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error(`freePort: unexpected address ${String(address)}`))
        return
      }
      const { port } = address
      server.close((err) => {
        if (err) reject(err)
        else resolve(port)
      })
    })
  })
}
