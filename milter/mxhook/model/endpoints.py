"""Event webhook endpoints: the model and its validation. Pure: no database, no HTTP.

An endpoint receives batches of delivery events (docs/events.md) by POST: which event
categories (bounces, deliveries, blocks), how often (`interval` seconds after the oldest pending
event, or as soon as `max_events` are pending), in which payload version (pinned when the
endpoint is created, so a newer schema never changes what an existing endpoint receives), in
which time zone timestamps are rendered, and the destination they are posted to
(model/targets.py: URL, auth, retry, timeout), checked as a rule's is.

Validation raises `rules.RuleError` (`targets.DestinationError` for the destination), which
the services report as they report a rule's (one line, exit status 2).
"""
from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, replace
from functools import cached_property

from mxhook.model import events as events_mod
from mxhook.model.rules import RuleError
from mxhook.model.targets import Destination, Target, check_destination, check_range

CATEGORIES = tuple(events_mod.CATEGORIES)  # bounces, deliveries, blocks, engagement
FORMATS = ("json", "form")
# The payload versions an endpoint can be pinned to; payloads/registry.py renders each
# (tests/unit/test_payload_registry.py keeps the two the same).
VERSIONS = (1,)
INTERVAL_RANGE = (1, 600)  # seconds
MAX_CUSTOM_HEADERS = 50
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,200}")  # RFC 5322 ftext: printable ASCII but ':'
MAX_EVENTS_RANGE = (100, 10000)
DEFAULTS = {
    # near real time, like the hosted services: a batch leaves at most 10 s after its first
    # event, or at once when 1000 events are waiting
    "interval": 10,
    "max_events": 1000,
    "timezone": "UTC",
}


@dataclass(frozen=True)
class Endpoint:
    destination: Destination
    categories: tuple[str, ...] = events_mod.DEFAULT_CATEGORIES
    interval: int = DEFAULTS["interval"]
    max_events: int = DEFAULTS["max_events"]
    version: int | None = None  # None: the latest payload version (fixed when stored)
    timezone: str = DEFAULTS["timezone"]
    enabled: bool = True
    # header names whose values its bodies carry besides [milter] event_headers, as the admin
    # wrote them (matched without regard to case)
    custom_headers: tuple[str, ...] = ()
    id: int | None = None
    created: str | None = None
    updated: str | None = None

    @property
    def name(self) -> str:
        """How logs and the delivery client name this endpoint."""
        return f"endpoint-{self.id}"

    @property
    def types(self) -> frozenset[str]:
        """The event types this endpoint receives."""
        return events_mod.types_for(self.categories)

    def wants(self, event_type: str) -> bool:
        return event_type in self.types

    @cached_property
    def target(self) -> Target:
        """Where and how this endpoint's batches are posted."""
        return Target.of("endpoint", self.id, self.name, self.destination,
                         custom_headers=self.custom_headers)


def parse_categories(text) -> tuple[str, ...]:
    """'bounces,blocks' -> ('bounces', 'blocks') in canonical order; RuleError when unknown.
    Empty means bounces, deliveries and blocks; `all` every category."""
    try:
        return events_mod.parse_categories(text)
    except events_mod.EventError as exc:
        raise RuleError(str(exc)) from None


def check_custom_headers(names) -> tuple[str, ...]:
    """Header field names, as given (their case is what bodies show), in order; RuleError for one
    that is not a field name, or one given twice in any case."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        text = name.strip() if isinstance(name, str) else name
        if not isinstance(text, str) or not _FIELD_NAME.fullmatch(text):
            raise RuleError(f"custom header {name!r} is not a header field name "
                            "(printable ASCII without ':' or spaces)")
        if text.lower() in seen:
            raise RuleError(f"custom header {text!r} is given twice")
        seen.add(text.lower())
        out.append(text)
    if len(out) > MAX_CUSTOM_HEADERS:
        raise RuleError(f"at most {MAX_CUSTOM_HEADERS} custom headers, got {len(out)}")
    return tuple(out)


def check_timezone(name: str) -> str:
    """An IANA time zone name ('Europe/Berlin', 'UTC'); RuleError when unknown."""
    text = (name or "").strip()
    if not text:
        raise RuleError("time zone is empty (use an IANA name such as UTC or Europe/Berlin)")
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise RuleError(
            f"unknown time zone {name!r}: use an IANA name such as UTC, Europe/Berlin or "
            "America/New_York"
        ) from None
    return text


def supported_versions() -> tuple[int, ...]:
    return VERSIONS


def latest_version() -> int:
    return max(supported_versions())


def validate(ep: Endpoint) -> Endpoint:
    """Raise RuleError (DestinationError for the destination) on the first problem; return
    the endpoint with its categories in canonical order and its version filled in (the latest
    when None)."""
    check_destination(ep.destination, FORMATS)
    categories = parse_categories(ep.categories)
    check_range("interval", ep.interval, INTERVAL_RANGE, "seconds", RuleError)
    check_range("max events", ep.max_events, MAX_EVENTS_RANGE, "events", RuleError)
    versions = supported_versions()
    version = max(versions) if ep.version is None else ep.version
    if version not in versions:
        raise RuleError(
            f"payload version {version} does not exist (known: {', '.join(map(str, versions))})"
        )
    timezone = check_timezone(ep.timezone)
    return replace(ep, categories=categories, version=version, timezone=timezone,
                   custom_headers=check_custom_headers(ep.custom_headers))


def with_defaults(**fields) -> Endpoint:
    """An Endpoint from possibly-None fields (as CLI options arrive), None meaning the
    default."""
    return Endpoint(**{k: v for k, v in fields.items() if v is not None})
