/**
 * A self-contained Postfix on 127.0.0.1 for the SMTP benchmark (never the system one): its own
 * configuration, queue and data directories in a temporary directory, its own port, `master -d`
 * as our child (its own process group), mail relayed to the `discard` transport (accepted and
 * dropped, as Haraka's queue hook answering OK), optionally `smtpd_milters`. Only when Postfix
 * is installed (Debian package `postfix`).
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { spawnSync } from 'node:child_process'

import {
  DaemonProcess,
  canConnect,
  makeTempDir,
  removeTempDir,
  withFreePort,
} from '../../test/helpers/daemons/process'

const POSTFIX = '/usr/sbin/postfix'
const MASTER = '/usr/lib/postfix/sbin/master'
export const SMTP_SOURCE = '/usr/sbin/smtp-source'

/** Why Postfix cannot run here, or undefined when it can. */
export function postfixMissing(): string | undefined {
  for (const f of [POSTFIX, MASTER])
    if (!fs.existsSync(f))
      return (
        `${f} not found: install Postfix (no system configuration needed): ` +
        'echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; ' +
        'DEBIAN_FRONTEND=noninteractive apt-get install -y postfix'
      )
  if (spawnSync('id', ['postfix']).status !== 0) return 'the user "postfix" does not exist'
  return undefined
}

export interface RunningPostfix {
  readonly port: number
  /** The master process; smtpd, cleanup, qmgr... are its children. */
  readonly pid: number
  readonly dir: string
  log(): string
  stop(): Promise<void>
}

export interface PostfixOptions {
  /** libmilter socket specs for smtpd_milters (inet:PORT@HOST), in order. */
  milters?: readonly string[]
}

const MASTER_CF = `# service type private unpriv chroot wakeup maxproc command
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000? 0  flush
proxymap  unix  -  -  n  -     -  proxymap
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n - n -   1  postlogd
`

function mainCf(dir: string, opts: PostfixOptions): string {
  // Postfix writes milter specs as inet:HOST:PORT; libmilter's inet:PORT@HOST is turned around
  const milters = (opts.milters ?? []).map((s) => {
    const m = /^inet:(\d+)@(.+)$/.exec(s)
    return m ? `inet:${m[2]}:${m[1]}` : s
  })
  return [
    'compatibility_level = 3.6',
    `queue_directory = ${dir}/queue`,
    `data_directory = ${dir}/data`,
    'mail_owner = postfix',
    'setgid_group = postdrop',
    'myhostname = postfix.bench.test',
    'mydomain = bench.test',
    'mydestination =',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'mynetworks = 127.0.0.0/8',
    'relay_domains = example.com, example.net, example.org',
    'smtpd_relay_restrictions = permit_mynetworks, reject',
    'default_transport = discard:',
    'relay_transport = discard:',
    'alias_maps =',
    'alias_database =',
    'message_size_limit = 0',
    'mailbox_size_limit = 0',
    'biff = no',
    'smtpd_peername_lookup = no',
    `smtpd_milters = ${milters.join(', ')}`,
    'milter_default_action = tempfail',
    'milter_protocol = 6',
    '',
  ].join('\n')
}

export async function startPostfix(opts: PostfixOptions = {}): Promise<RunningPostfix> {
  const missing = postfixMissing()
  if (missing) throw new Error(missing)
  return withFreePort(
    (port) => startOnce(port, opts),
    (err) => /address already in use|not listening/i.test(err.message),
  )
}

async function startOnce(port: number, opts: PostfixOptions): Promise<RunningPostfix> {
  const dir = makeTempDir('bench-postfix-')
  fs.chmodSync(dir, 0o755) // the daemons run as "postfix"
  fs.mkdirSync(path.join(dir, 'queue')) // `postfix check` fills it, but does not create it
  fs.writeFileSync(path.join(dir, 'main.cf'), mainCf(dir, opts))
  fs.writeFileSync(
    path.join(dir, 'master.cf'),
    `127.0.0.1:${port} inet n - n - - smtpd\n${MASTER_CF}`,
  )
  // creates the queue and data directories with Postfix's owners and modes (before maillog_file
  // is set: `postfix check` logging to a file needs postlogd, which is not running yet)
  const check = spawnSync(POSTFIX, ['-c', dir, 'check'], { encoding: 'utf8' })
  if (check.status !== 0) {
    removeTempDir(dir)
    throw new Error(`postfix -c ${dir} check failed: ${check.stderr}${check.stdout}`)
  }
  const maillog = path.join(dir, 'maillog')
  fs.appendFileSync(
    path.join(dir, 'main.cf'),
    `maillog_file_prefixes = ${dir}\nmaillog_file = ${maillog}\n`,
  )
  const log = (): string => {
    try {
      return fs.readFileSync(maillog, 'utf8')
    } catch {
      return ''
    }
  }
  const p = DaemonProcess.spawn({
    name: 'postfix master',
    bin: MASTER,
    args: ['-c', dir, '-d'],
    cwd: dir,
    dir,
    processGroup: true,
    stopGraceMs: 5000,
  })
  await p.startedWhen(`listening on 127.0.0.1:${port}`, () => canConnect({ port }), {
    timeoutMs: 15_000,
    pollMs: 50,
    details: () => `${p.output()}\n${log().split('\n').slice(-20).join('\n')}`,
  })
  return { port, pid: p.pid, dir, log, stop: () => p.stop() }
}
