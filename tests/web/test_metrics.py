"""GET /metrics against the real mxhook-web: the token it takes, the exposition format, and
each metric's value after known rows in state.db, spool files, heartbeat files and a log
follower position."""
from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mxhook import config as configmod
from mxhook import heartbeat, spool
from mxhook.model.endpoints import Endpoint
from mxhook.model.records import iso
from mxhook.model.targets import Destination
from mxhook.services import check as checksvc
from mxhook.store import ingest
from mxhook.store.statedb import AttemptRecord, StateStore


def inbound(rule: dict, received: float) -> spool.Record:
    target = {"id": rule["id"], "name": rule["name"], "endpoint": rule["url"], "format": "json"}
    return spool.Record(id=spool.new_id(), kind="inbound", payload=b"Subject: s\r\n\r\nbody\r\n", meta={
        "received": iso(received), "queue_id": "QI", "mail_from": "a@else.example",
        "header_from": "a@else.example", "subject": "s", "message_id": "<in@else>",
        "deliveries": [{"recipients": ["in@ours.example"], "rule": target}]})


def denied(i: int, received: float) -> spool.Record:
    return spool.Record(id=spool.new_id(), kind="denied", meta={
        "received": iso(received), "queue_id": f"D{i}", "mail_from": "s@else.example",
        "header_from": "s@else.example", "client_addr": "192.0.2.1", "recipients": ["x@ours.example"],
        "filter": "no_rule", "reason": "no rule takes it"})


def event(i: int, at: float) -> spool.Record:
    return spool.Record(id=f"mev{i}", kind="event", meta={
        "id": f"mev{i}", "type": "succeeded", "at": iso(at), "received": iso(at), "source": "log",
        "queue_id": f"Q{i}", "recipient": "r@far.example", "custom_headers": {}})


@pytest.fixture(scope="module")
def seeded(stack):
    now = time.time()
    hook = stack("POST", "/v1/rules", json_body={"name": "hook", "url": "https://127.0.0.1:9/h",
                                                 "when": ["To~@ours"]}).json()
    quiet = stack("POST", "/v1/rules", json_body={"name": "quiet", "url": "https://127.0.0.1:9/q",
                                                  "when": ["To~@other"], "enabled": False}).json()
    endpoint = stack("POST", "/v1/endpoints", json_body={"url": "https://127.0.0.1:9/e"}).json()
    hook["url"] = "https://127.0.0.1:9/h"
    records = [inbound(hook, now - 120), inbound(hook, now - 60), inbound(hook, now - 7200)]
    records += [denied(i, now - 30) for i in range(3)]
    with StateStore(stack.cfg.state_db) as st:
        ingest.records(st, records)
        ingest.records(st, [event(i, now - 10) for i in range(4)],
                       endpoints=[Endpoint(Destination("https://127.0.0.1:9/e"), id=endpoint["id"])])
        first = ingest.delivery_id(records[0].id, "hook")
        st.record_attempts([  # two failed attempts of the oldest recent delivery: hook is failing
            AttemptRecord(first, iso(now - 100), "deferred", "deferred", status_code=503,
                          error="HTTP 503", next_attempt_at=iso(now + 600)),
            AttemptRecord(first, iso(now - 50), "deferred", "deferred", status_code=503,
                          error="HTTP 503", next_attempt_at=iso(now + 600))])
    # the spool: two records waiting in one new/ file, one quarantined file
    spool.write_many(stack.cfg.spool_dir, [event(10, now), event(11, now)])
    with open(os.path.join(stack.cfg.spool_dir, "bad", "x.rec"), "wb") as fh:
        fh.write(b"junk")
    # a spooler alive (this process), a log follower 100 bytes behind its log
    with open(heartbeat.path_for(stack.cfg.state_db, heartbeat.SPOOLER), "w") as fh:
        json.dump({"pid": os.getpid(), "started": now}, fh)
    maillog = os.path.join(stack.cfg.workdir, "mail.log")
    with open(maillog, "wb") as fh:
        fh.write(b"x" * 1000)
    st_log = os.stat(maillog)
    state_file = os.path.join(stack.cfg.workdir, "logfollow.state")
    with open(state_file, "w") as fh:
        json.dump({"version": 1, "source": "file", "path": maillog, "dev": st_log.st_dev,
                   "inode": st_log.st_ino, "offset": 900, "head_len": 0, "head": ""}, fh)
    os.utime(state_file, (now - 30, now - 30))
    os.utime(maillog, (now - 5, now - 5))
    stack.cfg.update({"logfollow": {"state_file": state_file, "path": maillog}})
    stack.web.stop()  # the config changed: read it again
    stack.web.start()
    return {"quiet": quiet, "endpoint": endpoint["id"], "now": now}


def scrape(stack, token="reader") -> dict:
    reply = stack("GET", "/metrics", token=token)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, **labels) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_metrics_need_a_token(stack):
    assert stack("GET", "/metrics", token=None).code == "unauthorized"
    assert stack("GET", "/metrics", token="not-a-token").code == "invalid_token"


def test_every_metric_after_known_rows(stack, seeded):
    m = scrape(stack)  # a read-only token is enough
    # decisions of the last hour: two accepted (the third is two hours old), three denied
    assert value(m, "mxhook_milter_decisions_last_hour", outcome="accepted") == 2
    assert value(m, "mxhook_milter_decisions_last_hour", outcome="denied") == 3
    assert value(m, "mxhook_milter_decisions_last_hour", outcome="denied_unlogged") == 0
    assert value(m, "mxhook_inbound_deliveries_last_hour", status="deferred") == 1
    assert value(m, "mxhook_inbound_deliveries_last_hour", status="queued") == 1
    assert value(m, "mxhook_inbound_deliveries_last_hour", status="succeeded") == 0
    assert value(m, "mxhook_event_deliveries_last_hour", status="queued") == 4
    # the spool
    assert value(m, "mxhook_spool_files", directory="new") == 1
    assert value(m, "mxhook_spool_files", directory="bad") == 1
    assert value(m, "mxhook_spool_records", kind="event") == 2
    assert value(m, "mxhook_spool_records", kind="inbound") == 0
    assert 0 <= value(m, "mxhook_spool_oldest_age_seconds") < 60
    # per rule and endpoint
    assert value(m, "mxhook_undelivered", kind="rule", name="hook") == 3
    assert 7200 <= value(m, "mxhook_oldest_undelivered_age_seconds", kind="rule", name="hook") < 7300
    ep = str(seeded["endpoint"])
    assert value(m, "mxhook_undelivered", kind="endpoint", name=ep) == 4
    # events wait from when they were fanned out to the endpoint (ingest)
    assert 0 < value(m, "mxhook_oldest_undelivered_age_seconds", kind="endpoint", name=ep) < 60
    assert value(m, "mxhook_undelivered", kind="rule", name="quiet") == 0
    assert value(m, "mxhook_target_enabled", kind="rule", name="hook") == 1
    assert value(m, "mxhook_target_enabled", kind="rule", name="quiet") == 0
    assert value(m, "mxhook_target_enabled", kind="endpoint", name=ep) == 1
    assert value(m, "mxhook_target_consecutive_failures", kind="rule", name="hook") == 2
    assert 100 <= value(m, "mxhook_target_failing_seconds", kind="rule", name="hook") < 200
    assert value(m, "mxhook_target_consecutive_failures", kind="endpoint", name=ep) == 0
    assert value(m, "mxhook_target_failing_seconds", kind="endpoint", name=ep) == 0
    assert value(m, "mxhook_failed_deliveries", kind="rule", name="hook") == 0
    # the log follower: 100 bytes behind; the log was written 25 s after the position was saved
    assert value(m, "mxhook_logfollow_lag_bytes") == 100
    assert 24 <= value(m, "mxhook_logfollow_lag_seconds") <= 26
    assert 30 <= value(m, "mxhook_logfollow_position_age_seconds") < 120
    # daemons and state.db
    assert value(m, "mxhook_daemon_up", daemon="spooler") == 1
    assert value(m, "mxhook_daemon_up", daemon="logfollow") == 0
    assert 0 <= value(m, "mxhook_daemon_heartbeat_age_seconds", daemon="spooler") < 300
    assert value(m, "mxhook_state_db_up") == 1
    assert 0 < value(m, "mxhook_metrics_collect_seconds") < 5


def test_check_sees_the_running_server(stack):
    rows = {r["check"]: r for r in checksvc.check_daemons(configmod.load(stack.cfg.path))}
    assert rows["web"] == {"check": "web", "ok": True,
                           "message": f"mxhook-web is running (it answers on http://127.0.0.1:{stack.port}/)"}
