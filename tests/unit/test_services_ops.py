"""services.replay, services.status, services.explain, services.times and services.postfix
called directly."""
from __future__ import annotations

import io
import time

import pytest
from tests.support.services import make_config, use_static_dns

from mxhook.model.records import iso
from mxhook import spool
from mxhook.model import rules as rulesmod
from mxhook.model.targets import Destination
from mxhook.services import domains, explain, postfix, replay, rules, status, times
from mxhook.services.errors import Failed, Invalid, NotFound
from mxhook.store import ingest
from mxhook.store.statedb import AttemptRecord, StateStore

HOOK = Destination("https://hooks.example/in")

@pytest.fixture(autouse=True)
def static_dns(monkeypatch):
    use_static_dns(monkeypatch)


@pytest.fixture
def cfg(tmp_path):
    spool.ensure_dirs(str(tmp_path / "spool"))
    StateStore(str(tmp_path / "state.db")).close()
    return make_config(tmp_path)


def failed_delivery(cfg, rule: rulesmod.Rule) -> str:
    rid = spool.new_id()
    meta = {"received": iso(time.time() - 60), "queue_id": "4X", "mail_from": "a@x.example",
            "header_from": "a@x.example", "subject": "s", "message_id": "<m@x>",
            "deliveries": [{"recipients": ["in@ours.example"], "rule": rule.target_record()}]}
    did = ingest.delivery_id(rid, rule.name)
    with StateStore(cfg.state_db) as st:
        ingest.records(st, [spool.Record(id=rid, kind="inbound", meta=meta, payload=b"Subject: s\r\n\r\nb\r\n")])
        st.record_attempts([AttemptRecord(did, iso(), "failed", "failed", status_code=404,
                                          error="HTTP 404", next_attempt_at=None)])
    return did


def test_replay(cfg):
    rule = rules.add(cfg, name="r1", destination=HOOK, when=["To~@ours"]).rule
    did = failed_delivery(cfg, rule)
    with pytest.raises(Invalid, match="one of them"):
        replay.replay(cfg)
    with pytest.raises(Invalid, match="--since/--until go with"):
        replay.replay(cfg, ids=[did], since="1h")
    with pytest.raises(Invalid, match="--since: 'soon' is not a time"):
        replay.replay(cfg, rule="r1", since="soon")
    with pytest.raises(NotFound, match="no inbound delivery, event batch or event with id nope"):
        replay.replay(cfg, ids=["nope"])

    dry = replay.replay(cfg, rule="r1", dry_run=True)
    assert [item["id"] for item, _ in dry.replayed] == [did] and dry.as_dict()["dry_run"]
    seen = []
    done = replay.replay(cfg, ids=[did], progress=lambda n, total: seen.append((n, total)))
    assert [item["id"] for item, _ in done.replayed] == [did] and not done.skipped
    assert seen == [(0, 1), (1, 1)]
    again = replay.replay(cfg, ids=[did])
    assert not again.replayed and "already queued" in again.skipped[0][1]
    assert again.as_dict()["counts"] == {"replayed": 0, "skipped": 1}


def test_status_reports_as_data(cfg):
    rules.add(cfg, name="r1", destination=HOOK, when=["To~@ours"])
    report = status.collect(cfg, now=time.time())
    assert report["spool"] == {"backlog": 0, "oldest": None, "error": None}
    assert [(r["name"], r["state"]) for r in report["rules"]] == [("r1", "ok")]
    assert report["problems"] == [] and report["pending"]["inbound"] == 0


MESSAGE = (b"From: Alice <alice@sender.example>\r\nTo: invoices@ours.example\r\n"
           b"Subject: invoice 42\r\n\r\nbody\r\n")


def test_explain(cfg, tmp_path):
    domains.add(cfg, "ours.example")
    rules.add(cfg, name="invoices", destination=HOOK, when=["Subject~invoice"])
    res = explain.explain_message(cfg, io.BytesIO(MESSAGE), ["invoices@ours.example", "x@else.example"],
                                  "alice@sender.example")
    assert (res["result"], res["decided_by"]) == ("accept", "rules")
    assert [(e["recipient"], e["outcome"]) for e in res["recipients"]] == [
        ("invoices@ours.example", "accepted"), ("x@else.example", "rejected")]
    with pytest.raises(Invalid) as exc:
        explain.explain_message(cfg, io.BytesIO(MESSAGE), ["nobody"])
    assert exc.value.code == "invalid_recipient"
    small = make_config(tmp_path, milter={"max_message_size": "10"})
    with pytest.raises(Invalid, match="larger than") as exc:
        explain.explain_message(small, io.BytesIO(MESSAGE), ["invoices@ours.example"])
    assert exc.value.code == "message_too_large"


def test_times():
    assert times.parse_duration("24h") == 86400 and times.parse_duration("90") == 90
    with pytest.raises(ValueError, match="not a duration"):
        times.parse_duration("soon")
    assert times.parse_time("2026-11-22T08:00+01:00") == "2026-11-22T07:00:00.000000Z"


def test_postfix_plan_without_postfix(cfg, monkeypatch):
    def missing(argv, timeout=60.0):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(postfix, "run_command", missing)
    with pytest.raises(Failed, match="Postfix is not installed") as exc:
        postfix.plan(cfg, None)
    assert exc.value.code == "postfix_not_installed"
