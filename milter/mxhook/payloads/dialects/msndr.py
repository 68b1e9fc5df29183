"""msndr's webhook (seed 003): one event per POST, `application/json`,
`{"message": {"id"}, "event": {"name", "timestamp", "data"}}`. Pure.

Event names (`EVENT_NAMES`, keyed by mxhook type and, for `bounced`, bounce_type; the rest
`NOT_SENT`):
    succeeded -> delivered
    bounced, hard -> hard_bounced (the address does not exist: docs/events.md, "Hard or soft")
    bounced, soft -> soft_bounced (mailbox full, policy, ...: the address may work next time)
    deferred -> soft_bounced (temporarily rejected; Postfix retries, as msndr's "may retry")
    failed -> soft_bounced (Postfix gave up after temporary failures; `data.type` says failed)
    blocked -> skipped (not sent: the address is on the block list)
    opened -> opened, clicked -> clicked, unsubscribed -> unsubscribed, complained -> complained
    Not sent: queued, registered, deleted, resubscribed (msndr has no such events).

Fields:
    message.id       integer < 2**53: `_fields.message_number`, one number per recipient of a
                     message (msndr's message is one recipient's), from queue id, Message-ID and
                     recipient; `data` has the identifiers themselves
    event.name       the name above
    event.timestamp  the event's `at` as an integer Unix time (seconds, truncated); null if `at`
                     is not a time
    event.data       msndr's "additional context": for every event the same keys, null where
                     not known: `event_id` (mxhook's), `type` (mxhook's event type), `recipient`
                     (as the application gave it), `message_id` (Message-ID header),
                     `queue_id`, `dsn`, `reply` (the remote server's reply, else Postfix's
                     diagnostic, else the reason); a `clicked` event's data ends with `url`,
                     the link's target, as msndr's example has it. msndr documents nothing
                     else about opens and clicks: the reader's client, place and the bot
                     verdict are not carried.

Nothing in the body differs between attempts; `ctx` is not used (Unix times have no zone; the
body carries no key).
"""
from __future__ import annotations

from mxhook.payloads import encodings
from mxhook.payloads.dialects import EventContext
from mxhook.payloads.dialects._fields import (app_recipient, first_text, message_number, micros,
                                              one_named_event, text)
from mxhook.payloads.events import engagement_of

NAME = "msndr"
EVENTS_PER_REQUEST = 1

EVENT_NAMES: dict[tuple[str, str | None], str] = {
    ("succeeded", None): "delivered",
    ("bounced", "hard"): "hard_bounced",
    ("bounced", "soft"): "soft_bounced",
    ("deferred", None): "soft_bounced",
    ("failed", None): "soft_bounced",
    ("blocked", None): "skipped",
    ("opened", None): "opened",
    ("clicked", None): "clicked",
    ("unsubscribed", None): "unsubscribed",
    ("complained", None): "complained",
}
NOT_SENT = ("queued", "registered", "deleted", "resubscribed")
EVENT_TYPES = frozenset(etype for etype, _ in EVENT_NAMES)


def event_request(events: list[dict], ctx: EventContext) -> encodings.Rendered:
    event, name = one_named_event(events, NAME, EVENT_NAMES)
    at = micros(event.get("at"))
    doc = {
        "message": {"id": message_number(event)},
        "event": {
            "name": name,
            "timestamp": None if at is None else at // 1_000_000,
            "data": {
                "event_id": text(event.get("id")),
                "type": event["type"],
                "recipient": app_recipient(event),
                "message_id": text(event.get("message_id")),
                "queue_id": text(event.get("queue_id")),
                "dsn": text(event.get("dsn")),
                "reply": first_text(event, "reply", "diagnostic", "reason"),
            },
        },
    }
    if name == "clicked":
        doc["event"]["data"]["url"] = engagement_of(event)["url"]
    return encodings.json(doc)
