"""What goes into an inbound delivery's payload, as plain data. Pure.

From typed inputs (`Delivery`: the delivery id, the spool record's `InboundRecord`, the
message bytes, the `Target` it goes to, the recipients it matched) this builds:
- `native_document`: the native inbound document (the `json` format, and the `multipart` one
  through `form_parts`);
- `raw_document`: the envelope as header fields and the message bytes (the `raw` format).

How a document becomes bytes is payloads/encodings.py; which names pick which pair is
payloads/registry.py. The field-by-field reference is docs/payloads.md.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Callable

from mxhook.model import replies
from mxhook.model.recipients import recipient_tag
from mxhook.model.fetchurls import RAW, FetchUrls
from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE, normalize
from mxhook.model.records import InboundRecord, to_datetime
from mxhook.model.targets import Target
from mxhook.payloads.encodings import Fields, Files, dumps

SCHEMA_TYPE = "inbound"
# The message fields that go into payloads, in this order (normalize() also returns text_parts /
# html_parts, which would only double the size of the payload).
MESSAGE_FIELDS = (
    "headers", "from", "to", "cc", "reply_to", "subject", "message_id", "date", "date_iso",
    "in_reply_to", "references", "text", "html", "stripped_text", "stripped_signature",
    "stripped_html", "attachments", "size", "defects",
)
# C0 controls (CR, LF, NUL, ...), DEL, and what str.splitlines() also takes for a line end
_UNSAFE_HEADER_CHARS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True)
class Delivery:
    """One inbound delivery (one message, one rule) as a payload sees it."""

    id: str
    message: InboundRecord  # the spool record's metadata: envelope, received, deliveries
    raw: bytes  # the message as it came
    target: Target
    recipients: tuple[str, ...]  # the envelope recipients this rule matched
    include_raw: bool = False  # the rule's --include-raw, as its spool record holds it
    message_id: str | None = None  # state.db's stored message (fetch URLs name it)

    @classmethod
    def of(cls, *, delivery_id: str, meta: dict, raw: bytes, target: Target,
           recipients=None, message_id: str | None = None) -> "Delivery":
        """`meta`: the spool record's (RecordError when it is not an inbound record's).
        `recipients` None: the ones its deliveries list for the target's rule name."""
        message = InboundRecord.from_meta(meta)
        routed = next((d for d in message.deliveries if d.name == target.name), None)
        if recipients is None:
            recipients = routed.recipients if routed else ()
        return cls(delivery_id, message, raw, target, tuple(recipients),
                   include_raw=bool(routed and routed.target.get("include_raw")),
                   message_id=message_id)


# part ("raw" or an attachment's index as text) -> the URL its content can be fetched from
FetchUrl = Callable[[str], str]


def fetch_url_maker(delivery: Delivery, urls: FetchUrls | None, now: float) -> FetchUrl | None:
    """The fetch URLs of this delivery's omitted contents, or None (no [web] public_url, or a
    delivery not read from state.db, whose message no URL could name)."""
    if urls is None or not delivery.message_id:
        return None
    received = delivery.message.received
    received_at = to_datetime(received).timestamp() if received is not None else None
    return lambda part: urls.url(delivery.message_id, part, now=now, received=received_at)


def native_document(delivery: Delivery, *, max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                    fetch_url: FetchUrl | None = None) -> dict:
    """The native inbound document (before any payload size cap), as JSON-able data. An
    attachment (or the raw message) whose content max_attachment_size omitted gets `url`
    from `fetch_url` when there is one."""
    msg = normalize(delivery.raw, max_attachment_size=max_attachment_size)
    if fetch_url is not None:
        for index, att in enumerate(msg["attachments"]):
            if att.get("omitted"):
                att["url"] = fetch_url(str(index))
    reply = replies.strip(msg["text"], msg["html"])
    msg.update(stripped_text=reply.text, stripped_signature=reply.signature, stripped_html=reply.html)
    message = delivery.message
    doc = {
        "id": delivery.id,
        "type": SCHEMA_TYPE,
        "received": message.received,
        "rule": delivery.target.name,
        "envelope": {
            "mail_from": message.mail_from,
            "recipients": list(delivery.recipients),
            "recipient_tag": recipient_tag(delivery.recipients, message.recipient_delimiter),
            "client_addr": message.client_addr,
            "client_name": message.client_name,
            "helo": message.helo,
            "queue_id": message.queue_id,
        },
        "message": {k: msg[k] for k in MESSAGE_FIELDS},
    }
    if message.authentication is not None:  # [authentication] mode verify or upstream
        doc["authentication"] = message.authentication
    if delivery.target.api_key:
        doc["api_key"] = delivery.target.api_key
    if delivery.include_raw:
        doc["raw"] = raw_entry(delivery.raw, max_attachment_size)
        if fetch_url is not None and doc["raw"].get("omitted"):
            doc["raw"]["url"] = fetch_url(RAW)
    return doc


def raw_entry(raw: bytes, max_attachment_size: int) -> dict:
    """The message as it came (`--include-raw`), shaped as an attachment so the size caps treat
    it as one: over max_attachment_size its content is omitted, and under max_payload_size it
    is the first content to go (`capped_contents`)."""
    entry = {"filename": "message.eml", "content_type": "message/rfc822", "size": len(raw),
             "content": base64.b64encode(raw).decode("ascii")}
    if len(raw) > max_attachment_size:
        entry.update(content=None, omitted=True, omitted_reason=f"size {len(raw)} bytes exceeds "
                                                                 f"max_attachment_size {max_attachment_size}")
    return entry


def url_on_omit(fetch_url: FetchUrl | None, numbered: list[tuple[dict, str]]):
    """What the payload size cap calls on an entry it omits (encodings.OnOmit): gives it `url`.
    `numbered`: (entry, part) pairs, the part as `native_document` numbers it. None without
    fetch URLs."""
    if fetch_url is None:
        return None
    parts = {id(entry): part for entry, part in numbered}

    def give_url(entry: dict) -> None:
        part = parts.get(id(entry))
        if part is not None:
            entry["url"] = fetch_url(part)

    return give_url


def numbered_contents(doc: dict) -> list[tuple[dict, str]]:
    """(entry, part) for the raw message and each attachment of a native document."""
    return ([(doc["raw"], RAW)] if "raw" in doc else []) + [
        (att, str(i)) for i, att in enumerate(doc["message"]["attachments"])]


def capped_contents(doc: dict) -> list[dict]:
    """The entries whose contents the payload size cap may omit, largest first: the raw
    message (it holds every attachment again, so it is the largest) and the attachments."""
    return ([doc["raw"]] if "raw" in doc else []) + doc["message"]["attachments"]


def form_parts(doc: dict) -> tuple[Fields, Files]:
    """The native document as form-data (fields, files): scalar fields as text, objects and
    arrays as JSON text, each attachment's content as a file part. Attachment metadata gets
    `field`: the name of its file part, or null when its content was omitted."""
    msg = doc["message"]
    fields: Fields = []

    def add(name: str, value) -> None:
        if value is None:
            value = ""
        elif isinstance(value, (dict, list)):
            value = dumps(value)
        fields.append((name, str(value)))

    for key in ("id", "type", "received", "rule"):
        add(key, doc.get(key))
    if "api_key" in doc:
        add("api_key", doc["api_key"])
    add("envelope", doc["envelope"])
    if "authentication" in doc:
        add("authentication", doc["authentication"])
    files: Files = []
    meta = []
    for i, att in enumerate(msg["attachments"], 1):
        entry = {k: v for k, v in att.items() if k != "content"}
        if att.get("content") is not None:
            name = f"attachment-{i}"
            entry["field"] = name
            filename = att.get("filename") or name
            files.append((name, filename, att["content_type"], base64.b64decode(att["content"])))
        else:
            entry["field"] = None
        meta.append(entry)
    for key in MESSAGE_FIELDS:
        add(key, meta if key == "attachments" else msg[key])
    add("attachment-count", len(meta))
    raw = doc.get("raw")
    if raw is not None:  # the raw message as the file part `raw-message`, its metadata as `raw`
        entry = {k: v for k, v in raw.items() if k != "content"}
        entry["field"] = "raw-message" if raw.get("content") is not None else None
        if entry["field"]:
            files.append(("raw-message", raw["filename"], raw["content_type"], base64.b64decode(raw["content"])))
        add("raw", entry)
    return fields, files


def header_safe(value) -> str:
    """A header value that cannot start a new header line: control characters (CR, LF, NUL,
    ...) and Unicode line separators removed."""
    return _UNSAFE_HEADER_CHARS.sub("", "" if value is None else str(value)).strip()


def envelope_headers(delivery: Delivery) -> list[tuple[str, str]]:
    """The envelope as X-Mxhook-* header fields, each value made header-safe."""
    message = delivery.message
    mail_from = header_safe(message.mail_from)
    headers = [("X-Mxhook-Mail-From", mail_from or "<>")]
    headers += [("X-Mxhook-Rcpt-To", header_safe(r)) for r in delivery.recipients]
    headers += [
        ("X-Mxhook-Client-Addr", header_safe(message.client_addr)),
        ("X-Mxhook-Client-Name", header_safe(message.client_name)),
        ("X-Mxhook-Helo", header_safe(message.helo)),
        ("X-Mxhook-Queue-Id", header_safe(message.queue_id)),
        ("X-Mxhook-Received", header_safe(message.received)),
        ("X-Mxhook-Rule", header_safe(delivery.target.name)),
        ("X-Mxhook-Delivery-Id", header_safe(delivery.id)),
    ]
    if delivery.target.api_key:
        headers.append(("X-Mxhook-Api-Key", header_safe(delivery.target.api_key)))
    return headers


def raw_document(delivery: Delivery, *, max_attachment_size: int = 0,
                 fetch_url: FetchUrl | None = None) -> tuple[list[tuple[str, str]], bytes]:
    """(envelope header fields, the message bytes as they came): nothing is parsed or omitted,
    so neither max_attachment_size nor fetch_url applies."""
    return envelope_headers(delivery), delivery.raw
