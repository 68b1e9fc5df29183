"""Fuzzing the Postfix log parser and correlator (`postfix/maillog.py`).

`parse_line` promises never to raise; it keeps that promise with a catch-all, which would also
hide a bug that drops real delivery lines. So the parts are fuzzed without the net as well:
`parse_message` (public, "never raises for any str input") and `_parse_line` (what
`parse_line` wraps) must not raise either, and the correlator must turn whatever they give
into events without raising. Inputs: arbitrary text, and real lines (the fixtures from a real
Postfix 3.7 and an internet MX) mutated.
"""
from __future__ import annotations

import json
import os

from hypothesis import example, given
from hypothesis import strategies as st

from mxhook.postfix import maillog
from mxhook.postfix.maillog import Correlator, parse_line, parse_message

from tests.unit.test_maillog import utc  # noqa: F401  (an autouse fixture: TZ=UTC here too)

from . import FUZZ

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "unit", "fixtures", "maillog")
NOW = 1_795_996_800


def _lines() -> list[str]:
    out = []
    for name in sorted(os.listdir(FIXTURES)):
        if name.endswith(".log"):
            with open(os.path.join(FIXTURES, name), encoding="utf-8", errors="surrogateescape") as fh:
                out.extend(line for line in fh.read().splitlines() if line.strip())
    return out


REAL_LINES = _lines()
# the message part of each real line, for parse_message (the journald path)
REAL_MESSAGES = [m.group("msg") for m in map(maillog._HEAD.match, REAL_LINES) if m]


TOKENS = st.sampled_from([
    "to=<", ">, ", "relay=", "delay=", "delays=", "dsn=", "status=", "sent", "bounced", "deferred",
    "expired", "(", ")", "from=<", "size=", "nrcpt=", "removed", "message-id=", "client=", "[", "]",
    "NOQUEUE: ", "reject: ", "RCPT from ", "; ", "4A1B2C3D4E: ", ", ", "=", ":", "\x00", "\r", "\ufffd",
    "\udcff", "9" * 30, "2026-11-22T12:00:01", "Nov 22 12:00:01", " mail postfix/smtp[1]: ",
])


@st.composite
def mutated_line(draw, source=REAL_LINES):
    line = draw(st.sampled_from(source))
    chars = list(line)
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "dup", "swap"]))
        n = len(chars)
        if op == "flip" and n:
            chars[draw(st.integers(0, n - 1))] = draw(st.characters())
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del chars[i:i + draw(st.integers(1, 20))]
        elif op == "insert":
            chars[draw(st.integers(0, n)):0] = list(draw(TOKENS | st.text(max_size=10)))
        elif op == "truncate" and n:
            del chars[draw(st.integers(0, n)):]
        elif op == "dup" and n:
            i = draw(st.integers(0, n - 1))
            chars[i:i] = chars[i:i + draw(st.integers(1, 40))]
        elif op == "swap":
            parts = "".join(chars).split(", ")
            if len(parts) > 1:
                i, j = draw(st.integers(0, len(parts) - 1)), draw(st.integers(0, len(parts) - 1))
                parts[i], parts[j] = parts[j], parts[i]
            chars = list(", ".join(parts))
    return "".join(chars)


def check_parsed(p) -> None:
    if p is None:
        return
    assert p.kind in {"delivery", "qmgr", "expired", "removed", "message_id", "notification", "reject",
                      "client", "pickup", "malformed", "other"}
    assert isinstance(p.msg, str) and isinstance(p.data, dict)
    assert p.queue_id is None or maillog.is_queue_id(p.queue_id)
    assert (p.at is None) == (p.at_us is None)
    if p.at is not None:
        assert p.at.endswith("Z")


def feed_all(parsed) -> None:
    c = Correlator(max_messages=5)
    for i, p in enumerate(parsed):
        if p is None:
            continue
        for ev in c.feed(p, f"k:{i}"):
            json.dumps(ev.to_dict() if hasattr(ev, "to_dict") else ev.__dict__, default=str)
    assert len(c) <= 5


@FUZZ
@given(st.text(max_size=400))
@example("")
@example("Nov 22 12:00:02 mail postfix/smtp[1]: ")
@example("Feb 29 12:00:02 mail postfix/smtp[1]: 4A1B2C3D4E: removed")
@example("9999-12-31T23:59:59+14:00 h postfix/smtp[1]: x")
@example("0001-01-01T00:00:00-14:00 h postfix/smtp[1]: x")
def test_parse_line_arbitrary_text(line):
    p = parse_line(line, now=NOW)
    check_parsed(p)
    check_parsed(maillog._parse_line(line, NOW))  # no exception hidden by the catch-all
    feed_all([p])


@FUZZ
@given(st.lists(TOKENS | st.text(max_size=5), max_size=30).map("".join))
def test_parse_line_token_soup(body):
    for line in ("Nov 22 12:00:01 mail postfix/smtp[1]: " + body,
                 "2026-11-22T12:00:01.5+01:00 mail postfix/qmgr[2]: 4A1B2C3D4E: " + body):
        p = maillog._parse_line(line, NOW)
        check_parsed(p)
        feed_all([p])


@FUZZ
@given(st.lists(mutated_line(), min_size=1, max_size=12))
def test_mutated_real_lines(lines):
    parsed = []
    for line in lines:
        p = maillog._parse_line(line, NOW)  # without parse_line's catch-all
        check_parsed(p)
        assert parse_line(line, now=NOW) == p
        parsed.append(p)
    feed_all(parsed)


@FUZZ
@given(mutated_line(REAL_MESSAGES), st.sampled_from(["postfix/smtp", "postfix/qmgr", "a/b/c", "x"]),
       st.none() | st.integers(0, 2**31))
def test_parse_message_mutated(msg, program, pid):
    p = parse_message(msg, program=program, pid=pid, host="h")
    check_parsed(p)
    assert p.process == program.rsplit("/", 1)[-1]
    feed_all([p])


@FUZZ
@given(st.text(max_size=300))
def test_split_status_text_total(text):
    host, reply, cmd = maillog.split_status_text(text)
    for v in (host, reply, cmd):
        assert v is None or isinstance(v, str)


def test_real_lines_unchanged_by_the_net():
    """Every fixture line parses the same with and without parse_line's catch-all."""
    for line in REAL_LINES:
        assert parse_line(line, now=NOW) == maillog._parse_line(line, NOW), line
