"""Delivery failures in the spooler: 410 Gone disables the rule/endpoint, continuous failure
for `[spooler] disable_after_days` disables it, deliveries of a disabled rule/endpoint wait,
and a replayed (requeued) delivery or batch goes out again with its webhook-id.

Real rules.db and state.db, real receiver on loopback; the clock is injected where days pass.
"""
from __future__ import annotations

import dataclasses
import logging

import pytest

from mxhook.model.records import iso
from mxhook import config
from mxhook.store import rulesdb
from mxhook.model import rules
from mxhook import spool
from mxhook.daemons import spooler
from mxhook.services import replay as replaysvc
from mxhook.store import ingest, logs, replay
from mxhook.model.endpoints import Endpoint
from mxhook.store.statedb import StateStore
from tests.support.destinations import routed
from tests.spooler.test_events import write_event
from tests.spooler.test_spooler import (  # noqa: F401
    delivery, rule_record, rx, settings, write_inbound)

DAY = 86400.0
T0 = 1_800_000_000.0


def make_cfg(tmp_path, **spooler_keys) -> config.Config:
    cfg = config.from_dict(settings(tmp_path, **spooler_keys))
    spool.ensure_dirs(cfg.spool_dir)
    return cfg


def add_rule(cfg, rx, path, name="r1", **kw) -> rules.Rule:
    fields = dict(name=name, allow_http=True, retry_interval=10,
                  conditions=(rules.parse_condition(r"To~@ours\.example$"),))
    fields.update(kw)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        return store.add_rule(rules.Rule(**routed(rx.url + path, **fields)))


def get_rule(cfg, name="r1") -> rules.Rule:
    with rulesdb.RulesStore(cfg.rules_db) as store:
        return store.get_rule(name)


def add_endpoint(cfg, url, **kw) -> Endpoint:
    kw.setdefault("allow_http", True)
    kw.setdefault("retry_interval", 10)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        return store.add_endpoint(Endpoint(**routed(url, **kw)))


def get_endpoint(cfg, key) -> Endpoint:
    with rulesdb.RulesStore(cfg.rules_db) as store:
        return store.get_endpoint(key)


def health(cfg) -> dict:
    with StateStore(cfg.state_db) as st:
        return st.health()


class Clocked:
    """A Spooler whose clock the test moves; run() is one --once round at that time."""

    def __init__(self, cfg, now=T0, **kw):
        self.now = now
        self.sp = spooler.Spooler(cfg, clock=lambda: self.now, rand=lambda: 0.5, **kw)

    def run(self, at=None):
        if at is not None:
            self.now = at
        self.sp.run_once()

    def close(self):
        self.sp.close()


def deliveries_of(rid, rule):
    return ingest.delivery_id(rid, rule.name)


# ---------------------------------------------------------------------------------------------
# 410 Gone

def test_410_disables_the_rule_and_its_deliveries_wait(tmp_path, rx, caplog):
    cfg = make_cfg(tmp_path, workers=1)
    rule = add_rule(cfg, rx, "/gone")
    rx.script("/gone", [(410, {}, b"gone")])
    first = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    second = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    caplog.set_level(logging.INFO, logger="mxhook.daemons.spooler")
    c = Clocked(cfg)
    try:
        c.run()
        c.run(T0 + 60)
        c.run(T0 + 3600)
    finally:
        c.close()
    assert len(rx.requests) == 1  # the second delivery was not attempted
    row = delivery(cfg, first)
    assert row["status"] == "failed" and row["last_status_code"] == 410
    with StateStore(cfg.state_db) as st:
        log_row = logs.inbound_detail(st, first)
    assert log_row["status"] == "failed" and log_row["reason"] == "HTTP 410 Gone; rule r1 disabled"
    assert delivery(cfg, second)["status"] == "queued"  # waits for the rule
    assert get_rule(cfg).enabled is False
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and "disabled" in r.getMessage()]
    assert len(warning) == 1
    text = warning[0].getMessage()
    assert "rule r1 disabled" in text and "410" in text and rx.url + "/gone" in text
    h = health(cfg)[("rule", str(rule.id))]
    assert h["disabled_at"] == iso(T0) and "410" in h["disabled_reason"]

    # enabled again (the receiver is back): the waiting delivery goes out, the streak is reset
    rx.script("/gone", [(200, {}, b"ok")])
    with rulesdb.RulesStore(cfg.rules_db) as store:
        store.set_enabled("r1", True)
    c = Clocked(cfg, now=T0 + 7200)
    try:
        c.run()
    finally:
        c.close()
    assert delivery(cfg, second)["status"] == "succeeded"
    assert rx.requests[-1].headers["webhook-id"] == second
    h = health(cfg)[("rule", str(rule.id))]
    assert h["disabled_at"] is None and h["failing_since"] is None
    assert delivery(cfg, first)["status"] == "failed"  # failed stays failed (replayable)


def test_410_from_an_old_url_does_not_disable_the_edited_rule(tmp_path, rx):
    """A delivery keeps the target it was accepted under; a 410 from the URL the rule no
    longer uses says nothing about the rule."""
    cfg = make_cfg(tmp_path)
    rule = add_rule(cfg, rx, "/old")
    rx.script("/old", [(410, {}, b"")])
    did = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        moved = dataclasses.replace(rule.destination, url=rx.url + "/new")
        store.replace_rule("r1", dataclasses.replace(rule, destination=moved, id=None))
    c = Clocked(cfg)
    try:
        c.run()
    finally:
        c.close()
    assert delivery(cfg, did)["status"] == "failed"
    assert get_rule(cfg).enabled is True


def test_410_disables_the_endpoint_and_its_events_wait(tmp_path, rx, caplog):
    cfg = make_cfg(tmp_path)
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1)
    other = add_endpoint(cfg, rx.url + "/ok", interval=1)
    rx.script("/ev", [(410, {}, b"")])
    write_event(cfg, "succeeded")
    caplog.set_level(logging.INFO, logger="mxhook.daemons.spooler")
    c = Clocked(cfg)
    try:
        c.run()
        write_event(cfg, "deferred")
        c.run(T0 + 10)
        c.run(T0 + 20)
    finally:
        c.close()
    assert [r.path for r in rx.requests].count("/ev") == 1
    assert [r.path for r in rx.requests].count("/ok") == 2  # the other endpoint is not held up
    assert get_endpoint(cfg, ep.id).enabled is False and get_endpoint(cfg, other.id).enabled is True
    with StateStore(cfg.state_db) as st:
        rows = [r for r in logs.event_log(st, limit=None) if r["endpointId"] == ep.id]
    by_type = {r["type"]: r for r in rows}
    assert by_type["succeeded"]["status"] == "failed"
    assert by_type["succeeded"]["reason"] == f"HTTP 410 Gone; endpoint {ep.id} disabled"
    # an endpoint disabled gets no new events (fan-out), the one ingested before waits
    assert "deferred" not in by_type or by_type["deferred"]["status"] == "queued"
    assert any(f"endpoint {ep.id} disabled" in r.getMessage() and "410" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert health(cfg)[("endpoint", str(ep.id))]["disabled_at"] is not None


# ---------------------------------------------------------------------------------------------
# Continuous failure

def test_rule_failing_for_disable_after_days_is_disabled(tmp_path, rx, caplog):
    cfg = make_cfg(tmp_path, retry_time_scale=1, disable_after_days=2, workers=1)
    rule = add_rule(cfg, rx, "/down", retry_period=10)
    rx.script("/down", [(503, {}, b"")])
    did = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    caplog.set_level(logging.INFO, logger="mxhook.daemons.spooler")
    c = Clocked(cfg)
    try:
        c.run()  # first failure: the streak starts
        assert health(cfg)[("rule", str(rule.id))]["failing_since"] == iso(T0)
        c.run(T0 + 1 * DAY)
        c.run(T0 + 2 * DAY - 60)
        assert get_rule(cfg).enabled is True
        c.run(T0 + 2 * DAY + 1)  # a failed attempt two days into the streak
        assert get_rule(cfg).enabled is False
        sent = len(rx.requests)
        c.run(T0 + 3 * DAY)
        assert len(rx.requests) == sent == 4  # nothing more is attempted
    finally:
        c.close()
    row = delivery(cfg, did)
    assert row["status"] == "deferred"  # still pending, waits for the rule
    h = health(cfg)[("rule", str(rule.id))]
    assert h["disabled_at"] == iso(T0 + 2 * DAY + 1)
    assert h["disabled_reason"].startswith(f"no successful delivery since {iso(T0)} (2 days or more")
    assert "HTTP 503" in h["disabled_reason"]
    assert any("rule r1 disabled" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_success_ends_the_failure_streak(tmp_path, rx):
    cfg = make_cfg(tmp_path, retry_time_scale=1, disable_after_days=2, workers=1)
    rule = add_rule(cfg, rx, "/flaky", retry_period=10)
    rx.script("/flaky", [(503, {}, b""), (200, {}, b""), (503, {}, b"")])
    write_inbound(cfg, rule_record(rule))
    c = Clocked(cfg)
    try:
        c.run()
        c.run(T0 + 1.5 * DAY)  # succeeds
        assert health(cfg)[("rule", str(rule.id))]["failing_since"] is None
        write_inbound(cfg, rule_record(rule))
        c.run(T0 + 2.5 * DAY)  # fails: a new streak
        c.run(T0 + 4 * DAY)
        assert get_rule(cfg).enabled is True
        c.run(T0 + 4.6 * DAY)
        assert get_rule(cfg).enabled is False  # two days after the new streak began
    finally:
        c.close()


def test_disable_after_days_zero_never_disables(tmp_path, rx):
    cfg = make_cfg(tmp_path, retry_time_scale=1, disable_after_days=0, workers=1)
    rule = add_rule(cfg, rx, "/down", retry_period=10)
    rx.script("/down", [(503, {}, b"")])
    write_inbound(cfg, rule_record(rule))
    c = Clocked(cfg)
    try:
        for day in range(0, 10, 2):
            c.run(T0 + day * DAY)
    finally:
        c.close()
    assert get_rule(cfg).enabled is True and len(rx.requests) == 5


def test_endpoint_failing_for_disable_after_days_is_disabled(tmp_path, rx):
    cfg = make_cfg(tmp_path, retry_time_scale=1, disable_after_days=1)
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1, retry_period=5)
    rx.script("/ev", [(500, {}, b"")])
    write_event(cfg, "succeeded")
    c = Clocked(cfg)
    try:
        c.run()
        c.run(T0 + 0.5 * DAY)
        assert get_endpoint(cfg, ep.id).enabled is True
        c.run(T0 + 1.2 * DAY)
        assert get_endpoint(cfg, ep.id).enabled is False
        n = len(rx.requests)
        c.run(T0 + 2 * DAY)
        assert len(rx.requests) == n
    finally:
        c.close()
    with StateStore(cfg.state_db) as st:
        (batch,) = st.open_batches().values()  # deferred, waiting for the endpoint
    assert batch.status == "deferred"


def test_config_rejects_negative_disable_after_days(tmp_path):
    with pytest.raises(config.ConfigError, match="disable_after_days"):
        spooler.Spooler(make_cfg(tmp_path, disable_after_days=-1))


# ---------------------------------------------------------------------------------------------
# Requeue (what `mxhook replay` does) as the spooler sees it

def test_requeued_delivery_keeps_webhook_id_and_gets_a_fresh_retry_period(tmp_path, rx):
    cfg = make_cfg(tmp_path, retry_time_scale=1, workers=1)
    rule = add_rule(cfg, rx, "/fix", retry_period=1)
    rx.script("/fix", [(404, {}, b"no such hook")])
    did = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    c = Clocked(cfg)
    try:
        c.run()
        assert delivery(cfg, did)["status"] == "failed"
        rx.script("/fix", [(503, {}, b""), (200, {}, b"")])
        later = T0 + 5 * DAY  # long after the first retry period ended
        with StateStore(cfg.state_db) as st:
            assert replay.requeue(st, [did], now=later) == [did]
            assert replay.requeue(st, [did], now=later) == []  # only failed ones
        c.run(later)
        row = delivery(cfg, did)
        # a deferral now is retried, not failed: the retry period starts at the replay
        assert row["status"] == "deferred" and row["first_attempt_at"] == iso(later)
        c.run(later + 30)
    finally:
        c.close()
    row = delivery(cfg, did)
    assert row["status"] == "succeeded" and row["attempts"] == 3
    assert [r.headers["webhook-id"] for r in rx.requests] == [did] * 3


def test_an_idle_spooler_picks_up_a_requeue(tmp_path, rx):
    cfg = make_cfg(tmp_path)
    rule = add_rule(cfg, rx, "/late")
    rx.script("/late", [(400, {}, b""), (200, {}, b"")])
    did = deliveries_of(write_inbound(cfg, rule_record(rule)), rule)
    c = Clocked(cfg)
    try:
        c.run()
        assert delivery(cfg, did)["status"] == "failed"
        c.run(T0 + 1)
        assert c.sp._inbound_due_at == float("inf")  # idle: nothing due, the spooler spares its queries
        with StateStore(cfg.state_db) as st:
            assert replay.requeue(st, [did], now=T0 + 2) == [did]
        c.run(T0 + 3)
    finally:
        c.close()
    assert delivery(cfg, did)["status"] == "succeeded"
    assert [r.headers["webhook-id"] for r in rx.requests] == [did, did]


def failed_batch(tmp_path, rx) -> tuple:
    """An endpoint's first batch, of three events, posted and failed (422); the receiver answers
    200 after. Returns (cfg, the events' ids, the failed batch as replay.failed_items gives it,
    the spooler: close it)."""
    cfg = make_cfg(tmp_path)
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1)
    rx.script("/ev", [(422, {}, b""), (200, {}, b""), (200, {}, b"")])
    events = [write_event(cfg, "succeeded") for _ in range(3)]
    c = Clocked(cfg)
    try:
        c.run()
        with StateStore(cfg.state_db) as st:
            (failed,) = replay.failed_items(st, endpoint_id=ep.id)
    except BaseException:
        c.close()
        raise
    return cfg, events, failed, c


def test_requeued_batch_goes_out_with_its_id_and_events(tmp_path, rx):
    cfg, first, failed, c = failed_batch(tmp_path, rx)
    try:
        later = [write_event(cfg, "deferred") for _ in range(2)]
        with StateStore(cfg.state_db) as st:
            assert replay.requeue(st, [failed["id"]], now=T0 + 5) == [failed["id"]]
        c.run(T0 + 10)  # the replayed batch first (it is older: one open batch at a time)...
        c.run(T0 + 20)  # ...then a new one with what came meanwhile
    finally:
        c.close()
    reqs = rx.requests
    assert [r.headers["webhook-id"] for r in reqs[:2]] == [failed["id"], failed["id"]]
    assert [e["id"] for e in reqs[1].json()["events"]] == first
    assert [e["id"] for e in reqs[2].json()["events"]] == later


def test_one_replayed_event_goes_alone_with_a_new_webhook_id(tmp_path, rx):
    """`mxhook replay EVENT_ID` (services.replay): the event of a failed batch of three is
    posted alone, under a new webhook-id; its batch stays failed, and replayed whole later it
    goes out with its own id and all three events."""
    cfg, first, failed, c = failed_batch(tmp_path, rx)
    try:
        done = replaysvc.replay(cfg, ids=[first[1]])
        ((item, note),) = done.replayed
        assert item["kind"] == "event" and item["batch_id"] == failed["id"] and "sent alone" in note
        c.run(T0 + 10)
        with StateStore(cfg.state_db) as st:
            assert st.batch(item["webhook_id"]).status == "succeeded"
            assert st.batch(failed["id"]).status == "failed"
        replaysvc.replay(cfg, ids=[failed["id"]])
        c.run(T0 + 20)
    finally:
        c.close()
    reqs = rx.requests
    assert [r.headers["webhook-id"] for r in reqs] == [failed["id"], item["webhook_id"], failed["id"]]
    assert [e["id"] for e in reqs[1].json()["events"]] == [first[1]]
    assert [e["id"] for e in reqs[2].json()["events"]] == first
