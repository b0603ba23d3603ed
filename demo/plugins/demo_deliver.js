// demo_deliver: the demo Haraka's queue plugin. Each accepted message is written, as it
// would be delivered (with every milter edit applied), to <dir>/<transaction uuid>.eml,
// and the client gets `250 delivered to <file>`. dir comes from config/demo_deliver.ini
// (test/run-haraka.js writes it: demo/run/mail/ in the checkout).
'use strict'

const fs = require('node:fs')
const path = require('node:path')

exports.register = function () {
  const ini = this.config.get('demo_deliver.ini')
  this.mailDir = path.resolve(ini.main.dir || 'mail')
  fs.mkdirSync(this.mailDir, { recursive: true })
  this.register_hook('queue', 'deliver')
  this.register_hook('queue_outbound', 'deliver')
}

exports.deliver = function (next, connection) {
  const txn = connection.transaction
  const file = path.join(this.mailDir, `${txn.uuid}.eml`)
  const partial = `${file}.part`
  const out = fs.createWriteStream(partial)
  let done = false
  const finish = (err) => {
    if (done) return
    done = true
    if (err) {
      connection.logerror(this, `cannot write ${partial}: ${err.message}`)
      return next(DENYSOFT, 'demo delivery failed')
    }
    fs.rename(partial, file, (e) => {
      if (e) return finish(e)
      connection.loginfo(this, `delivered to ${file}`)
      next(OK, `delivered to ${file}`)
    })
  }
  out.on('error', finish)
  out.on('close', () => finish())
  txn.message_stream.pipe(out, { line_endings: '\n' })
}
