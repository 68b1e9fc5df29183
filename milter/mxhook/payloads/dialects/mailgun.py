"""Mailgun: event webhooks and routes' forward(), as Mailgun posts them. Pure.

Events: one per request, `{"signature": {...}, "event-data": {...}}` (application/json), the
event-data with Mailgun's event names and fields (docs/payloads.md, "Dialect: mailgun"); a type
outside EVENT_TYPES is refused (ValueError), text with a lone surrogate gets U+FFFD in its place.
Inbound: the fields forward() posts, urlencoded without attachment files and
multipart/form-data with them, as Mailgun does; the raw-MIME variant (`body-mime`) when the URL
ends in `mime`, Mailgun's own rule.

Both are signed the way Mailgun signs: `signature` = hex HMAC-SHA256, keyed with the Mailgun
webhook signing key, of `timestamp` (Unix seconds, decimal) followed by `token` (the
attempt's nonce). The signature covers only those two values, not the body: that is Mailgun's
scheme, and what receivers check. Without a signing key nothing is rendered (ValueError).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

from mxhook.model.events import us_from_iso
from mxhook.payloads import encodings, inbound
from mxhook.payloads.dialects import EventContext, InboundContext
from mxhook.payloads.dialects._fields import bot_kind, headers_by_lower_name
from mxhook.payloads.encodings import Fields, Files, Rendered, dumps
from mxhook.payloads.events import as_dict, engagement_of, is_engagement

NAME = "mailgun"
EVENTS_PER_REQUEST = 1

# mxhook event type -> (Mailgun event, severity, log-level). `registered` and `deleted` (block
# list changes) and `resubscribed` (Mailgun's unsubscribes are undone by the API, no event) have
# no Mailgun event: a mailgun endpoint is not sent them (EVENT_TYPES).
EVENTS: dict[str, tuple[str, str | None, str]] = {
    "queued": ("accepted", None, "info"),
    "succeeded": ("delivered", None, "info"),
    "deferred": ("failed", "temporary", "warn"),
    "bounced": ("failed", "permanent", "error"),
    "failed": ("failed", "permanent", "error"),
    "blocked": ("failed", "permanent", "error"),
    "opened": ("opened", None, "info"),
    "clicked": ("clicked", None, "info"),
    "unsubscribed": ("unsubscribed", None, "info"),
    "complained": ("complained", None, "warn"),
}
EVENT_TYPES = tuple(EVENTS)
# Mailgun's value for what is not known in `geolocation` and `client-info` ("Unknown" there,
# "unknown" here, as its samples write them)
UNKNOWN_PLACE, UNKNOWN_CLIENT = "Unknown", "unknown"
# The events that say who acted (ip, geolocation, client-info); `complained` comes from the
# mailbox provider's feedback loop, which does not
READER_EVENTS = ("opened", "clicked", "unsubscribed")
# `reason` of a failed event: (mxhook type, bounce_type) -> Mailgun's reason; else "generic"
REASONS: dict[tuple[str, str | None], str] = {
    ("bounced", "hard"): "bounce",
    ("blocked", None): "suppress-bounce",
}
# Without a remote reply: the code for the outcome's class (Mailgun's own 605 for suppressions)
CLASS_CODES = {"2": 250, "4": 450, "5": 550}
OUTCOME_CLASS = {None: "2", "temporary": "4", "permanent": "5"}  # by severity
SUPPRESSED_CODE = 605
SUPPRESSED_DESCRIPTION = "Not delivering to previously bounced address"
BLOCK_REASON_BOUNCE = "hard bounce"  # model/events.py: a block registered by a hard bounce

# The headers whose value Mailgun puts into user-variables and tags (the sending application's
# X-Mailgun-Variables / X-Mailgun-Tag), when the admin selected them in [milter] event_headers.
VARIABLES_HEADER = "x-mailgun-variables"
TAG_HEADER = "x-mailgun-tag"

_REPLY_CODE = re.compile(r"([2-5][0-9][0-9])(?:[ \t-]|$)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP token: a safe form-data name

MISSING_KEY = ("the mailgun dialect signs each request with Mailgun's webhook signing key: "
               "give the key the receiver checks (--signing-key)")


def check_signing_key(key: str | None) -> str | None:
    """What is wrong with `key` as a Mailgun webhook signing key, or None."""
    if not key or not key.strip():
        return MISSING_KEY
    return None


def sign(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of timestamp + token."""
    return hmac.new(signing_key.encode("utf-8"), (timestamp + token).encode("utf-8"),
                    hashlib.sha256).hexdigest()


def signature_block(ctx: EventContext | InboundContext) -> dict:
    """{timestamp, token, signature} for this attempt; ValueError without a signing key."""
    problem = check_signing_key(ctx.signing_key)
    if problem:
        raise ValueError(problem)
    timestamp = str(int(ctx.now))
    return {"timestamp": timestamp, "token": ctx.nonce,
            "signature": sign(ctx.signing_key, timestamp, ctx.nonce)}


# ---------------------------------------------------------------------------------------------
# Events

def event_request(events: list[dict], ctx: EventContext) -> Rendered:
    events = [as_dict(e) for e in events]
    if len(events) != EVENTS_PER_REQUEST:
        raise ValueError(f"mailgun posts one event per request, not {len(events)}")
    if events[0].get("type") not in EVENTS:
        raise ValueError(f"mailgun has no event for event type {events[0].get('type')!r} (an "
                         "event queued for the endpoint while it had another payload)")
    return encodings.json({"signature": signature_block(ctx),
                           "event-data": event_data(events[0], ctx.now)})


def event_data(event: dict, now: float) -> dict:
    """Mailgun's event-data for one event dict (`now`: the timestamp of a time that cannot be read)."""
    etype = event.get("type")
    name, severity, log_level = EVENTS.get(etype, (etype, None, "info"))
    data = {"event": name, "id": event.get("id"), "timestamp": _timestamp(event.get("at"), now),
            "log-level": log_level}
    if is_engagement(etype):
        return _engagement_data(event, data)
    if name == "failed":
        data["severity"] = severity
        data["reason"] = REASONS.get((etype, event.get("bounce_type")), "generic")
    if name == "accepted":
        data["method"] = "smtp"
    recipient = event.get("recipient")
    envelope = {"transport": "smtp"}
    if event.get("sender") is not None:
        envelope["sender"] = event["sender"]
    if recipient:
        envelope["targets"] = recipient
    data["envelope"] = envelope
    flags = {"is-routed": False, "is-authenticated": bool(event.get("auth_user")),
             "is-system-test": False, "is-test-mode": False}
    if name == "failed" and event.get("source") == "dsn":
        flags["is-delayed-bounce"] = True
    data["flags"] = flags
    if name in ("delivered", "failed"):
        data["delivery-status"] = _delivery_status(event, etype, severity)
    custom = headers_by_lower_name(event)
    data["message"] = {"headers": _message_headers(event, custom)}
    if recipient:
        data["recipient"] = recipient
        data["recipient-domain"] = recipient.rpartition("@")[2].lower()
    return _tagged(data, custom)


def _engagement_data(event: dict, data: dict) -> dict:
    """The rest of an engagement event's event-data, as Mailgun's opened / clicked /
    unsubscribed / complained samples have it: no envelope nor delivery-status."""
    engagement = engagement_of(event)
    recipient = event.get("recipient")
    if recipient:
        data["recipient"] = recipient
        data["recipient-domain"] = recipient.rpartition("@")[2].lower()
    if data["event"] in READER_EVENTS:
        data["ip"] = engagement["ip"] or ""
        data["geolocation"] = {"country": engagement["country"] or UNKNOWN_PLACE,
                               "region": UNKNOWN_PLACE,  # mxhook-track looks up no region
                               "city": engagement["city"] or UNKNOWN_PLACE}
        data["client-info"] = {"client-name": engagement["client"] or UNKNOWN_CLIENT,
                               "client-type": UNKNOWN_CLIENT,
                               "client-os": engagement["client_os"] or UNKNOWN_CLIENT,
                               "device-type": engagement["client_device"] or UNKNOWN_CLIENT,
                               "user-agent": engagement["user_agent"] or "",
                               "bot": bot_kind(engagement)}
        if data["event"] == "clicked":
            data["url"] = engagement["url"] or ""
    else:
        data["flags"] = {"is-test-mode": False}
    custom = headers_by_lower_name(event)
    data["message"] = {"headers": _message_headers(event, custom)}
    return _tagged(data, custom)


def _tagged(data: dict, custom: dict) -> dict:
    """`data` with Mailgun's campaigns, tags and user-variables (from the sending application's
    X-Mailgun-Tag and X-Mailgun-Variables headers)."""
    data["campaigns"] = []
    tag = custom.get(TAG_HEADER)
    data["tags"] = [tag] if tag else []
    data["user-variables"] = _user_variables(custom.get(VARIABLES_HEADER))
    return data


def _timestamp(at, now: float) -> float:
    try:
        return us_from_iso(at) / 1_000_000
    except (AttributeError, TypeError, ValueError):
        return float(now)


def _delivery_status(event: dict, etype: str, severity: str | None) -> dict:
    reply = event.get("reply") if isinstance(event.get("reply"), str) else None
    diagnostic = event.get("diagnostic")
    dsn = event.get("dsn")
    if etype == "blocked":
        reason = event.get("reason")
        described = SUPPRESSED_DESCRIPTION if reason in (None, BLOCK_REASON_BOUNCE) else \
            f"Not delivering to a blocked address ({reason})"
        status = {"code": SUPPRESSED_CODE, "message": reply or "", "description": described}
    else:
        match = _REPLY_CODE.match(reply or "")
        if match:
            code = int(match.group(1))
        else:  # the class of the status code, else of the outcome
            klass = str(dsn or "")[:1]
            code = CLASS_CODES.get(klass) or CLASS_CODES[OUTCOME_CLASS[severity]]
        status = {"code": code, "message": reply or diagnostic or "",
                  "description": diagnostic or event.get("reason") or ""}
    host = event.get("remote_host")
    if isinstance(host, str) and host:
        status["mx-host"] = host.partition("[")[0]
    if dsn:
        status["enhanced-code"] = dsn
    return status


def _message_headers(event: dict, custom: dict) -> dict:
    headers = {}
    to = custom.get("to")
    if to is not None:
        headers["to"] = to
    message_id = event.get("message_id")
    if isinstance(message_id, str) and message_id:
        headers["message-id"] = message_id.strip().removeprefix("<").removesuffix(">")
    if event.get("header_from") is not None:
        headers["from"] = event["header_from"]
    if event.get("subject") is not None:
        headers["subject"] = event["subject"]
    return headers


def _user_variables(text) -> dict:
    """The object an X-Mailgun-Variables header holds, else {} (also for NaN or Infinity, which
    strict JSON parsers refuse, and for nesting too deep to read)."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------------------------------------
# Inbound (routes' forward())

def inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> Rendered:
    signature = signature_block(ctx)
    if delivery.target.url.endswith("mime"):
        return _mime_request(delivery, signature)
    doc = ctx.native_document(delivery)
    msg = doc["message"]

    def parts(doc: dict) -> tuple[Fields, Files]:
        return forward_parts(delivery, doc, signature)

    if not any(att.get("content") is not None for att in msg["attachments"]):
        return encodings.form_urlencoded(dict(parts(doc)[0]))  # as Mailgun: no files, no multipart
    return encodings.multipart_capped(doc, ctx.max_payload_size, parts=parts,
                                      attachments=msg["attachments"], defects=msg["defects"])


def canonical_name(name: str) -> str:
    """A header name as Mailgun writes it (`Message-Id`, `Mime-Version`): each hyphen-separated
    word capitalized; a name that is not an HTTP token stays as it is."""
    if not _TOKEN.match(name):
        return name
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def forward_parts(delivery: inbound.Delivery, doc: dict, signature: dict) -> tuple[Fields, Files]:
    """The forward() fields and attachment files of a native document. Attachments whose
    content is omitted are left out, so `attachment-1..attachment-count` are all there."""
    msg = doc["message"]
    headers = [(canonical_name(h["name"]), h["value"]) for h in msg["headers"]]
    fields: Fields = [
        ("recipient", ", ".join(delivery.recipients)),
        ("sender", delivery.message.mail_from or ""),
        ("from", _first_header(msg["headers"], "from")),
        ("subject", msg["subject"] or ""),
        ("body-plain", msg["text"] or ""),
        ("stripped-text", msg["stripped_text"]),
        ("stripped-signature", msg["stripped_signature"]),
    ]
    if msg["html"]:
        fields.append(("body-html", msg["html"]))
    if msg["stripped_html"]:  # absent, as with Mailgun, when the quote could not be cut safely
        fields.append(("stripped-html", msg["stripped_html"]))
    files: Files = []
    cid_map = {}
    for att in msg["attachments"]:
        if att.get("content") is None:
            continue
        name = f"attachment-{len(files) + 1}"
        files.append((name, att.get("filename") or name, att["content_type"],
                      base64.b64decode(att["content"])))
        if att.get("content_id"):
            cid_map[f"<{att['content_id']}>"] = name
    fields += [
        ("message-headers", dumps([list(h) for h in headers])),
        ("attachment-count", str(len(files))),
        ("content-id-map", dumps(cid_map)),
        ("timestamp", signature["timestamp"]),
        ("token", signature["token"]),
        ("signature", signature["signature"]),
    ]
    # Mailgun also posts every MIME header as a field of its own: the first value of each name.
    # Its names are capitalized, the fields above are lower case: they never collide.
    seen = set()
    for name, value in headers:
        if name not in seen and _TOKEN.match(name):
            seen.add(name)
            fields.append((name, value))
    return fields, files


def _first_header(headers: list[dict], lower_name: str) -> str:
    return next((h["value"] for h in headers if h["name"].lower() == lower_name), "")


def _mime_request(delivery: inbound.Delivery, signature: dict) -> Rendered:
    """The raw-MIME variant: the message as it came in `body-mime` (text: bytes that are not
    UTF-8 become U+FFFD, as a form field cannot carry them); `from` and `subject` as the
    inbound log shows them (the milter's reading), so the message is not parsed."""
    fields: Fields = [
        ("recipient", ", ".join(delivery.recipients)),
        ("sender", delivery.message.mail_from or ""),
        ("from", delivery.message.header_from or ""),
        ("subject", delivery.message.subject or ""),
        ("body-mime", delivery.raw.decode("utf-8", "replace")),
        ("timestamp", signature["timestamp"]),
        ("token", signature["token"]),
        ("signature", signature["signature"]),
    ]
    return encodings.multipart(fields, [])
