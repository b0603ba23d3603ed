#!/usr/bin/env node
// Run the demo Haraka (demo/) with the milter plugin from this repository, in the foreground.
// Used by `npm start` (after `npm run build`). Ctrl-C stops it.
'use strict'

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const repoRoot = path.resolve(__dirname, '..')
const demoDir = path.join(repoRoot, 'demo')
const harakaBin = path.join(repoRoot, 'node_modules', 'Haraka', 'bin', 'haraka')
const linkDir = path.join(demoDir, 'node_modules')
const link = path.join(linkDir, 'haraka-plugin-milter')
// relative, so the link survives moving the checkout
const linkTarget = path.relative(linkDir, repoRoot)

function say(msg) {
  process.stderr.write(`run-haraka: ${msg}\n`)
}

function ensurePluginLink() {
  fs.mkdirSync(linkDir, { recursive: true })
  let stat = null
  try {
    stat = fs.lstatSync(link)
  } catch {
    // missing
  }
  if (stat !== null) {
    if (!stat.isSymbolicLink()) {
      say(`${link} exists and is not a symlink; remove it and retry`)
      process.exit(1)
    }
    if (fs.readlinkSync(link) === linkTarget) return
    fs.unlinkSync(link)
  }
  fs.symlinkSync(linkTarget, link, 'dir')
  say(`linked ${path.relative(repoRoot, link)} -> ${linkTarget}`)
}

function main() {
  if (!fs.existsSync(harakaBin)) {
    say(`Haraka not found at ${harakaBin}; run npm install (or npm ci) first`)
    process.exit(1)
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'))
  const main = path.join(repoRoot, pkg.main || 'index.js')
  if (!fs.existsSync(main)) {
    say(`${path.relative(repoRoot, main)} does not exist; run npm run build first`)
    process.exit(1)
  }
  ensurePluginLink()

  say(`starting Haraka: ${process.execPath} ${harakaBin} -c ${demoDir}`)
  const child = spawn(process.execPath, [harakaBin, '-c', demoDir], {
    cwd: repoRoot,
    // queue/discard only discards when this is set (see demo/config/plugins)
    env: { YES_REALLY_DO_DISCARD: '1', ...process.env },
    stdio: ['ignore', 'inherit', 'inherit'],
    // own process group: a terminal Ctrl-C reaches only us, and we forward it exactly once
    detached: true,
  })

  const forward = (signal) => {
    say(`${signal} received, stopping Haraka (pid ${child.pid})`)
    try {
      // Haraka shuts down cleanly on SIGINT; it does not trap SIGTERM/SIGHUP the same way
      child.kill(signal === 'SIGTERM' || signal === 'SIGHUP' ? 'SIGINT' : signal)
    } catch {
      // already gone
    }
  }
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => forward(signal))

  // never leave Haraka running behind us
  process.on('exit', () => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL')
      } catch {
        // already gone
      }
    }
  })

  child.on('error', (err) => {
    say(`cannot start Haraka: ${err.message}`)
    process.exit(1)
  })
  child.on('exit', (code, signal) => {
    say(`Haraka exited (${signal ? `signal ${signal}` : `code ${code}`})`)
    process.exit(code ?? (signal === 'SIGINT' ? 0 : 1))
  })
}

main()
