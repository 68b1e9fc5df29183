"""An attempt result that cannot be written to state.db (not damage: here a trigger that
refuses the attempts row, as a full disk or an I/O error would) must not turn into re-posts:
the spooler keeps the result, pauses all posting, writes it again with a growing pause, and
goes on once it is written. Real state.db, real receiver on loopback.
"""
from __future__ import annotations

import logging
import sqlite3
import time

from tests.spooler.test_spooler import Running, make_cfg, rx, target, wait_status, write_inbound  # noqa: F401

REFUSE = ("CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts "
          "BEGIN SELECT RAISE(ABORT, 'attempts refused (injected)'); END")


def _sql(cfg, statement: str) -> None:
    conn = sqlite3.connect(cfg.state_db, isolation_level=None)
    try:
        conn.execute(statement)
    finally:
        conn.close()


def test_a_result_that_cannot_be_recorded_is_not_posted_again(rx, tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/hook"))
    caplog.set_level(logging.INFO, logger="mxhook.daemons.spooler")
    with Running(cfg) as sp:
        rx.wait_for(1, path="/hook")  # state.db exists now; the first result is recorded
        wait_status(cfg, f"{rid}-r1", "succeeded")
        _sql(cfg, REFUSE)
        second = write_inbound(cfg, target(rx, "/hook"))
        rx.wait_for(2, path="/hook")
        time.sleep(3.5)  # a tight re-post loop sends hundreds meanwhile
        posts = [r for r in rx.requests if r.headers["webhook-id"] == f"{second}-r1"]
        assert len(posts) == 1, f"{len(posts)} posts of a delivery whose result was not recorded"
        tries = [r for r in caplog.records if "cannot record 1 attempt result" in r.getMessage()]
        assert 2 <= len(tries) <= 3, [r.getMessage() for r in tries]  # after 0, 1, 3 s (then 7)
        assert all(r.levelname == "ERROR" for r in tries)
        assert sp._unrecorded, "the result was dropped"
        _sql(cfg, "DROP TRIGGER refuse_attempts")
        row = wait_status(cfg, f"{second}-r1", "succeeded", timeout=15)
        assert row["attempts"] == 1
        third = write_inbound(cfg, target(rx, "/hook"))  # posting resumed
        wait_status(cfg, f"{third}-r1", "succeeded")
    assert len([r for r in rx.requests if r.headers["webhook-id"] == f"{second}-r1"]) == 1
    assert any("posting resumes" in r.getMessage() for r in caplog.records)
