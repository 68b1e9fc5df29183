"""The sendgrid dialect (payloads/dialects/sendgrid.py): Event Webhook arrays and Inbound Parse
forms, read back the way SendGrid documents them (json.loads; multipart/form-data with the
stdlib parser) and with SendGrid's own inbound parser (sendgrid.helpers.inbound.parse).

Golden bodies are in golden/dialects/sendgrid/; a deliberate change re-records them:

    MXHOOK_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_dialect_sendgrid.py
"""
from __future__ import annotations

import json
import os
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxhook.model.rules import Rule
from mxhook.model.targets import Destination
from mxhook.payloads import inbound
from mxhook.payloads.dialects import EventContext, InboundContext, sendgrid
from mxhook.payloads.events import sample_event
from tests.unit.seed_dialect_cases import EVENTS as SEED_EVENTS
from tests.unit.test_payload_golden import EVENTS
from tests.unit.test_payloads import FIXTURES, META, PDF

GOLDEN = Path(__file__).parent / "golden" / "dialects" / "sendgrid"
RULE = Rule(name="reports", destination=Destination("https://hooks.example/in"), id=7)
CTX = EventContext(request_id="evb_golden", now=1767225600.0, nonce="nonce-1", endpoint_id=3)
AT = "2026-01-15T12:00:00.250000Z"
SMTPAPI = json.dumps({"category": ["welcome", "x"], "unique_args": {"user": "1123", "event": "no", "n": 5}})

KINDS = [
    {**sample_event("queued", at=AT), "id": "e-queued", "custom_headers": {"x-smtpapi": SMTPAPI}},
    {**sample_event("succeeded", at=AT), "id": "e-succeeded", "reply": "250 2.0.0 Ok: queued as 4AbC"},
    {**sample_event("deferred", at=AT), "id": "e-deferred", "dsn": "4.4.1",
     "diagnostic": "connect to mx.example.com[192.0.2.9]:25: Connection timed out"},
    {**sample_event("bounced", at=AT), "id": "e-hard"},
    {**sample_event("bounced", at=AT), "id": "e-soft", "bounce_type": "soft", "dsn": "5.7.1",
     "reply": "554 5.7.1 blocked using zen.spamhaus.org"},
    {**sample_event("failed", at=AT), "id": "e-failed", "dsn": "4.4.7", "reason": "expired",
     "queue_id": None},
    {**sample_event("blocked", at=AT), "id": "e-blocked",
     "reason": "address is on the block list after a hard bounce"},
    {**sample_event("registered", at=AT), "id": "e-registered", "reason": "hard bounce"},
]


# Engagement events (opens, clicks, unsubscribes, complaints; resubscribed is not sent)
ENGAGEMENT_CASES = ("opened", "opened_machine", "opened_several_recipients", "clicked", "clicked_scanner",
                    "unsubscribed", "unsubscribed_mailto", "resubscribed", "complained", "opened_privacy",
                    "clicked_hostile", "engagement_wrong_types", "engagement_not_an_object")
ENGAGEMENT = [SEED_EVENTS[case] for case in ENGAGEMENT_CASES]
# SendGrid's fields by event ("Event Webhook Reference"), beyond those of every event
SENDGRID_ENGAGEMENT_FIELDS = {
    "open": {"useragent": str, "ip": str, "sg_machine_open": bool},
    "click": {"useragent": str, "ip": str, "url": str},
    "unsubscribe": {},
    "spamreport": {},
}


def delivery(raw: bytes, recipients=("in@ours.example",), meta=META) -> inbound.Delivery:
    return inbound.Delivery.of(delivery_id="0187a2b3c4d5e6f7a1b2c3d4e5f6-reports", meta=meta, raw=raw,
                               target=RULE.target, recipients=list(recipients))


def mime(name="mixed_alternative_attachment.eml") -> bytes:
    return (FIXTURES / name).read_bytes()


def form(rendered) -> dict:
    """A SendGrid receiver's view: field name -> text, or (filename, content type, bytes)."""
    assert rendered.content_type.startswith("multipart/form-data; boundary=")
    msg = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + rendered.content_type.encode() + b"\r\n\r\n" + rendered.body)
    assert not msg.defects
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert name not in out, f"field {name} twice"
        data = part.get_payload(decode=True)
        if part.get_filename() is None:
            out[name] = data.decode("utf-8")
        else:
            out[name] = (part.get_filename(), part.get_content_type(), data)
    return out


# ---------------------------------------------------------------------------------------------
# Golden bodies

def golden_cases():
    yield "events/kinds", lambda: sendgrid.event_request(KINDS, CTX)
    yield "events/golden_events", lambda: sendgrid.event_request(EVENTS, CTX)
    yield "events/empty", lambda: sendgrid.event_request([], CTX)
    yield "events/engagement", lambda: sendgrid.event_request(ENGAGEMENT, CTX)
    ictx = InboundContext(now=1767225600.0, nonce="nonce-1")
    for name in ("mixed_alternative_attachment", "related_inline_image", "latin1_8bit", "rfc2231_filenames"):
        yield f"inbound/{name}", lambda name=name: sendgrid.inbound_request(delivery(mime(f"{name}.eml")), ictx)
        yield f"inbound-raw/{name}", lambda name=name: sendgrid.raw_inbound_request(
            delivery(mime(f"{name}.eml")), ictx)
    yield "inbound/payload_cap", lambda: sendgrid.inbound_request(
        delivery(big_and_small()), InboundContext(now=0, nonce="n", max_payload_size=10_000))


CASES = dict(golden_cases())


def golden_text(rendered) -> bytes:
    return b"Content-Type: " + rendered.content_type.encode() + b"\n\n" + rendered.body


def recorded(golden: Path, cases: dict) -> list[str]:
    """The case names with a golden body under `golden`; MXHOOK_GOLDEN_WRITE=1 records each case
    first."""
    if os.environ.get("MXHOOK_GOLDEN_WRITE"):
        for name, render in cases.items():
            path = golden / f"{name}.http"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(golden_text(render()))
    return sorted(str(p.relative_to(golden))[:-len(".http")] for p in golden.rglob("*.http"))


def test_golden_files_cover_every_case():
    assert recorded(GOLDEN, CASES) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_body_is_the_golden_one(name):
    assert golden_text(CASES[name]()) == (GOLDEN / f"{name}.http").read_bytes()


# ---------------------------------------------------------------------------------------------
# Event Webhook

def test_events_as_sendgrid_documents_them():
    body = json.loads(sendgrid.event_request(KINDS, CTX).body)
    assert isinstance(body, list)
    by_id = {e["sg_event_id"]: e for e in body}
    assert "e-registered" not in by_id  # no SendGrid event for a block list change
    assert [e["event"] for e in body] == ["processed", "delivered", "deferred", "bounce", "bounce",
                                          "bounce", "dropped"]
    for e in body:
        assert isinstance(e["timestamp"], int) and e["timestamp"] == 1768478400
        assert e["email"] == "nobody@example.com"
        assert e["smtp-id"] == "<test@mxhook.invalid>"
    assert by_id["e-queued"]["category"] == ["welcome", "x"]
    assert by_id["e-queued"]["user"] == "1123" and by_id["e-queued"]["n"] == "5"
    assert by_id["e-queued"]["event"] == "processed"  # a unique argument never wins over SendGrid's key
    assert by_id["e-succeeded"]["response"] == "250 2.0.0 Ok: queued as 4AbC"
    assert by_id["e-deferred"]["response"].startswith("connect to mx.example.com")
    assert "attempt" not in by_id["e-deferred"]  # not counted by mxhook: absent, never a guess
    hard, soft, failed = by_id["e-hard"], by_id["e-soft"], by_id["e-failed"]
    assert (hard["type"], hard["status"], hard["bounce_classification"]) == ("bounce", "5.1.1", "Invalid Address")
    assert hard["reason"].startswith("550 5.1.1")
    assert (soft["type"], soft["status"]) == ("blocked", "5.7.1")
    assert (failed["type"], failed["status"], failed["bounce_classification"]) == ("blocked", "4.4.7", "Technical")
    assert "sg_message_id" not in failed and hard["sg_message_id"] == "4XbTest0001"
    assert by_id["e-blocked"]["reason"] == "Bounced Address" and by_id["e-blocked"]["status"] == "5.0.0"


def receive_events(rendered) -> list[dict]:
    """A SendGrid Event Webhook receiver: a JSON array; each event's common fields and, for
    engagement events, SendGrid's fields of that event with their types."""
    assert rendered.content_type == "application/json"
    body = json.loads(rendered.body.decode("utf-8"))
    assert isinstance(body, list)
    for e in body:
        assert isinstance(e["email"], str) and isinstance(e["timestamp"], int)
        assert isinstance(e["sg_event_id"], str) and isinstance(e["event"], str)
        for field, kind in SENDGRID_ENGAGEMENT_FIELDS.get(e["event"], {}).items():
            assert type(e[field]) is kind, (e["event"], field)
        if "url_offset" in e:
            assert e["event"] == "click" and type(e["url_offset"]["index"]) is int
            assert e["url_offset"]["type"] in ("html", "text")
    return body


def test_engagement_events_as_sendgrid_documents_them():
    body = receive_events(sendgrid.event_request(ENGAGEMENT, CTX))
    assert [e["event"] for e in body] == ["open", "open", "open", "click", "click", "unsubscribe", "unsubscribe",
                                          "spamreport", "open", "click", "click", "open"]  # no resubscribed
    by_id = {e["sg_event_id"]: e for e in body}
    human, apple, click = (by_id[SEED_EVENTS[c]["id"]] for c in ("opened", "opened_machine", "clicked"))
    assert (human["ip"], human["sg_machine_open"], human["sg_message_id"]) == ("203.0.113.9", False, "4XbQ1k2Lmz")
    assert human["useragent"].startswith("Mozilla/5.0 (iPhone;")
    assert apple["sg_machine_open"] is True  # Apple Mail Privacy Protection, as SendGrid flags it
    scanner = by_id[SEED_EVENTS["clicked_scanner"]["id"]]
    assert "sg_machine_open" not in scanner  # SendGrid flags opens only
    assert (click["url"], click["url_offset"]) == ("https://shop.ours.example/orders/1187?utm_source=mail&x=1",
                                                   {"index": 2, "type": "html"})
    assert by_id[SEED_EVENTS["opened_several_recipients"]["id"]]["email"] == ""
    spam = by_id[SEED_EVENTS["complained"]["id"]]
    assert set(spam) == {"email", "timestamp", "event", "smtp-id", "sg_event_id", "sg_message_id"}
    private = by_id[SEED_EVENTS["opened_privacy"]["id"]]
    assert private["ip"] == private["useragent"] == ""
    hostile = by_id["x8"]
    assert hostile["url"] == SEED_EVENTS["clicked_hostile"]["engagement"]["url"].replace("\ud800", "\ufffd")
    wrong = by_id["x9"]
    assert wrong["url"] == wrong["ip"] == "" and "url_offset" not in wrong


def test_resubscribed_is_not_sent():
    """SendGrid's group_resubscribe is about an unsubscribe group (asm_group_id); mxhook has none."""
    assert "resubscribed" not in sendgrid.EVENT_TYPES
    assert receive_events(sendgrid.event_request([SEED_EVENTS["resubscribed"]], CTX)) == []


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["url", "user_agent", "ip", "link", "machine", "machine_reason"]),
                       st.one_of(st.none(), st.text(), st.integers(), st.booleans()), max_size=6),
       st.sampled_from(["opened", "clicked"]))
def test_hostile_engagement_never_breaks_the_array(engagement, etype):
    (e,) = receive_events(sendgrid.event_request([{**SEED_EVENTS[etype], "engagement": engagement}], CTX))
    for key, field in (("user_agent", "useragent"), ("ip", "ip")):
        value = engagement.get(key)
        assert e[field] == (value if type(value) is str else "")
    if etype == "opened":
        reason = engagement.get("machine_reason")
        reason = reason.lower() if type(reason) is str else ""
        assert e["sg_machine_open"] is (engagement.get("machine") is True and any(
            w in reason for w in ("apple", "icloud", "mpp", "private relay")))


def test_events_batch_as_the_endpoint_batches():
    assert sendgrid.EVENTS_PER_REQUEST is None
    batch = [{**KINDS[1], "id": f"e{i}"} for i in range(500)]
    assert [e["sg_event_id"] for e in json.loads(sendgrid.event_request(batch, CTX).body)] == \
        [f"e{i}" for i in range(500)]


def test_event_body_is_the_same_on_every_retry():
    retry = EventContext(request_id=CTX.request_id, now=CTX.now + 3600, nonce="other", endpoint_id=3)
    assert sendgrid.event_request(KINDS, CTX) == sendgrid.event_request(KINDS, retry)


def test_a_broken_time_or_smtpapi_never_breaks_the_body():
    event = {**KINDS[0], "at": "not a time", "custom_headers": {"x-smtpapi": "{not json"}}
    (out,) = json.loads(sendgrid.event_request([event], CTX).body)
    assert out["timestamp"] == int(CTX.now) and "category" not in out


@settings(max_examples=60, deadline=None)
@given(st.text(), st.text(), st.text())
def test_hostile_event_text_round_trips(subject, reply, smtpapi):
    event = {**KINDS[3], "subject": subject, "reply": reply, "message_id": subject,
             "custom_headers": {"x-smtpapi": smtpapi}}
    (out,) = json.loads(sendgrid.event_request([event], CTX).body.decode("utf-8"))
    assert out["reason"] == reply and out["smtp-id"] == subject


# ---------------------------------------------------------------------------------------------
# Inbound Parse

ICTX = InboundContext(now=1767225600.0, nonce="nonce-1")


def test_parsed_fields_as_sendgrid_documents_them():
    got = form(sendgrid.inbound_request(delivery(mime("related_inline_image.eml"),
                                                 ["in@ours.example", "x+tag@ours.example"]), ICTX))
    text_fields = ["headers", "dkim", "to", "from", "cc", "subject", "sender_ip", "envelope", "charsets",
                   "SPF", "text", "html", "attachments"]
    assert all(isinstance(got[k], str) for k in text_fields)
    assert json.loads(got["envelope"]) == {"to": ["in@ours.example", "x+tag@ours.example"],
                                           "from": "reports@example.com"}
    assert set(json.loads(got["charsets"]).values()) == {"UTF-8"}
    assert got["sender_ip"] == "192.0.2.1"
    assert got["dkim"] == "" and got["SPF"] == ""  # not verified yet: empty, never a verdict
    assert got["headers"].startswith("From: ") and got["headers"].endswith("\n")
    info = json.loads(got["attachment-info"])
    assert int(got["attachments"]) == len(info) >= 1
    for key, entry in info.items():
        filename, ctype, data = got[key]
        assert (entry["filename"], entry["type"]) == (filename, ctype) and data
    cids = json.loads(got["content-ids"])
    assert all(info[v]["content-id"] == k for k, v in cids.items())


def test_the_official_sendgrid_parser_reads_it():
    werkzeug_test = pytest.importorskip("werkzeug.test")
    from werkzeug.wrappers import Request
    parse = pytest.importorskip("sendgrid.helpers.inbound.parse")
    config = SimpleNamespace(keys=["from", "attachments", "headers", "text", "envelope", "to", "html",
                                   "sender_ip", "attachment-info", "subject", "dkim", "SPF", "charsets",
                                   "content-ids", "email"])

    def request(rendered):
        env = werkzeug_test.EnvironBuilder(method="POST", data=rendered.body,
                                           content_type=rendered.content_type).get_environ()
        return parse.Parse(config, Request(env))

    parsed = request(sendgrid.inbound_request(delivery(mime()), ICTX))
    values = parsed.key_values()
    assert values["subject"] == "Monthly report" and values["text"] == "Report attached."
    (att,) = parsed.attachments()
    assert (att["file_name"], att["type"]) == ("report.pdf", "application/pdf")
    raw = request(sendgrid.raw_inbound_request(delivery(mime()), ICTX))
    assert raw.get_raw_email()["Subject"] == "Monthly report"
    assert "text" not in raw.key_values() and raw.key_values()["to"] == "in@ours.example"


def test_raw_variant_posts_the_message_as_email():
    raw = mime()
    got = form(sendgrid.raw_inbound_request(delivery(raw), ICTX))
    assert got["email"].encode("utf-8") == raw
    assert set(got) == {"dkim", "email", "to", "from", "subject", "sender_ip", "envelope", "charsets", "SPF"}


def big_and_small() -> bytes:
    """A message with a 30 kB and a 300-byte attachment."""
    from email.message import EmailMessage
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@example.org", "in@ours.example", "two files"
    msg.set_content("see attached")
    msg.add_attachment(bytes(range(256)) * 120, maintype="application", subtype="octet-stream",
                       filename="big.bin")
    msg.add_attachment(PDF[:300], maintype="application", subtype="pdf", filename="small.pdf")
    msg.set_boundary("two-files")  # the same bytes every run (golden)
    return msg.as_bytes()


def test_attachment_over_the_payload_cap_is_omitted_with_a_marker():
    raw = big_and_small()
    full = sendgrid.inbound_request(delivery(raw), ICTX)
    capped = sendgrid.inbound_request(delivery(raw), InboundContext(now=0, nonce="n", max_payload_size=10_000))
    assert len(capped.body) <= 10_000 < len(full.body)
    got = form(capped)
    info = json.loads(got["attachment-info"])
    assert info["attachment1"]["omitted"] is True and info["attachment1"]["omitted_reason"] == "payload size cap"
    assert "attachment1" not in got
    assert got["attachment2"] == ("small.pdf", "application/pdf", PDF[:300])
    assert int(got["attachments"]) == len(info) == 2


def test_attachment_over_max_attachment_size_is_omitted_with_a_marker():
    got = form(sendgrid.inbound_request(delivery(mime()), InboundContext(now=0, nonce="n", max_attachment_size=100)))
    info = json.loads(got["attachment-info"])
    assert info["attachment1"]["omitted"] is True and "max_attachment_size" in info["attachment1"]["omitted_reason"]
    assert "attachment1" not in got


def test_inbound_body_is_the_same_on_every_retry():
    d = delivery(mime())
    for render in (sendgrid.inbound_request, sendgrid.raw_inbound_request):
        assert render(d, ICTX) == render(d, InboundContext(now=ICTX.now + 60, nonce="other"))


HOSTILE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=60, deadline=None)
@given(subject=HOSTILE, body=st.binary(max_size=300), name=HOSTILE)
def test_hostile_mail_never_breaks_the_form(subject, body, name):
    subject = subject.replace("\r", " ").replace("\n", " ")
    raw = (b"From: x@example.org\r\nTo: in@ours.example\r\nSubject: " + subject.encode("utf-8")
           + b"\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; "
           b"charset=iso-8859-1\r\n\r\n" + body + b"\r\n--b\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"" + name.encode("utf-8", "replace")
           .replace(b"\r", b"").replace(b"\n", b"") + b"{{x}}\"\r\n\r\n" + PDF + b"\r\n--b--\r\n")
    got = form(sendgrid.inbound_request(delivery(raw), ICTX))
    assert got["subject"] == inbound.native_document(delivery(raw))["message"]["subject"]
    assert int(got["attachments"]) == len(json.loads(got["attachment-info"]))
    raw_form = form(sendgrid.raw_inbound_request(delivery(raw), ICTX))
    assert raw_form["email"].startswith("From: x@example.org")


def test_a_lone_surrogate_in_a_header_never_breaks_the_raw_form():
    raw = b"From: x@example.org\r\nSubject: =?utf-7?q?+2D0-?=\r\n\r\nbody\r\n"  # one half of a pair
    assert set(form(sendgrid.raw_inbound_request(delivery(raw), ICTX))["subject"]) == {"\ufffd"}


def test_long_subject_and_module_contract():
    raw = b"From: x@example.org\r\nSubject: " + b"long " * 5000 + b"\r\n\r\nbody\r\n"
    assert form(sendgrid.inbound_request(delivery(raw), ICTX))["subject"].startswith("long long")
    assert sendgrid.NAME == "sendgrid" and set(sendgrid.INBOUND_DIALECTS) == {"sendgrid", "sendgrid-raw"}


def test_smtpapi_header_configured_in_any_case():
    """[milter] event_headers = X-SMTPAPI: the event names it so; its category still comes back."""
    event = {**KINDS[0], "custom_headers": {"X-SMTPAPI": '{"category": "c1", "unique_args": {"u": "1"}}'}}
    (out,) = json.loads(sendgrid.event_request([event], CTX).body)
    assert (out["category"], out["u"]) == ("c1", "1")
