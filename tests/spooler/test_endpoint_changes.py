"""An endpoint's payload changed (`mxhook endpoint edit --dialect/--version/--format`) while
events wait for it: pending, in a batch made but not posted, in a batch deferred after an
attempt. Nothing is lost: every request made after the edit is in the endpoint's new payload,
and a batch of more events than that payload posts in one request is split (store/
endpointbatches.py). Real rules.db, state.db and an HTTP receiver on loopback."""
from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs

from mxhook.model.batching import open_limit
from mxhook.store import rulesdb
from mxhook.store.statedb import StateStore
from tests.spooler.test_events import add_endpoint, cfg, write_event  # noqa: F401  (cfg: a fixture)
from tests.spooler.test_payload_choice import RUN, sent_batches, small_runs  # noqa: F401  (a fixture)
from tests.spooler.test_spooler import Stepped, rx  # noqa: F401

EVENTS = 6


def switch(cfg, endpoint_id: int, **destination) -> None:
    with rulesdb.RulesStore(cfg.rules_db) as store:
        ep = store.get_endpoint(endpoint_id)
        store.replace_endpoint(ep.id, replace(ep, destination=replace(ep.destination, **destination)))


def event_statuses(cfg, endpoint_id: int) -> dict[str, str]:
    """event id -> the status of the batch it is in (pending: not in one)."""
    with StateStore(cfg.state_db) as st:
        return dict(st.conn.execute(
            "SELECT d.event_id, COALESCE(b.status, 'pending') FROM event_deliveries d"
            " LEFT JOIN event_batches b ON b.id = d.batch_id WHERE d.endpoint_id = ?", (endpoint_id,)))


def test_a_deferred_native_batch_goes_out_one_event_a_request_after_a_switch_to_smtp2go(rx, cfg, small_runs):
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1)
    rx.script("/ev", [(503, {}, b"down"), (200, {}, b"ok")])
    written = [write_event(cfg, "succeeded", recipient=f"r{i}@else.example") for i in range(EVENTS)]
    with Stepped(cfg) as sp:
        sp.step(flush_events=True)
        (first,) = rx.requests
        assert len(first.json()["events"]) == EVENTS  # one native batch, deferred
        (deferred,) = sent_batches(cfg)
        assert deferred["status"] == "deferred" and deferred["size"] == EVENTS
        switch(cfg, ep.id, dialect="smtp2go")
        write_event(cfg, "succeeded", recipient="later@else.example")
        for _ in range(4):
            sp.step(advance=30)
    forms = [parse_qs(r.text()) for r in rx.requests[1:]]
    assert all(r.headers["Content-Type"] == "application/x-www-form-urlencoded" for r in rx.requests[1:])
    rcpts = [f["rcpt"][0] for f in forms]
    assert sorted(rcpts) == sorted([f"r{i}@else.example" for i in range(EVENTS)] + ["later@else.example"])
    assert rcpts[-1] == "later@else.example" or len(set(rcpts)) == len(rcpts)
    # the deferred batch kept its id and its oldest events, a run's worth, each posted under
    # `<its id>.<seq>`; the others went back to pending and made runs of their own
    retried = [r for r in rx.requests[1:] if r.headers["webhook-id"].startswith(deferred["id"] + ".")]
    assert sorted(parse_qs(r.text())["rcpt"][0] for r in retried) == [f"r{i}@else.example" for i in range(RUN)]
    statuses = event_statuses(cfg, ep.id)
    assert set(statuses.values()) == {"succeeded"} and set(written) <= set(statuses)
    assert sorted(b["size"] for b in sent_batches(cfg)) == [1, RUN, RUN]


def test_batches_made_but_not_posted_are_split_too_and_unsent_types_fail_with_the_reason(rx, cfg):
    ep = add_endpoint(cfg, rx.url + "/ev", interval=1)
    rx.script("/ev", [(200, {}, b"ok")])
    write_event(cfg, "succeeded", recipient="a@else.example")
    deferred_event = write_event(cfg, "deferred", recipient="b@else.example")  # smtp2go has no name
    write_event(cfg, "bounced", recipient="c@else.example", bounce_type="soft")
    with Stepped(cfg) as sp:
        sp.step()  # ingested; the batch is not due yet
        made = sp.spooler.state.create_batch(ep.id, 1000, sp.clock())
        assert made.size == 3 and not rx.requests
        switch(cfg, ep.id, dialect="smtp2go")
        for _ in range(4):
            sp.step(advance=30)
    names = sorted(parse_qs(r.text())["event"][0] for r in rx.requests)
    assert names == ["bounce", "delivered"]
    statuses = event_statuses(cfg, ep.id)
    assert statuses[deferred_event] == "failed"
    assert sorted(statuses.values()) == ["failed", "succeeded", "succeeded"]
    with StateStore(cfg.state_db) as st:
        (reason,) = st.conn.execute(
            "SELECT b.last_error FROM event_batches b JOIN event_deliveries d ON d.batch_id = b.id"
            " WHERE d.event_id = ?", (deferred_event,)).fetchone()
    assert "smtp2go" in reason and "deferred" in reason


def test_runs_stay_apart_after_a_switch_back_to_native(rx, cfg, small_runs):
    ep = add_endpoint(cfg, rx.url + "/one", interval=1, dialect="msndr")
    limit = open_limit(1, cfg.value("spooler", "workers"))
    sent = limit * RUN  # every open run's requests, all deferred
    rx.script("/one", [(503, {}, b"down")] * sent + [(200, {}, b"ok")])
    for i in range(sent + 2):
        write_event(cfg, "succeeded", recipient=f"r{i}@else.example")
    with Stepped(cfg) as sp:
        sp.step(flush_events=True)
        assert len(rx.wait_for(sent, path="/one")) == sent
        switch(cfg, ep.id, dialect="native")
        for _ in range(limit + 3):  # a batching endpoint posts its open batches one by one
            sp.step(advance=30)
    after = [r for r in rx.requests if r.path == "/one"][sent:]
    assert [len(r.json()["events"]) for r in after] == [RUN] * limit + [2]
    got = [e["recipient"] for r in after for e in r.json()["events"]]
    assert sorted(got) == sorted(f"r{i}@else.example" for i in range(sent + 2))
    assert set(event_statuses(cfg, ep.id).values()) == {"succeeded"}
