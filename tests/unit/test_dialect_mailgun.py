"""The mailgun dialect: event webhooks and routes' forward(), checked by a receiver written the way
Mailgun documents it (signature: hex HMAC-SHA256 of timestamp + token with the webhook signing
key; Mailgun's official SDK's verify_webhook where installed), and byte for byte against golden
bodies in golden/dialects/mailgun/. A deliberate change re-records them:

    MXHOOK_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_dialect_mailgun.py \
        tests/unit/test_dialect_actionmailbox.py
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import replace
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mxhook.model.events import ENGAGEMENT_TYPES, TYPES
from mxhook.payloads.dialects import EventContext, InboundContext, mailgun
from mxhook.payloads.encodings import Rendered
from mxhook.payloads.events import sample_event
from mxhook.payloads.inbound import Delivery
from tests.support.esp_receivers import mailgun_verify as verify, receive_mailgun_event
from tests.unit.seed_dialect_cases import EVENTS as SEED_EVENTS
from tests.unit.test_payloads import META, PDF, raw, target

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "dialects"
MIME = HERE / "fixtures" / "mime"
KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"  # 50 characters, as Mailgun's
NOW = 1767268800.75  # 2026-01-01T12:00:00.75Z
EVENT_CTX = EventContext(request_id="evb_golden", now=NOW, nonce=TOKEN, endpoint_id=3, signing_key=KEY)
INBOUND_CTX = InboundContext(now=NOW, nonce=TOKEN, signing_key=KEY)


@pytest.fixture(autouse=True)
def fixed_boundary(monkeypatch):
    monkeypatch.setattr(secrets, "token_hex", lambda n: "0" * (2 * n))


def check_golden(dialect: str, name: str, rendered: Rendered) -> None:
    """`rendered` is byte for byte golden/dialects/<dialect>/<name>.txt (its content type, a blank
    line, the body); MXHOOK_GOLDEN_WRITE=1 records it."""
    path = GOLDEN / dialect / f"{name}.txt"
    data = b"Content-Type: " + rendered.content_type.encode("ascii") + b"\n\n" + rendered.body
    if os.environ.get("MXHOOK_GOLDEN_WRITE"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.read_bytes() == data


def golden_names(dialect: str) -> list[str]:
    return sorted(p.stem for p in (GOLDEN / dialect).glob("*.txt"))


# ---------------------------------------------------------------------------------------------
# A receiver written from Mailgun's documentation (events: tests/support/esp_receivers.py)

def form_fields(r: Rendered) -> tuple[list[tuple[str, str]], dict]:
    """(fields in order, files {name: (filename, content type, bytes)}) of a urlencoded or
    multipart/form-data body, parsed as a web framework does."""
    if r.content_type == "application/x-www-form-urlencoded":
        return parse_qsl(r.body.decode("ascii"), keep_blank_values=True, strict_parsing=True), {}
    assert r.content_type.startswith("multipart/form-data; boundary=")
    msg = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + r.content_type.encode() + b"\r\n\r\n" + r.body)
    assert msg.is_multipart() and not msg.defects
    fields, files = [], {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), part.get_content_type(), payload)
        else:
            fields.append((name, payload.decode("utf-8")))
    return fields, files


def receive_forward(r: Rendered, key: str = KEY) -> dict:
    """A Mailgun route's forward() receiver: the signature, then the parsed message (as
    django-anymail's Mailgun inbound view reads it)."""
    fields, files = form_fields(r)
    form = dict(fields)
    assert len(form) == len(fields), "a field name appears twice"
    if not verify(key, form["token"], form["timestamp"], form["signature"]):
        raise PermissionError("signature does not verify")
    int(form["timestamp"])
    headers = json.loads(form["message-headers"])
    assert all(isinstance(h, list) and len(h) == 2 for h in headers)
    cid_of = {field: cid for cid, field in json.loads(form.get("content-id-map", "{}")).items()}
    attachments = [(files[f"attachment-{n}"], cid_of.get(f"attachment-{n}"))
                   for n in range(1, int(form["attachment-count"]) + 1)]
    assert len(files) == len(attachments)
    return {"form": form, "headers": headers, "attachments": attachments}


def delivery(raw_bytes: bytes | None = None, *, meta=META, recipients=("in@ours.example",),
             url: str = "https://hooks.example/mailgun") -> Delivery:
    return Delivery.of(delivery_id="0187a2b3c4d5e6f7a1b2c3d4e5f6-reports", meta=meta,
                       raw=raw() if raw_bytes is None else raw_bytes, target=target(url=url),
                       recipients=list(recipients))


# ---------------------------------------------------------------------------------------------
# Events

BOUNCE = {
    "id": "18a0000000000000aaaaaaaaaaaa", "type": "bounced", "at": "2026-01-15T12:00:00.250000Z",
    "source": "log", "queue_id": "4XbQ1k2Lmz", "recipient": "gone@else.example",
    "orig_recipient": None, "sender": "app@ours.example", "header_from": "App <app@ours.example>",
    "message_id": "<m1@ours.example>", "subject": "Your invoice", "dsn": "5.1.1",
    "bounce_type": "hard", "remote_host": "mx.else.example[192.0.2.25]",
    "relay": "mx.else.example[192.0.2.25]:25",
    "reply": "550 5.1.1 <gone@else.example>: User unknown", "diagnostic": None, "delay": 1.2,
    "queued_as": None, "client_addr": "192.0.2.7", "auth_user": "app", "reason": None,
    "custom_headers": {"X-Mailgun-Variables": '{"order": "42"}', "X-Mailgun-Tag": "invoice",
                       "To": "Gone <gone@else.example>"},
}


def event(type_: str, **changes) -> dict:
    return {**BOUNCE, "type": type_, "bounce_type": None, **changes}


EVENT_CASES = {
    "queued": event("queued", source="milter", dsn=None, remote_host=None, relay=None, reply=None),
    "succeeded": event("succeeded", dsn="2.0.0", reply="250 2.0.0 Ok: queued as 3F2A1B0C9D",
                       queued_as="3F2A1B0C9D"),
    "deferred": event("deferred", dsn="4.4.1", reply=None, remote_host=None,
                      diagnostic="connect to mx.else.example[192.0.2.25]:25: Connection refused"),
    "bounced_hard": BOUNCE,
    "bounced_soft": event("bounced", bounce_type="soft", dsn="5.2.2", reply="552 5.2.2 Mailbox full"),
    "bounced_dsn": {**BOUNCE, "source": "dsn", "queue_id": None, "remote_host": None, "relay": None},
    "failed_expired": event("failed", dsn="4.4.1", reply=None, reason="expired",
                            diagnostic="connect to mx.else.example[192.0.2.25]:25: Connection timed out"),
    "blocked": event("blocked", source="milter", dsn="5.1.1", remote_host=None, relay=None,
                     reply="550 5.1.1 <gone@else.example>: Recipient address rejected",
                     reason="hard bounce"),
    "blocked_admin": event("blocked", source="milter", dsn=None, remote_host=None, relay=None,
                           reply=None, reason="spam trap"),
    "bare": {"id": "2", "type": "succeeded", "at": "not a time", "recipient": None,
             "custom_headers": None},
    "hostile": {**BOUNCE, "subject": '=HYPERLINK("x") {{ 7*7 }} "quoted" \\ \u00e9\u2028\x00\x1b'
                + "s" * 2000, "header_from": 'Eve "\r\nX-Evil: 1" <eve@x>',
                "custom_headers": {"X-Mailgun-Variables": "{not json", "X-Mailgun-Tag": ""}},
    "sample": {**sample_event("bounced", at="2026-01-01T00:00:00.000000Z"), "id": "test-1"},
}


# Engagement events: the seed dialects' cases, with Mailgun's headers on the message
ENGAGEMENT_CASES = {name: {**SEED_EVENTS[name], "custom_headers": BOUNCE["custom_headers"]}
                    for name in ("opened", "opened_machine", "clicked", "clicked_scanner", "unsubscribed",
                                 "unsubscribed_mailto", "complained", "opened_privacy", "clicked_hostile",
                                 "engagement_wrong_types", "opened_several_recipients")}
ENGAGEMENT_CASES["opened_gmail"] = {**SEED_EVENTS["opened_machine"], "engagement": {
    "machine": True, "machine_reason": "Gmail image proxy (GoogleImageProxy)", "ip": "66.249.93.84"}}
ALL_EVENT_CASES = {**EVENT_CASES, **ENGAGEMENT_CASES}


@pytest.mark.parametrize("name", sorted(ALL_EVENT_CASES))
def test_event_golden(name):
    r = mailgun.event_request([ALL_EVENT_CASES[name]], EVENT_CTX)
    receive_mailgun_event(r, KEY)
    check_golden("mailgun", f"event-{name}", r)


def test_event_mapping():
    got = {name: receive_mailgun_event(mailgun.event_request([EVENT_CASES[name]], EVENT_CTX), KEY)
           for name in EVENT_CASES if name != "hostile"}
    assert {n: (d["event"], d.get("severity"), d.get("reason"), d["log-level"]) for n, d in got.items()} == {
        "queued": ("accepted", None, None, "info"),
        "succeeded": ("delivered", None, None, "info"),
        "deferred": ("failed", "temporary", "generic", "warn"),
        "bounced_hard": ("failed", "permanent", "bounce", "error"),
        "bounced_soft": ("failed", "permanent", "generic", "error"),
        "bounced_dsn": ("failed", "permanent", "bounce", "error"),
        "failed_expired": ("failed", "permanent", "generic", "error"),
        "blocked": ("failed", "permanent", "suppress-bounce", "error"),
        "blocked_admin": ("failed", "permanent", "suppress-bounce", "error"),
        "bare": ("delivered", None, None, "info"),
        "sample": ("failed", "permanent", "bounce", "error"),
    }
    hard = got["bounced_hard"]
    assert hard["id"] == BOUNCE["id"]
    assert hard["timestamp"] == 1768478400.25
    assert hard["recipient"] == "gone@else.example" and hard["recipient-domain"] == "else.example"
    assert hard["envelope"] == {"transport": "smtp", "sender": "app@ours.example", "targets": "gone@else.example"}
    assert hard["flags"]["is-authenticated"] is True and "is-delayed-bounce" not in hard["flags"]
    assert hard["delivery-status"] == {"code": 550, "message": "550 5.1.1 <gone@else.example>: User unknown",
                                       "description": "", "mx-host": "mx.else.example", "enhanced-code": "5.1.1"}
    assert hard["message"] == {"headers": {"to": "Gone <gone@else.example>", "message-id": "m1@ours.example",
                                           "from": "App <app@ours.example>", "subject": "Your invoice"}}
    assert hard["tags"] == ["invoice"] and hard["user-variables"] == {"order": "42"}
    assert got["queued"]["method"] == "smtp" and "delivery-status" not in got["queued"]
    assert got["succeeded"]["delivery-status"]["code"] == 250
    deferred = got["deferred"]["delivery-status"]
    assert deferred["code"] == 450 and deferred["message"] == deferred["description"] \
        == EVENT_CASES["deferred"]["diagnostic"]
    assert got["bounced_dsn"]["flags"]["is-delayed-bounce"] is True
    assert got["failed_expired"]["delivery-status"]["code"] == 450  # its status code's class
    assert got["blocked"]["delivery-status"]["code"] == 605
    assert got["blocked"]["delivery-status"]["description"] == "Not delivering to previously bounced address"
    assert got["blocked_admin"]["delivery-status"]["description"] == \
        "Not delivering to a blocked address (spam trap)"
    assert got["bare"]["timestamp"] == NOW  # an unreadable time: the attempt's
    assert "recipient" not in got["bare"] and got["bare"]["message"] == {"headers": {}}


@pytest.mark.parametrize("text", ['{"a": NaN}', "[" * 100_000, '["list"]', "{not json"])
def test_user_variables_only_from_a_json_object(text):
    e = {**BOUNCE, "custom_headers": {"x-mailgun-VARIABLES": text}}
    assert receive_mailgun_event(mailgun.event_request([e], EVENT_CTX), KEY)["user-variables"] == {}


def test_every_type_but_block_list_changes_and_resubscribed_has_a_mailgun_event():
    assert set(mailgun.EVENT_TYPES) == set(TYPES) - {"registered", "deleted", "resubscribed"}
    assert set(ENGAGEMENT_TYPES) - {"resubscribed"} <= set(mailgun.EVENT_TYPES)


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


def test_engagement_mapping():
    got = {name: receive_mailgun_event(mailgun.event_request([e], EVENT_CTX), KEY)
           for name, e in ENGAGEMENT_CASES.items()}
    assert {n: (d["event"], d["log-level"]) for n, d in got.items() if not n.startswith("engagement")} == {
        "opened": ("opened", "info"), "opened_machine": ("opened", "info"), "opened_gmail": ("opened", "info"),
        "opened_privacy": ("opened", "info"), "opened_several_recipients": ("opened", "info"),
        "clicked": ("clicked", "info"), "clicked_scanner": ("clicked", "info"), "clicked_hostile": ("clicked", "info"),
        "unsubscribed": ("unsubscribed", "info"), "unsubscribed_mailto": ("unsubscribed", "info"),
        "complained": ("complained", "warn")}
    opened = got["opened"]
    assert (opened["ip"], opened["recipient"], opened["recipient-domain"]) == \
        ("203.0.113.9", "ok@customer.example", "customer.example")
    assert opened["geolocation"] == {"country": "FR", "region": "Unknown", "city": "Lyon"}
    assert opened["client-info"] == {"client-name": "Mobile Safari", "client-type": "unknown", "client-os": "iOS",
                                     "device-type": "mobile", "user-agent": SEED_EVENTS["opened"]["engagement"]["user_agent"],
                                     "bot": ""}
    assert opened["tags"] == ["invoice"] and opened["user-variables"] == {"order": "42"}
    assert opened["message"]["headers"]["message-id"] == "order-1187@ours.example"
    assert "envelope" not in opened and "delivery-status" not in opened
    # the bot verdict, by Mailgun's names
    assert {n: got[n]["client-info"]["bot"] for n in ("opened_machine", "opened_gmail", "clicked_scanner")} == \
        {"opened_machine": "apple", "opened_gmail": "gmail", "clicked_scanner": "generic"}
    assert got["clicked"]["url"] == "https://shop.ours.example/orders/1187?utm_source=mail&x=1"
    assert "url" not in opened
    complained = got["complained"]
    assert "client-info" not in complained and complained["flags"] == {"is-test-mode": False}
    private = got["opened_privacy"]
    assert private["ip"] == private["client-info"]["user-agent"] == ""
    assert "recipient" not in got["opened_several_recipients"]
    assert got["unsubscribed_mailto"]["geolocation"] == {"country": "Unknown", "region": "Unknown", "city": "Unknown"}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=TEXT, user_agent=TEXT, client=TEXT, reason=TEXT, machine=st.one_of(st.none(), st.booleans()))
def test_hostile_engagement_values_never_break_the_json(url, user_agent, client, reason, machine):
    e = {**ENGAGEMENT_CASES["clicked"], "engagement": {"url": url, "user_agent": user_agent, "client": client,
                                                       "machine": machine, "machine_reason": reason}}
    data = receive_mailgun_event(mailgun.event_request([e], EVENT_CTX), KEY)
    assert data["url"] == url and data["client-info"]["user-agent"] == user_agent
    assert data["client-info"]["client-name"] == (client or "unknown")
    assert (data["client-info"]["bot"] == "") is (machine is not True)


@pytest.mark.parametrize("event_type", mailgun.EVENT_TYPES)
def test_sample_events_verify(event_type):
    receive_mailgun_event(mailgun.event_request([sample_event(event_type)], EVENT_CTX), KEY)


def test_signature_is_mailguns():
    body = json.loads(mailgun.event_request([BOUNCE], EVENT_CTX).body)
    assert body["signature"] == {
        "timestamp": "1767268800", "token": TOKEN,
        "signature": hmac.new(KEY.encode(), b"1767268800" + TOKEN.encode(), hashlib.sha256).hexdigest()}


def test_another_key_or_a_changed_timestamp_or_token_fails():
    r = mailgun.event_request([BOUNCE], EVENT_CTX)
    with pytest.raises(PermissionError):
        receive_mailgun_event(r, KEY + "x")
    sig = json.loads(r.body)["signature"]
    assert verify(KEY, sig["token"], sig["timestamp"], sig["signature"])
    assert not verify(KEY, sig["token"], str(int(sig["timestamp"]) + 1), sig["signature"])
    assert not verify(KEY, sig["token"][:-1] + "x", sig["timestamp"], sig["signature"])


def test_the_signature_does_not_cover_the_body():
    """Mailgun's scheme signs timestamp + token only: a changed body still verifies (receivers
    that need more use HTTPS, and Basic auth in the URL)."""
    r = mailgun.event_request([BOUNCE], EVENT_CTX)
    changed = Rendered(r.body.replace(b"gone@else.example", b"evil@else.example"), r.content_type)
    assert receive_mailgun_event(changed, KEY)["recipient"] == "evil@else.example"


def test_official_sdk_verifies():
    security = pytest.importorskip("mailgun.security")
    ctx = replace(EVENT_CTX, now=time.time())
    sig = json.loads(mailgun.event_request([BOUNCE], ctx).body)["signature"]
    assert security.SecurityGuard.verify_webhook(KEY, sig["token"], sig["timestamp"], sig["signature"])
    assert not security.SecurityGuard.verify_webhook("other", sig["token"], sig["timestamp"], sig["signature"])


def test_retries_carry_the_same_event_under_a_fresh_signature():
    first = json.loads(mailgun.event_request([BOUNCE], EVENT_CTX).body)
    retry = json.loads(mailgun.event_request(
        [BOUNCE], replace(EVENT_CTX, now=NOW + 600, nonce="b" * 50)).body)
    assert first["event-data"] == retry["event-data"]  # deduplicate on event-data.id
    assert first["signature"] != retry["signature"]


def test_no_signing_key_no_body():
    for key in (None, "", "  "):
        with pytest.raises(ValueError, match="signing key"):
            mailgun.event_request([BOUNCE], replace(EVENT_CTX, signing_key=key))
        with pytest.raises(ValueError, match="signing key"):
            mailgun.inbound_request(delivery(), replace(INBOUND_CTX, signing_key=key))
        assert "--signing-key" in mailgun.check_signing_key(key)
    assert mailgun.check_signing_key(KEY) is None


def test_one_event_per_request():
    assert mailgun.EVENTS_PER_REQUEST == 1
    with pytest.raises(ValueError, match="one event per request"):
        mailgun.event_request([BOUNCE, BOUNCE], EVENT_CTX)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=TEXT, header_from=TEXT, reply=TEXT, recipient=TEXT, variables=TEXT,
       message_id=TEXT)
def test_hostile_event_values_never_break_the_json(subject, header_from, reply, recipient, variables,
                                                    message_id):
    e = {**BOUNCE, "subject": subject, "header_from": header_from, "reply": reply,
         "recipient": recipient, "message_id": message_id,
         "custom_headers": {"X-Mailgun-Variables": variables, "X-Mailgun-Tag": subject}}
    data = receive_mailgun_event(mailgun.event_request([e], EVENT_CTX), KEY)
    assert data["message"]["headers"]["subject"] == subject
    assert data["message"]["headers"]["from"] == header_from
    assert data["delivery-status"]["message"] == reply


# ---------------------------------------------------------------------------------------------
# Inbound: routes' forward()

INBOUND_CASES = {
    "plain_ascii": dict(raw_bytes=(MIME / "plain_ascii.eml").read_bytes()),
    "mixed_alternative_attachment": dict(),
    "related_inline_image": dict(raw_bytes=(MIME / "related_inline_image.eml").read_bytes()),
    "rfc2231_filenames": dict(raw_bytes=(MIME / "rfc2231_filenames.eml").read_bytes()),
    "latin1_8bit": dict(raw_bytes=(MIME / "latin1_8bit.eml").read_bytes()),
    "header_8bit": dict(raw_bytes=(MIME / "header_8bit.eml").read_bytes()),
    "multi_recipient": dict(recipients=("in@ours.example", "x@ours.example")),
    "payload_cap": dict(raw_bytes=(MIME / "rfc2231_filenames.eml").read_bytes(), max_payload_size=2300),
    "attachment_cap": dict(max_attachment_size=100),
    "hostile_envelope": dict(meta={**META, "mail_from": "a@x\r\nX-Evil: 1"},
                             recipients=("in@ours.example\r\nX-Evil: 2",)),
    "mime": dict(url="https://hooks.example/mailgun/mime",
                 raw_bytes=(MIME / "latin1_8bit.eml").read_bytes()),
}


def render_inbound(raw_bytes=None, *, meta=META, recipients=("in@ours.example",),
                   url="https://hooks.example/mailgun", max_payload_size=25 * 1024 * 1024,
                   max_attachment_size=10 * 1024 * 1024) -> Rendered:
    ctx = replace(INBOUND_CTX, max_payload_size=max_payload_size, max_attachment_size=max_attachment_size)
    return mailgun.inbound_request(delivery(raw_bytes, meta=meta, recipients=recipients, url=url), ctx)


@pytest.mark.parametrize("name", sorted(INBOUND_CASES))
def test_inbound_golden(name):
    r = render_inbound(**INBOUND_CASES[name])
    if name != "mime":
        receive_forward(r)
    check_golden("mailgun", f"inbound-{name}", r)


def test_golden_files_are_the_cases():
    assert golden_names("mailgun") == sorted(
        [f"event-{n}" for n in ALL_EVENT_CASES]
        + [f"inbound-{n}" for n in INBOUND_CASES])


def test_forward_fields():
    got = receive_forward(render_inbound())
    form = got["form"]
    assert list(form)[:5] == ["recipient", "sender", "from", "subject", "body-plain"]
    assert form["recipient"] == "in@ours.example"
    assert form["sender"] == "reports@example.com"
    assert form["from"] == "Reports <reports@example.com>"
    assert form["subject"] == "Monthly report"
    assert form["body-plain"] == "Report attached."
    assert form["body-html"] == "<p>Report <i>attached</i>.</p>"
    # no quote, no signature: the stripped fields are the bodies (stripped-html: nothing to cut)
    assert (form["stripped-text"], form["stripped-signature"]) == ("Report attached.", "")
    assert form["stripped-html"] == form["body-html"]
    assert got["headers"][:3] == [["From", "Reports <reports@example.com>"], ["To", "in@ours.example"],
                                  ["Subject", "Monthly report"]]
    assert ["Mime-Version", "1.0"] in got["headers"]  # Mailgun's spelling of names
    assert form["From"] == "Reports <reports@example.com>" and form["Mime-Version"] == "1.0"
    assert form["attachment-count"] == "1" and form["content-id-map"] == "{}"
    [((filename, ctype, data), cid)] = got["attachments"]
    assert (filename, ctype, data, cid) == ("report.pdf", "application/pdf", PDF, None)
    assert form["timestamp"] == "1767268800" and form["token"] == TOKEN


def test_forward_of_a_reply_has_the_stripped_fields():
    corpus = HERE.parent / "data" / "replies"
    form = receive_forward(render_inbound((corpus / "gmail-alternative.eml").read_bytes()))["form"]
    assert form["stripped-text"] == (corpus / "gmail-alternative.txt").read_text(encoding="utf-8").rstrip("\n")
    assert form["stripped-signature"] == ""
    assert form["stripped-html"] == (corpus / "gmail-alternative.out.html").read_text(encoding="utf-8")
    # HTML whose quoting is not recognised: no stripped-html, as Mailgun leaves it out
    form = receive_forward(render_inbound((corpus / "html-unrecognised-quote.eml").read_bytes()))["form"]
    assert form["stripped-text"] == "Sounds good." and "stripped-html" not in form


def test_forward_without_attachments_is_urlencoded_as_mailguns():
    r = render_inbound((MIME / "plain_ascii.eml").read_bytes())
    assert r.content_type == "application/x-www-form-urlencoded"
    form = receive_forward(r)["form"]
    assert form["attachment-count"] == "0" and "body-html" not in form


def test_forward_inline_images_in_the_content_id_map():
    got = receive_forward(render_inbound((MIME / "related_inline_image.eml").read_bytes()))
    assert json.loads(got["form"]["content-id-map"]) == {"<logo.123@example.com>": "attachment-1"}
    assert [cid for _, cid in got["attachments"]] == ["<logo.123@example.com>", None]


def test_forward_multi_recipient():
    form = receive_forward(render_inbound(recipients=("in@ours.example", "x@ours.example")))["form"]
    assert form["recipient"] == "in@ours.example, x@ours.example"


@pytest.mark.parametrize("under", [1, 400, 2500])
def test_forward_attachments_over_the_cap_are_left_out(under):
    several = (MIME / "rfc2231_filenames.eml").read_bytes()
    whole = render_inbound(several)
    full = receive_forward(whole)
    cap = len(whole.body) - under
    r = render_inbound(several, max_payload_size=cap)
    got = receive_forward(r)  # attachment-1..attachment-count are all there
    assert len(got["attachments"]) < len(full["attachments"])
    if got["attachments"]:
        assert len(r.body) <= cap
    everything = [a for a, _ in full["attachments"]]
    assert all(a in everything for a, _ in got["attachments"])


def test_forward_attachment_over_max_attachment_size_is_left_out():
    got = receive_forward(render_inbound(max_attachment_size=100))
    assert got["form"]["attachment-count"] == "0" and got["attachments"] == []


def test_forward_signature_does_not_verify_with_another_key():
    with pytest.raises(PermissionError):
        receive_forward(render_inbound(), key="another")


def test_forward_mime_variant_as_rails_mailgun_ingress_reads_it():
    """A URL ending in `mime` gets Mailgun's raw-MIME post; Rails' Mailgun ingress requires
    body-mime, timestamp (an integer no older than 2 minutes), token and signature."""
    original = raw()
    ctx = replace(INBOUND_CTX, now=time.time())
    r = mailgun.inbound_request(delivery(original, url="https://app.example/rails/action_mailbox/mailgun/inbound_emails/mime"), ctx)
    fields, files = form_fields(r)
    form = dict(fields)
    assert not files
    assert set(form) == {"recipient", "sender", "from", "subject", "body-mime", "timestamp", "token",
                         "signature"}
    assert int(form["timestamp"]) >= time.time() - 120
    assert verify(KEY, form["token"], form["timestamp"], form["signature"])
    assert form["body-mime"].encode("utf-8") == original


def test_forward_mime_variant_bytes_not_utf8():
    r = render_inbound((MIME / "latin1_8bit.eml").read_bytes(), url="https://h.example/mime")
    body_mime = dict(form_fields(r)[0])["body-mime"]
    assert "\ufffd" in body_mime


def test_canonical_header_names():
    assert mailgun.canonical_name("MESSAGE-ID") == "Message-Id"
    assert mailgun.canonical_name("x-mailgun-variables") == "X-Mailgun-Variables"
    assert mailgun.canonical_name("bad name") == "bad name"


def mime_message(subject: str, body: bytes, *, attach: bool) -> bytes:
    head = b"From: a@example.org\r\nTo: in@ours.example\r\nSubject: " + subject.encode("utf-8", "replace")
    if not attach:
        return head + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    return (head + b"\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + b"\r\n--b1\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            b"filename=\"" + subject.encode("utf-8", "replace")[:40] + b"\"\r\n\r\n" + body
            + b"\r\n--b1--\r\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=200),
       body=st.binary(max_size=400), attach=st.booleans(), mail_from=TEXT,
       recipients=st.lists(TEXT, min_size=1, max_size=3))
def test_hostile_mail_never_breaks_the_form(subject, body, attach, mail_from, recipients):
    message = mime_message(subject, body, attach=attach)
    r = render_inbound(message, meta={**META, "mail_from": mail_from}, recipients=tuple(recipients))
    got = receive_forward(r)
    assert got["form"]["recipient"] == ", ".join(recipients)
    assert got["form"]["sender"] == mail_from


# The boundary: random (encodings._new_boundary), never one found in a part. With the random
# source replaced by a known sequence, a mail holding the first candidates (as a delimiter line,
# a close delimiter, glued to other text) must make the body take the next free one, and a real
# multipart parser must give back every part as it was made.
CANDIDATES = ["mxhook-" + c * 32 for c in "0123"]
CANDIDATE_TEXT = st.lists(st.sampled_from(
    [b"x", b"\r\n", b"\n", b"--", b"\xc3\xa9", *(p + c.encode() + s for c in CANDIDATES[:3]
                                                  for p, s in ((b"", b""), (b"\r\n--", b"\r\n"),
                                                               (b"--", b"--\r\n")))]),
    min_size=1, max_size=12).map(b"".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=CANDIDATE_TEXT, attachment=CANDIDATE_TEXT, mime_variant=st.booleans())
def test_a_part_holding_the_boundary_never_breaks_the_body(monkeypatch, body, attachment, mime_variant):
    drawn = iter(CANDIDATES)
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(drawn)[len("mxhook-"):])
    message = (b"From: a@example.org\r\nTo: in@ours.example\r\nSubject: s\r\n"
               b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" + body + b"\r\n--b1\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(body) + b"\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Disposition: attachment; filename=\"f.bin\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(attachment)
               + b"\r\n--b1--\r\n" + attachment)
    url = "https://hooks.example/mailgun/mime" if mime_variant else "https://hooks.example/mailgun"
    r = mailgun.inbound_request(delivery(message, url=url), INBOUND_CTX)
    boundary = r.content_type.partition("boundary=")[2]
    assert boundary.encode() not in body + attachment  # and the preamble, the epilogue
    if mime_variant:
        form = dict(form_fields(r)[0])
        assert form["body-mime"] == message.decode("utf-8", "replace")
    else:
        got = receive_forward(r)
        form = got["form"]
        assert form["body-plain"] == body.decode("utf-8", "replace").replace("\r\n", "\n")
        assert got["attachments"] == [(("f.bin", "application/octet-stream", attachment), None)]
    werkzeug_test = pytest.importorskip("werkzeug.test")
    from werkzeug.wrappers import Request
    request = Request(werkzeug_test.EnvironBuilder(method="POST", data=r.body,
                                                   content_type=r.content_type).get_environ())
    assert dict(request.form.items()) == form
    if not mime_variant:
        assert request.files["attachment-1"].read() == attachment
