"""mxhook.store.logs: the logs' retention (Retention) and unknown-domain denials counted instead
of logged. The clock is handed in: `NOW` is fixed, rows are made old by their own times."""
from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from mxhook.model.records import iso
from mxhook.store import ingest, logs, migrations, statedb
from mxhook.store.statedb import AttemptRecord, StateStore
from tests.unit.test_state import EP_ALL, denied, event, inbound, target

NOW = "2026-12-03T12:00:00.000000Z"
OLD = "2026-10-01T12:00:00.000000Z"  # 63 days before NOW
RECENT = "2026-12-01T12:00:00.000000Z"  # 2 days before NOW
DAYS = 30


@pytest.fixture()
def store(tmp_path):
    s = StateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def two_rules(rid, received):
    return inbound(rid, received, deliveries=[
        {"recipients": ["a@ours.example"], "rule": target("r1")},
        {"recipients": ["b@ours.example"], "rule": target("r2", id=2)}])


def attempt(did, outcome, status, at=OLD, **kw):
    if status == "deferred":
        kw.setdefault("next_attempt_at", NOW)
    return AttemptRecord(did, at, outcome, status, **kw)


def count(store, table, where="1", params=()) -> int:
    return store.conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]


def ids(store, table, column="id") -> set:
    return {r[0] for r in store.conn.execute(f"SELECT {column} FROM {table}")}


def test_a_message_goes_with_its_deliveries_attempts_and_log_rows_once_none_is_pending(store):
    ingest.records(store, [two_rules("done", OLD), two_rules("waits", OLD), two_rules("young", RECENT),
                           denied("d-old", OLD), denied("d-young", RECENT)])
    store.record_attempts([
        attempt("done-r1", "deferred", "deferred", status_code=503),
        attempt("done-r1", "succeeded", "succeeded", status_code=200),
        attempt("done-r2", "failed", "failed", status_code=404),  # the dead letter goes too
        attempt("waits-r1", "succeeded", "succeeded"),
        attempt("waits-r2", "deferred", "deferred"),  # a retry still to come: the message stays
        attempt("young-r1", "succeeded", "succeeded"), attempt("young-r2", "succeeded", "succeeded"),
    ])
    pruned = logs.Retention(store, DAYS, DAYS).run(NOW)
    assert (pruned.messages, pruned.deliveries, pruned.attempts, pruned.inbound_log, pruned.denied) == (1, 2, 3, 2, 1)
    assert ids(store, "messages") == {"waits", "young"}
    assert ids(store, "deliveries") == {"waits-r1", "waits-r2", "young-r1", "young-r2"}
    assert ids(store, "attempts", "delivery_id") == {"waits-r1", "waits-r2", "young-r1", "young-r2"}
    assert ids(store, "inbound_log") == {"waits-r1", "waits-r2", "young-r1", "young-r2", "d-young"}
    assert logs.inbound_detail(store, "done-r1") is None
    # once its last delivery is done, a later pass takes the message
    store.record_attempts([attempt("waits-r2", "succeeded", "succeeded", at=RECENT)])
    assert logs.Retention(store, DAYS, DAYS).run(NOW).messages == 1
    assert ids(store, "messages") == {"young"}
    assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_queued_deliveries_never_tried_are_kept(store):
    ingest.records(store, [inbound("never", OLD)])  # e.g. its rule is disabled: it waits
    assert logs.Retention(store, DAYS, DAYS).run(NOW).total() == 0
    assert ids(store, "deliveries") == {"never-r1"}


def batch_of(store, endpoint_id=1, outcome=None, at=OLD):
    b = store.create_batch(endpoint_id, 100, now=at)
    if outcome:
        store.record_attempts([attempt(b.id, "deferred", "deferred", at=at, status_code=503),
                               attempt(b.id, outcome, outcome, at=at)] if outcome == "succeeded"
                              else [attempt(b.id, outcome, outcome, at=at)])
    return b


def test_an_event_goes_with_its_fan_out_and_a_batch_with_its_last_event(store):
    ingest.records(store, [event("sent", at=OLD), event("sent2", at=OLD)], endpoints=[EP_ALL])
    sent = batch_of(store, outcome="succeeded")  # two attempts
    ingest.records(store, [event("retry", at=OLD)], endpoints=[EP_ALL])
    retrying = batch_of(store, outcome="deferred")
    ingest.records(store, [event("mixed-old", at=OLD), event("mixed-young", at=RECENT)], endpoints=[EP_ALL])
    mixed = batch_of(store, outcome="succeeded")
    ingest.records(store, [event("waiting", at=OLD),  # fanned out, in no batch yet
                           event("nobody", at=OLD),  # no endpoint wanted it
                           event("owed", "bounced", at=OLD, bounce_type="hard"),  # block list: not yet
                           event("young", at=RECENT)],
                   endpoints=[EP_ALL], block_hard_bounces=True)
    store.conn.execute("DELETE FROM event_deliveries WHERE event_id IN ('nobody', 'owed')")
    pruned = logs.Retention(store, DAYS, DAYS).run(NOW)
    assert ids(store, "events") == {"retry", "mixed-young", "waiting", "owed", "young"}
    assert (pruned.events, pruned.event_deliveries, pruned.event_batches, pruned.event_attempts) == (4, 3, 1, 2)
    assert ids(store, "event_batches") == {retrying.id, mixed.id}
    assert ids(store, "event_attempts", "batch_id") == {retrying.id, mixed.id}
    assert ids(store, "event_deliveries", "event_id") == {"retry", "mixed-young", "waiting", "young"}
    assert sent.id not in ids(store, "event_batches")
    # the block list took it: it goes
    store.conn.execute("UPDATE events SET block_state = 'done' WHERE id = 'owed'")
    assert logs.Retention(store, DAYS, DAYS).run(NOW).events == 1


def test_each_log_has_its_own_retention_and_0_keeps_it(store):
    ingest.records(store, [inbound("m", OLD), denied("d", OLD), event("e", at=OLD)])
    store.record_attempts([attempt("m-r1", "succeeded", "succeeded")])
    assert logs.Retention(store, 0, 0).run(NOW).total() == 0
    assert not logs.Retention(store, 0, 0).enabled
    assert logs.Retention(store, 0, 90).run(NOW).total() == 0  # the event is 63 days old
    assert logs.Retention(store, 0, 60).run(NOW).as_dict() == dict(logs.Pruned(events=1).as_dict())
    assert logs.Retention(store, 60, 0).run(NOW).messages == 1
    assert ids(store, "inbound_log") == set()


def test_a_batch_looks_at_a_bounded_number_of_rows_and_passes_kept_ones_once(store):
    # 7 old messages still pending among 10 old finished ones, and 10 old denied rows
    records = [inbound(f"m{i:02}", f"2026-10-01T12:00:{i:02}.000000Z") for i in range(17)]
    ingest.records(store, records + [denied(f"d{i:02}", OLD) for i in range(10)])
    store.record_attempts([attempt(f"m{i:02}-r1", "succeeded", "succeeded") for i in range(0, 17) if i % 5 < 3])
    retention = logs.Retention(store, DAYS, DAYS, batch=3)
    retention.start(NOW)
    steps = []
    while retention.running:
        found = retention.step()
        steps.append((found.denied, found.messages))
        assert found.denied <= 3 and found.messages <= 3
    # denied: 3 + 3 + 3 + 1; counts: one look; messages: 17 rows in windows of 3 (the last one empty)
    assert steps[:4] == [(3, 0), (3, 0), (3, 0), (1, 0)]
    assert len(steps) == 4 + 1 + 6 + 1  # + events: one look
    assert sum(m for _, m in steps) == 11 and retention.pruned.messages == 11
    assert count(store, "messages") == 6 and count(store, "inbound_log") == 6


def test_dry_run_counts_what_a_pass_deletes_and_deletes_nothing(store, tmp_path):
    ingest.records(store, [two_rules(f"m{i}", OLD) for i in range(5)]
                   + [denied(f"d{i}", OLD) for i in range(4)] + [two_rules("w", OLD)])
    store.record_attempts([attempt(f"m{i}-r{j}", "succeeded", "succeeded") for i in range(5) for j in (1, 2)]
                          + [attempt("w-r1", "deferred", "deferred")])
    ingest.records(store, [event(f"e{i}", at=OLD) for i in range(7)], endpoints=[EP_ALL])
    batch_of(store, outcome="failed")
    ingest.records(store, [denied("u", OLD, filter="unknown_domain")], log_unknown_domains=False)
    before = {t: count(store, t) for t in ("messages", "deliveries", "attempts", "inbound_log", "events",
                                           "event_deliveries", "event_batches", "event_attempts",
                                           "unlogged_denials")}
    ro = StateStore(store.path, readonly=True)
    try:
        dry = logs.Retention(ro, DAYS, DAYS, batch=2, dry_run=True).run(NOW)
    finally:
        ro.close()
    assert {t: count(store, t) for t in before} == before
    real = logs.Retention(store, DAYS, DAYS, batch=2).run(NOW)
    assert dry == real
    assert (real.messages, real.deliveries, real.attempts, real.inbound_log, real.denied, real.unlogged_denials,
            real.events, real.event_deliveries, real.event_batches, real.event_attempts) == (5, 10, 10, 10, 4, 1, 7, 7, 1, 1)


def test_background_runs_a_pass_in_slices_then_waits_for_the_interval(store, caplog):
    ingest.records(store, [denied(f"d{i:02}", OLD) for i in range(10)])
    ticks = iter(range(1000))
    monotonic = lambda: next(ticks) * 0.01  # noqa: E731 - each look at the clock: 10 ms
    retention = logs.Retention(store, DAYS, DAYS, batch=4)
    caplog.set_level("INFO", logger="mxhook.store.logs")
    # a budget of 15 ms: two batches per call (the clock is read after each)
    assert retention.background(NOW, monotonic, budget=0.015).denied == 8
    assert retention.running and count(store, "inbound_log") == 2
    assert retention.background(NOW, monotonic, budget=1).denied == 2  # and the other phases
    assert not retention.running and "log retention: deleted 10 denied" in caplog.text
    ingest.records(store, [denied("later", OLD)])
    assert retention.background(NOW, monotonic, interval=60).total() == 0  # the interval has not passed
    assert retention.background(NOW, lambda: 1e6, interval=60).denied == 1


def test_unknown_domain_denials_counted_instead_of_logged(store):
    flood = [denied(f"u{i}", f"2026-12-03T11:{i // 3:02}:0{i % 3}.000000Z", filter="unknown_domain",
                    recipients=[f"x{i}@elsewhere.example"]) for i in range(9)]
    other = denied("n1", "2026-12-03T11:00:00.000000Z", filter="no_rule")
    assert ingest.records(store, flood + [other], log_unknown_domains=False) == 1
    assert ids(store, "inbound_log") == {"n1"}  # other denials are logged as their domain says
    assert store.conn.execute("SELECT minute, count FROM unlogged_denials ORDER BY minute").fetchall() == [
        ("2026-12-03T11:00", 3), ("2026-12-03T11:01", 3), ("2026-12-03T11:02", 3)]
    ingest.records(store, flood[:1], log_unknown_domains=False)  # a second minute's worth adds up
    assert logs.unlogged_denials(store, "2026-12-03T11:01:30Z") == {
        "since": 6, "total": 10, "first": "2026-12-03T11:00"}
    # logged (the default of the store; the daemon's is [spooler] log_unknown_domains)
    ingest.records(store, flood[:2])
    assert ids(store, "inbound_log") == {"n1", "u0", "u1"}
    # the counts go with the inbound log's retention
    assert logs.Retention(store, 0.5, 0).run("2026-12-04T12:00:00Z").unlogged_denials == 3
    assert logs.unlogged_denials(store, NOW)["total"] == 0


def test_a_schema_1_state_db_gets_the_time_index_and_the_count_table(tmp_path):
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(sqlite_utils.Database(conn), statedb._MIGRATIONS[:1], name="state database")
    conn.execute("INSERT INTO messages (id, received, meta, ingested) VALUES ('m', ?, '{}', ?)", (OLD, OLD))
    conn.close()
    with StateStore(path) as st:
        assert migrations.user_version(st.conn) == statedb.SCHEMA_VERSION
        plan = " ".join(str(r) for r in st.conn.execute(
            "EXPLAIN QUERY PLAN SELECT received, rowid, id FROM messages WHERE received < ?"
            " AND (received, rowid) > (?, ?) ORDER BY received, rowid LIMIT 10", (NOW, "", 0)))
        assert "USING INDEX" in plan and "idx_messages_received" in plan
        assert logs.Retention(st, DAYS, DAYS).run(NOW).messages == 1
        assert logs.unlogged_denials(st, iso(0)) == {"since": 0, "total": 0, "first": None}
