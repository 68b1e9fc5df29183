"""An attempt result that cannot be written to state.db (not damage: here a trigger that
refuses the attempts row, as a full disk or an I/O error would) must not turn into re-posts:
the spooler keeps the result, pauses all posting, writes it again with a growing pause, and
goes on once it is written. Real state.db, real receiver on loopback; the loop's steps are
called by the test, and the pause runs on the spooler's monotonic clock, moved by the test.
"""
from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import wait

from mxhook.daemons import spooler
from tests.spooler.test_spooler import Clock, delivery, make_cfg, rx, target, write_inbound  # noqa: F401

REFUSE = ("CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts "
          "BEGIN SELECT RAISE(ABORT, 'attempts refused (injected)'); END")


def _sql(cfg, statement: str) -> None:
    conn = sqlite3.connect(cfg.state_db, isolation_level=None)
    try:
        conn.execute(statement)
    finally:
        conn.close()


def step(sp: spooler.Spooler) -> None:
    """One pass of the loop without its wait: ingest, dispatch, the posts' results recorded."""
    while sp.ingest_once():
        pass
    sp.dispatch()
    done, _ = wait(list(sp.inflight), timeout=10)
    sp.record_finished(set(done))


def test_a_result_that_cannot_be_recorded_is_not_posted_again(rx, tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    caplog.set_level(logging.INFO, logger="mxhook.daemons.spooler")
    mono = Clock(0.0)
    sp = spooler.Spooler(cfg, monotonic=mono)

    def posts(rid):
        return [r for r in rx.requests if r.headers["webhook-id"] == f"{rid}-r1"]

    def tries():
        return [r for r in caplog.records if "cannot record 1 attempt result" in r.getMessage()]

    try:
        first = write_inbound(cfg, target(rx, "/hook"))
        step(sp)
        assert len(posts(first)) == 1 and not sp._unrecorded
        _sql(cfg, REFUSE)
        second = write_inbound(cfg, target(rx, "/hook"))
        step(sp)
        assert len(posts(second)) == 1 and sp._unrecorded
        # Tries after 0, 1, 3 s (then 7): many passes of the loop meanwhile, no post.
        seen = {}
        while mono.now < 3.5:
            step(sp)
            seen.setdefault(len(tries()), mono.now)
            mono.advance(0.25)
        assert len(posts(second)) == 1, "a delivery whose result was not recorded was posted again"
        assert seen == {1: 0.0, 2: 1.0, 3: 3.0}, seen
        assert [t.getMessage().split("(next try in ")[1].split(")")[0] for t in tries()] == [
            "1 s", "2 s", "4 s"]
        assert all(r.levelname == "ERROR" for r in tries())
        assert sp._unrecorded, "the result was dropped"
        _sql(cfg, "DROP TRIGGER refuse_attempts")
        mono.advance(6.99 - mono.now)
        step(sp)
        assert sp._unrecorded and len(tries()) == 3  # still within the pause
        mono.advance(0.01)
        step(sp)
        assert not sp._unrecorded
        assert any("posting resumes" in r.getMessage() for r in caplog.records)
        third = write_inbound(cfg, target(rx, "/hook"))  # posting resumed
        step(sp)
        assert len(posts(third)) == 1
    finally:
        sp.close()
    assert len(posts(second)) == 1
    row = delivery(cfg, f"{second}-r1")
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert delivery(cfg, f"{third}-r1")["status"] == "succeeded"
