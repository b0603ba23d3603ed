#!/usr/bin/env node
// Send one message to the demo Haraka over SMTP and print the server's replies.
//
//   node demo/send.js [--host 127.0.0.1] [--port 2525] [--from alice@example.org]
//                     [--to bob@example.com]... [--subject TEXT] [FILE.eml]
//
// HARAKA_HOST and HARAKA_PORT set the defaults, as for `npm start`. Without FILE a small
// message is made up. Exit status 0 when the message was accepted (2xx after the final dot).
'use strict'

const fs = require('node:fs')
const net = require('node:net')
const { parseArgs } = require('node:util')

/** Reads SMTP replies (multi-line aware) from a socket. */
function replyReader(sock) {
  let buf = ''
  let lines = []
  const waiting = []
  const ready = []
  sock.setEncoding('utf8')
  sock.on('data', (d) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).replace(/\r$/, '')
      buf = buf.slice(i + 1)
      lines.push(line)
      if (/^\d{3}(?: |$)/.test(line)) {
        const reply = { code: Number(line.slice(0, 3)), lines }
        lines = []
        const w = waiting.shift()
        if (w) w.resolve(reply)
        else ready.push(reply)
      }
    }
  })
  const fail = (err) => {
    for (const w of waiting.splice(0)) w.reject(err)
  }
  sock.on('error', fail)
  sock.on('close', () => fail(new Error('connection closed by the server')))
  return () =>
    ready.length > 0
      ? Promise.resolve(ready.shift())
      : new Promise((resolve, reject) => waiting.push({ resolve, reject }))
}

/**
 * Sends `data` (a string; LF or CRLF line ends) from `from` to `rcpts`.
 * Resolves with { accepted, replies, final }: replies are the server's lines in order,
 * final the reply to the message (after the final dot), failedAt the step that failed.
 */
async function sendMail({ host, port, from, rcpts, data, helo = 'demo-client.example.org' }) {
  const sock = net.createConnection({ host, port })
  await new Promise((resolve, reject) => {
    sock.once('connect', resolve)
    sock.once('error', reject)
  })
  const next = replyReader(sock)
  const replies = []
  let last = ''
  const command = async (line) => {
    if (line !== undefined) sock.write(`${line}\r\n`)
    const r = await next()
    replies.push(...r.lines)
    last = r.lines.join('\n')
    return r.code
  }
  const giveUp = (failedAt) => {
    sock.end('QUIT\r\n')
    return { accepted: false, replies, failedAt, final: last }
  }
  const ok = (code) => code >= 200 && code < 300
  if (!ok(await command())) return giveUp('greeting')
  if (!ok(await command(`EHLO ${helo}`))) return giveUp('EHLO')
  if (!ok(await command(`MAIL FROM:<${from}>`))) return giveUp('MAIL')
  let accepted = 0
  for (const rcpt of rcpts) if (ok(await command(`RCPT TO:<${rcpt}>`))) accepted++
  if (accepted === 0) return giveUp('RCPT')
  if ((await command('DATA')) !== 354) return giveUp('DATA')
  const body = data
    .replace(/\r?\n/g, '\r\n')
    .replace(/(^|\r\n)\./g, '$1..')
    .replace(/(\r\n)?$/, '\r\n')
  if (!ok(await command(`${body}.`))) return giveUp('end of data')
  const final = last
  await command('QUIT').catch(() => undefined)
  sock.end()
  return { accepted: true, replies, final }
}

function demoMessage(from, rcpts, subject) {
  return [
    `From: Alice <${from}>`,
    `To: ${rcpts.map((r) => `<${r}>`).join(', ')}`,
    `Subject: ${subject}`,
    `Date: ${new Date().toUTCString()}`,
    `Message-ID: <${Date.now()}.${process.pid}@demo-client.example.org>`,
    '',
    'Hello from the haraka-plugin-milter demo.',
    'This message went through Haraka and every milter in demo/config/milter.ini.',
    '',
  ].join('\n')
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      host: { type: 'string', default: process.env.HARAKA_HOST || '127.0.0.1' },
      port: { type: 'string', default: process.env.HARAKA_PORT || '2525' },
      from: { type: 'string', default: 'alice@example.org' },
      to: { type: 'string', multiple: true, default: ['bob@example.com'] },
      subject: { type: 'string', default: 'Hello through Haraka and a milter' },
      help: { type: 'boolean', default: false },
    },
  })
  if (values.help) {
    process.stdout.write(
      'usage: node demo/send.js [--host H] [--port P] [--from A] [--to B]... [--subject S] [FILE.eml]\n',
    )
    return 0
  }
  const data = positionals[0]
    ? fs.readFileSync(positionals[0], 'utf8')
    : demoMessage(values.from, values.to, values.subject)
  const r = await sendMail({
    host: values.host,
    port: Number(values.port),
    from: values.from,
    rcpts: values.to,
    data,
  })
  for (const line of r.replies) process.stdout.write(`${line}\n`)
  if (!r.accepted) process.stderr.write(`send: not accepted (at ${r.failedAt})\n`)
  return r.accepted ? 0 : 1
}

module.exports = { sendMail, demoMessage }

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`send: ${err.message}\n`)
      process.exit(2)
    },
  )
}
