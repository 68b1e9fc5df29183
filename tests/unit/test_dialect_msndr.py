"""The msndr event dialect: golden bodies, a receiver that reads the POST as msndr documents it
(seed 003: `message.id`, `event.name`, `event.timestamp` in Unix time, `event.data`), hostile
values, one event per request, the same body on every attempt. Golden files: see
seed_dialect_cases.py."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from mxhook.payloads.dialects import msndr
from tests.unit import seed_dialect_cases as dc

MSNDR_EVENTS = {"delivered", "opened", "clicked", "unsubscribed", "complained", "skipped",
                "soft_bounced", "hard_bounced"}
DATA_KEYS = ["event_id", "type", "recipient", "message_id", "queue_id", "dsn", "reply"]
CASES = dc.cases(msndr.EVENT_TYPES)


def receive(rendered) -> dict:
    """An msndr webhook receiver: a JSON POST `{"message": {"id"}, "event": {"name",
    "timestamp", "data"}}`; checks every key and its type."""
    assert rendered.content_type == "application/json"
    doc = json.loads(rendered.body.decode("utf-8"))
    assert list(doc) == ["message", "event"]
    assert list(doc["message"]) == ["id"]
    assert type(doc["message"]["id"]) is int and 0 <= doc["message"]["id"] < 2 ** 53
    event = doc["event"]
    assert list(event) == ["name", "timestamp", "data"]
    assert event["name"] in MSNDR_EVENTS
    assert event["timestamp"] is None or type(event["timestamp"]) is int
    assert list(event["data"]) == DATA_KEYS + (["url"] if event["name"] == "clicked" else [])
    assert all(v is None or type(v) is str for v in event["data"].values())
    return doc


def test_golden_bodies():
    dc.check_golden_bodies(msndr, receive)


def test_names_are_the_systems():
    assert set(msndr.EVENT_NAMES.values()) <= MSNDR_EVENTS


@pytest.mark.parametrize("check", dc.CONFORMANCE, ids=lambda c: c.__name__)
def test_conformance(check):
    check(msndr, receive)


@pytest.mark.parametrize("case, name", [
    ("succeeded", "delivered"),
    ("bounced_hard", "hard_bounced"),
    ("bounced_dsn", "hard_bounced"),
    ("bounced_soft", "soft_bounced"),
    ("deferred", "soft_bounced"),
    ("failed_expired", "soft_bounced"),
    ("blocked", "skipped"),
    ("opened", "opened"),
    ("opened_machine", "opened"),
    ("clicked", "clicked"),
    ("unsubscribed", "unsubscribed"),
    ("unsubscribed_mailto", "unsubscribed"),
    ("complained", "complained"),
])
def test_event_names(case, name):
    assert receive(msndr.event_request([CASES[case]], dc.CTX))["event"]["name"] == name


def test_fields():
    doc = receive(msndr.event_request([CASES["bounced_hard"]], dc.CTX))
    assert doc["event"]["timestamp"] == 1795352889  # 2026-11-22T13:08:09.180012Z, truncated
    assert doc["event"]["data"] == {
        "event_id": "18ea5ff0c0000000aaaaaaaaaaa4", "type": "bounced", "recipient": "gone@customer.example",
        "message_id": "<order-1187@ours.example>", "queue_id": "4XbQ1k2Lmz", "dsn": "5.1.1",
        "reply": "550 5.1.1 <gone@customer.example>: Recipient address rejected: User unknown"}
    data = receive(msndr.event_request([CASES["failed_expired"]], dc.CTX))["event"]["data"]
    assert data["type"] == "failed" and data["reply"].startswith("connect to ")
    data = receive(msndr.event_request([CASES["blocked"]], dc.CTX))["event"]["data"]
    assert data["reply"] == "address is on the block list after a hard bounce"


def test_message_id_is_one_per_recipient_of_a_message():
    ids = {case: receive(msndr.event_request([CASES[case]], dc.CTX))["message"]["id"]
           for case in ("bounced_hard", "bounced_dsn", "deferred", "failed_expired", "bounced_soft")}
    assert ids["bounced_hard"] == ids["bounced_dsn"] and ids["deferred"] == ids["failed_expired"]
    assert len({ids["bounced_hard"], ids["deferred"], ids["bounced_soft"]}) == 3


def test_recipient_is_the_address_the_application_used():
    data = receive(msndr.event_request([CASES["aliased"]], dc.CTX))["event"]["data"]
    assert data["recipient"] == "sales@customer.example"


def test_unknown_values_are_null():
    doc = receive(msndr.event_request([CASES["minimal"]], dc.CTX))
    assert {k for k, v in doc["event"]["data"].items() if v is not None} == {"event_id", "type"}
    assert receive(msndr.event_request([CASES["not_a_time"]], dc.CTX))["event"]["timestamp"] is None
    assert receive(msndr.event_request([CASES["offset_time"]], dc.CTX))["event"]["timestamp"] == 1774740600


def test_hostile_text_survives():
    event = CASES["hostile"]
    data = receive(msndr.event_request([event], dc.CTX))["event"]["data"]
    assert (data["recipient"], data["message_id"], data["reply"]) == \
        (event["recipient"], event["message_id"], event["reply"])


@settings(max_examples=300, deadline=None)
@given(dc.hostile_events(msndr.EVENT_TYPES))
def test_hostile_events_never_break_the_json(event):
    data = receive(msndr.event_request([event], dc.CTX))["event"]["data"]
    for key in ("message_id", "queue_id", "dsn"):
        if type(event.get(key)) is str:
            assert data[key] == dc.scrubbed(event[key])


def test_clicked_has_the_url():
    """msndr's example: `clicked` with `data.url`; other events have no url."""
    data = receive(msndr.event_request([CASES["clicked"]], dc.CTX))["event"]["data"]
    assert data["url"] == "https://shop.ours.example/orders/1187?utm_source=mail&x=1"
    assert data["type"] == "clicked" and data["queue_id"] == "4XbQ1k2Lmz"
    assert "url" not in receive(msndr.event_request([CASES["opened"]], dc.CTX))["event"]["data"]
    hostile = CASES["clicked_hostile"]
    data = receive(msndr.event_request([hostile], dc.CTX))["event"]["data"]
    assert data["url"] == dc.scrubbed(hostile["engagement"]["url"])
    assert receive(msndr.event_request([CASES["engagement_wrong_types"]], dc.CTX))["event"]["data"]["url"] is None


def test_engagement_events_share_the_message_number():
    ids = {case: receive(msndr.event_request([CASES[case]], dc.CTX))["message"]["id"]
           for case in ("succeeded", "opened", "clicked", "unsubscribed", "complained")}
    assert len(set(ids.values())) == 1  # one recipient (ok@) of one message


def test_resubscribed_is_not_sent():
    assert "resubscribed" in msndr.NOT_SENT
