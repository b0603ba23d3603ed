#!/usr/bin/python3
"""Scripted libmilter test filter (pymilter).

A real libmilter filter whose behaviour at every stage is chosen by a JSON
script, for integration tests of our milter client (in the spirit of
Postfix's test-milter.c). Needs Debian's python3-milter, which is only
importable from /usr/bin/python3.

Usage:
    /usr/bin/python3 test/milters/scripted.py --socket SPEC --script FILE.json \
        --log FILE.jsonl [--timeout SECONDS] [--name NAME]

SPEC is libmilter syntax: inet:PORT@127.0.0.1, inet6:PORT@[::1] (or
inet6:PORT@::1), unix:/path/to/sock.

Once libmilter listens, the filter prints READY on its own line to stdout.
SIGTERM (or SIGINT) stops it cleanly. The script format is documented in
test/milters/README.md. Every callback appends one JSON object to the log.
"""

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

import Milter
import milter

# ---------------------------------------------------------------------------
# Constants

ACTION_BITS = {
    'ADDHDRS': Milter.ADDHDRS,
    'CHGBODY': Milter.CHGBODY,
    'MODBODY': Milter.CHGBODY,
    'ADDRCPT': Milter.ADDRCPT,
    'DELRCPT': Milter.DELRCPT,
    'CHGHDRS': Milter.CHGHDRS,
    'QUARANTINE': Milter.QUARANTINE,
    'CHGFROM': Milter.CHGFROM,
    'ADDRCPT_PAR': Milter.ADDRCPT_PAR,
    'SETSYMLIST': Milter.SETSYMLIST,
}

# protocol step name -> (SMFIP_NO* bit, SMFIP_NR_* bit)
STEP_BITS = {
    'connect': (Milter.P_NOCONNECT, Milter.P_NR_CONN),
    'helo': (Milter.P_NOHELO, Milter.P_NR_HELO),
    'mail': (Milter.P_NOMAIL, Milter.P_NR_MAIL),
    'rcpt': (Milter.P_NORCPT, Milter.P_NR_RCPT),
    'data': (Milter.P_NODATA, Milter.P_NR_DATA),
    'header': (Milter.P_NOHDRS, Milter.P_NR_HDR),
    'eoh': (Milter.P_NOEOH, Milter.P_NR_EOH),
    'body': (Milter.P_NOBODY, Milter.P_NR_BODY),
    'unknown': (Milter.P_NOUNKNOWN, Milter.P_NR_UNKN),
}

PROTOCOL_NAMES = [
    ('NOCONNECT', Milter.P_NOCONNECT),
    ('NOHELO', Milter.P_NOHELO),
    ('NOMAIL', Milter.P_NOMAIL),
    ('NORCPT', Milter.P_NORCPT),
    ('NOBODY', Milter.P_NOBODY),
    ('NOHDRS', Milter.P_NOHDRS),
    ('NOEOH', Milter.P_NOEOH),
    ('NR_HDR', Milter.P_NR_HDR),
    ('NOUNKNOWN', Milter.P_NOUNKNOWN),
    ('NODATA', Milter.P_NODATA),
    ('SKIP', Milter.P_SKIP),
    ('RCPT_REJ', Milter.P_RCPT_REJ),
    ('NR_CONN', Milter.P_NR_CONN),
    ('NR_HELO', Milter.P_NR_HELO),
    ('NR_MAIL', Milter.P_NR_MAIL),
    ('NR_RCPT', Milter.P_NR_RCPT),
    ('NR_DATA', Milter.P_NR_DATA),
    ('NR_UNKN', Milter.P_NR_UNKN),
    ('NR_EOH', Milter.P_NR_EOH),
    ('NR_BODY', Milter.P_NR_BODY),
    ('HDR_LEADSPC', Milter.P_HDR_LEADSPC),
    ('MDS_256K', 0x10000000),
    ('MDS_1M', 0x20000000),
]

ACTION_NAMES = [
    ('ADDHDRS', Milter.ADDHDRS),
    ('CHGBODY', Milter.CHGBODY),
    ('ADDRCPT', Milter.ADDRCPT),
    ('DELRCPT', Milter.DELRCPT),
    ('CHGHDRS', Milter.CHGHDRS),
    ('QUARANTINE', Milter.QUARANTINE),
    ('CHGFROM', Milter.CHGFROM),
    ('ADDRCPT_PAR', Milter.ADDRCPT_PAR),
    ('SETSYMLIST', Milter.SETSYMLIST),
]

SYMLIST_STAGES = {
    'connect': Milter.M_CONNECT,
    'helo': Milter.M_HELO,
    'mail': Milter.M_ENVFROM,
    'rcpt': Milter.M_ENVRCPT,
    'data': Milter.M_DATA,
    'eoh': Milter.M_EOH,
    'eom': Milter.M_EOM,
}

REPLY_STAGES = (
    'connect', 'helo', 'mail', 'rcpt', 'data', 'header', 'eoh', 'body', 'eom', 'unknown',
)

SIMPLE_REPLIES = {
    'continue': Milter.CONTINUE,
    'accept': Milter.ACCEPT,
    'reject': Milter.REJECT,
    'tempfail': Milter.TEMPFAIL,
    'discard': Milter.DISCARD,
    'skip': Milter.SKIP,
}

FAMILY_NAMES = {
    socket.AF_INET: 'inet',
    socket.AF_INET6: 'inet6',
    socket.AF_UNIX: 'unix',
    0: 'unknown',
}

MACROS = [
    'j', '_', 'v', '{daemon_name}', '{daemon_addr}', '{daemon_port}', '{client_addr}',
    '{client_name}', '{client_port}', '{client_ptr}', '{if_addr}', 'i', '{auth_type}',
    '{auth_authen}', '{auth_author}', '{mail_addr}', '{mail_host}', '{mail_mailer}',
    '{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}', '{tls_version}', '{cipher}',
    '{cipher_bits}', '{cert_subject}', '{cert_issuer}', '{source_channel}',
    '{destination_channel}', '{optin}', '{msg_id}',
]

FULL_BODY_LIMIT = 65536

# ---------------------------------------------------------------------------
# Helpers


class ScriptError(Exception):
    pass


def mask_names(bits, names):
    out = [name for name, bit in names if bits & bit]
    rest = bits
    for _name, bit in names:
        rest &= ~bit
    if rest:
        out.append(hex(rest))
    return out


def text_of(raw):
    """Readable form of wire bytes: UTF-8, invalid bytes replaced by U+FFFD."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    return raw.decode('utf-8', errors='replace')


def b64_of(raw):
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode('utf-8', errors='surrogateescape')
    return base64.b64encode(raw).decode('ascii')


def jsonable(value):
    if isinstance(value, bytes):
        return text_of(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, str):
        # strings decoded with surrogateescape: keep them valid JSON/UTF-16
        return value.encode('utf-8', errors='surrogateescape').decode('utf-8', errors='replace')
    return value


class Logger:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.seq = 0
        self.fh = open(path, 'a', encoding='utf-8') if path else None

    def write(self, record):
        with self.lock:
            self.seq += 1
            record = dict(record)
            record['seq'] = self.seq
            record['ts'] = round(time.time(), 6)
            record['pid'] = os.getpid()
            line = json.dumps(jsonable(record), ensure_ascii=False, sort_keys=False)
            if self.fh is not None:
                self.fh.write(line + '\n')
                self.fh.flush()

    def close(self):
        with self.lock:
            if self.fh is not None:
                self.fh.close()
                self.fh = None


# ---------------------------------------------------------------------------
# Script parsing (done once, at startup; errors abort before READY)


def parse_reply(value, where):
    if isinstance(value, str):
        key = value.lower()
        if key not in SIMPLE_REPLIES:
            raise ScriptError('%s: unknown reply %r' % (where, value))
        return {'kind': 'simple', 'name': key, 'rc': SIMPLE_REPLIES[key]}
    if isinstance(value, dict) and 'code' in value:
        code = str(value['code'])
        if len(code) != 3 or not code.isdigit():
            raise ScriptError('%s: reply code must be 3 digits: %r' % (where, code))
        lines = value.get('lines')
        if lines is None:
            text = value.get('text')
            lines = [] if text is None else [text]
        if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
            raise ScriptError('%s: lines must be a list of strings' % where)
        if len(lines) > 32:
            raise ScriptError('%s: libmilter allows at most 32 reply lines' % where)
        action = value.get('action')
        if action is None:
            action = 'tempfail' if code.startswith('4') else 'reject'
        action = str(action).lower()
        if action not in SIMPLE_REPLIES:
            raise ScriptError('%s: unknown action %r' % (where, action))
        xcode = value.get('xcode')
        return {
            'kind': 'code',
            'name': action,
            'rc': SIMPLE_REPLIES[action],
            'code': code,
            'xcode': None if xcode is None else str(xcode),
            'lines': lines,
        }
    raise ScriptError('%s: a reply is a string or {code, xcode, lines}' % where)


def parse_keyed_reply(value, where):
    """rcpt/header replies may be a map of key -> reply with a '*' default."""
    if isinstance(value, dict) and 'code' not in value:
        out = {}
        for key, v in value.items():
            out[key] = parse_reply(v, '%s[%s]' % (where, key))
        return {'kind': 'map', 'map': out}
    return parse_reply(value, where)


def parse_stage_map(value, where, stages, conv):
    out = {}
    if value is None:
        return out
    if not isinstance(value, dict):
        raise ScriptError('%s must be an object' % where)
    for key, v in value.items():
        if key not in stages:
            raise ScriptError('%s: unknown stage %r (expected one of %s)'
                              % (where, key, ', '.join(stages)))
        out[key] = conv(v, '%s.%s' % (where, key))
    return out


def as_number(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ScriptError('%s must be a non-negative number' % where)
    return v


EOM_OPS = {
    'addheader': ('name', 'value'),
    'insheader': ('index', 'name', 'value'),
    'chgheader': ('name', 'index', 'value'),
    'replacebody': (),
    'addrcpt': ('rcpt',),
    'addrcpt_par': ('rcpt',),
    'delrcpt': ('rcpt',),
    'chgfrom': ('sender',),
    'quarantine': ('reason',),
    'progress': (),
    'sleep': ('ms',),
}


def parse_eom_ops(value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ScriptError('eom must be a list of operations')
    ops = []
    for i, op in enumerate(value):
        where = 'eom[%d]' % i
        if not isinstance(op, dict):
            raise ScriptError('%s must be an object' % where)
        name = op.get('op')
        if name not in EOM_OPS:
            raise ScriptError('%s: unknown op %r (expected one of %s)'
                              % (where, name, ', '.join(EOM_OPS)))
        for field in EOM_OPS[name]:
            if field not in op:
                raise ScriptError('%s (%s) needs %r' % (where, name, field))
        if name == 'replacebody':
            op = dict(op)
            op['_data'] = replacement_body(op, where)
        ops.append(op)
    return ops


def replacement_body(op, where):
    if 'text' in op:
        return op['text'].encode('utf-8')
    if 'base64' in op:
        return base64.b64decode(op['base64'])
    rep = op.get('repeat')
    if isinstance(rep, dict) and 'text' in rep and 'times' in rep:
        return rep['text'].encode('utf-8') * int(rep['times'])
    raise ScriptError('%s (replacebody) needs text, base64 or repeat {text, times}' % where)


def load_script(path):
    with open(path, 'r', encoding='utf-8') as fh:
        raw = json.load(fh)
    return parse_script(raw)


def parse_script(raw):
    if not isinstance(raw, dict):
        raise ScriptError('the script must be a JSON object')
    known = {'actions', 'protocol', 'symlist', 'reply', 'progress', 'progressIntervalMs',
             'sleepMs', 'eom', 'comment', 'description'}
    for key in raw:
        if key not in known:
            raise ScriptError('unknown script key %r' % key)

    script = {}

    actions = raw.get('actions', 'all')
    if actions == 'all' or actions is None:
        script['actions'] = None
    elif isinstance(actions, int) and not isinstance(actions, bool):
        script['actions'] = actions
    elif isinstance(actions, list):
        bits = 0
        for a in actions:
            name = str(a).upper()
            if name.startswith('SMFIF_'):
                name = name[6:]
            if name not in ACTION_BITS:
                raise ScriptError('actions: unknown flag %r' % a)
            bits |= ACTION_BITS[name]
        script['actions'] = bits
    else:
        raise ScriptError('actions must be "all", a list of SMFIF names or a number')

    proto = raw.get('protocol') or {}
    if not isinstance(proto, dict):
        raise ScriptError('protocol must be an object')
    for key in proto:
        if key not in ('no', 'noreply', 'skip', 'headerLeadingSpace', 'rcptRej', 'mask'):
            raise ScriptError('protocol: unknown key %r' % key)
    pbits = 0
    for step in proto.get('no', []):
        if step not in STEP_BITS:
            raise ScriptError('protocol.no: unknown step %r' % step)
        pbits |= STEP_BITS[step][0]
    for step in proto.get('noreply', []):
        if step not in STEP_BITS:
            raise ScriptError('protocol.noreply: unknown step %r' % step)
        pbits |= STEP_BITS[step][1]
    if proto.get('skip'):
        pbits |= Milter.P_SKIP
    if proto.get('headerLeadingSpace'):
        pbits |= Milter.P_HDR_LEADSPC
    if proto.get('rcptRej'):
        pbits |= Milter.P_RCPT_REJ
    if 'mask' in proto:
        pbits = int(proto['mask'])
    script['protocol'] = pbits

    symlist = raw.get('symlist') or {}
    if not isinstance(symlist, dict):
        raise ScriptError('symlist must be an object')
    script['symlist'] = {}
    for stage, macros in symlist.items():
        if stage not in SYMLIST_STAGES:
            raise ScriptError('symlist: unknown stage %r' % stage)
        if isinstance(macros, list):
            macros = ' '.join(macros)
        if not isinstance(macros, str):
            raise ScriptError('symlist.%s must be a string' % stage)
        script['symlist'][stage] = macros

    def conv_reply(v, where):
        if where.endswith('.rcpt') or where.endswith('.header'):
            return parse_keyed_reply(v, where)
        return parse_reply(v, where)

    script['reply'] = parse_stage_map(raw.get('reply'), 'reply', REPLY_STAGES, conv_reply)
    script['progress'] = parse_stage_map(
        raw.get('progress'), 'progress', REPLY_STAGES, lambda v, w: int(as_number(v, w)))
    script['sleepMs'] = parse_stage_map(raw.get('sleepMs'), 'sleepMs', REPLY_STAGES, as_number)
    script['progressIntervalMs'] = as_number(
        raw.get('progressIntervalMs', 100), 'progressIntervalMs')
    script['eom'] = parse_eom_ops(raw.get('eom'))
    return script


# ---------------------------------------------------------------------------
# The filter

SCRIPT = None
LOG = None


# the reply of a stage negotiated with SMFIP_NR_* (the script's reply is ignored)
NOREPLY = {'kind': 'simple', 'name': 'noreply', 'rc': Milter.NOREPLY}


def reply_json(reply):
    if reply is None:
        return 'continue'
    if reply['kind'] == 'simple':
        return reply['name']
    return {'action': reply['name'], 'code': reply['code'], 'xcode': reply['xcode'],
            'lines': reply['lines']}


class ScriptedMilter(Milter.Base):
    def __init__(self):
        self.conn = Milter.uniqueID()
        self.reset_message()
        self.msg_count = 0
        self.hostaddr = None
        self.sender = None

    def reset_message(self):
        self.headers = []
        self.body_buf = bytearray()
        self.body_chunks = 0

    # -- plumbing ---------------------------------------------------------

    def macros(self):
        out = {}
        ctx = getattr(self, '_ctx', None)
        if ctx is None:
            return out
        for name in MACROS:
            try:
                value = ctx.getsymval(name)
            except Exception:  # noqa: BLE001 - 8-bit macro values fail to decode
                value = '<undecodable>'
            if value is not None:
                out[name] = value
        return out

    def log(self, event, **fields):
        record = {'event': event, 'conn': self.conn}
        record.update(fields)
        if event not in ('close', 'negotiate'):
            record['macros'] = self.macros()
        LOG.write(record)

    def error(self, stage, exc):
        try:
            LOG.write({
                'event': 'error',
                'conn': self.conn,
                'stage': stage,
                'error': '%s: %s' % (type(exc).__name__, exc),
                'traceback': traceback.format_exc(),
            })
        except Exception:  # noqa: BLE001
            traceback.print_exc()

    def lookup_reply(self, stage, key=None):
        if stage in STEP_BITS and self._protocol & STEP_BITS[stage][1]:
            return NOREPLY
        reply = SCRIPT['reply'].get(stage)
        if reply is None:
            return None
        if reply['kind'] == 'map':
            table = reply['map']
            if key is not None:
                if key in table:
                    return table[key]
                low = key.lower()
                for k, v in table.items():
                    if k.lower() == low:
                        return v
            return table.get('*')
        return reply

    def pause(self, stage):
        count = SCRIPT['progress'].get(stage, 0)
        interval = SCRIPT['progressIntervalMs'] / 1000.0
        for _ in range(count):
            self._ctx.progress()
            time.sleep(interval)
        delay = SCRIPT['sleepMs'].get(stage, 0)
        if delay:
            time.sleep(delay / 1000.0)

    def finish(self, stage, reply, pause=True):
        """Progress/sleep as scripted, then turn the reply into a return code."""
        if pause:
            self.pause(stage)
        if reply is NOREPLY:
            return Milter.NOREPLY
        if reply is None:
            return Milter.CONTINUE
        if reply['kind'] == 'code':
            lines = reply['lines']
            # the C setreply: rcode, xcode (may be None), then 0..32 lines
            self._ctx.setreply(reply['code'], reply['xcode'], *lines)
        return reply['rc']

    def guarded(self, stage, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never let libmilter see a crash
            self.error(stage, exc)
            return Milter.TEMPFAIL

    # -- negotiation ------------------------------------------------------

    def negotiate(self, opts):
        try:
            offered_actions, offered_protocol, f2, f3 = opts[0], opts[1], opts[2], opts[3]
            actions = self.requested_actions(offered_actions)
            protocol = SCRIPT['protocol']
            self._actions = actions
            self._protocol = protocol
            for stage, macros in SCRIPT['symlist'].items():
                self._ctx.setsymlist(SYMLIST_STAGES[stage], macros)
            opts[0] = actions
            opts[1] = protocol
            opts[2] = 0
            opts[3] = 0
            LOG.write({
                'event': 'negotiate',
                'conn': self.conn,
                'offered': {
                    'actions': offered_actions,
                    'protocol': offered_protocol,
                    'actionNames': mask_names(offered_actions, ACTION_NAMES),
                    'protocolNames': mask_names(offered_protocol, PROTOCOL_NAMES),
                    'f2': f2,
                    'f3': f3,
                },
                'requested': {
                    'actions': actions,
                    'protocol': protocol,
                    'actionNames': mask_names(actions, ACTION_NAMES),
                    'protocolNames': mask_names(protocol, PROTOCOL_NAMES),
                    'symlist': SCRIPT['symlist'],
                },
            })
            return Milter.CONTINUE
        except Exception as exc:  # noqa: BLE001
            self.error('negotiate', exc)
            return Milter.TEMPFAIL

    def requested_actions(self, offered_actions):
        actions = SCRIPT['actions']
        return offered_actions if actions is None else actions

    # -- SMTP stages ------------------------------------------------------

    def connect(self, hostname, family, hostaddr):
        return self.guarded('connect', self._connect, hostname, family, hostaddr)

    def _connect(self, hostname, family, hostaddr):
        self.hostaddr = hostaddr
        reply = self.lookup_reply('connect')
        self.log('connect', hostname=hostname, family=family,
                 familyName=FAMILY_NAMES.get(family, str(family)),
                 hostaddr=list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr,
                 reply=reply_json(reply))
        return self.finish('connect', reply)

    def hello(self, hostname):
        return self.guarded('helo', self._hello, hostname)

    def _hello(self, hostname):
        reply = self.lookup_reply('helo')
        self.log('helo', helo=hostname, reply=reply_json(reply))
        return self.finish('helo', reply)

    # pymilter calls the *_bytes variants with the raw argv; keep the bytes.
    def envfrom_bytes(self, *args):
        return self.guarded('mail', self._envfrom, args)

    def _envfrom(self, args):
        self.reset_message()
        self.msg_count += 1
        self.sender = text_of(args[0]) if args else ''
        reply = self.lookup_reply('mail')
        self.log('envfrom', sender=self.sender,
                 args=[text_of(a) for a in args], argsB64=[b64_of(a) for a in args],
                 message=self.msg_count, reply=reply_json(reply))
        return self.finish('mail', reply)

    def envrcpt_bytes(self, *args):
        return self.guarded('rcpt', self._envrcpt, args)

    def _envrcpt(self, args):
        rcpt = text_of(args[0]) if args else ''
        reply, extra = self.decide_rcpt(rcpt)
        self.log('envrcpt', rcpt=rcpt, args=[text_of(a) for a in args],
                 argsB64=[b64_of(a) for a in args], reply=reply_json(reply), **extra)
        return self.finish('rcpt', reply)

    def decide_rcpt(self, rcpt):
        """The reply for one recipient, and extra fields for its log event."""
        return self.lookup_reply('rcpt', rcpt), {}

    def data(self):
        return self.guarded('data', self._data)

    def _data(self):
        reply = self.lookup_reply('data')
        self.log('data', reply=reply_json(reply))
        return self.finish('data', reply)

    def header_bytes(self, name, value):
        return self.guarded('header', self._header, name, value)

    def _header(self, name, value):
        name = text_of(name)
        self.headers.append([name, text_of(value)])
        reply = self.lookup_reply('header', name)
        self.log('header', name=name, value=text_of(value), valueB64=b64_of(value),
                 index=len(self.headers), reply=reply_json(reply))
        return self.finish('header', reply)

    def eoh(self):
        return self.guarded('eoh', self._eoh)

    def _eoh(self):
        reply = self.lookup_reply('eoh')
        self.log('eoh', headerCount=len(self.headers), reply=reply_json(reply))
        return self.finish('eoh', reply)

    def body(self, chunk):
        return self.guarded('body', self._body, chunk)

    def _body(self, chunk):
        self.body_buf.extend(chunk)
        self.body_chunks += 1
        reply = self.lookup_reply('body')
        self.log('body', length=len(chunk), chunk=self.body_chunks, total=len(self.body_buf),
                 reply=reply_json(reply))
        return self.finish('body', reply)

    def unknown(self, cmd):
        return self.guarded('unknown', self._unknown, cmd)

    def _unknown(self, cmd):
        reply = self.lookup_reply('unknown')
        self.log('unknown', command=text_of(cmd), reply=reply_json(reply))
        return self.finish('unknown', reply)

    def eom(self):
        try:
            return self._eom()
        except Exception as exc:  # noqa: BLE001
            self.error('eom', exc)
            return Milter.TEMPFAIL
        finally:
            self.reset_message()

    def _eom(self):
        body = bytes(self.body_buf)
        reply = self.lookup_reply('eom')
        extra, ops = self.eom_extra()
        record = {
            'bodyLength': len(body),
            'bodyChunks': self.body_chunks,
            'bodySha256': hashlib.sha256(body).hexdigest(),
            'headers': self.headers,
            'reply': reply_json(reply),
        }
        if len(body) < FULL_BODY_LIMIT:
            record['body'] = text_of(body)
            record['bodyB64'] = b64_of(body)
        record.update(extra)
        self.log('eom', **record)
        # progress/sleep first, then the modifications, then the final reply
        self.pause('eom')
        for i, op in enumerate(ops + SCRIPT['eom']):
            try:
                self.apply_op(op)
            except Exception as exc:
                raise RuntimeError('eom[%d] %s failed: %s' % (i, op['op'], exc)) from exc
        return self.finish('eom', reply, pause=False)

    def eom_extra(self):
        """Extra fields for the eom log event, and operations to run first."""
        return {}, []

    def apply_op(self, op):
        ctx = self._ctx
        name = op['op']
        if name == 'addheader':
            ctx.addheader(op['name'], op['value'], -1)
        elif name == 'insheader':
            ctx.addheader(op['name'], op['value'], int(op['index']))
        elif name == 'chgheader':
            value = op.get('value')
            ctx.chgheader(op['name'], int(op['index']), value if value else None)
        elif name == 'replacebody':
            data = op['_data']
            size = int(op.get('chunkSize') or 0)
            if size > 0 and len(data) > 0:
                for start in range(0, len(data), size):
                    ctx.replacebody(data[start:start + size])
            else:
                ctx.replacebody(data)
        elif name == 'addrcpt':
            ctx.addrcpt(op['rcpt'])
        elif name == 'addrcpt_par':
            ctx.addrcpt(op['rcpt'], op.get('params') or None)
        elif name == 'delrcpt':
            ctx.delrcpt(op['rcpt'])
        elif name == 'chgfrom':
            ctx.chgfrom(op['sender'], op.get('params') or None)
        elif name == 'quarantine':
            ctx.quarantine(op['reason'])
        elif name == 'progress':
            ctx.progress()
        elif name == 'sleep':
            time.sleep(float(op['ms']) / 1000.0)
        else:  # pragma: no cover - rejected by the parser
            raise ScriptError('unknown op %r' % name)

    def abort(self):
        try:
            self.log('abort', bodyLength=len(self.body_buf), headerCount=len(self.headers))
        except Exception as exc:  # noqa: BLE001
            self.error('abort', exc)
        self.reset_message()
        return Milter.CONTINUE

    def close(self):
        try:
            self.log('close', messages=self.msg_count)
        except Exception as exc:  # noqa: BLE001
            self.error('close', exc)
        return Milter.CONTINUE


# ---------------------------------------------------------------------------
# Process plumbing shared with greylist.py


def install_callbacks():
    """Milter.runmilter without opensocket/main, so READY can be printed between."""
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)


def serve(name, spec, timeout, logger, extra_ready=None):
    """Open the socket, print READY, run libmilter until SIGTERM/SIGINT.

    smfi_main() runs in a helper thread. libmilter blocks SIGTERM/SIGINT/SIGHUP
    in that thread (and the threads it spawns) and sigwait()s them, but only
    notices a stop request at its next 5 s listener wake-up. The main thread
    keeps the signals unblocked, and Linux delivers a process-directed signal
    to the main thread when it can take it, so we exit at once instead.
    """
    install_callbacks()
    milter.setconn(spec)
    if timeout:
        milter.settimeout(int(timeout))
    milter.register(
        name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    # smfi_opensocket creates, binds and listen()s: connections made after
    # this queue in the backlog until smfi_main accepts them.
    milter.opensocket(True)

    state = {'signal': None, 'error': None, 'done': False}

    def on_signal(signum, _frame):
        state['signal'] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def run():
        try:
            milter.main()
        except Exception as exc:  # noqa: BLE001
            state['error'] = exc
        finally:
            state['done'] = True

    thread = threading.Thread(target=run, name='smfi_main', daemon=True)
    thread.start()

    record = {'event': 'ready', 'conn': 0, 'socket': spec}
    if extra_ready:
        record.update(extra_ready)
    logger.write(record)
    sys.stdout.write('READY\n')
    sys.stdout.flush()

    while state['signal'] is None and not state['done']:
        time.sleep(0.05)

    logger.write({'event': 'stopped', 'conn': 0, 'signal': state['signal'],
                  'error': None if state['error'] is None else str(state['error'])})
    if spec.startswith('unix:') or spec.startswith('local:'):
        try:
            os.unlink(spec.split(':', 1)[1])
        except OSError:
            pass
    logger.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Connection threads may still sit inside libmilter; do not let the
    # interpreter tear itself down under them.
    os._exit(1 if state['error'] is not None else 0)


def check_spec(spec):
    if not (spec.startswith('inet:') or spec.startswith('inet6:') or spec.startswith('unix:')
            or spec.startswith('local:')):
        raise ScriptError('--socket must be inet:PORT@HOST, inet6:PORT@HOST or unix:PATH')


def main(argv=None):
    global SCRIPT, LOG
    parser = argparse.ArgumentParser(description='Scripted libmilter test filter')
    parser.add_argument('--socket', required=True, help='libmilter socket spec')
    parser.add_argument('--script', required=True, help='JSON script file')
    parser.add_argument('--log', required=True, help='JSONL event log (appended)')
    parser.add_argument('--timeout', type=float, default=0,
                        help='libmilter I/O timeout in seconds (smfi_settimeout)')
    parser.add_argument('--name', default='scripted', help='milter name')
    args = parser.parse_args(argv)
    try:
        check_spec(args.socket)
        SCRIPT = load_script(args.script)
    except (ScriptError, ValueError, OSError) as exc:
        sys.stderr.write('scripted.py: bad script: %s\n' % exc)
        return 2
    LOG = Logger(args.log)
    Milter.factory = ScriptedMilter
    try:
        serve(args.name, args.socket, args.timeout, LOG)
    except milter.error as exc:
        sys.stderr.write('scripted.py: libmilter failed: %s (socket %s)\n' % (exc, args.socket))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
