import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxhook.model import events
from mxhook.postfix import maillog
from mxhook.postfix.maillog import Correlator, parse_line

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "maillog")
NOW = 1_795_996_800  # 2026-11-30T00:00:00Z: reference for years of traditional time stamps


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Traditional syslog stamps are local time; pin the zone so expectations hold anywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    maillog.clear_caches()
    yield
    monkeypatch.undo()
    time.tzset()
    maillog.clear_caches()


def lines(name: str) -> list[str]:
    with open(os.path.join(FIXTURES, name), encoding="utf-8", errors="surrogateescape") as fh:
        return fh.read().splitlines()


def run(name: str, **kw) -> tuple[list, Correlator]:
    c = Correlator(**kw)
    out = []
    for i, line in enumerate(lines(name)):
        p = parse_line(line, now=NOW)
        if p is not None:
            out.extend(c.feed(p, f"{name}:{i}"))
    return out, c


# ---------------------------------------------------------------------------------------------
# Line headers

@pytest.mark.parametrize("line, at, host, program, process, pid", [
    ("Nov 22 12:00:01 mail postfix/smtp[123]: connect to x[192.0.2.1]:25: Connection refused",
     "2026-11-22T12:00:01.000000Z", "mail", "postfix/smtp", "smtp", 123),
    ("Nov  2 03:04:05 mail postfix/qmgr[9]: 4A1B2C3D4E: removed",
     "2026-11-02T03:04:05.000000Z", "mail", "postfix/qmgr", "qmgr", 9),
    ("Nov 22 12:00:01.250000 mx postfix/smtp[1]: x",
     "2026-11-22T12:00:01.250000Z", "mx", "postfix/smtp", "smtp", 1),
    ("2026-11-22T12:00:01.123456+00:00 mail postfix/smtp[123]: x",
     "2026-11-22T12:00:01.123456Z", "mail", "postfix/smtp", "smtp", 123),
    ("2026-11-22T13:00:01.5+01:00 mail postfix-submission/smtpd[7]: x",
     "2026-11-22T12:00:01.500000Z", "mail", "postfix-submission/smtpd", "smtpd", 7),
    ("2026-11-22T12:00:01+0000 mail postfix/relay/smtp[8]: x",  # journalctl -o short-iso
     "2026-11-22T12:00:01.000000Z", "mail", "postfix/relay/smtp", "smtp", 8),
    ("2026-11-22T12:00:01Z mail.example.org postfix-out/submission/smtpd: x",
     "2026-11-22T12:00:01.000000Z", "mail.example.org", "postfix-out/submission/smtpd", "smtpd", None),
])
def test_headers(line, at, host, program, process, pid):
    p = parse_line(line, now=NOW)
    assert p is not None
    assert (p.at, p.host, p.program, p.process, p.pid) == (at, host, program, process, pid)
    assert p.at_us == events.us_from_iso(at)


def test_traditional_year_is_inferred_from_now():
    jan2 = 1_798_848_000  # 2027-01-02T00:00:00Z
    p = parse_line("Dec 31 23:59:59 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=jan2)
    assert p.at == "2026-12-31T23:59:59.000000Z"
    p = parse_line("Jan  1 00:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=jan2)
    assert p.at == "2027-01-01T00:00:01.000000Z"
    # a slightly fast clock on the logging host is fine (up to 7 days ahead)
    p = parse_line("Jan  3 00:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=jan2)
    assert p.at == "2027-01-03T00:00:01.000000Z"
    # Feb 29 goes to the last leap year
    p = parse_line("Feb 29 10:00:00 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=jan2)
    assert p.at == "2024-02-29T10:00:00.000000Z"


def test_local_time_zone_applies_to_traditional_stamps(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    maillog.clear_caches()
    p = parse_line("Nov 22 13:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=NOW)
    assert p.at == "2026-11-22T12:00:01.000000Z"
    # RFC 3339 stamps carry their offset; the local zone does not matter
    p = parse_line("2026-11-22T12:00:01+00:00 mail postfix/qmgr[1]: 4A1B2C3D4E: removed", now=NOW)
    assert p.at == "2026-11-22T12:00:01.000000Z"


@pytest.mark.parametrize("line", [
    "",
    "garbage",
    "Nov 22 12:00:01 mail postfix[123]: no slash in the tag",
    "Nov 22 12:00:01 mail dovecot: imap-login: Login: user=<u>",
    "Nov 22 12:00:01 mail opendkim[9]: 4A1B2C3D4E: DKIM-Signature field added",
    "Nov 22 12:00:01 mail postfix/smtp[1]:",
    "Nov 22 12:00",
    '{"MESSAGE": "x"}',
])
def test_not_postfix_lines(line):
    assert parse_line(line, now=NOW) is None


# ---------------------------------------------------------------------------------------------
# Record kinds

def test_delivery_line_fields():
    p = parse_line(
        "Nov 22 12:02:05 mail postfix/relay/smtp[2510]: 9E8D7C6B5A: to=<in@internal.example.org>, "
        "orig_to=<alias@example.org>, relay=10.0.0.5[10.0.0.5]:25, conn_use=3, delay=0.2, "
        "delays=0.01/0.01/0.1/0.08, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 3F2A1B0C9D)",
        now=NOW)
    assert p.kind == "delivery" and p.queue_id == "9E8D7C6B5A"
    d = p.data
    assert d["to"] == "in@internal.example.org" and d["orig_to"] == "alias@example.org"
    assert d["relay"] == "10.0.0.5[10.0.0.5]:25" and d["conn_use"] == "3"
    assert (d["delay"], d["delays"], d["dsn"], d["status"]) == ("0.2", "0.01/0.01/0.1/0.08", "2.0.0", "sent")
    assert d["text"] == "250 2.0.0 Ok: queued as 3F2A1B0C9D"


@pytest.mark.parametrize("msg, kind, qid, data", [
    ("4jXTcH35BWzJBc3: from=<app@sender.example>, size=452, nrcpt=2 (queue active)", "qmgr",
     "4jXTcH35BWzJBc3", {"from": "app@sender.example", "size": "452", "nrcpt": "2"}),
    ("4jXTcH3HjzzJBc8: from=<>, size=2736, nrcpt=1 (queue active)", "qmgr", "4jXTcH3HjzzJBc8",
     {"from": ""}),
    ("C93CEB08A046: from=<ina@somedomain.com>, status=expired, returned to sender", "expired",
     "C93CEB08A046", {"from": "ina@somedomain.com"}),
    ("4jXTcH35BWzJBc3: removed", "removed", "4jXTcH35BWzJBc3", {}),
    ("BB26D20D051: message-id=<17953@sender.example>", "message_id", "BB26D20D051",
     {"message_id": "<17953@sender.example>"}),
    ("BB26D20D051: message-id=", "message_id", "BB26D20D051", {"message_id": ""}),
    ("4jXTcH35BWzJBc3: sender non-delivery notification: 4jXTcH3HjzzJBc8", "notification",
     "4jXTcH35BWzJBc3", {"notice": "non-delivery", "new_queue_id": "4jXTcH3HjzzJBc8", "to_whom": "sender"}),
    ("7C3D9E1F20: sender delay notification: 8A9B0C1D2E", "notification", "7C3D9E1F20",
     {"notice": "delay"}),
    ("4A1B2C3D4E: client=app1.example.org[198.51.100.10], sasl_method=PLAIN, sasl_username=app@example.org",
     "client", "4A1B2C3D4E", {"client_addr": "198.51.100.10", "client_name": "app1.example.org",
                              "sasl_username": "app@example.org", "sasl_method": "PLAIN"}),
    ("4A1B2C3D4E: client=localhost[127.0.0.1]", "client", "4A1B2C3D4E",
     {"client_addr": "127.0.0.1", "sasl_username": None}),
    ("6F7A8B9C0D: uid=1000 from=<deploy>", "pickup", "6F7A8B9C0D", {"uid": "1000", "from": "deploy"}),
    ("NOQUEUE: reject: RCPT from unknown[203.0.113.77]: 554 5.7.1 <v@x.example>: Relay access denied; "
     "from=<s@bad.example> to=<v@x.example> proto=ESMTP helo=<WIN-123>", "reject", None,
     {"action": "reject", "stage": "RCPT", "code": 554, "dsn": "5.7.1", "from": "s@bad.example",
      "to": "v@x.example", "client_addr": "203.0.113.77", "helo": "WIN-123"}),
    ("4jXTd60nyNzJCD4: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 <bad@ours.example>: "
     "Recipient address rejected: User unknown in relay recipient table; from=<app@sender.example> "
     "to=<bad@ours.example> proto=ESMTP helo=<client.example.org>", "reject", "4jXTd60nyNzJCD4",
     {"code": 550, "dsn": "5.1.1", "to": "bad@ours.example"}),
    ("5D6E7F8091: milter-reject: END-OF-MESSAGE from m.x[192.0.2.9]: 5.7.1 No rule matched; "
     "from=<a@x.example> to=<in@hooks.example.org> proto=ESMTP helo=<m.x>", "reject", "5D6E7F8091",
     {"action": "milter-reject", "stage": "END-OF-MESSAGE", "code": None, "to": "in@hooks.example.org"}),
    ("connect from localhost[127.0.0.1]", "other", None, {}),
    ("warning: hostname x does not resolve to address 192.0.2.1", "other", None, {}),
    ("statistics: max connection rate 1/60s for (smtp:203.0.113.77) at Nov 22 12:03:05", "other", None, {}),
    ("4A1B2C3D4E: to=<alice@gm", "malformed", "4A1B2C3D4E", {}),
    ("4A1B2C3D4E: from=<a@b>, size=huge, nrcpt=1 (queue active)", "malformed", "4A1B2C3D4E", {}),
])
def test_kinds(msg, kind, qid, data):
    p = parse_line(f"Nov 22 12:00:01 mail postfix/x[1]: {msg}", now=NOW)
    assert p.kind == kind
    assert p.queue_id == qid
    for k, v in data.items():
        assert p.data[k] == v, k


def test_queue_ids():
    for qid in ("4A1B2C3D4E", "BB26D20D051", "F189C20D70C", "4jXTcH35BWzJBc3", "4Xb2sN1z3Kz9vDq",
                "4kM9qR2VdLz7Hxp"):
        assert maillog.is_queue_id(qid), qid
    for word in ("NOQUEUE", "warning", "statistics", "removed", "4a1b2c", ""):
        assert not maillog.is_queue_id(word), word


@pytest.mark.parametrize("text, expected", [
    ("host gmail-smtp-in.l.google.com[142.250.102.27] said: 550-5.1.1 gone 550 5.1.1 x - gsmtp (in reply to RCPT TO command)",
     ("gmail-smtp-in.l.google.com[142.250.102.27]", "550-5.1.1 gone 550 5.1.1 x - gsmtp", "RCPT TO")),
    ("host mta6.am0.yahoodns.net[67.195.204.72] said: 554 delivery error: dd x (a) [0] - m (in reply to end of DATA command)",
     ("mta6.am0.yahoodns.net[67.195.204.72]", "554 delivery error: dd x (a) [0] - m", "end of DATA")),
    ("host mx.busy.example[198.51.100.41] refused to talk to me: 421 4.7.0 Try again later",
     ("mx.busy.example[198.51.100.41]", "421 4.7.0 Try again later", None)),
    ("connect to mx.v6only.example[2001:db8::25]:25: Connection refused", ("mx.v6only.example[2001:db8::25]", None, None)),
    ("delivery temporarily suspended: connect to mx.x[192.0.2.1]:25: Connection timed out", ("mx.x[192.0.2.1]", None, None)),
    ("lost connection with mx.example.net[198.51.100.30] while sending RCPT TO", ("mx.example.net[198.51.100.30]", None, None)),
    ("conversation with mx.example.net[198.51.100.30] timed out while receiving the initial server greeting",
     ("mx.example.net[198.51.100.30]", None, None)),
    ('unknown user: "nosuch"', (None, None, None)),
    (None, (None, None, None)),
])
def test_split_status_text(text, expected):
    assert maillog.split_status_text(text) == expected


# ---------------------------------------------------------------------------------------------
# Fixtures -> events

def test_real_postfix_instance_log():
    """Lines written by a real Postfix 3.7 (tests/support/postfix.py; short and long queue ids,
    smtp/lmtp/local/virtual/pipe/error/discard, expiry, rejects)."""
    all_lines = lines("postfix37_private_instance.log")
    parsed = [parse_line(line, now=NOW) for line in all_lines]
    assert all(p is not None for p in parsed)
    assert not [p.msg for p in parsed if p.kind == "malformed"]
    evs, c = run("postfix37_private_instance.log")
    got = {(e.queue_id, e.recipient, e.type, e.bounce_type) for e in evs}
    expected = {
        ("4jXTcH35BWzJBc3", "a@dest.example", "bounced", "hard"),  # smtp-sink -f: 500 5.3.0 in reply to RCPT TO
        ("4jXTcH35BWzJBc3", "b@dest.example", "bounced", "hard"),
        ("4jXTcH39PhzJBc4", "nobody@ours.example", "bounced", "hard"),
        ("4jXTcM4WllzJBd8", "a@dest.example", "deferred", None),
        ("4jXTcM4c7szJBd7", "nobody@ours.example", "deferred", None),
        ("52D7F20CB7E", "a@dest.example", "succeeded", None),
        ("4jXTkr1F2vzJD5H", "a@dest.example", "deferred", None),
        ("4jXTkr1F2vzJD5H", "a@dest.example", "failed", None),  # status=expired
        ("776D120DFFF", "l1@lmtp.example", "succeeded", None),
        ("776D120DFFF", "devnull@localhost.mxhook.test", "succeeded", None),
        ("776D120DFFF", "p1@pipe.example", "succeeded", None),
        ("776D120DFFF", "p2@pipefail.example", "bounced", "soft"),
        ("776D120DFFF", "u@virt.example", "succeeded", None),
        ("776D120DFFF", "d1@disc.example", "succeeded", None),
        ("776D120DFFF", "c@refused.example", "deferred", None),
        ("88FE120DFF5", "e2@err.example", "bounced", "hard"),
        ("8B36820DFF1", "r2@retry.example", "deferred", None),
    }
    assert expected <= got
    # Postfix's own bounces (null sender) make no events
    assert not [e for e in evs if e.recipient == "app@sender.example"]
    failed = [e for e in evs if e.type == "failed"]
    assert len(failed) == 1
    assert failed[0].message_id == "<179535256404.6273.5888037981154960835@sender.example>"
    assert failed[0].reply is None and "Connection refused" in failed[0].diagnostic
    assert failed[0].reason == "expired"
    fwd = [e for e in evs if e.recipient == "fwd@localhost.mxhook.test"][0]
    assert fwd.queued_as == "8671220DFF7"
    err = [e for e in evs if e.recipient == "e2@err.example"][0]
    assert err.orig_recipient == "toerr@localhost.mxhook.test"
    # only the messages still deferred when the instances stopped are remembered
    assert {q for q in ("4jXTcM4WllzJBd8", "4jXTcM4c7szJBd7", "776D120DFFF", "8B36820DFF1")
            if c.known(q)} == {"4jXTcM4WllzJBd8", "4jXTcM4c7szJBd7", "776D120DFFF", "8B36820DFF1"}
    assert len(c) == 4


def test_internet_examples():
    evs, c = run("internet.log")
    by = {}
    for e in evs:
        by.setdefault(e.recipient, []).append(e)

    def one(rcpt):
        (e,) = by[rcpt]
        return e

    e = one("alice@gmail.com")
    assert (e.type, e.dsn, e.queue_id, e.sender) == ("succeeded", "2.0.0", "4A1B2C3D4E", "app@example.org")
    assert e.message_id == "<20261122120001.1@example.org>"
    assert e.auth_user == "app@example.org" and e.client_addr == "198.51.100.10"
    assert e.remote_host == "gmail-smtp-in.l.google.com[142.250.102.27]"
    assert e.relay == "gmail-smtp-in.l.google.com[142.250.102.27]:25"
    assert e.delay == 1.1 and e.at == "2026-11-22T12:00:02.000000Z" and e.source == "log"

    e = one("nobody.here@gmail.com")
    assert (e.type, e.bounce_type, e.dsn) == ("bounced", "hard", "5.1.1")
    assert e.reply.startswith("550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking")
    assert "550-5.1.1" in e.diagnostic and e.diagnostic.endswith("(in reply to RCPT TO command)")

    assert (one("gone@contoso.com").type, one("gone@contoso.com").bounce_type) == ("bounced", "hard")
    assert one("bob@contoso.com").type == "succeeded" and one("bob@contoso.com").queued_as is None
    assert (one("ceo@blocky.example").bounce_type, one("ceo@blocky.example").dsn) == ("soft", "5.7.1")
    assert (one("nouser@yahoo.com").bounce_type, one("nouser@yahoo.com").dsn) == ("hard", "5.0.0")

    # deferred three times, one later sent, the message expired: failed for the two left
    assert [x.type for x in by["full@gmail.com"]] == ["deferred", "failed"]
    assert [x.type for x in by["ops@slow.example"]] == ["deferred", "failed"]
    assert [x.type for x in by["v6@v6only.example"]] == ["deferred", "succeeded"]
    assert by["v6@v6only.example"][1].queued_as == "4kMBZq1xG3z5Wtv"
    assert by["v6@v6only.example"][0].remote_host == "mx.v6only.example[2001:db8::25]"
    full_failed = by["full@gmail.com"][1]
    assert full_failed.at == "2026-11-27T12:01:10.500000Z" and full_failed.dsn == "4.2.2"
    assert full_failed.message_id == "<inv-42@billing.example.org>" and full_failed.auth_user == "billing"
    assert by["full@gmail.com"][0].bounce_type is None  # deferrals carry no bounce type

    assert (one("ghost@example.org").type, one("ghost@example.org").bounce_type) == ("bounced", "hard")
    assert one("root@mail.example.org").orig_recipient == "root"
    assert (one("nosuch@mail.example.org").bounce_type) == "hard"
    assert (one("over@virt.example.org").bounce_type, one("over@virt.example.org").dsn) == ("soft", "5.2.2")
    assert one("ticket@helpdesk.example.org").type == "succeeded"
    assert one("tmpfail@helpdesk.example.org").type == "deferred"
    assert (one("x@nxdomain.example").bounce_type, one("x@nxdomain.example").remote_host) == ("hard", None)
    assert one("soft@example.net").type == "deferred"  # status=SOFTBOUNCE
    assert one("slowpoke@example.net").remote_host == "mx.example.net[198.51.100.30]"
    assert one("busy@busy.example").reply == "421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp"
    assert one("in@internal.example.org").queued_as == "3F2A1B0C9D"
    assert one("sink@devnull.example.org").type == "succeeded"
    assert one("e@err.example.org").orig_recipient == "alias@example.org"
    assert "probe@example.com" not in by  # status=deliverable: address verification probe
    e = one("nope@example.com")
    assert e.type == "failed" and e.at == "2026-11-22T12:02:06.250000Z"
    # null-sender notifications and the NOQUEUE rejects make no events
    assert "app@example.org" not in by and "billing@example.org" not in by
    assert "victim@elsewhere.example" not in by
    assert c.counts["reject"] == 5
    assert c.counts["null_sender"] == 2


def test_garbage_lines_never_raise():
    c = Correlator()
    kinds = []
    for i, line in enumerate(lines("garbage.log")):
        p = parse_line(line, now=NOW)
        kinds.append(p.kind if p else None)
        if p is not None:
            c.feed(p, str(i))
    assert kinds.count(None) >= 10
    assert "malformed" in kinds


# ---------------------------------------------------------------------------------------------
# Correlator

DELIVERY = ("Nov 22 12:00:02 mail postfix/smtp[1]: {qid}: to=<{rcpt}>, relay=mx.x[192.0.2.1]:25, "
            "delay=1, delays=0.1/0/0.4/0.5, dsn={dsn}, status={status}")


def feed_all(c, raw_lines, key_prefix="k"):
    out = []
    for i, line in enumerate(raw_lines):
        p = parse_line(line, now=NOW)
        out.extend(c.feed(p, f"{key_prefix}:{i}"))
    return out


def test_ids_are_deterministic_per_position_and_line():
    raw = [
        "Nov 22 12:00:01 mail postfix/cleanup[1]: 4A1B2C3D4E: message-id=<m@x>",
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x.example", dsn="2.0.0", status="sent (250 ok)"),
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="b@x.example", dsn="2.0.0", status="sent (250 ok)"),
    ]
    a = feed_all(Correlator(), raw)
    b = feed_all(Correlator(), raw)
    assert [e.id for e in a] == [e.id for e in b]
    assert len({e.id for e in a}) == 2
    c = feed_all(Correlator(), raw, key_prefix="other-inode")
    assert not {e.id for e in a} & {e.id for e in c}
    # ids sort by the line's time (the end of its whole-second stamp)
    assert a[0].id[:16] == f"{(events.us_from_iso('2026-11-22T12:00:02Z') + 999_999) * 1000:016x}"


def test_removed_forgets_and_state_is_bounded():
    c = Correlator(max_messages=3)
    for i in range(5):
        feed_all(c, [f"Nov 22 12:00:01 mail postfix/cleanup[1]: 4A1B2C3D{i:02d}: message-id=<m{i}@x>"])
    assert len(c) == 3 and not c.known("4A1B2C3D00") and c.known("4A1B2C3D04")
    assert c.counts["evicted"] == 2
    feed_all(c, ["Nov 22 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D04: removed"])
    assert not c.known("4A1B2C3D04")
    (e,) = feed_all(c, [DELIVERY.format(qid="4A1B2C3D00", rcpt="a@x", dsn="2.0.0", status="sent (ok)")])
    assert e.message_id is None and e.queue_id == "4A1B2C3D00"  # evicted: still an event


def test_expired_without_state_emits_one_failed_without_recipient():
    (e,) = feed_all(Correlator(), [
        "Nov 22 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: from=<app@x.example>, status=expired, returned to sender"])
    assert (e.type, e.recipient, e.queue_id, e.sender, e.reason) == ("failed", None, "4A1B2C3D4E", "app@x.example", "expired")


def test_null_sender_filter_can_be_turned_off():
    raw = [
        "Nov 22 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: from=<>, size=1, nrcpt=1 (queue active)",
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="2.0.0", status="sent (ok)"),
    ]
    assert feed_all(Correlator(), raw) == []
    (e,) = feed_all(Correlator(ignore_null_sender=False), raw)
    assert e.sender == ""


def test_bounced_after_deferred_is_not_failed_again_at_expiry():
    raw = [
        "Nov 22 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: from=<app@x>, size=1, nrcpt=2 (queue active)",
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="4.4.1", status="deferred (connect to mx.x[192.0.2.1]:25: Connection refused)"),
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="b@x", dsn="4.4.1", status="deferred (connect to mx.x[192.0.2.1]:25: Connection refused)"),
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="5.1.1", status="bounced (host mx.x[192.0.2.1] said: 550 5.1.1 unknown user (in reply to RCPT TO command))"),
        "Nov 27 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: from=<app@x>, status=expired, returned to sender",
    ]
    evs = feed_all(Correlator(), raw)
    assert [(e.type, e.recipient) for e in evs] == [
        ("deferred", "a@x"), ("deferred", "b@x"), ("bounced", "a@x"), ("failed", "b@x")]
    assert evs[2].bounce_type == "hard" and evs[2].reply == "550 5.1.1 unknown user"


def test_generic_refusal_of_rcpt_to_is_a_hard_bounce_after_data_soft():
    # what `smtp-sink -f RCPT` answers: the command the reply answered decides (bounces.classify)
    raw = [
        "Nov 22 12:00:01 mail postfix/qmgr[1]: 4A1B2C3D4E: from=<app@x>, size=1, nrcpt=2 (queue active)",
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="5.3.0", status="bounced (host mx.x[192.0.2.1] said: 500 5.3.0 Error: command failed (in reply to RCPT TO command))"),
        DELIVERY.format(qid="4A1B2C3D4E", rcpt="b@x", dsn="5.3.0", status="bounced (host mx.x[192.0.2.1] said: 554 5.3.0 Error: command failed (in reply to end of DATA command))"),
    ]
    a, b = feed_all(Correlator(), raw)
    assert (a.bounce_type, a.dsn, a.reply) == ("hard", "5.3.0", "500 5.3.0 Error: command failed")
    assert (b.bounce_type, b.dsn) == ("soft", "5.3.0")
    assert a.diagnostic.endswith("(in reply to RCPT TO command)")


def test_log_event_ids_sort_after_everything_in_the_second_of_their_stamp():
    # maillog_file and traditional syslog stamp whole seconds: the delivery of a message queued
    # at 12:00:02.7 is stamped 12:00:02. Its id must not sort before the milter's `queued` id
    # (the spooler ingests in id order), so it takes the end of the second; `at` stays as logged.
    line = DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="2.0.0", status="sent (250 ok)")
    (e,) = feed_all(Correlator(), [line])
    second_us = events.us_from_iso(e.at)
    assert e.at.endswith(":02.000000Z")
    queued_id = events.event_id(second_us + 700_000, "milter")  # a spool.new_id() of 12:00:02.7
    assert e.id > queued_id
    assert int(e.id[:16], 16) == (second_us + 999_999) * 1000
    assert e.id < events.event_id(second_us + 1_000_000, "next second")
    # a stamp with microseconds is exact; with milliseconds, the end of the millisecond
    iso = line.replace("Nov 22 12:00:02", "2026-11-22T12:00:02.250000+00:00")
    (e,) = feed_all(Correlator(), [iso])
    assert int(e.id[:16], 16) == events.us_from_iso("2026-11-22T12:00:02.25Z") * 1000
    (e,) = feed_all(Correlator(), [iso.replace(".250000+", ".250+")])
    assert int(e.id[:16], 16) == (events.us_from_iso("2026-11-22T12:00:02.25Z") + 999) * 1000
    assert e.at == "2026-11-22T12:00:02.250000Z"


def test_every_event_round_trips():
    evs, _ = run("internet.log")
    assert evs
    for e in evs:
        assert events.Event.from_dict(e.to_dict()) == e
        assert e.at.endswith("Z") and len(e.id) == 28


# ---------------------------------------------------------------------------------------------
# Fuzz: never an exception

PREFIXES = [
    "Nov 22 12:00:01 mail postfix/smtp[1]: ",
    "Nov 22 12:00:01 mail postfix/smtp[1]: 4A1B2C3D4E: ",
    "Nov 22 12:00:01 mail postfix/smtp[1]: 4A1B2C3D4E: to=<",
    "Nov 22 12:00:01 mail postfix/qmgr[1]: 4jXTcH35BWzJBc3: from=<",
    "2026-11-22T12:00:01.1+00:00 mail postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[1.2.3.4]: ",
    "Nov 22 12:00:01 mail postfix/smtp[1]: 4A1B2C3D4E: to=<a@b>, relay=x[1.2.3.4]:25, delay=1, "
    "delays=0/0/0/1, dsn=5.1.1, status=bounced (",
    "",
]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(PREFIXES), st.text(max_size=300))
def test_parse_line_never_raises(prefix, tail):
    c = Correlator()
    p = parse_line(prefix + tail, now=NOW)
    if p is not None:
        for e in c.feed(p, "fuzz"):
            assert e.type in events.TYPES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_line_never_raises_on_decoded_bytes(data):
    line = data.decode("utf-8", "surrogateescape")
    p = parse_line(line)
    if p is not None:
        Correlator().feed(p, "fuzz")


def test_log_events_name_the_host_that_logged_them():
    """hostName (seed 000: the server that recorded the log) is the line's host field, not the
    remote server (remote_host) nor the client."""
    line = DELIVERY.format(qid="4A1B2C3D4E", rcpt="a@x", dsn="2.0.0", status="sent (250 ok)")
    (e,) = feed_all(Correlator(), [line])
    assert (e.host_name, e.remote_host) == ("mail", "mx.x[192.0.2.1]")
    expired = "Nov 22 12:00:09 mx2 postfix/qmgr[12]: 4A1B2C3D4E: from=<app@x>, status=expired, returned to sender"
    (f,) = feed_all(Correlator(), [expired])
    assert (f.type, f.host_name) == ("failed", "mx2")
    # Postfix and syslog write the short form of this host's name: events name it as the
    # milter does, by myhostname; a line another host logged keeps its own name
    here = Correlator(myhostname="mail.ours.example")
    assert [e.host_name for e in feed_all(here, [line, expired])] == ["mail.ours.example", "mx2"]
    fqdn = line.replace(" mail postfix/", " mail.ours.example postfix/")
    assert feed_all(here, [fqdn])[0].host_name == "mail.ours.example"
