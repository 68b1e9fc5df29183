"""Event webhook bodies: version 1 JSON and form, time zones, pinning by the version registry."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxhook.model import endpoints
from mxhook.model.endpoints import Endpoint
from mxhook.model.events import ENGAGEMENT_KEYS, ENGAGEMENT_TYPES, Event
from mxhook.model.targets import Destination
from mxhook.payloads import events as ev_payloads
from mxhook.payloads import registry
from mxhook.payloads.encodings import dumps
from mxhook.payloads.registry import render_events

BOUNCE = {
    "id": "18a0000000000000aaaaaaaaaaaa", "type": "bounced", "at": "2026-01-15T12:00:00.250000Z",
    "source": "log", "queue_id": "4XbQ1k2Lmz", "recipient": "gone@else.example",
    "sender": "app@ours.example", "header_from": "App <app@ours.example>",
    "message_id": "<m1@ours.example>", "subject": "=HYPERLINK(\"x\") \"quoted\" \u00e9\u2028",
    "dsn": "5.1.1", "bounce_type": "hard", "remote_host": "mx.else.example",
    "relay": "mx.else.example[192.0.2.25]:25", "reply": "550 5.1.1 <gone@else.example>: User unknown",
    "delay": 1.2, "custom_headers": {"X-Campaign": "c-42"}, "some_future_field": "not in v1",
}


def doc(version=1, events=(BOUNCE,), tz="UTC", **kw):
    r = render_events(version, list(events), endpoint_tz=tz, fmt="json", batch_id="evb_1", **kw)
    assert r.content_type == "application/json"
    return json.loads(r.body)


def test_v1_json_shape():
    d = doc(endpoint_id=3)
    assert {k: d[k] for k in ("type", "version", "batch_id", "endpoint_id", "count")} == \
        {"type": "events", "version": 1, "batch_id": "evb_1", "endpoint_id": 3, "count": 1}
    (e,) = d["events"]
    assert list(e) == list(ev_payloads.V1_FIELDS)
    assert e["at"] == "2026-01-15T12:00:00.250000+00:00"
    assert (e["type"], e["bounce_type"], e["dsn"], e["recipient"]) == ("bounced", "hard", "5.1.1", "gone@else.example")
    assert e["subject"] == BOUNCE["subject"]  # JSON escaping, not templates: survives intact
    assert e["custom_headers"] == {"X-Campaign": "c-42"}
    assert "some_future_field" not in e and "api_key" not in d


def test_missing_fields_are_null_and_headers_an_object():
    (e,) = doc(events=[{"id": "x", "type": "queued", "at": "2026-01-15T12:00:00.000000Z"}])["events"]
    assert e["dsn"] is None and e["custom_headers"] == {}


@pytest.mark.parametrize("tz, at, expected", [
    ("Europe/Berlin", "2026-01-15T12:00:00.250000Z", "2026-01-15T13:00:00.250000+01:00"),
    ("Europe/Berlin", "2026-07-15T12:00:00.000000Z", "2026-07-15T14:00:00.000000+02:00"),
    ("America/New_York", "2026-01-15T03:00:00.000000Z", "2026-01-14T22:00:00.000000-05:00"),
    ("Asia/Kolkata", "2026-01-15T12:00:00.000000Z", "2026-01-15T17:30:00.000000+05:30"),
    ("UTC", "2026-01-15T12:00:00.000000+00:00", "2026-01-15T12:00:00.000000+00:00"),
])
def test_time_zone_rendering(tz, at, expected):
    (e,) = doc(events=[{**BOUNCE, "at": at}], tz=tz)["events"]
    assert e["at"] == expected


def test_unparsable_time_passes_through():
    (e,) = doc(events=[{**BOUNCE, "at": "yesterday"}], tz="Europe/Berlin")["events"]
    assert e["at"] == "yesterday"


def test_api_key_in_body():
    assert doc(api_key="k-123")["api_key"] == "k-123"


def test_form_encoding():
    r = render_events(1, [BOUNCE, {**BOUNCE, "id": "2"}], endpoint_tz="Europe/Berlin", fmt="form",
                      batch_id="evb_1", endpoint_id=3, api_key="k&=1")
    assert r.content_type == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(r.body.decode("ascii"), strict_parsing=True).items()}
    assert set(form) == {"type", "version", "batch_id", "endpoint_id", "count", "events", "api_key"}
    assert (form["version"], form["count"], form["api_key"], form["endpoint_id"]) == ("1", "2", "k&=1", "3")
    events = json.loads(form["events"])
    assert [e["id"] for e in events] == [BOUNCE["id"], "2"]
    assert events[0]["subject"] == BOUNCE["subject"] and events[0]["at"].endswith("+01:00")


def test_form_leaves_out_null_scalars():
    r = render_events(1, [BOUNCE], fmt="form", batch_id="evb_1")
    assert "endpoint_id" not in parse_qs(r.body.decode())


def test_unknown_version_and_format():
    with pytest.raises(ValueError, match="version 2"):
        render_events(2, [BOUNCE], batch_id="b")
    with pytest.raises(ValueError, match="format 'xml'"):
        render_events(1, [BOUNCE], fmt="xml", batch_id="b")


def test_pinning_a_newer_version_does_not_change_v1(monkeypatch):
    """An endpoint created under v1 keeps getting v1 bodies after a v2 appears; new endpoints
    get v2 by default."""
    before = render_events(1, [BOUNCE], endpoint_tz="Europe/Berlin", batch_id="evb_1").body

    def document_v2(events, **kw):
        return {"version": 2, "data": [dict(e) for e in events]}

    monkeypatch.setitem(registry.EVENT_VERSIONS, 2, registry.EventVersion(document_v2))
    monkeypatch.setattr(endpoints, "VERSIONS", (1, 2))
    pinned = endpoints.validate(Endpoint(Destination("https://h.example/e"), version=1))
    assert render_events(pinned.version, [BOUNCE], endpoint_tz="Europe/Berlin", batch_id="evb_1").body == before
    assert endpoints.validate(Endpoint(Destination("https://h.example/e"))).version == 2
    assert json.loads(render_events(2, [BOUNCE], batch_id="b").body)["version"] == 2


def test_sample_event():
    e = ev_payloads.sample_event("bounced")
    assert e["id"].startswith("test-") and e["bounce_type"] == "hard"
    assert doc(events=[e])["events"][0]["recipient"] == "nobody@example.com"


# Events as state.db stores them: any V1 field may be missing, odd or hostile.
_texts = st.one_of(st.none(), st.text(max_size=30))
_stored_events = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20), "type": st.sampled_from(["queued", "bounced", "succeeded"]),
     "at": st.one_of(st.sampled_from(["2026-01-15T12:00:00.250000Z", "2026-07-15T23:59:59.999999Z",
                                      "2026-01-15T12:00:00+01:00", "not a time"]), st.none())},
    optional={"subject": _texts, "recipient": _texts,
              "delay": st.one_of(st.floats(), st.integers(), st.booleans(), st.none()),
              "custom_headers": st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
              "some_future_field": _texts},
)


@given(st.lists(st.tuples(_stored_events, st.booleans()), max_size=6),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]), st.sampled_from(["json", "form"]),
       st.one_of(st.none(), st.text(max_size=10)))
def test_pre_rendered_events_give_the_same_body(items, tz, fmt, api_key):
    """A batch made of V1Text (rendered at ingest), event dicts, or both, is byte for byte the
    body of the whole version-1 document dumped at once."""
    from urllib.parse import urlencode

    dicts = [e for e, _ in items]
    mixed = [ev_payloads.v1_text(e) if pre else e for e, pre in items]
    got = render_events(1, mixed, endpoint_tz=tz, fmt=fmt, batch_id="evb_1", endpoint_id=2, api_key=api_key)
    whole = {"type": "events", "version": 1, "batch_id": "evb_1", "endpoint_id": 2, "count": len(dicts),
             "events": [ev_payloads._v1_event(e, ev_payloads.zone(tz)) for e in dicts]}
    if api_key:
        whole["api_key"] = api_key
    if fmt == "json":
        assert got.body == dumps(whole).encode("utf-8")
    else:
        assert got.body == urlencode([(k, dumps(v) if k == "events" else str(v))
                                      for k, v in whole.items() if v is not None]).encode("ascii")


_any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@given(st.dictionaries(st.sampled_from(ev_payloads.V1_FIELDS + ("received", "kind")), _any_json),
       st.sampled_from(["2026-01-15T12:00:00.250000Z", "2026-01-15T12:00:00+01:00", None]))
def test_v1_text_is_the_dumped_v1_object(event, at):
    """v1_text's template (the fast way, for the usual values) gives the bytes of dumping the
    version-1 object, for any values in any field; odd ones take the general way."""
    if at is not None:
        event["at"] = at
    assert ev_payloads.v1_text(event) == dumps(ev_payloads._v1_event(event, ev_payloads.timezone.utc))


def test_v1_text_takes_the_template_for_stored_events():
    event = dict(BOUNCE, at="2026-01-15T12:00:00.250000Z", delay=1.5, custom_headers={"X-C": "7"})
    flat = ev_payloads._v1_text_flat(event)
    assert flat is not None and flat == dumps(ev_payloads._v1_event(event, ev_payloads.timezone.utc))
    assert ev_payloads._v1_text_flat(dict(event, at="2026-01-15T12:00:00+01:00")) is None
    # a container value of two or more items (its own separators) takes the general way
    assert ev_payloads._v1_text_flat(dict(event, reason=["a", "b"])) is None
    for odd in (dict(event, delay=float("nan")), dict(event, reason=["a"]), dict(event, delay=True),
                dict(event, subject="\x00\x1f\"\\ é\u2028", custom_headers={"A": "1", "B": "\x00"})):
        assert ev_payloads.v1_text(odd) == dumps(ev_payloads._v1_event(odd, ev_payloads.timezone.utc))


def test_prerenderer_only_for_an_endpoint_that_takes_v1_in_utc():
    """An endpoint in another time zone (or disabled) would parse and render a V1Text again:
    for it, the store keeps events as dicts until their batch is made."""
    from dataclasses import replace

    utc = Endpoint(Destination("https://h.example/e"), id=1, categories=("bounces",))
    berlin = replace(utc, id=2, timezone="Europe/Berlin")
    assert ev_payloads.prerenderer([berlin]) is None
    assert ev_payloads.prerenderer([replace(utc, enabled=False), berlin]) is None
    assert ev_payloads.prerenderer([berlin, utc]) is ev_payloads.v1_text
    assert ev_payloads.prerenderer([]) is None
    # a dialect or a template renders from the event: the text would be made for nothing
    msndr = replace(utc, destination=replace(utc.destination, dialect="msndr"))
    templated = replace(utc, destination=replace(utc.destination, template=1))
    assert ev_payloads.prerenderer([msndr, templated]) is None
    assert ev_payloads.prerenderer([msndr, utc]) is ev_payloads.v1_text


# ---------------------------------------------------------------------------------------------
# Engagement events

OPENED = {**BOUNCE, "id": "18a0000000000000bbbbbbbbbbbb", "type": "opened", "source": "track", "dsn": None,
          "bounce_type": None, "reply": None, "remote_host": None, "relay": None, "delay": None,
          "engagement": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0", "machine": True,
                         "machine_reason": "Apple Mail Privacy Protection", "sending_domain": "ours.example"}}


def test_engagement_events_carry_the_engagement_object_last():
    bounce, opened = doc(events=[BOUNCE, OPENED])["events"]
    assert list(bounce) == list(ev_payloads.V1_FIELDS)  # delivery events: as they always were
    assert list(opened) == [*ev_payloads.V1_FIELDS, "engagement"]
    assert list(opened["engagement"]) == list(ENGAGEMENT_KEYS)
    assert opened["engagement"] == {**dict.fromkeys(ENGAGEMENT_KEYS), **OPENED["engagement"]}
    assert opened["type"] == "opened" and opened["source"] == "track"


def test_a_several_recipient_message_gives_a_null_recipient():
    (e,) = doc(events=[{**OPENED, "recipient": None}])["events"]
    assert e["recipient"] is None and e["engagement"]["ip"] == "203.0.113.9"


@pytest.mark.parametrize("given", [None, "text", ["url"], {"url": 5, "link": "3", "machine": 1, "ip": None},
                                   {"link": True}])
def test_an_engagement_value_of_another_type_is_null(given):
    (e,) = doc(events=[{**OPENED, "engagement": given}])["events"]
    assert e["engagement"] == dict.fromkeys(ENGAGEMENT_KEYS)


@pytest.mark.parametrize("etype", ENGAGEMENT_TYPES)
def test_sample_engagement_events(etype):
    e = ev_payloads.sample_event(etype)
    assert Event.from_dict(e).engagement == e["engagement"]  # what the vocabulary takes
    (obj,) = doc(events=[e])["events"]
    assert list(obj["engagement"]) == list(ENGAGEMENT_KEYS)
    assert obj["source"] == ("feedback" if etype == "complained" else "track")
    assert (obj["engagement"]["url"] is not None) is (etype == "clicked")


_engagements = st.one_of(_any_json, st.dictionaries(st.sampled_from(ENGAGEMENT_KEYS), _any_json))


@given(st.sampled_from(ENGAGEMENT_TYPES + ("succeeded",)), _engagements,
       st.sampled_from(["2026-01-15T12:00:00.250000Z", "2026-01-15T12:00:00+01:00"]))
def test_v1_text_of_engagement_events_is_the_dumped_v1_object(etype, engagement, at):
    event = {**OPENED, "type": etype, "at": at, "engagement": engagement}
    text = ev_payloads.v1_text(event)
    assert text == dumps(ev_payloads._v1_event(event, ev_payloads.timezone.utc))
    assert ('"engagement":' in text) is (etype != "succeeded")
