"""What the spooler posts is the target's choice: a dialect (one request per event where the
dialect posts one, only the types it sends), a signed dialect, a jinja2 template stored in
rules.db (and a broken one: a failed attempt with the reason). Real rules.db, state.db and an
HTTP receiver on loopback (payloads/registry.py is the entry point under test).
"""
from __future__ import annotations

import hashlib
import hmac
import sqlite3
from urllib.parse import parse_qs

import pytest

from mxhook.model import batching, rules
from mxhook.payloads import registry, templates
from mxhook.services import logs
from mxhook.store import rulesdb
from mxhook.store.rulesdb import NewTemplate
from mxhook.store.statedb import StateStore
from tests.spooler.test_events import add_endpoint, cfg, write_event  # noqa: F401  (cfg: a fixture)
from tests.spooler.test_spooler import Stepped, delivery, run_once, rx, write_inbound  # noqa: F401
from tests.support.destinations import routed

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
RUN = 3  # events in a run (`small_runs`)


def sent_batches(cfg) -> list[dict]:
    with StateStore(cfg.state_db) as st:
        return [dict(zip(("id", "endpoint_id", "size", "status"), row)) for row in st.conn.execute(
            "SELECT id, endpoint_id, size, status FROM event_batches ORDER BY created, id")]


def request_ids(cfg) -> set[str]:
    """The webhook-ids a one-per-request endpoint's events were posted under, as state.db has
    their batches (runs): a batch's id, or `<batch id>.<seq>` in a run of several."""
    with StateStore(cfg.state_db) as st:
        return {batching.run_part_id(batch_id, seq, size) for batch_id, size, seq in st.conn.execute(
            "SELECT b.id, b.size, d.seq FROM event_deliveries d JOIN event_batches b ON b.id = d.batch_id")}


@pytest.fixture
def small_runs(monkeypatch):
    """Runs of RUN events (model.batching.RUN_EVENTS), so a test fills several with few events."""
    monkeypatch.setattr(batching, "RUN_EVENTS", RUN)


def test_one_request_per_event_with_the_dialect_body_and_unsent_types_never_dispatched(rx, cfg):
    ep = add_endpoint(cfg, rx.url + "/smtp2go", dialect="smtp2go")
    written = [write_event(cfg, "queued", recipient="a@else.example"),
               write_event(cfg, "deferred", recipient="a@else.example"),  # smtp2go posts nothing
               write_event(cfg, "succeeded", recipient="a@else.example"),
               write_event(cfg, "bounced", recipient="b@else.example", bounce_type="hard")]
    with Stepped(cfg) as sp:
        sp.step()
        sp.step(advance=1)
    forms = [parse_qs(r.text(), keep_blank_values=True) for r in rx.requests]
    assert all(r.headers["Content-Type"] == "application/x-www-form-urlencoded" for r in rx.requests)
    assert sorted(f["event"][0] for f in forms) == ["bounce", "delivered", "processed"]
    assert all(f["rcpt"][0] in ("a@else.example", "b@else.example") for f in forms)
    (batch,) = sent_batches(cfg)  # one run of three requests
    assert batch["size"] == 3 and batch["status"] == "succeeded"
    ids = [r.headers["webhook-id"] for r in rx.requests]
    assert sorted(ids) == sorted(request_ids(cfg)) and all(i.startswith(batch["id"] + ".") for i in ids)
    # the event log says which webhook-id each event's request had
    sent = {(f["event"][0], f["rcpt"][0]): r.headers["webhook-id"] for f, r in zip(forms, rx.requests)}
    for event_id, key in ((written[0], ("processed", "a@else.example")),
                          (written[2], ("delivered", "a@else.example")),
                          (written[3], ("bounce", "b@else.example"))):
        (delivery,) = logs.event_detail(cfg, event_id)["deliveries"]
        assert delivery["batchId"] == batch["id"] and delivery["webhookId"] == sent[key]
    with StateStore(cfg.state_db) as st:  # the deferred event was never fanned out to it
        fanned = {row[0] for row in st.conn.execute(
            "SELECT event_id FROM event_deliveries WHERE endpoint_id = ?", (ep.id,))}
    assert fanned == {written[0], written[2], written[3]}


def test_single_event_endpoints_have_several_runs_in_flight(rx, cfg, small_runs):
    """Up to model.batching.open_limit runs open at once (OPEN_PER_WORKER per worker), each of
    up to RUN_EVENTS events, made in one step; a batching endpoint keeps one batch."""
    limit = batching.open_limit(1, cfg.value("spooler", "workers"))
    add_endpoint(cfg, rx.url + "/one", dialect="msndr")
    add_endpoint(cfg, rx.url + "/batch", interval=1)
    events = limit * RUN + 2
    for i in range(events):
        write_event(cfg, "succeeded", recipient=f"r{i}@else.example")
    with Stepped(cfg) as sp:
        sp.step(flush_events=True)  # one dispatch round
        one = rx.wait_for(limit * RUN, path="/one")
        assert len(one) == limit * RUN
        assert [len(r.json()["events"]) for r in rx.wait_for(1, path="/batch")] == [events]
        sp.step(flush_events=True)
    docs = [r.json() for r in rx.requests if r.path == "/one"]
    assert len(docs) == events and all(d["event"]["name"] == "delivered" for d in docs)
    runs = [b for b in sent_batches(cfg) if b["endpoint_id"] != 2]
    assert sorted(b["size"] for b in runs) == [2] + [RUN] * limit


def test_a_down_receiver_holds_the_open_bound_and_no_more(rx, cfg, small_runs):
    """The open bound of a one-per-request endpoint counts runs waiting for their retry:
    with the receiver down, `open_limit` of them are deferred whole (and retried) and the other
    events wait unbatched, however many steps pass."""
    limit = batching.open_limit(1, cfg.value("spooler", "workers"))
    ep = add_endpoint(cfg, rx.url + "/down", dialect="postmark")
    rx.script("/down", [(503, {}, b"down")])
    for i in range(limit * RUN + 3):
        write_event(cfg, "succeeded", recipient=f"r{i}@else.example")
    with Stepped(cfg) as sp:
        for _ in range(4):
            sp.step(advance=0.5)
    batches = sent_batches(cfg)
    assert len(batches) == limit and {b["status"] for b in batches} == {"deferred"}
    assert {b["size"] for b in batches} == {RUN}
    assert {r.headers["webhook-id"] for r in rx.requests} == request_ids(cfg)
    with StateStore(cfg.state_db) as st:
        assert st.pending_stats(ep.id, 100)[0] == 3


def test_a_run_keeps_what_succeeded_and_splits_off_the_rest_under_their_webhook_ids(rx, cfg, small_runs):
    """Requests of one run answered differently: the run keeps its succeeded events; a
    deferred one and a failed one each go into a batch of their own named by the webhook-id
    their request had, and the deferred one is retried under that id until it succeeds."""
    add_endpoint(cfg, rx.url + "/mixed", dialect="msndr")
    answers = {"r1@else.example": [(503, {}, b"later")], "r2@else.example": [(400, {}, b"no")]}

    def answer(req):
        script = next((s for rcpt, s in answers.items() if rcpt in req.text()), None)
        return script.pop(0) if script else (200, {}, b"ok")
    rx.script("/mixed", answer)
    for i in range(3):
        write_event(cfg, "succeeded", recipient=f"r{i}@else.example")
    with Stepped(cfg) as sp:
        sp.step()
        sp.step()  # results written, the retry not due yet
    first = {r.headers["webhook-id"]: r for r in rx.requests}
    assert len(first) == 3
    batches = {b["id"]: b for b in sent_batches(cfg)}
    assert sorted((b["size"], b["status"]) for b in batches.values()) == [
        (1, "deferred"), (1, "failed"), (1, "succeeded")]
    run = next(b for b in batches.values() if b["status"] == "succeeded")
    split = [i for i in batches if i != run["id"]]
    assert all(i in first and i.startswith(run["id"] + ".") for i in split)
    deferred = next(i for i in split if batches[i]["status"] == "deferred")
    with Stepped(cfg) as sp:
        sp.step(advance=30)
        sp.step(advance=1)
    again = [r for r in rx.requests[3:]]
    assert [r.headers["webhook-id"] for r in again] == [deferred]
    assert {b["id"]: b["status"] for b in sent_batches(cfg)}[deferred] == "succeeded"


def test_mailgun_endpoint_posts_verify_with_its_signing_key(rx, cfg):
    add_endpoint(cfg, rx.url + "/mg", dialect="mailgun", signing_key=KEY)
    write_event(cfg, "bounced", bounce_type="hard")
    with Stepped(cfg) as sp:
        sp.step(flush_events=True)
    (req,) = rx.requests
    doc = req.json()
    sig = doc["signature"]
    expected = hmac.new(KEY.encode(), (sig["timestamp"] + sig["token"]).encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig["signature"], expected)
    assert len(sig["token"]) == 32 and doc["event-data"]["event"] == "failed"


def template_rule(cfg, rx, path: str, source: str) -> dict:
    rule = rules.Rule(**routed(rx.url + path, name="templated", allow_http=True, retry_interval=10,
                               conditions=(rules.parse_condition("To~@ours\\.example$"),)))
    new = NewTemplate(templates.JSON, source, templates.template_version(source, templates.JSON))
    with rulesdb.RulesStore(cfg.rules_db) as store:
        stored = store.add_rule(rule, template=new)
    assert stored.destination.template == 1
    return stored.target_record()


TEMPLATE = '{"subject": "{{ message.subject }}", "rcpt": {{ envelope.recipients|tojson }}, "id": "{{ id }}"}'


def test_a_rule_with_a_template_posts_the_rendered_body(rx, cfg):
    rid = write_inbound(cfg, template_rule(cfg, rx, "/t", TEMPLATE))
    run_once(cfg)
    (req,) = rx.requests
    assert req.headers["Content-Type"] == "application/json"
    assert req.json() == {"subject": "Café order", "rcpt": ["in@ours.example"], "id": f"{rid}-templated"}
    assert delivery(cfg, f"{rid}-templated")["status"] == "succeeded"


def test_a_broken_template_is_a_failed_attempt_with_the_reason(rx, cfg):
    record = template_rule(cfg, rx, "/t", TEMPLATE)
    with sqlite3.connect(cfg.rules_db) as conn:  # edited by hand: add/edit would refuse it
        conn.execute("UPDATE templates SET source = ?", ('{"x": {{ no_such_variable }}}',))
    conn.close()
    rid = write_inbound(cfg, record)
    run_once(cfg)
    assert rx.requests == []
    row = delivery(cfg, f"{rid}-templated")
    assert row["status"] == "failed"
    assert "cannot render the template v1 payload" in row["last_error"]
    assert "no_such_variable" in row["last_error"]


def test_a_template_missing_from_rules_db_is_a_failed_attempt(rx, cfg):
    record = template_rule(cfg, rx, "/t", TEMPLATE)
    rid = write_inbound(cfg, dict(record, template=7))
    run_once(cfg)
    assert rx.requests == []
    row = delivery(cfg, f"{rid}-templated")
    assert row["status"] == "failed" and "template version 7 of rule templated is not in rules.db" in row["last_error"]


def test_an_endpoint_template_posts_its_body(rx, cfg):
    source = '{"n": {{ count }}, "types": {{ events|map(attribute="type")|list|tojson }}}'
    new = NewTemplate(templates.JSON, source, templates.template_version(source, templates.JSON))
    from mxhook.model.endpoints import Endpoint

    with rulesdb.RulesStore(cfg.rules_db) as store:
        store.add_endpoint(Endpoint(**routed(rx.url + "/evt", allow_http=True)), template=new)
    write_event(cfg, "succeeded")
    write_event(cfg, "failed")
    with Stepped(cfg) as sp:
        sp.step(flush_events=True)
    (req,) = rx.requests
    assert req.json() == {"n": 2, "types": ["succeeded", "failed"]}


def test_the_registry_is_what_the_store_fans_out_by():
    """wanted_types: the endpoint's categories that its dialect has a place for."""
    from mxhook.model.endpoints import Endpoint

    ep = Endpoint(**routed("https://h.example/", dialect="paubox", categories=("deliveries",)), id=1)
    assert registry.wanted_types(ep) == {"succeeded", "deferred", "failed"}  # paubox: no queued


def test_rules_db_unreadable_while_a_template_is_read_defers_the_delivery(rx, cfg):
    from mxhook.daemons import spooler

    rid = write_inbound(cfg, template_rule(cfg, rx, "/t", TEMPLATE))
    sp = spooler.Spooler(cfg)

    def locked(*_):
        raise sqlite3.OperationalError("database is locked")

    sp.templates.get = locked
    try:
        sp.run_once()
    finally:
        sp.close()
    assert rx.requests == []
    row = delivery(cfg, f"{rid}-templated")
    assert row["status"] == "deferred" and "cannot read the template from rules.db" in row["last_error"]


def test_a_posting_process_killed_mid_run_loses_nothing_and_the_retry_keeps_the_ids(rx, cfg, small_runs):
    """kill -9 of the spooler's posting process while a run's requests wait for their answers:
    the run is deferred (nothing recorded as sent), the next call starts a new posting
    process, and the retry posts every event of the run under the webhook-id it had."""
    import os
    import signal
    import threading

    from tests.support.receiver import Response

    add_endpoint(cfg, rx.url + "/slow", dialect="msndr")
    rx.script("/slow", [Response(200, delay=2.0)] * 2 + [(200, {}, b"ok")])
    for i in range(RUN):
        write_event(cfg, "succeeded", recipient=f"r{i}@else.example")
    with Stepped(cfg) as sp:
        killed = []

        def kill_when_posting():
            rx.wait_for(1, path="/slow", timeout=20)
            killed.append(sp.spooler.poster.pid)
            os.kill(killed[0], signal.SIGKILL)
        killer = threading.Thread(target=kill_when_posting)
        killer.start()
        sp.step()
        killer.join(20)
        sp.step()  # the run's result written: deferred
        (run,) = sent_batches(cfg)
        assert run["status"] == "deferred" and run["size"] == RUN
        first = {r.headers["webhook-id"] for r in rx.requests}
        sp.step(advance=30)
        sp.step()
        assert sp.spooler.poster.pid not in (None, killed[0])
    (run,) = sent_batches(cfg)
    assert run["status"] == "succeeded"
    ids = request_ids(cfg)
    assert first and first <= ids and len(ids) == RUN
    retried = [r.headers["webhook-id"] for r in rx.requests][len(first):]
    assert sorted(retried) == sorted(ids)  # every event again, each under its id
    with StateStore(cfg.state_db) as st:
        (error,) = st.conn.execute("SELECT error FROM event_attempts WHERE outcome = 'deferred'").fetchone()
    assert "posting process" in error and "SIGKILL" in error
