"""Postmark: the Delivery, Bounce, SpamComplaint, Open, Click and SubscriptionChange webhooks
(one JSON record per request) and the inbound webhook (one JSON document per message). Pure. docs/payloads.md "Dialect:
postmark" has the field-by-field mapping.
"""
from __future__ import annotations

import hashlib

from mxhook.model.recipients import DEFAULT_RECIPIENT_DELIMITER, split_recipient
from mxhook.model.events import iso_from_us, is_stored_time, us_from_iso
from mxhook.payloads import encodings, inbound
from mxhook.payloads.dialects import EventContext, InboundContext
from mxhook.payloads.encodings import Rendered
from mxhook.payloads.dialects._fields import headers_by_lower_name
from mxhook.payloads.events import as_dict, engagement_of

NAME = "postmark"
EVENTS_PER_REQUEST = 1  # Postmark posts one record per request

# mxhook event type -> Postmark RecordType. Postmark has no webhook for a message accepted
# (`queued`) or for mail refused because the address is suppressed (`blocked`: Postmark's API
# answers such a send with an error instead); endpoints in this dialect are not sent those.
RECORD_TYPES = {
    "succeeded": "Delivery",
    "deferred": "Bounce",  # Postmark's Transient bounce: delayed, will be retried
    "bounced": "Bounce",
    "failed": "Bounce",
    "registered": "SubscriptionChange",
    "deleted": "SubscriptionChange",
    "opened": "Open",
    "clicked": "Click",
    "unsubscribed": "SubscriptionChange",  # by the recipient: SuppressSending true
    "resubscribed": "SubscriptionChange",  # SuppressSending false
    "complained": "SpamComplaint",
}
EVENT_TYPES = frozenset(RECORD_TYPES)
# Postmark's spam complaint: a bounce record of this type (TypeCode, Name, Description)
SPAM_COMPLAINT = ("SpamComplaint", 512, "Spam complaint",
                  "The subscriber explicitly marked this email as spam.")
# Open and Click `Platform` by words of engagement.client_device; else "Unknown"
PLATFORMS = (("Mobile", ("mobile", "phone", "tablet")), ("Desktop", ("desktop", "pc", "computer")),
             ("WebMail", ("webmail", "browser")))
# Where a clicked link was: the tracking rewriter rewrites links of the HTML part
CLICK_LOCATION = "HTML"

# Postmark's bounce types used here: Type -> (TypeCode, Name, Description)
BOUNCE_TYPES = {
    "HardBounce": (1, "Hard bounce", "The address does not exist or is not valid (unknown user, "
                   "no such mailbox or domain)."),
    "Transient": (2, "Message delayed", "The receiving server could not take the message for now; "
                  "delivery will be tried again."),
    "DnsError": (256, "DNS error", "The recipient's domain could not be resolved for now."),
    "SoftBounce": (4096, "Soft bounce/Undeliverable", "The message could not be delivered, for a "
                   "reason other than the address (mailbox full, message too large, remote "
                   "trouble, retries given up)."),
    "Blocked": (100006, "ISP block", "The receiving server refused the message for policy, "
                "reputation or content reasons."),
    "DMARCPolicy": (100009, "DMARC Policy", "The receiving server refused the message because of "
                    "the sender domain's DMARC policy."),
}
# Which bounce type an event is: an exact enhanced status code first, then its class.subject
# prefix; failing both, by event type and mxhook's hard/soft classification.
TYPE_BY_DSN = {"5.7.26": "DMARCPolicy", "4.7.26": "DMARCPolicy", "4.4.3": "DnsError", "5.4.3": "DnsError"}
TYPE_BY_PREFIX = {"5.7.": "Blocked"}  # only for bounces that are not hard
TYPE_BY_EVENT = {("deferred", None): "Transient", ("failed", None): "SoftBounce",
                 ("bounced", "hard"): "HardBounce", ("bounced", "soft"): "SoftBounce",
                 ("bounced", None): "SoftBounce"}

# Postmark's SMTP headers for what its API takes as fields: the admin selects them as event
# headers (`custom_headers`, names in any case) to get Tag, Metadata and MessageStream back.
TAG_HEADER = "x-pm-tag"
STREAM_HEADER = "x-pm-message-stream"
METADATA_PREFIX = "x-pm-metadata-"
DEFAULT_STREAM = "outbound"
INBOUND_STREAM = "inbound"
# `registered` by a hard bounce (the spooler's, source log/dsn) or by the admin (CLI, API)
HARD_BOUNCE_SOURCES = ("log", "dsn")


# ---------------------------------------------------------------------------------------------
# Events

def event_request(events: list[dict], ctx: EventContext) -> Rendered:
    """The one record of a request (EVENTS_PER_REQUEST = 1). ValueError for an event type
    outside EVENT_TYPES: the pipeline sends this dialect only those."""
    events = list(events)
    if len(events) != 1:
        raise ValueError(f"postmark posts one event per request, not {len(events)}")
    return encodings.json(record(as_dict(events[0]), ctx))


def record(event: dict, ctx: EventContext) -> dict:
    etype = event.get("type")
    kind = RECORD_TYPES.get(etype)
    if kind is None:
        raise ValueError(f"postmark has no record type for event type {etype!r} (an event "
                         "queued for the endpoint while it had another payload)")
    headers = headers_by_lower_name(event)
    common = {
        "RecordType": kind,
        "ServerID": ctx.endpoint_id or 0,
        "MessageStream": _header(headers, STREAM_HEADER) or DEFAULT_STREAM,
    }
    when = _iso(event.get("at"), ctx.now)
    recipient = event.get("orig_recipient") or event.get("recipient") or ""
    message_id = (event.get("message_id") or "").strip().strip("<>")
    tag = _header(headers, TAG_HEADER)
    metadata = _metadata(event.get("custom_headers"))
    details = event.get("reply") or event.get("diagnostic") or ""
    if kind == "Delivery":
        return {**common, "MessageID": message_id, "Recipient": recipient, "Tag": tag,
                "DeliveredAt": when, "Details": details, "Metadata": metadata}
    if kind in ("Bounce", "SpamComplaint"):
        if kind == "Bounce":
            btype = bounce_type(event)
            code, name, description = BOUNCE_TYPES[btype]
            inactive, can_activate = btype == "HardBounce", True
        else:  # Postmark deactivates the address and lets only the recipient reactivate it
            btype, code, name, description = SPAM_COMPLAINT
            inactive, can_activate = True, False
        return {**common, "ID": numeric_id(event.get("id") or ""), "Type": btype, "TypeCode": code,
                "Name": name, "Tag": tag, "MessageID": message_id, "Description": description,
                "Details": details, "Email": recipient,
                "From": event.get("header_from") or event.get("sender") or "",
                "BouncedAt": when, "DumpAvailable": False, "Inactive": inactive,
                "CanActivate": can_activate, "Subject": event.get("subject") or "", "Metadata": metadata}
    if kind in ("Open", "Click"):
        return _reader_record(kind, event, common, engagement_of(event), message_id=message_id,
                              recipient=recipient, tag=tag, metadata=metadata, when=when)
    if etype in ("unsubscribed", "resubscribed"):
        unsubscribed = etype == "unsubscribed"
        return {**common, "MessageID": message_id or None, "ChangedAt": when, "Recipient": recipient,
                "Origin": "Recipient", "SuppressSending": unsubscribed,
                "SuppressionReason": "ManualSuppression" if unsubscribed else None,
                "Tag": tag, "Metadata": metadata}
    registered = etype == "registered"
    by_bounce = registered and event.get("source") in HARD_BOUNCE_SOURCES
    # Postmark's MessageID is null for a change no message caused (the admin's)
    return {**common, "MessageID": (message_id or None) if by_bounce else None, "ChangedAt": when,
            "Recipient": recipient, "Origin": "Recipient" if by_bounce else "Customer",
            "SuppressSending": registered,
            "SuppressionReason": ("HardBounce" if by_bounce else "ManualSuppression") if registered else None,
            "Tag": tag, "Metadata": metadata}


def _reader_record(kind: str, event: dict, common: dict, engagement: dict, *, message_id: str,
                   recipient: str, tag: str, metadata: dict, when: str) -> dict:
    """An Open or Click record, in the order of Postmark's samples (they carry no ServerID).
    mxhook does not know which open is the first (FirstOpen false) nor how long the message
    was read (ReadSeconds 0); the GeoIP lookup gives a country code and a city, no names of
    countries and regions, no postcode nor coordinates ("")."""
    record = {"RecordType": kind, "MessageStream": common["MessageStream"], "Metadata": metadata}
    if kind == "Open":
        record["FirstOpen"] = False
    else:
        record["ClickLocation"] = CLICK_LOCATION
    record["Client"] = _software(engagement["client"])
    record["OS"] = _software(engagement["client_os"])
    record["Platform"] = _platform(engagement["client_device"])
    record["UserAgent"] = engagement["user_agent"] or ""
    if kind == "Open":
        record["ReadSeconds"] = 0
    else:
        record["OriginalLink"] = engagement["url"] or ""
    record["Geo"] = {"CountryISOCode": engagement["country"] or "", "Country": "",
                     "RegionISOCode": "", "Region": "", "City": engagement["city"] or "",
                     "Zip": "", "Coords": "", "IP": engagement["ip"] or ""}
    record.update(MessageID=message_id, ReceivedAt=when, Tag=tag, Recipient=recipient)
    return record


def _software(name: str | None) -> dict:
    """Postmark's Client / OS object: the parsed name; its family and company are not known."""
    return {"Name": name or "", "Company": "", "Family": ""}


def _platform(device: str | None) -> str:
    device = (device or "").lower()
    return next((name for name, words in PLATFORMS if any(w in device for w in words)), "Unknown")


def bounce_type(event: dict) -> str:
    dsn = event.get("dsn") or ""
    if dsn in TYPE_BY_DSN:
        return TYPE_BY_DSN[dsn]
    hard = event.get("bounce_type") == "hard"
    if not hard:
        for prefix, btype in TYPE_BY_PREFIX.items():
            if dsn.startswith(prefix) and event.get("type") == "bounced":
                return btype
    return TYPE_BY_EVENT.get((event.get("type"), event.get("bounce_type")), "SoftBounce")


def numeric_id(event_id: str) -> int:
    """Postmark's bounce ID is a number: 63 bits of a hash of the event id (stable, as the event
    id is)."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _metadata(headers) -> dict:
    """Postmark's Metadata from the X-PM-Metadata-* headers (the prefix in any case), each
    named by the rest of its header name as configured."""
    if not isinstance(headers, dict):
        return {}
    return {k[len(METADATA_PREFIX):]: str(v) for k, v in headers.items()
            if isinstance(k, str) and len(k) > len(METADATA_PREFIX)
            and k[:len(METADATA_PREFIX)].lower() == METADATA_PREFIX}


def _header(headers: dict, name: str) -> str:
    value = headers.get(name)
    return value if isinstance(value, str) else ""


def _iso(at, now: float) -> str:
    """'2026-11-22T12:00:00.123456Z' (Postmark's form: ISO 8601, UTC); the attempt's time for
    one that is not a time (never raises: a broken event still goes out)."""
    if is_stored_time(at):
        return at
    try:
        return iso_from_us(us_from_iso(at))
    except (AttributeError, TypeError, ValueError):
        return iso_from_us(int(now * 1_000_000))


# ---------------------------------------------------------------------------------------------
# Inbound

def inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> Rendered:
    """Postmark's inbound JSON, under ctx.max_payload_size by omitting attachment contents
    (largest first), as the native format does."""
    doc = ctx.native_document(delivery)
    msg = doc["message"]
    first: dict[str, str] = {}
    for h in msg["headers"]:
        first.setdefault(h["name"].lower(), h["value"])
    delimiters = delivery.message.recipient_delimiter
    to, cc = _people(msg["to"], delimiters), _people(msg["cc"], delimiters)
    listed = {p["Email"].lower() for p in to + cc}
    bcc = [_person("", r, delimiters) for r in delivery.recipients if r.lower() not in listed]
    original = delivery.recipients[0] if delivery.recipients else ""
    sender = msg["from"][0] if msg["from"] else {"name": "", "address": ""}
    from_full = _person(sender["name"], sender["address"], delimiters)
    attachments = [_attachment(a) for a in msg["attachments"]]
    body = {
        "FromName": from_full["Name"],
        "MessageStream": INBOUND_STREAM,
        "From": from_full["Email"],
        "FromFull": from_full,
        "To": first.get("to", ""),
        "ToFull": to,
        "Cc": first.get("cc", ""),
        "CcFull": cc,
        "Bcc": ", ".join(p["Email"] for p in bcc),
        "BccFull": bcc,
        "OriginalRecipient": original,
        "Subject": msg["subject"] or "",
        "MessageID": delivery.id,
        "ReplyTo": ", ".join(a["address"] for a in msg["reply_to"]),
        "MailboxHash": mailbox_hash(original, delimiters),
        "Date": msg["date"] or "",
        "TextBody": msg["text"],
        "HtmlBody": msg["html"],
        "StrippedTextReply": msg["stripped_text"],
        "Tag": "",
        "Headers": [{"Name": h["name"], "Value": h["value"]} for h in msg["headers"]],
        "Attachments": attachments,
    }
    rendered = encodings.json(body)
    if len(rendered.body) <= ctx.max_payload_size:
        return rendered
    # json_capped knows the native attachment shape: cap in it (`content` is as long as
    # `Content`), then write the entries in Postmark's shape again
    for entry in attachments:
        entry["content"] = entry.pop("Content")
    numbered = [(entry, str(i)) for i, entry in enumerate(attachments)]
    encodings.json_capped(body, ctx.max_payload_size, attachments=attachments, defects=[],
                          on_omit=inbound.url_on_omit(ctx.fetch_url(delivery), numbered))
    body["Attachments"] = [
        _attachment({**att, "content": None, "omitted": True, "omitted_reason": entry["omitted_reason"],
                     "url": entry.get("url")})
        if entry.get("omitted") else _attachment(att)
        for entry, att in zip(attachments, msg["attachments"])]
    return encodings.json(body)


def mailbox_hash(address: str, delimiters: str = DEFAULT_RECIPIENT_DELIMITER) -> str:
    """The address's tag ('in+ticket-42@x' -> 'ticket-42': envelope.split_recipient, with the
    `[milter] recipient_delimiter` the message was accepted under), as Postmark's inbound
    addresses carry it; '' without one."""
    return split_recipient(address, delimiters)[1] or ""


def _person(name: str, address: str, delimiters: str) -> dict:
    return {"Email": address, "Name": name or "", "MailboxHash": mailbox_hash(address, delimiters)}


def _people(mailboxes: list[dict], delimiters: str) -> list[dict]:
    return [_person(m["name"], m["address"], delimiters) for m in mailboxes]


def _attachment(att: dict) -> dict:
    """A native attachment as Postmark's: an omitted content is "" with the native marker (and
    `Url`, the native `url`, when it can be fetched)."""
    entry = {"Name": att.get("filename") or "", "Content": att.get("content") or "",
             "ContentType": att["content_type"], "ContentLength": att["size"],
             "ContentID": att.get("content_id") or ""}
    if att.get("omitted"):
        entry.update(Omitted=True, OmittedReason=att.get("omitted_reason") or "")
        if att.get("url"):
            entry["Url"] = att["url"]
    return entry
