import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxhook.model import bounces
from mxhook.model import events

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "maillog")


def fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as fh:
        return fh.read()


GMAIL_NO_SUCH_USER = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 "
    "double-checking the recipient's email address for typos or 550-5.1.1 unnecessary spaces. "
    "For more information, go to 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser "
    "a640c23a62f3a-a9a3fb8a7f0si1234567a66.513 - gsmtp"
)
GMAIL_OVER_QUOTA = (
    "452-4.2.2 The recipient's inbox is out of storage space. Please direct the 452-4.2.2 "
    "recipient to 452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp x.514 - gsmtp"
)
MICROSOFT_541 = (
    "550 5.4.1 Recipient address rejected: Access denied. For more information see "
    "https://aka.ms/EXOSmtpErrors [AM4PEPF00027A5F.eurprd04.prod.outlook.com]"
)
SPAMHAUS = (
    "554 5.7.1 Service unavailable; Client host [198.51.100.2] blocked using zen.spamhaus.org; "
    "https://www.spamhaus.org/query/ip/198.51.100.2"
)


@pytest.mark.parametrize("dsn, reply, status, expected", [
    # the address does not exist -> hard
    ("5.1.1", GMAIL_NO_SUCH_USER, "bounced", ("hard", "5.1.1")),
    ("5.4.1", MICROSOFT_541, "bounced", ("hard", "5.4.1")),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "failed", ("hard", "5.1.10")),
    ("5.4.4", "Host or domain name not found. Name service error for name=nx.example type=A: Host not found", "bounced", ("hard", "5.4.4")),
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.", "bounced", ("hard", "5.2.1")),
    ("5.0.0", "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]", "bounced", ("hard", "5.0.0")),
    ("5.7.1", "550 5.7.1 <x@example.net>: Recipient address rejected: User unknown", "bounced", ("hard", "5.7.1")),
    (None, "550 No such user here", "bounced", ("hard", "5.0.0")),
    ("5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable", "bounced", ("hard", "5.5.0")),
    # the address is fine, this message was not -> soft
    ("5.2.2", "552 5.2.2 Mailbox full", "bounced", ("soft", "5.2.2")),
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "bounced", ("soft", "5.3.4")),
    ("5.2.3", "552 5.2.3 Message too large", "bounced", ("soft", "5.2.3")),
    ("5.7.1", SPAMHAUS, "bounced", ("soft", "5.7.1")),
    ("5.7.1", "550 5.7.1 Our system has detected that this message is likely unsolicited mail. spam", "bounced", ("soft", "5.7.1")),
    ("5.7.1", "554 5.7.1 <victim@x.example>: Relay access denied", "bounced", ("soft", "5.7.1")),
    ("5.7.26", "550 5.7.26 This mail has been blocked because the sender is unauthenticated (DMARC)", "bounced", ("soft", "5.7.26")),
    ("5.0.0", "550 Message rejected as spam by Content Filtering", "bounced", ("soft", "5.0.0")),
    ("5.1.8", "553 5.1.8 <app@example.org>: Sender address rejected: Domain not found", "bounced", ("soft", "5.1.8")),
    ("5.4.6", "mail for example.org loops back to myself", "bounced", ("soft", "5.4.6")),
    # smtp-sink -f answers this: a remote *system* status, not an invalid address
    ("5.3.0", "500 5.3.0 Error: command failed", "bounced", ("soft", "5.3.0")),
    # temporary failures
    ("4.2.2", GMAIL_OVER_QUOTA, "deferred", ("soft", "4.2.2")),
    ("4.4.1", "connect to mx.x[192.0.2.1]:25: Connection refused", "deferred", ("soft", "4.4.1")),
    ("5.1.1", "550 5.1.1 user unknown", "SOFTBOUNCE", ("soft", "5.1.1")),
    ("4.4.7", None, "delayed", ("soft", "4.4.7")),
    # not failures
    ("2.0.0", "250 2.0.0 Ok: queued as ABC", "sent", (None, "2.0.0")),
    ("4.4.1", None, "expired", (None, "4.4.1")),
    (None, None, "sent", (None, None)),
])
def test_classify(dsn, reply, status, expected):
    assert bounces.classify(dsn, reply, status) == expected


def test_classify_takes_the_code_from_the_reply_when_the_dsn_is_missing_or_generic():
    assert bounces.classify(None, GMAIL_NO_SUCH_USER, "bounced") == ("hard", "5.1.1")
    assert bounces.classify("5.0.0", "550 5.2.2 mailbox full", "bounced") == ("soft", "5.2.2")
    assert bounces.classify("garbage", "550-5.1.1 gone", "bounced") == ("hard", "5.1.1")
    # an IP address is not an enhanced status code
    assert bounces.classify(None, "554 Client host 5.1.1.1 blocked", "bounced") == ("soft", "5.0.0")
    # a class mismatch (4.x.x text under a 5.0.0 code) keeps Postfix's code
    assert bounces.classify("5.0.0", "try 4.2.2 later", "bounced")[1] == "5.0.0"


def test_normalize_and_extract():
    assert bounces.normalize_dsn(" 5.01.001 ") == "5.1.1"
    assert bounces.normalize_dsn("5.1") is None
    assert bounces.normalize_dsn("6.1.1") is None
    assert bounces.normalize_dsn(None) is None
    assert bounces.extract_dsn("550-5.1.1 The email account") == "5.1.1"
    assert bounces.extract_dsn("451 Temporary local problem") == "4.0.0"
    assert bounces.extract_dsn("see RFC 5321 section 4.2.3.") is None or True  # no crash
    assert bounces.extract_dsn("Connection refused") is None
    assert bounces.extract_dsn("") is None


def test_clean_reply_collapses_multiline_prefixes():
    assert bounces.clean_reply(GMAIL_NO_SUCH_USER) == (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "For more information, go to https://support.google.com/mail/?p=NoSuchUser "
        "a640c23a62f3a-a9a3fb8a7f0si1234567a66.513 - gsmtp"
    )
    assert bounces.clean_reply("550-no such 550 user") == "550 no such user"
    assert bounces.clean_reply(MICROSOFT_541) == MICROSOFT_541
    assert bounces.clean_reply("Connection refused") == "Connection refused"
    assert bounces.clean_reply(None) is None


def test_parse_postfix_own_dsn_report():
    """A real report from Postfix 3.7 (tests/support/postfix.py instance): pipe + smtp failures."""
    rcpts = bounces.parse_dsn_report(fixture("dsn_postfix_bounced.eml"))
    assert rcpts == [
        ("p2@pipefail.example", "failed", "5.3.0", "no: 1: Syntax error: Unterminated quoted string", None),
        ("h1@hard.example", "failed", "5.3.0", "500 5.3.0 Error: command failed", "127.0.0.1"),
    ]
    report = bounces.parse_dsn(fixture("dsn_postfix_bounced.eml"))
    assert report.queue_id == "F189C20D70C"
    assert report.reporting_mta == "mx.mxhook.test"
    assert report.sender == "app@sender.example"
    assert report.message_id == "<179535231292.17579.17681069695946513987@sender.example>"
    assert report.subject == "mix"


def test_parse_postfix_expired_report_unfolds_the_diagnostic():
    (r,) = bounces.parse_dsn_report(fixture("dsn_postfix_expired.eml"))
    assert r.recipient == "a@dest.example"
    assert (r.action, r.status) == ("failed", "4.4.1")
    assert r.diagnostic == "connect to 127.0.0.1[127.0.0.1]:9: Connection refused"


def test_parse_remote_report_with_headers_only():
    report = bounces.parse_dsn(fixture("dsn_remote_exchange.eml"))
    assert report.message_id == "<20261122120001.1@example.org>"
    assert report.sender == "app@example.org"
    assert [(r.recipient, r.action, r.status) for r in report.recipients] == [
        ("former.employee@contoso.example", "failed", "5.1.10"),
        ("full.box@contoso.example", "failed", "5.2.2"),
        ("slow@contoso.example", "delayed", "4.4.7"),
    ]
    assert report.recipients[0].diagnostic == (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")
    assert report.recipients[1].remote_mta == "AM0PR04MB5678.eurprd04.prod.outlook.com"


def test_events_from_dsn():
    at = "2026-11-22T12:10:00.000000Z"
    evs = bounces.events_from_dsn(fixture("dsn_remote_exchange.eml"), at=at, key="rec-1")
    assert [(e.type, e.recipient, e.bounce_type, e.dsn) for e in evs] == [
        ("bounced", "former.employee@contoso.example", "hard", "5.1.10"),
        ("bounced", "full.box@contoso.example", "soft", "5.2.2"),
        ("deferred", "slow@contoso.example", None, "4.4.7"),
    ]
    assert all(e.source == "dsn" and e.message_id == "<20261122120001.1@example.org>" for e in evs)
    assert all(e.at == at for e in evs)
    # deterministic ids, distinct per recipient and per DSN message
    again = bounces.events_from_dsn(fixture("dsn_remote_exchange.eml"), at=at, key="rec-1")
    assert [e.id for e in evs] == [e.id for e in again]
    assert len({e.id for e in evs}) == 3
    other = bounces.events_from_dsn(fixture("dsn_remote_exchange.eml"), at=at, key="rec-2")
    assert not {e.id for e in evs} & {e.id for e in other}
    # Postfix gave up after the queue lifetime: Action failed with a 4.x.x status -> failed
    (expired,) = bounces.events_from_dsn(fixture("dsn_postfix_expired.eml"), at=at)
    assert (expired.type, expired.bounce_type, expired.dsn) == ("failed", None, "4.4.1")
    for e in evs + [expired]:
        assert events.Event.from_dict(e.to_dict()) == e


def test_not_a_report():
    assert bounces.parse_dsn(fixture("not_a_dsn.eml")) is None
    assert bounces.parse_dsn_report(fixture("not_a_dsn.eml")) == []
    assert bounces.events_from_dsn(fixture("not_a_dsn.eml")) == []
    assert bounces.parse_dsn_report(b"") == []
    assert bounces.parse_dsn_report(b"\xff\xfe\x00garbage\r\n\r\n--") == []


def test_truncated_report_yields_what_it_can():
    raw = fixture("dsn_postfix_bounced.eml")
    cut = raw[: raw.index(b"Diagnostic-Code: smtp;")]
    rcpts = bounces.parse_dsn_report(cut)
    assert [r.recipient for r in rcpts] == ["p2@pipefail.example", "h1@hard.example"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_dsn_never_raises_on_bytes(data):
    bounces.parse_dsn_report(data)
    bounces.parse_dsn_report(b"Content-Type: multipart/report; report-type=delivery-status; "
                             b"boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n"
                             + data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=300)),
       st.sampled_from(["sent", "deferred", "bounced", "expired", "failed", "delayed", "", "x"]))
def test_classify_never_raises(dsn, reply, status):
    bounce_type, code = bounces.classify(dsn, reply, status)
    assert bounce_type in (None, "hard", "soft")
    assert code is None or bounces.normalize_dsn(code) == code


def test_generic_5xx_in_reply_to_rcpt_is_hard_but_not_after_data():
    at_rcpt = "host sink[127.0.0.1] said: 500 5.3.0 Error: command failed (in reply to RCPT TO command)"
    after_data = "host sink[127.0.0.1] said: 554 5.3.0 Error: command failed (in reply to end of DATA command)"
    assert bounces.classify("5.3.0", at_rcpt, "bounced") == ("hard", "5.3.0")
    assert bounces.classify("5.3.0", after_data, "bounced") == ("soft", "5.3.0")
    assert bounces.classify("5.3.0", at_rcpt.replace("command failed", "mailbox full"), "bounced")[0] == "soft"
