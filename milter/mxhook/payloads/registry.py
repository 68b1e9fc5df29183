"""The payload names an admin can pick, each mapped to a document producer and an encoding.
Pure.

- `INBOUND`: a rule's format (`json`, `multipart`, `raw`) -> `InboundFormat` (producer over an
  `inbound.Delivery`, encoding of what it produced under the payload size cap).
- `EVENT_VERSIONS`: an endpoint's payload version -> `EventVersion` (producer of the batch
  document); `EVENT_ENCODINGS`: an endpoint's format (`json`, `form`) -> encoding.

`render_inbound` and `render_events` are the one lookup the spooler, `mxhook endpoint test` and
the tests use. A dialect or a template is one more producer (a module of its own) and one entry
here; the names are also in the model (`model/rules.py` FORMATS, `model/endpoints.py` FORMATS and
VERSIONS), which validates them without importing this layer, and a test keeps both the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE
from mxhook.model.targets import Target
from mxhook.payloads import encodings, events, inbound
from mxhook.payloads.encodings import Rendered

DEFAULT_MAX_PAYLOAD_SIZE = 25 * 1024 * 1024


@dataclass(frozen=True)
class InboundFormat:
    document: Callable[..., object]  # (inbound.Delivery, *, max_attachment_size) -> document
    encode: Callable[..., Rendered]  # (document, *, max_payload_size) -> body


@dataclass(frozen=True)
class EventVersion:
    document: Callable[..., dict]  # (events, *, tz, batch_id, endpoint_id, api_key) -> document
    takes_v1_text: bool = False  # takes events.V1Text in place of event dicts


def _native_json(doc: dict, *, max_payload_size: int) -> Rendered:
    msg = doc["message"]
    return encodings.json_capped(doc, max_payload_size, attachments=msg["attachments"],
                                 defects=msg["defects"])


def _native_multipart(doc: dict, *, max_payload_size: int) -> Rendered:
    msg = doc["message"]
    return encodings.multipart_capped(doc, max_payload_size, parts=inbound.form_parts,
                                      attachments=msg["attachments"], defects=msg["defects"])


def _raw(doc: tuple, *, max_payload_size: int) -> Rendered:
    return encodings.raw_message(*doc)  # the message as it came: no cap applies


INBOUND: dict[str, InboundFormat] = {
    "json": InboundFormat(inbound.native_document, _native_json),
    "multipart": InboundFormat(inbound.native_document, _native_multipart),
    "raw": InboundFormat(inbound.raw_document, _raw),
}

# Add a version only with a real reason, and never change an existing one: endpoints are pinned
# to the version they were created with.
EVENT_VERSIONS: dict[int, EventVersion] = {1: EventVersion(events.document_v1, takes_v1_text=True)}

EVENT_ENCODINGS: dict[str, Callable[[dict], Rendered]] = {
    "json": encodings.json,
    "form": encodings.form_urlencoded,
}


def _lookup(table: dict, key, what: str):
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unknown {what} {key!r} (known: {', '.join(map(str, table))})") from None


def render_inbound(fmt: str, *, delivery_id: str, meta: dict, raw: bytes, target: Target,
                   recipients: Iterable[str] | None = None,
                   max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                   max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> Rendered:
    """The request body for one inbound delivery (one message, one rule).

    `meta` is the spool record's inbound metadata, `target` the delivery's target,
    `recipients` the envelope recipients this rule matched (default: taken from
    meta["deliveries"] by the rule's name). Raises ValueError only for an unknown format; bad
    message content never raises (see model.message.normalize)."""
    entry = _lookup(INBOUND, fmt, "payload format")
    delivery = inbound.Delivery.of(delivery_id=delivery_id, meta=meta, raw=raw, target=target,
                                   recipients=recipients)
    return entry.encode(entry.document(delivery, max_attachment_size=max_attachment_size),
                        max_payload_size=max_payload_size)


def render_events(version: int, batch: Iterable[dict | events.V1Text], *, endpoint_tz: str = "UTC",
                  fmt: str = "json", batch_id: str, endpoint_id: int | None = None,
                  api_key: str | None = None) -> Rendered:
    """The request body for one event batch. ValueError for an unknown version or format.
    `batch`: event dicts, or events.V1Text."""
    entry = _lookup(EVENT_VERSIONS, version, "event payload version")
    encode = _lookup(EVENT_ENCODINGS, fmt, "event payload format")
    if not entry.takes_v1_text:
        batch = map(events.as_dict, batch)
    doc = entry.document(batch, tz=events.zone(endpoint_tz), batch_id=batch_id,
                         endpoint_id=endpoint_id, api_key=api_key)
    return encode(doc)
