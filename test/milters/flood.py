#!/usr/bin/python3
"""Flooding libmilter test filter (pymilter), for bench/flood.ts.

scripted.py's filter with a fixed script (request every action the MTA
offers, no protocol flags, CONTINUE everywhere, ACCEPT at end of message),
except for one message: the one whose envelope sender contains --trigger
(default "flood@"). At its end of message it sends --count modifications of
one kind, as fast as libmilter writes them (each call is one blocking write,
so the MTA's reading speed is the backpressure), then ACCEPT.

Usage:
    /usr/bin/python3 test/milters/flood.py --socket SPEC --log FILE.jsonl \
        --flood addrcpt|chgheader|addheader|replbody --count N [--trigger TEXT]

- addrcpt:   N x smfi_addrcpt('<fN@flood.example>')            -> '+' packets
- chgheader: N x smfi_chgheader('X-Flood', i, 'chg-0000')     -> 'm' packets,
             i = 1..N: a header that does not exist, so each one adds it
             (about 26 bytes a packet: 40,000 are about 1 MB)
- addheader: N x smfi_addheader('X-Flood', 'v')                -> 'h' packets
- replbody:  N bytes of body (64-byte CRLF lines) in smfi_replacebody calls of
             65,472 bytes, one 'b' packet each; nothing bigger than one
             chunk is ever held in memory

SETSYMLIST is not here: libmilter refuses a packet over 65,535 bytes, so
the OPTNEG reply with 800,000 macro names per stage cannot be produced by
smfi_setsymlist; test/helpers/flood-milter.ts sends it from a raw socket.

The log gets scripted.py's events plus, for the flooded message,
{"event": "flood", "flood": KIND, "count": N, "seconds": S, "error": null}
after the last modification was written.
"""

import argparse
import os
import sys
import time

import Milter
import milter

# no __pycache__ in the source tree
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scripted  # noqa: E402  (shared plumbing: Logger, serve, ScriptedMilter)

FLOOD = None
COUNT = 0
TRIGGER = 'flood@'

LINE = b'x' * 62 + b'\r\n'
CHUNK = LINE * 1023  # 65,472 bytes: one 'b' packet per call


def flood(ctx, kind, count):
    if kind == 'addrcpt':
        addrcpt = ctx.addrcpt
        for i in range(count):
            addrcpt('<f%d@flood.example>' % i)
    elif kind == 'chgheader':
        chgheader = ctx.chgheader
        for i in range(1, count + 1):
            chgheader('X-Flood', i, 'chg-0000')
    elif kind == 'addheader':
        addheader = ctx.addheader
        for _ in range(count):
            addheader('X-Flood', 'v', -1)
    elif kind == 'replbody':
        replacebody = ctx.replacebody
        left = count
        while left >= len(CHUNK):
            replacebody(CHUNK)
            left -= len(CHUNK)
        if left > 0:
            replacebody(CHUNK[:left])
    else:  # pragma: no cover - rejected by argparse
        raise ValueError('unknown flood %r' % kind)


class FloodMilter(scripted.ScriptedMilter):
    def _eom(self):
        if TRIGGER not in (self.sender or ''):
            return super()._eom()
        self.log('eom', bodyLength=len(self.body_buf), headers=self.headers, reply='accept')
        started = time.monotonic()
        error = None
        try:
            flood(self._ctx, FLOOD, COUNT)
        except Exception as exc:  # noqa: BLE001 - the MTA closed on us, most likely
            error = '%s: %s' % (type(exc).__name__, exc)
        scripted.LOG.write({'event': 'flood', 'conn': self.conn, 'flood': FLOOD, 'count': COUNT,
                            'seconds': round(time.monotonic() - started, 3), 'error': error})
        return Milter.TEMPFAIL if error else Milter.ACCEPT


def main(argv=None):
    global FLOOD, COUNT, TRIGGER
    parser = argparse.ArgumentParser(description='Flooding libmilter test filter')
    parser.add_argument('--socket', required=True, help='libmilter socket spec')
    parser.add_argument('--log', default=None, help='JSONL event log (appended)')
    parser.add_argument('--flood', required=True,
                        choices=['addrcpt', 'chgheader', 'addheader', 'replbody'])
    parser.add_argument('--count', type=int, required=True,
                        help='modifications (replbody: bytes of body)')
    parser.add_argument('--trigger', default='flood@',
                        help='flood the message whose envelope sender contains this')
    parser.add_argument('--timeout', type=float, default=0,
                        help='libmilter I/O timeout in seconds (smfi_settimeout)')
    parser.add_argument('--name', default='flood', help='milter name')
    args = parser.parse_args(argv)
    try:
        scripted.check_spec(args.socket)
    except scripted.ScriptError as exc:
        sys.stderr.write('flood.py: %s\n' % exc)
        return 2
    FLOOD, COUNT, TRIGGER = args.flood, args.count, args.trigger
    scripted.SCRIPT = scripted.parse_script({'reply': {'eom': 'accept'}})
    scripted.LOG = scripted.Logger(args.log)
    Milter.factory = FloodMilter
    try:
        scripted.serve(args.name, args.socket, args.timeout, scripted.LOG,
                       {'flood': FLOOD, 'count': COUNT})
    except milter.error as exc:
        sys.stderr.write('flood.py: libmilter failed: %s (socket %s)\n' % (exc, args.socket))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
