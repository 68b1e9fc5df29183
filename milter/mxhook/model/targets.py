"""Delivery targets: where and how a webhook is posted, shared by inbound routes (`Rule.target`)
and event endpoints (`Endpoint.target`). Pure: no database, no HTTP.

A target is the URL, the credentials (Basic XOR Bearer in `Authorization`; `api_key` goes into
the payload body), the payload format, the per-request timeout, whether plain http is allowed,
and the retry policy. Signing keys are not part of it: they are looked up by (`kind`, `id`) at
each attempt, so a rotation applies to retries.

An inbound delivery keeps the target it was accepted under: its record form (`to_record`) goes
into the spool record and into state.db (`deliveries.target`), and `from_record` reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass

from mxhook.model.retry import DEFAULT_POLICY, RetryPolicy

DEFAULT_TIMEOUT = 30  # seconds


@dataclass(frozen=True)
class Target:
    kind: str  # rule | endpoint
    id: int | None  # rules.db id of the rule or endpoint (None: a target stored without one)
    name: str
    url: str
    format: str = "json"
    basic_auth: str | None = None  # "user:password"
    bearer: str | None = None
    api_key: str | None = None  # sent in the payload body
    retry: RetryPolicy = DEFAULT_POLICY
    timeout: float | None = DEFAULT_TIMEOUT
    allow_http: bool = False

    def to_record(self, **route) -> dict:
        """The JSON-able form stored with an inbound delivery (`endpoint` is the URL). `route`:
        settings of the route itself that the record carries along (a rule's `discard`)."""
        return {
            "id": self.id, "name": self.name, "endpoint": self.url, "format": self.format,
            "basic_auth": self.basic_auth, "bearer": self.bearer, "api_key": self.api_key,
            "retry_interval": self.retry.interval, "retry_period": self.retry.period,
            "timeout": self.timeout, "allow_http": self.allow_http, **route,
        }

    @classmethod
    def from_record(cls, record: dict, kind: str = "rule") -> "Target":
        """A target from its record form, as written (ingest.check_record checked the name and
        URL; other values are taken as they are, absent ones as None)."""
        return cls(
            kind=kind, id=record.get("id"), name=record["name"], url=record["endpoint"],
            format=record.get("format") or "json", basic_auth=record.get("basic_auth"),
            bearer=record.get("bearer"), api_key=record.get("api_key"),
            retry=RetryPolicy(record.get("retry_interval"), record.get("retry_period")),
            timeout=record.get("timeout"), allow_http=bool(record.get("allow_http")),
        )
