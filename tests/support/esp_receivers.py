"""Receivers written the way the ESPs document their webhooks, shared by the dialect unit tests
(tests/unit/test_dialect_*.py) and the end-to-end tests (tests/e2e/test_dialects_e2e.py). They
never import mxhook: a receiver that shared the sender's code could not catch its bugs.

Each takes a `Rendered`-like object (`.body` bytes, `.content_type` str): a dialect's rendered
request in a unit test, `as_rendered(request)` of what the test receiver got end to end.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from types import SimpleNamespace


def as_rendered(request) -> SimpleNamespace:
    """A request the test receiver got (tests/support/receiver.py) as (body, content_type)."""
    return SimpleNamespace(body=request.body, content_type=request.headers.get("Content-Type", ""))


def _strict(name: str):
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------------------------------------
# Mailgun: event webhooks ("Securing Webhooks"; the SDK's SecurityGuard.verify_webhook)

def mailgun_verify(signing_key: str, token: str, timestamp: str, signature: str) -> bool:
    """Mailgun's "Securing Webhooks" check, as its Python sample writes it."""
    digest = hmac.new(key=signing_key.encode(), msg=f"{timestamp}{token}".encode(),
                      digestmod=hashlib.sha256).hexdigest()
    return hmac.compare_digest(str(signature), str(digest))


def receive_mailgun_event(r, key: str) -> dict:
    """A Mailgun event webhook: JSON with `signature` and `event-data`; the event-data.
    PermissionError when the signature does not verify with `key`."""
    assert r.content_type == "application/json", r.content_type
    payload = json.loads(r.body.decode("utf-8"), parse_constant=_strict)
    assert list(payload) == ["signature", "event-data"]
    sig = payload["signature"]
    assert set(sig) == {"timestamp", "token", "signature"}
    assert all(isinstance(v, str) for v in sig.values())
    assert int(sig["timestamp"]) > 0
    if not mailgun_verify(key, sig["token"], sig["timestamp"], sig["signature"]):
        raise PermissionError("signature does not verify")
    data = payload["event-data"]
    assert isinstance(data["id"], str) and data["id"]
    assert isinstance(data["timestamp"], float)
    assert data["event"] in ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained")
    assert data["log-level"] in ("info", "warn", "error")
    if data["event"] == "failed":
        assert data["severity"] in ("permanent", "temporary")
        assert isinstance(data["reason"], str)
        assert isinstance(data["delivery-status"]["code"], int)
    if data["event"] in ("opened", "clicked", "unsubscribed"):  # "Tracking Opens/Clicks", bot detection
        assert isinstance(data["ip"], str)
        assert set(data["geolocation"]) == {"country", "region", "city"}
        assert all(isinstance(v, str) for v in data["geolocation"].values())
        info = data["client-info"]
        assert {"client-name", "client-os", "device-type", "user-agent", "bot"} <= set(info)
        assert all(isinstance(v, str) for v in info.values())
        assert info["bot"] in ("", "apple", "gmail", "generic")
    if data["event"] == "clicked":
        assert isinstance(data["url"], str)
    assert isinstance(data["message"]["headers"], dict)
    assert isinstance(data["tags"], list) and isinstance(data["user-variables"], dict)
    return data


# ---------------------------------------------------------------------------------------------
# Postmark: the inbound webhook's JSON (field names and types; postmark-python's models)

POSTMARK_INBOUND_FIELDS = {
    "FromName", "MessageStream", "From", "FromFull", "To", "ToFull", "Cc", "CcFull", "Bcc", "BccFull",
    "OriginalRecipient", "Subject", "MessageID", "ReplyTo", "MailboxHash", "Date", "TextBody", "HtmlBody",
    "StrippedTextReply", "Tag", "Headers", "Attachments",
}


def receive_postmark_inbound(r) -> dict:
    """Postmark's inbound JSON read as its documentation gives it (every field, its type, each
    address as Email/Name/MailboxHash, headers as Name/Value, attachments with base64 Content of
    ContentLength bytes unless omitted), and with postmark-python's models where installed.
    Returns the document."""
    assert r.content_type == "application/json", r.content_type
    doc = json.loads(r.body.decode("utf-8"), parse_constant=_strict)
    assert set(doc) == POSTMARK_INBOUND_FIELDS, set(doc) ^ POSTMARK_INBOUND_FIELDS
    for key in POSTMARK_INBOUND_FIELDS - {"FromFull", "ToFull", "CcFull", "BccFull", "Headers", "Attachments"}:
        assert isinstance(doc[key], str), (key, doc[key])
    people = [doc["FromFull"], *doc["ToFull"], *doc["CcFull"], *doc["BccFull"]]
    for person in people:
        assert set(person) == {"Email", "Name", "MailboxHash"} and all(isinstance(v, str) for v in person.values())
    assert all(set(h) == {"Name", "Value"} and all(isinstance(v, str) for v in h.values()) for h in doc["Headers"])
    for att in doc["Attachments"]:
        assert {"Name", "Content", "ContentType", "ContentLength", "ContentID"} <= set(att)
        assert isinstance(att["ContentLength"], int)
        if not att.get("Omitted"):
            assert len(base64.b64decode(att["Content"], validate=True)) == att["ContentLength"]
    try:
        from postmark.models.inbound import schemas
    except ImportError:
        return doc
    for att in doc["Attachments"]:
        assert schemas.InboundAttachment.model_validate(att).content_length == att["ContentLength"]
    # the SDK's model (email-validator) refuses addresses a message can still carry — "", an
    # empty local part, a domain without a dot ('0@0' from a hostile display name), an address
    # literal: the dialect passes on what the message said, so those go unchecked by the model
    from email_validator import EmailNotValidError, validate_email
    for person in people:
        try:
            validate_email(person["Email"], check_deliverability=False)
        except EmailNotValidError:
            continue
        assert schemas.EmailAddress.model_validate(person).email == person["Email"]
    assert [schemas.Header.model_validate(h).name for h in doc["Headers"]] == [h["Name"] for h in doc["Headers"]]
    return doc
