"""`mxhook replay` and `mxhook status` (mxhook.ops) against a temporary config, rules.db and
state.db filled through the stores (no spooler, no network)."""
from __future__ import annotations

import json
import time

import pytest
from tests.support.cli import separate_runner

from mxhook.model.records import iso
from mxhook.model.targets import Destination
from tests.support.destinations import routed
from mxhook import cli as climod
from mxhook import config
from mxhook.store import rulesdb
from mxhook.cli import ops
from mxhook.services import replay as replaysvc
from mxhook.model import rules
from mxhook import spool
from mxhook.store import ingest, logs
from mxhook.model.endpoints import Endpoint
from mxhook.store.statedb import AttemptRecord, StateStore

NOW = time.time()


def at(seconds_ago: float) -> str:
    return iso(NOW - seconds_ago)


class Env:
    def __init__(self, tmp_path):
        self.rules_db = str(tmp_path / "rules.db")
        self.state_db = str(tmp_path / "state.db")
        self.spool_dir = str(tmp_path / "spool")
        self.conf = str(tmp_path / "mxhook.conf")
        with open(self.conf, "w") as fh:
            fh.write(config.render({"paths": {"rules_db": self.rules_db, "state_db": self.state_db,
                                              "spool_dir": self.spool_dir}}))
        spool.ensure_dirs(self.spool_dir)
        self.runner = separate_runner()
        StateStore(self.state_db).close()

    def run(self, *args):
        return self.runner.invoke(climod.cli, ["--config", self.conf, *args])

    def json(self, *args, code=0):
        res = self.run(*args, "--json")
        assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
        return json.loads(res.stdout)

    def rules(self) -> rulesdb.RulesStore:
        return rulesdb.RulesStore(self.rules_db)

    def state(self) -> StateStore:
        return StateStore(self.state_db)

    def add_rule(self, name="r1", url="https://hooks.example/in", **kw) -> rules.Rule:
        with self.rules() as store:
            return store.add_rule(rules.Rule(**routed(
                url, name=name, conditions=(rules.parse_condition("To~@ours"),), **kw)))

    def message(self, rule: rules.Rule, received: str, rid: str | None = None) -> str:
        """An ingested inbound message for `rule`; returns the delivery id."""
        rid = rid or spool.new_id()
        meta = {"received": received, "queue_id": "4X", "mail_from": "a@x.example",
                "header_from": "a@x.example", "subject": "s", "message_id": "<m@x>",
                "deliveries": [{"recipients": ["in@ours.example"], "rule": rule.target_record()}]}
        with self.state() as st:
            ingest.records(st, [spool.Record(id=rid, kind="inbound", meta=meta, payload=b"Subject: s\r\n\r\nb\r\n")])
        return ingest.delivery_id(rid, rule.name)

    def finish(self, did: str, status: str, *, code=404, when=None, error=None) -> None:
        outcome = status if status != "failed" or code else "failed"
        with self.state() as st:
            st.record_attempts([AttemptRecord(
                did, when or iso(), "succeeded" if status == "succeeded" else
                ("deferred" if status == "deferred" else outcome), status,
                status_code=200 if status == "succeeded" else code,
                error=None if status == "succeeded" else (error or f"HTTP {code}"),
                next_attempt_at=iso(NOW + 60) if status == "deferred" else None)])

    def failed_delivery(self, rule, received=None) -> str:
        did = self.message(rule, received or at(60))
        self.finish(did, "failed")
        return did


@pytest.fixture()
def env(tmp_path):
    return Env(tmp_path)


# ---------------------------------------------------------------------------------------------
# replay

def test_replay_id_requeues_with_the_rules_current_settings(env):
    rule = env.add_rule(retry_period=1)
    did = env.failed_delivery(rule)
    with env.rules() as store:
        fixed = Destination("https://fixed.example/in", retry_period=2)
        store.replace_rule("r1", rules.Rule(name="r1", destination=fixed, conditions=rule.conditions))
    res = env.run("replay", did)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "Replayed 1 item(s)" in res.stdout and "same webhook-id" in res.stdout
    with env.state() as st:
        row = logs.delivery(st, did)
        detail = logs.inbound_detail(st, did)
    assert (row["status"], row["first_attempt_at"], row["attempts"]) == ("queued", None, 1)
    assert row["target"]["endpoint"] == "https://fixed.example/in" and row["target"]["retry_period"] == 2
    assert (detail["status"], detail["reason"]) == ("queued", "replayed")
    # replaying again: it is queued now, not failed
    res = env.run("replay", did)
    assert res.exit_code == 1 and "is already queued" in res.stderr


def test_replay_json_and_dry_run(env):
    rule = env.add_rule()
    did = env.failed_delivery(rule)
    out = env.json("replay", did, "--dry-run")
    assert out["dry_run"] is True and out["counts"] == {"replayed": 1, "skipped": 0}
    (item,) = out["replayed"]
    assert {k: item[k] for k in ("id", "kind", "status", "rule", "url", "last_error")} == {
        "id": did, "kind": "delivery", "status": "failed", "rule": "r1",
        "url": "https://hooks.example/in", "last_error": "HTTP 404"}
    with env.state() as st:
        assert logs.delivery(st, did)["status"] == "failed"  # nothing changed
    res = env.run("replay", did, "--dry-run")
    assert res.exit_code == 0 and "Would replay 1 item(s)" in res.stdout and did in res.stdout
    out = env.json("replay", did)
    assert out["dry_run"] is False and [i["id"] for i in out["replayed"]] == [did]


def test_replay_refuses_what_is_not_failed_or_unknown(env):
    rule = env.add_rule()
    ok = env.message(rule, at(60))
    env.finish(ok, "succeeded")
    res = env.run("replay", ok)
    assert res.exit_code == 1 and "was delivered (succeeded)" in res.stderr
    res = env.run("replay", "nope-r1")
    assert res.exit_code == 1 and "no inbound delivery, event batch or event with id nope-r1" in res.stderr
    for args in ((), ("--rule", "r1", "--endpoint", "1"), (ok, "--rule", "r1"), (ok, "--since", "1d")):
        res = env.run("replay", *args)
        assert res.exit_code == 2, args
    assert env.run("replay", "--rule", "r1", "--since", "yesterday").exit_code == 2


def test_replay_of_a_disabled_rule_needs_force(env):
    rule = env.add_rule()
    did = env.failed_delivery(rule)
    with env.rules() as store:
        store.set_enabled("r1", False)
    with env.state() as st:
        st.mark_disabled("rule", str(rule.id), "r1", "the endpoint answered HTTP 410 Gone")
    res = env.run("replay", did)
    assert res.exit_code == 1
    assert "rule r1 is disabled" in res.stderr and "410 Gone" in res.stderr and "--force" in res.stderr
    with env.state() as st:
        assert logs.delivery(st, did)["status"] == "failed"
    out = env.json("replay", did, "--force")
    (item,) = out["replayed"]
    assert "sent once it is enabled again" in item["note"] and "mxhook rule enable r1" in item["note"]
    with env.state() as st:
        assert logs.delivery(st, did)["status"] == "queued"


def test_replay_when_the_rule_was_removed_keeps_the_accepted_settings(env):
    rule = env.add_rule()
    did = env.failed_delivery(rule)
    with env.rules() as store:
        store.remove_rule("r1")
    out = env.json("replay", did)
    assert "no longer exists" in out["replayed"][0]["note"]
    with env.state() as st:
        assert logs.delivery(st, did)["target"]["endpoint"] == "https://hooks.example/in"


def test_replay_refuses_a_delivery_whose_body_is_gone(env):
    rule = env.add_rule()
    did = env.failed_delivery(rule)
    with env.state() as st:
        st.conn.execute("UPDATE messages SET raw = NULL")
    res = env.run("replay", did)
    assert res.exit_code == 1 and "body is no longer stored" in res.stderr


def test_replay_by_rule_and_time_range(env):
    rule = env.add_rule()
    other = env.add_rule("r2")
    old = env.failed_delivery(rule, at(3 * 86400))
    recent = [env.failed_delivery(rule, at(3600 + i)) for i in range(3)]
    env.failed_delivery(other, at(3600))
    ok = env.message(rule, at(3600))
    env.finish(ok, "succeeded")
    out = env.json("replay", "--rule", "r1", "--since", "2d", "--dry-run")
    assert sorted(i["id"] for i in out["replayed"]) == sorted(recent)
    out = env.json("replay", "--rule", "r1", "--until", "2d")
    assert [i["id"] for i in out["replayed"]] == [old]
    res = env.run("replay", "--rule", "r1", "--until", "2d")
    assert res.exit_code == 0 and "Nothing to replay" in res.stdout
    assert env.run("replay", "--rule", "nope").exit_code == 1
    # a bare message id: all its deliveries
    rid = old.rsplit("-", 1)[0]
    res = env.run("replay", rid)
    assert res.exit_code == 1 and "already queued" in res.stderr


def test_replay_by_endpoint(env):
    with env.rules() as store:
        ep = store.add_endpoint(Endpoint(Destination("https://app.example/ev")))
        gone = store.add_endpoint(Endpoint(Destination("https://old.example/ev")))
    with env.state() as st:
        ingest.records(st, [spool.Record(id=f"e{i}", kind="event", meta={
            "type": "bounced", "at": at(100), "recipient": "x@y", "queue_id": "Q"}) for i in range(3)],
            endpoints=[ep, gone])
        batches = {}
        for e in (ep, gone):
            b = st.create_batch(e.id, 100)
            st.record_attempts([AttemptRecord(b.id, iso(), "failed", "failed",
                                                    status_code=400, error="HTTP 400 Bad Request")])
            batches[e.id] = b.id
    with env.rules() as store:
        store.remove_endpoint(gone.id)
    res = env.run("replay", "--endpoint", "https://app.example/ev")
    assert res.exit_code == 0 and "1 event batch(es)" in res.stdout
    with env.state() as st:
        assert st.batch(batches[ep.id]).status == "queued"
        assert st.batch(batches[ep.id]).first_attempt_at is None
    res = env.run("replay", batches[gone.id])
    assert res.exit_code == 1 and f"endpoint {gone.id} was removed" in res.stderr
    assert env.run("replay", "--endpoint", str(gone.id)).exit_code == 1
    with env.rules() as store:
        store.set_endpoint_enabled(ep.id, False)
    with env.state() as st:
        st.conn.execute("UPDATE event_batches SET status = 'failed'")
    res = env.run("replay", batches[ep.id])
    assert res.exit_code == 1 and f"endpoint {ep.id} is disabled" in res.stderr


def _event_batches(env, *, sizes=(3,), url="https://app.example/ev?key=s3cret"):
    """Endpoint 1 (a token in its URL's query) gets events e0.. in failed batches of `sizes`;
    endpoint 2 gets them all in one batch that succeeded."""
    with env.rules() as store:
        ep = store.add_endpoint(Endpoint(Destination(url)))
        other = store.add_endpoint(Endpoint(Destination("https://crm.example/ev")))
    events = [f"e{i}" for i in range(sum(sizes))]
    with env.state() as st:
        ingest.records(st, [spool.Record(id=e, kind="event", meta={
            "type": "bounced", "at": at(100), "recipient": "x@y", "queue_id": "Q"}) for e in events],
            endpoints=[ep, other])
        st.sync_endpoints([ep, other])
        batches = [st.create_batch(ep.id, size) for size in sizes]
        st.record_attempts([AttemptRecord(b.id, iso(), "failed", "failed", status_code=400,
                                          error="HTTP 400 Bad Request") for b in batches])
        ok = st.create_batch(other.id, 100)
        st.record_attempts([AttemptRecord(ok.id, iso(), "succeeded", "succeeded", status_code=200)])
    return ep, other, [b.id for b in batches], events


def test_replay_one_event_of_a_batch_sends_it_alone_with_a_new_webhook_id(env):
    ep, other, (batch,), events = _event_batches(env)
    dry = env.run("replay", "e1", "--dry-run")
    # its delivery to endpoint 2 succeeded: the event id names the failed one only
    assert dry.exit_code == 0 and dry.stderr == "", (dry.stdout, dry.stderr)
    assert f"e1  event to endpoint {ep.id} -> https://app.example/ev?…" in dry.stdout
    assert "would go alone in a new batch, with a new webhook-id" in dry.stdout
    assert f"its batch {batch} carried 3 events" in dry.stdout and "s3cret" not in dry.stdout
    (item,) = env.json("replay", "e1", "--dry-run")["replayed"]
    assert (item["id"], item["kind"], item["endpoint_id"], item["batch_id"], item["webhook_id"]) == (
        "e1", "event", ep.id, batch, None)
    assert item["url"] == "https://app.example/ev?…"
    with env.state() as st:
        assert st.batch(batch).status == "failed"  # a dry run changes nothing

    out = env.json("replay", "e1")
    (item,) = out["replayed"]
    new = item["webhook_id"]
    assert new.startswith("evb_") and new != batch and "sent alone as batch" in item["note"]
    with env.state() as st:
        single = st.batch(new)
        assert (single.status, single.size, single.endpoint_id, single.attempts) == ("queued", 1, ep.id, 0)
        assert [e["id"] for e in st.batch_events(single)] == ["e1"]
        # the batch it came from keeps its events, id and status: replayable whole
        assert (st.batch(batch).status, st.batch(batch).size) == ("failed", 3)
        assert [e["id"] for e in st.batch_events(st.batch(batch))] == events
    detail = env.json("log", "event", "e1")
    assert [(d["endpointId"], d["batchId"], d["status"]) for d in detail["deliveries"]] == [
        (ep.id, batch, "failed"), (other.id, detail["deliveries"][1]["batchId"], "succeeded"),
        (ep.id, new, "queued")]
    assert detail["deliveries"][2]["nextAttemptAt"]  # due now: `log event` shows when
    assert f"  next attempt: {detail['deliveries'][2]['nextAttemptAt']}" in env.run("log", "event", "e1").stdout
    # again: it is queued now
    res = env.run("replay", "e1")
    assert res.exit_code == 1 and f"e1 (endpoint {ep.id}): is already queued" in res.stderr
    # failed again: alone in its batch now, so that batch goes (the same webhook-id)
    with env.state() as st:
        st.record_attempts([AttemptRecord(new, iso(), "failed", "failed", status_code=500, error="HTTP 500")])
    res = env.run("replay", "e1")
    assert res.exit_code == 0 and "same webhook-id" in res.stdout and f"alone in batch {new}" in res.stdout
    with env.state() as st:
        assert st.batch(new).status == "queued"
    # the whole batch still replays with its own id; an event alone in its batch given with
    # that batch is one replay
    assert [i["id"] for i in env.json("replay", batch)["replayed"]] == [batch]
    with env.state() as st:
        st.record_attempts([AttemptRecord(new, iso(), "failed", "failed", status_code=500, error="HTTP 500")])
    both = env.json("replay", "e1", new)
    assert [(i["kind"], i["id"]) for i in both["replayed"]] == [("event", "e1"), ("batch", new)]
    assert both["skipped"] == []


def test_replay_one_event_alone_in_its_batch_replays_that_batch(env):
    ep, _, batches, _ = _event_batches(env, sizes=(1, 1))
    (item,) = env.json("replay", "e1")["replayed"]
    assert (item["webhook_id"], item["batch_id"]) == (batches[1], batches[1])
    with env.state() as st:
        assert st.batch(batches[1]).status == "queued" and st.batch(batches[0]).status == "failed"
        assert st.conn.execute("SELECT count(*) FROM event_batches").fetchone()[0] == 3  # none new


def test_replay_of_an_event_refused(env):
    ep, other, _, _ = _event_batches(env)
    with env.state() as st:
        ingest.records(st, [spool.Record(id="late", kind="event", meta={
            "type": "bounced", "at": at(10), "recipient": "x@y", "queue_id": "Q"})], endpoints=[ep])
    res = env.run("replay", "late")
    assert res.exit_code == 1 and "late (endpoint 1): is not sent yet (it waits for its batch)" in res.stderr
    with env.state() as st:  # no endpoint takes it
        ingest.records(st, [spool.Record(id="nowhere", kind="event", meta={
            "type": "bounced", "at": at(10), "recipient": "x@y", "queue_id": "Q"})], endpoints=[])
    res = env.run("replay", "nowhere")
    assert res.exit_code == 1 and "event nowhere went to no endpoint" in res.stderr
    with pytest.raises(replaysvc.Invalid) as exc:  # the API's event replay
        replaysvc.replay_event(config.load(env.conf), "late")
    assert exc.value.code == "not_sent_yet"
    # every delivery of the event succeeded (endpoint 2) or none failed: said for each
    with env.state() as st:
        st.conn.execute("UPDATE event_batches SET status = 'succeeded'")
    res = env.run("replay", "e0")
    assert res.exit_code == 1 and res.stderr.count("was delivered (succeeded)") == 2
    with env.state() as st:
        st.conn.execute("UPDATE event_batches SET status = 'failed'")
    with env.rules() as store:
        store.set_endpoint_enabled(ep.id, False)
    res = env.run("replay", "e0")
    assert res.exit_code == 1 and f"endpoint {ep.id} is disabled" in res.stderr
    (item,) = [i for i in env.json("replay", "e0", "--force")["replayed"] if i["endpoint_id"] == ep.id]
    assert "sent once it is enabled again" in item["note"] and "sent alone as batch" in item["note"]


def test_replay_dry_run_shows_the_url_it_will_use(env):
    """The rule's current URL (a replay goes with the current settings), without its query."""
    rule = env.add_rule(url="https://hooks.example/old")
    did = env.failed_delivery(rule)
    with env.rules() as store:
        store.replace_rule("r1", rules.Rule(name="r1", conditions=rule.conditions, destination=Destination(
            "https://hooks.example/new?token=s3cret")))
    res = env.run("replay", did, "--dry-run")
    assert f"{did}  rule r1 -> https://hooks.example/new?…" in res.stdout and "s3cret" not in res.stdout


def test_replay_progress(env, monkeypatch):
    rule = env.add_rule()
    ids = [env.failed_delivery(rule, at(100 + i)) for i in range(replaysvc.REQUEUE_CHUNK + 50)]
    res = env.run("replay", "--rule", "r1")  # not a terminal: plain counts on stderr
    assert res.exit_code == 0
    assert f"replaying: {replaysvc.REQUEUE_CHUNK} of {len(ids)}" in res.stderr
    assert f"replaying: {len(ids)} of {len(ids)}" in res.stderr
    with env.state() as st:
        st.conn.execute("UPDATE deliveries SET status = 'failed'")
        st.conn.execute("UPDATE inbound_log SET status = 'failed'")
    monkeypatch.setattr(ops, "_isatty", lambda: True)
    res = env.run("replay", "--rule", "r1")
    assert res.exit_code == 0 and "Replaying" in res.stdout and f"Replayed {len(ids)} item(s)" in res.stdout


# ---------------------------------------------------------------------------------------------
# status

def test_status_shapes(env):
    ok_rule = env.add_rule("ok")
    retrying = env.add_rule("retrying")
    failing = env.add_rule("failing")
    disabled = env.add_rule("disabled")
    by_admin = env.add_rule("by-admin")
    d = env.message(ok_rule, at(600))
    env.finish(d, "succeeded", when=at(590))
    d = env.message(retrying, at(300))
    env.finish(d, "deferred", code=503, when=at(290), error="HTTP 503 Service Unavailable")
    env.failed_delivery(failing, at(7200))
    waiting = env.message(disabled, at(120))
    with env.rules() as store:
        store.set_enabled("disabled", False)
        store.set_enabled("by-admin", False)
        ep = store.add_endpoint(Endpoint(Destination("https://app.example/ev")))
    with env.state() as st:
        st.mark_disabled("rule", str(disabled.id), "disabled", "the endpoint answered HTTP 410 Gone",
                         now=NOW - 100)
        ingest.records(st, [spool.Record(id=f"e{i}", kind="event", meta={
            "type": "queued", "at": at(50), "recipient": "x@y", "queue_id": "Q"}) for i in range(4)],
            endpoints=[ep], now=NOW - 50)
        ingest.records(st, [spool.Record(id=f"u{i}", kind="denied", meta={  # an unknown-domain flood
            "received": when, "recipients": ["x@elsewhere.example"], "filter": "unknown_domain"})
            for i, when in enumerate((at(7200), at(60), at(60)))], log_unknown_domains=False)
    spool.write(env.spool_dir, spool.Record(id=spool.new_id(), kind="denied",
                                            meta={"received": at(30), "recipients": []}))
    report = env.json("status")
    assert set(report) == {"now", "spool", "pending", "last_hour", "rules", "endpoints", "problems",
                           "state_db", "unlogged_denials"}
    assert report["unlogged_denials"] == {"last_hour": 2, "total": 3, "first": at(7200)[:16]}
    assert report["state_db"] == {"path": report["state_db"]["path"], "fault": None, "error": None}
    assert report["problems"] == []
    assert report["spool"] == {"backlog": 1, "oldest": at(30), "error": None}
    p = report["pending"]
    assert (p["inbound"], p["events"], p["open_batches"]) == (2, 4, 0)
    assert p["oldest"] == at(300) and 300 <= p["oldest_age_seconds"] <= 300 + (time.time() - NOW) + 5
    assert report["last_hour"]["inbound"] == {"queued": 1, "deferred": 1, "succeeded": 1, "failed": 0,
                                              "denied": 0}
    assert report["last_hour"]["events"] == {"queued": 4, "deferred": 0, "succeeded": 0, "failed": 0}
    rules_ = {r["name"]: r for r in report["rules"]}
    assert {n: r["state"] for n, r in rules_.items()} == {
        "ok": "ok", "retrying": "retrying", "failing": "failing", "disabled": "disabled",
        "by-admin": "disabled"}
    assert rules_["ok"]["since"] == at(590) and rules_["ok"]["last_success"] == at(590)
    assert rules_["retrying"]["since"] == at(290) and rules_["retrying"]["pending"] == 1
    assert rules_["retrying"]["last_error"] == "HTTP 503 Service Unavailable"
    assert rules_["failing"]["failed"] == 1 and rules_["failing"]["pending"] == 0
    assert rules_["disabled"]["since"] == iso(NOW - 100)
    assert rules_["disabled"]["disabled_reason"] == "the endpoint answered HTTP 410 Gone"
    assert rules_["disabled"]["pending"] == 1 and rules_["disabled"]["enabled"] is False
    assert rules_["by-admin"]["disabled_reason"] == "disabled by the admin"
    (e,) = report["endpoints"]
    assert (e["id"], e["state"], e["pending"], e["oldest_pending"]) == (ep.id, "ok", 4, iso(NOW - 50))
    # text
    res = env.run("status")
    assert res.exit_code == 0
    out = res.stdout
    assert "1 record(s) waiting to be ingested" in out
    assert "2 inbound deliveries, 4 event deliveries (0 open batches)" in out
    assert "inbound: 1 queued, 1 deferred, 1 succeeded" in out
    assert (f"not logged: 2 denial(s) of unknown domains in the last hour, 3 since "
            f"{at(7200)[:10]} {at(7200)[11:16]}:00Z (counted only: [spooler] log_unknown_domains = no)") in out
    for line in ("retrying  ", "HTTP 503 Service Unavailable", "the endpoint answered HTTP 410 Gone",
                 "disabled by the admin", "https://app.example/ev"):
        assert line in out, out
    assert waiting  # pending for the disabled rule


def test_status_always_exits_0(tmp_path):
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render({"paths": {"rules_db": str(tmp_path / "no" / "rules.db"),
                                             "state_db": str(tmp_path / "no" / "state.db"),
                                             "spool_dir": str(tmp_path / "no" / "spool")}}))
    runner = separate_runner()
    res = runner.invoke(climod.cli, ["--config", str(conf), "status", "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert len(report["problems"]) == 3 and report["spool"]["backlog"] is None
    assert report["rules"] == [] and report["pending"]["oldest"] is None
    res = runner.invoke(climod.cli, ["--config", str(conf), "status"])
    assert res.exit_code == 0 and "does not exist yet" in res.stdout


def test_age_format():
    assert [ops._age(s) for s in (None, 5, 61, 3725, 90000)] == ["-", "5s", "1m 1s", "1h 2m", "1d 1h"]
