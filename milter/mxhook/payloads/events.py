"""What goes into an event batch's payload, as plain data, one document producer per payload
version. Pure.

`events` are event dicts as stored (`events.Event.to_dict()`, enriched with the message fields
of their `queued` event), or `V1Text`. An endpoint is pinned to the version it was created with,
and every version lists its fields explicitly, so a field added to the event vocabulary (or a
version 2) never changes what an existing endpoint receives. docs/payloads.md documents every
version; payloads/registry.py maps versions and formats to producers and encodings.

Pre-rendering (an optimisation behind this layer): `prerenderer` tells the spooler whether the
store should keep fresh events as `V1Text`, each event's version-1 object already encoded, and
`document_v1` joins those into the batch's events array instead of encoding each event again.
"""
from __future__ import annotations

import functools
import json
import json.encoder
import re
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

from mxhook.model.events import ENGAGEMENT_KEYS, ENGAGEMENT_TYPES, is_stored_time
from mxhook.payloads.encodings import JSONText, dumps

DOCUMENT_TYPE = "events"

# Version 1: the fields of each event, in this order (absent ones are null; custom_headers {}).
V1_FIELDS = (
    "id", "type", "at", "recipient", "orig_recipient", "sender", "header_from", "message_id",
    "subject", "queue_id", "bounce_type", "dsn", "remote_host", "relay", "reply", "diagnostic",
    "delay", "queued_as", "client_addr", "auth_user", "reason", "source", "custom_headers",
)
# Engagement events' objects end with one more field, `engagement` (every ENGAGEMENT_KEYS key,
# null where absent); other events' objects have none, so their bodies stay as they were.
V1_ENGAGEMENT_FIELD = "engagement"
_ENGAGEMENT_TYPES = frozenset(ENGAGEMENT_TYPES)
# The type each engagement key holds; a value of another type (a hand-made dict) is null.
_ENGAGEMENT_KEY_TYPES = {key: (int,) if key == "link" else (bool,) if key == "machine" else (str,)
                         for key in ENGAGEMENT_KEYS}


def is_engagement(event_type) -> bool:
    """Whether `event_type` (any value: hand-made dicts hold anything) is an engagement type."""
    return type(event_type) is str and event_type in _ENGAGEMENT_TYPES


def engagement_of(event: dict) -> dict:
    """The event's `engagement` object with every ENGAGEMENT_KEYS key, in that order: a value
    of the key's type (text; `link` an integer; `machine` true/false) as it is, else null."""
    given = event.get("engagement")
    if not isinstance(given, dict):
        given = {}
    out = {}
    for key, types in _ENGAGEMENT_KEY_TYPES.items():
        value = given.get(key)
        out[key] = value if type(value) in types else None
    return out


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
    is mostly a join of these; `document_v1` takes them in place of event dicts, for any time
    zone, and `as_dict` turns one back for other versions."""

    __slots__ = ()


def as_dict(event: dict | V1Text) -> dict:
    return json.loads(event) if isinstance(event, V1Text) else event


def prerenderer(endpoints: Iterable) -> Callable[[dict], V1Text] | None:
    """What the store may keep fresh fanned-out events as (`v1_text`), or None: only when an
    enabled endpoint takes native version-1 bodies in UTC, the form a batch is joined from (for
    other zones or versions that text would be parsed and rendered again; a dialect or a
    template renders from the event itself)."""
    if any(getattr(ep, "enabled", True) and getattr(ep, "version", None) in (None, 1)
           and _native(getattr(ep, "destination", None))
           and zone(getattr(ep, "timezone", "UTC")) is timezone.utc for ep in endpoints):
        return v1_text
    return None


def _native(destination) -> bool:
    """Whether a destination (model.targets.Destination) posts mxhook's own event bodies."""
    return destination is None or (getattr(destination, "dialect", None) in (None, "native")
                                   and getattr(destination, "template", None) is None)


def v1_text(event: dict) -> V1Text:
    """The version-1 JSON object of an (enriched) event dict, times in UTC."""
    text = _v1_text_flat(event)
    return V1Text(text if text is not None else dumps(_v1_event(event, timezone.utc)))


# The version-1 object of the usual event in three C calls: its 23 values are encoded by one
# encoder call, as a list whose item separator is a NUL, which no encoded str, number or null
# contains (control characters are escaped), so splitting there gives each value as dumps
# writes it (a container value of two or more items has separators of its own: the count
# tells); the keys are interleaved and joined. A template (%) costs as much again: it scans
# its ~300 characters per call.
# the keys at the even places, the values to go between them, the end
_V1_PARTS = [p for i, key in enumerate(V1_FIELDS) for p in (("," if i else "{") + f'"{key}":', None)]
_V1_PARTS.append("}")
_AT, _HEADERS = V1_FIELDS.index("at"), V1_FIELDS.index("custom_headers")
_ENGAGEMENT_KEY = f',"{V1_ENGAGEMENT_FIELD}":'
_SEP = "\x00"


def _c_encoder(item_separator: str):
    """The C encoder encodings.dumps uses, without its circular-reference check (a cycle is a
    RecursionError here, and the general way explains it), and with this item separator."""
    return json.encoder.c_make_encoder(None, json.JSONEncoder().default,
                                       json.encoder.encode_basestring, None, ":",
                                       item_separator, False, False, True)


_encode_values, _encode = _c_encoder(_SEP), _c_encoder(",")


def _v1_text_flat(event: dict) -> str | None:
    """dumps(_v1_event(event, UTC)) for an event with a stored time and no container value
    (custom headers aside) of two or more items, else None: the caller takes the general way."""
    values = list(map(event.get, V1_FIELDS))
    at = values[_AT]
    if not is_stored_time(at):
        return None
    values[_AT] = at[:-1] + "+00:00"
    headers = values[_HEADERS]
    values[_HEADERS] = None
    try:
        out = "".join(_encode_values(values, 0))[1:-1].split(_SEP)
        out[_HEADERS] = ("".join(_encode(headers, 0)) if isinstance(headers, dict) and headers
                         else "{}")
    except (TypeError, ValueError, RecursionError):  # dumps raises, or explains
        return None
    if len(out) != len(V1_FIELDS):
        return None
    parts = _V1_PARTS.copy()
    parts[1::2] = out
    if is_engagement(event.get("type")):
        parts[-1] = _ENGAGEMENT_KEY + "".join(_encode(engagement_of(event), 0)) + "}"
    return "".join(parts)


def _v1_event(event: dict, tz) -> dict:
    out = {key: event.get(key) for key in V1_FIELDS}
    at = out["at"]
    if tz is timezone.utc and is_stored_time(at):
        out["at"] = at[:-1] + "+00:00"  # the stored form, already UTC: no parsing needed
    else:
        out["at"] = local_time(at, tz)
    headers = out["custom_headers"]
    out["custom_headers"] = dict(headers) if isinstance(headers, dict) else {}
    if is_engagement(out["type"]):
        out[V1_ENGAGEMENT_FIELD] = engagement_of(event)
    return out


_HEADERS_KEY = '"custom_headers":'
_NO_HEADERS = _HEADERS_KEY + "{}}"
# The keys of a JSON object's text without backslashes (a key is the only string followed by a
# colon; a nested object's keys are found too, which only sends the event the general way).
_KEY = re.compile(r'[{,]"([^"\\]*)":')


def select_headers(events: Iterable[dict | V1Text],
                   names: Mapping[str, str | None]) -> list[dict | V1Text]:
    """The events with only the custom headers `names` has (lower-case name -> the name a body
    shows it under, None: the event's own), in their order; the stored events are not changed.
    A V1Text stays one: the same object when it keeps every header under its own name (found
    from its text's keys, without parsing), else its text with the new headers object."""
    out: list[dict | V1Text] = []
    for event in events:
        if isinstance(event, V1Text):
            if event.endswith(_NO_HEADERS):
                out.append(event)
                continue
            # custom_headers is the last key, and its first occurrence: a key inside a string
            # value has its quotes escaped
            start = event.find(_HEADERS_KEY) + len(_HEADERS_KEY)
            tail = event[start:-1]
            if "\\" not in tail and all(names.get(key.lower(), "") is None for key in _KEY.findall(tail)):
                out.append(event)  # every header kept under its own name
                continue
            kept = _kept_headers(json.loads(tail), names)
            out.append(V1Text(event[:start] + ("".join(_encode(kept, 0)) if kept else "{}") + "}"))
            continue
        headers = event.get("custom_headers")
        if not isinstance(headers, dict) or not headers:
            out.append(event)
            continue
        kept = _kept_headers(headers, names)
        out.append(event if list(kept.items()) == list(headers.items())
                   else {**event, "custom_headers": kept})
    return out


# a V1Text's queue id: the key's value is null or a string whose quotes are escaped
_QUEUE_ID = re.compile(r',"queue_id":"([^"\\]*)"')


def queue_ids(events: Iterable[dict | V1Text], limit: int) -> list[str]:
    """The distinct queue ids of a batch's events, in their order, at most `limit` + 1 (one
    more tells there are more): what the spooler's log lines about the batch name."""
    found: dict[str, None] = {}
    for event in events:
        if isinstance(event, V1Text):
            m = _QUEUE_ID.search(event)
            qid = m.group(1) if m else None
        else:
            qid = event.get("queue_id")
        if qid and isinstance(qid, str) and qid not in found:
            found[qid] = None
            if len(found) > limit:
                break
    return list(found)


def _kept_headers(headers: dict, names: Mapping[str, str | None]) -> dict:
    kept: dict = {}
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() in names:
            kept.setdefault(names[name.lower()] or name, value)
    return kept


def document_v1(events: Iterable[dict | V1Text], *, tz, batch_id: str, endpoint_id: int | None,
                api_key: str | None) -> dict:
    """The version-1 batch document; its `events` array is JSONText joined from each event's
    object (V1Text as it is when `tz` is UTC)."""
    events = list(events)
    doc = {"type": DOCUMENT_TYPE, "version": 1, "batch_id": batch_id, "endpoint_id": endpoint_id,
           "count": len(events), "events": JSONText("[" + ",".join(_v1_texts(events, tz)) + "]")}
    if api_key:
        doc["api_key"] = api_key
    return doc


def _v1_texts(events: list, tz) -> Iterable[str]:
    """The JSON text of each event's object, in order; a run of dicts is dumped as one list
    (one encoder call, not one per event: a backlog read back from state.db is all dicts)."""
    utc = tz is timezone.utc
    run: list[dict] = []
    for e in events:
        if isinstance(e, V1Text) and utc:
            if run:
                yield dumps(run)[1:-1]
                run = []
            yield e
        else:
            run.append(_v1_event(as_dict(e), tz))
    if run:
        yield dumps(run)[1:-1]


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
    elif is_engagement(event_type):
        event.update(source="feedback" if event_type == "complained" else "track",
                     engagement=sample_engagement(event_type))
    return event


def sample_engagement(event_type: str) -> dict:
    """The `engagement` object of a sample event of `event_type` (an engagement type): what
    mxhook-track records for a person reading in Apple Mail, or the feedback handler for an
    ARF report."""
    out = dict.fromkeys(ENGAGEMENT_KEYS)
    out["sending_domain"] = "example.org"
    if event_type == "complained":
        out["feedback_type"] = "abuse"
        return out
    out.update(ip="192.0.2.44", user_agent="Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) "
               "AppleWebKit/605.1.15 (KHTML, like Gecko)", client="Apple Mail",
               client_device="desktop", client_os="macOS", continent="EU", country="DE",
               city="Berlin")
    if event_type in ("opened", "clicked"):
        out["machine"] = False
    if event_type == "clicked":
        out.update(url="https://example.org/welcome?from=mxhook-test", link=0)
    return out
