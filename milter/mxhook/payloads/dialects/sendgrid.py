"""SendGrid: the Event Webhook (a JSON array of events) and Inbound Parse (multipart/form-data,
parsed or raw). Pure. docs/payloads.md "Dialect: sendgrid" has the field-by-field mapping.

Inbound Parse has two settings in SendGrid ("post the raw, full MIME message" on or off); here
they are two dialect names: `sendgrid` (parsed fields and attachment files) and `sendgrid-raw`
(the message as the `email` field). Both names share this module's event side.
"""
from __future__ import annotations

import base64
import json

from mxhook.model.events import is_stored_time, us_from_iso
from mxhook.model.headers import decode_field, to_text
from mxhook.model.message import header_section, split_headers
from mxhook.payloads import encodings, inbound
from mxhook.payloads.dialects import EventContext, InboundContext
from mxhook.payloads.dialects._fields import bot_kind, headers_by_lower_name
from mxhook.payloads.encodings import Fields, Files, Rendered
from mxhook.payloads.events import as_dict, engagement_of

NAME = "sendgrid"
RAW_NAME = "sendgrid-raw"
EVENTS_PER_REQUEST = None  # SendGrid posts batches: the endpoint's batch size applies

# mxhook event type -> SendGrid delivery event. No SendGrid event stands for a block list change
# (`registered`, `deleted`): those are left out of the array.
EVENTS = {
    "queued": "processed",
    "succeeded": "delivered",
    "deferred": "deferred",
    "bounced": "bounce",
    "failed": "bounce",  # Postfix gave up on a temporary failure: SendGrid's final word is a bounce
    "blocked": "dropped",  # not sent: the address is suppressed
    "opened": "open",
    "clicked": "click",
    "unsubscribed": "unsubscribe",
    "complained": "spamreport",
}
# `resubscribed` is left out too: SendGrid's resubscribe is `group_resubscribe`, back into an
# unsubscribe group (asm_group_id); mxhook's suppressions are per sending domain, not groups.
EVENT_TYPES = frozenset(EVENTS)
# open and click events: who fetched (SendGrid's `useragent`, `ip`); a click's link
# (`url`, `url_offset`: index in the HTML part); an open's `sg_machine_open`: true for an Apple
# Mail Privacy Protection fetch, as SendGrid flags them (other machine verdicts: false)
READER_KINDS = ("open", "click")
# `bounce` events: `type` is `bounce` when the address is bad (mxhook's hard bounce), `blocked`
# when the receiving server refused the message for another reason (soft bounce, expiry).
BOUNCE_KIND = {"hard": "bounce"}
BLOCKED_KIND = "blocked"
# SendGrid's `bounce_classification` by enhanced status code (most specific prefix first); a
# hard bounce is always "Invalid Address".
CLASSIFICATIONS = (
    ("5.2.2", "Mailbox Unavailable"), ("4.2.2", "Mailbox Unavailable"), ("5.2.1", "Mailbox Unavailable"),
    ("5.6.", "Content"), ("5.3.", "Technical"), ("5.4.", "Technical"), ("4.4.", "Technical"),
    ("4.3.", "Technical"),
)
HARD_CLASSIFICATION = "Invalid Address"
DEFAULT_CLASSIFICATION = "Unclassified"
# `dropped`: SendGrid's reason for mail to a suppressed address, and its fixed status
DROP_REASON = "Bounced Address"
DROP_STATUS = "5.0.0"
# The header SendGrid's SMTP API reads (`category`, `unique_args`): when the admin selects it as
# an event header (`custom_headers`), applications migrating from SendGrid's SMTP relay get their
# categories and unique arguments back as SendGrid posts them.
SMTPAPI_HEADER = "x-smtpapi"
# Every text field is posted as UTF-8, whatever the message's charsets were (normalize decodes)
CHARSETS = encodings.dumps({name: "UTF-8" for name in ("to", "from", "cc", "subject", "text", "html")})


# ---------------------------------------------------------------------------------------------
# Event Webhook

def event_request(events: list[dict], ctx: EventContext) -> Rendered:
    """The Event Webhook body: a JSON array of the events SendGrid has a name for, in order."""
    out = [sendgrid_event(e, ctx) for e in map(as_dict, events) if e.get("type") in EVENTS]
    return Rendered(encodings.utf8(encodings.dumps(out)), "application/json")


def sendgrid_event(event: dict, ctx: EventContext) -> dict:
    kind = EVENTS[event["type"]]
    out = {
        "email": event.get("orig_recipient") or event.get("recipient") or "",
        "timestamp": _unix(event.get("at"), ctx.now),
        "event": kind,
        "smtp-id": event.get("message_id") or "",
        "sg_event_id": event.get("id") or "",
    }
    if event.get("queue_id"):  # none for an asynchronous bounce, as with SendGrid
        out["sg_message_id"] = event["queue_id"]
    category = _smtpapi(event).get("category")
    if isinstance(category, (str, list)):
        out["category"] = category
    answer = event.get("reply") or event.get("diagnostic") or ""
    if kind in ("delivered", "deferred"):
        out["response"] = answer
        if kind == "deferred" and event.get("attempt") is not None:
            out["attempt"] = str(event["attempt"])
    elif kind == "bounce":
        out.update(reason=answer, status=event.get("dsn") or "",
                   type=BOUNCE_KIND.get(event.get("bounce_type"), BLOCKED_KIND),
                   bounce_classification=classification(event))
    elif kind == "dropped":
        out.update(reason=DROP_REASON, status=DROP_STATUS)
    elif kind in READER_KINDS:
        engagement = engagement_of(event)
        out.update(useragent=engagement["user_agent"] or "", ip=engagement["ip"] or "")
        if kind == "open":
            out["sg_machine_open"] = bot_kind(engagement) == "apple"
        else:
            out["url"] = engagement["url"] or ""
            if engagement["link"] is not None:
                out["url_offset"] = {"index": engagement["link"], "type": "html"}
    for key, value in _smtpapi_args(event).items():  # SendGrid's own keys win a clash
        out.setdefault(key, value)
    return out


def classification(event: dict) -> str:
    if event.get("type") == "bounced" and event.get("bounce_type") == "hard":
        return HARD_CLASSIFICATION
    dsn = event.get("dsn") or ""
    return next((name for prefix, name in CLASSIFICATIONS if dsn.startswith(prefix)), DEFAULT_CLASSIFICATION)


def _unix(at, now: float) -> int:
    """Unix seconds of a stored time; the attempt's time for one that is not a time (never
    raises: a broken event still goes out)."""
    if is_stored_time(at):
        at = at[:-1] + "+00:00"
    try:
        return us_from_iso(at) // 1_000_000
    except (AttributeError, TypeError, ValueError):
        return int(now)


def _smtpapi(event: dict) -> dict:
    text = headers_by_lower_name(event).get(SMTPAPI_HEADER)
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _smtpapi_args(event: dict) -> dict:
    args = _smtpapi(event).get("unique_args")
    if not isinstance(args, dict):
        return {}
    return {str(k): v if isinstance(v, str) else encodings.dumps(v) for k, v in args.items()}


# ---------------------------------------------------------------------------------------------
# Inbound Parse

def inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> Rendered:
    """Inbound Parse with the parsed fields: text fields, then one file part per attachment,
    under ctx.max_payload_size by leaving out attachment files (largest first)."""
    doc = ctx.native_document(delivery)
    msg = doc["message"]
    first = _first_values((h["name"], h["value"]) for h in msg["headers"])
    fields = [("headers", _header_text(delivery.raw))]
    fields += _common_fields(delivery, first)
    fields += [("text", msg["text"]), ("html", msg["html"])]
    parsed = {"fields": fields, "attachments": msg["attachments"]}
    return encodings.multipart_capped(parsed, ctx.max_payload_size, parts=parsed_parts,
                                      attachments=msg["attachments"], defects=msg["defects"],
                                      boundary=encodings.seeded_boundary(delivery.id, *parsed_parts(parsed)),
                                      on_omit=inbound.url_on_omit(ctx.fetch_url(delivery),
                                                                  inbound.numbered_contents(doc)))


def raw_inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> Rendered:
    """Inbound Parse with "post the raw, full MIME message": the message as the `email` field.
    Nothing is read from the body, so no size cap applies (as with the native `raw`)."""
    header_fields, _ = split_headers(delivery.raw)
    first = _first_values((name, _utf8_safe(decode_field(name, value))) for name, value in header_fields)
    fields = [f for f in _common_fields(delivery, first) if f[0] != "cc"]  # raw has no `cc`
    fields.insert(1, ("email", to_text(delivery.raw)))
    return encodings.multipart(fields, [], boundary=encodings.seeded_boundary(delivery.id, fields, []))


def _first_values(headers) -> dict:
    """Lower-case name -> the decoded value of its first field."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    return first


def _utf8_safe(text: str) -> str:
    """`text` with lone surrogates (an encoded word in UTF-7 can decode to one) as U+FFFD,
    as every body's text is written (encodings.utf8)."""
    return encodings.utf8(text).decode("utf-8")


def _header_text(raw: bytes) -> str:
    """The header section as it came (SendGrid's `headers`)."""
    _, body_start, _ = header_section(raw)
    return to_text(raw[:body_start]).rstrip("\r\n") + "\n"


def _common_fields(delivery: inbound.Delivery, first: dict) -> Fields:
    """The fields both variants have, in SendGrid's order."""
    message = delivery.message
    envelope = {"to": list(delivery.recipients), "from": message.mail_from or ""}
    return [
        ("dkim", dkim_field(message.authentication)),
        ("to", first.get("to", "")),
        ("from", first.get("from", "")),
        ("cc", first.get("cc", "")),
        ("subject", first.get("subject", "")),
        ("sender_ip", message.client_addr or ""),
        ("envelope", encodings.dumps(envelope)),
        ("charsets", CHARSETS),
        ("SPF", message.authentication["spf"]["result"] if message.authentication else ""),
    ]


def dkim_field(authentication: dict | None) -> str:
    """SendGrid's `dkim`: `{@domain : result}` per signature (`{@a : pass, @b : fail}`),
    `none` for an unsigned message, "" without verdicts."""
    if not authentication:
        return ""
    signatures = authentication.get("dkim") or []
    if not signatures:
        return "none"
    return "{" + ", ".join(f"@{d['domain']} : {d['result']}" for d in signatures) + "}"


def parsed_parts(parsed: dict) -> tuple[Fields, Files]:
    """Fields and attachment files of the parsed variant as it stands (multipart_capped calls
    this again after it omitted attachment contents). `attachmentN` is the N-th attachment; one
    whose content was omitted has no file part and is marked in `attachment-info` (with the
    native `url` when it can be fetched)."""
    fields = list(parsed["fields"])
    files: Files = []
    info = {}
    content_ids = {}
    for i, att in enumerate(parsed["attachments"], 1):
        name = f"attachment{i}"
        filename = att.get("filename") or name
        entry = {"filename": filename, "name": filename, "type": att["content_type"]}
        if att.get("content_id"):
            entry["content-id"] = att["content_id"]
            content_ids[att["content_id"]] = name
        if att.get("content") is None:
            entry.update(omitted=True, omitted_reason=att.get("omitted_reason") or "")
            if att.get("url"):
                entry["url"] = att["url"]
        else:
            files.append((name, filename, att["content_type"], base64.b64decode(att["content"])))
        info[name] = entry
    fields.append(("attachments", str(len(info))))
    if info:
        fields.append(("attachment-info", encodings.dumps(info)))
    if content_ids:
        fields.append(("content-ids", encodings.dumps(content_ids)))
    return fields, files


# The inbound dialect names this module answers for (the registry's entries): SendGrid's one
# setting, "post the raw, full MIME message", is a second name.
INBOUND_DIALECTS = {NAME: inbound_request, RAW_NAME: raw_inbound_request}
