"""The paubox event dialect: golden bodies, a receiver that reads the POST as Paubox documents it
(seed 002: `event_name` and the API Mail Log `payload`), hostile values, one event per request,
the same body on every attempt. Golden files: see seed_dialect_cases.py."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings

from mxhook.payloads.dialects import paubox
from tests.unit import seed_dialect_cases as dc

PAUBOX_EVENTS = {"api_mail_log_delivered", "api_mail_log_temporary_failure",
                 "api_mail_log_permanent_failure", "api_mail_log_opened"}
PAYLOAD_KEYS = ["id", "subject", "header_message_id", "source_tracking_id", "outbound_queue_id",
                "time", "from", "to"]
PAUBOX_TIME = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")  # 2022-04-18T20:27:25.379Z
CASES = dc.cases(paubox.EVENT_TYPES)


def receive(rendered) -> dict:
    """A Paubox webhook receiver: a JSON POST with `event_name` and `payload`; checks every
    key and its type (the id an integer JavaScript holds exactly, the rest text or null)."""
    assert rendered.content_type == "application/json"
    doc = json.loads(rendered.body.decode("utf-8"))
    assert list(doc) == ["event_name", "payload"]
    assert doc["event_name"] in PAUBOX_EVENTS
    payload = doc["payload"]
    assert list(payload) == PAYLOAD_KEYS
    assert type(payload["id"]) is int and 0 <= payload["id"] < 2 ** 53
    assert all(payload[k] is None or type(payload[k]) is str for k in PAYLOAD_KEYS[1:])
    assert payload["time"] is None or PAUBOX_TIME.match(payload["time"])
    assert payload["source_tracking_id"] is None
    return doc


def test_golden_bodies():
    dc.check_golden_bodies(paubox, receive)


def test_names_are_the_systems():
    assert set(paubox.EVENT_NAMES.values()) <= PAUBOX_EVENTS


@pytest.mark.parametrize("check", dc.CONFORMANCE, ids=lambda c: c.__name__)
def test_conformance(check):
    check(paubox, receive)


@pytest.mark.parametrize("case, name", [
    ("succeeded", "api_mail_log_delivered"),
    ("bounced_hard", "api_mail_log_permanent_failure"),
    ("bounced_dsn", "api_mail_log_permanent_failure"),
    ("bounced_soft", "api_mail_log_temporary_failure"),
    ("deferred", "api_mail_log_temporary_failure"),
    ("failed_expired", "api_mail_log_temporary_failure"),
])
def test_event_names(case, name):
    assert receive(paubox.event_request([CASES[case]], dc.CTX))["event_name"] == name


def test_payload_fields():
    payload = receive(paubox.event_request([CASES["bounced_hard"]], dc.CTX))["payload"]
    assert {k: payload[k] for k in PAYLOAD_KEYS[1:]} == {
        "subject": "Your order has shipped", "header_message_id": "<order-1187@ours.example>",
        "source_tracking_id": None, "outbound_queue_id": "4XbQ1k2Lmz",
        "time": "2026-11-22T13:08:09.180Z", "from": "app@ours.example", "to": "gone@customer.example"}


def test_id_is_one_per_recipient_of_a_message():
    ids = {case: receive(paubox.event_request([CASES[case]], dc.CTX))["payload"]["id"]
           for case in ("bounced_hard", "bounced_dsn", "deferred", "failed_expired", "bounced_soft")}
    assert ids["bounced_hard"] == ids["bounced_dsn"]  # same message, same recipient
    assert ids["deferred"] == ids["failed_expired"]
    assert len({ids["bounced_hard"], ids["deferred"], ids["bounced_soft"]}) == 3


def test_to_is_the_address_the_application_used():
    assert receive(paubox.event_request([CASES["aliased"]], dc.CTX))["payload"]["to"] == "sales@customer.example"


def test_unknown_values_are_null():
    payload = receive(paubox.event_request([CASES["minimal"]], dc.CTX))["payload"]
    assert {k for k, v in payload.items() if v is not None} == {"id", "time"}
    assert receive(paubox.event_request([CASES["not_a_time"]], dc.CTX))["payload"]["time"] is None
    assert receive(paubox.event_request([CASES["offset_time"]], dc.CTX))["payload"]["time"] == \
        "2026-03-28T23:30:00.123Z"
    wrong = receive(paubox.event_request([CASES["wrong_types"]], dc.CTX))["payload"]
    assert wrong["subject"] is wrong["to"] is wrong["header_message_id"] is None


def test_from_falls_back_to_the_envelope_sender():
    event = {**CASES["succeeded"], "header_from": None, "sender": "bounces@ours.example"}
    assert receive(paubox.event_request([event], dc.CTX))["payload"]["from"] == "bounces@ours.example"


def test_hostile_text_survives():
    event = CASES["hostile"]
    payload = receive(paubox.event_request([event], dc.CTX))["payload"]
    assert (payload["subject"], payload["from"], payload["header_message_id"], payload["to"]) == \
        (event["subject"], event["header_from"], event["message_id"], event["recipient"])
    payload = receive(paubox.event_request([CASES["surrogates"]], dc.CTX))["payload"]
    assert payload["subject"] == "lone \ufffd pair \U0001f600"
    assert receive(paubox.event_request([CASES["long_subject"]], dc.CTX))["payload"]["subject"] == "\u00e9" * 100_000


@settings(max_examples=300, deadline=None)
@given(dc.hostile_events(paubox.EVENT_TYPES))
def test_hostile_events_never_break_the_json(event):
    payload = receive(paubox.event_request([event], dc.CTX))["payload"]
    for key, field in (("subject", "subject"), ("message_id", "header_message_id"), ("queue_id", "outbound_queue_id")):
        if type(event.get(key)) is str:
            assert payload[field] == dc.scrubbed(event[key])


def test_opened_is_paubox_opened_with_the_same_payload():
    """Paubox's one engagement event; its payload says nothing about the reader, so a machine
    open (no Paubox field for the verdict) looks like any other."""
    opened = receive(paubox.event_request([CASES["opened"]], dc.CTX))
    delivered = receive(paubox.event_request([CASES["succeeded"]], dc.CTX))
    assert opened["event_name"] == "api_mail_log_opened"
    assert opened["payload"]["id"] == delivered["payload"]["id"]  # same message, same recipient
    assert opened["payload"]["time"] == "2026-11-22T15:02:41.250Z"
    assert receive(paubox.event_request([CASES["opened_machine"]], dc.CTX))["event_name"] == "api_mail_log_opened"
    assert receive(paubox.event_request([CASES["opened_several_recipients"]], dc.CTX))["payload"]["to"] is None


def test_other_engagement_events_are_not_sent():
    assert paubox.EVENT_TYPES & {"clicked", "unsubscribed", "resubscribed", "complained"} == set()
