"""The one event vocabulary of mxhook (pure: no I/O).

Every source of delivery information — the milter (`queued`, `blocked`), the log follower
(`succeeded`, `deferred`, `bounced`, `failed`), asynchronous DSN messages (`bounced`), the CLI
(`registered`, `deleted`) — produces `Event`s with the same fields, written to the spool as
records of kind `event` (`spool.event_record`). docs/events.md documents every field.

Ids. `Event.id` is the spool record id and the primary key in state.db, so re-reading the same
input must give the same id (the spooler ingests with INSERT OR IGNORE). `event_id(at_us, *key)`
makes such ids: 16 hex digits of the event time in nanoseconds (so ids sort by time, like
`spool.new_id()`), then 12 hex digits of a hash of the key (what identifies the input: the log
position and line, a DSN message and recipient, ...).
"""
from __future__ import annotations

import hashlib
import operator
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Iterable

from mxhook.model.records import RecordError, check_text, check_time

ENGAGEMENT_TYPES = ("opened", "clicked", "unsubscribed", "resubscribed", "complained")
TYPES = ("queued", "succeeded", "deferred", "bounced", "failed", "blocked", "registered", "deleted",
         *ENGAGEMENT_TYPES)
BOUNCE_TYPES = ("hard", "soft")
# track: mxhook-track (opens, clicks, one-click unsubscribe); feedback: mail mxhook answers
# itself (ARF complaint reports, mailto: unsubscribes)
SOURCES = ("milter", "log", "dsn", "cli", "api", "track", "feedback")
# What an engagement event knows beyond the message: its `engagement` object (docs/events.md).
# Absent keys are null; `machine` is the bot verdict (True, False, or None when not scored).
ENGAGEMENT_KEYS = (
    "url", "link", "sending_domain", "ip", "user_agent", "client", "client_device", "client_os",
    "continent", "country", "city", "machine", "machine_reason", "feedback_type",
)

# Endpoint filter categories -> event types.
CATEGORIES: dict[str, tuple[str, ...]] = {  # seed 000's grouping: failed is a delivery status
    "bounces": ("bounced",),
    "deliveries": ("queued", "succeeded", "deferred", "failed"),
    "blocks": ("blocked", "registered", "deleted"),
    "engagement": ENGAGEMENT_TYPES,
}
# What an endpoint gets when it names no category: seed 000's three. Engagement events exist
# only where tracking is on, and an endpoint asks for them (`engagement` or `all`).
DEFAULT_CATEGORIES = ("bounces", "deliveries", "blocks")
_CATEGORY_OF = {t: c for c, types in CATEGORIES.items() for t in types}
_ENGAGEMENT_KEY_SET = frozenset(ENGAGEMENT_KEYS)



class EventError(ValueError):
    """An event that does not fit the vocabulary; the message says why."""


def category(event_type: str) -> str:
    """'bounced' -> 'bounces'."""
    try:
        return _CATEGORY_OF[event_type]
    except KeyError:
        raise EventError(f"unknown event type {event_type!r} (known: {', '.join(TYPES)})") from None


def parse_categories(text: str | Iterable[str]) -> tuple[str, ...]:
    """'bounces,deliveries' (or a list) -> ('bounces', 'deliveries'), validated, in canonical
    order. Empty means DEFAULT_CATEGORIES; `all` means every category."""
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = {i.strip().lower() for i in items if i and i.strip()}
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(CATEGORIES)
    unknown = wanted - set(CATEGORIES)
    if unknown:
        raise EventError(
            f"unknown event category {', '.join(sorted(unknown))} (known: {', '.join(CATEGORIES)})"
        )
    return tuple(c for c in CATEGORIES if c in wanted) or DEFAULT_CATEGORIES


def types_for(categories: str | Iterable[str]) -> frozenset[str]:
    """The event types an endpoint filtered to `categories` receives."""
    return frozenset(t for c in parse_categories(categories) for t in CATEGORIES[c])


# ---------------------------------------------------------------------------------------------
# Time and ids

def iso_from_us(us: int) -> str:
    """Microseconds since the epoch -> '2026-11-22T12:00:00.123456Z'."""
    seconds, micro = divmod(int(us), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro:06d}Z"


def is_stored_time(value) -> bool:
    """Whether `value` is already a time in the form iso_from_us gives (UTC, microseconds,
    `Z`): such times are used as they are, without parsing."""
    return type(value) is str and len(value) == 27 and value[-1] == "Z"


def now_iso() -> str:
    return iso_from_us(time.time_ns() // 1000)


def us_from_iso(text: str) -> int:
    """ISO 8601 (with `Z` or an offset; naive = UTC) -> microseconds since the epoch."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_id(at_us: int, *key: object) -> str:
    """Deterministic, time-sortable id: 16 hex of the time in ns + 12 hex of hash(key)."""
    digest = hashlib.blake2b("\x1f".join(map(str, key)).encode("utf-8", "surrogatepass"),
                             digest_size=6).hexdigest()
    return f"{max(0, int(at_us)) * 1000:016x}{digest}"


# ---------------------------------------------------------------------------------------------
# The event

@dataclass(slots=True)
class Event:
    """One thing that happened to one recipient of one message (docs/events.md)."""

    type: str
    at: str  # UTC, '2026-11-22T12:00:00.123456Z'
    id: str = ""
    source: str = "log"
    queue_id: str | None = None
    recipient: str | None = None
    orig_recipient: str | None = None
    sender: str | None = None
    header_from: str | None = None
    message_id: str | None = None
    subject: str | None = None
    dsn: str | None = None
    bounce_type: str | None = None
    remote_host: str | None = None
    reply: str | None = None
    diagnostic: str | None = None
    delay: float | None = None
    relay: str | None = None
    queued_as: str | None = None
    client_addr: str | None = None
    auth_user: str | None = None
    reason: str | None = None
    # the server that recorded it (seed 000's hostName: which MX handled the message)
    host_name: str | None = None
    engagement: dict | None = None  # engagement events only (ENGAGEMENT_KEYS)
    custom_headers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in _CATEGORY_OF:
            raise EventError(f"unknown event type {self.type!r} (known: {', '.join(TYPES)})")
        if self.bounce_type is not None and self.bounce_type not in BOUNCE_TYPES:
            raise EventError(f"bounce_type must be hard, soft or None, not {self.bounce_type!r}")
        if self.source not in SOURCES:
            raise EventError(f"unknown event source {self.source!r} (known: {', '.join(SOURCES)})")
        if self.engagement is not None:
            if not isinstance(self.engagement, dict):
                raise EventError("engagement must be an object")
            unknown = set(self.engagement) - _ENGAGEMENT_KEY_SET
            if unknown:
                raise EventError(f"unknown engagement key(s) {', '.join(sorted(map(str, unknown)))}"
                                 f" (known: {', '.join(ENGAGEMENT_KEYS)})")

    @property
    def category(self) -> str:
        return _CATEGORY_OF[self.type]

    def to_dict(self) -> dict:
        """Every field (None included, so the shape is stable), JSON-ready."""
        d = {f: getattr(self, f) for f in _FIELD_NAMES}
        d["custom_headers"] = dict(self.custom_headers or {})
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "Event":
        """Inverse of to_dict; unknown keys (e.g. a record's `received`) are ignored, so older
        code reads records written by newer code."""
        if not isinstance(data, dict):
            raise EventError("event data is not a dict")
        for key in ("type", "at"):
            if not data.get(key):
                raise EventError(f"event data lacks {key!r}")
        kwargs = {k: data[k] for k in _FIELD_NAMES if k in data}
        if kwargs.get("custom_headers") is None:
            kwargs["custom_headers"] = {}
        elif not isinstance(kwargs["custom_headers"], dict):
            raise EventError("custom_headers must be an object")
        if kwargs.get("delay") is not None:
            try:
                kwargs["delay"] = float(kwargs["delay"])
            except (TypeError, ValueError):
                raise EventError(f"delay is not a number: {kwargs['delay']!r}") from None
        return cls(**kwargs)

    def to_meta(self) -> dict:
        """The metadata of its spool record (kind `event`): every field (`host_name` and
        `engagement` only when there is one: a record of an event without them is what it was
        before they existed), and `received` (= `at`, the time state.db orders events by). The
        id is the record's id."""
        meta = self.to_dict()
        if meta["host_name"] is None:
            del meta["host_name"]
        if meta["engagement"] is None:
            del meta["engagement"]
        meta["received"] = self.at
        return meta

    @classmethod
    def from_meta(cls, meta: dict, id: str = "") -> "Event":
        """The event of a spool record's metadata (`id`: the record's); RecordError when it
        cannot be ingested. Values are taken as they are (`at` as written, else `received`);
        unknown keys are ignored, so older code reads records written by newer code."""
        if "received" in meta:
            check_time(meta, "received")
        etype = meta.get("type")
        if etype not in TYPES:
            raise RecordError(f"event record of unknown type {etype!r} (known: {', '.join(TYPES)})")
        at = meta.get("at")
        if at is not None and at != meta.get("received"):  # `received` was checked above
            check_time(meta, "at")
        try:  # every field there, as to_meta writes them: looked up at C speed
            values = _middle_values(meta)
        except KeyError:
            values = None
        host_name = meta.get("host_name")
        if (values is None or not _TEXT_TYPES.issuperset(map(type, _text_of_middle(values)))
                or type(host_name) not in _TEXT_TYPES):
            check_text(meta, _TEXT_FIELDS, "event")
        custom = meta.get("custom_headers")
        if custom is not None and not isinstance(custom, dict):
            raise RecordError("event 'custom_headers' is not an object")
        try:
            if values is None:
                kwargs = {k: meta[k] for k in _META_FIELDS if k in meta}
                kwargs.update(at=at or meta.get("received"), custom_headers=custom or {})
                return cls(id=id, **kwargs)
            return cls(etype, at or meta.get("received"), id, *values, host_name,
                       meta.get("engagement"), custom or {})
        except EventError as exc:
            raise RecordError(str(exc)) from None


_FIELD_NAMES = tuple(f.name for f in fields(Event))
# A decoded record's metadata has no id (the record has). Event.from_meta passes the fields
# between id and host_name positionally, looked up at once (the last three may be absent).
_META_FIELDS = tuple(f for f in _FIELD_NAMES if f != "id")
assert _FIELD_NAMES[:3] == ("type", "at", "id") and _FIELD_NAMES[-3:] == ("host_name", "engagement", "custom_headers")
_middle_values = operator.itemgetter(*_FIELD_NAMES[3:-3])
# The fields of a message's `queued` event that its later events are enriched with.
# host_name: an event recorded elsewhere (mxhook-track's) names the MX that handled the message
ENRICH_FIELDS = ("sender", "header_from", "message_id", "subject", "client_addr", "auth_user", "host_name")
# Fields that are text or absent in a spool record: they go into columns and the enrichment join.
_TEXT_FIELDS = ("recipient", "orig_recipient", "queue_id") + ENRICH_FIELDS
# the text fields among those values (host_name is not one of them): picked from the tuple,
# not looked up in the dict again
_text_of_middle = operator.itemgetter(*(_FIELD_NAMES[3:-3].index(f) for f in _TEXT_FIELDS
                                         if f != "host_name"))
_TEXT_TYPES = frozenset((str, type(None)))
