"""Postfix log lines -> structured records -> delivery events. Pure (no I/O).

`parse_line(line)` understands one syslog line as Postfix writes it — through syslog in the
traditional format (`Nov 22 12:00:01 host postfix/smtp[123]: ...`), in RFC 3339 format
(`2026-11-22T12:00:01.123456+00:00 host postfix/smtp[123]: ...`, Debian 12's rsyslog default),
or through Postfix's own `maillog_file` (traditional format) — and returns a `Parsed`, or None
when the line is not a Postfix line at all. It never raises.

The syslog tag is `<syslog_name>/<process>`; syslog_name may itself contain slashes
(`postfix/relay/smtp`, `postfix-submission/smtpd`, a multi-instance `postfix-out/qmgr`), so the
process is the last path element and a tag must contain at least one slash.

`Parsed.kind` is one of:

  delivery      QID: to=<..>, [orig_to=<..>,] relay=.., [conn_use=N,] delay=.., delays=..,
                dsn=X.Y.Z, status=sent|deferred|bounced|expired|undeliverable|SOFTBOUNCE (...)
                (any process: smtp, lmtp, local, virtual, pipe, error, retry, discard, qmgr)
  qmgr          QID: from=<..>, size=N, nrcpt=N (queue active)
  expired       QID: from=<..>, status=expired, returned to sender
  removed       QID: removed               (qmgr, postsuper)
  message_id    QID: message-id=<..>       (cleanup)
  notification  QID: sender non-delivery notification: NEWQID   (bounce; also delay /
                delivery status notifications, and postmaster copies)
  reject        NOQUEUE|QID: reject|milter-reject|discard|hold|...: STAGE from CLIENT: REPLY;
                from=<..> to=<..> proto=.. helo=<..>   (smtpd, cleanup)
  client        QID: client=NAME[ADDR][, sasl_method=.., sasl_username=..]   (smtpd)
  pickup        QID: uid=N from=<..>      (pickup)
  malformed     a line with a queue id whose record type we know (`to=<`, `from=<`) but
                whose fields do not parse: counted and logged by the follower (format drift)
  other         any other Postfix line (connect/disconnect, warnings, TLS, statistics, ...)

`Correlator` keeps a bounded amount of per-queue-id state (message-id, sender, size, client,
recipients deferred so far) and turns delivery lines into `events.Event`s.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mxhook.model import bounces
from mxhook.model import events

# ---------------------------------------------------------------------------------------------
# Line header

_HEAD = re.compile(
    r"(?:(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<frac>\.\d{1,9})?(?P<tz>Z|[+-]\d\d:?\d\d)?"
    r"|(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2})"
    r" (?P<hms>\d\d:\d\d:\d\d)(?P<tfrac>\.\d{1,9})?)"
    r" (?P<host>\S+) (?P<tag>[^\s\[\]:/]+(?:/[^\s\[\]:/]+)+)(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)",
    re.S,
)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# Short ids: hex (inode + microseconds). Long ids (enable_long_queue_ids = yes): base-52 time,
# 'z', base-51 inode — letters and digits without vowels.
QUEUE_ID = r"(?:[0-9A-F]{6,12}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20})"
_QID = re.compile(rf"({QUEUE_ID}): ")
_QUEUE_ID_FULL = re.compile(QUEUE_ID)

# ---------------------------------------------------------------------------------------------
# Message bodies (after "QID: ")

_DELIVERY = re.compile(
    r"to=<(?P<to>.*?)>, (?:orig_to=<(?P<orig_to>.*?)>, )?relay=(?P<relay>[^,]*), "
    r"(?:conn_use=(?P<conn_use>\d+), )?delay=(?P<delay>[\d.]+), delays=(?P<delays>[\d./]+), "
    r"dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), status=(?P<status>[A-Za-z]+)"
    r"(?: \((?P<text>.*)\)|, (?P<tail>.*)|)$",
    re.S,
)
_QMGR = re.compile(r"from=<(?P<from>.*?)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)(?: \((?P<note>[^)]*)\))?$", re.S)
_EXPIRED = re.compile(r"from=<(?P<from>.*?)>, status=expired, returned to sender$", re.S)
_MESSAGE_ID = re.compile(r"(?:resent-)?message-id=(?P<message_id>.*)$", re.S)
_CLIENT = re.compile(
    r"client=(?P<client>[^,\s]*)(?P<rest>(?:, .*)?)$", re.S)
_NOTIFICATION = re.compile(
    r"(?P<to_whom>sender|postmaster) (?P<notice>non-delivery|delay|delivery status|success)"
    r" notification: (?P<new_queue_id>\S+)$", re.S)
_PICKUP = re.compile(r"uid=(?P<uid>\d+) from=<(?P<from>.*?)>", re.S)
_REJECT = re.compile(
    r"(?P<action>reject|milter-reject|reject_warning|discard|hold|filter|redirect|warn|bcc|prepend|replace|info):"
    r" (?P<stage>[A-Z][A-Z-]*) from (?P<client>\S+?)(?::\d+)?: (?P<reply>.*?)"
    r"; from=<(?P<from>.*?)>(?:,? to=<(?P<to>.*?)>)?(?:,? proto=(?P<proto>[^\s,]+))?(?:,? helo=<(?P<helo>.*?)>)?$",
    re.S,
)
_CLIENT_NAME_ADDR = re.compile(r"(?P<name>[^\[]*)\[(?P<addr>[^\]]*)\]")

# Status texts of delivery lines
_SAID = re.compile(
    r"host (?P<host>\S+) (?:said|refused to talk to me): (?P<reply>.*?)(?: \(in reply to (?P<cmd>.+?) command\))?$",
    re.S)
_CONNECT = re.compile(
    r"(?:delivery temporarily suspended: )?(?:connect to (?P<host>[^\s\[]+\[[^\]]*\])(?::\d+)?: "
    r"|(?:lost connection|conversation) with (?P<host2>[^\s\[]+\[[^\]]*\]) )",
)
_QUEUED_AS = re.compile(r"(?:queued as|forwarded as|queued on [^ ]+ as) (?P<qid>[0-9A-Za-z]+)\b")
_RELAY_HOST = re.compile(r"(?P<host>[^\s\[]+\[[^\]]*\])(?::\d+)?$")


@dataclass(slots=True)
class Parsed:
    """One understood Postfix log line."""

    kind: str
    at: str | None  # UTC ISO 8601 with Z ('2026-11-22T12:00:01.000000Z'); None if unknown
    at_us: int | None  # the same as microseconds since the epoch
    host: str
    program: str  # the syslog tag, e.g. 'postfix-submission/smtpd'
    process: str  # the last element of the tag, e.g. 'smtpd'
    pid: int | None
    queue_id: str | None  # None for NOQUEUE and lines without a queue id
    msg: str  # the text after 'tag[pid]: '
    data: dict = field(default_factory=dict)  # kind-specific fields (see module doc)
    # resolution of the time stamp in microseconds: 1_000_000 for whole seconds (traditional
    # syslog, maillog_file), 1 for microseconds (RFC 3339 with 6 digits, journald)
    at_res_us: int = 1

    def id_us(self) -> int | None:
        """The time for event ids: the *end* of the stamp's resolution. A line stamped
        12:00:01 was written somewhere in [12:00:01, 12:00:02); ids sort by time and the spooler
        ingests in id order, so an id at 12:00:01.000000 would sort before the milter's
        `queued` event of 12:00:01.5 for the very message this line delivered, and the outcome
        would reach the endpoint before its `queued`. At the end of the second it cannot."""
        return None if self.at_us is None else self.at_us + self.at_res_us - 1


# ---------------------------------------------------------------------------------------------
# Time stamps (cached per second: consecutive lines share them)

_SECOND_CACHE: dict = {}
_ISO_SECOND: dict = {}


def clear_caches() -> None:
    """Forget cached time stamp conversions (after the local time zone changed: tests)."""
    _SECOND_CACHE.clear()
    _ISO_SECOND.clear()


def _iso_second(seconds: int) -> str:
    s = _ISO_SECOND.get(seconds)
    if s is None:
        if len(_ISO_SECOND) > 8192:
            _ISO_SECOND.clear()
        s = _ISO_SECOND[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return s


def _frac_us(frac: str | None) -> int:
    if not frac:
        return 0
    return int((frac[1:] + "000000")[:6])


def _iso_epoch(base: str, tz: str | None) -> int | None:
    key = (base, tz)
    sec = _SECOND_CACHE.get(key)
    if sec is None:
        try:
            if tz is None:
                sec = int(datetime.fromisoformat(base).timestamp())  # naive: local time
            else:
                tzs = "+00:00" if tz == "Z" else (tz if ":" in tz else tz[:3] + ":" + tz[3:])
                sec = int(datetime.fromisoformat(base + tzs).timestamp())
        except (ValueError, OverflowError, OSError):
            return None
        if len(_SECOND_CACHE) > 8192:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[key] = sec
    return sec


def _trad_epoch(mon: str, day: str, hms: str, now: float) -> int | None:
    """Traditional syslog time (local time, no year): the year is the one that puts the stamp
    at most 7 days in the future of `now` (so December lines read in January get last year)."""
    today = int(now // 86400)
    key = (today, mon, day, hms)
    sec = _SECOND_CACHE.get(key)
    if sec is None:
        try:
            ref = datetime.fromtimestamp(now)
            h, m, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
            month, dom = _MONTHS[mon], int(day)
            year = ref.year
            for _ in range(8):  # Feb 29 needs a leap year
                try:
                    candidate = datetime(year, month, dom, h, m, s)
                except ValueError:
                    year -= 1
                    continue
                if candidate > ref + timedelta(days=7):
                    year -= 1
                    continue
                break
            else:
                return None
            sec = int(candidate.timestamp())
        except (ValueError, OverflowError, OSError, KeyError):
            return None
        if len(_SECOND_CACHE) > 8192:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[key] = sec
    return sec


# ---------------------------------------------------------------------------------------------
# Parsing

def parse_line(line: str, *, now: float | None = None) -> Parsed | None:
    """One log line -> Parsed, or None when it is not a Postfix syslog line. Never raises.
    `now` (epoch seconds) is the reference for the year of traditional time stamps."""
    try:
        return _parse_line(line, now)
    except Exception:  # noqa: BLE001 - a log line must never take the follower down
        return None


def _parse_line(line: str, now: float | None) -> Parsed | None:
    if line.endswith("\n"):
        line = line.rstrip("\r\n")
    m = _HEAD.match(line)
    if m is None:
        return None
    g = m.group
    iso = g("iso")
    if iso is not None:
        sec = _iso_epoch(iso, g("tz"))
        frac = g("frac")
    else:
        sec = _trad_epoch(g("mon"), g("day"), g("hms"), time.time() if now is None else now)
        frac = g("tfrac")
    if sec is not None:
        micro = _frac_us(frac)
        at_us = sec * 1_000_000 + micro
        at = f"{_iso_second(sec)}.{micro:06d}Z"
    else:
        at_us = at = None
    tag = g("tag")
    pid = g("pid")
    p = parse_message(g("msg"), at=at, at_us=at_us, host=g("host"), program=tag,
                      pid=int(pid) if pid else None)
    p.at_res_us = 10 ** (6 - min(6, len(frac) - 1)) if frac else 1_000_000
    return p


def parse_message(msg: str, *, at: str | None = None, at_us: int | None = None, host: str = "",
                  program: str = "postfix/unknown", pid: int | None = None) -> Parsed:
    """Parse the message part of a Postfix line (for sources that deliver the syslog fields
    separately, like journald). Never raises for any str input."""
    process = program.rsplit("/", 1)[-1]
    qm = _QID.match(msg)
    if qm is not None:
        qid = qm.group(1)
        rest = msg[qm.end():]
        c = rest[:3]
        kind = "other"
        data: dict = {}
        if c == "to=":
            d = _DELIVERY.match(rest)
            if d is not None:
                kind, data = "delivery", d.groupdict()
            else:
                kind = "malformed"
        elif c == "fro":
            d = _QMGR.match(rest)
            if d is not None:
                kind, data = "qmgr", d.groupdict()
            else:
                d = _EXPIRED.match(rest)
                if d is not None:
                    kind, data = "expired", d.groupdict()
                else:
                    kind = "malformed"
        elif rest == "removed":
            kind = "removed"
        elif c == "mes" or c == "res":
            d = _MESSAGE_ID.match(rest)
            if d is not None:
                kind = "message_id"
                data = {"message_id": d.group("message_id").strip(), "resent": c == "res"}
        elif c == "cli":
            d = _CLIENT.match(rest)
            if d is not None:
                kind = "client"
                data = _client_data(d.group("client"), d.group("rest"))
        elif c == "sen" or c == "pos":
            d = _NOTIFICATION.match(rest)
            if d is not None:
                kind, data = "notification", d.groupdict()
        elif c == "uid":
            d = _PICKUP.match(rest)
            if d is not None:
                kind, data = "pickup", d.groupdict()
        else:
            d = _REJECT.match(rest)
            if d is not None:
                kind, data = "reject", _reject_data(d)
        return Parsed(kind, at, at_us, host, program, process, pid, qid, msg, data)
    if msg.startswith("NOQUEUE: "):
        d = _REJECT.match(msg, 9)
        if d is not None:
            return Parsed("reject", at, at_us, host, program, process, pid, None, msg, _reject_data(d))
    return Parsed("other", at, at_us, host, program, process, pid, None, msg, {})


def _client_data(client: str, rest: str) -> dict:
    data = {"client": client, "client_name": None, "client_addr": None,
            "sasl_method": None, "sasl_username": None, "orig_queue_id": None, "orig_client": None}
    cm = _CLIENT_NAME_ADDR.match(client)
    if cm:
        data["client_name"], data["client_addr"] = cm.group("name"), cm.group("addr")
    if rest:
        for item in rest.split(", "):
            k, sep, v = item.partition("=")
            if sep and k in data:
                data[k] = v
    return data


def _reject_data(d: re.Match) -> dict:
    data = d.groupdict()
    reply = data["reply"]
    code = reply[:3] if reply[:3].isdigit() else None
    data["code"] = int(code) if code else None
    data["dsn"] = bounces.extract_dsn(reply) if code else None
    cm = _CLIENT_NAME_ADDR.match(data["client"])
    data["client_addr"] = cm.group("addr") if cm else None
    return data


def split_status_text(text: str | None) -> tuple[str | None, str | None, str | None]:
    """A delivery line's parenthesized text -> (remote host, remote reply, SMTP command).

    'host mx.x[1.2.3.4] said: 550 5.1.1 ... (in reply to RCPT TO command)'
        -> ('mx.x[1.2.3.4]', '550 5.1.1 ...', 'RCPT TO')
    'connect to mx.x[1.2.3.4]:25: Connection refused' -> ('mx.x[1.2.3.4]:25', None, None)
    Texts without a remote party (local delivery, DNS errors) -> (None, None, None).
    """
    if not text:
        return None, None, None
    m = _SAID.search(text)
    if m is not None:
        return m.group("host"), m.group("reply"), m.group("cmd")
    m = _CONNECT.match(text)
    if m is not None:
        return m.group("host") or m.group("host2"), None, None
    return None, None, None


# ---------------------------------------------------------------------------------------------
# Correlation: lines -> events

STATUS_EVENT = {
    "sent": "succeeded",
    "deferred": "deferred",
    "softbounce": "deferred",
    "bounced": "bounced",
    "expired": "failed",
    "undeliverable": "failed",
}


class _Msg:
    __slots__ = ("message_id", "sender", "size", "nrcpt", "client_addr", "auth_user", "deferred")

    def __init__(self) -> None:
        self.message_id: str | None = None
        self.sender: str | None = None
        self.size: int | None = None
        self.nrcpt: int | None = None
        self.client_addr: str | None = None
        self.auth_user: str | None = None
        self.deferred: dict | None = None  # recipient -> last deferred Event


class Correlator:
    """Per-queue-id state that turns delivery lines into events.

    State comes from `cleanup` (message-id), `qmgr` (sender, size, nrcpt), `smtpd` (client,
    SASL user) and `pickup` lines and is forgotten at `removed`; at most `max_messages` queue
    ids are kept (the least recently seen is evicted first). The state is an enrichment only:
    the spooler joins events to the milter's `queued` event by queue id, so an event whose
    queue id the correlator never saw (e.g. after a restart) still carries what the line says.

    Events of messages with the null sender (Postfix's own bounces and notifications) are
    skipped when `ignore_null_sender` is on: they were not submitted by an application.

    `feed(parsed, key)` returns the events of one line; `key` identifies the line's position
    in its source ('f:<inode>:<offset>' for a log file: the inode the line was first read
    under, and its byte offset; 'j:<cursor>' for the journal) and, with the line's text, makes
    the event ids deterministic.
    """

    def __init__(self, max_messages: int = 100_000, *, ignore_null_sender: bool = True,
                 myhostname: str = ""):
        self.max_messages = max(1, int(max_messages))
        self.ignore_null_sender = ignore_null_sender
        # Events name the server that logged them (host_name). Postfix's maillog_file and
        # syslog write the short form of the host name (`mx` for mx.example.com): a line of
        # this host (`myhostname`, or its first label) is named by myhostname, as the milter
        # names its events (its `j` macro); another host's line (a log gathered from several)
        # by its own host field.
        self._hosts = {myhostname: myhostname, myhostname.split(".", 1)[0]: myhostname} if myhostname else {}
        self._msgs: OrderedDict[str, _Msg] = OrderedDict()
        self.counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._msgs)

    def _state(self, qid: str) -> _Msg:
        st = self._msgs.get(qid)
        if st is None:
            st = self._msgs[qid] = _Msg()
            if len(self._msgs) > self.max_messages:
                self._msgs.popitem(last=False)
                self.counts["evicted"] = self.counts.get("evicted", 0) + 1
        else:
            self._msgs.move_to_end(qid)
        return st

    def known(self, qid: str) -> bool:
        return qid in self._msgs

    def feed(self, p: Parsed, key: str = "") -> list[events.Event]:
        kind = p.kind
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        qid = p.queue_id
        if kind == "delivery":
            return self._delivery(p, key)
        if qid is None:
            return []
        if kind == "message_id":
            if not p.data.get("resent"):
                mid = p.data["message_id"]
                self._state(qid).message_id = mid or None
        elif kind == "qmgr":
            st = self._state(qid)
            st.sender = p.data["from"]
            st.size = int(p.data["size"])
            st.nrcpt = int(p.data["nrcpt"])
        elif kind == "client":
            st = self._state(qid)
            st.client_addr = p.data.get("client_addr")
            st.auth_user = p.data.get("sasl_username")
        elif kind == "pickup":
            self._state(qid).sender = p.data["from"]
        elif kind == "removed":
            self._msgs.pop(qid, None)
        elif kind == "expired":
            return self._expired(p, key)
        return []

    def _delivery(self, p: Parsed, key: str) -> list[events.Event]:
        d = p.data
        status = d["status"].lower()
        etype = STATUS_EVENT.get(status)
        if etype is None:  # deliverable (address probe) or a status we do not know
            self.counts["skipped_status"] = self.counts.get("skipped_status", 0) + 1
            return []
        qid = p.queue_id
        st = self._msgs.get(qid)
        if st is not None:
            self._msgs.move_to_end(qid)
            if self.ignore_null_sender and st.sender == "":
                self.counts["null_sender"] = self.counts.get("null_sender", 0) + 1
                return []
        text = d["text"] if d["text"] is not None else d["tail"]
        remote_host, reply, cmd = split_status_text(text)
        relay = d["relay"]
        if remote_host is None and relay not in ("none", "local", "virtual") and "[" in relay:
            rm = _RELAY_HOST.match(relay)
            if rm:
                remote_host = rm.group("host")
        dsn = d["dsn"]
        bounce_type = None
        if etype == "bounced" or etype == "deferred":
            # classify needs the SMTP command the reply answered (a generic 5.3.x refusal of
            # RCPT TO is a hard bounce, after DATA a soft one), which split_status_text took off
            basis = f"{reply} (in reply to {cmd} command)" if reply and cmd else (reply or text)
            bounce_type, dsn = bounces.classify(dsn, basis, status)
            if etype == "deferred":
                bounce_type = None
        queued_as = None
        if etype == "succeeded" and text:
            qm = _QUEUED_AS.search(text)
            if qm:
                queued_as = qm.group("qid")
        at = p.at or events.now_iso()
        id_us = p.id_us() if p.at_us is not None else events.us_from_iso(at)
        recipient = d["to"]
        try:
            delay = float(d["delay"])
        except ValueError:
            delay = None
        ev = events.Event(
            type=etype, at=at, id=events.event_id(id_us, "log", key, p.msg, recipient),
            source="log", queue_id=qid, recipient=recipient, orig_recipient=d["orig_to"],
            sender=st.sender if st else None, message_id=st.message_id if st else None,
            dsn=dsn, bounce_type=bounce_type, remote_host=remote_host,
            reply=bounces.clean_reply(reply) if reply else None, diagnostic=text,
            delay=delay, relay=relay, queued_as=queued_as,
            client_addr=st.client_addr if st else None, auth_user=st.auth_user if st else None,
            host_name=self._hosts.get(p.host, p.host) or None,
        )
        if st is not None:
            if etype == "deferred":
                if st.deferred is None:
                    st.deferred = {}
                st.deferred[recipient] = ev
            elif st.deferred:
                st.deferred.pop(recipient, None)
        self.counts["events"] = self.counts.get("events", 0) + 1
        return [ev]

    def _expired(self, p: Parsed, key: str) -> list[events.Event]:
        """`status=expired, returned to sender`: Postfix gave up on the recipients still
        deferred. One `failed` per recipient we saw deferred (carrying the last deferral's
        reason); when we know none (state lost), one `failed` without recipient: the spooler
        applies it to every recipient of the queue id that has no final event yet."""
        qid = p.queue_id
        st = self._msgs.get(qid)
        sender = p.data.get("from")
        if self.ignore_null_sender and sender == "":
            return []
        at = p.at or events.now_iso()
        id_us = p.id_us() if p.at_us is not None else events.us_from_iso(at)
        out = []
        deferred = list(st.deferred.values()) if st is not None and st.deferred else []
        for last in deferred or [None]:
            rcpt = last.recipient if last else None
            out.append(events.Event(
                type="failed", at=at, id=events.event_id(id_us, "log", key, p.msg, rcpt or ""),
                source="log", queue_id=qid, recipient=rcpt,
                orig_recipient=last.orig_recipient if last else None, sender=sender,
                message_id=st.message_id if st else None,
                dsn=last.dsn if last else None, remote_host=last.remote_host if last else None,
                reply=last.reply if last else None, diagnostic=last.diagnostic if last else None,
                delay=last.delay if last else None, relay=last.relay if last else None,
                client_addr=st.client_addr if st else None, auth_user=st.auth_user if st else None,
                reason="expired", host_name=self._hosts.get(p.host, p.host) or None,
            ))
        if st is not None:
            st.deferred = None
        self.counts["events"] = self.counts.get("events", 0) + len(out)
        return out


def is_queue_id(text: str) -> bool:
    """True for a short (hex) or long (enable_long_queue_ids) Postfix queue id."""
    return bool(_QUEUE_ID_FULL.fullmatch(text or ""))
