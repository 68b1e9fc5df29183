"""What the tests of the seed systems' event dialects (test_dialect_smtp2go.py, _paubox, _msndr)
share: the events they render, the golden-file check, hostile values, and the checks every
one-event-per-request dialect passes.

Golden bodies are in golden/dialects/<dialect>/<case>.<ext>, byte for byte. A deliberate change
re-records them (then read the diff):

    MXHOOK_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_dialect_smtp2go.py
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import strategies as st

from mxhook.model.events import ENGAGEMENT_KEYS, TYPES
from mxhook.payloads.dialects import EventContext
from mxhook.payloads.events import sample_event, v1_text

GOLDEN = Path(__file__).parent / "golden" / "dialects"
CTX = EventContext(request_id="evr_0001", now=1_800_000_000.0, nonce="n-1", endpoint_id=3)

_MESSAGE = {  # what a log event carries after the spooler's join with its queued event
    "queue_id": "4XbQ1k2Lmz", "sender": "app@ours.example", "header_from": "app@ours.example",
    "message_id": "<order-1187@ours.example>", "subject": "Your order has shipped",
    "client_addr": "10.0.0.5", "auth_user": "shop", "custom_headers": {"x-campaign": "autumn-24"},
}
# What mxhook-track records of a reader (engagement object; absent keys are null)
_READER = {"sending_domain": "ours.example", "ip": "203.0.113.9",
           "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
                         "(KHTML, like Gecko) Mobile/15E148",
           "client": "Mobile Safari", "client_device": "mobile", "client_os": "iOS", "continent": "EU",
           "country": "FR", "city": "Lyon"}
_REMOTE = {"remote_host": "mx.customer.example[192.0.2.25]", "relay": "mx.customer.example[192.0.2.25]:25"}

# One event per case, as stored (Event.to_dict() enriched); not every dialect sends every one.
EVENTS: dict[str, dict] = {
    "queued": {"id": "18ea5ff0c0000000aaaaaaaaaaa1", "type": "queued", "at": "2026-11-22T13:08:07.500000Z",
               "source": "milter", "recipient": "gone@customer.example", **_MESSAGE},
    "succeeded": {"id": "18ea5ff0c0000000aaaaaaaaaaa2", "type": "succeeded", "at": "2026-11-22T13:08:09.000000Z",
                  "source": "log", "recipient": "ok@customer.example", "dsn": "2.0.0", "delay": 1.49,
                  "reply": "250 2.0.0 Ok: queued as 3F2A1B0C9D", "queued_as": "3F2A1B0C9D", **_REMOTE, **_MESSAGE},
    "deferred": {"id": "18ea5ff0c0000000aaaaaaaaaaa3", "type": "deferred", "at": "2026-11-22T13:08:09.000000Z",
                 "source": "log", "recipient": "later@customer.example", "dsn": "4.2.2", "delay": 2,
                 "reply": "452 4.2.2 Mailbox full, try again later", **_REMOTE, **_MESSAGE},
    "bounced_hard": {"id": "18ea5ff0c0000000aaaaaaaaaaa4", "type": "bounced", "at": "2026-11-22T13:08:09.180012Z",
                     "source": "log", "recipient": "gone@customer.example", "dsn": "5.1.1", "bounce_type": "hard",
                     "delay": 1.2, "reply": "550 5.1.1 <gone@customer.example>: Recipient address rejected: "
                                            "User unknown", **_REMOTE, **_MESSAGE},
    "bounced_soft": {"id": "18ea5ff0c0000000aaaaaaaaaaa5", "type": "bounced", "at": "2026-11-22T13:08:09.180012Z",
                     "source": "log", "recipient": "full@customer.example", "dsn": "5.2.2", "bounce_type": "soft",
                     "delay": 0.25, "reply": "552 5.2.2 Mailbox full", **_REMOTE, **_MESSAGE},
    "bounced_dsn": {"id": "18ea5ff0c0000000aaaaaaaaaaa6", "type": "bounced", "at": "2026-11-22T14:00:00.000000Z",
                    "source": "dsn", "recipient": "gone@customer.example", "dsn": "5.1.1", "bounce_type": "hard",
                    "diagnostic": "smtp; 550 5.1.1 user unknown", "remote_host": "mx.customer.example",
                    **_MESSAGE},
    "failed_expired": {"id": "18ea5ff0c0000000aaaaaaaaaaa7", "type": "failed", "at": "2026-11-27T13:08:09.000000Z",
                       "source": "log", "recipient": "later@customer.example", "dsn": "4.4.1", "delay": 432000.5,
                       "reason": "expired", "diagnostic": "connect to mx.customer.example[192.0.2.25]:25: "
                                                          "Connection timed out", **_REMOTE, **_MESSAGE},
    "blocked": {"id": "18ea5ff0c0000000aaaaaaaaaaa8", "type": "blocked", "at": "2026-11-22T13:08:07.100000Z",
                "source": "milter", "recipient": "gone@customer.example", "sender": "app@ours.example",
                "client_addr": "10.0.0.5", "auth_user": None, "queue_id": None,
                "reason": "address is on the block list after a hard bounce", "custom_headers": {}},
    "registered": {"id": "registered-gone@customer.example-18ea5ff0c0000000aaaaaaaaaaa4", "type": "registered",
                   "at": "2026-11-22T13:08:09.279427Z", "source": "log", "recipient": "gone@customer.example",
                   "reason": "hard bounce", "custom_headers": {}},
    "deleted": {"id": "18ea5ff0c0000000aaaaaaaaaaa9", "type": "deleted", "at": "2026-11-23T08:00:00.000000Z",
                "source": "cli", "recipient": "gone@customer.example", "reason": "admin", "custom_headers": {}},
    "aliased": {"id": "18ea5ff0c0000000aaaaaaaaaab0", "type": "succeeded", "at": "2026-11-22T13:08:09.000000Z",
                "source": "log", "recipient": "jane@mailbox.customer.example",
                "orig_recipient": "sales@customer.example", "relay": "local", "delay": 0.1, **_MESSAGE},
    "minimal": {"id": "x1", "type": "succeeded", "at": "2026-11-22T13:08:09.000000Z"},
    "offset_time": {"id": "x2", "type": "succeeded", "at": "2026-03-29T01:30:00.123456+02:00",
                    "recipient": "ok@customer.example", "delay": 1.0},
    "not_a_time": {"id": "x3", "type": "succeeded", "at": "not a time", "recipient": "ok@customer.example"},
    "hostile": {"id": "x4", "type": "bounced", "bounce_type": "hard", "at": "2026-11-22T13:08:09.180012Z",
                "recipient": "\"q\"@customer.example", "queue_id": "4XbQ1k2Lmz",
                "subject": "=HYPERLINK(\"x\") {{ 7*7 }} {% if %} \\ \r\n\t\x00\x1b \u2028 caf\u00e9 \U0001f600 a&b=c+d%20",
                "header_from": "a&b=c@ours.example", "message_id": "<\"}{@ours.example>",
                "reply": "550 {{x}} \"\u00fc\"", "custom_headers": {"x-tag": "a&b=c {{ d }}\r\n"}},
    "surrogates": {"id": "x5", "type": "bounced", "bounce_type": "soft", "at": "2026-11-22T13:08:09.180012Z",
                   "recipient": "ok@customer.example", "subject": "lone \ud800 pair \ud83d\ude00",
                   "custom_headers": {"x-\udcff": "v\udc80"}},
    "long_subject": {"id": "x6", "type": "succeeded", "at": "2026-11-22T13:08:09.000000Z",
                     "recipient": "ok@customer.example", "subject": "\u00e9" * 100_000},
    "wrong_types": {"id": 7, "type": "succeeded", "at": "2026-11-22T13:08:09.000000Z", "recipient": ["a"],
                    "subject": 12, "delay": "3", "message_id": {"x": 1}, "custom_headers": "not a dict"},
    # engagement events: mxhook-track's (opens, clicks, the unsubscribe page) and the feedback
    # handler's (ARF complaints, mailto: unsubscribes), joined with their message's queued event
    "opened": {"id": "18ea60f0c0000000bbbbbbbbbbb1", "type": "opened", "at": "2026-11-22T15:02:41.250000Z",
               "source": "track", "recipient": "ok@customer.example", **_MESSAGE,
               "engagement": {**_READER, "machine": False}},
    "opened_machine": {"id": "18ea60f0c0000000bbbbbbbbbbb2", "type": "opened", "at": "2026-11-22T13:08:12.000000Z",
                       "source": "track", "recipient": "ok@customer.example", **_MESSAGE,
                       "engagement": {"sending_domain": "ours.example", "ip": "17.58.101.2",
                                      "user_agent": "Mozilla/5.0", "machine": True,
                                      "machine_reason": "Apple Mail Privacy Protection (iCloud Private Relay network)"}},
    "opened_several_recipients": {"id": "18ea60f0c0000000bbbbbbbbbbb3", "type": "opened",
                                  "at": "2026-11-22T15:02:41.250000Z", "source": "track", "recipient": None,
                                  **_MESSAGE, "engagement": {**_READER, "machine": False}},
    "clicked": {"id": "18ea60f0c0000000bbbbbbbbbbb4", "type": "clicked", "at": "2026-11-22T15:03:00.500000Z",
                "source": "track", "recipient": "ok@customer.example", **_MESSAGE,
                "engagement": {**_READER, "url": "https://shop.ours.example/orders/1187?utm_source=mail&x=1",
                               "link": 2, "machine": False}},
    "clicked_scanner": {"id": "18ea60f0c0000000bbbbbbbbbbb5", "type": "clicked", "at": "2026-11-22T13:08:10.000000Z",
                        "source": "track", "recipient": "ok@customer.example", **_MESSAGE,
                        "engagement": {"url": "https://shop.ours.example/orders/1187", "link": 0,
                                       "sending_domain": "ours.example", "ip": "198.51.100.7",
                                       "user_agent": "Mozilla/5.0 (compatible; SafeLinks)", "machine": True,
                                       "machine_reason": "clicked 1 s after delivery"}},
    "unsubscribed": {"id": "18ea60f0c0000000bbbbbbbbbbb6", "type": "unsubscribed", "at": "2026-11-22T15:04:00.000000Z",
                     "source": "track", "recipient": "ok@customer.example", **_MESSAGE, "engagement": _READER},
    "unsubscribed_mailto": {"id": "18ea60f0c0000000bbbbbbbbbbb7", "type": "unsubscribed",
                            "at": "2026-11-22T15:05:00.000000Z", "source": "feedback",
                            "recipient": "ok@customer.example", **_MESSAGE,
                            "engagement": {"sending_domain": "ours.example"}},
    "resubscribed": {"id": "18ea60f0c0000000bbbbbbbbbbb8", "type": "resubscribed", "at": "2026-11-22T15:06:00.000000Z",
                     "source": "track", "recipient": "ok@customer.example", **_MESSAGE, "engagement": _READER},
    "complained": {"id": "18ea60f0c0000000bbbbbbbbbbb9", "type": "complained", "at": "2026-11-23T09:00:00.000000Z",
                   "source": "feedback", "recipient": "ok@customer.example", **_MESSAGE,
                   "engagement": {"sending_domain": "ours.example", "feedback_type": "abuse"}},
    "opened_privacy": {"id": "18ea60f0c0000000bbbbbbbbbbc0", "type": "opened", "at": "2026-11-22T15:02:41.250000Z",
                       "source": "track", "recipient": "ok@customer.example", **_MESSAGE,  # privacy = aggregate
                       "engagement": {**_READER, "ip": None, "user_agent": None, "machine": False}},
    "clicked_hostile": {"id": "x8", "type": "clicked", "at": "2026-11-22T15:03:00.500000Z", "source": "track",
                        "recipient": "ok@customer.example",
                        "engagement": {"url": "https://x.example/?q=\"a\"&b={{ 7*7 }}&c=%00\r\n\u2028\ud800",
                                       "link": 1, "user_agent": "Evil \"UA\" {% raw %}\x00\x1b\ud83d",
                                       "client": "{{ client }}", "city": "S\u00e3o Paulo",
                                       "ip": "2001:db8::1"}},
    "engagement_wrong_types": {"id": "x9", "type": "clicked", "at": "2026-11-22T15:03:00.500000Z",
                               "recipient": "ok@customer.example",
                               "engagement": {"url": ["https://x.example/"], "link": "2", "machine": "yes",
                                              "ip": 7, "city": {"a": 1}}},
    "engagement_not_an_object": {"id": "x10", "type": "opened", "at": "2026-11-22T15:03:00.500000Z",
                                 "recipient": "ok@customer.example", "engagement": "not a dict"},
}


def cases(event_types: frozenset[str]) -> dict[str, dict]:
    """The events a dialect sends (its EVENT_TYPES)."""
    return {name: e for name, e in EVENTS.items() if e["type"] in event_types}


def unsent_cases(event_types: frozenset[str]) -> dict[str, dict]:
    return {name: e for name, e in EVENTS.items() if e["type"] not in event_types}


def check_golden_bodies(module, receive, extra: dict[str, tuple[dict, EventContext]] | None = None) -> None:
    """Each case the dialect sends (with CTX), and each of `extra` (case -> (event, ctx)), gives
    a body `receive` accepts that is golden/dialects/<dialect>/<case>.<form|json> byte for
    byte (written when MXHOOK_GOLDEN_WRITE is set); no other golden file is there."""
    todo = {name: (event, CTX) for name, event in cases(module.EVENT_TYPES).items()} | (extra or {})
    folder = GOLDEN / module.NAME
    expected = set()
    for name, (event, ctx) in todo.items():
        rendered = module.event_request([event], ctx)
        receive(rendered)
        path = folder / f"{name}.{'form' if 'form' in rendered.content_type else 'json'}"
        expected.add(path.name)
        if os.environ.get("MXHOOK_GOLDEN_WRITE"):
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rendered.body)
        assert path.exists(), f"no golden body {path}: record it with MXHOOK_GOLDEN_WRITE=1"
        assert rendered.body == path.read_bytes(), f"{path} changed"
    assert {p.name for p in folder.iterdir()} == expected, "golden files of no case"


def check_mapping(module, receive) -> None:
    """Every event type of the vocabulary is either sent (EVENT_TYPES) or not (NOT_SENT)."""
    assert module.EVENT_TYPES.isdisjoint(module.NOT_SENT)
    assert sorted(module.EVENT_TYPES | set(module.NOT_SENT)) == sorted(TYPES)
    assert module.EVENTS_PER_REQUEST == 1


def check_inputs(module, receive) -> None:
    """A dialect takes the forms an event reaches it in: the dict (in any iterable), the
    pre-rendered V1Text the store may keep it as (same body), and `mxhook endpoint test`'s
    sample event of each type it sends."""
    for event in cases(module.EVENT_TYPES).values():
        body = module.event_request([event], CTX)
        assert module.event_request(iter([event]), CTX) == body
        assert module.event_request([v1_text(event)], CTX) == body
    for etype in module.EVENT_TYPES:
        receive(module.event_request([sample_event(etype)], CTX))


def check_one_event_per_request(module, receive) -> None:
    event = next(iter(cases(module.EVENT_TYPES).values()))
    for events in ([], [event, event]):
        with pytest.raises(ValueError, match="one event per request"):
            module.event_request(events, CTX)
    for event in unsent_cases(module.EVENT_TYPES).values():
        with pytest.raises(ValueError, match="no name for event type"):
            module.event_request([event], CTX)


def check_same_body_on_every_attempt(module, receive) -> None:
    """Nothing per attempt goes into these bodies: another attempt (time, nonce), another
    endpoint time zone, even another request id give the same bytes."""
    for event in cases(module.EVENT_TYPES).values():
        first = module.event_request([event], CTX)
        for ctx in (dataclasses.replace(CTX, now=CTX.now + 3600, nonce="n-2"),
                    dataclasses.replace(CTX, tz=ZoneInfo("America/St_Johns")),
                    dataclasses.replace(CTX, request_id="evr_other", tz=timezone.utc)):
            assert module.event_request([dict(event)], ctx) == first


# What every one-event-per-request dialect passes: check(dialect module, its test's receiver).
CONFORMANCE = (check_mapping, check_inputs, check_one_event_per_request, check_same_body_on_every_attempt)


# Hostile values: text that breaks hand-made JSON or forms, lone surrogates, other types.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates included
    st.sampled_from(['"', "\\", "{{ x }}", "{%", "\r\n", "\x00", "&=+%", "\u2028", "\ud800", "a" * 5000]),
)
HOSTILE_VALUES = st.one_of(st.none(), HOSTILE_TEXT, st.integers(), st.floats(), st.booleans(),
                           st.lists(st.text(max_size=3), max_size=2))
TIMES = st.one_of(st.sampled_from(["2026-11-22T13:08:09.180012Z", "2026-03-29T01:30:00+02:00",
                                   "1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "not a time"]),
                  HOSTILE_VALUES)


def hostile_events(event_types: frozenset[str]):
    """Event dicts of the types a dialect sends, every other field hostile."""
    return st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(event_types)), "at": TIMES},
        optional={key: HOSTILE_VALUES for key in (
            "id", "recipient", "orig_recipient", "sender", "header_from", "message_id", "subject",
            "queue_id", "dsn", "remote_host", "reply", "diagnostic", "client_addr", "auth_user",
            "reason", "delay")} | {
            "bounce_type": st.one_of(st.sampled_from(["hard", "soft"]), HOSTILE_VALUES),
            "engagement": st.one_of(HOSTILE_VALUES, st.dictionaries(st.sampled_from(ENGAGEMENT_KEYS),
                                                                    HOSTILE_VALUES, max_size=6)),
            "custom_headers": st.one_of(HOSTILE_VALUES, st.dictionaries(HOSTILE_TEXT, HOSTILE_VALUES, max_size=3)),
        })


def scrubbed(value: str) -> str:
    """What a string becomes in a body: lone surrogates as U+FFFD."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
