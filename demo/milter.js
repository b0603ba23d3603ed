#!/usr/bin/env node
// The demo's own milter, for machines without python3-milter: a small milter server in
// Node.js that speaks the Sendmail milter protocol (version 6) with this package's
// encoders and decoders (dist/lib/protocol, built by npm start). It is not a test
// milter: the tests use real libmilter filters (test/milters/). It does one thing: at end
// of message it applies the `eom` edits of a script in the format of
// test/milters/scripted.py (addheader and insheader only), then accepts.
//
//   node demo/milter.js --socket inet:PORT@127.0.0.1 --script demo/milter-script.json
//                       [--log FILE.jsonl]
//
// Prints READY once it listens; SIGTERM or SIGINT stops it. Every command it receives is
// one JSON line in the log (--log), as scripted.py writes its callbacks.
'use strict'

const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { parseArgs } = require('node:util')

const dist = path.join(__dirname, '..', 'dist', 'lib', 'protocol')
const { FrameDecoder } = require(path.join(dist, 'frame'))
const { decodeCommand } = require(path.join(dist, 'commands'))
const { encodeReply } = require(path.join(dist, 'replies'))
const { Act } = require(path.join(dist, 'constants'))

/** The edits of a script's `eom` list, as milter replies (header edits only). */
function eomReplies(script) {
  return (script.eom || []).map((op, i) => {
    const name = Buffer.from(String(op.name))
    const value = Buffer.from(String(op.value))
    if (op.op === 'addheader') return { kind: 'addheader', name, value }
    if (op.op === 'insheader') return { kind: 'insheader', index: op.index ?? 0, name, value }
    throw new Error(`eom[${i}]: op "${op.op}" is not supported by demo/milter.js`)
  })
}

/** inet:PORT@HOST -> { host, port } (the only form the demo uses). */
function parseSocket(spec) {
  const m = /^inet:(\d+)@([\d.]+)$/.exec(spec)
  if (!m) throw new Error(`--socket must be inet:PORT@IPv4, got "${spec}"`)
  return { host: m[2], port: Number(m[1]) }
}

/** The milter side of one connection: every command answered as libmilter would. */
function serve(sock, edits, log) {
  const decoder = new FrameDecoder()
  const send = (reply) => sock.write(encodeReply(reply))
  sock.on('error', () => sock.destroy())
  sock.on('data', (chunk) => {
    let frames
    try {
      frames = decoder.push(chunk)
    } catch (err) {
      log({ event: 'protocol_error', error: err.message })
      sock.destroy()
      return
    }
    for (const frame of frames) {
      const cmd = decodeCommand(frame)
      log(describe(cmd))
      switch (cmd.cmd) {
        case 'optneg':
          // version 6 (or the client's, if lower), the header edits, every step sent and answered
          send({
            kind: 'optneg',
            version: Math.min(cmd.version, 6),
            actions: Act.ADDHDRS & cmd.actions,
            protocol: 0,
            symlist: new Map(),
            symlistWarnings: [],
          })
          break
        case 'macro':
        case 'abort':
          break // no reply
        case 'quit':
          sock.end()
          return
        case 'quit_nc':
          break // the connection stays for the next SMTP session
        case 'eob':
          for (const edit of edits) send(edit)
          send({ kind: 'accept' })
          break
        default:
          send({ kind: 'continue' })
      }
    }
  })
}

/** A command as one log record (strings, no buffers). */
function describe(cmd) {
  const out = { event: cmd.cmd, time: new Date().toISOString() }
  if (cmd.cmd === 'connect') Object.assign(out, { hostname: String(cmd.hostname) })
  if (cmd.cmd === 'helo') out.helo = String(cmd.helo)
  if (cmd.cmd === 'mail' || cmd.cmd === 'rcpt') out.args = cmd.args.map(String)
  if (cmd.cmd === 'header') Object.assign(out, { name: String(cmd.name), value: String(cmd.value) })
  if (cmd.cmd === 'body') out.bytes = cmd.chunk.length
  return out
}

function main() {
  const { values } = parseArgs({
    options: { socket: { type: 'string' }, script: { type: 'string' }, log: { type: 'string' } },
  })
  if (!values.socket || !values.script) {
    process.stderr.write('usage: node demo/milter.js --socket inet:PORT@HOST --script FILE.json\n')
    process.exit(2)
  }
  const edits = eomReplies(JSON.parse(fs.readFileSync(values.script, 'utf8')))
  const logFile = values.log ? fs.openSync(values.log, 'a') : undefined
  const log = (record) => {
    if (logFile !== undefined) fs.writeSync(logFile, `${JSON.stringify(record)}\n`)
  }
  const { host, port } = parseSocket(values.socket)
  const server = net.createServer((sock) => serve(sock, edits, log))
  server.on('error', (err) => {
    process.stderr.write(`demo/milter.js: ${err.message}\n`)
    process.exit(1)
  })
  server.listen({ host, port, exclusive: true }, () => process.stdout.write('READY\n'))
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
}

main()
