"""Event webhook request bodies, one renderer per payload version. Pure.

    rendered = render_events(version, events, endpoint_tz="Europe/Berlin", fmt="json",
                             batch_id="evb_...", endpoint_id=3)

`events` are event dicts as stored (`events.Event.to_dict()`, enriched with the message fields
of their `queued` event). An endpoint is pinned to the version it was created with, and every
version lists its fields explicitly, so a field added to the event vocabulary (or a version 2)
never changes what an existing endpoint receives. docs/payloads.md documents every version.

Formats:
- `json` (`application/json`): the document, compact UTF-8.
- `form` (`application/x-www-form-urlencoded`): the scalar top-level fields as form fields and
  `events` as one field holding the JSON text of the events array (as Mandrill posts
  `mandrill_events`): every framework parses the form, then one JSON decode gives the list.

Like the inbound formats, the bodies are built with `json.dumps`, not text templates: a template
cannot get JSON string escaping right for hostile input (a Subject is attacker-controlled).
"""
from __future__ import annotations

import functools
import json
import json.encoder
import math
from datetime import datetime, timezone
from typing import Callable, Iterable
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from mxhook.model.events import is_stored_time
from mxhook.payloads import Rendered

FORMATS = ("json", "form")
DOCUMENT_TYPE = "events"

# Version 1: the fields of each event, in this order (absent ones are null; custom_headers {}).
V1_FIELDS = (
    "id", "type", "at", "recipient", "orig_recipient", "sender", "header_from", "message_id",
    "subject", "queue_id", "bounce_type", "dsn", "remote_host", "relay", "reply", "diagnostic",
    "delay", "queued_as", "client_addr", "auth_user", "reason", "source", "custom_headers",
)


@functools.lru_cache(maxsize=64)
def zone(name: str):
    """ZoneInfo for an IANA name ('UTC' without a lookup)."""
    return timezone.utc if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


def local_time(at: str | None, tz) -> str | None:
    """'2026-11-22T12:00:00.123456Z' in `tz` (a tzinfo) -> '2026-11-22T13:00:00.123456+01:00'.
    Text that is not an ISO time is passed through unchanged."""
    if not at:
        return at
    try:
        dt = datetime.fromisoformat(at)
    except (TypeError, ValueError):
        return at
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(tz).isoformat(timespec="microseconds")


class V1Text(str):
    """One event already rendered as its version-1 JSON object with UTC times (`v1_text`).
    The spooler has the store keep fresh events in this form (`prerenderer`), so that a batch
    is mostly a join of these; `render_events` takes them in place of event dicts, for any
    time zone and format."""

    __slots__ = ()


def prerenderer(endpoints: Iterable) -> Callable[[dict], V1Text] | None:
    """What the store may keep fresh fanned-out events as (`v1_text`), or None: only when an
    enabled endpoint takes version-1 bodies in UTC, the form a batch is joined from (for other
    zones or versions that text would be parsed and rendered again)."""
    if any(getattr(ep, "enabled", True) and getattr(ep, "version", None) in (None, 1)
           and zone(getattr(ep, "timezone", "UTC")) is timezone.utc for ep in endpoints):
        return v1_text
    return None


def v1_text(event: dict) -> V1Text:
    """The version-1 JSON object of an (enriched) event dict, times in UTC."""
    text = _v1_text_flat(event)
    return V1Text(text if text is not None else _dumps(_v1_event(event, timezone.utc)))


# The version-1 object with its keys written out once and a slot per value: an event is rendered
# at ingest, and encoding 23 values alone into it takes half the time of building the dict and
# dumping it (the C encoder spends its time per key). Same bytes: strings go through the
# encoder's own escaping function, floats and ints through the repr json uses.
_V1_TEMPLATE = "{" + ",".join(f'"{key}":%s' for key in V1_FIELDS) + "}"
_AT, _HEADERS = V1_FIELDS.index("at"), V1_FIELDS.index("custom_headers")
_encode_str = json.encoder.encode_basestring  # the one json.dumps(ensure_ascii=False) uses


def _v1_text_flat(event: dict) -> str | None:
    """_dumps(_v1_event(event, UTC)) for the usual values (str, None, finite float, int, and a
    dict of custom headers), else None: the caller takes the general way."""
    values = list(map(event.get, V1_FIELDS))
    at = values[_AT]
    if not is_stored_time(at):
        return None
    values[_AT] = at[:-1] + "+00:00"
    headers = values[_HEADERS]
    values[_HEADERS] = None
    out = []
    for value in values:
        kind = type(value)
        if value is None:
            out.append("null")
        elif kind is str:
            out.append(_encode_str(value))
        elif kind is float and math.isfinite(value):
            out.append(float.__repr__(value))
        elif kind is int:
            out.append(int.__repr__(value))
        else:
            return None
    out[_HEADERS] = _dumps(dict(headers)) if isinstance(headers, dict) and headers else "{}"
    return _V1_TEMPLATE % tuple(out)


def _v1_event(event: dict, tz) -> dict:
    out = {key: event.get(key) for key in V1_FIELDS}
    at = out["at"]
    if tz is timezone.utc and is_stored_time(at):
        out["at"] = at[:-1] + "+00:00"  # the stored form, already UTC: no parsing needed
    else:
        out["at"] = local_time(at, tz)
    headers = out["custom_headers"]
    out["custom_headers"] = dict(headers) if isinstance(headers, dict) else {}
    return out


def document_v1(events: Iterable[dict], *, tz, batch_id: str, endpoint_id: int | None,
                api_key: str | None) -> dict:
    items = [_v1_event(e, tz) for e in events]
    doc = {"type": DOCUMENT_TYPE, "version": 1, "batch_id": batch_id, "endpoint_id": endpoint_id,
           "count": len(items), "events": items}
    if api_key:
        doc["api_key"] = api_key
    return doc


# version -> document builder. Add a version only with a real reason, and never change an
# existing one: endpoints are pinned to the version they were created with.
RENDERERS: dict[int, Callable[..., dict]] = {1: document_v1}


def latest_version() -> int:
    return max(RENDERERS)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one a call


def _dumps(obj) -> str:
    return _ENCODER.encode(obj)


def render_events(version: int, events: Iterable[dict | V1Text], *, endpoint_tz: str = "UTC",
                  fmt: str = "json", batch_id: str, endpoint_id: int | None = None,
                  api_key: str | None = None) -> Rendered:
    """The request body for one batch. ValueError for an unknown version or format. `events`
    are event dicts, or V1Text for version 1."""
    try:
        builder = RENDERERS[version]
    except KeyError:
        raise ValueError(f"unknown event payload version {version!r}") from None
    if fmt not in FORMATS:
        raise ValueError(f"unknown event payload format {fmt!r} (known: {', '.join(FORMATS)})")
    tz = zone(endpoint_tz)
    events = list(events)
    if builder is document_v1:
        # Each event's object is its own JSON text (most are ready: V1Text), joined into the
        # document the builder gives for no events; byte for byte what dumping it whole gives.
        doc = builder([], tz=tz, batch_id=batch_id, endpoint_id=endpoint_id, api_key=api_key)
        doc["count"] = len(events)
        items = "[" + ",".join(_v1_texts(events, tz)) + "]"
    else:
        doc = builder([json.loads(e) if isinstance(e, V1Text) else e for e in events], tz=tz,
                      batch_id=batch_id, endpoint_id=endpoint_id, api_key=api_key)
        items = None
    if fmt == "json":
        if items is None:
            return Rendered(_dumps(doc).encode("utf-8"), "application/json")
        head, _, tail = _dumps(doc).partition('"events":[]')  # the one key: values are escaped
        return Rendered(f'{head}"events":{items}{tail}'.encode("utf-8"), "application/json")
    fields = []
    for key, value in doc.items():
        if key == "events":
            fields.append((key, items if items is not None else _dumps(value)))
        elif value is not None:
            fields.append((key, str(value)))
    return Rendered(urlencode(fields).encode("ascii"), "application/x-www-form-urlencoded")


def _v1_texts(events: list, tz) -> Iterable[str]:
    """The JSON text of each event's object, in order; a run of dicts is dumped as one list
    (one encoder call, not one per event: a backlog read back from state.db is all dicts)."""
    utc = tz is timezone.utc
    run: list[dict] = []
    for e in events:
        if isinstance(e, V1Text) and utc:
            if run:
                yield _dumps(run)[1:-1]
                run = []
            yield e
        else:
            run.append(_v1_event(json.loads(e) if isinstance(e, V1Text) else e, tz))
    if run:
        yield _dumps(run)[1:-1]


def sample_event(event_type: str = "bounced", *, at: str | None = None) -> dict:
    """A plausible event for `mxhook endpoint test` (id prefixed `test-`, so receivers can
    tell it apart)."""
    at = at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event = {
        "id": "test-" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f"),
        "type": event_type, "at": at, "source": "cli",
        "recipient": "nobody@example.com", "sender": "app@example.org",
        "header_from": "app@example.org", "message_id": "<test@mxhook.invalid>",
        "subject": "mxhook endpoint test", "queue_id": "4XbTest0001",
        "custom_headers": {},
    }
    if event_type == "bounced":
        event.update(bounce_type="hard", dsn="5.1.1", remote_host="mx.example.com",
                     reply="550 5.1.1 <nobody@example.com>: Recipient address rejected: "
                           "User unknown")
    return event
