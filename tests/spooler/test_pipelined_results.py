"""The loop hands out the next posts before it writes the previous results, and the pool holds
queued dispatches beside the posting ones (`POOL_DEPTH`). Neither may weaken at-least-once
delivery: a dispatch whose result is not written is not picked again, and if the spooler dies
before writing it, it is posted again after the restart with the same webhook-id. Real
state.db, real receiver on loopback, the spooler driven by the test."""
from __future__ import annotations

import time
from concurrent.futures import wait

from mxhook import spool
from mxhook.daemons import spooler
from mxhook.store import ingest
from tests.spooler.test_spooler import Clock, delivery, make_cfg, run_once, rx, target, write_inbound  # noqa: F401
from tests.support.receiver import Response


def ids(rx, path):
    return [r.headers["webhook-id"] for r in rx.requests if r.path == path]


def test_a_result_not_written_yet_is_not_picked_again_and_is_reposted_after_a_crash(rx, tmp_path):
    cfg = make_cfg(tmp_path, workers=1)  # a pool of 1 x POOL_DEPTH
    dids = [ingest.delivery_id(write_inbound(cfg, target(rx, "/p")), "r1") for _ in range(spooler.POOL_DEPTH + 1)]
    sp = spooler.Spooler(cfg, clock=Clock())
    try:
        sp.ingest_once()
        assert sp.dispatch() == spooler.POOL_DEPTH == sp.capacity
        wait(list(sp.inflight))
        assert sp.collect_finished() == spooler.POOL_DEPTH
        assert all(delivery(cfg, d)["status"] == "queued" for d in dids)  # nothing written yet
        assert sp.dispatch() == 1  # the last one only: the others wait for their results
        wait(list(sp.inflight))
        posted = ids(rx, "/p")
        assert sorted(posted) == sorted(dids)  # each posted once
    finally:
        sp.close()  # dies without writing a result
    run_once(make_cfg(tmp_path))  # the restart: each delivery without a written result is posted again
    again = ids(rx, "/p")[len(posted):]
    assert sorted(again) == sorted(dids)
    assert all(delivery(cfg, d)["status"] == "succeeded" and delivery(cfg, d)["attempts"] == 1 for d in dids)


def test_stopping_leaves_queued_dispatches_due_and_posts_none_of_them(rx, tmp_path):
    cfg = make_cfg(tmp_path, workers=1)
    rx.script("/slow", [Response(200, delay=0.3)])
    dids = [ingest.delivery_id(write_inbound(cfg, target(rx, "/slow")), "r1") for _ in range(2)]
    sp = spooler.Spooler(cfg)
    try:
        sp.ingest_once()
        assert sp.dispatch() == 2  # one posting, one queued behind it
        while not any(f.running() for f in sp.inflight):  # the worker took the first
            time.sleep(0.001)
        sp.stop()
        sp.drain()
        assert not sp.inflight and not sp._unrecorded
    finally:
        sp.close()
    rx.wait_for(1, path="/slow")
    statuses = sorted(delivery(cfg, d)["status"] for d in dids)
    assert statuses == ["queued", "succeeded"]
    assert len(ids(rx, "/slow")) == 1


def test_an_endpoints_next_batch_is_made_in_the_commit_that_writes_its_last_result(rx, tmp_path):
    """A batching endpoint's next batch comes only with its previous one settled in state.db:
    in the same transaction, or not at all while that write fails (nothing is posted then)."""
    import sqlite3

    from tests.spooler.test_events import add_endpoint, write_event

    cfg = make_cfg(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    add_endpoint(cfg, rx.url + "/ev", interval=1, max_events=100)
    for i in range(3):
        write_event(cfg, recipient=f"r{i}@else.example")
    sp = spooler.Spooler(cfg, clock=Clock())
    try:
        sp.ingest_once()
        assert sp.dispatch(flush_events=True) == 1
        wait(list(sp.inflight))
        sp.collect_finished()
        first_id = sp._unrecorded[0].delivery_id
        write_event(cfg, recipient="late@else.example")
        assert any(sp.ingest_once() for _ in range(5))  # (the reader may have read ahead before it came)
        real = sp.state.create_batches

        def broken(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")
        sp.state.create_batches = broken
        assert sp.dispatch(flush_events=True) == 0  # neither the batch again nor the next one
        assert [r.delivery_id for r in sp._unrecorded] == [first_id]
        sp.state.create_batches = real
        sp._record_retry_at = 0.0
        statements: list[str] = []
        sp.state.conn.set_trace_callback(statements.append)
        assert sp.dispatch(flush_events=True) == 0  # paused: no posts until the results are written
        assert sp.record_results() and not sp._unrecorded
        assert sp.dispatch(flush_events=True) == 1
        wait(list(sp.inflight))
        sp.collect_finished()
        write_event(cfg, recipient="later@else.example")
        assert any(sp.ingest_once() for _ in range(5))
        statements.clear()
        assert sp.dispatch(flush_events=True) == 1  # the result and the next batch: one COMMIT
        sp.state.conn.set_trace_callback(None)
        at = [i for i, q in enumerate(statements) if q.startswith(("BEGIN", "COMMIT", "UPDATE event_batches",
                                                                    "INSERT INTO event_batches"))]
        assert [statements[i].split(" (")[0].split(" SET")[0] for i in at] == [
            "BEGIN IMMEDIATE", "UPDATE event_batches", "INSERT INTO event_batches", "COMMIT"]
        wait(list(sp.inflight))
        assert sp.record_finished() == 1
    finally:
        sp.close()
    first, second, third = rx.wait_for(3, path="/ev")
    assert len({r.headers["webhook-id"] for r in (first, second, third)}) == 3
    assert [e["recipient"] for e in second.json()["events"]] == ["late@else.example"]
    assert [e["recipient"] for e in third.json()["events"]] == ["later@else.example"]


def test_nonces_are_fresh_per_attempt_and_per_worker():
    """An attempt's nonce: 16 bytes of os.urandom as hex, never one seen before, whichever
    worker draws it (each from its own buffer)."""
    import threading

    drawn = [spooler._nonce() for _ in range(600)]  # past a 4 KiB buffer: a second read

    def worker():
        drawn.extend(spooler._nonce() for _ in range(300))
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(drawn) == len(set(drawn)) == 1500
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in drawn)


def test_bulk_posts_wait_behind_everything_else_in_the_pool():
    """PostPool: work submitted `behind` (a one-per-request endpoint's single-event posts) is
    taken only when nothing else waits; shut down with cancel_futures, what waits is cancelled."""
    import threading

    pool = spooler.PostPool(1, "test-post")
    gate, order = threading.Event(), []
    try:
        first = pool.submit(gate.wait)
        while not first.running():
            time.sleep(0.001)
        bulk = [pool.submit(order.append, f"bulk{i}", behind=True) for i in range(3)]
        urgent = [pool.submit(order.append, f"inbound{i}") for i in range(2)]
        gate.set()
        wait(bulk + urgent)
        assert order == ["inbound0", "inbound1", "bulk0", "bulk1", "bulk2"]
        gate.clear()
        held = pool.submit(gate.wait)
        while not held.running():
            time.sleep(0.001)
        queued = [pool.submit(order.append, "never", behind=i % 2 == 0) for i in range(4)]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # while the worker is held
        gate.set()
        pool.shutdown(wait=True)
    assert all(f.cancelled() for f in queued) and "never" not in order
