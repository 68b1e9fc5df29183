"""The real mxhook-spooler keeps the logs' retention in the background, and counts unknown-domain
denials instead of logging them unless told (`[spooler] log_unknown_domains`)."""
from __future__ import annotations

import time

from mxhook import spool
from mxhook.model.records import iso
from mxhook.store import ingest, logs
from mxhook.store.statedb import AttemptRecord, StateStore
from tests.spooler.test_spooler import Running, inbound_record, make_cfg, run_once, target
from tests.support.receiver import Receiver

DAY = 86400.0


def denied_record(filt: str, received: str) -> spool.Record:
    return spool.Record(id=spool.new_id(), kind="denied", meta={
        "received": received, "queue_id": "", "mail_from": "spam@bad.example",
        "client_addr": "203.0.113.9", "client_name": "unknown", "helo": "x", "header_from": "",
        "subject": "Win", "message_id": "<s@bad>", "recipients": ["x@elsewhere.example"],
        "filter": filt, "reason": "domain elsewhere.example is not permitted"})


def test_the_running_spooler_prunes_old_rows_and_keeps_pending_ones(tmp_path):
    cfg = make_cfg(tmp_path, inbound_log_days=30, event_log_days=30)
    old = iso(time.time() - 40 * DAY)
    with Receiver() as rx:
        t = target(rx, "/hook")
        done = [inbound_record(t, rid=f"{i:016x}done") for i in range(300)]
        for record in done:
            record.meta["received"] = old
        waiting = inbound_record(target(rx, "/hook", name="off", id=9), rid="0" * 16 + "wait")
        waiting.meta["received"] = old
        with StateStore(cfg.state_db) as st:
            ingest.records(st, done + [waiting, denied_record("no_rule", old)], now=old)
            st.record_attempts([AttemptRecord(f"{r.id}-r1", old, "succeeded", "succeeded", status_code=200)
                                for r in done])
            st.conn.execute("UPDATE deliveries SET next_attempt_at = ? WHERE id LIKE '%wait-off'",
                            (iso(time.time() + DAY),))  # a retry tomorrow: pending, not due
        with Running(cfg) as sp:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with StateStore(cfg.state_db, readonly=True) as st:
                    left = logs.counts(st)
                if left["messages"] == 1 and left["denied"] == 0:
                    break
                time.sleep(0.05)
            assert not sp.retention.running
        with StateStore(cfg.state_db, readonly=True) as st:
            assert [r["id"] for r in logs.inbound_log(st)] == ["0000000000000000wait-off"]
            assert st.conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
        assert rx.requests == []


def test_unknown_domain_denials_are_counted_unless_logged(tmp_path):
    now = iso()
    cfg = make_cfg(tmp_path)  # the default: counted only
    spool.ensure_dirs(cfg.spool_dir)
    for filt in ("unknown_domain", "unknown_domain", "no_rule"):
        spool.write(cfg.spool_dir, denied_record(filt, now))
    run_once(cfg)
    with StateStore(cfg.state_db, readonly=True) as st:
        assert [r["filterName"] for r in logs.inbound_log(st)] == ["no_rule"]
        assert logs.unlogged_denials(st, time.time() - 3600)["since"] == 2
    cfg = make_cfg(tmp_path, log_unknown_domains="yes")
    spool.write(cfg.spool_dir, denied_record("unknown_domain", now))
    run_once(cfg)
    with StateStore(cfg.state_db, readonly=True) as st:
        assert sorted(r["filterName"] for r in logs.inbound_log(st)) == ["no_rule", "unknown_domain"]
        assert logs.unlogged_denials(st, time.time() - 3600)["total"] == 2
