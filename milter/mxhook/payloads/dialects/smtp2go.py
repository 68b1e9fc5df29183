"""SMTP2GO's webhook (seed 001): one event per POST, `application/x-www-form-urlencoded`. Pure.

Event names (mxhook type -> SMTP2GO `event`; `EVENT_NAMES`, keyed by type and, for `bounced`,
bounce_type; the rest `NOT_SENT`):
    queued -> processed, succeeded -> delivered, bounced -> bounce (`bounce` = its bounce_type),
    failed -> bounce (`bounce` = soft: Postfix gave up after temporary failures), blocked ->
    reject (refused at RCPT: the address is on the block list), opened -> open, clicked -> click,
    unsubscribed -> unsubscribe, resubscribed -> resubscribe, complained -> spam.
    Not sent: deferred (SMTP2GO keeps a message `processed` while it retries and posts nothing),
    registered and deleted (SMTP2GO has no events about its suppression list).

Fields, in this order (every one present, "" where mxhook does not know it; `host` and `bounce`
only in `bounce` events, as SMTP2GO sends them):
    event       the name above
    time        the event's `at`, UTC, '2026-11-22T12:00:00Z'
    sendtime    when the message reached Postfix, same form: `at` of queued and blocked events,
                `at` - `delay` (Postfix's delay=, to the precision it logs) of log events; "" for
                events without a delay (DSN reports)
    sender      envelope sender (MAIL FROM)
    from        the From header's address (the milter's; joined onto later events)
    rcpt        the recipient as the application gave it (orig_recipient, else recipient)
    recipients  "": an event is about one recipient, the message's others are not known to it
    auth        the SMTP AUTH user, else the submitting client's IP address
    host        the remote server that answered (remote_host)
    message     the remote server's reply, else Postfix's diagnostic, else the reason
                (a reject: "address is on the block list after a hard bounce")
    context     "": nothing mxhook records is SMTP2GO's "additional information"
    email_id    the Postfix queue id (it identifies the email in the mail log and
                `mxhook log events`, as SMTP2GO's Exim message id does there)
    bounce      hard / soft ("" for a bounced event without either)
    subject     Subject header
    srchost     the submitting client's IP address, in `processed` events; the opening, clicking
                or unsubscribing end user's (engagement.ip) in engagement events; else ""
Engagement events (open, click, unsubscribe, resubscribe, spam) have, between `subject` and
`srchost`, SMTP2GO's open/click fields from the event's engagement object (`ENGAGEMENT_FIELDS`):
`user-agent`, `read-secs` (always "": mxhook-track sees the pixel fetched, never how long the
message stays open), `client`, `client-device`, `client-os`, `geoip-continent`, `geoip-country`,
`geoip-city`; a click ends with `url`, the link's target. Their `sendtime` is "" (the event
carries no delay). The bot verdict (engagement.machine) has no SMTP2GO field: not carried; a
custom header named like one of these fields is left out of engagement events.
then the custom headers as fields named by the header (SMTP2GO's "Optional Email Headers"):
`ctx.custom_headers` when the endpoint selects some (in that order, "" when the message lacked
one), else every header the event carries (`[milter] event_headers`, named as configured). A
header whose name is a standard field's (any case) is left out, never overriding it.

Nothing in the body differs between attempts (no time of sending, no nonce), and
`ctx.api_key`, `ctx.tz` are not used: SMTP2GO's times are UTC and its body carries no key.
"""
from __future__ import annotations

from mxhook.model.events import BOUNCE_TYPES, ENGAGEMENT_TYPES
from mxhook.payloads import encodings
from mxhook.payloads.dialects import EventContext
from mxhook.payloads.dialects._fields import (app_recipient, delay_micros, first_text,
                                              micros, one_named_event, text, utc_time)
from mxhook.payloads.events import engagement_of, is_engagement

NAME = "smtp2go"
EVENTS_PER_REQUEST = 1

EVENT_NAMES: dict[tuple[str, str | None], str] = {  # (type, bounce_type of a bounced event)
    ("queued", None): "processed",
    ("succeeded", None): "delivered",
    ("bounced", "hard"): "bounce",
    ("bounced", "soft"): "bounce",
    ("failed", None): "bounce",
    ("blocked", None): "reject",
    ("opened", None): "open",
    ("clicked", None): "click",
    ("unsubscribed", None): "unsubscribe",
    ("resubscribed", None): "resubscribe",
    ("complained", None): "spam",
}
NOT_SENT = ("deferred", "registered", "deleted")
EVENT_TYPES = frozenset(etype for etype, _ in EVENT_NAMES)
# `bounce` of a failed event: an expiry or an "undeliverable" probe follows temporary failures
# only, which mxhook classifies soft (docs/events.md, "Hard or soft").
FAILED_BOUNCE = "soft"
# The events whose sendtime is their own time: the milter's, written while the client submits.
SUBMISSION_TYPES = frozenset(("queued", "blocked"))

STANDARD_FIELDS = ("event", "time", "sendtime", "sender", "from", "rcpt", "recipients", "auth",
                   "host", "message", "context", "email_id", "bounce", "subject", "srchost")
_STANDARD = frozenset(STANDARD_FIELDS)
# Engagement events' fields, between `subject` and `srchost` (SMTP2GO's order), each from the
# event's engagement object (None: `read-secs`, always ""); `url` (click only) comes last.
ENGAGEMENT_FIELDS = {
    "user-agent": "user_agent", "read-secs": None, "client": "client",
    "client-device": "client_device", "client-os": "client_os",
    "geoip-continent": "continent", "geoip-country": "country", "geoip-city": "city",
}
_ENGAGEMENT_NAMES = frozenset((*ENGAGEMENT_FIELDS, "url"))


def event_request(events: list[dict], ctx: EventContext) -> encodings.Rendered:
    event, name = one_named_event(events, NAME, EVENT_NAMES)
    etype = event["type"]
    at = micros(event.get("at"))
    if etype in SUBMISSION_TYPES:
        sent_at = at
    elif etype in ENGAGEMENT_TYPES:  # a reader's act, not the message's: no delay to count back
        sent_at = None
    else:
        delay = delay_micros(event.get("delay"))
        sent_at = None if at is None or delay is None else at - delay
    fields = {
        "event": name,
        "time": utc_time(at, "seconds") or "",
        "sendtime": utc_time(sent_at, "seconds") or "",
        "sender": text(event.get("sender")) or "",
        "from": text(event.get("header_from")) or "",
        "rcpt": app_recipient(event) or "",
        "recipients": "",
        "auth": first_text(event, "auth_user", "client_addr") or "",
    }
    if name == "bounce":
        fields["host"] = text(event.get("remote_host")) or ""
    fields["message"] = first_text(event, "reply", "diagnostic", "reason") or ""
    fields["context"] = ""
    fields["email_id"] = text(event.get("queue_id")) or ""
    if name == "bounce":
        bounce = FAILED_BOUNCE if etype == "failed" else event.get("bounce_type")
        fields["bounce"] = bounce if bounce in BOUNCE_TYPES else ""
    fields["subject"] = text(event.get("subject")) or ""
    if is_engagement(etype):
        engagement = engagement_of(event)
        for field, key in ENGAGEMENT_FIELDS.items():
            fields[field] = (engagement[key] or "") if key else ""
        fields["srchost"] = engagement["ip"] or ""
        if name == "click":
            fields["url"] = engagement["url"] or ""
        fields.update((k, v) for k, v in custom_header_fields(event.get("custom_headers"), ctx.custom_headers)
                      if k.lower() not in _ENGAGEMENT_NAMES)
        return encodings.form_urlencoded(fields)
    fields["srchost"] = (text(event.get("client_addr")) or "") if name == "processed" else ""
    fields.update(custom_header_fields(event.get("custom_headers"), ctx.custom_headers))
    return encodings.form_urlencoded(fields)


def custom_header_fields(headers, selected: tuple[str, ...]) -> list[tuple[str, str]]:
    """(field name, value) for the custom headers (module docstring)."""
    named = [(k, v) for k, v in headers.items() if type(k) is str] if isinstance(headers, dict) else []
    if selected:
        lower = {k.lower(): v for k, v in named}
        named = [(name, lower.get(name.lower())) for name in selected]
    return [(name, text(value) or "") for name, value in named
            if name and name.lower() not in _STANDARD]
