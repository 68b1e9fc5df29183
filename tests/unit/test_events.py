import json

import pytest

from mxhook.model import events
from mxhook import spool
from mxhook.model.events import Event, EventError


def test_categories_cover_every_type_once():
    seen = [t for types in events.CATEGORIES.values() for t in types]
    assert sorted(seen) == sorted(events.TYPES)
    assert events.category("bounced") == "bounces"
    assert events.category("failed") == "deliveries"
    assert events.category("queued") == "deliveries"
    assert events.category("deferred") == "deliveries"
    assert events.category("registered") == "blocks"
    assert events.category("opened") == "engagement"
    with pytest.raises(EventError):
        events.category("viewed")


def test_parse_categories_and_types_for():
    assert events.parse_categories("deliveries, bounces") == ("bounces", "deliveries")
    assert events.parse_categories("") == ("bounces", "deliveries", "blocks")  # engagement: asked for
    assert events.parse_categories("all") == tuple(events.CATEGORIES)
    assert events.types_for("engagement") == set(events.ENGAGEMENT_TYPES)
    assert events.types_for("blocks") == {"blocked", "registered", "deleted"}
    assert events.types_for(["bounces"]) == {"bounced"}
    assert "failed" in events.types_for(["deliveries"])  # seed 000: Failed is a delivery status
    with pytest.raises(EventError, match="unknown event category"):
        events.parse_categories("bounces,clicks")


def test_event_round_trip_through_dict_and_json():
    ev = Event(
        type="bounced", at="2026-11-22T12:00:02.000000Z", id=events.event_id(1, "k"),
        queue_id="4A1B2C3D4E", recipient="nobody@gmail.com", sender="app@example.org",
        message_id="<m@example.org>", subject="Hi", dsn="5.1.1", bounce_type="hard",
        remote_host="gmail-smtp-in.l.google.com[142.250.102.27]", reply="550 5.1.1 no",
        delay=1.2, relay="gmail-smtp-in.l.google.com[142.250.102.27]:25",
        custom_headers={"X-Campaign": "spring"},
    )
    d = ev.to_dict()
    assert set(d) == {f for f in Event.__dataclass_fields__}
    assert Event.from_dict(json.loads(json.dumps(d))) == ev
    # unknown keys (e.g. `received` added by spool.event_record) are ignored
    assert Event.from_dict({**d, "received": d["at"], "future_field": 1}) == ev


def test_event_validation():
    with pytest.raises(EventError):
        Event(type="viewed", at="2026-11-22T12:00:00Z")
    with pytest.raises(EventError):
        Event(type="bounced", at="2026-11-22T12:00:00Z", bounce_type="medium")
    with pytest.raises(EventError, match="unknown engagement key"):
        Event(type="opened", at="2026-11-22T12:00:00Z", engagement={"colour": "red"})
    with pytest.raises(EventError, match="engagement must be an object"):
        Event(type="opened", at="2026-11-22T12:00:00Z", engagement=["url"])
    opened = Event(type="clicked", at="2026-11-22T12:00:00Z", source="track",
                   engagement={"url": "https://x.example/", "machine": False})
    assert Event.from_meta(opened.to_meta(), "id1").engagement == opened.engagement
    with pytest.raises(EventError):
        Event(type="bounced", at="2026-11-22T12:00:00Z", source="carrier-pigeon")
    with pytest.raises(EventError):
        Event.from_dict({"type": "queued"})
    with pytest.raises(EventError):
        Event.from_dict({"type": "queued", "at": "x", "custom_headers": ["no"]})
    assert Event.from_dict({"type": "queued", "at": "x", "custom_headers": None}).custom_headers == {}


def test_event_id_is_deterministic_and_sorts_by_time():
    a = events.event_id(1_795_348_800_000_000, "log", "f:1:2:100", "line")
    assert a == events.event_id(1_795_348_800_000_000, "log", "f:1:2:100", "line")
    assert a != events.event_id(1_795_348_800_000_000, "log", "f:1:2:101", "line")
    later = events.event_id(1_795_348_800_000_001, "log", "f:1:2:0", "line")
    assert later > a
    assert len(a) == len(spool.new_id()) == 28
    assert all(c in "0123456789abcdef" for c in a)


def test_iso_helpers():
    assert events.iso_from_us(1_795_348_800_123_456) == "2026-11-22T12:00:00.123456Z"
    assert events.us_from_iso("2026-11-22T12:00:00.123456Z") == 1_795_348_800_123_456
    assert events.us_from_iso("2026-11-22T13:00:00.123456+01:00") == 1_795_348_800_123_456
    assert events.us_from_iso("2026-11-22T12:00:00") == 1_795_348_800_000_000
    assert events.now_iso().endswith("Z")


def test_event_record_writes_a_spool_event(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    ev = Event(type="succeeded", at="2026-11-22T12:00:02.000000Z", id=events.event_id(5, "x"),
               queue_id="4A1B2C3D4E", recipient="a@b.example")
    rec = spool.event_record(ev)
    path = spool.write(str(tmp_path), rec, durable=False)
    back = spool.read(path)
    assert back.id == ev.id and back.kind == "event"
    assert back.meta["received"] == ev.at
    assert Event.from_dict({**back.meta, "id": back.id}) == ev
    with pytest.raises(EventError):
        spool.event_record(Event(type="queued", at="2026-11-22T12:00:02Z"))


def test_is_stored_time_only_for_the_form_iso_from_us_gives():
    assert events.is_stored_time(events.iso_from_us(1_700_000_000_123_456))
    for other in ("2026-01-15T12:00:00+01:00", "2026-01-15T12:00:00Z", None, 1700000000, b"x" * 27):
        assert not events.is_stored_time(other)
