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
# The events about what a reader did, and SMTP2GO's open/click fields they carry before srchost
READER_EVENTS = {"open", "click", "unsubscribe", "resubscribe", "spam"}
OPEN_CLICK_FIELDS = ["user-agent", "read-secs", "client", "client-device", "client-os", "geoip-continent",
                     "geoip-country", "geoip-city"]
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
    if event in READER_EVENTS:
        standard[-1:-1] = OPEN_CLICK_FIELDS
        standard += ["url"] if event == "click" else []
        assert form["read-secs"] == "" and form["sendtime"] == ""
    assert list(form)[:len(standard)] == standard
    for name in ("time", "sendtime"):
        assert form[name] == "" or UTC_SECONDS.match(form[name]), (name, form[name])
    if event == "bounce":
        assert form["bounce"] in ("hard", "soft", "")
    assert form["recipients"] == "" and form["context"] == ""
    assert not (set(form) - set(standard)) & {f.lower() for f in smtp2go.STANDARD_FIELDS}
    if event in READER_EVENTS:
        assert not (set(form) - set(standard)) & {*OPEN_CLICK_FIELDS, "url"}
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


# ---------------------------------------------------------------------------------------------
# Engagement events

@pytest.mark.parametrize("case, name", [
    ("opened", "open"), ("clicked", "click"), ("unsubscribed", "unsubscribe"), ("unsubscribed_mailto", "unsubscribe"),
    ("resubscribed", "resubscribe"), ("complained", "spam"),
])
def test_engagement_names(case, name):
    assert receive(smtp2go.event_request([CASES[case]], dc.CTX))["event"] == name


def test_open_and_click_fields():
    form = receive(smtp2go.event_request([CASES["clicked"]], dc.CTX))
    reader = CASES["clicked"]["engagement"]
    assert {f: form[f] for f in OPEN_CLICK_FIELDS} == {
        "user-agent": reader["user_agent"], "read-secs": "", "client": "Mobile Safari", "client-device": "mobile",
        "client-os": "iOS", "geoip-continent": "EU", "geoip-country": "FR", "geoip-city": "Lyon"}
    assert (form["srchost"], form["url"]) == ("203.0.113.9", "https://shop.ours.example/orders/1187?utm_source=mail&x=1")
    assert (form["rcpt"], form["email_id"], form["subject"], form["auth"]) == \
        ("ok@customer.example", "4XbQ1k2Lmz", "Your order has shipped", "shop")
    assert form["time"] == "2026-11-22T15:03:00Z" and form["x-campaign"] == "autumn-24"
    opened = receive(smtp2go.event_request([CASES["opened"]], dc.CTX))
    assert "url" not in opened and opened["srchost"] == "203.0.113.9"


def test_what_is_not_known_is_empty():
    """A complaint (from an ARF report), a mailto: unsubscribe, an open under `privacy =
    aggregate`, an open of a message with several recipients: their unknown fields are ""."""
    spam = receive(smtp2go.event_request([CASES["complained"]], dc.CTX))
    assert all(spam[f] == "" for f in OPEN_CLICK_FIELDS + ["srchost"])
    mailto = receive(smtp2go.event_request([CASES["unsubscribed_mailto"]], dc.CTX))
    assert mailto["user-agent"] == mailto["srchost"] == ""
    private = receive(smtp2go.event_request([CASES["opened_privacy"]], dc.CTX))
    assert (private["user-agent"], private["srchost"], private["geoip-city"]) == ("", "", "Lyon")
    assert receive(smtp2go.event_request([CASES["opened_several_recipients"]], dc.CTX))["rcpt"] == ""
    odd = receive(smtp2go.event_request([CASES["engagement_wrong_types"]], dc.CTX))
    assert odd["url"] == odd["srchost"] == odd["geoip-city"] == ""
    assert receive(smtp2go.event_request([CASES["engagement_not_an_object"]], dc.CTX))["client"] == ""


def test_custom_headers_never_override_engagement_fields():
    event = {**CASES["clicked"], "custom_headers": {"url": "https://evil.example/", "User-Agent": "x", "x-ok": "1"}}
    form = receive(smtp2go.event_request([event], dc.CTX))
    assert form["url"] == CASES["clicked"]["engagement"]["url"] and form["x-ok"] == "1"
    assert "User-Agent" not in form
    # delivery events keep such headers: they name no field there
    queued = receive(smtp2go.event_request([{**CASES["queued"], "custom_headers": {"url": "u"}}], dc.CTX))
    assert queued["url"] == "u"


def test_hostile_engagement_text_survives():
    event = CASES["clicked_hostile"]
    form = receive(smtp2go.event_request([event], dc.CTX))
    assert form["url"] == dc.scrubbed(event["engagement"]["url"])
    assert form["user-agent"] == dc.scrubbed(event["engagement"]["user_agent"])
    assert (form["client"], form["geoip-city"], form["srchost"]) == ("{{ client }}", "S\u00e3o Paulo", "2001:db8::1")


@settings(max_examples=200, deadline=None)
@given(dc.hostile_events(frozenset(("opened", "clicked", "unsubscribed", "resubscribed", "complained"))))
def test_hostile_engagement_never_breaks_the_form(event):
    form = receive(smtp2go.event_request([event], dc.CTX))
    engagement = event.get("engagement") if isinstance(event.get("engagement"), dict) else {}
    for key, field in (("user_agent", "user-agent"), ("ip", "srchost"), ("city", "geoip-city")):
        value = engagement.get(key)
        assert form[field] == (dc.scrubbed(value) if type(value) is str else "")
