"""The smtp2go event dialect: golden bodies, a receiver that reads the POST as SMTP2GO documents
it (seed 001: x-www-form-urlencoded fields), hostile values, one event per request, the same
body on every attempt. Golden files: see seed_dialect_cases.py."""
from __future__ import annotations

import dataclasses
import re
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxhook.payloads.dialects import smtp2go
from tests.unit import seed_dialect_cases as dc

# SMTP2GO's whole vocabulary (seed 001), of which mxhook sends some.
SMTP2GO_EVENTS = {"processed", "delivered", "open", "click", "bounce", "spam", "unsubscribe",
                  "resubscribe", "reject"}
UTC_SECONDS = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
CASES = dc.cases(smtp2go.EVENT_TYPES)
SELECTING = dataclasses.replace(dc.CTX, custom_headers=("X-Campaign", "X-Missing", "Subject", "EVENT"))
EXTRA_GOLDEN = {"queued_selected_headers": (CASES["queued"], SELECTING)}


def receive(rendered) -> dict[str, str]:
    """An SMTP2GO webhook receiver (PHP's $_POST, Flask's request.form): a form POST, UTF-8,
    every field once; checks each field's presence and value vocabulary."""
    assert rendered.content_type == "application/x-www-form-urlencoded"
    pairs = parse_qsl(rendered.body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                      encoding="utf-8", errors="strict")
    form = dict(pairs)
    assert len(form) == len(pairs), "a field twice"
    event = form["event"]
    assert event in SMTP2GO_EVENTS
    standard = [f for f in smtp2go.STANDARD_FIELDS if f not in ("host", "bounce") or event == "bounce"]
    assert list(form)[:len(standard)] == standard
    for name in ("time", "sendtime"):
        assert form[name] == "" or UTC_SECONDS.match(form[name]), (name, form[name])
    if event == "bounce":
        assert form["bounce"] in ("hard", "soft", "")
    assert form["recipients"] == "" and form["context"] == ""
    assert not (set(form) - set(standard)) & {f.lower() for f in smtp2go.STANDARD_FIELDS}
    return form


def test_golden_bodies():
    dc.check_golden_bodies(smtp2go, receive, EXTRA_GOLDEN)


def test_selected_headers_come_after_the_standard_fields():
    form = receive(smtp2go.event_request([CASES["queued"]], SELECTING))
    assert list(form)[len(smtp2go.STANDARD_FIELDS) - 2:] == ["X-Campaign", "X-Missing"]


def test_names_are_the_systems():
    assert set(smtp2go.EVENT_NAMES.values()) <= SMTP2GO_EVENTS


@pytest.mark.parametrize("check", dc.CONFORMANCE, ids=lambda c: c.__name__)
def test_conformance(check):
    check(smtp2go, receive)


def test_bounce_fields():
    form = receive(smtp2go.event_request([CASES["bounced_hard"]], dc.CTX))
    assert (form["event"], form["bounce"], form["host"]) == ("bounce", "hard", "mx.customer.example[192.0.2.25]")
    assert form["message"].startswith("550 5.1.1 ")
    assert (form["time"], form["sendtime"]) == ("2026-11-22T13:08:09Z", "2026-11-22T13:08:07Z")
    soft = receive(smtp2go.event_request([CASES["bounced_soft"]], dc.CTX))
    assert soft["bounce"] == "soft"
    failed = receive(smtp2go.event_request([CASES["failed_expired"]], dc.CTX))
    assert (failed["event"], failed["bounce"]) == ("bounce", "soft")
    assert failed["message"].startswith("connect to ")  # no reply: Postfix's diagnostic
    assert failed["sendtime"] == "2026-11-22T13:08:08Z"  # 5 days and 0.5 s before


def test_other_events_have_no_bounce_fields():
    for case in ("queued", "succeeded", "blocked"):
        form = receive(smtp2go.event_request([CASES[case]], dc.CTX))
        assert "bounce" not in form and "host" not in form


def test_processed_and_reject():
    queued = receive(smtp2go.event_request([CASES["queued"]], dc.CTX))
    assert (queued["event"], queued["srchost"], queued["auth"], queued["email_id"]) == \
        ("processed", "10.0.0.5", "shop", "4XbQ1k2Lmz")
    assert queued["sendtime"] == queued["time"] == "2026-11-22T13:08:07Z"
    assert queued["x-campaign"] == "autumn-24"  # every header the event carries, as named there
    reject = receive(smtp2go.event_request([CASES["blocked"]], dc.CTX))
    assert (reject["event"], reject["auth"], reject["srchost"]) == ("reject", "10.0.0.5", "")
    assert reject["message"] == "address is on the block list after a hard bounce"
    assert reject["sendtime"] == reject["time"]


def test_delivered_fields():
    form = receive(smtp2go.event_request([CASES["succeeded"]], dc.CTX))
    assert (form["event"], form["rcpt"], form["from"], form["sender"], form["subject"]) == \
        ("delivered", "ok@customer.example", "app@ours.example", "app@ours.example", "Your order has shipped")
    assert form["sendtime"] == "2026-11-22T13:08:07Z"  # 13:08:09 - 1.49 s, truncated
    assert form["srchost"] == ""


def test_rcpt_is_the_address_the_application_used():
    assert receive(smtp2go.event_request([CASES["aliased"]], dc.CTX))["rcpt"] == "sales@customer.example"


def test_unknown_values_are_empty():
    form = receive(smtp2go.event_request([CASES["minimal"]], dc.CTX))
    assert {k: v for k, v in form.items() if v} == {"event": "delivered", "time": "2026-11-22T13:08:09Z"}
    assert receive(smtp2go.event_request([CASES["not_a_time"]], dc.CTX))["time"] == ""
    assert receive(smtp2go.event_request([CASES["offset_time"]], dc.CTX))["time"] == "2026-03-28T23:30:00Z"


def test_selected_headers_never_override_standard_fields():
    form = receive(smtp2go.event_request([CASES["queued"]], SELECTING))
    assert (form["X-Campaign"], form["X-Missing"]) == ("autumn-24", "")
    assert form["subject"] == "Your order has shipped" and form["event"] == "processed"
    assert "Subject" not in form and "EVENT" not in form and "x-campaign" not in form


def test_hostile_text_survives():
    event = CASES["hostile"]
    form = receive(smtp2go.event_request([event], dc.CTX))
    assert (form["subject"], form["from"], form["message"], form["rcpt"]) == \
        (event["subject"], event["header_from"], event["reply"], event["recipient"])
    assert form["x-tag"] == "a&b=c {{ d }}\r\n"
    form = receive(smtp2go.event_request([CASES["surrogates"]], dc.CTX))
    assert form["subject"] == "lone \ufffd pair \U0001f600" and form["x-\ufffd"] == "v\ufffd"
    assert receive(smtp2go.event_request([CASES["long_subject"]], dc.CTX))["subject"] == "\u00e9" * 100_000


@settings(max_examples=300, deadline=None)
@given(dc.hostile_events(smtp2go.EVENT_TYPES), st.lists(dc.HOSTILE_TEXT, max_size=3))
def test_hostile_events_never_break_the_form(event, selected):
    ctx = dataclasses.replace(dc.CTX, custom_headers=tuple(selected))
    form = receive(smtp2go.event_request([event], ctx))
    for name in selected:
        if name and name.lower() not in smtp2go.STANDARD_FIELDS:
            assert dc.scrubbed(name) in form
    for key, field in (("subject", "subject"), ("sender", "sender"), ("queue_id", "email_id")):
        if type(event.get(key)) is str and event[key]:
            assert form[field] == dc.scrubbed(event[key])
