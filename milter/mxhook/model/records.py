"""What a spool record's metadata holds, one schema per kind (pure): `InboundRecord` (an
accepted message and the rules it goes to), `DeniedRecord` (a refused one, for the inbound log)
and, for kind `event`, `events.Event`.

Each has `to_meta()`, the JSON object of the record's metadata line (the keys of spool file
version 1, in the order written), and `from_meta(meta)`, which raises RecordError when the
metadata cannot be ingested: the spooler moves that one record to bad/ with the message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mxhook.model.recipients import DEFAULT_RECIPIENT_DELIMITER
from mxhook.model.targets import Target, TargetRecordError


class RecordError(ValueError):
    """A spool record that decoded but whose metadata cannot be ingested; says why."""


_STORED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def iso(value=None) -> str:
    """The stored form of a time (spool records, state.db): ISO 8601 UTC, microseconds, `Z`;
    `value` as to_datetime takes it (default: now)."""
    dt = datetime.now(timezone.utc) if value is None else to_datetime(value)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_datetime(value) -> datetime:
    """datetime (naive = UTC), epoch seconds, or ISO 8601 text (`Z` or offset; naive = UTC;
    a bare date means its midnight) -> aware UTC datetime."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    else:
        raise TypeError(f"not a time: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def check_time(meta: dict, key: str) -> None:
    """RecordError unless meta[key] is a time to_datetime understands (the stored form, which
    every mxhook writer uses, is recognized without parsing). A number too large for a datetime
    (datetime raises OverflowError or OSError EOVERFLOW for those) is out of range."""
    value = meta[key]
    if isinstance(value, str) and _STORED_TIME.fullmatch(value):
        return
    try:
        to_datetime(value)
    except (OverflowError, OSError) as exc:
        raise RecordError(f"bad {key!r}: time out of range: {value!r} ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise RecordError(f"bad {key!r}: {exc}") from None


def check_text(meta: dict, keys: tuple[str, ...], what: str) -> None:
    """These fields are text or absent: anything else (an object, a list) would fail the batch
    when bound to a column, or the payload when rendered."""
    for key in keys:
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{what} {key!r} is not a string: {type(value).__name__}")


# Those that go into inbound_log columns as they are (with a denied record's filter and reason).
_LOGGED_TEXT = ("queue_id", "mail_from", "client_addr", "client_name", "header_from", "subject",
                "message_id", "filter", "reason", "host_name")


@dataclass(slots=True)
class MessageFields:
    """The SMTP envelope of a message and the header fields the inbound log shows."""

    received: str | float | None = None  # the writers' form: '2026-11-22T12:00:00.000000Z'
    queue_id: str | None = None
    mail_from: str | None = None  # "" is the null sender
    client_addr: str | None = None
    client_name: str | None = None
    helo: str | None = None
    header_from: str | None = None
    subject: str | None = None
    message_id: str | None = None
    # this MX (Postfix's myhostname): the inbound log's hostName, seed 000's "host name of the
    # server that recorded the log"; records from before it was written have none
    host_name: str | None = None

    @property
    def sender(self) -> str:
        """Who the inbound log names as the sender: From, else MAIL FROM."""
        return self.header_from or self.mail_from or ""

    def _meta(self) -> dict:
        meta = {"received": self.received, "queue_id": self.queue_id, "mail_from": self.mail_from,
                "client_addr": self.client_addr, "client_name": self.client_name,
                "helo": self.helo, "header_from": self.header_from, "subject": self.subject,
                "message_id": self.message_id}
        if self.host_name is not None:
            meta["host_name"] = self.host_name
        return meta

    @staticmethod
    def _fields(meta: dict, what: str) -> dict:
        """The envelope fields of checked metadata, as keyword arguments."""
        if "received" in meta:
            check_time(meta, "received")
        check_text(meta, _LOGGED_TEXT, what)
        get = meta.get
        return {"received": get("received"), "queue_id": get("queue_id"),
                "mail_from": get("mail_from"), "client_addr": get("client_addr"),
                "client_name": get("client_name"), "helo": get("helo"),
                "header_from": get("header_from"), "subject": get("subject"),
                "message_id": get("message_id"), "host_name": get("host_name")}


@dataclass(slots=True)
class Routed:
    """The recipients of a message that one rule took, and that rule's target in its record
    form (targets.Target.to_record: the delivery keeps the target it was accepted under)."""

    recipients: list[str]
    target: dict

    @property
    def name(self) -> str:
        return self.target["name"]


# `[tracking] feedback_address` (ARF complaint reports), `unsubscribe_address` (mailto:)
INTERNAL_ROUTES = ("feedback", "unsubscribe")


@dataclass(slots=True)
class InboundRecord(MessageFields):
    """Kind `inbound`: an accepted message (the record's payload) and its deliveries, one per
    rule. `recipient_delimiter`: the `[milter] recipient_delimiter` the rules matched with, so
    a payload's `recipient_tag` is cut as the decision cut it; written only when it is not the
    default `+` (the meaning of a record without it). `authentication`: the message's SPF,
    DKIM, DMARC and ARC verdicts as the payload's `authentication` object (mailauth's
    `Verdicts.as_dict()`); None (not written) when none were computed, as in records from
    before they were."""

    deliveries: list[Routed] = field(default_factory=list)
    recipient_delimiter: str = DEFAULT_RECIPIENT_DELIMITER
    authentication: dict | None = None
    # mail mxhook answers itself (INTERNAL_ROUTES: an ARF report, a mailto: unsubscribe),
    # handed to its handler by the spooler instead of being posted; it has no deliveries
    internal: str | None = None

    def to_meta(self) -> dict:
        meta = self._meta()
        meta["deliveries"] = [{"recipients": d.recipients, "rule": d.target} for d in self.deliveries]
        if self.internal is not None:
            meta["internal"] = self.internal
        if self.recipient_delimiter != DEFAULT_RECIPIENT_DELIMITER:
            meta["recipient_delimiter"] = self.recipient_delimiter
        if self.authentication is not None:
            meta["authentication"] = self.authentication
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "InboundRecord":
        fields = cls._fields(meta, "inbound record")
        deliveries = meta.get("deliveries")
        internal = meta.get("internal")
        if internal is not None and internal not in INTERNAL_ROUTES:
            raise RecordError(f"inbound record for unknown internal route {internal!r}")
        if not isinstance(deliveries, list) or not (deliveries or internal):
            raise RecordError("inbound record without a 'deliveries' list")
        routed = []
        names = set()
        for i, entry in enumerate(deliveries):
            if not isinstance(entry, dict):
                raise RecordError(f"deliveries[{i}] is not an object")
            target = entry.get("rule")
            if not isinstance(target, dict):
                raise RecordError(f"deliveries[{i}] has no rule")
            try:
                Target.from_record(target)
            except TargetRecordError as exc:
                raise RecordError(f"deliveries[{i}].rule.{exc}") from None
            recipients = entry.get("recipients")
            if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
                raise RecordError(f"deliveries[{i}].recipients is not a list of addresses")
            if target["name"] in names:
                raise RecordError(f"rule {target['name']!r} appears twice in deliveries")
            names.add(target["name"])
            routed.append(Routed(recipients, target))
        check_text(meta, ("recipient_delimiter",), "inbound record")
        authentication = meta.get("authentication")
        if authentication is not None and not isinstance(authentication, dict):
            raise RecordError("inbound record 'authentication' is not an object: "
                              f"{type(authentication).__name__}")
        return cls(**fields, deliveries=routed,
                   recipient_delimiter=meta.get("recipient_delimiter", DEFAULT_RECIPIENT_DELIMITER),
                   authentication=authentication, internal=internal)


@dataclass(slots=True)
class DeniedRecord(MessageFields):
    """Kind `denied`: recipients refused (or bounced) and why, for the inbound log; no payload."""

    recipients: list[str] = field(default_factory=list)
    filter: str | None = None  # unknown_domain, no_rule, heuristic:<name>
    reason: str | None = None

    def to_meta(self) -> dict:
        meta = self._meta()
        meta.update(recipients=self.recipients, filter=self.filter, reason=self.reason)
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "DeniedRecord":
        fields = cls._fields(meta, "denied record")
        recipients = meta.get("recipients", [])
        if not isinstance(recipients, list):
            raise RecordError("denied record: 'recipients' is not a list")
        return cls(**fields, recipients=[str(r) for r in recipients or []],
                   filter=meta.get("filter"), reason=meta.get("reason"))
