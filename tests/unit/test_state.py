"""mxhook.store.statedb: ingest (idempotent), the delivery queue, attempt results, log queries."""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import time as time_mod
from datetime import datetime, timedelta, timezone

import pytest

from mxhook.model.records import iso
from mxhook.model.records import RecordError
from mxhook.model.targets import Destination
from mxhook import spool
from mxhook.store import ingest, logs, migrations, statedb
from mxhook.model.events import ENRICH_FIELDS
from mxhook.store.statedb import AttemptRecord, StateStore


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


def test_page_cache_is_sqlites_unless_asked(store, tmp_path):
    default = sqlite3.connect(":memory:").execute("PRAGMA cache_size").fetchone()[0]
    assert store.conn.execute("PRAGMA cache_size").fetchone()[0] == default
    with StateStore(str(tmp_path / "w.db"), cache_kib=statedb.WRITER_CACHE_KIB) as writer:
        assert writer.conn.execute("PRAGMA cache_size").fetchone()[0] == -statedb.WRITER_CACHE_KIB


def test_commits_are_fsynced_unless_the_owner_makes_them_durable(store, tmp_path, monkeypatch):
    """FULL (an fsync of the WAL at each commit) by default; `durable_commits=False` (the
    spooler): NORMAL, and `make_durable` fsyncs the WAL, or the database file before a WAL
    exists."""
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(statedb.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                         real_fsync(fd)))
    path = str(tmp_path / "w.db")
    with StateStore(path, durable_commits=False) as writer:
        assert writer.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        ingest.records(writer, [inbound("a1")])
        assert os.path.exists(path + "-wal")
        writer.make_durable()
        assert synced == [path + "-wal"]
        os.unlink(path + "-wal")  # as after the last connection closed it
        writer.make_durable()
        assert synced == [path + "-wal", path]


def test_ingest_is_idempotent(store, tmp_path):
    rec = inbound("a1")
    assert ingest.records(store, [rec]) == 1
    assert ingest.records(store, [rec]) == 0
    assert ingest.records(store, [rec, denied("d1")]) == 1
    assert ingest.records(store, [denied("d1")]) == 0
    c = logs.counts(store)
    assert c["messages"] == 1 and c["deliveries"]["queued"] == 1 and c["denied"] == 1
    assert store.conn.execute("SELECT count(*) FROM inbound_log").fetchone()[0] == 2
    # a second store on the same file (a restarted spooler) sees the same and ingests nothing new
    other = StateStore(str(tmp_path / "state.db"))
    assert ingest.records(other, [rec]) == 0
    other.close()


def test_ingest_inbound_rows(store):
    rec = inbound("a1", deliveries=[
        {"recipients": ["in@ours.example"], "rule": target("r1")},
        {"recipients": ["sales@ours.example", "ops@ours.example"], "rule": target("r2", id=2)},
    ], host_name="mx1.ours.example")
    ingest.records(store, [rec])
    log = logs.inbound_log(store)
    assert [r["id"] for r in log] == ["a1-r2", "a1-r1"]  # same time: id descending
    row = log[1]
    assert row == {
        "id": "a1-r1", "received": "2026-11-22T12:00:00.000000Z", "status": "queued",
        "from": "alice@x.org", "to": "in@ours.example", "hostName": "mx1.ours.example",
        "messageId": "<m1@x.org>", "filterName": "r1", "reason": None,
    }  # hostName: the MX that recorded it (seed 000), not the client (mail.x.org)
    assert log[0]["to"] == "sales@ours.example, ops@ours.example"
    d = logs.delivery(store, "a1-r2")
    assert d["rule_id"] == 2 and d["target"]["name"] == "r2" and d["attempts"] == 0
    assert d["recipients"] == ["sales@ours.example", "ops@ours.example"]


def test_from_falls_back_to_mail_from(store):
    ingest.records(store, [inbound("a1", header_from=""), denied("d1")])
    assert {r["id"]: r["from"] for r in logs.inbound_log(store)} == {
        "a1-r1": "bounce@x.org", "d1": "spam@bad.example"}


def test_denied_row(store):
    ingest.records(store, [denied("d1", recipients=["a@ours.example", "b@ours.example"],
                                  filter="heuristic:from_equals_to", reason="From equals To")])
    (row,) = logs.inbound_log(store)
    assert row["status"] == "denied" and row["filterName"] == "heuristic:from_equals_to"
    assert row["reason"] == "From equals To" and row["to"] == "a@ours.example, b@ours.example"
    assert row["hostName"] is None  # a record from before the milter wrote its host name
    ingest.records(store, [denied("d2", host_name="mx1.ours.example")])
    assert {r["id"]: r["hostName"] for r in logs.inbound_log(store)}["d2"] == "mx1.ours.example"
    d = logs.inbound_detail(store, "d1")
    assert d["recipients"] == ["a@ours.example", "b@ours.example"]
    assert d["client_addr"] == "198.51.100.7" and d["queue_id"] == "" and d["attempts"] == []


def test_events_stored_raw(store):
    ev = spool.Record(id="e1", kind="event", meta={"received": "2026-11-22T12:00:00Z", "type": "queued"})
    assert ingest.records(store, [ev]) == 1 and ingest.records(store, [ev]) == 0
    assert logs.counts(store)["events"] == 1


def test_check_record_rejects_bad_meta(store):
    with pytest.raises(RecordError):
        ingest.records(store, [inbound("ok1"), inbound("bad", deliveries=[])])
    with pytest.raises(RecordError):
        ingest.check_record(inbound("bad", deliveries=[{"recipients": "x", "rule": target()}]))
    with pytest.raises(RecordError):
        ingest.check_record(inbound("bad", deliveries=[{"recipients": [], "rule": {"name": "x"}}]))
    with pytest.raises(RecordError):
        ingest.check_record(inbound("bad", received="yesterday"))
    with pytest.raises(RecordError):
        ingest.check_record(inbound("bad", deliveries=[
            {"recipients": ["a@x"], "rule": target("r")}, {"recipients": ["b@x"], "rule": target("r")}]))
    assert logs.counts(store)["messages"] == 0  # nothing of the failed batch was written


@pytest.mark.parametrize("rule", [{"name": ["x"], "endpoint": "https://h/"},
                                  {"name": {"a": 1}, "endpoint": "https://h/"},
                                  {"name": "r", "endpoint": ["https://h/"]}])
def test_check_record_rejects_non_string_rule_fields(rule):
    with pytest.raises(RecordError, match="is not a string"):
        ingest.check_record(inbound("bad", deliveries=[{"recipients": ["a@x"], "rule": rule}]))


@pytest.mark.parametrize("make,field", [("inbound", "subject"), ("inbound", "message_id"),
                                        ("denied", "mail_from"), ("event", "message_id"),
                                        ("event", "subject"), ("event", "orig_recipient")])
def test_check_record_rejects_non_text_in_text_fields(store, make, field):
    # an object where text belongs got past the check and failed at the INSERT (or render)
    record = {"inbound": lambda: inbound("bad", **{field: {"a": 1}}),
              "denied": lambda: denied("bad", **{field: ["x"]}),
              "event": lambda: event("bad", "queued", **{field: {"a": 1}})}[make]()
    with pytest.raises(RecordError, match=f"{field}' is not a string"):
        ingest.check_record(record)
    with pytest.raises(RecordError, match="rule.id is not an integer"):
        ingest.check_record(inbound("bad", deliveries=[{"recipients": ["a@x"], "rule": {**target(), "id": "7"}}]))


@pytest.mark.parametrize("when", [1e300, 6.77680361916768e16, -1e300])
def test_check_record_rejects_out_of_range_times(when):
    with pytest.raises(RecordError, match="out of range"):
        ingest.check_record(denied("bad", received=when))
    with pytest.raises(RecordError, match="out of range"):
        ingest.check_record(spool.Record(id="e", kind="event", meta={"type": "queued", "at": when}))


def test_received_is_normalized_to_utc(store):
    ingest.records(store, [inbound("a1", received="2026-11-22T13:00:00+01:00"), inbound("a2", received="2026-11-22T12:30:00Z")])
    assert [r["received"] for r in logs.inbound_log(store)] == [
        "2026-11-22T12:30:00.000000Z", "2026-11-22T12:00:00.000000Z"]


def test_log_filters(store):
    base = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    recs = []
    for i in range(6):
        at = (base + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        recs.append(inbound(f"a{i}", received=at) if i % 2 == 0 else denied(f"d{i}", received=at))
    ingest.records(store, recs)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(logs.inbound_log(store)) == ["d5", "a4-r1", "d3", "a2-r1", "d1", "a0-r1"]
    assert ids(logs.inbound_log(store, limit=2)) == ["d5", "a4-r1"]
    assert ids(logs.inbound_log(store, status="denied")) == ["d5", "d3", "d1"]
    assert ids(logs.inbound_log(store, status="queued", limit=1)) == ["a4-r1"]
    # since inclusive, until exclusive; strings, datetimes and offsets all compare in UTC
    assert ids(logs.inbound_log(store, since="2026-11-22T14:00:00Z")) == ["d5", "a4-r1", "d3", "a2-r1"]
    assert ids(logs.inbound_log(store, since="2026-11-22T15:00:00+01:00")) == ["d5", "a4-r1", "d3", "a2-r1"]
    assert ids(logs.inbound_log(store, until=base + timedelta(hours=2))) == ["d1", "a0-r1"]
    assert ids(logs.inbound_log(store, since=datetime(2026, 11, 22, 13), until="2026-11-22T15:00")) == ["a2-r1", "d1"]
    assert ids(logs.inbound_log(store, status="denied", since="2026-11-22T13:30:00Z", until="2026-11-22T17:30:00Z")) == ["d5", "d3"]
    assert logs.inbound_log(store, since="2026-11-23") == []
    with pytest.raises(ValueError):
        logs.inbound_log(store, status="bogus")
    with pytest.raises(ValueError):
        logs.inbound_log(store, since="last tuesday")


def test_due_and_attempts(store):
    ingest.records(store, [inbound("a1"), inbound("a2")], now="2026-11-22T12:00:00Z")
    assert store.due("2026-11-22T11:59:59Z", 10) == []
    due = store.due("2026-11-22T12:00:00Z", 10)
    assert [d.id for d in due] == ["a1-r1", "a2-r1"]
    d = due[0]
    assert d.raw == b"Subject: Hello\r\n\r\nbody\r\n" and d.meta["subject"] == "Hello"
    assert d.target.bearer == "tok" and d.recipients == ["in@ours.example", "in2@ours.example"]
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
    assert {r["id"]: (r["status"], r["reason"]) for r in logs.inbound_log(store)} == {
        "a1-r1": ("deferred", "HTTP 500 Internal Server Error"), "a2-r1": ("failed", "HTTP 404 Not Found")}

    store.record_attempt("a1-r1", at="2026-11-22T12:01:02.000000Z", outcome="succeeded",
                         status="succeeded", status_code=200, duration_ms=5)
    detail = logs.inbound_detail(store, "a1-r1")
    assert detail["status"] == "succeeded" and detail["reason"] is None
    assert detail["mail_from"] == "bounce@x.org" and detail["client_addr"] == "192.0.2.1"
    assert detail["queue_id"] == "4XbQ1" and detail["recipients"] == ["in@ours.example", "in2@ours.example"]
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in detail["attempts"]] == [
        (500, "HTTP 500 Internal Server Error", 12), (200, None, 5)]
    assert set(logs.LOG_KEYS) | {"mail_from", "client_addr", "queue_id", "recipients", "attempts"} <= set(detail)
    assert logs.inbound_detail(store, "a1")["id"] == "a1-r1"  # a record id finds its delivery
    assert logs.inbound_detail(store, "nope") is None
    d = logs.delivery(store, "a1-r1")
    assert d["attempts"] == 2 and d["next_attempt_at"] is None and d["first_attempt_at"] == "2026-11-22T12:00:01.000000Z"
    # raw is dropped once all deliveries succeeded, kept for the failed one (replayable)
    raws = dict(store.conn.execute("SELECT id, raw IS NOT NULL FROM messages"))
    assert raws == {"a1": 0, "a2": 1}
    c = logs.counts(store)
    assert c["deliveries"] == {"queued": 0, "deferred": 0, "succeeded": 1, "failed": 1}
    assert c["messages_with_raw"] == 1 and c["next_due_at"] is None


def test_raw_kept_until_every_delivery_succeeded(store):
    ingest.records(store, [inbound("a1", deliveries=[
        {"recipients": ["x@ours.example"], "rule": target("r1")},
        {"recipients": ["y@ours.example"], "rule": target("r2")},
    ])])
    store.record_attempt("a1-r1", at=iso(), outcome="succeeded", status="succeeded", status_code=200)
    assert store.conn.execute("SELECT raw IS NOT NULL FROM messages").fetchone()[0] == 1
    store.record_attempt("a1-r2", at=iso(), outcome="succeeded", status="succeeded", status_code=204)
    assert store.conn.execute("SELECT raw IS NULL, raw_size FROM messages").fetchone() == (1, 24)


def test_log_reason_may_differ_from_error(store):
    ingest.records(store, [inbound("a1")])
    store.record_attempt("a1-r1", at=iso(), outcome="deferred", status="failed", status_code=503,
                         error="HTTP 503 Service Unavailable",
                         reason="HTTP 503 Service Unavailable; gave up: retry period of 3 days ended")
    d = logs.inbound_detail(store, "a1-r1")
    assert d["status"] == "failed" and d["reason"].endswith("retry period of 3 days ended")
    assert d["attempts"][0]["error"] == "HTTP 503 Service Unavailable"
    assert d["attempts"][0]["outcome"] == "deferred"


def test_record_attempt_validates_and_is_atomic(store):
    ingest.records(store, [inbound("a1")])
    with pytest.raises(ValueError):
        store.record_attempts([AttemptRecord("a1-r1", at=iso(), outcome="maybe", status="queued")])
    store.record_attempt("gone-r1", at=iso(), outcome="succeeded", status="succeeded")  # ignored
    assert store.conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0


def test_reader_while_writer_holds_transaction(tmp_path):
    path = str(tmp_path / "state.db")
    writer = StateStore(path)
    ingest.records(writer, [inbound("a1")])
    reader = StateStore(path)
    writer.conn.execute("BEGIN IMMEDIATE")
    writer.conn.execute("UPDATE inbound_log SET status = 'failed'")
    assert logs.inbound_log(reader)[0]["status"] == "queued"  # WAL: readers see the last commit
    writer.conn.execute("COMMIT")
    assert logs.inbound_log(reader)[0]["status"] == "failed"
    writer.close()
    reader.close()


def _rows_in_main_file(path: str) -> int:
    """inbound_log rows in the database file alone (what checkpoints copied), without its WAL."""
    copy = path + ".copy"
    shutil.copyfile(path, copy)
    try:
        conn = sqlite3.connect(copy)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'inbound_log'").fetchone():
                return 0  # not even the schema was copied yet
            return conn.execute("SELECT count(*) FROM inbound_log").fetchone()[0]
        finally:
            conn.close()
    finally:
        os.unlink(copy)


def test_checkpoints_in_background_copy_the_wal_into_the_database(tmp_path):
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    store.checkpoint_in_background(interval=3600)  # the thread waits: only the writer could
    ingest.records(store, [inbound("a1")])
    assert _rows_in_main_file(path) == 0  # still only in the WAL: the writer did not checkpoint
    store.close()  # the last connection's close checkpoints
    assert _rows_in_main_file(path) == 1
    assert not any(t.name == "mxhook-checkpoint" for t in threading.enumerate())

    store = StateStore(path)
    store.checkpoint_in_background(interval=0.05)
    ingest.records(store, [inbound("a2")])
    deadline = time_mod.monotonic() + 10
    while _rows_in_main_file(path) < 2 and time_mod.monotonic() < deadline:
        time_mod.sleep(0.05)
    assert _rows_in_main_file(path) == 2  # copied by the thread while the store stays open
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == statedb.WRITER_CHECKPOINT_PAGES
    store.close()


def test_iso_helpers():
    assert iso("2026-11-22T12:00:00Z") == "2026-11-22T12:00:00.000000Z"
    assert iso("2026-11-22") == "2026-11-22T00:00:00.000000Z"
    assert iso(datetime(2026, 11, 22, 12, 0, 0, 5)) == "2026-11-22T12:00:00.000005Z"
    assert iso(0) == "1970-01-01T00:00:00.000000Z"
    with pytest.raises(TypeError):
        iso([])
    assert isinstance(sqlite3.sqlite_version, str)


# ---------------------------------------------------------------------------------------------
# Events: fan-out, enrichment, batches, hard bounces, the event log

from mxhook.model.endpoints import Endpoint  # noqa: E402


def event(eid, etype="succeeded", at="2026-11-22T12:00:00.000000Z", **fields):
    meta = {"id": eid, "type": etype, "at": at, "received": at, "source": "log",
            "queue_id": "Q1", "recipient": "r@else.example", "custom_headers": {}}
    meta.update(fields)
    return spool.Record(id=eid, kind="event", meta=meta)


EP_ALL = Endpoint(Destination("https://h.example/all"), id=1)
EP_BOUNCES = Endpoint(Destination("https://h.example/b"), id=2, categories=("bounces",))
EP_OFF = Endpoint(Destination("https://h.example/off"), id=3, enabled=False)
EPS = [EP_ALL, EP_BOUNCES, EP_OFF]


def fanned(store):
    return store.conn.execute(
        "SELECT endpoint_id, event_id FROM event_deliveries ORDER BY seq").fetchall()


def test_event_fan_out_by_category(store):
    recs = [event("e1", "queued"), event("e2", "bounced", bounce_type="hard"), event("e3", "succeeded"),
            event("e4", "blocked")]
    assert ingest.records(store, recs, endpoints=EPS) == 4
    assert fanned(store) == [(1, "e1"), (1, "e2"), (2, "e2"), (1, "e3"), (1, "e4")]
    # re-ingest: no second fan-out
    assert ingest.records(store, recs, endpoints=EPS) == 0
    assert len(fanned(store)) == 5
    row = store.conn.execute("SELECT type, queue_id, recipient, received FROM events WHERE id = 'e2'").fetchone()
    assert row == ("bounced", "Q1", "r@else.example", "2026-11-22T12:00:00.000000Z")


def test_event_time_normalized(store):
    ingest.records(store, [event("e1", at="2026-11-22T13:00:00+01:00")])
    assert store.conn.execute("SELECT received FROM events").fetchone()[0] == "2026-11-22T12:00:00.000000Z"


def test_event_records_checked(store):
    for bad in (event("x", "exploded"), event("x", at="soon"), event("x", recipient=["a"]),
                event("x", custom_headers="no")):
        with pytest.raises(RecordError):
            ingest.check_record(bad)
    with pytest.raises(RecordError):
        ingest.records(store, [event("ok"), event("bad", "exploded")])
    assert logs.counts(store)["events"] == 0


def test_enrichment_both_orders(store):
    queued = event("q1", "queued", at="2026-11-22T12:00:00.000000Z", source="milter", queue_id="QA",
                   message_id="<m@ours>", subject="Hi", sender="app@ours", header_from="app@ours",
                   auth_user="app1", custom_headers={"X-Campaign": "c1"})
    before = event("s1", "succeeded", at="2026-11-22T12:00:01.000000Z", queue_id="QA")
    # the delivery event arrives first; its batch is rendered after the queued event came
    ingest.records(store, [before], endpoints=[EP_ALL])
    ingest.records(store, [queued], endpoints=[EP_ALL])
    after = event("s2", "deferred", at="2026-11-22T12:00:02.000000Z", queue_id="QA", subject="own")
    ingest.records(store, [after], endpoints=[EP_ALL])
    batch = store.create_batch(1, 100)
    got = {e["id"]: e for e in store.batch_events(batch)}
    for eid in ("s1", "s2"):
        assert (got[eid]["message_id"], got[eid]["sender"], got[eid]["auth_user"]) == ("<m@ours>", "app@ours", "app1")
        assert got[eid]["custom_headers"] == {"X-Campaign": "c1"}
    assert got["s1"]["subject"] == "Hi" and got["s2"]["subject"] == "own"  # own values win
    assert logs.event_detail(store, "s1")["event"]["message_id"] == "<m@ours>"


def test_enrichment_from_memory_equals_enrichment_from_state_db(store, tmp_path):
    """The recent-queued index keeps only what enrichment reads of each queued event: every
    field it fills (by queue id, and by Message-ID with the recipient picking the queued event)
    comes out as from state.db, where the whole event is."""
    fields = {k: f"{k}-value" for k in ENRICH_FIELDS}
    ingest.records(store, [
        event("q1", "queued", at="2026-11-22T12:00:00.000000Z", source="milter", queue_id="QA",
              recipient="a@far.example", custom_headers={"X-Campaign": "c1"}, **fields),
        event("q2", "queued", at="2026-11-22T12:00:00.000001Z", source="milter", queue_id="QB",
              recipient="b@far.example", custom_headers={"X-Campaign": "c2"},
              **{**fields, "subject": "for b"})])
    wanted = [{"id": "s1", "type": "succeeded", "queue_id": "QA", "at": "2026-11-22T12:00:01.000000Z",
               "recipient": "a@far.example"},
              {"id": "d1", "type": "bounced", "message_id": "message_id-value",
               "at": "2026-11-22T12:00:02.000000Z", "recipient": "a@far.example"}]
    from_memory = store.enrich([dict(e) for e in wanted])
    with StateStore(str(tmp_path / "state.db")) as fresh:  # nothing in its memory
        from_disk = fresh.enrich([dict(e) for e in wanted])
    assert from_memory == from_disk
    assert {k: from_memory[0][k] for k in ENRICH_FIELDS} == fields
    assert from_memory[0]["custom_headers"] == {"X-Campaign": "c1"}
    # by Message-ID, the queued event of its recipient (not the latest, q2's)
    assert (from_memory[1]["subject"], from_memory[1]["queue_id"]) == ("subject-value", "QA")


def test_enrichment_with_reused_short_queue_ids(store):
    ingest.records(store, [event("q1", "queued", at="2026-11-22T10:00:00.000000Z", queue_id="ABC", subject="old"),
                           event("q2", "queued", at="2026-11-22T12:00:00.000000Z", queue_id="ABC", subject="new"),
                           event("s1", at="2026-11-22T11:00:00.000000Z", queue_id="ABC"),
                           event("s2", at="2026-11-22T12:00:05.000000Z", queue_id="ABC"),
                           event("s0", at="2026-11-22T09:00:00.000000Z", queue_id="ABC")])
    got = {e["id"]: e["subject"] for e in store.enrich(
        [{"id": i, "type": "succeeded", "queue_id": "ABC", "at": at} for i, at in (
            ("s1", "2026-11-22T11:00:00.000000Z"), ("s2", "2026-11-22T12:00:05.000000Z"),
            ("s0", "2026-11-22T09:00:00.000000Z"))])}
    assert got == {"s1": "old", "s2": "new", "s0": "old"}


def test_batches_freeze_membership_in_order(store):
    ingest.records(store, [event(f"e{i:03}") for i in range(250)], endpoints=[EP_ALL], now=1000.0)
    assert store.pending_stats(1, 100) == (100, 1000.0)
    assert store.pending_stats(1, 1000) == (250, 1000.0)
    b1 = store.create_batch(1, 100, now=1001.0)
    assert b1.id.startswith("evb_") and (b1.size, b1.status, b1.attempts) == (100, "queued", 0)
    assert store.open_batches() == {1: b1}
    # events arriving now go to a later batch
    ingest.records(store, [event("late")], endpoints=[EP_ALL], now=1002.0)
    assert [e["id"] for e in store.batch_events(b1)] == [f"e{i:03}" for i in range(100)]
    b2 = store.create_batch(1, 100)
    b3 = store.create_batch(1, 100)
    assert [e["id"] for e in store.batch_events(b3)] == [f"e{i:03}" for i in range(200, 250)] + ["late"]
    assert b2.size == 100 and store.create_batch(1, 100) is None
    assert store.pending_stats(1, 100) == (0, None)


def test_the_batches_of_a_step_are_made_in_one_transaction(store):
    """create_batches: every batch one spooler step makes, of several endpoints, one COMMIT
    (one fsync); each endpoint's batches take its events oldest first; fewer when fewer are
    pending."""
    ingest.records(store, [event(f"e{i}") for i in range(5)] +
                   [event("b1", "bounced", bounce_type="hard")], endpoints=[EP_ALL, EP_BOUNCES],
                   now=1000.0)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    made = store.create_batches([(1, 1, 4, "https://h.example/all"), (2, 10, 3, None)], now=1001.0)
    store.conn.set_trace_callback(None)
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert [(b.endpoint_id, b.size, b.status) for b in made] == [(1, 1, "queued")] * 4 + [(2, 1, "queued")]
    assert [[e["id"] for e in store.batch_events(b)] for b in made] == [["e0"], ["e1"], ["e2"], ["e3"], ["b1"]]
    assert made[0] == store.batch(made[0].id) and len({b.id for b in made}) == 5
    assert store.pending_stats(1, 100)[0] == 2  # e4 and the bounce: for later batches
    assert store.create_batches([(2, 10, 1, None)]) == []


def test_a_batch_holds_in_state_db_exactly_the_events_it_took(store):
    """The members of each batch as state.db has them (read back by batch id, not from the
    batch object), with two endpoints' pending events interleaved in arrival order and a
    batch of each left half-way."""
    mixed = []
    for i in range(9):
        mixed.append(event(f"e{i}"))
        if i % 3 == 0:
            mixed.append(event(f"b{i}", "bounced", bounce_type="hard"))
    ingest.records(store, mixed, endpoints=[EP_ALL, EP_BOUNCES], now=1000.0)
    made = store.create_batches([(1, 4, 2, None), (2, 2, 1, None)], now=1001.0)
    stored = [[e["id"] for e in store.batch_events(store.batch(b.id))] for b in made]
    assert stored == [["e0", "b0", "e1", "e2"], ["e3", "b3", "e4", "e5"], ["b0", "b3"]]
    assert store.pending_stats(1, 100)[0] == 4 and store.pending_stats(2, 100)[0] == 1
    later = store.create_batches([(1, 10, 1, None), (2, 10, 1, None)], now=1002.0)
    assert [[e["id"] for e in store.batch_events(store.batch(b.id))] for b in later] == [
        ["e6", "b6", "e7", "e8"], ["b6"]]


def test_results_of_one_endpoints_batches_fold_into_its_health_in_order(store):
    """Several results of one endpoint in one record_attempts: the health row as if they had
    been written one by one (a failure after the last success starts a streak)."""
    ingest.records(store, [event(f"e{i}") for i in range(3)], endpoints=[EP_ALL])
    store.sync_endpoints([EP_ALL])
    b = store.create_batches([(1, 1, 3, None)])
    at = [f"2026-11-22T12:0{i}:00.000000Z" for i in range(3)]
    store.record_attempts([
        AttemptRecord(b[0].id, at[0], "deferred", "deferred", status_code=503, error="HTTP 503",
                      next_attempt_at=at[2]),
        AttemptRecord(b[1].id, at[1], "succeeded", "succeeded", status_code=200),
        AttemptRecord(b[2].id, at[2], "failed", "failed", status_code=422, error="HTTP 422")])
    health = store.health()[("endpoint", "1")]
    assert (health["failing_since"], health["last_success"], health["last_failure"]) == (at[2], at[1], at[2])
    assert (health["last_error"], health["last_status_code"], health["name"]) == ("HTTP 422", 422, "https://h.example/all")
    assert [store.batch(x.id).status for x in b] == ["deferred", "succeeded", "failed"]
    assert store.conn.execute("SELECT count(*) FROM event_attempts").fetchone()[0] == 3


def test_batch_attempts_and_event_log(store):
    ingest.records(store, [event("e1", "bounced", remote_host="mx.else.example", bounce_type="hard",
                                 host_name="mx1.ours.example"),
                           event("e2", "queued", at="2026-11-22T12:00:01.000000Z", client_addr="192.0.2.9",
                                 relay=None, host_name="mx2.ours.example")], endpoints=[EP_ALL, EP_BOUNCES])
    store.sync_endpoints([EP_ALL, EP_BOUNCES])
    b = store.create_batch(1, 100)
    store.record_attempts([AttemptRecord(b.id, "2026-11-22T12:01:00.000000Z", "deferred", "deferred",
                                               status_code=503, error="HTTP 503 Service Unavailable",
                                               next_attempt_at="2026-11-22T12:02:00.000000Z")])
    b = store.batch(b.id)
    assert (b.status, b.attempts, b.next_attempt_at) == ("deferred", 1, "2026-11-22T12:02:00.000000Z")
    assert store.open_batches()[1].id == b.id
    rows = logs.event_log(store)
    assert [(r["id"], r["endpointId"], r["status"]) for r in rows] == [("e2", 1, "deferred"), ("e1", 2, "queued"), ("e1", 1, "deferred")]
    assert {k: rows[2][k] for k in logs.EVENT_LOG_KEYS} == {
        "received": "2026-11-22T12:00:00.000000Z", "status": "deferred", "hostName": "mx1.ours.example",
        "endpointUrl": "https://h.example/all", "reason": "HTTP 503 Service Unavailable"}
    assert rows[0]["hostName"] == "mx2.ours.example"
    assert [r["id"] for r in logs.event_log(store, status="queued")] == ["e1"]
    assert [r["id"] for r in logs.event_log(store, since="2026-11-22T12:00:01Z")] == ["e2"]
    assert [r["id"] for r in logs.event_log(store, until="2026-11-22T12:00:01Z", limit=1)] == ["e1"]
    store.record_attempts([AttemptRecord(b.id, "2026-11-22T12:02:00.000000Z", "succeeded", "succeeded",
                                               status_code=200)])
    assert store.open_batches() == {}
    d = logs.event_detail(store, "e1")
    assert d["event"]["type"] == "bounced" and d["hostName"] == "mx1.ours.example"
    by_ep = {x["endpointId"]: x for x in d["deliveries"]}
    assert by_ep[1]["status"] == "succeeded" and [a["status_code"] for a in by_ep[1]["attempts"]] == [503, 200]
    assert by_ep[2]["status"] == "queued" and by_ep[2]["attempts"] == []
    assert logs.event_detail(store, "nope") is None
    with pytest.raises(ValueError):
        logs.event_log(store, status="denied")
    assert logs.event_counts(store) == {"pending": 1, "batches": {"queued": 0, "deferred": 0, "succeeded": 1, "failed": 0}}


def test_host_name_is_the_server_that_recorded_the_event():
    """Seed 000: "the host name of the server that recorded the log", not the remote server."""
    assert logs.event_host({"host_name": "mx1.ours.example", "remote_host": "mx.else.example[192.0.2.25]",
                            "relay": "mx.else.example[192.0.2.25]:25"}) == "mx1.ours.example"
    assert logs.event_host({"relay": "none", "client_addr": "192.0.2.1"}) is None  # stored before


def test_an_event_without_a_host_name_takes_its_messages(store):
    """mxhook-track records opens and clicks wherever it runs: such an event names the MX that
    handled the message, from its queued event (as sender, subject, ...)."""
    ingest.records(store, [event("q1", "queued", host_name="mx1.ours.example"),
                           event("o1", "opened", at="2026-11-22T13:00:00.000000Z", source="track")],
                   endpoints=[Endpoint(Destination("https://h.example/e"), id=1, categories=("all",))])
    assert {r["id"]: r["hostName"] for r in logs.event_log(store)} == {
        "q1": "mx1.ours.example", "o1": "mx1.ours.example"}


def test_removed_endpoints_fail_their_events(store):
    ep_x = Endpoint(Destination("https://h.example/x"), id=7)
    ingest.records(store, [event(f"e{i}") for i in range(5)], endpoints=[EP_ALL, ep_x])
    store.sync_endpoints([EP_ALL, ep_x])
    open_b = store.create_batch(7, 100)
    ingest.records(store, [event("e9")], endpoints=[EP_ALL, ep_x])
    assert store.fail_removed_endpoints({1, 7}) == 0
    assert store.fail_removed_endpoints({1}) == 6
    assert store.batch(open_b.id).status == "failed"
    statuses = {(r["endpointId"], r["status"], r["reason"]) for r in logs.event_log(store, limit=None)}
    assert statuses == {(1, "queued", None), (7, "failed", "endpoint removed")}
    assert store.fail_removed_endpoints({1}) == 0


def test_hard_bounces_pending_then_registered(store):
    recs = [event("q1", "queued", queue_id="QB", message_id="<m@ours>"),
            event("b1", "bounced", queue_id="QB", bounce_type="hard", dsn="5.1.1"),
            event("b2", "bounced", queue_id="QB", bounce_type="soft", dsn="5.2.2"),
            event("b3", "bounced", queue_id="QB", bounce_type="hard", recipient=None)]
    ingest.records(store, recs, endpoints=[EP_ALL], block_hard_bounces=True)
    (p,) = ingest.pending_blocks(store)
    assert p["id"] == "b1" and p["message_id"] == "<m@ours>"  # enriched
    reg = {"id": "registered-r@else.example-b1", "type": "registered", "at": "2026-11-22T12:00:03.000000Z",
           "recipient": "r@else.example", "custom_headers": {}}
    assert ingest.finish_blocks(store, [("b1", reg)], endpoints=[EP_ALL]) == 1
    assert ingest.pending_blocks(store) == []
    assert ingest.finish_blocks(store, [("b1", reg)], endpoints=[EP_ALL]) == 0  # stored once
    assert fanned(store)[-1] == (1, "registered-r@else.example-b1")
    ingest.records(store, [event("b4", "bounced", bounce_type="hard")], block_hard_bounces=False)
    assert ingest.pending_blocks(store) == []


def test_old_events_table_is_upgraded(tmp_path):
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, received TEXT, meta TEXT NOT NULL,"
                 " payload BLOB, ingested TEXT NOT NULL)")
    conn.execute("INSERT INTO events VALUES ('old', '2026-01-01T00:00:00.000000Z',"
                 " '{\"type\": \"queued\", \"queue_id\": \"QQ\", \"recipient\": \"a@b\"}', x'', 'x')")
    conn.commit()
    conn.close()
    with StateStore(path) as st:
        assert st.conn.execute("SELECT type, queue_id, recipient FROM events").fetchone() == ("queued", "QQ", "a@b")
        assert st.conn.execute("PRAGMA user_version").fetchone()[0] == migrations.latest(statedb._MIGRATIONS)
        with StateStore(str(tmp_path / "fresh.db")) as fresh:
            assert _schema(st.conn) == _schema(fresh.conn)
        (e,) = st.enrich([{"id": "n", "type": "succeeded", "queue_id": "QQ"}])
        assert e.get("recipient") is None  # enrichment takes message fields only


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "statedb")


# Declared types by SQLite's affinity (older sqlite-utils declare a float column FLOAT, newer
# ones REAL: the same column to SQLite).
_AFFINITY = {"FLOAT": "REAL", "DOUBLE": "REAL"}


def _schema(conn) -> set:
    """The tables' columns and the indexes of a database (their SQL differs in whitespace
    when a column was added by ALTER TABLE)."""
    tables = {name: tuple((c[1], _AFFINITY.get(c[2], c[2]), c[3], c[4], c[5])
                          for c in conn.execute(f"PRAGMA table_info({name})"))
              for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    indexes = {r for r in conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
                                       " AND sql IS NOT NULL")}
    return {("table", k, v) for k, v in tables.items()} | {("index",) + i for i in indexes}


def _rows(conn) -> dict:
    return {name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_unversioned_state_db_is_upgraded_in_place(tmp_path):
    """A state.db as the spooler wrote it before the file kept a version (fixture: dumped from
    such a file) gets a version, keeps every row, and works as a new one."""
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    with open(os.path.join(FIXTURES, "unversioned.sql"), encoding="utf-8") as f:
        conn.executescript(f.read())
    before = _rows(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()
    with StateStore(path) as st:
        assert st.conn.execute("PRAGMA user_version").fetchone()[0] == migrations.latest(statedb._MIGRATIONS)
        after = _rows(st.conn)
        # tables schema 2 and 4 added: the recipient index has the log rows' recipients
        assert {r[2] for r in after.pop("inbound_recipients")} == {r[0] for r in before["inbound_log"]}
        assert after == {**before, "unlogged_denials": []}
        with StateStore(str(tmp_path / "fresh.db")) as fresh:
            assert _schema(st.conn) == _schema(fresh.conn)
        assert logs.inbound_detail(st, "r0001-r1")["attempts"][0]["status_code"] == 503
        assert [r["id"] for r in logs.event_log(st)] == ["e0002", "e0001"]
        assert [e["id"] for e in ingest.pending_blocks(st)] == ["e0002"]
        assert ingest.records(st, [inbound("a1")]) == 1
    with StateStore(path) as st:  # reopening changes nothing
        assert logs.counts(st)["messages"] == 2


def test_state_db_of_a_newer_mxhook_is_refused(tmp_path):
    path = str(tmp_path / "state.db")
    StateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(migrations.SchemaTooNew, match="newer"):
        StateStore(path)


# ---------------------------------------------------------------------------------------------
# Issue 3 leftovers: recipient-less expiry, block list address, DSN join by Message-ID

EP_FAILS = Endpoint(Destination("https://h.example/f"), id=4, categories=("bounces", "deliveries"))


def FAILURES(ep):  # what the spooler's `wants` gives for a dialect that sends failures only
    return frozenset({"bounced", "failed"})


def test_expiry_without_recipient_applies_to_open_recipients(store):
    at = "2026-11-22T12:00:00.%06dZ"
    old = event("q0", "queued", at="2026-11-20T08:00:00.000000Z", queue_id="Q9", recipient="old@x.example")
    queued = [event(f"q{i}", "queued", at=at % i, queue_id="Q9", recipient=f"{r}@x.example",
                    subject="Hi", message_id="<m9@ours>")
              for i, r in enumerate(("a", "b", "c", "d"), start=1)]
    done_a = event("s1", "succeeded", at="2026-11-22T12:00:05.000000Z", queue_id="Q9", recipient="a@x.example")
    # delivered to an alias target: orig_recipient is the address the application used
    done_c = event("s2", "succeeded", at="2026-11-22T12:00:06.000000Z", queue_id="Q9",
                   recipient="target@y.example", orig_recipient="C@x.example")
    ingest.records(store, [old] + queued + [done_a, done_c], endpoints=[EP_FAILS], wants=FAILURES)
    expiry = event("18ea5c9a1d3f2000aaaaaaaaaaaa", "failed", at="2026-11-27T12:00:00.000000Z",
                   queue_id="Q9", recipient=None, reason="expired")
    assert ingest.records(store, [expiry], endpoints=[EP_FAILS], wants=FAILURES) == 3  # stored as came + b and d
    assert ingest.records(store, [expiry], endpoints=[EP_FAILS], wants=FAILURES) == 0  # idempotent
    rows = logs.event_log(store, limit=None)
    assert sorted(r["recipient"] for r in rows) == ["b@x.example", "d@x.example"]
    assert all(r["type"] == "failed" and r["endpointId"] == 4 for r in rows)
    ids = {r["id"] for r in rows}
    # the time part of the id is the expiry's (to the microsecond): ids sort by time
    assert all(int(i[:16], 16) // 1000 == int(expiry.id[:16], 16) // 1000 and len(i) == 28 for i in ids), ids
    batch = store.create_batch(4, 100)
    got = store.batch_events(batch)
    assert {(e["recipient"], e["reason"], e["subject"], e["message_id"]) for e in got} == {
        ("b@x.example", "expired", "Hi", "<m9@ours>"), ("d@x.example", "expired", "Hi", "<m9@ours>")}
    # the recipient-less event itself is kept (log event shows it) but not sent
    assert logs.event_detail(store, expiry.id)["deliveries"] == []


def test_expiry_in_the_same_ingest_as_its_queued_events(store):
    recs = [event("q1", "queued", at="2026-11-22T12:00:00.000001Z", queue_id="QZ", recipient="a@x.example"),
            event("q2", "queued", at="2026-11-22T12:00:00.000002Z", queue_id="QZ", recipient="b@x.example"),
            event("b1", "bounced", at="2026-11-22T12:00:01.000000Z", queue_id="QZ", recipient="a@x.example",
                  bounce_type="soft"),
            event("f0", "failed", at="2026-11-27T12:00:00.000000Z", queue_id="QZ", recipient=None)]
    ingest.records(store, recs, endpoints=[EP_FAILS], wants=FAILURES)
    assert [(r["type"], r["recipient"]) for r in logs.event_log(store, limit=None)] == [
        ("failed", "b@x.example"), ("bounced", "a@x.example")]


def test_expiry_matches_recipients_whatever_the_form_of_their_domain(store):
    # queued as the application wrote it (U-label); Postfix may log the A-label, a trailing dot
    recs = [event("q1", "queued", at="2026-11-22T12:00:00.000001Z", queue_id="QU", recipient="a@b\u00fccher.example"),
            event("q2", "queued", at="2026-11-22T12:00:00.000002Z", queue_id="QU", recipient="b@x.example"),
            event("s1", "succeeded", at="2026-11-22T12:00:01.000000Z", queue_id="QU",
                  recipient="a@xn--bcher-kva.example."),
            event("f0", "failed", at="2026-11-27T12:00:00.000000Z", queue_id="QU", recipient=None)]
    ingest.records(store, recs, endpoints=[EP_FAILS], wants=FAILURES)
    assert [(r["type"], r["recipient"]) for r in logs.event_log(store, limit=None)] == [("failed", "b@x.example")]


def test_expiry_of_an_unknown_queue_id_is_sent_without_recipient(store):
    ingest.records(store, [event("f0", "failed", queue_id="QU", recipient=None)], endpoints=[EP_FAILS], wants=FAILURES)
    (row,) = logs.event_log(store)
    assert (row["id"], row["recipient"]) == ("f0", None)


def test_hard_bounce_pending_by_orig_recipient(store):
    ingest.records(store, [event("b1", "bounced", bounce_type="hard", recipient=None, orig_recipient="app@x.example")],
                          block_hard_bounces=True)
    (p,) = ingest.pending_blocks(store)
    assert p["orig_recipient"] == "app@x.example"


def dsn_event(eid, at, **fields):
    return event(eid, "bounced", at=at, **{"source": "dsn", "queue_id": None, "message_id": "<m5@ours>",
                                          "bounce_type": "hard", **fields})


def test_dsn_events_join_by_message_id(store):
    queued = [event(f"q{r}", "queued", at="2026-11-22T12:00:00.00000%dZ" % i, source="milter", queue_id="QD",
                    recipient=f"{r}@x.example", message_id="<m5@ours>", subject="Order",
                    custom_headers={"X-App": r}, auth_user="shop")
              for i, r in enumerate("ab")]
    other = event("qo", "queued", at="2026-11-21T12:00:00.000000Z", queue_id="QO", message_id="<other@ours>")
    # in the same ingest as its queued events (they come first in the spool), and in a later one
    ingest.records(store, queued + [other, dsn_event("d1", "2026-11-22T12:00:01.000000Z", recipient="b@x.example")],
                          endpoints=[EP_ALL])
    ingest.records(store, [dsn_event("d2", "2026-11-22T12:10:00.000000Z", recipient="A@x.example", subject=None)],
                          endpoints=[EP_ALL])
    got = {e["id"]: e for e in store.batch_events(store.create_batch(1, 100))}
    for eid, rcpt in (("d1", "b"), ("d2", "a")):
        e = got[eid]
        assert (e["queue_id"], e["subject"], e["auth_user"], e["custom_headers"]) == \
            ("QD", "Order", "shop", {"X-App": rcpt}), e
    assert logs.event_detail(store, "d2")["event"]["queue_id"] == "QD"
    assert {r["id"]: r["messageId"] for r in logs.event_log(store)}["d1"] == "<m5@ours>"
    # in the same batch as its queued event
    (e,) = [x for x in store.enrich([{"id": "x", "type": "deferred", "message_id": "<n@ours>",
                                      "recipient": "z@x.example", "at": "2026-11-22T13:00:00.000000Z"},
                                     {"id": "qn", "type": "queued", "queue_id": "QN", "message_id": "<n@ours>",
                                      "recipient": "z@x.example", "at": "2026-11-22T12:59:00.000000Z",
                                      "subject": "S"}]) if x["id"] == "x"]
    assert (e["queue_id"], e["subject"]) == ("QN", "S")


def test_events_message_id_column_is_added_to_old_databases(tmp_path):
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, received TEXT, meta TEXT NOT NULL,"
                 " payload BLOB, ingested TEXT NOT NULL, type TEXT, queue_id TEXT, recipient TEXT,"
                 " block_state TEXT)")
    conn.execute("INSERT INTO events VALUES ('old', '2026-01-01T00:00:00.000000Z',"
                 " '{\"type\": \"queued\", \"queue_id\": \"QQ\", \"message_id\": \"<o@x>\", \"subject\": \"S\"}',"
                 " x'', 'x', 'queued', 'QQ', 'a@b', NULL)")
    conn.commit()
    conn.close()
    with StateStore(path) as st:
        (e,) = st.enrich([{"id": "n", "type": "bounced", "message_id": "<o@x>", "source": "dsn"}])
        assert (e["queue_id"], e["subject"]) == ("QQ", "S")


def test_events_rendered_at_ingest_give_the_body_of_the_stored_events(store):
    """Events fanned out are kept as the payload layer's prerender gives them (V1Text) when
    their message fields are at hand: the queued event stored before, in the same ingest, or
    none needed. The body made of those is the body made of the events read back from
    state.db."""
    from mxhook.payloads.events import V1Text, prerenderer
    from mxhook.payloads.registry import render_events

    kw = {"endpoints": [EP_ALL], "prerender": prerenderer([EP_ALL])}
    queued = event("q1", "queued", at="2026-11-22T12:00:00.000001Z", source="milter", queue_id="QR",
                   recipient="a@x.example", subject="Order 7", message_id="<r@ours>",
                   custom_headers={"X-App": "shop"}, auth_user="app")
    ingest.records(store, [queued], **kw)
    ingest.records(store, [event("s1", "succeeded", at="2026-11-22T12:00:02.000000Z", queue_id="QR",
                                 recipient="a@x.example", dsn="2.0.0"),
                           event("d1", "bounced", at="2026-11-22T12:00:03.000000Z", source="dsn", queue_id=None,
                                 message_id="<r@ours>", bounce_type="hard", recipient="a@x.example"),
                           event("n1", "deferred", at="2026-11-22T12:00:04.000000Z", queue_id="QNONE")], **kw)
    batch = store.create_batch(1, 100)
    items = store.batch_events(batch, rendered=True)
    assert [type(i) is V1Text for i in items] == [True, True, True, False]  # QNONE: no queued event
    store._recent.clear()
    stored = store.batch_events(batch)
    assert [e["id"] for e in stored] == ["q1", "s1", "d1", "n1"]
    assert (stored[1]["subject"], stored[2]["queue_id"]) == ("Order 7", "QR")  # enriched either way
    for tz in ("UTC", "Europe/Berlin"):
        assert render_events(1, items, endpoint_tz=tz, batch_id=batch.id).body == \
            render_events(1, stored, endpoint_tz=tz, batch_id=batch.id).body


def test_recent_queued_index_drops_the_oldest():
    index = statedb._RecentQueued(3)
    events = [{"queue_id": q, "message_id": f"<{i}@x>"} for i, q in enumerate("AABC")]
    for i, e in enumerate(events):
        index.add(f"2026-11-22T12:00:0{i}.000000Z", e)
    assert [c[1] for c in index.get("queue_id", "A", None)] == [events[1]]  # the first A dropped
    assert index.get("message_id", "<0@x>", None) is None
    assert index.get("queue_id", "C", "2026-11-22T12:00:02.000000Z") is None  # only after the event
    assert index.get("queue_id", "C", None) == [("2026-11-22T12:00:03.000000Z", events[3])]
    for e in [{"queue_id": "D"}, {"queue_id": "E"}, {"queue_id": "F"}]:
        index.add("2026-11-22T12:00:09.000000Z", e)
    assert all(index.get("queue_id", q, None) is None for q in "ABC")
    assert set(index._index["queue_id"]) == {"D", "E", "F"}  # nothing left behind


def test_events_are_kept_as_dicts_without_a_prerender(store):
    """Without a prerender (no endpoint takes the pre-rendered form), and for whatever is
    fanned out by finish_blocks with one, batch_events hands out what the prerender gave."""
    ingest.records(store, [event("q1", "queued", source="milter", queue_id="QB")], endpoints=[EP_ALL])
    assert [type(e) for e in store.batch_events(store.create_batch(1, 10), rendered=True)] == [dict]
    ingest.records(store, [event("q2", "queued", source="milter", queue_id="QC")], endpoints=[EP_ALL],
                          prerender=lambda e: f"text of {e['id']}")
    ingest.finish_blocks(store, [("x", {"id": "r1", "type": "registered", "recipient": "a@x.example",
                                        "at": "2026-11-22T12:00:00.000000Z"})],
                                endpoints=[EP_ALL], prerender=lambda e: f"text of {e['id']}")
    items = store.batch_events(store.create_batch(1, 10), rendered=True)
    assert items == ["text of q2", "text of r1"]


@pytest.mark.parametrize("count", [0, 1, ingest.ROWS_PER_INSERT - 1, ingest.ROWS_PER_INSERT,
                                   ingest.ROWS_PER_INSERT + 1, 2 * ingest.ROWS_PER_INSERT + 37])
def test_insert_rows_writes_every_row_in_order(count):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    rows = [(f"a{i}", bytes([i % 256])) for i in range(count)]
    ingest._insert_rows(conn, "INSERT INTO t (a, b)", rows)
    assert conn.execute("SELECT a, b FROM t ORDER BY seq").fetchall() == rows


# state.db holds message bodies and delivery credentials: private from birth, whatever the umask

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_state_db_and_its_wal_files_are_created_0640(tmp_path, umask):
    path = str(tmp_path / "state.db")
    old = os.umask(umask)
    try:
        store = StateStore(path)
        ingest.records(store, [inbound("a1")])  # the -wal and -shm files exist while it is open
        modes = {suffix: stat.S_IMODE(os.stat(path + suffix).st_mode) for suffix in ("", "-wal", "-shm")}
        store.close()
    finally:
        os.umask(old)
    assert modes == {"": 0o640, "-wal": 0o640, "-shm": 0o640}


def test_existing_state_db_mode_is_left_to_the_admin(tmp_path):
    """Only creation sets the mode (`mxhook check` reports a state.db open to every user)."""
    path = str(tmp_path / "state.db")
    StateStore(path).close()
    os.chmod(path, 0o600)
    StateStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# Forged delivery-status reports: anyone can send one naming any Message-ID and any address

def test_dsn_events_only_for_a_recipient_of_a_message_we_sent(store, caplog):
    queued = [event(f"q{r}", "queued", at="2026-11-22T12:00:00.000000Z", source="milter", queue_id="QD",
                    recipient=f"{r}@x.example", message_id="<m5@ours>") for r in "ab"]
    inbound_log = event("s0", "succeeded", at="2026-11-22T12:00:00.000000Z", queue_id="QI",
                        recipient="victim@x.example", message_id="<in@else>")  # mail we received
    ingest.records(store, queued + [inbound_log], endpoints=[EP_ALL])
    forged = [
        dsn_event("f1", "2026-11-22T12:01:00.000000Z", recipient="victim@x.example",
                  message_id="<never@sent>"),  # a Message-ID we never sent
        dsn_event("f2", "2026-11-22T12:01:00.000000Z", recipient="victim@x.example"),  # not its recipient
        dsn_event("f3", "2026-11-22T12:01:00.000000Z", recipient="victim@x.example",
                  message_id="<in@else>"),  # a message we only received
        dsn_event("f4", "2026-11-22T12:01:00.000000Z", recipient="a@x.example", message_id=None),
        dsn_event("f5", "2026-11-22T12:01:00.000000Z", recipient="b@x.example",
                  orig_recipient="victim@x.example"),  # the block list would take orig_recipient
    ]
    with caplog.at_level("WARNING", logger="mxhook.store.statedb"):
        assert ingest.records(store, forged, endpoints=[EP_ALL], block_hard_bounces=True) == 0
    assert ingest.pending_blocks(store) == []
    assert not {"f1", "f2", "f3", "f4", "f5"} & {r["id"] for r in logs.event_log(store, limit=None)}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "ignored a delivery-status report for Message-ID '<never@sent>' naming 'victim@x.example':"
        " no message with that Message-ID was sent from here; no event, no block-list entry",
        "ignored a delivery-status report for Message-ID '<m5@ours>' naming 'victim@x.example',"
        " 'victim@x.example': not a recipient of the message with that Message-ID; no event,"
        " no block-list entry",
        "ignored a delivery-status report for Message-ID '<in@else>' naming 'victim@x.example':"
        " no message with that Message-ID was sent from here; no event, no block-list entry",
        "ignored a delivery-status report for Message-ID (none) naming 'a@x.example': the report"
        " names no Message-ID of the returned message; no event, no block-list entry",
    ]
    # a genuine one: a recipient of the message, compared normalized
    genuine = dsn_event("g1", "2026-11-22T12:02:00.000000Z", recipient="B@X.Example.")
    assert ingest.records(store, [genuine], endpoints=[EP_ALL], block_hard_bounces=True) == 1
    assert [(p["id"], p["queue_id"]) for p in ingest.pending_blocks(store)] == [("g1", "QD")]


def test_dsn_event_before_any_queued_event_is_ignored(store):
    """The milter spools an outbound message's queued events before Postfix takes the message,
    and the spooler ingests in spool order, so a report ingested before them is not ours."""
    dsn = dsn_event("d0", "2026-11-22T12:01:00.000000Z", recipient="a@x.example")
    assert ingest.records(store, [dsn], endpoints=[EP_ALL], block_hard_bounces=True) == 0
    ingest.records(store, [event("qa", "queued", at="2026-11-22T12:00:00.000000Z", source="milter",
                                 queue_id="QD", recipient="a@x.example", message_id="<m5@ours>")])
    assert ingest.pending_blocks(store) == []


def test_ignored_report_naming_many_addresses_logs_one_short_line(store, caplog):
    forged = [dsn_event(f"f{i}", "2026-11-22T12:01:00.000000Z", recipient=f"v{i}@x.example",
                        message_id="<never@sent>") for i in range(ingest.IGNORED_NAMED + 3)]
    with caplog.at_level("WARNING", logger="mxhook.store.statedb"):
        assert ingest.records(store, forged, endpoints=[EP_ALL], block_hard_bounces=True) == 0
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.count("@x.example") == ingest.IGNORED_NAMED and " and 3 more: " in line, line
