"""The postmark dialect (payloads/dialects/postmark.py): Delivery, Bounce and SubscriptionChange
records and the inbound JSON, read back the way Postmark documents them (json.loads, field names
and types) and with the models of Postmark's official Python SDK (postmark-python).

Golden bodies are in golden/dialects/postmark/; a deliberate change re-records them:

    MXHOOK_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_dialect_postmark.py
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxhook.model.events import TYPES
from mxhook.payloads import inbound
from mxhook.payloads.dialects import EventContext, InboundContext, postmark
from tests.support.esp_receivers import receive_postmark_inbound
from tests.unit.test_dialect_sendgrid import (AT, HOSTILE, KINDS, big_and_small, delivery, golden_text, mime,
                                              recorded)
from tests.unit.seed_dialect_cases import EVENTS as SEED_EVENTS
from tests.unit.test_payload_golden import EVENTS

GOLDEN = Path(__file__).parent / "golden" / "dialects" / "postmark"
CTX = EventContext(request_id="evb_golden", now=1767225600.0, nonce="nonce-1", endpoint_id=3)
ICTX = InboundContext(now=1767225600.0, nonce="nonce-1")
PM_HEADERS = {"x-pm-tag": "welcome", "x-pm-metadata-user": "1123", "x-pm-message-stream": "broadcast"}
MAPPED = [{**e, "source": "log"} if e["type"] == "registered" else e  # by the spooler, for a hard bounce
          for e in KINDS if e["type"] in postmark.EVENT_TYPES] + [
    {**KINDS[1], "id": "e-tagged", "custom_headers": PM_HEADERS},
    {**KINDS[3], "id": "e-dmarc", "bounce_type": "soft", "dsn": "5.7.26",
     "reply": "550 5.7.26 Unauthenticated email is not accepted due to domain's DMARC policy"},
    {**KINDS[2], "id": "e-dns", "dsn": "4.4.3", "diagnostic": "Host or domain name not found"},
    {**KINDS[7], "id": "e-admin-block", "source": "cli", "reason": "spam trap"},
    {**KINDS[7], "id": "e-unblock", "type": "deleted", "source": "cli", "reason": "removed by the admin"},
]
FIELDS = {
    "Delivery": {"RecordType", "ServerID", "MessageStream", "MessageID", "Recipient", "Tag", "DeliveredAt",
                 "Details", "Metadata"},
    "Bounce": {"RecordType", "ServerID", "MessageStream", "ID", "Type", "TypeCode", "Name", "Tag", "MessageID",
               "Description", "Details", "Email", "From", "BouncedAt", "DumpAvailable", "Inactive",
               "CanActivate", "Subject", "Metadata"},
    "SubscriptionChange": {"RecordType", "ServerID", "MessageStream", "MessageID", "ChangedAt", "Recipient",
                           "Origin", "SuppressSending", "SuppressionReason", "Tag", "Metadata"},
    # Postmark's open and click webhooks (their samples carry no ServerID)
    "Open": {"RecordType", "MessageStream", "Metadata", "FirstOpen", "Client", "OS", "Platform", "UserAgent",
             "ReadSeconds", "Geo", "MessageID", "ReceivedAt", "Tag", "Recipient"},
    "Click": {"RecordType", "MessageStream", "Metadata", "ClickLocation", "Client", "OS", "Platform", "UserAgent",
              "OriginalLink", "Geo", "MessageID", "ReceivedAt", "Tag", "Recipient"},
}
FIELDS["SpamComplaint"] = FIELDS["Bounce"]
GEO = {"CountryISOCode", "Country", "RegionISOCode", "Region", "City", "Zip", "Coords", "IP"}
ENGAGEMENT = {name: SEED_EVENTS[name] for name in (
    "opened", "opened_machine", "clicked", "clicked_scanner", "unsubscribed", "unsubscribed_mailto", "resubscribed",
    "complained", "opened_privacy", "clicked_hostile", "engagement_wrong_types", "opened_several_recipients")}


def record(event: dict) -> dict:
    return json.loads(postmark.event_request([event], CTX).body)


def inbound_doc(raw: bytes, recipients=("in@ours.example",), ctx=ICTX) -> dict:
    return receive_postmark_inbound(postmark.inbound_request(delivery(raw, recipients), ctx))


# ---------------------------------------------------------------------------------------------
# Golden bodies

def golden_cases():
    for event in MAPPED:
        yield f"events/{event['id']}", lambda event=event: postmark.event_request([event], CTX)
    for i, event in enumerate(EVENTS):
        if event["type"] in postmark.EVENT_TYPES:
            yield f"events/golden_events_{i}", lambda event=event: postmark.event_request([event], CTX)
    for name, event in ENGAGEMENT.items():
        yield f"events/{name}", lambda event=event: postmark.event_request([event], CTX)
    for name in ("mixed_alternative_attachment", "related_inline_image", "latin1_8bit", "rfc2231_filenames"):
        yield f"inbound/{name}", lambda name=name: postmark.inbound_request(
            delivery(mime(f"{name}.eml"), ["in+ticket-42@ours.example", "other@ours.example"]), ICTX)
    yield "inbound/payload_cap", lambda: postmark.inbound_request(
        delivery(big_and_small()), InboundContext(now=0, nonce="n", max_payload_size=10_000))


CASES = dict(golden_cases())


def test_golden_files_cover_every_case():
    assert recorded(GOLDEN, CASES) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_body_is_the_golden_one(name):
    assert golden_text(CASES[name]()) == (GOLDEN / f"{name}.http").read_bytes()


# ---------------------------------------------------------------------------------------------
# Events

def test_records_as_postmark_documents_them():
    records = {e["id"]: record(e) for e in MAPPED}
    for rec in records.values():
        assert set(rec) == FIELDS[rec["RecordType"]]
        assert isinstance(rec["ServerID"], int) and isinstance(rec["Metadata"], dict)
    delivered = records["e-succeeded"]
    assert (delivered["RecordType"], delivered["Recipient"], delivered["DeliveredAt"]) == \
        ("Delivery", "nobody@example.com", AT)
    assert delivered["MessageID"] == "test@mxhook.invalid" and delivered["Details"].startswith("250 ")
    types = {k: (r.get("Type"), r.get("TypeCode")) for k, r in records.items() if r["RecordType"] == "Bounce"}
    assert types == {"e-hard": ("HardBounce", 1), "e-soft": ("Blocked", 100006), "e-failed": ("SoftBounce", 4096),
                     "e-deferred": ("Transient", 2), "e-dmarc": ("DMARCPolicy", 100009), "e-dns": ("DnsError", 256)}
    hard = records["e-hard"]
    assert hard["Inactive"] is True and records["e-soft"]["Inactive"] is False
    assert isinstance(hard["ID"], int) and 0 <= hard["ID"] < 2 ** 63
    assert hard["Email"] == "nobody@example.com" and hard["From"] == "app@example.org"
    tagged = records["e-tagged"]
    assert (tagged["Tag"], tagged["Metadata"], tagged["MessageStream"]) == ("welcome", {"user": "1123"}, "broadcast")
    by_bounce, by_admin, unblock = records["e-registered"], records["e-admin-block"], records["e-unblock"]
    assert (by_bounce["SuppressSending"], by_bounce["SuppressionReason"], by_bounce["Origin"]) == \
        (True, "HardBounce", "Recipient")
    assert (by_admin["SuppressionReason"], by_admin["Origin"], by_admin["MessageID"]) == \
        ("ManualSuppression", "Customer", None)
    assert (unblock["SuppressSending"], unblock["SuppressionReason"]) == (False, None)


def test_engagement_records_as_postmark_documents_them():
    records = {name: record(e) for name, e in ENGAGEMENT.items()}
    for rec in records.values():
        assert set(rec) == FIELDS[rec["RecordType"]]
        if rec["RecordType"] in ("Open", "Click"):
            assert set(rec["Geo"]) == GEO and all(isinstance(v, str) for v in rec["Geo"].values())
            assert rec["Platform"] in ("WebMail", "Desktop", "Mobile", "Unknown")
            assert set(rec["Client"]) == set(rec["OS"]) == {"Name", "Company", "Family"}
    assert {n: r["RecordType"] for n, r in records.items()} == {
        "opened": "Open", "opened_machine": "Open", "opened_privacy": "Open", "opened_several_recipients": "Open",
        "clicked": "Click", "clicked_scanner": "Click", "clicked_hostile": "Click", "engagement_wrong_types": "Click",
        "unsubscribed": "SubscriptionChange", "unsubscribed_mailto": "SubscriptionChange",
        "resubscribed": "SubscriptionChange", "complained": "SpamComplaint"}
    opened = records["opened"]
    assert (opened["FirstOpen"], opened["ReadSeconds"], opened["Platform"]) == (False, 0, "Mobile")
    assert (opened["Client"]["Name"], opened["OS"]["Name"]) == ("Mobile Safari", "iOS")
    assert (opened["Geo"]["CountryISOCode"], opened["Geo"]["City"], opened["Geo"]["IP"]) == ("FR", "Lyon", "203.0.113.9")
    assert (opened["MessageID"], opened["Recipient"], opened["ReceivedAt"]) == \
        ("order-1187@ours.example", "ok@customer.example", "2026-11-22T15:02:41.250000Z")
    click = records["clicked"]
    assert (click["ClickLocation"], click["OriginalLink"]) == \
        ("HTML", "https://shop.ours.example/orders/1187?utm_source=mail&x=1")
    unsub, resub = records["unsubscribed"], records["resubscribed"]
    assert (unsub["SuppressSending"], unsub["SuppressionReason"], unsub["Origin"]) == \
        (True, "ManualSuppression", "Recipient")
    assert (resub["SuppressSending"], resub["SuppressionReason"], resub["Origin"]) == (False, None, "Recipient")
    assert unsub["MessageID"] == "order-1187@ours.example"
    spam = records["complained"]
    assert (spam["Type"], spam["TypeCode"], spam["Inactive"], spam["CanActivate"]) == ("SpamComplaint", 512, True, False)
    assert (spam["Email"], spam["Subject"]) == ("ok@customer.example", "Your order has shipped")
    assert records["opened_several_recipients"]["Recipient"] == ""
    assert records["opened_privacy"]["UserAgent"] == records["opened_privacy"]["Geo"]["IP"] == ""
    assert records["clicked_hostile"]["OriginalLink"] == \
        SEED_EVENTS["clicked_hostile"]["engagement"]["url"].replace("\ud800", "\ufffd")


def test_the_official_postmark_models_read_opens_clicks_and_complaints():
    outbound = pytest.importorskip("postmark.models.outbound.schemas")
    enums = pytest.importorskip("postmark.models.outbound.enums")
    bounces = pytest.importorskip("postmark.models.bounces.schemas")
    for name, event in ENGAGEMENT.items():
        rec = record(event)
        if rec["RecordType"] == "Open":
            model = outbound.OpenEvent.model_validate(rec)
        elif rec["RecordType"] == "Click":
            model = outbound.ClickEvent.model_validate(rec)
            assert model.original_link == rec["OriginalLink"]
        elif rec["RecordType"] == "SpamComplaint":
            assert bounces.Bounce.model_validate(rec).type.value == "SpamComplaint"
            continue
        else:
            continue
        assert enums.Platform(model.platform) and model.geo.ip == rec["Geo"]["IP"]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["url", "user_agent", "client", "client_device", "client_os", "country",
                                        "city", "ip"]), st.one_of(st.none(), st.text(), st.integers()), max_size=8),
       st.sampled_from(["opened", "clicked"]))
def test_hostile_engagement_never_breaks_the_record(engagement, etype):
    rec = record({**ENGAGEMENT[etype], "engagement": engagement})
    assert set(rec) == FIELDS[rec["RecordType"]]
    for key, value in (("user_agent", rec["UserAgent"]), ("city", rec["Geo"]["City"]), ("ip", rec["Geo"]["IP"])):
        given = engagement.get(key)
        assert value == (given if type(given) is str else "")


def test_the_official_postmark_models_read_the_bounces():
    schemas = pytest.importorskip("postmark.models.bounces.schemas")
    enums = pytest.importorskip("postmark.models.bounces.enums")
    for event in MAPPED:
        rec = record(event)
        if rec["RecordType"] == "Bounce":
            bounce = schemas.Bounce.model_validate(rec)
            assert bounce.type == enums.BounceType(rec["Type"]) and bounce.id == rec["ID"]
    assert {t for t in postmark.BOUNCE_TYPES} <= {t.value for t in enums.BounceType}


def test_one_record_per_request_and_only_mapped_types():
    assert postmark.EVENTS_PER_REQUEST == 1
    with pytest.raises(ValueError):
        postmark.event_request(MAPPED[:2], CTX)
    for etype in set(TYPES) - postmark.EVENT_TYPES:  # the pipeline does not send these
        with pytest.raises(ValueError):
            postmark.event_request([{**KINDS[0], "type": etype}], CTX)


def test_record_is_the_same_on_every_retry_and_broken_time_never_breaks_it():
    retry = EventContext(request_id=CTX.request_id, now=CTX.now + 3600, nonce="other", endpoint_id=3)
    assert all(postmark.event_request([e], CTX) == postmark.event_request([e], retry) for e in MAPPED)
    assert record({**MAPPED[0], "at": "not a time"})["DeliveredAt"] == "2026-01-01T00:00:00.000000Z"


@settings(max_examples=60, deadline=None)
@given(st.text(), st.text(), st.text())
def test_hostile_event_text_round_trips(subject, reply, tag):
    rec = record({**KINDS[3], "subject": subject, "reply": reply, "custom_headers": {"x-pm-tag": tag}})
    assert (rec["Subject"], rec["Details"], rec["Tag"]) == (subject, reply, tag)


# ---------------------------------------------------------------------------------------------
# Inbound

def test_stripped_text_reply_of_a_reply():
    corpus = Path(__file__).parent.parent / "data" / "replies"
    doc = inbound_doc((corpus / "outlook-de.eml").read_bytes())
    assert doc["StrippedTextReply"] == "Hallo Herr Mustermann,\n\nvielen Dank, die Rechnung ist angekommen." \
        "\n\nMit freundlichen Grüßen"  # without the quoted thread and the signature below the closing


def test_inbound_as_postmark_documents_it():
    doc = inbound_doc(mime("related_inline_image.eml"), ["in+ticket-42@ours.example", "x@ours.example"])
    assert doc["MessageStream"] == "inbound"
    assert doc["OriginalRecipient"] == "in+ticket-42@ours.example" and doc["MailboxHash"] == "ticket-42"
    assert doc["StrippedTextReply"] == "Newsletter (text version)"  # nothing quoted: the text
    assert doc["Tag"] == ""  # mxhook has no tag for inbound mail: documented empty
    assert doc["MessageID"] == "0187a2b3c4d5e6f7a1b2c3d4e5f6-reports"
    listed = {p["Email"] for p in doc["ToFull"] + doc["CcFull"]}
    assert {p["Email"] for p in doc["BccFull"]} == {"in+ticket-42@ours.example", "x@ours.example"} - listed
    assert doc["Attachments"]
    assert all(set(att) == {"Name", "Content", "ContentType", "ContentLength", "ContentID"}
               for att in doc["Attachments"])
    assert any(att["ContentID"] for att in doc["Attachments"])


def test_the_official_postmark_models_read_the_inbound_parts():
    pytest.importorskip("postmark.models.inbound.schemas")
    inbound_doc(mime("related_inline_image.eml"))  # receive_postmark_inbound validates with them


def test_mailbox_hash():
    assert postmark.mailbox_hash("in+a+b@x.example") == "a+b"
    assert postmark.mailbox_hash("in@x.example") == postmark.mailbox_hash("") == ""


def test_attachment_over_the_payload_cap_is_omitted_with_a_marker():
    full = postmark.inbound_request(delivery(big_and_small()), ICTX)
    capped = postmark.inbound_request(delivery(big_and_small()), InboundContext(now=0, nonce="n", max_payload_size=10_000))
    assert len(capped.body) <= 10_000 < len(full.body)
    big, small = json.loads(capped.body)["Attachments"]
    assert (big["Content"], big["Omitted"], big["OmittedReason"]) == ("", True, "payload size cap")
    assert big["ContentLength"] == 256 * 120
    assert "Omitted" not in small and base64.b64decode(small["Content"]).startswith(b"%PDF")


def test_attachment_over_max_attachment_size_is_omitted_with_a_marker():
    (att,) = inbound_doc(mime(), ctx=InboundContext(now=0, nonce="n", max_attachment_size=100))["Attachments"]
    assert att["Content"] == "" and att["Omitted"] is True and "max_attachment_size" in att["OmittedReason"]


def test_inbound_body_is_the_same_on_every_retry():
    d = delivery(mime())
    assert postmark.inbound_request(d, ICTX) == postmark.inbound_request(d, InboundContext(now=1, nonce="other"))


@settings(max_examples=60, deadline=None)
@given(subject=HOSTILE, body=st.binary(max_size=300), name=HOSTILE)
def test_hostile_mail_never_breaks_the_json(subject, body, name):
    subject = subject.replace("\r", " ").replace("\n", " ")
    raw = (b"From: \"" + name.encode("utf-8") + b"\" <x@example.org>\r\nTo: in@ours.example\r\nSubject: "
           + subject.encode("utf-8") + b" {{x}}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    doc = inbound_doc(raw)
    assert doc["Subject"] == (inbound.native_document(delivery(raw))["message"]["subject"] or "")
    native_from = inbound.native_document(delivery(raw))["message"]["from"]
    # a display name with a bare quote can make the header parse to another address: the
    # dialect says what the native document read, whatever that was
    assert isinstance(doc["TextBody"], str)
    assert doc["From"] == (native_from[0]["address"] if native_from else "")


def test_long_subject():
    raw = b"From: x@example.org\r\nSubject: " + b"long " * 5000 + b"\r\n\r\nbody\r\n"
    assert inbound_doc(raw)["Subject"].startswith("long long")


def test_headers_configured_in_any_case_give_tag_stream_and_metadata():
    """[milter] event_headers keep the admin's case (X-PM-Tag): found in any case, each
    Metadata key named as the header is."""
    configured = {"X-PM-Tag": "welcome", "X-PM-Metadata-OrderId": "1123", "X-PM-Message-Stream": "broadcast"}
    rec = record({**KINDS[1], "custom_headers": configured})
    assert (rec["Tag"], rec["MessageStream"], rec["Metadata"]) == ("welcome", "broadcast", {"OrderId": "1123"})
