"""ARF complaint reports and mailto: unsubscribe requests (model/arf.py): real-shaped reports,
redacted or not, and the rule that an unsigned claim never names whom to suppress by itself."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mxhook.model import arf
from mxhook.model import tracktokens as tt

FIXTURES = Path(__file__).parent / "fixtures" / "arf"
KEY, OTHER = os.urandom(32), os.urandom(32)
REF = tt.Track(tt.REFERENCE, "4XbQ1Z", "carol@outlook.example", "shop.example", 1764800000)


def fixture(name: str, ref: str = "") -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"@@REF@@", ref.encode())


def test_redacted_jmrp_report_names_the_recipient_through_the_reference_token():
    report = arf.parse(fixture("jmrp-redacted.eml", tt.make_token((KEY,), REF)))
    assert report.feedback_type == "abuse"
    assert report.user_agent == "Microsoft Junk Mail Reporting Program (JMRP)"
    assert report.original_rcpt_to == [] and report.to == ""
    assert report.original_mail_from == "news@shop.example"
    assert report.source_ip == "192.0.2.10" and report.reported_domain == ["shop.example"]
    assert report.message_id == "<sale-42@shop.example>"
    claim = arf.complaint(report, (OTHER, KEY))  # any listed key verifies
    assert claim == arf.Claim("carol@outlook.example", "shop.example", "4XbQ1Z", True,
                              "<sale-42@shop.example>", claim.why)


def test_redacted_report_without_a_valid_token_names_nobody():
    report = arf.parse(fixture("jmrp-redacted.eml", tt.make_token((OTHER,), REF)))
    claim = arf.complaint(report, (KEY,))
    assert not claim.verified and claim.recipient == ""
    assert "not a valid reference token" in claim.why


def test_forged_token_with_a_claimed_recipient_stays_a_claim():
    forged = tt.make_token((OTHER,), tt.Track(tt.REFERENCE, "Q1", "victim@example.org", "shop.example", 1))
    report = arf.parse(fixture("yahoo-unredacted.eml").replace(
        b"Date: Fri, 4 Dec 2026 06:09:58", b"X-Mxhook-Ref: " + forged.encode() + b"\nDate: Fri, 4 Dec 2026 06:09:58"))
    assert report.reference == forged
    claim = arf.complaint(report, (KEY,))
    assert not claim.verified  # the spooler checks bob@ against the mail we sent
    assert claim.recipient == "bob@yahoo.example" and claim.sending_domain == "shop.example"


def test_unredacted_yahoo_report_with_headers_only():
    report = arf.parse(fixture("yahoo-unredacted.eml"))
    assert report.user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert report.original_rcpt_to == ["bob@yahoo.example"]
    assert report.arrival_date == "Fri, 4 Dec 2026 06:10:00 +0000"
    assert report.message_id == "<sale-43@shop.example>" and report.reference is None
    claim = arf.complaint(report, (KEY,))
    assert claim == arf.Claim("bob@yahoo.example", "shop.example", None, False,
                              "<sale-43@shop.example>", claim.why)


def test_token_of_a_message_with_several_recipients_takes_the_claimed_one():
    several = tt.make_token((KEY,), tt.Track(tt.REFERENCE, "Q7", "", "shop.example", 1))
    raw = fixture("jmrp-redacted.eml", several).replace(
        b"Source-IP: 192.0.2.10\n", b"Source-IP: 192.0.2.10\nOriginal-Rcpt-To: dan@outlook.example\n")
    claim = arf.complaint(arf.parse(raw), (KEY,))
    assert (claim.recipient, claim.verified, claim.queue_id) == ("dan@outlook.example", False, "Q7")


@pytest.mark.parametrize("name, why", [
    ("malformed.eml", "no message/feedback-report part"),
    ("not-arf.eml", "not multipart/report"),
])
def test_mail_that_is_no_report_says_why(name, why):
    with pytest.raises(arf.NotAReport, match=why):
        arf.parse(fixture(name))


def test_other_reports_and_garbage_never_crash():
    dsn = b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x--\n"
    with pytest.raises(arf.NotAReport, match="report-type delivery-status"):
        arf.parse(dsn)
    for raw in (b"", b"\x00\xff" * 100, b"Content-Type: multipart/report; report-type=feedback-report;"
                b" boundary=z\n\n--z\nContent-Type: message/feedback-report\n\nVersion: 1\n--z--\n"):
        with pytest.raises(arf.NotAReport):
            arf.parse(raw)


def test_unknown_feedback_type_is_other():
    raw = fixture("yahoo-unredacted.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: Opt-Out")
    assert arf.parse(raw).feedback_type == "other"


def _mail(subject: str) -> bytes:
    return f"From: someone@else.example\nTo: unsubscribe@mail.example.com\nSubject: {subject}\n\nbye\n".encode()


def test_mailto_unsubscribe_needs_a_valid_unsubscribe_token():
    track = tt.Track(tt.UNSUBSCRIBE, "Q9", "erin@example.net", "shop.example", 1)
    token = tt.make_token((KEY,), track)
    claim = arf.unsubscribe_request(_mail(f"Re: unsubscribe {token}"), (KEY,))
    assert (claim.recipient, claim.sending_domain, claim.queue_id, claim.verified) == \
        ("erin@example.net", "shop.example", "Q9", True)
    with pytest.raises(arf.NotAReport, match="invalid token"):
        arf.unsubscribe_request(_mail(f"unsubscribe {tt.make_token((OTHER,), track)}"), (KEY,))
    ref = tt.make_token((KEY,), tt.Track(tt.REFERENCE, "Q9", "erin@example.net", "shop.example", 1))
    with pytest.raises(arf.NotAReport, match="invalid token"):  # another kind
        arf.unsubscribe_request(_mail(f"unsubscribe {ref}"), (KEY,))
    with pytest.raises(arf.NotAReport, match="not 'unsubscribe <token>'"):
        arf.unsubscribe_request(_mail("please remove me"), (KEY,))


def test_an_encoded_original_is_read_all_the_same():
    raw = fixture("jmrp-redacted.eml", tt.make_token((KEY,), REF))
    head, _, rest = raw.partition(b"Content-Type: message/rfc822\nContent-Disposition: inline\n\n")
    original, sep, tail = rest.partition(b"\n------=_NextPart_JMRP--")
    encoded = head + b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" \
        + base64.encodebytes(original) + sep + tail
    report = arf.parse(encoded)
    assert report.message_id == "<sale-42@shop.example>"
    assert arf.complaint(report, (KEY,)).recipient == "carol@outlook.example"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["jmrp-redacted.eml", "yahoo-unredacted.eml"]),
       st.integers(min_value=0, max_value=3000))
def test_parse_raises_nothing_but_not_a_report(noise, name, at):
    raw = fixture(name, "x.y")
    for mangled in (noise, raw[:at] + noise + raw[at:], raw[:at]):
        try:
            arf.complaint(arf.parse(mangled), (KEY,))
        except arf.NotAReport:
            pass
