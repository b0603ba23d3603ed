#!/usr/bin/python3
"""Greylisting libmilter test filter (pymilter).

A small stand-in for milter-greylist (not packaged for this Debian release),
for integration tests of our milter client. Needs Debian's python3-milter,
importable only from /usr/bin/python3.

Usage:
    /usr/bin/python3 test/milters/greylist.py --socket SPEC [--log FILE.jsonl] \
        [--delay SECONDS] [--timeout SECONDS]

At RCPT, the first time a triplet (client IP, envelope sender, recipient) is
seen, the recipient gets TEMPFAIL with "451 4.7.1 Greylisted, try again
later". A retry of the triplet at least --delay seconds (default 1) after it
was first seen is accepted (CONTINUE), and the message then gets the header
"X-Greylist: delayed N seconds" at end of message (N = seconds since the
triplet was first seen, rounded; the largest N over the message's
recipients). A retry that comes too early is tempfailed again, without
resetting the clock. Once a triplet has passed it is whitelisted: later
messages with it pass at once and get no header. State lives in memory for
the life of the process.

The client IP is the {client_addr} macro when the MTA sends it, else the
address from the CONNECT packet. Sender and recipient are compared without
case. Same --socket / --log / READY / SIGTERM conventions as scripted.py, and
the same log events (it is scripted.py's filter with a fixed script: request
ADDHDRS if offered, no protocol flags, answer CONTINUE everywhere else).
"""

import argparse
import os
import sys
import threading
import time

import Milter
import milter

# no __pycache__ in the source tree
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scripted  # noqa: E402  (shared plumbing: Logger, serve)

REPLY_CODE = '451'
REPLY_XCODE = '4.7.1'
REPLY_TEXT = 'Greylisted, try again later'
HEADER_NAME = 'X-Greylist'

DELAY = 1.0
REPLY = scripted.parse_reply(
    {'code': REPLY_CODE, 'xcode': REPLY_XCODE, 'lines': [REPLY_TEXT]}, 'greylist')

# triplet -> {'first': monotonic time first seen, 'passed': bool}
TRIPLETS = {}
TRIPLETS_LOCK = threading.Lock()


def check(triplet, now):
    """Return (decision, seconds since first seen)."""
    with TRIPLETS_LOCK:
        entry = TRIPLETS.get(triplet)
        if entry is None:
            TRIPLETS[triplet] = {'first': now, 'passed': False}
            return 'greylisted', 0.0
        waited = now - entry['first']
        if entry['passed']:
            return 'whitelisted', waited
        if waited >= DELAY:
            entry['passed'] = True
            return 'passed', waited
        return 'greylisted', waited


class GreylistMilter(scripted.ScriptedMilter):
    """ScriptedMilter with a fixed script, greylisting at RCPT.

    It logs the same events as scripted.py; envrcpt events also carry
    decision ('greylisted' | 'passed' | 'whitelisted'), ip, sender, waited
    (seconds since the triplet was first seen) and delay, and eom events carry
    greylistHeader (the X-Greylist value added, or null).
    """

    def __init__(self):
        super().__init__()
        self.delayed = None

    def requested_actions(self, offered_actions):
        # only ADDHDRS, and only if offered (libmilter aborts on more)
        return offered_actions & Milter.ADDHDRS

    def reset_message(self):
        super().reset_message()
        self.delayed = None

    def client_ip(self):
        try:
            value = self._ctx.getsymval('{client_addr}')
        except Exception:  # noqa: BLE001
            value = None
        if value:
            return value
        if isinstance(self.hostaddr, tuple) and self.hostaddr:
            return str(self.hostaddr[0])
        if isinstance(self.hostaddr, str):
            return self.hostaddr
        return ''

    def decide_rcpt(self, rcpt):
        ip = self.client_ip()
        sender = self.sender or ''
        decision, waited = check((ip, sender.lower(), rcpt.lower()), time.monotonic())
        extra = {'decision': decision, 'ip': ip, 'sender': sender, 'waited': round(waited, 3),
                 'delay': DELAY}
        if decision == 'greylisted':
            return REPLY, extra
        if decision == 'passed':
            self.delayed = max(self.delayed or 0, int(round(waited)))
        return None, extra

    def eom_extra(self):
        if self.delayed is None or not self._actions & Milter.ADDHDRS:
            return {'greylistHeader': None}, []
        value = 'delayed %d seconds' % self.delayed
        return ({'greylistHeader': value},
                [{'op': 'addheader', 'name': HEADER_NAME, 'value': value}])


def main(argv=None):
    global DELAY
    parser = argparse.ArgumentParser(description='Greylisting libmilter test filter')
    parser.add_argument('--socket', required=True, help='libmilter socket spec')
    parser.add_argument('--log', default=None, help='JSONL event log (appended)')
    parser.add_argument('--delay', type=float, default=1.0,
                        help='seconds before a retried triplet is accepted (default 1)')
    parser.add_argument('--timeout', type=float, default=0,
                        help='libmilter I/O timeout in seconds (smfi_settimeout)')
    parser.add_argument('--name', default='greylist', help='milter name')
    args = parser.parse_args(argv)
    try:
        scripted.check_spec(args.socket)
    except scripted.ScriptError as exc:
        sys.stderr.write('greylist.py: %s\n' % exc)
        return 2
    DELAY = args.delay
    scripted.SCRIPT = scripted.parse_script({'actions': ['ADDHDRS']})
    scripted.LOG = scripted.Logger(args.log)
    Milter.factory = GreylistMilter
    try:
        scripted.serve(args.name, args.socket, args.timeout, scripted.LOG, {'delay': DELAY})
    except milter.error as exc:
        sys.stderr.write('greylist.py: libmilter failed: %s (socket %s)\n' % (exc, args.socket))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
