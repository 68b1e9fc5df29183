"""Event webhooks end to end inside the spooler: event records in the spool -> state.db ->
batches -> a real HTTP receiver on loopback. Endpoints and the block list live in a real rules.db;
`kill -9` runs against the real mxhook-spooler process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qs

import json
import pytest
from tests.support.cli import separate_runner

from mxhook import cli as climod
from mxhook import config
from mxhook.store import rulesdb
from mxhook.model import events
from mxhook import spool
from mxhook.daemons import spooler
from mxhook.model.endpoints import Endpoint
from mxhook.store import logs
from mxhook.store.statedb import StateStore
from tests.support.destinations import routed
from tests.support.receiver import Response
from tests.spooler.test_spooler import Running, Stepped, rx, settings  # noqa: F401  (rx: a fixture)

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


# ---------------------------------------------------------------------------------------------
# Helpers

@pytest.fixture()
def cfg(tmp_path):
    c = config.from_dict(settings(tmp_path))
    spool.ensure_dirs(c.spool_dir)
    return c


def add_endpoint(cfg, url, **kw) -> Endpoint:
    kw.setdefault("allow_http", True)
    kw.setdefault("retry_interval", 10)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        return store.add_endpoint(Endpoint(**routed(url, **kw)))


_seq = [0]


def write_event(cfg, etype="succeeded", recipient="r@else.example", *, queue_id="4XbQ1", **fields) -> str:
    """One event record in the spool, ids in writing order."""
    _seq[0] += 1
    at_us = time.time_ns() // 1000
    ev = events.Event(type=etype, at=events.iso_from_us(at_us), id=events.event_id(at_us, _seq[0]),
                      source=fields.pop("source", "milter" if etype == "queued" else "log"),
                      queue_id=queue_id, recipient=recipient, **fields)
    spool.write(cfg.spool_dir, spool.event_record(ev), durable=False)
    return ev.id


def run_twice(cfg) -> None:
    """Two passes of a spooler: what one pass ingests, the next acts on."""
    sp = spooler.Spooler(cfg)
    try:
        sp.run_once()
        sp.run_once()
    finally:
        sp.close()


def bodies(requests) -> list[dict]:
    return [r.json() for r in requests]


def ids_of(docs) -> list[str]:
    return [e["id"] for d in docs for e in d["events"]]


def event_log(cfg, **kw):
    with StateStore(cfg.state_db) as st:
        return logs.event_log(st, limit=None, **kw)


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------
# Batches against a real receiver

def test_max_events_splits_into_ordered_batches(rx, cfg):
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1, max_events=100)
    written = [write_event(cfg, recipient=f"r{i % 7}@else.example") for i in range(250)]
    with Running(cfg):
        reqs = rx.wait_for(3, path="/ev", timeout=15)
    docs = bodies(reqs)
    assert [d["count"] for d in docs] == [100, 100, 50]
    assert all(len(d["events"]) <= 100 for d in docs)
    assert ids_of(docs) == written  # in order, each once
    assert [r.headers["webhook-id"] for r in reqs] == [d["batch_id"] for d in docs]
    assert len({d["batch_id"] for d in docs}) == 3
    assert all(d["endpoint_id"] == ep.id and d["version"] == 1 for d in docs)
    assert {r["status"] for r in event_log(cfg)} == {"succeeded"}


def test_interval_holds_a_small_batch(rx, cfg):
    add_endpoint(cfg, rx.url + "/ev", interval=2, max_events=100)
    written = [write_event(cfg) for _ in range(5)]
    with Stepped(cfg) as sp:
        sp.step()
        assert logs.event_counts(sp.spooler.state)["pending"] == 5
        sp.step(advance=1.9)
        assert rx.requests == []  # the oldest event is not 2 s old yet
        sp.step(advance=0.2)
        (req,) = rx.requests
    assert ids_of([req.json()]) == written


def test_a_step_of_the_loop_reads_the_endpoints_once_and_sees_a_change_at_the_next(rx, cfg):
    """rules.db is asked whether the endpoints changed once per pass of the loop (ingest and
    dispatch share the answer), and an endpoint added meanwhile is taken at the next pass."""
    first = add_endpoint(cfg, rx.url + "/one", interval=1)
    write_event(cfg)
    now = [time.time()]
    sp = spooler.Spooler(cfg, clock=lambda: now[0])
    sp.poll_interval = 0.0
    try:
        assert set(sp.current_endpoints()) == {first.id}
        looks: list[str] = []
        sp.endpoints._conn.set_trace_callback(looks.append)
        sp._step()  # ingests the event: pending for 1 s
        assert looks.count("PRAGMA data_version") == 1 and rx.requests == []
        now[0] += 2
        sp._step()
        sp.drain()
        assert looks.count("PRAGMA data_version") == 2 and [r.path for r in rx.requests] == ["/one"]
        second = add_endpoint(cfg, rx.url + "/two", interval=1)
        write_event(cfg)
        sp._step()  # the new endpoint gets the new event
        now[0] += 2
        sp._step()
        sp.drain()
        assert looks.count("PRAGMA data_version") == 4
        assert sorted(r.path for r in rx.requests) == ["/one", "/one", "/two"]
        assert set(sp.current_endpoints()) == {first.id, second.id}
        assert looks.count("PRAGMA data_version") == 5  # outside a pass: every call looks
    finally:
        sp.close()


def test_category_filters_per_endpoint(rx, cfg):
    add_endpoint(cfg, rx.url + "/bounces", categories=("bounces",), interval=1)
    add_endpoint(cfg, rx.url + "/deliveries", categories=("deliveries",), interval=1)
    add_endpoint(cfg, rx.url + "/blocks", categories=("blocks",), interval=1)
    add_endpoint(cfg, rx.url + "/off", interval=1, enabled=False)
    for etype in ("queued", "succeeded", "deferred", "bounced", "failed", "blocked"):
        write_event(cfg, etype, bounce_type="soft" if etype == "bounced" else None)
    with Stepped(cfg) as sp:
        sp.step()
        sp.step(advance=1.5)  # every batch is due
        sp.step(advance=3600)  # nothing else comes
    got = {r.path: [e["type"] for e in r.json()["events"]] for r in rx.requests}
    assert got == {"/bounces": ["bounced"], "/deliveries": ["queued", "succeeded", "deferred", "failed"],
                   "/blocks": ["blocked"]}  # seed 000: Failed is a delivery status


def test_time_zone_form_format_auth_and_enrichment(rx, cfg):
    cfg.raw["milter"]["event_headers"] = "X-Campaign"  # what the milter copied it for
    add_endpoint(cfg, rx.url + "/ev", interval=1, timezone="America/New_York", format="form",
                 bearer="tok-0123456789abcdef", api_key="key-1")
    # the delivery event is spooled before its message's queued event
    write_event(cfg, "succeeded", queue_id="QX", relay="mx.else.example[192.0.2.25]:25", dsn="2.0.0")
    write_event(cfg, "queued", queue_id="QX", message_id="<m1@ours.example>", subject="Ihre Rechnung",
                sender="app@ours.example", custom_headers={"X-Campaign": "c-9"}, host_name="mx1.ours.example")
    with Running(cfg):
        (req,) = rx.wait_for(1, path="/ev", timeout=10)
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Authorization"] == "Bearer tok-0123456789abcdef"
    form = {k: v[0] for k, v in parse_qs(req.text()).items()}
    assert form["api_key"] == "key-1" and form["batch_id"] == req.headers["webhook-id"]
    succeeded, queued = json.loads(form["events"])
    assert succeeded["at"][-6:] in ("-05:00", "-04:00")  # New York, winter or summer time
    assert (succeeded["message_id"], succeeded["subject"], succeeded["custom_headers"]) == \
        ("<m1@ours.example>", "Ihre Rechnung", {"X-Campaign": "c-9"})
    assert queued["type"] == "queued"
    (row,) = [r for r in event_log(cfg) if r["type"] == "succeeded"]
    # the MX that handled the message (the succeeded event's line named none: its queued event's)
    assert row["hostName"] == "mx1.ours.example" and row["messageId"] == "<m1@ours.example>"


def test_log_events_wait_for_the_open_segment_that_holds_their_queued_event(rx, cfg):
    """The milter appends `queued` events to a segment sealed up to 0.2 s later; the log
    follower's outcome for that message is spooled meanwhile. It waits for the segment."""
    add_endpoint(cfg, rx.url + "/ev", interval=1)
    writer = spool.SegmentWriter(cfg.spool_dir, seal_after=3600)
    sp = spooler.Spooler(cfg)
    try:
        at_us = time.time_ns() // 1000
        queued = events.Event(type="queued", at=events.iso_from_us(at_us), id=spool.new_id(), source="milter",
                              queue_id="QS", recipient="r@else.example", subject="Order 7")
        writer.append_many([spool.event_record(queued)])
        write_event(cfg, "succeeded", queue_id="QS", dsn="2.0.0")
        sp.run_once()
        assert event_log(cfg) == []  # the follower's file is newer than the open segment
        writer.flush()
        sp.run_once()
        sp.run_once()
    finally:
        sp.close()
        writer.close()
    (req,) = rx.wait_for(1, path="/ev", timeout=10)
    first, second = req.json()["events"]
    assert (first["type"], second["type"]) == ("queued", "succeeded")
    assert second["subject"] == "Order 7"


def test_deferred_then_succeeded_keeps_the_batch_and_holds_the_line(rx, cfg):
    rx.script("/ev", [(503, {}, b"busy"), (500, {}, b"oops"), (200, {}, b"ok")])
    add_endpoint(cfg, rx.url + "/ev", interval=1, max_events=100)
    written = [write_event(cfg) for _ in range(150)]
    with Running(cfg):
        reqs = rx.wait_for(4, path="/ev", timeout=20)
    docs = bodies(reqs)
    # the first batch is retried (same id, same events) before the second goes out
    assert [d["count"] for d in docs] == [100, 100, 100, 50]
    assert docs[0] == docs[1] == docs[2]
    assert reqs[0].headers["webhook-id"] == reqs[2].headers["webhook-id"] == docs[0]["batch_id"]
    assert ids_of(docs[2:]) == written
    with StateStore(cfg.state_db) as st:
        b = st.batch(docs[0]["batch_id"])
        assert (b.status, b.attempts) == ("succeeded", 3)
        attempts = logs.event_detail(st, written[0])["deliveries"][0]["attempts"]
    assert [(a["outcome"], a["status_code"]) for a in attempts] == [("deferred", 503), ("deferred", 500), ("succeeded", 200)]


def test_an_exponential_backoff_spaces_a_batchs_retries_wider_each_time(rx, cfg):
    """The batch's attempt count (event_batches.attempts) numbers its attempts: the waits double
    from the interval (10 s x scale 0.01 = 0.1 s)."""
    rx.script("/ev", [(503, {}, b"busy")] * 3 + [(200, {}, b"ok")])
    add_endpoint(cfg, rx.url + "/ev", interval=1, retry_backoff="exponential")
    write_event(cfg)
    with Running(cfg, rand=lambda: 0.5):
        reqs = rx.wait_for(4, path="/ev", timeout=20)
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    # never sooner than the doubled wait (a loaded machine may post later, never earlier)
    assert all(gap >= wanted - 0.01 for gap, wanted in zip(gaps, (0.1, 0.2, 0.4))), gaps
    assert len({r.headers["webhook-id"] for r in reqs}) == 1


def test_failed_batch_does_not_hold_up_the_next(rx, cfg):
    rx.script("/ev", [(404, {}, b"no"), (200, {}, b"ok")])
    add_endpoint(cfg, rx.url + "/ev", interval=1, max_events=100)
    written = [write_event(cfg) for _ in range(120)]
    with Stepped(cfg) as sp:
        sp.step()  # 100 pending: a batch at once
        sp.step(advance=1.5)  # the other 20 after the interval
        sp.step(advance=3600)  # nothing else comes
    reqs = rx.requests
    assert [d["count"] for d in bodies(reqs)] == [100, 20]
    failed = event_log(cfg, status="failed")
    assert len(failed) == 100 and {r["reason"] for r in failed} == {"HTTP 404 Not Found"}
    assert sorted(r["id"] for r in event_log(cfg, status="succeeded")) == sorted(written[100:])


def test_hard_bounce_blocks_the_address_and_registers_it(rx, cfg, caplog):
    caplog.set_level("INFO")
    add_endpoint(cfg, rx.url + "/ev", interval=1, categories=("bounces", "blocks"))
    write_event(cfg, "queued", "gone@else.example", queue_id="QB", message_id="<m2@ours.example>")
    bounce = write_event(cfg, "bounced", "Gone@Else.Example", queue_id="QB", bounce_type="hard",
                         dsn="5.1.1", reply="550 5.1.1 <gone@else.example>: User unknown")
    write_event(cfg, "bounced", "full@else.example", queue_id="QB", bounce_type="soft", dsn="5.2.2")
    reader = rulesdb.BlocklistReader(cfg.rules_db)
    with Stepped(cfg) as sp:
        sp.step()  # ingested; the block list is updated and the registered event made
        assert reader.find("gone@else.example")
        sp.step(advance=1.5)  # the batch is due
        docs = bodies(rx.requests)
    assert not reader.find("full@else.example")
    with rulesdb.RulesStore(cfg.rules_db) as store:
        (row,) = store.block_list()
    assert (row["address"], row["source"], row["dsn"], row["event_id"]) == ("gone@else.example", "bounce", "5.1.1", bounce)
    events_seen = [e for d in docs for e in d["events"]]
    (reg,) = [e for e in events_seen if e["type"] == "registered"]
    assert reg["id"] == f"registered-gone@else.example-{bounce}"
    assert (reg["recipient"], reg["message_id"], reg["dsn"], reg["reason"]) == \
        ("gone@else.example", "<m2@ours.example>", "5.1.1", "hard bounce")
    assert reg["bounce_type"] is None  # docs/events.md: null for every type but bounced
    # lines about the message's events start with its queue id, as Postfix's own do
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("QB: block list: added Gone@Else.Example after hard bounce") for line in lines), lines
    assert any(line.startswith("QB: event batch ") and " outcome=succeeded" in line for line in lines), lines
    assert [e["type"] for e in events_seen].count("bounced") == 2


def test_hard_bounce_blocks_the_address_the_application_used(rx, cfg):
    """Postfix rewrote the recipient (alias, virtual): orig_to is what the application sent to,
    and what the milter checks at RCPT."""
    add_endpoint(cfg, rx.url + "/ev", interval=1, categories=("bounces", "blocks"))
    write_event(cfg, "bounced", "mailbox@hosting.example", queue_id="QR", bounce_type="hard",
                dsn="5.1.1", orig_recipient="Info@Shop.Example")
    run_twice(cfg)  # the bounce is ingested, then the block list is updated
    with rulesdb.RulesStore(cfg.rules_db) as store:
        assert [r["address"] for r in store.block_list()] == ["info@shop.example"]
    (reg,) = [e for d in bodies(rx.requests) for e in d["events"] if e["type"] == "registered"]
    assert reg["recipient"] == "info@shop.example"


def test_bounce_of_an_address_already_blocked_registers_nothing(rx, cfg):
    add_endpoint(cfg, rx.url + "/ev", interval=1, categories=("bounces", "blocks"))
    with rulesdb.RulesStore(cfg.rules_db) as store:
        store.block_add("gone@else.example", reason="by hand", source="cli")
    write_event(cfg, "bounced", "gone@else.example", bounce_type="hard", dsn="5.1.1")
    run_twice(cfg)  # the bounce is ingested, then the block list is updated
    assert [e["type"] for d in bodies(rx.requests) for e in d["events"]] == ["bounced"]


def test_cli_block_add_and_remove_emit_events(rx, cfg, tmp_path):
    add_endpoint(cfg, rx.url + "/ev", interval=1, categories=("blocks",))
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render(settings(tmp_path)))
    runner = separate_runner()
    with Stepped(cfg) as sp:
        res = runner.invoke(climod.cli, ["--config", str(conf), "block", "add", "A@B.example", "--reason", "asked"])
        assert res.exit_code == 0, res.stderr
        res = runner.invoke(climod.cli, ["--config", str(conf), "block", "remove", "a@b.example"])
        assert res.exit_code == 0, res.stderr
        sp.step()
        sp.step(advance=1.5)  # the batch is due
    seen = [e for d in bodies(rx.requests) for e in d["events"]]
    assert [(e["type"], e["recipient"], e["source"]) for e in seen] == [
        ("registered", "a@b.example", "cli"), ("deleted", "a@b.example", "cli")]
    assert seen[0]["reason"] == "asked"


def test_removed_endpoint_fails_its_pending_events(rx, cfg):
    ep = add_endpoint(cfg, rx.url + "/ev", interval=600)
    keep = add_endpoint(cfg, rx.url + "/keep", interval=1)
    written = [write_event(cfg) for _ in range(3)]
    with Stepped(cfg) as sp:
        sp.step()
        sp.step(advance=1.5)  # /keep's batch is due, /ev's not
        assert [r.path for r in rx.requests] == ["/keep"]
        with rulesdb.RulesStore(cfg.rules_db) as store:
            store.remove_endpoint(ep.id)
        sp.step()
    failed = event_log(cfg, status="failed")
    assert sorted(r["id"] for r in failed) == sorted(written)
    assert {(r["endpointUrl"], r["reason"]) for r in failed} == {(rx.url + "/ev", "endpoint removed")}
    assert [r.path for r in rx.requests] == ["/keep"] and keep.id


def test_disabled_endpoint_keeps_events_pending_until_enabled(rx, cfg):
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        from dataclasses import replace

        write_event(cfg)
        with Stepped(cfg) as sp:
            sp.step()
            assert logs.event_counts(sp.spooler.state)["pending"] == 1
            store.replace_endpoint(ep.id, replace(ep, enabled=False))
            sp.step(advance=3600)
            assert rx.requests == []
            write_event(cfg)  # not fanned out to a disabled endpoint
            sp.step(advance=3600)
            store.replace_endpoint(ep.id, replace(ep, enabled=True))
            sp.step()
    (req,) = rx.requests
    assert req.json()["count"] == 1


def test_spool_backlog_larger_than_the_scan_window(rx, cfg, monkeypatch, tmp_path):
    """Batches come from a window of the oldest names of one directory scan; files read ahead
    or not yet unlinked are never read twice, and arrivals during the window are not lost."""
    monkeypatch.setattr(spool, "SCAN_WINDOW", 7)
    c = config.from_dict(settings(tmp_path, ingest_batch=3))
    add_endpoint(c, rx.url + "/ev", interval=1, max_events=100)
    written = [write_event(c) for _ in range(40)]
    with Running(c) as sp:
        wait_until(lambda: logs.event_counts(sp.state)["pending"] + sum(
            b.size for b in sp.state.open_batches().values()) >= 20 or rx.requests, what="some ingest")
        written += [write_event(c) for _ in range(25)]
        wait_until(lambda: sum(d["count"] for d in bodies(rx.requests)) >= 65, timeout=15, what="65 events")
    assert ids_of(bodies(rx.requests)) == written
    assert os.listdir(os.path.join(c.spool_dir, "new")) == []
    with StateStore(c.state_db) as st:
        assert logs.counts(st)["events"] == 65


# ---------------------------------------------------------------------------------------------
# The real daemon: kill -9 mid-batch

def start_daemon(tmp_path) -> subprocess.Popen:
    path = tmp_path / "mxhook.conf"
    if not path.exists():
        path.write_text(config.render(settings(tmp_path)))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))
    return subprocess.Popen([sys.executable, "-m", "mxhook.daemons.spooler", "--config", str(path)],
                            env=env, stderr=open(tmp_path / "spooler.stderr", "ab"))


def test_kill_9_mid_batch_loses_no_event(rx, cfg, tmp_path):
    rx.script("/ev", [Response(200, delay=60), (200, {}, b"ok")])
    add_endpoint(cfg, rx.url + "/ev", interval=1, max_events=100, timeout=120)
    written = [write_event(cfg) for _ in range(150)]
    proc = start_daemon(tmp_path)
    try:
        (first,) = rx.wait_for(1, path="/ev", timeout=15)
        proc.kill()  # SIGKILL while the receiver holds the first batch
        proc.wait(10)
        with StateStore(cfg.state_db) as st:
            assert st.batch(first.headers["webhook-id"]).status == "queued"
        written += [write_event(cfg) for _ in range(10)]  # more arrive while it is down
        proc = start_daemon(tmp_path)
        reqs = rx.wait_for(3, path="/ev", timeout=20)
        wait_until(lambda: {r["status"] for r in event_log(cfg)} == {"succeeded"}, what="all succeeded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    docs = bodies(reqs)
    # the interrupted batch is posted again: same webhook-id, same events
    assert reqs[1].headers["webhook-id"] == first.headers["webhook-id"] and docs[1] == docs[0]
    assert ids_of(docs[1:]) == written  # nothing lost, nothing out of order
    assert len(rx.requests) == 3
