"""What the seed systems' event dialects (smtp2go, paubox, msndr) do alike: take the one event
of a request and name it from their table, read its time, the recipient the application used,
and a JSON-safe number for its message. Pure: times are the event's own, never the clock's.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta
from typing import Iterable

from mxhook.model.events import us_from_iso
from mxhook.payloads.events import V1Text, as_dict

_EPOCH = datetime(1970, 1, 1)  # naive: isoformat() then has no offset, and `Z` is added


def text(value) -> str | None:
    """A text field: a str as it is; anything else as absent (None). Stored events hold text or
    null there (Event.from_meta checks); a number or list in a hand-made dict is not guessed at."""
    return value if type(value) is str else None


def headers_by_lower_name(event: dict) -> dict:
    """The event's custom headers by lower-case name (the first of names that differ in case):
    the milter keeps the names as the admin configured them, and a dialect looks up the
    headers it knows (`x-smtpapi`, `x-pm-tag`, ...) in any case."""
    headers = event.get("custom_headers")
    if not headers or not isinstance(headers, dict):
        return {}
    out = {}
    for name, value in headers.items():
        if isinstance(name, str):
            out.setdefault(name.lower(), value)
    return out


def first_text(event: dict, *keys: str) -> str | None:
    """The first of the fields `keys` that holds non-empty text, else None."""
    for key in keys:
        value = event.get(key)
        if value and type(value) is str:
            return value
    return None


def utc_time(us: int | None, timespec: str) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC with `Z`, to `timespec` ('seconds':
    '2026-11-22T12:00:00Z', 'milliseconds': '2026-11-22T12:00:00.123Z'), truncated; None for
    None or a time datetime cannot hold."""
    if us is None:
        return None
    try:
        return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec=timespec) + "Z"
    except OverflowError:
        return None


def micros(at) -> int | None:
    """`at` (ISO 8601, `Z` or an offset) in microseconds since the epoch; None when it is not a
    time (or outside what datetime can hold)."""
    if type(at) is not str:
        return None
    try:
        return us_from_iso(at)
    except (ValueError, OverflowError):
        return None


def delay_micros(delay) -> int | None:
    """Postfix's delay= (seconds from arrival) in microseconds; None unless a finite number >= 0."""
    if type(delay) not in (int, float) or delay < 0:
        return None
    micros = delay * 1_000_000
    return round(micros) if math.isfinite(micros) else None


def app_recipient(event: dict) -> str | None:
    """The address the application sent to: `orig_recipient` when Postfix logged one (aliasing,
    virtual rewriting), else `recipient` (docs/events.md)."""
    return first_text(event, "orig_recipient", "recipient")


def message_number(event: dict) -> int:
    """A number for (message, recipient), the same for every event of one recipient of one
    message and below 2**53 (exact in JavaScript and PHP): the first 53 bits of BLAKE2b-56 of
    'queue_id<US>message_id<US>recipient' (US = U+001F; absent parts empty; recipient as
    `app_recipient`). An event with neither a queue id nor a Message-ID gets the number of
    'event<US>' + its event id instead."""
    queue_id, message_id = text(event.get("queue_id")), text(event.get("message_id"))
    if queue_id or message_id:
        key = "\x1f".join((queue_id or "", message_id or "", app_recipient(event) or ""))
    else:
        key = "event\x1f" + (text(event.get("id")) or "")
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=7).digest()
    return int.from_bytes(digest, "big") >> 3


def one_named_event(events: Iterable[dict | V1Text], dialect: str,
                    names: dict[tuple[str, str | None], str]) -> tuple[dict, str]:
    """The one event of a request (a dict, or the V1Text the store may keep it as) and the
    dialect's name for it, from `names`, a table keyed by (type, bounce_type for `bounced`,
    else None); a bounce counts as hard only when it is classified hard. ValueError for a count
    other than one (the spooler sends one per request, splitting a batch made before a switch
    to the dialect: store/endpointbatches.py; a batch here is a caller's mistake, never cut
    short) and for a type the dialect does not send (fanned out before the switch: it fails
    alone, with this reason)."""
    events = list(events)
    if len(events) != 1:
        raise ValueError(f"dialect {dialect} posts one event per request, got {len(events)}")
    event = as_dict(events[0])
    etype = event.get("type")
    if etype == "bounced":
        name = names.get((etype, "hard" if event.get("bounce_type") == "hard" else "soft"))
    else:
        name = names.get((etype, None)) if type(etype) is str else None
    if name is None:
        raise ValueError(f"dialect {dialect} has no name for event type {etype!r} (an event "
                         "queued for the endpoint while it had another payload)")
    return event, name


# The bot a machine verdict names, by words of its reason (engagement.machine_reason, written by
# mxhook-track), as Mailgun's `client-info.bot` names them; a machine without one of these
# words is "generic" (a link scanner, a security gateway).
BOT_WORDS = (("apple", ("apple", "icloud", "private relay", "mpp")), ("gmail", ("gmail", "google")))


def bot_kind(engagement: dict) -> str:
    """"" unless engagement.machine is true; else "apple", "gmail" or "generic" (BOT_WORDS)."""
    if engagement.get("machine") is not True:
        return ""
    reason = (engagement.get("machine_reason") or "").lower()
    return next((kind for kind, words in BOT_WORDS if any(w in reason for w in words)), "generic")
