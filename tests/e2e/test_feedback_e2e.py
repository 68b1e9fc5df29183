"""Spam complaints and mailto: unsubscribes end to end (issue 19): an application's message
through the private Postfix (outbound, the real mxhook-milter and mxhook-logfollow), then an
ARF report (RFC 5965, the recipient redacted as Microsoft's JMRP sends it) and a mailto:
unsubscribe, both mailed through the same Postfix to `[tracking] feedback_address` /
`unsubscribe_address` in a permitted domain without inbound rules. The real mxhook-spooler
turns them into `complained` / `unsubscribed` events at a real receiver, suppresses the
recipient for the sending domain (`registered`, `mxhook block list` shows source and scope), and
the next message from that domain is refused at RCPT with a `blocked` event, while another
sending domain may still mail the recipient.

The milter of this branch does not add `X-Mxhook-Ref` / List-Unsubscribe yet (another part of
issue 19 does): the test makes the tokens with the install's key, as the milter would.
"""
from __future__ import annotations

import base64
import os

import pytest

from mxhook.model import tracktokens as tt
from tests.e2e.test_events import OK_DOMAIN, event_stack, find, has_all, send_outbound, wait_events, APP, add_endpoint

pytestmark = pytest.mark.e2e

KEY = os.urandom(32)
SENDING_DOMAIN = APP.rpartition("@")[2]
FEEDBACK, UNSUBSCRIBE = "fbl@ours.example", "unsubscribe@ours.example"


def arf_report(reference: str, message_id: str) -> bytes:
    """A JMRP-shaped report: no Original-Rcpt-To, the original's To redacted."""
    return (
        "From: staff@hotmail.example\r\nTo: " + FEEDBACK + "\r\nSubject: complaint about message\r\n"
        "Message-ID: <jmrp-1@hotmail.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="jmrp"\r\n\r\n'
        "--jmrp\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
        "--jmrp\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: Microsoft Junk Mail Reporting Program (JMRP)\r\n"
        f"Version: 1.0\r\nOriginal-Mail-From: <{APP}>\r\nSource-IP: 127.0.0.1\r\n\r\n"
        "--jmrp\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: App <{APP}>\r\nTo: redacted\r\nSubject: Your invoice\r\nMessage-ID: {message_id}\r\n"
        f"X-Mxhook-Ref: {reference}\r\n\r\nHello\r\n\r\n--jmrp--\r\n"
    ).encode()


@pytest.fixture
def stack(make_stack, tmp_path):
    key_file = tmp_path / "tracking.key"
    key_file.write_text(base64.b64encode(KEY).decode() + "\n")
    os.chmod(key_file, 0o644)
    st = event_stack(make_stack, {"tracking": {"feedback_address": FEEDBACK,
                                               "unsubscribe_address": UNSUBSCRIBE,
                                               "key_file": str(key_file)}})
    add_endpoint(st, "/events", "--events", "all")
    return st


def refused_next_time(st, rcpt: str, why: str, app_id: str) -> None:
    res, _ = send_outbound(st, [rcpt], trusted=True, app_id=app_id)
    assert res.rcpt[rcpt].code == 550, res
    assert why in res.rcpt[rcpt].message, res.rcpt[rcpt].message
    evs = wait_events(st, lambda evs: [e for e in find(evs, "blocked", rcpt) if why in (e["reason"] or "")])
    assert find(evs, "blocked", rcpt)[-1]["source"] == "milter"


def test_redacted_complaint_suppresses_the_recipient_for_the_sending_domain(stack):
    st = stack
    carol = f"carol@{OK_DOMAIN}"
    res, message_id = send_outbound(st, [carol], trusted=True)
    assert res.accepted, res
    wait_events(st, has_all([("queued", carol), ("succeeded", carol)]))
    ref = tt.make_token((KEY,), tt.Track(tt.REFERENCE, res.queue_id, carol, SENDING_DOMAIN, 1764800000))
    # a forged report first (a token of another key): recorded, nobody suppressed
    forged = tt.make_token((os.urandom(32),), tt.Track(tt.REFERENCE, "X", f"victim@{OK_DOMAIN}",
                                                       SENDING_DOMAIN, 1))
    assert st.send("staff@hotmail.example", [FEEDBACK], arf_report(forged, "<never@app.example>")).accepted
    report = st.send("staff@hotmail.example", [FEEDBACK], arf_report(ref, message_id))
    assert report.accepted, report  # a permitted domain without rules: taken all the same

    evs = wait_events(st, has_all([("complained", carol), ("registered", carol)]))
    (complained,) = find(evs, "complained", carol)
    assert complained["source"] == "feedback" and complained["queue_id"] == res.queue_id
    assert complained["message_id"] == message_id and complained["sender"] == APP
    assert not [e for e in evs if e["recipient"] == f"victim@{OK_DOMAIN}"]
    listed = [(r["address"], r["scope"], r["source"]) for r in st.cli.json("block", "list", "--json")]
    assert listed == [(carol, SENDING_DOMAIN, "complaint")], listed

    refused_next_time(st, carol, "spam", "order-2")
    # another sending domain may still mail her
    other = st.send("news@other.example", [carol], b"From: news@other.example\r\nSubject: hi\r\n\r\nhi\r\n",
                    source_address="127.0.0.2")
    assert other.rcpt[carol].code == 250, other


def test_mailto_unsubscribe_suppresses_until_removed(stack):
    st = stack
    dan = f"dan@{OK_DOMAIN}"
    token = tt.make_token((KEY,), tt.Track(tt.UNSUBSCRIBE, "Q1", dan, SENDING_DOMAIN, 1764800000))
    mail = (f"From: dan.alias@elsewhere.example\r\nTo: {UNSUBSCRIBE}\r\n"
            f"Subject: unsubscribe {token}\r\n\r\n\r\n").encode()
    assert st.send("dan.alias@elsewhere.example", [UNSUBSCRIBE], mail).accepted
    evs = wait_events(st, has_all([("unsubscribed", dan), ("registered", dan)]))
    assert find(evs, "unsubscribed", dan)[0]["source"] == "feedback"
    refused_next_time(st, dan, "unsubscribed", "order-3")
    st.cli("block", "remove", dan, "--scope", SENDING_DOMAIN)
    assert st.cli.json("block", "list", "--json") == []
    res, _ = send_outbound(st, [dan], trusted=True, app_id="order-4")
    assert res.accepted, res
