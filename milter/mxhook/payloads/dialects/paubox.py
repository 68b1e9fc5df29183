"""Paubox's webhook (seed 002): one event per POST, `application/json`,
`{"event_name": ..., "payload": {...}}` with Paubox's API Mail Log payload. Pure.

Event names (`EVENT_NAMES`, keyed by mxhook type and, for `bounced`, bounce_type; the rest
`NOT_SENT`). Paubox triggers its failures by the bounce class ("Temporary Failure: on soft
bounce", "Permanent Failure: on hard bounce"), so they follow mxhook's hard/soft (hard = the
address does not exist, docs/events.md):
    succeeded -> api_mail_log_delivered
    bounced, hard -> api_mail_log_permanent_failure
    bounced, soft -> api_mail_log_temporary_failure (mailbox full, policy, ...: not the address)
    deferred -> api_mail_log_temporary_failure (Postfix retries)
    failed -> api_mail_log_temporary_failure (Postfix gave up after temporary failures: soft)
    opened -> api_mail_log_opened (the same payload: Paubox's open event carries nothing about
    the reader, so neither the reader's client, place nor the bot verdict is carried)
    Not sent: queued, blocked, registered, deleted, clicked, unsubscribed, resubscribed,
    complained (Paubox has no such events).

`payload`, every key always present (null where mxhook does not know it):
    id                  integer < 2**53: `_fields.message_number`, one number per recipient of a
                        message (Paubox's id is its mail log entry's, which each event of that
                        entry carries), from queue id, Message-ID and recipient
    subject             Subject header
    header_message_id   Message-ID header, with its angle brackets
    source_tracking_id  null: the id Paubox's send API returns; mail sent over SMTP has none
    outbound_queue_id   the Postfix queue id
    time                the event's `at`, UTC, milliseconds: '2022-04-18T20:27:25.379Z'
    from                the From header's address, else the envelope sender
    to                  the recipient as the application gave it (orig_recipient, else recipient)

Nothing in the body differs between attempts; `ctx` is not used (Paubox's times are UTC, its
body carries no key).
"""
from __future__ import annotations

from mxhook.payloads import encodings
from mxhook.payloads.dialects import EventContext
from mxhook.payloads.dialects._fields import (app_recipient, first_text, message_number, micros,
                                              one_named_event, text, utc_time)

NAME = "paubox"
EVENTS_PER_REQUEST = 1

DELIVERED = "api_mail_log_delivered"
TEMPORARY = "api_mail_log_temporary_failure"
PERMANENT = "api_mail_log_permanent_failure"
OPENED = "api_mail_log_opened"
EVENT_NAMES: dict[tuple[str, str | None], str] = {
    ("succeeded", None): DELIVERED,
    ("bounced", "hard"): PERMANENT,
    ("bounced", "soft"): TEMPORARY,
    ("deferred", None): TEMPORARY,
    ("failed", None): TEMPORARY,
    ("opened", None): OPENED,
}
NOT_SENT = ("queued", "blocked", "registered", "deleted", "clicked", "unsubscribed", "resubscribed",
            "complained")
EVENT_TYPES = frozenset(etype for etype, _ in EVENT_NAMES)


def event_request(events: list[dict], ctx: EventContext) -> encodings.Rendered:
    event, name = one_named_event(events, NAME, EVENT_NAMES)
    doc = {
        "event_name": name,
        "payload": {
            "id": message_number(event),
            "subject": text(event.get("subject")),
            "header_message_id": text(event.get("message_id")),
            "source_tracking_id": None,
            "outbound_queue_id": text(event.get("queue_id")),
            "time": utc_time(micros(event.get("at")), "milliseconds"),
            "from": first_text(event, "header_from", "sender"),
            "to": app_recipient(event),
        },
    }
    return encodings.json(doc)
