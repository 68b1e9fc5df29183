"""mxhook-spooler against a real HTTP receiver on loopback, with real spool files.

Payloads are rendered by the real mxhook.payloads, except in the one test that injects a
renderer failure. Retry timing: `[spooler] retry_time_scale` compresses the rules' retry
schedule (10 s interval -> 0.1 s at scale 0.01), or a test drives the spooler's clock.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from mxhook.model.records import iso, to_datetime
from mxhook import config
from mxhook.model import rules
from mxhook import spool
from mxhook.daemons import spooler
from mxhook.store import ingest, logs, statedb
from mxhook.store.statedb import StateStore
from tests.support.destinations import routed
from tests.support.receiver import Receiver, Response

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
RAW = open(os.path.join(HERE, "fixtures", "order.eml"), "rb").read()


# ---------------------------------------------------------------------------------------------
# Helpers

def settings(tmp_path, **spooler_keys):
    values = {
        "paths": {"state_db": str(tmp_path / "state.db"), "spool_dir": str(tmp_path / "spool"),
                  "rules_db": str(tmp_path / "rules.db")},
        "spooler": {"poll_interval": "0.05", "workers": "4", "retry_time_scale": "0.01",
                    "log": "stderr", "log_level": "debug"},
        # the receiver is on loopback, which the SSRF guard refuses unless allowlisted
        "http": {"allow_networks": "127.0.0.1/32"},
    }
    values["spooler"].update({k: str(v) for k, v in spooler_keys.items()})
    return values


def make_cfg(tmp_path, **spooler_keys) -> config.Config:
    return config.from_dict(settings(tmp_path, **spooler_keys))


def rule_record(rule: rules.Rule) -> dict:
    """A rule's target in the form the milter puts into a spool record."""
    return rule.target_record()


def target(rx, path, name="r1", **kw) -> dict:
    fields = dict(name=name, allow_http=True, retry_interval=10,
                  conditions=(rules.parse_condition("To~@ours\\.example$"),), id=1)
    fields.update(kw)
    return rule_record(rules.validate(rules.Rule(**routed(rx.url + path, **fields))))


def inbound_record(*targets, rid=None, recipients=("in@ours.example",), raw=RAW) -> spool.Record:
    meta = {
        "received": iso(), "queue_id": "4XbQ1", "mail_from": "alice@x.org",
        "client_addr": "192.0.2.1", "client_name": "mail.x.org", "helo": "mail.x.org",
        "header_from": "alice@x.org", "subject": "Café order", "message_id": "<m1@x.org>",
        "deliveries": [{"recipients": list(recipients), "rule": t} for t in targets],
    }
    return spool.Record(id=rid or spool.new_id(), kind="inbound", meta=meta, payload=raw)


def write_inbound(cfg, *targets, **kw) -> str:
    spool.ensure_dirs(cfg.spool_dir)
    record = inbound_record(*targets, **kw)
    spool.write(cfg.spool_dir, record)
    return record.id


def delivery(cfg, did) -> dict | None:
    with StateStore(cfg.state_db) as st:
        return logs.delivery(st, did)


def wait_status(cfg, did, status, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = delivery(cfg, did)
        if row and row["status"] == status:
            return row
        time.sleep(0.02)
    raise AssertionError(f"delivery {did}: wanted status {status}, last seen {row}")


class Running:
    """A Spooler running its daemon loop in a thread (stop() is what SIGTERM does)."""

    def __init__(self, cfg, **kw):
        self.spooler = spooler.Spooler(cfg, **kw)
        self.thread = threading.Thread(target=self.spooler.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.spooler

    def __exit__(self, *exc):
        self.spooler.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "spooler did not stop"
        self.spooler.close()


def run_once(cfg, **kw):
    sp = spooler.Spooler(cfg, **kw)
    try:
        sp.run_once()
    finally:
        sp.close()


class Clock:
    """The spooler's clock, moved by the test: "nothing more happens" is a statement about
    the spooler's time, not about how long a test sleeps."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def waits_on(sp: spooler.Spooler, mono: Clock) -> None:
    """The loop's waits (with nothing in flight) pass at once on `mono`, the monotonic clock
    the spooler was built with: a wait that nothing ends lasts its whole length on it."""

    class Waits(threading.Event):
        def wait(self, timeout=None):
            if not self.is_set() and timeout is not None:
                mono.advance(timeout)
            return self.is_set()

    sp._stop = Waits()


def step_until(sp: spooler.Spooler, mono: Clock, until: float, most: int = 100) -> None:
    """Passes of the loop until `mono` reaches `until` (at most `most`: a loop that does not
    wait would never get there)."""
    for _ in range(most):
        if mono.now >= until:
            return
        sp._step()


def untouched_new(cfg) -> None:
    """new/ changed long ago (a change within a clock tick is looked at again), so only a
    later arrival ends a wait."""
    past = time.time() - 60
    os.utime(os.path.join(cfg.spool_dir, "new"), (past, past))


class Stepped:
    """A Spooler whose passes (`step`: ingest, dispatch, wait for the posts) the test calls,
    on the test's clock."""

    def __init__(self, cfg, **kw):
        self.clock = Clock()
        self.spooler = spooler.Spooler(cfg, clock=self.clock, **kw)

    def __enter__(self) -> "Stepped":
        return self

    def __exit__(self, *exc):
        self.spooler.close()

    def step(self, advance: float = 0.0, *, flush_events: bool = False) -> None:
        self.clock.advance(advance)
        self.spooler.run_once(flush_events=flush_events)


@pytest.fixture()
def rx():
    with Receiver() as r:
        yield r


# ---------------------------------------------------------------------------------------------
# The retry schedule (its pure functions: tests/unit/test_retry.py)

NO_JITTER = lambda: 0.5  # noqa: E731  (the middle of [0, 1): factor 1.0)


def test_spooler_uses_its_injected_random(tmp_path, rx):
    cfg = make_cfg(tmp_path)
    rx.script("/j", [Response(503)])
    did = ingest.delivery_id(write_inbound(cfg, target(rx, "/j", retry_interval=100)), "r1")
    clock = [1_000_000.0]
    sp = spooler.Spooler(cfg, clock=lambda: clock[0], rand=lambda: 0.0)
    try:
        sp.run_once()
    finally:
        sp.close()
    row = delivery(cfg, did)
    # 100 s * 0.9 (jitter at its low end) * 0.01 (retry_time_scale)
    assert row["status"] == "deferred"
    assert to_datetime(row["next_attempt_at"]).timestamp() == pytest.approx(clock[0] + 0.9, abs=1e-3)


def test_config_checks(tmp_path):
    for key, bad in (("retry_time_scale", "0"), ("workers", "0"), ("poll_interval", "-1")):
        with pytest.raises(config.ConfigError, match=key):
            spooler.Spooler(make_cfg(tmp_path, **{key: bad}))


# ---------------------------------------------------------------------------------------------
# Outcomes through a real receiver

def test_200_succeeded(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/hook", bearer="tok-1"))
    run_once(cfg)
    (req,) = rx.wait_for(1, path="/hook")
    assert req.headers["webhook-id"] == f"{rid}-r1"
    assert req.headers["authorization"] == "Bearer tok-1"
    assert req.headers["content-type"].startswith("application/json")
    assert req.headers["user-agent"] == "mxhook/0.1"
    req.json()  # the json format is JSON (its schema is tested with mxhook.payloads)
    assert rid.encode() in req.body
    row = delivery(cfg, f"{rid}-r1")
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("succeeded", 1, 200)
    assert spool.pending(cfg.spool_dir) == []
    with StateStore(cfg.state_db) as st:
        (log,) = logs.inbound_log(st)
        assert (log["status"], log["filterName"], log["to"]) == ("succeeded", "r1", "in@ours.example")
        assert logs.counts(st)["messages_with_raw"] == 0  # body dropped after success


def test_one_post_per_rule_each_with_its_format(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(
        cfg,
        target(rx, "/json", name="as-json"),
        target(rx, "/multi", name="as-multipart", format="multipart", basic_auth="u:pw"),
        target(rx, "/raw", name="as-raw", format="raw"),
    )
    run_once(cfg)
    (j,) = rx.wait_for(1, path="/json")
    (m,) = rx.wait_for(1, path="/multi")
    (r,) = rx.wait_for(1, path="/raw")
    assert [x.headers["webhook-id"] for x in (j, m, r)] == [f"{rid}-as-json", f"{rid}-as-multipart", f"{rid}-as-raw"]
    assert m.headers["content-type"].startswith("multipart/form-data")
    assert m.headers["authorization"].startswith("Basic ")
    assert b"Message-ID: <m1@x.org>" in r.body
    assert len(rx.requests) == 3


def test_500_then_200_deferred_then_succeeded(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    seen_between = []

    def second(request):
        seen_between.append(delivery(cfg, request.headers["webhook-id"])["status"])
        return (200, {}, b"ok")

    rx.script("/hook", [(500, {}, b"database down"), second])
    rid = write_inbound(cfg, target(rx, "/hook"))
    with Running(cfg):
        row = wait_status(cfg, f"{rid}-r1", "succeeded")
    first, again = rx.wait_for(2, path="/hook")
    assert seen_between == ["deferred"]
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == f"{rid}-r1"
    assert first.body == again.body
    assert again.at - first.at >= 0.1 * 0.9  # retry_interval 10 s x scale 0.01
    assert row["attempts"] == 2
    with StateStore(cfg.state_db) as st:
        d = logs.inbound_detail(st, f"{rid}-r1")
    assert [(a["status_code"], a["error"]) for a in d["attempts"]] == [
        (500, "HTTP 500 Internal Server Error"), (200, None)]
    assert d["status"] == "succeeded" and d["reason"] is None
    assert len(rx.requests) == 2


def test_404_failed_at_once(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rx.script("/hook", [(404, {}, b"no such hook")])
    rid = write_inbound(cfg, target(rx, "/hook"))
    with Stepped(cfg) as sp:
        sp.step()
        row = delivery(cfg, f"{rid}-r1")
        sp.step(advance=4 * 86400)  # past every retry interval and the retry period
    assert row["status"] == "failed"
    assert len(rx.requests) == 1
    assert row["last_error"] == "HTTP 404 Not Found"
    with StateStore(cfg.state_db) as st:
        d = logs.inbound_detail(st, f"{rid}-r1")
        assert logs.counts(st)["messages_with_raw"] == 1  # a failed delivery keeps the body
    assert d["status"] == "failed" and d["reason"] == "HTTP 404 Not Found"
    assert d["attempts"][0]["status_code"] == 404


def test_301_failed_with_location(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rx.script("/old", [(301, {"Location": "https://new.example/hook"}, b"")])
    rid = write_inbound(cfg, target(rx, "/old"))
    run_once(cfg)
    row = delivery(cfg, f"{rid}-r1")
    assert row["status"] == "failed" and "https://new.example/hook" in row["last_error"]
    assert [r.path for r in rx.requests] == ["/old"]


def test_retry_after_honoured(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rx.script("/hook", [(429, {"Retry-After": "1"}, b"slow down"), (200, {}, b"ok")])
    rid = write_inbound(cfg, target(rx, "/hook"))
    with Running(cfg):
        wait_status(cfg, f"{rid}-r1", "succeeded")
    first, again = rx.wait_for(2, path="/hook")
    assert again.at - first.at >= 0.95  # not the 0.1 s scaled interval


def test_exponential_backoff_attempt_times_grow(rx, tmp_path):
    """A receiver answering 503 four times: with an exponential backoff the waits between the
    attempts double from the interval (10 s x scale 0.02 = 0.2 s), the attempt number taken
    from state.db's count."""
    cfg = make_cfg(tmp_path, retry_time_scale="0.02")
    rx.script("/hook", [(503, {}, b"busy")] * 4 + [(200, {}, b"ok")])
    rid = write_inbound(cfg, target(rx, "/hook", retry_backoff="exponential", retry_cap=600))
    with Running(cfg, rand=NO_JITTER):
        row = wait_status(cfg, f"{rid}-r1", "succeeded", timeout=20)
    reqs = rx.wait_for(5, path="/hook")
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    # never sooner than the doubled wait (a loaded machine may post later, never earlier)
    assert all(gap >= wanted - 0.01 for gap, wanted in zip(gaps, (0.2, 0.4, 0.8, 1.6))), gaps
    assert row["attempts"] == 5


def test_exponential_backoff_schedule_to_the_cap_and_the_period_end(rx, tmp_path):
    """Unscaled, on the test's clock: next attempts after 600, 1200, 2400 s, then the cap
    (3000 s) until the retry period (1 day) ends."""
    cfg = make_cfg(tmp_path, retry_time_scale="1")
    rx.script("/hook", [(503, {}, b"maintenance")])
    now = [time.time()]
    start = now[0]
    rid = write_inbound(cfg, target(rx, "/hook", retry_interval=600, retry_period=1,
                                    retry_backoff="exponential", retry_cap=3000))
    waits = []
    for _ in range(40):
        run_once(cfg, clock=lambda: now[0], rand=NO_JITTER)
        row = delivery(cfg, f"{rid}-r1")
        if row["status"] == "failed":
            break
        due = to_datetime(row["next_attempt_at"]).timestamp()
        waits.append(round(due - now[0]))
        now[0] = due
    assert waits[:5] == [600, 1200, 2400, 3000, 3000]
    assert set(waits[3:-1]) == {3000} and now[0] == pytest.approx(start + 86400, abs=1)
    # 600 + 1200 + 2400 s, then 28 waits (the last one shorter) to the end of the day
    assert row["attempts"] == len(rx.requests) == len(waits) + 1 == 32


def test_connection_refused_is_deferred(tmp_path):
    cfg = make_cfg(tmp_path)
    with Receiver() as gone:
        tgt = target(gone, "/hook")
    rid = write_inbound(cfg, tgt)
    run_once(cfg)
    row = delivery(cfg, f"{rid}-r1")
    assert row["status"] == "deferred" and row["last_error"].startswith("connection error:")
    assert row["last_status_code"] is None and row["next_attempt_at"] > row["first_attempt_at"]


def test_retry_period_end_makes_failed(rx, tmp_path):
    """Unscaled schedule, spooler clock driven by the test: 503 forever -> failed after the
    rule's retry period (1 day) from the first attempt."""
    cfg = make_cfg(tmp_path, retry_time_scale="1")
    rx.script("/hook", [(503, {}, b"maintenance")])
    now = [time.time()]
    rid = write_inbound(cfg, target(rx, "/hook", retry_interval=600, retry_period=1))
    run = lambda: run_once(cfg, clock=lambda: now[0], rand=NO_JITTER)  # noqa: E731
    run()
    first = delivery(cfg, f"{rid}-r1")
    assert first["status"] == "deferred"
    assert to_datetime(first["next_attempt_at"]).timestamp() == pytest.approx(now[0] + 600, abs=1)
    now[0] += 599
    run()
    assert len(rx.requests) == 1  # not due yet
    now[0] += 2
    run()
    assert len(rx.requests) == 2
    now[0] += 86400
    run()
    row = delivery(cfg, f"{rid}-r1")
    assert row["status"] == "failed" and row["attempts"] == 3
    with StateStore(cfg.state_db) as st:
        d = logs.inbound_detail(st, f"{rid}-r1")
    assert d["reason"] == "HTTP 503 Service Unavailable; gave up: retry period of 1 day ended"
    now[0] += 86400
    run()
    assert len(rx.requests) == 3


# ---------------------------------------------------------------------------------------------
# Spool handling

def test_unreadable_spool_files_go_to_bad(rx, tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    new = os.path.join(cfg.spool_dir, "new")
    with open(os.path.join(new, "0000000000000001aaaaaaaaaaaa.rec"), "wb") as fh:
        fh.write(b"GARBAGE\n{}\n")
    rec = spool.Record(id="0000000000000002bbbbbbbbbbbb", kind="inbound",
                       meta={"received": iso(), "deliveries": []}, payload=b"x")
    spool.write(cfg.spool_dir, rec)
    good = write_inbound(cfg, target(rx, "/hook"))
    caplog.set_level("INFO", logger="mxhook.daemons.spooler")
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []
    bad = sorted(os.listdir(os.path.join(cfg.spool_dir, "bad")))
    assert bad == ["0000000000000001aaaaaaaaaaaa.rec", "0000000000000001aaaaaaaaaaaa.rec.reason",
                   "0000000000000002bbbbbbbbbbbb.rec", "0000000000000002bbbbbbbbbbbb.rec.reason"]
    reason1 = open(os.path.join(cfg.spool_dir, "bad", bad[1])).read()
    reason2 = open(os.path.join(cfg.spool_dir, "bad", bad[3])).read()
    assert "bad magic" in reason1 and "deliveries" in reason2
    assert "moved to" in caplog.text and "bad magic" in caplog.text
    assert delivery(cfg, f"{good}-r1")["status"] == "succeeded"  # the good file went through


def test_the_spoolers_state_connection_has_the_writer_page_cache(tmp_path):
    cfg = make_cfg(tmp_path)
    sp = spooler.Spooler(cfg)
    try:
        assert sp.state.conn.execute("PRAGMA cache_size").fetchone()[0] == -statedb.WRITER_CACHE_KIB
    finally:
        sp.close()


def test_the_spoolers_commits_are_made_durable_by_the_reader_before_it_unlinks(rx, tmp_path):
    """The loop's commits are not fsynced (synchronous NORMAL); the reader fsyncs state.db's
    WAL (StateStore.make_durable) before it unlinks the spool files a commit took in."""
    cfg = make_cfg(tmp_path)
    write_inbound(cfg, target(rx, "/hook"))
    sp = spooler.Spooler(cfg)
    seen: list[list[str]] = []
    try:
        assert sp.state.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        real = sp.reader.durable
        assert real == sp.state.make_durable
        sp.reader.durable = lambda: (seen.append(os.listdir(os.path.join(cfg.spool_dir, "new"))), real())
        sp.run_once()
    finally:
        sp.close()
    assert len(seen) == 1 and len(seen[0]) == 1  # the file was still there when it ran
    assert os.listdir(os.path.join(cfg.spool_dir, "new")) == []
    assert len(rx.requests) == 1


def test_a_vanished_spool_dir_is_logged_not_spun_on_and_its_return_is_taken(rx, tmp_path, caplog):
    """The spool dir removed under a running spooler (or made unreadable): each pass waits
    poll_interval instead of waking at once to fail the same scan again (the loop spun at full
    CPU writing an error line per pass); the error is logged when it starts and every
    SCAN_ERROR_REPEAT seconds; once the dir is back, what was spooled there is delivered."""
    cfg = make_cfg(tmp_path, poll_interval="0.5")
    spool.ensure_dirs(cfg.spool_dir)
    mono = Clock(0.0)
    sp = spooler.Spooler(cfg, monotonic=mono)
    waits_on(sp, mono)
    away = str(tmp_path / "spool-away")
    caplog.set_level("INFO", logger="mxhook.daemons.spooler")
    try:
        sp._step()
        os.rename(cfg.spool_dir, away)
        step_until(sp, mono, 30.0)
        assert mono.now >= 30.0, "the loop did not wait between failing scans"
        cannot = [r for r in caplog.records if "cannot scan" in r.getMessage()]
        assert len(cannot) == 1 and cannot[0].levelname == "ERROR"
        assert "wait until it can be read" in cannot[0].getMessage()
        step_until(sp, mono, 30.0 + spooler.SCAN_ERROR_REPEAT + 1, most=2000)
        assert len([r for r in caplog.records if "cannot scan" in r.getMessage()]) == 2
        os.rename(away, cfg.spool_dir)
        good = write_inbound(cfg, target(rx, "/hook"))
        sp._step()
        assert "can be read again" in caplog.text
        for _ in range(50):
            if (delivery(cfg, f"{good}-r1") or {}).get("status") == "succeeded":
                break
            sp._step()
            time.sleep(0.02)
    finally:
        sp.close()
    assert delivery(cfg, f"{good}-r1")["status"] == "succeeded"


def test_directory_in_new_goes_to_bad(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    os.mkdir(os.path.join(cfg.spool_dir, "new", "0000000000000003cccccccccccc.rec"))
    good = write_inbound(cfg, target(rx, "/hook"))
    run_once(cfg)
    reason = open(os.path.join(cfg.spool_dir, "bad", "0000000000000003cccccccccccc.rec.reason")).read()
    assert "IsADirectoryError" in reason
    assert delivery(cfg, f"{good}-r1")["status"] == "succeeded"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_goes_to_bad(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/hook"))
    os.chmod(os.path.join(cfg.spool_dir, "new", rid + ".rec"), 0)
    run_once(cfg)
    assert os.path.exists(os.path.join(cfg.spool_dir, "bad", rid + ".rec.reason"))


def write_segment(cfg, parts: list) -> tuple[str, list[int]]:
    """One file in new/ of records (spool.Record) and raw bytes, as a milter segment holds
    them; returns its path and the offset of each part."""
    spool.ensure_dirs(cfg.spool_dir)
    chunks = [spool.encode(p) if isinstance(p, spool.Record) else p for p in parts]
    offsets = [sum(map(len, chunks[:i])) for i in range(len(chunks))]
    path = os.path.join(cfg.spool_dir, "new", spool.new_id() + ".rec")
    with open(path, "wb") as fh:
        fh.write(b"".join(chunks))
    return path, offsets


def bad_files(cfg) -> list[str]:
    return sorted(os.listdir(os.path.join(cfg.spool_dir, "bad")))


def test_a_bad_record_goes_to_bad_alone_and_the_good_ones_of_its_file_are_ingested(rx, tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    good = inbound_record(target(rx, "/hook"))
    unknown_kind = spool.Record("weird-1", "weird", {})
    refused = inbound_record(rid="no-deliveries")  # ingest.check_record refuses it
    event = spool.Record("ev-1", "event", {"type": "queued", "queue_id": "4XbQ1"})
    path, offsets = write_segment(cfg, [good, unknown_kind, event, refused])
    stem = os.path.basename(path)[:-4]
    caplog.set_level("INFO", logger="mxhook.daemons.spooler")
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []
    assert delivery(cfg, f"{good.id}-r1")["status"] == "succeeded"
    with StateStore(cfg.state_db) as st:
        assert logs.counts(st)["events"] == 1
    bad = os.path.join(cfg.spool_dir, "bad")
    assert bad_files(cfg) == [f"{stem}.{offsets[1]}.rec", f"{stem}.{offsets[1]}.rec.reason",
                              f"{stem}.{offsets[3]}.rec", f"{stem}.{offsets[3]}.rec.reason"]
    assert open(os.path.join(bad, f"{stem}.{offsets[1]}.rec"), "rb").read() == spool.encode(unknown_kind)
    assert open(os.path.join(bad, f"{stem}.{offsets[3]}.rec"), "rb").read() == spool.encode(refused)
    assert "unknown record kind 'weird'" in open(os.path.join(bad, f"{stem}.{offsets[1]}.rec.reason")).read()
    assert "deliveries" in open(os.path.join(bad, f"{stem}.{offsets[3]}.rec.reason")).read()
    assert f"{stem}.rec: bad part at byte {offsets[1]} (record weird-1)" in caplog.text
    assert f"at byte {offsets[3]} (record no-deliveries)" in caplog.text


def test_broken_framing_sends_the_rest_of_its_file_to_bad(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    good = inbound_record(target(rx, "/hook"))
    tail = spool.MAGIC + b"{not json\n" + spool.encode(inbound_record(target(rx, "/hook")))
    path, offsets = write_segment(cfg, [good, tail])
    stem = os.path.basename(path)[:-4]
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []
    assert delivery(cfg, f"{good.id}-r1")["status"] == "succeeded"
    assert bad_files(cfg) == [f"{stem}.{offsets[1]}.rec", f"{stem}.{offsets[1]}.rec.reason"]
    assert open(os.path.join(cfg.spool_dir, "bad", f"{stem}.{offsets[1]}.rec"), "rb").read() == tail


def test_a_file_of_bad_records_only_goes_to_bad_as_it_is(tmp_path):
    cfg = make_cfg(tmp_path)
    path, offsets = write_segment(cfg, [spool.Record("w1", "weird", {}), spool.MAGIC + b"[]\n"])
    name = os.path.basename(path)
    run_once(cfg)
    assert bad_files(cfg) == [name, name + ".reason"]
    reason = open(os.path.join(cfg.spool_dir, "bad", name + ".reason")).read()
    assert reason == (f"at byte 0 (record w1): SpoolError: unknown record kind 'weird'\n"
                      f"at byte {offsets[1]}: SpoolError: metadata is not a JSON object\n")


def test_a_crash_before_the_file_is_unlinked_duplicates_nothing(rx, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    good = inbound_record(target(rx, "/hook"))
    path, offsets = write_segment(cfg, [good, spool.Record("weird-1", "weird", {})])
    data = open(path, "rb").read()
    expected_bad = sorted([os.path.basename(path)[:-4] + f".{offsets[1]}.rec" + end for end in ("", ".reason")])

    # bad/ cannot be written: nothing of the file is ingested, it stays for the next run
    def cannot_write(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "write_bad", cannot_write)
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == [path] and bad_files(cfg) == []
    assert delivery(cfg, f"{good.id}-r1") is None
    monkeypatch.undo()

    # died after the bad part was written, before COMMIT: the file is still in new/
    def no_commit(*args, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ingest, "records", no_commit)
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == [path] and bad_files(cfg) == expected_bad
    monkeypatch.undo()
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == [] and bad_files(cfg) == expected_bad

    # died after COMMIT, before the unlink: the file comes back
    with open(path, "wb") as fh:
        fh.write(data)
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == [] and bad_files(cfg) == expected_bad
    assert len(rx.requests) == 1
    assert delivery(cfg, f"{good.id}-r1")["attempts"] == 1
    assert os.listdir(os.path.join(cfg.spool_dir, "tmp")) == []


def refused_backlog(rx, tmp_path, monkeypatch, refuse) -> tuple[config.Config, list]:
    """35 files waiting (ingest_batch 10, poll_interval 0.5 s) and ingest.records replaced by
    `refuse(records)`: passes of the loop until its monotonic clock reaches 1.6 s. Returns the
    config and (the spooler's time, how many records) for each ingest try."""
    cfg = make_cfg(tmp_path, ingest_batch="10", poll_interval="0.5")
    for _ in range(35):
        write_inbound(cfg, target(rx, "/hook"))
    untouched_new(cfg)
    mono, tries = Clock(0.0), []

    def records(state, records, **kw):
        tries.append((mono.now, len(records)))
        refuse(records)

    monkeypatch.setattr(ingest, "records", records)
    sp = spooler.Spooler(cfg, monotonic=mono)
    waits_on(sp, mono)
    try:
        step_until(sp, mono, 1.6)
    finally:
        sp.close()
    return cfg, tries


def test_a_refused_ingest_waits_poll_interval_with_a_backlog(rx, tmp_path, monkeypatch):
    """state.db refusing ingest (disk full) with more files waiting than one batch: the loop
    waits poll_interval between tries instead of spinning through new/ and the log."""
    def disk_full(records):
        raise sqlite3.OperationalError("database or disk is full")

    cfg, tries = refused_backlog(rx, tmp_path, monkeypatch, disk_full)
    assert [t for t, _ in tries] == pytest.approx([0.0, 0.5, 1.0, 1.5]), "ingest tries on the spooler's clock"
    assert len(spool.pending(cfg.spool_dir)) == 35  # nothing lost while refused
    monkeypatch.undo()
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []


def test_a_refused_ingest_one_file_at_a_time_waits_too(rx, tmp_path, monkeypatch):
    """The batch fails for a record's sake, then state.db refuses each file: the same wait."""
    def refuse(records):
        if len(records) > 1:
            raise ValueError("one odd record")
        raise sqlite3.OperationalError("database is locked")

    cfg, tries = refused_backlog(rx, tmp_path, monkeypatch, refuse)
    assert [n for _, n in tries] == [10, 1] * 4  # the batch, then its first file: refused
    assert [t for t, n in tries if n == 10] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert len(spool.pending(cfg.spool_dir)) == 35


def test_files_given_back_are_ingested_before_later_ones(rx, tmp_path, monkeypatch):
    """state.db refusing a batch once does not let the next batch overtake it: a bounce
    report needs the `queued` event written before it."""
    cfg = make_cfg(tmp_path, ingest_batch="10")
    ids = [write_inbound(cfg, target(rx, "/hook")) for _ in range(30)]
    real, seen = ingest.records, []

    def locked_once(state, records, **kw):
        seen.append(records[0].id)
        if len(seen) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(state, records, **kw)

    monkeypatch.setattr(ingest, "records", locked_once)
    sp = spooler.Spooler(cfg)
    try:
        for _ in range(4):
            sp.ingest_once()
    finally:
        sp.close()
    assert seen == [ids[0], ids[0], ids[10], ids[20]]
    assert spool.pending(cfg.spool_dir) == []


def test_reingesting_the_same_file_is_harmless(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/hook"))
    data = open(spool.pending(cfg.spool_dir)[0], "rb").read()
    run_once(cfg)
    # a crash between COMMIT and unlink leaves the file in new/: it comes back
    with open(os.path.join(cfg.spool_dir, "new", rid + ".rec"), "wb") as fh:
        fh.write(data)
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []
    assert len(rx.requests) == 1
    assert delivery(cfg, f"{rid}-r1")["attempts"] == 1


def test_denied_and_event_records(tmp_path):
    cfg = make_cfg(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    spool.write(cfg.spool_dir, spool.Record(id=spool.new_id(), kind="denied", meta={
        "received": iso(), "queue_id": "", "mail_from": "spam@bad.example",
        "recipients": ["x@ours.example"], "client_addr": "198.51.100.7", "client_name": "unknown",
        "helo": "x", "header_from": "", "subject": "Win", "message_id": "", "filter": "no_rule",
        "reason": "no rule matched"}), durable=False)
    spool.write(cfg.spool_dir, spool.Record(id=spool.new_id(), kind="event", meta={"type": "queued"}))
    run_once(cfg)
    assert spool.pending(cfg.spool_dir) == []
    with StateStore(cfg.state_db) as st:
        (row,) = logs.inbound_log(st)
        assert (row["status"], row["filterName"], row["from"]) == ("denied", "no_rule", "spam@bad.example")
        assert logs.counts(st)["events"] == 1


def test_render_failure_fails_that_delivery_only(rx, tmp_path, monkeypatch):
    """Injected renderer fault (the only stubbed renderer in these tests)."""
    from mxhook.payloads import registry

    real = registry.inbound_request

    def render(target, **kw):
        if target.name == "broken":
            raise RuntimeError("template exploded")
        return real(target, **kw)

    monkeypatch.setattr(registry, "inbound_request", render)
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/a", name="broken"), target(rx, "/b", name="fine"))
    run_once(cfg)
    assert delivery(cfg, f"{rid}-broken")["status"] == "failed"
    assert "template exploded" in delivery(cfg, f"{rid}-broken")["last_error"]
    assert delivery(cfg, f"{rid}-fine")["status"] == "succeeded"
    assert [r.path for r in rx.requests] == ["/b"]


def test_restart_does_not_repost(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rids = [write_inbound(cfg, target(rx, "/hook")) for _ in range(5)]
    run_once(cfg)
    run_once(cfg)
    with Stepped(cfg) as sp:
        sp.step(advance=4 * 86400)
    assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted(f"{r}-r1" for r in rids)


def test_many_messages_batched(rx, tmp_path):
    cfg = make_cfg(tmp_path, ingest_batch=7, workers=3)
    rids = [write_inbound(cfg, target(rx, "/hook")) for _ in range(40)]
    with Running(cfg):
        rx.wait_for(40, path="/hook", timeout=20)
        wait_status(cfg, f"{rids[-1]}-r1", "succeeded")
    assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted(f"{r}-r1" for r in rids)
    with StateStore(cfg.state_db) as st:
        assert logs.counts(st)["deliveries"]["succeeded"] == 40


# ---------------------------------------------------------------------------------------------
# The real daemon: signals and crashes

def start_daemon(tmp_path, *extra) -> subprocess.Popen:
    path = tmp_path / "mxhook.conf"
    if not path.exists():
        path.write_text(config.render(settings(tmp_path)))
    # PYTHONFAULTHANDLER: SIGABRT dumps every thread's stack to stderr (see stop_daemon)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"), PYTHONFAULTHANDLER="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mxhook.daemons.spooler", "--config", str(path), *extra],
        env=env, stderr=open(tmp_path / "spooler.stderr", "ab"),
    )


def stderr_of(tmp_path) -> str:
    return (tmp_path / "spooler.stderr").read_text(errors="replace")


def stop_daemon(proc: subprocess.Popen, tmp_path, timeout: float = 15) -> None:
    """SIGTERM and a clean exit within timeout; if not, the stacks of the spooler and its children."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            children = fh.read().split()
        for pid in [proc.pid, *map(int, children)]:
            os.kill(pid, signal.SIGABRT)
        proc.wait(10)
        pytest.fail(f"spooler did not stop within {timeout} s of SIGTERM; its stderr:\n{stderr_of(tmp_path)}")
    assert code == 0, stderr_of(tmp_path)


def test_kill_9_mid_request_reposts_with_same_webhook_id(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rx.script("/hook", [Response(200, delay=60), (200, {}, b"ok")])
    rid = write_inbound(cfg, target(rx, "/hook", timeout=120))
    proc = start_daemon(tmp_path)
    try:
        (first,) = rx.wait_for(1, path="/hook", timeout=15)
        proc.kill()  # SIGKILL while the receiver holds the request
        proc.wait(10)
        assert delivery(cfg, f"{rid}-r1")["status"] == "queued"
        proc = start_daemon(tmp_path)
        first, again = rx.wait_for(2, path="/hook", timeout=15)
        assert first.headers["webhook-id"] == again.headers["webhook-id"] == f"{rid}-r1"
        wait_status(cfg, f"{rid}-r1", "succeeded")
        stop_daemon(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(rx.requests) == 2
    log = stderr_of(tmp_path)
    # the message's Postfix queue id first, as in the milter's and Postfix's lines about it
    assert f"4XbQ1: delivery {rid}-r1 rule=r1 attempt=1 outcome=succeeded status=succeeded code=200" in log


def test_sigterm_finishes_the_post_in_flight(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rx.script("/hook", [Response(200, delay=1.0)])
    rid = write_inbound(cfg, target(rx, "/hook", bearer="very-secret-token", basic_auth=None))
    proc = start_daemon(tmp_path)
    try:
        rx.wait_for(1, path="/hook", timeout=15)
        stop_daemon(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert delivery(cfg, f"{rid}-r1")["status"] == "succeeded"
    assert len(rx.requests) == 1
    log = stderr_of(tmp_path)
    assert "waiting for 1 post(s) in flight" in log and "stopped" in log
    assert "very-secret-token" not in log


def test_once_flag(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    rid = write_inbound(cfg, target(rx, "/hook"))
    proc = start_daemon(tmp_path, "--once")
    assert proc.wait(30) == 0, stderr_of(tmp_path)
    assert delivery(cfg, f"{rid}-r1")["status"] == "succeeded"


def test_bad_config_exits_2(tmp_path):
    (tmp_path / "bad.conf").write_text("[spooler]\nworkers = many\n")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))
    res = subprocess.run([sys.executable, "-m", "mxhook.daemons.spooler", "--config", str(tmp_path / "bad.conf")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "workers" in res.stderr


@pytest.mark.parametrize("limit", [("BATCH_BYTES", 2000), ("BATCH_RECORDS", 6)])
def test_a_batch_ends_after_batch_bytes_and_the_rest_follows(tmp_path, monkeypatch, limit):
    """Files of many records (event chunks, segments): a batch stops at BATCH_BYTES read (so
    memory stays bounded) or BATCH_RECORDS records (so dispatch gets its turn); the files not
    read come first next time and nothing is skipped."""
    monkeypatch.setattr(spool, *limit)
    cfg = make_cfg(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    ids = []
    for f in range(6):
        records = [spool.Record(id=spool.new_id(), kind="event", meta={"type": "queued", "pad": "x" * 200})
                   for _ in range(4)]
        ids += [r.id for r in records]
        spool.write_many(cfg.spool_dir, records)
    sp = spooler.Spooler(cfg)
    try:
        first = sp.ingest_once()
        assert 0 < first < 6 * 4 and sp.more_waiting  # cut short
        while spool.pending(cfg.spool_dir) or sp.more_waiting:
            sp.ingest_once()
    finally:
        sp.close()  # waits for the unlinks handed to the I/O thread
    with StateStore(cfg.state_db) as st:
        assert logs.counts(st)["events"] == len(ids)
    assert spool.pending(cfg.spool_dir) == []


def test_a_file_arriving_while_idle_is_ingested_without_waiting_out_poll_interval(rx, tmp_path, monkeypatch):
    # The milter seals a segment into new/ every 0.2 s; sleeping a whole poll_interval between
    # looks left arriving mail waiting and the workers idle (bench/end_to_end.py).
    cfg = make_cfg(tmp_path, poll_interval=30)
    spool.ensure_dirs(cfg.spool_dir)
    untouched_new(cfg)
    waiting = threading.Event()
    pause = spooler.Spooler._pause
    monkeypatch.setattr(spooler.Spooler, "_pause", lambda self, p: (waiting.set(), pause(self, p)))
    with Running(cfg) as sp:
        assert waiting.wait(10)  # the first step found nothing: the loop waits
        rid = write_inbound(cfg, target(rx, "/hook"))
        rx.wait_for(1, path="/hook", timeout=5)
        assert wait_status(cfg, f"{rid}-r1", "succeeded")["attempts"] == 1
        assert sp.poll_interval == 30


def test_an_idle_spooler_does_not_step_while_new_is_unchanged(tmp_path):
    cfg = make_cfg(tmp_path, poll_interval=30)
    spool.ensure_dirs(cfg.spool_dir)
    untouched_new(cfg)
    mono = Clock(0.0)
    sp = spooler.Spooler(cfg, monotonic=mono)
    waits_on(sp, mono)
    try:
        sp._step()
        assert mono.now == pytest.approx(30)  # one look, then the whole poll_interval
        sp._step()
        assert mono.now == pytest.approx(60)
    finally:
        sp.close()
