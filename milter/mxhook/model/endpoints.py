"""Event webhook endpoints: the model and its validation. Pure: no database, no HTTP.

An endpoint receives batches of delivery events (docs/events.md) by POST: which event
categories (bounces, deliveries, blocks), how often (`interval` seconds after the oldest pending
event, or as soon as `max_events` are pending), in which payload version (pinned when the
endpoint is created, so a newer schema never changes what an existing endpoint receives), in
which time zone timestamps are rendered, and with which auth and retry settings.

Validation reuses the inbound rules' helpers (`rules.check_endpoint`, `rules._check_range`) and
raises the same `rules.RuleError`, so the CLI reports both alike (one line, exit status 2).
"""
from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, replace
from functools import cached_property

from mxhook.model import events as events_mod
from mxhook.model.retry import RETRY_INTERVAL_RANGE, RETRY_PERIOD_RANGE, RetryPolicy
from mxhook.model.targets import Target
from mxhook.model.rules import (
    TIMEOUT_RANGE,
    RuleError,
    _check_range,
    check_credentials,
    check_endpoint,
)

CATEGORIES = tuple(events_mod.CATEGORIES)  # bounces, deliveries, blocks
FORMATS = ("json", "form")
# The payload versions an endpoint can be pinned to; payloads/registry.py renders each
# (tests/unit/test_payload_registry.py keeps the two the same).
VERSIONS = (1,)
INTERVAL_RANGE = (1, 600)  # seconds
MAX_EVENTS_RANGE = (100, 10000)
DEFAULTS = {
    # near real time, like the hosted services: a batch leaves at most 10 s after its first
    # event, or at once when 1000 events are waiting
    "interval": 10,
    "max_events": 1000,
    "timeout": 30,
    "timezone": "UTC",
    "format": "json",
    "retry_interval": 60,
    "retry_period": 3,
}


@dataclass(frozen=True)
class Endpoint:
    url: str
    categories: tuple[str, ...] = CATEGORIES
    interval: int = DEFAULTS["interval"]
    max_events: int = DEFAULTS["max_events"]
    timeout: int = DEFAULTS["timeout"]
    version: int | None = None  # None: the latest payload version (fixed when stored)
    timezone: str = DEFAULTS["timezone"]
    format: str = DEFAULTS["format"]
    basic_auth: str | None = None  # "user:password"
    bearer: str | None = None
    api_key: str | None = None  # sent in the payload body
    retry_interval: int = DEFAULTS["retry_interval"]
    retry_period: int = DEFAULTS["retry_period"]
    allow_http: bool = False
    enabled: bool = True
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
        return Target(
            kind="endpoint", id=self.id, name=self.name, url=self.url, format=self.format,
            basic_auth=self.basic_auth, bearer=self.bearer, api_key=self.api_key,
            retry=RetryPolicy(self.retry_interval, self.retry_period), timeout=self.timeout,
            allow_http=self.allow_http,
        )


def parse_categories(text) -> tuple[str, ...]:
    """'bounces,blocks' -> ('bounces', 'blocks') in canonical order; RuleError when unknown.
    Empty means every category."""
    try:
        return events_mod.parse_categories(text)
    except events_mod.EventError as exc:
        raise RuleError(str(exc)) from None


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
    """Raise RuleError on the first problem; return the endpoint with its categories in
    canonical order and its version filled in (the latest when None)."""
    check_endpoint(ep.url, allow_http=ep.allow_http)
    categories = parse_categories(ep.categories)
    _check_range("interval", ep.interval, INTERVAL_RANGE, "seconds")
    _check_range("max events", ep.max_events, MAX_EVENTS_RANGE, "events")
    _check_range("timeout", ep.timeout, TIMEOUT_RANGE, "seconds")
    _check_range("retry interval", ep.retry_interval, RETRY_INTERVAL_RANGE, "seconds")
    _check_range("retry period", ep.retry_period, RETRY_PERIOD_RANGE, "days")
    if ep.format not in FORMATS:
        raise RuleError(f"format must be one of {', '.join(FORMATS)}, got {ep.format!r}")
    versions = supported_versions()
    version = max(versions) if ep.version is None else ep.version
    if version not in versions:
        raise RuleError(
            f"payload version {version} does not exist (known: {', '.join(map(str, versions))})"
        )
    timezone = check_timezone(ep.timezone)
    check_credentials(ep.basic_auth, ep.bearer, ep.api_key)
    return replace(ep, categories=categories, version=version, timezone=timezone)


def with_defaults(**fields) -> Endpoint:
    """An Endpoint from possibly-None fields (as CLI options arrive), None meaning the
    default."""
    return Endpoint(**{k: v for k, v in fields.items() if v is not None})
