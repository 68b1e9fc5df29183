"""Destinations and delivery targets: where and how a webhook is posted. Pure: no database, no
HTTP.

A `Destination` is the URL, the credentials (Basic XOR Bearer in `Authorization`; `api_key`
goes into the payload body), the payload format, the retry policy, the per-request timeout and
whether plain http is allowed. An inbound rule (a route) and an event endpoint each hold one,
checked by `check_destination`; only the payload formats allowed differ between them.

A `Target` is what the delivery pipeline posts to: a destination with the identity of its
owner (`kind`, `id`, `name`). Signing keys are not part of it: they are looked up by (`kind`,
`id`) at each attempt, so a rotation applies to retries.

An inbound delivery keeps the target it was accepted under: its record form (`to_record`) goes
into the spool record and into state.db (`deliveries.target`), and `from_record` reads it back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Mapping
from urllib.parse import urlsplit

from mxhook.model.retry import (BACKOFFS, DEFAULT_RETRY_CAP, FIXED, RETRY_CAP_RANGE,
                                RETRY_INTERVAL_RANGE, RETRY_PERIOD_RANGE, RetryPolicy)

DEFAULT_TIMEOUT = 30  # seconds
TIMEOUT_RANGE = (1, 999)  # seconds
AUTH_FIELDS = ("basic_auth", "bearer", "api_key", "signing_key")


class DestinationError(ValueError):
    """Invalid destination input; the message is meant for the admin as it stands."""


class TargetRecordError(ValueError):
    """A target's record form that cannot be read; the message starts with the field's name."""


@dataclass(frozen=True)
class Destination:
    url: str
    format: str = "json"
    # secrets stay out of repr(): a Target in a log line or a traceback shows none
    basic_auth: str | None = field(default=None, repr=False)  # "user:password"
    bearer: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)  # sent in the payload body
    retry_interval: float | None = 60  # seconds
    retry_period: float | None = 3  # days
    timeout: float | None = DEFAULT_TIMEOUT  # seconds
    allow_http: bool = False
    dialect: str = "native"  # whose request bodies: payloads/dialects, or mxhook's own
    signing_key: str | None = field(default=None, repr=False)  # a dialect's (Mailgun's)
    template: int | None = None  # version of the owner's jinja2 template in rules.db, if any
    retry_backoff: str = FIXED  # how waits grow between retries (model/retry.py BACKOFFS)
    retry_cap: float | None = DEFAULT_RETRY_CAP  # seconds: where an exponential backoff stops growing

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.retry_interval, self.retry_period, self.retry_backoff, self.retry_cap)

    def edited(self, changes: Mapping[str, object], *, clear_auth: bool = False) -> "Destination":
        """This destination with `changes` (field name -> value; None keeps a value).
        `clear_auth` removes the credentials before the new ones apply; Basic auth and a Bearer
        token exclude each other, so giving one removes the other."""
        given = {k: v for k, v in changes.items() if v is not None}
        cleared: dict = dict.fromkeys(AUTH_FIELDS) if clear_auth else {}
        if "basic_auth" in given:
            cleared["bearer"] = None
        if "bearer" in given:
            cleared["basic_auth"] = None
        return replace(self, **{**cleared, **given})


def destination(**values) -> Destination:
    """A Destination from possibly-None values (as options arrive), None meaning the default."""
    return Destination(**{k: v for k, v in values.items() if v is not None})


def default(name: str):
    """The default of a Destination field (for help texts)."""
    return next(f.default for f in fields(Destination) if f.name == name)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # a Bearer token: visible ASCII, no spaces (RFC 6750)


def check_destination(dest: Destination, formats: tuple[str, ...]) -> Destination:
    """Raise DestinationError on the first problem; return `dest` unchanged when it is sound.
    `formats`: the payload formats the owner can send (rules and endpoints differ)."""
    check_url(dest.url, allow_http=dest.allow_http)
    if dest.format not in formats:
        raise DestinationError(f"format must be one of {', '.join(formats)}, got {dest.format!r}")
    check_credentials(dest.basic_auth, dest.bearer, dest.api_key)
    check_range("retry interval", dest.retry_interval, RETRY_INTERVAL_RANGE, "seconds")
    check_range("retry period", dest.retry_period, RETRY_PERIOD_RANGE, "days")
    if dest.retry_backoff not in BACKOFFS:
        raise DestinationError(f"retry backoff must be one of {', '.join(BACKOFFS)}, "
                               f"got {dest.retry_backoff!r}")
    check_range("retry cap", dest.retry_cap, RETRY_CAP_RANGE, "seconds")
    if dest.retry_cap < dest.retry_interval:
        raise DestinationError(f"retry cap ({dest.retry_cap} s) must not be shorter than the "
                               f"retry interval ({dest.retry_interval} s)")
    check_range("timeout", dest.timeout, TIMEOUT_RANGE, "seconds")
    return dest


def check_range(what: str, value, bounds: tuple[int, int], unit: str,
                error: type[ValueError] = DestinationError) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise error(f"{what} must be between {lo} and {hi} {unit}, got {value}")


def check_url(url: str, *, allow_http: bool) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise DestinationError(f"URL {url!r} is not valid: {exc}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DestinationError(f"URL {url!r} must be an https:// URL with a host name")
    if parts.scheme == "http" and not allow_http:
        raise DestinationError(
            f"URL {url!r} is not HTTPS: content would travel unencrypted; "
            "use https:// or pass --allow-http explicitly"
        )
    if parts.username or parts.password:
        raise DestinationError("put credentials in --basic-auth, not in the URL")
    if _CONTROL.search(url) or " " in url:
        raise DestinationError("the URL contains a space or control character")


def check_credentials(basic_auth: str | None, bearer: str | None, api_key: str | None) -> None:
    """Basic auth XOR Bearer; nothing empty; no control characters (a token read from a file
    with its line end would break the request, and the error would quote the header)."""
    if basic_auth and bearer:
        raise DestinationError("choose either Basic auth or a Bearer token, not both")
    if basic_auth is not None and ":" not in basic_auth:
        raise DestinationError("--basic-auth must be USER:PASSWORD")
    for what, value in (("--basic-auth", basic_auth), ("--bearer", bearer), ("--api-key", api_key)):
        if value is None:
            continue
        if value == "":
            raise DestinationError(f"{what} must not be empty")
        if _CONTROL.search(value):
            raise DestinationError(f"{what} contains a control character (a line end from a file?)")
    if bearer is not None and not _TOKEN.fullmatch(bearer):
        raise DestinationError("--bearer must be visible ASCII characters without spaces")


_RECORD_URL = "endpoint"  # the URL's key in the record form, as spool files have always held it


@dataclass(frozen=True, kw_only=True)
class Target(Destination):
    kind: str  # rule | endpoint
    id: int | None  # rules.db id of the rule or endpoint (None: a target stored without one)
    name: str
    custom_headers: tuple[str, ...] = ()  # an endpoint's (model/endpoints.py); not in the record

    @classmethod
    def of(cls, kind: str, id: int | None, name: str, dest: Destination, *,  # noqa: A002
           custom_headers: tuple[str, ...] = ()) -> "Target":
        return cls(kind=kind, id=id, name=name, custom_headers=custom_headers,
                   **{f.name: getattr(dest, f.name) for f in fields(Destination)})

    def to_record(self, **route) -> dict:
        """The JSON-able form stored with an inbound delivery. `route`: settings of the route
        itself that the record carries along (a rule's `discard`)."""
        record = dict(zip(_RECORD_KEYS, _record_values(self)))
        record.update(route)
        return record

    @classmethod
    def from_record(cls, record: dict, kind: str = "rule") -> "Target":
        """A target from its record form, as written: TargetRecordError unless the name and
        URL are text and the id an integer or absent; other values are taken as they are (a
        spool record may come from an older mxhook), absent ones as None."""
        name, url, target_id = record.get("name"), record.get(_RECORD_URL), record.get("id")
        for what, value in (("name", name), ("url", url)):
            if not value:
                raise TargetRecordError(f"{what} is missing")
            if not isinstance(value, str):
                raise TargetRecordError(f"{what} is not a string: {type(value).__name__}")
        if target_id is not None and (isinstance(target_id, bool) or not isinstance(target_id, int)):
            raise TargetRecordError(f"id is not an integer: {type(target_id).__name__}")
        values = {f.name: record.get(f.name) for f in fields(Destination) if f.name != "url"}
        values.update(format=values["format"] or "json", allow_http=bool(values["allow_http"]),
                      dialect=values["dialect"] or "native", retry_backoff=values["retry_backoff"] or FIXED)
        return cls(kind=kind, id=target_id, name=name, url=url, **values)


# The record form's keys and the Target attributes they hold, in the order spool files have
# always had; one getter, as the milter writes a record for every message it accepts.
_RECORD_ATTRS = ("id", "name", *(f.name for f in fields(Destination)))
_RECORD_KEYS = tuple(_RECORD_URL if name == "url" else name for name in _RECORD_ATTRS)
_record_values = attrgetter(*_RECORD_ATTRS)
