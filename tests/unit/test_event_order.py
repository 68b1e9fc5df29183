"""The events of one message keep their order in `at`: a log line stamped in whole seconds
(Postfix's `maillog_file`, traditional syslog) says only "in this second", and its event is
never earlier than the message's `queued` event (store/ingest.py, `_after_queued`)."""
from __future__ import annotations

import json

import pytest

from mxhook import spool
from mxhook.model import events
from mxhook.model.endpoints import Endpoint
from mxhook.model.targets import Destination
from mxhook.postfix.maillog import Correlator, parse_line
from mxhook.store import ingest, logs
from mxhook.store.statedb import StateStore

NOW = 1795000000.0  # 2026-11-18: the year of the stamps below
QID = "4F9D52E3A1"
# Postfix 3.7's maillog_file, as written for one outbound message (whole seconds)
MAILLOG = [
    f"Nov 22 12:00:02 mx1 postfix/qmgr[812]: {QID}: from=<app@ours.example>, size=1520, nrcpt=2 (queue active)",
    f"Nov 22 12:00:02 mx1 postfix/smtp[815]: {QID}: to=<a@customer.example>, relay=mx.customer.example"
    "[192.0.2.25]:25, delay=0.31, delays=0.05/0.01/0.13/0.12, dsn=2.0.0, status=sent (250 2.0.0 Ok: "
    "queued as 4XbQ1k2Lmz)",
    f"Nov 22 12:00:02 mx1 postfix/smtp[816]: {QID}: to=<b@customer.example>, relay=mx.customer.example"
    "[192.0.2.25]:25, delay=0.33, delays=0.05/0.01/0.13/0.14, dsn=5.1.1, status=bounced (host "
    "mx.customer.example[192.0.2.25] said: 550 5.1.1 <b@customer.example>: Recipient address "
    "rejected: User unknown (in reply to RCPT TO command))",
]
ENDPOINT = Endpoint(Destination("https://hooks.example/ev"), categories=("all",), id=1)


@pytest.fixture()
def store(tmp_path):
    s = StateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def second_of_lines() -> int:
    return parse_line(MAILLOG[1], now=NOW).at_us


def log_events() -> list[events.Event]:
    correlator = Correlator()
    out = []
    for offset, line in enumerate(MAILLOG):
        out += correlator.feed(parse_line(line, now=NOW), f"f:42:{offset * 200}")
    return out


def queued(recipient: str, at_us: int, qid: str = QID) -> events.Event:
    return events.Event(type="queued", at=events.iso_from_us(at_us), id=events.event_id(at_us, "milter", recipient),
                        source="milter", queue_id=qid, recipient=recipient, sender="app@ours.example")


def records(evs) -> list[spool.Record]:
    return [spool.event_record(e) for e in evs]


def stored(store) -> list[tuple[str, str, str]]:
    """(type, recipient, at) of every event in the order state.db lists them (time, then id)."""
    return [(t, r, json.loads(m)["at"]) for t, r, m, received in store.conn.execute(
        "SELECT type, recipient, meta, received FROM events ORDER BY received, id") if received == json.loads(m)["at"]]


@pytest.mark.parametrize("one_call", [True, False])
def test_log_events_of_a_whole_second_are_not_earlier_than_their_queued_event(store, one_call):
    second = second_of_lines()
    # the milter's queued events of 12:00:02.7 (microseconds apart), delivered in that second
    milter = [queued("a@customer.example", second + 700_000), queued("b@customer.example", second + 700_040)]
    log = log_events()
    assert [e.at for e in log] == [events.iso_from_us(second)] * 2  # as logged
    if one_call:
        ingest.records(store, records(milter + log), endpoints=[ENDPOINT])
    else:  # the queued events were ingested by an earlier pass of the spooler
        ingest.records(store, records(milter), endpoints=[ENDPOINT])
        ingest.records(store, records(log), endpoints=[ENDPOINT])
    after = events.iso_from_us(second + 700_041)  # the latest queued of the message, + 1 µs
    got = stored(store)
    assert got[:2] == [("queued", "a@customer.example", events.iso_from_us(second + 700_000)),
                       ("queued", "b@customer.example", events.iso_from_us(second + 700_040))]
    # two recipients' outcomes of one second: after the queued events, in no order of their own
    assert sorted(got[2:]) == [("bounced", "b@customer.example", after), ("succeeded", "a@customer.example", after)]
    # the event log lists them newest first, and the bodies carry the same times
    assert [r["type"] for r in logs.event_log(store)][2:] == ["queued", "queued"]
    batch = store.create_batch(1, 100)
    bodies = {e["type"]: e["at"] for e in store.batch_events(batch)}
    assert (bodies["succeeded"], bodies["bounced"]) == (after, after)
    # the ids are those the follower gave (a second read of the lines changes nothing)
    assert {e.id for e in log} <= {r[0] for r in store.conn.execute("SELECT id FROM events")}
    assert ingest.records(store, records(log_events()), endpoints=[ENDPOINT]) == 0


def test_events_outside_the_window_stay_as_logged(store):
    second = second_of_lines()
    # queued in the previous second (the usual case), and a reused queue id's queued event of
    # the next second: neither moves the log events
    earlier = queued("a@customer.example", second - 300_000)
    later = queued("a@customer.example", second + 1_000_000)
    log = log_events()
    ingest.records(store, records([earlier, later] + log))
    ats = {(t, r): at for t, r, at in stored(store)}
    assert ats[("succeeded", "a@customer.example")] == events.iso_from_us(second)
    assert ats[("bounced", "b@customer.example")] == events.iso_from_us(second)


def test_a_stamp_with_microseconds_is_exact(store):
    second = second_of_lines()
    line = MAILLOG[1].replace("Nov 22 12:00:02", events.iso_from_us(second + 250_000)[:-1] + "+00:00")
    (log,) = Correlator().feed(parse_line(line, now=NOW), "f:42:0")
    assert log.at == events.iso_from_us(second + 250_000)
    ingest.records(store, records([queued("a@customer.example", second + 700_000), log]))
    assert ("succeeded", "a@customer.example", log.at) in stored(store)  # Postfix's own time
