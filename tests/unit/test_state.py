"""mxhook.state: ingest (idempotent), the delivery queue, attempt results, log queries."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from mxhook import spool, state
from mxhook.state import AttemptRecord, StateStore


def target(name="r1", **kw):
    t = {"id": 1, "name": name, "endpoint": "https://hooks.example/in", "format": "json",
         "basic_auth": None, "bearer": "tok", "api_key": None, "retry_interval": 60,
         "retry_period": 3, "timeout": 30, "allow_http": False, "discard": False}
    t.update(kw)
    return t


def inbound(rid, received="2026-11-22T12:00:00.000000Z", deliveries=None, **meta):
    m = {
        "received": received, "queue_id": "4XbQ1", "mail_from": "bounce@x.org",
        "client_addr": "192.0.2.1", "client_name": "mail.x.org", "helo": "mail.x.org",
        "header_from": "alice@x.org", "subject": "Hello", "message_id": "<m1@x.org>",
        "deliveries": deliveries if deliveries is not None else [
            {"recipients": ["in@ours.example", "in2@ours.example"], "rule": target("r1")}
        ],
    }
    m.update(meta)
    return spool.Record(id=rid, kind="inbound", meta=m, payload=b"Subject: Hello\r\n\r\nbody\r\n")


def denied(rid, received="2026-11-22T12:00:00.000000Z", **meta):
    m = {"received": received, "queue_id": "", "mail_from": "spam@bad.example",
         "recipients": ["in@ours.example"], "client_addr": "198.51.100.7", "client_name": "unknown",
         "helo": "x", "header_from": "", "subject": "Win", "message_id": "<s@bad>",
         "filter": "no_rule", "reason": "no rule matched in@ours.example"}
    m.update(meta)
    return spool.Record(id=rid, kind="denied", meta=m)


@pytest.fixture()
def store(tmp_path):
    s = StateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_pragmas(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_ingest_is_idempotent(store, tmp_path):
    rec = inbound("a1")
    assert store.ingest([rec]) == 1
    assert store.ingest([rec]) == 0
    assert store.ingest([rec, denied("d1")]) == 1
    assert store.ingest([denied("d1")]) == 0
    c = store.counts()
    assert c["messages"] == 1 and c["deliveries"]["queued"] == 1 and c["denied"] == 1
    assert store.conn.execute("SELECT count(*) FROM inbound_log").fetchone()[0] == 2
    # a second store on the same file (a restarted spooler) sees the same and ingests nothing new
    other = StateStore(str(tmp_path / "state.db"))
    assert other.ingest([rec]) == 0
    other.close()


def test_ingest_inbound_rows(store):
    rec = inbound("a1", deliveries=[
        {"recipients": ["in@ours.example"], "rule": target("r1")},
        {"recipients": ["sales@ours.example", "ops@ours.example"], "rule": target("r2", id=2)},
    ])
    store.ingest([rec])
    log = store.inbound_log()
    assert [r["id"] for r in log] == ["a1-r2", "a1-r1"]  # same time: id descending
    row = log[1]
    assert row == {
        "id": "a1-r1", "received": "2026-11-22T12:00:00.000000Z", "status": "queued",
        "from": "alice@x.org", "to": "in@ours.example", "hostName": "mail.x.org",
        "messageId": "<m1@x.org>", "filterName": "r1", "reason": None,
    }
    assert log[0]["to"] == "sales@ours.example, ops@ours.example"
    d = store.delivery("a1-r2")
    assert d["rule_id"] == 2 and d["target"]["name"] == "r2" and d["attempts"] == 0
    assert d["recipients"] == ["sales@ours.example", "ops@ours.example"]


def test_from_falls_back_to_mail_from(store):
    store.ingest([inbound("a1", header_from=""), denied("d1")])
    assert {r["id"]: r["from"] for r in store.inbound_log()} == {
        "a1-r1": "bounce@x.org", "d1": "spam@bad.example"}


def test_denied_row(store):
    store.ingest([denied("d1", recipients=["a@ours.example", "b@ours.example"],
                         filter="heuristic:from_equals_to", reason="From equals To")])
    (row,) = store.inbound_log()
    assert row["status"] == "denied" and row["filterName"] == "heuristic:from_equals_to"
    assert row["reason"] == "From equals To" and row["to"] == "a@ours.example, b@ours.example"
    assert row["hostName"] == "unknown"
    d = store.inbound_detail("d1")
    assert d["recipients"] == ["a@ours.example", "b@ours.example"]
    assert d["client_addr"] == "198.51.100.7" and d["queue_id"] == "" and d["attempts"] == []


def test_events_stored_raw(store):
    ev = spool.Record(id="e1", kind="event", meta={"received": "2026-11-22T12:00:00Z", "type": "queued"})
    assert store.ingest([ev]) == 1 and store.ingest([ev]) == 0
    assert store.counts()["events"] == 1


def test_check_record_rejects_bad_meta(store):
    with pytest.raises(state.RecordError):
        store.ingest([inbound("ok1"), inbound("bad", deliveries=[])])
    with pytest.raises(state.RecordError):
        state.check_record(inbound("bad", deliveries=[{"recipients": "x", "rule": target()}]))
    with pytest.raises(state.RecordError):
        state.check_record(inbound("bad", deliveries=[{"recipients": [], "rule": {"name": "x"}}]))
    with pytest.raises(state.RecordError):
        state.check_record(inbound("bad", received="yesterday"))
    with pytest.raises(state.RecordError):
        state.check_record(inbound("bad", deliveries=[
            {"recipients": ["a@x"], "rule": target("r")}, {"recipients": ["b@x"], "rule": target("r")}]))
    assert store.counts()["messages"] == 0  # nothing of the failed batch was written


def test_received_is_normalized_to_utc(store):
    store.ingest([inbound("a1", received="2026-11-22T13:00:00+01:00"), inbound("a2", received="2026-11-22T12:30:00Z")])
    assert [r["received"] for r in store.inbound_log()] == [
        "2026-11-22T12:30:00.000000Z", "2026-11-22T12:00:00.000000Z"]


def test_log_filters(store):
    base = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    recs = []
    for i in range(6):
        at = (base + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        recs.append(inbound(f"a{i}", received=at) if i % 2 == 0 else denied(f"d{i}", received=at))
    store.ingest(recs)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(store.inbound_log()) == ["d5", "a4-r1", "d3", "a2-r1", "d1", "a0-r1"]
    assert ids(store.inbound_log(limit=2)) == ["d5", "a4-r1"]
    assert ids(store.inbound_log(status="denied")) == ["d5", "d3", "d1"]
    assert ids(store.inbound_log(status="queued", limit=1)) == ["a4-r1"]
    # since inclusive, until exclusive; strings, datetimes and offsets all compare in UTC
    assert ids(store.inbound_log(since="2026-11-22T14:00:00Z")) == ["d5", "a4-r1", "d3", "a2-r1"]
    assert ids(store.inbound_log(since="2026-11-22T15:00:00+01:00")) == ["d5", "a4-r1", "d3", "a2-r1"]
    assert ids(store.inbound_log(until=base + timedelta(hours=2))) == ["d1", "a0-r1"]
    assert ids(store.inbound_log(since=datetime(2026, 11, 22, 13), until="2026-11-22T15:00")) == ["a2-r1", "d1"]
    assert ids(store.inbound_log(status="denied", since="2026-11-22T13:30:00Z", until="2026-11-22T17:30:00Z")) == ["d5", "d3"]
    assert store.inbound_log(since="2026-11-23") == []
    with pytest.raises(ValueError):
        store.inbound_log(status="bogus")
    with pytest.raises(ValueError):
        store.inbound_log(since="last tuesday")


def test_due_and_attempts(store):
    store.ingest([inbound("a1"), inbound("a2")], now="2026-11-22T12:00:00Z")
    assert store.due("2026-11-22T11:59:59Z", 10) == []
    due = store.due("2026-11-22T12:00:00Z", 10)
    assert [d.id for d in due] == ["a1-r1", "a2-r1"]
    d = due[0]
    assert d.raw == b"Subject: Hello\r\n\r\nbody\r\n" and d.meta["subject"] == "Hello"
    assert d.target["bearer"] == "tok" and d.recipients == ["in@ours.example", "in2@ours.example"]
    assert [x.id for x in store.due("2026-11-22T12:00:00Z", 10, exclude={"a1-r1"})] == ["a2-r1"]
    assert [x.id for x in store.due("2026-11-22T12:00:00Z", 1)] == ["a1-r1"]

    store.record_attempts([
        AttemptRecord("a1-r1", at="2026-11-22T12:00:01.000000Z", outcome="deferred", status="deferred",
                      status_code=500, error="HTTP 500 Internal Server Error", duration_ms=12,
                      response_excerpt="oops", next_attempt_at="2026-11-22T12:01:01.000000Z"),
        AttemptRecord("a2-r1", at="2026-11-22T12:00:01.000000Z", outcome="failed", status="failed",
                      status_code=404, error="HTTP 404 Not Found", duration_ms=3),
    ])
    assert [x.id for x in store.due("2026-11-22T12:01:00Z", 10)] == []
    (again,) = store.due("2026-11-22T12:01:01.000000Z", 10)
    assert again.id == "a1-r1" and again.attempts == 1 and again.status == "deferred"
    assert again.first_attempt_at == "2026-11-22T12:00:01.000000Z"
    assert {r["id"]: (r["status"], r["reason"]) for r in store.inbound_log()} == {
        "a1-r1": ("deferred", "HTTP 500 Internal Server Error"), "a2-r1": ("failed", "HTTP 404 Not Found")}

    store.record_attempt("a1-r1", at="2026-11-22T12:01:02.000000Z", outcome="succeeded",
                         status="succeeded", status_code=200, duration_ms=5)
    detail = store.inbound_detail("a1-r1")
    assert detail["status"] == "succeeded" and detail["reason"] is None
    assert detail["mail_from"] == "bounce@x.org" and detail["client_addr"] == "192.0.2.1"
    assert detail["queue_id"] == "4XbQ1" and detail["recipients"] == ["in@ours.example", "in2@ours.example"]
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in detail["attempts"]] == [
        (500, "HTTP 500 Internal Server Error", 12), (200, None, 5)]
    assert set(state.LOG_KEYS) | {"mail_from", "client_addr", "queue_id", "recipients", "attempts"} <= set(detail)
    assert store.inbound_detail("a1")["id"] == "a1-r1"  # a record id finds its delivery
    assert store.inbound_detail("nope") is None
    d = store.delivery("a1-r1")
    assert d["attempts"] == 2 and d["next_attempt_at"] is None and d["first_attempt_at"] == "2026-11-22T12:00:01.000000Z"
    # raw is dropped once all deliveries succeeded, kept for the failed one (replayable)
    raws = dict(store.conn.execute("SELECT id, raw IS NOT NULL FROM messages"))
    assert raws == {"a1": 0, "a2": 1}
    c = store.counts()
    assert c["deliveries"] == {"queued": 0, "deferred": 0, "succeeded": 1, "failed": 1}
    assert c["messages_with_raw"] == 1 and c["next_due_at"] is None


def test_raw_kept_until_every_delivery_succeeded(store):
    store.ingest([inbound("a1", deliveries=[
        {"recipients": ["x@ours.example"], "rule": target("r1")},
        {"recipients": ["y@ours.example"], "rule": target("r2")},
    ])])
    store.record_attempt("a1-r1", at=state.iso(), outcome="succeeded", status="succeeded", status_code=200)
    assert store.conn.execute("SELECT raw IS NOT NULL FROM messages").fetchone()[0] == 1
    store.record_attempt("a1-r2", at=state.iso(), outcome="succeeded", status="succeeded", status_code=204)
    assert store.conn.execute("SELECT raw IS NULL, raw_size FROM messages").fetchone() == (1, 24)


def test_log_reason_may_differ_from_error(store):
    store.ingest([inbound("a1")])
    store.record_attempt("a1-r1", at=state.iso(), outcome="deferred", status="failed", status_code=503,
                         error="HTTP 503 Service Unavailable",
                         reason="HTTP 503 Service Unavailable; gave up: retry period of 3 days ended")
    d = store.inbound_detail("a1-r1")
    assert d["status"] == "failed" and d["reason"].endswith("retry period of 3 days ended")
    assert d["attempts"][0]["error"] == "HTTP 503 Service Unavailable"
    assert d["attempts"][0]["outcome"] == "deferred"


def test_record_attempt_validates_and_is_atomic(store):
    store.ingest([inbound("a1")])
    with pytest.raises(ValueError):
        store.record_attempts([AttemptRecord("a1-r1", at=state.iso(), outcome="maybe", status="queued")])
    store.record_attempt("gone-r1", at=state.iso(), outcome="succeeded", status="succeeded")  # ignored
    assert store.conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0


def test_reader_while_writer_holds_transaction(tmp_path):
    path = str(tmp_path / "state.db")
    writer = StateStore(path)
    writer.ingest([inbound("a1")])
    reader = StateStore(path)
    writer.conn.execute("BEGIN IMMEDIATE")
    writer.conn.execute("UPDATE inbound_log SET status = 'failed'")
    assert reader.inbound_log()[0]["status"] == "queued"  # WAL: readers see the last commit
    writer.conn.execute("COMMIT")
    assert reader.inbound_log()[0]["status"] == "failed"
    writer.close()
    reader.close()


def test_iso_helpers():
    assert state.iso("2026-11-22T12:00:00Z") == "2026-11-22T12:00:00.000000Z"
    assert state.iso("2026-11-22") == "2026-11-22T00:00:00.000000Z"
    assert state.iso(datetime(2026, 11, 22, 12, 0, 0, 5)) == "2026-11-22T12:00:00.000005Z"
    assert state.iso(0) == "1970-01-01T00:00:00.000000Z"
    with pytest.raises(TypeError):
        state.iso([])
    assert isinstance(sqlite3.sqlite_version, str)
