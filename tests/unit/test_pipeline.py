"""The dispatch pipeline (delivery.pipeline): one attempt function and one result handling for
inbound deliveries and event batches, with the sender, the clock and the jitter injected."""
from __future__ import annotations

from types import SimpleNamespace

from mxhook.model.records import iso, to_datetime
from mxhook.delivery import pipeline
from mxhook.delivery.pipeline import Dispatch
from mxhook.delivery.webhook import Outcome
from mxhook.model import batching
from mxhook.model.targets import Target
from mxhook.store import statedb

T0 = 1_800_000_000.0
BODY = SimpleNamespace(body=b'{"a":1}', content_type="application/json")


def dispatch(id="0187a2b3c4d5e6f7a1b2c3d4e5f6-r1", render=lambda: BODY, **kw) -> Dispatch:
    fields = dict(id=id, target=Target(kind="rule", id=1, name="r1", url="https://hooks.example/in",
                                       retry_interval=60, retry_period=1),
                  attempts=0, first_attempt_at=None, owner=("rule", "1"),
                  label=f"delivery {id} rule=r1", payload="json", render=render)
    fields.update(kw)
    return Dispatch(**fields)


def test_an_attempt_renders_then_sends_with_the_webhook_id():
    sent = []
    d = dispatch()
    done = pipeline.attempt(d, lambda t, b, i: sent.append((t, b, i)) or Outcome("succeeded", 200),
                            clock=lambda: T0)
    assert sent == [(d.target, BODY, d.id)]
    assert (done.outcome.status, done.started) == ("succeeded", T0)


def test_what_cannot_be_rendered_fails_and_a_bug_defers():
    def broken():
        raise KeyError("x")

    def nothing():
        raise pipeline.Unsendable("message body is no longer stored")

    def boom(*_):
        raise RuntimeError("bug")

    never = lambda *_: (_ for _ in ()).throw(AssertionError("not sent"))  # noqa: E731
    assert pipeline.attempt(dispatch(render=nothing), never, clock=lambda: T0).outcome == \
        Outcome("failed", error="message body is no longer stored")
    out = pipeline.attempt(dispatch(render=broken, payload="event"), never, clock=lambda: T0).outcome
    assert out.status == "failed" and out.error == "cannot render the event payload: KeyError: 'x'"
    out = pipeline.attempt(dispatch(), boom, clock=lambda: T0).outcome
    assert out.status == "deferred" and out.error == "internal error: RuntimeError: bug"


def test_a_payload_error_fails_with_its_reason_and_an_unreadable_template_defers(caplog):
    """ValueError is the payloads' word for a body that cannot be made (a template's error, an
    unknown dialect): failed with the reason as it stands, no traceback; NotNow: deferred."""
    from mxhook.payloads.templates import TemplateError

    def template_error():
        raise TemplateError("'nope' is undefined", 3)

    def unreadable():
        raise pipeline.NotNow("cannot read the template from rules.db: database is locked")

    never = lambda *_: (_ for _ in ()).throw(AssertionError("not sent"))  # noqa: E731
    out = pipeline.attempt(dispatch(render=template_error, payload="template v2"), never, clock=lambda: T0).outcome
    assert out == Outcome("failed", error="cannot render the template v2 payload: line 3: 'nope' is undefined")
    assert not any(r.exc_info for r in caplog.records)
    out = pipeline.attempt(dispatch(render=unreadable), never, clock=lambda: T0).outcome
    assert out == Outcome("deferred", error="cannot read the template from rules.db: database is locked")


def test_a_withheld_dispatch_is_no_attempt():
    def withhold(*_):
        raise pipeline.Withheld()

    done = pipeline.attempt(dispatch(), withhold, clock=lambda: T0)
    assert done.outcome is None and done.started == T0


def test_settle_applies_the_targets_retry_policy():
    d = dispatch(attempts=2, first_attempt_at=iso(T0 - 100))
    done = pipeline.Attempt(d, Outcome("deferred", 503, "HTTP 503", duration_ms=7), T0)
    r = pipeline.settle(done, T0 + 1, gone=None, rand=lambda: 0.5)
    assert (r.delivery_id, r.outcome, r.status, r.status_code, r.duration_ms) == (d.id, "deferred", "deferred", 503, 7)
    assert r.at == iso(T0) and r.next_attempt_at == iso(T0 + 61)
    late = pipeline.Attempt(d, Outcome("deferred", 503, "HTTP 503"), T0 + 86400)
    r = pipeline.settle(late, T0 + 86400, gone=None, rand=lambda: 0.5)
    assert r.status == "failed" and r.reason == "HTTP 503; gave up: retry period of 1 day ended"


def test_settle_numbers_the_attempt_from_the_count_state_db_keeps():
    """An exponential backoff: the wait after the attempt that follows `attempts` made."""
    target = Target(kind="rule", id=1, name="r1", url="https://h.example/", retry_interval=60,
                    retry_period=3, retry_backoff="exponential", retry_cap=600)
    waits = []
    for made in range(6):
        d = dispatch(target=target, attempts=made, first_attempt_at=iso(T0))
        r = pipeline.settle(pipeline.Attempt(d, Outcome("deferred", 503, "HTTP 503"), T0), T0,
                            gone=None, rand=lambda: 0.5)
        waits.append(to_datetime(r.next_attempt_at).timestamp() - T0)
    assert waits == [60, 120, 240, 480, 600, 600]


def test_odd_retry_settings_fall_back_to_the_defaults():
    d = dispatch(target=Target(kind="rule", id=1, name="r1", url="https://h.example/",
                               retry_interval="often", retry_period="long"))
    r = pipeline.settle(pipeline.Attempt(d, Outcome("deferred", 500, "HTTP 500"), T0), T0,
                        gone=None, rand=lambda: 0.5)
    assert r.status == "deferred" and r.next_attempt_at == iso(T0 + 60)


def test_a_410_asks_the_health_policy_and_notes_what_it_did():
    asked = []
    d = dispatch(id=statedb.BATCH_PREFIX + "1", owner=("endpoint", "4"))
    done = pipeline.Attempt(d, Outcome("failed", 410, "HTTP 410 Gone"), T0)
    r = pipeline.settle(done, T0, gone=lambda disp, o: asked.append((disp.owner, o.status_code)) or "; endpoint 4 disabled")
    assert asked == [(("endpoint", "4"), 410)]
    assert r.status == "failed" and r.reason == "HTTP 410 Gone; endpoint 4 disabled"


def run(parts: int, **kw) -> Dispatch:
    """A run of `parts` events (seqs 10, 11, ...): a request each, its body naming its seq."""
    bid = statedb.BATCH_PREFIX + "run"
    return dispatch(id=bid, owner=("endpoint", "4"), render=None, payload="msndr", parts=tuple(
        pipeline.Part(batching.run_part_id(bid, 10 + i, parts), 10 + i,
                      lambda i=i: SimpleNamespace(body=b"%d" % i, content_type="application/json"))
        for i in range(parts)), **kw)


def test_a_run_posts_a_request_per_part_under_its_own_id_in_one_call():
    calls = []
    d = run(3)
    done = pipeline.attempt(d, None, clock=lambda: T0, send_run=lambda t, reqs: calls.append(
        [(b.body, i) for b, i in reqs]) or [Outcome("succeeded", 200)] * len(reqs))
    assert calls == [[(b"0", "evb_run.10"), (b"1", "evb_run.11"), (b"2", "evb_run.12")]]
    assert [o.status for o in done.outcomes] == ["succeeded"] * 3
    # without send_run: `send`, one after the other
    sent = []
    pipeline.attempt(d, lambda t, b, i: sent.append(i) or Outcome("succeeded", 200), clock=lambda: T0)
    assert sent == ["evb_run.10", "evb_run.11", "evb_run.12"]
    assert batching.run_part_id("evb_x", 7, 1) == "evb_x"  # a run of one: the batch's own id


def test_a_part_that_cannot_be_rendered_fails_alone_and_the_others_are_posted():
    d = run(3)
    broken = pipeline.Part(d.parts[1].id, d.parts[1].seq, lambda: (_ for _ in ()).throw(ValueError("no name")))
    d.parts = (d.parts[0], broken, d.parts[2])
    posted = []
    done = pipeline.attempt(d, None, clock=lambda: T0, send_run=lambda t, reqs: posted.extend(
        i for _, i in reqs) or [Outcome("succeeded", 200)] * len(reqs))
    assert posted == ["evb_run.10", "evb_run.12"]
    assert [o.status for o in done.outcomes] == ["succeeded", "failed", "succeeded"]
    assert done.outcomes[1].error == "cannot render the msndr payload: no name"


def test_a_run_whose_requests_agree_is_one_result():
    d = run(3, attempts=1, first_attempt_at=iso(T0 - 10))
    outcomes = [Outcome("deferred", 503, "HTTP 503"), Outcome("deferred", 503, "HTTP 503", retry_after=120),
                Outcome("deferred", 502, "HTTP 502")]
    (r,) = pipeline.settle_run(pipeline.Attempt(d, outcomes[0], T0, outcomes=outcomes), T0, gone=None,
                               rand=lambda: 0.5)
    assert (r.delivery_id, r.status, r.split_from) == (d.id, "deferred", None)
    assert r.next_attempt_at == iso(T0 + 120)  # the longest Retry-After among them


def test_a_mixed_run_keeps_the_accepted_events_and_splits_off_the_others_under_their_ids():
    asked = []
    d = run(4, attempts=2, first_attempt_at=iso(T0 - 10))
    outcomes = [Outcome("succeeded", 200), Outcome("deferred", 503, "HTTP 503"),
                Outcome("failed", 410, "HTTP 410 Gone"), Outcome("succeeded", 200)]
    records = pipeline.settle_run(pipeline.Attempt(d, outcomes[0], T0, outcomes=outcomes), T0,
                                  gone=lambda disp, o: asked.append(o.status_code) or "; endpoint 4 disabled",
                                  rand=lambda: 0.5)
    assert [(r.delivery_id, r.status, r.split_from, r.seq) for r in records] == [
        (d.id, "succeeded", None, None),
        ("evb_run.11", "deferred", d.id, 11),
        ("evb_run.12", "failed", d.id, 12)]
    assert asked == [410] and records[2].reason == "HTTP 410 Gone; endpoint 4 disabled"
    assert records[1].next_attempt_at == iso(T0 + 60) and records[0].reason is None
    # none accepted: the run keeps those that came to what its first request came to
    outcomes = [Outcome("deferred", 503, "HTTP 503"), Outcome("failed", 400, "HTTP 400"),
                Outcome("deferred", 503, "HTTP 503")]
    records = pipeline.settle_run(pipeline.Attempt(run(3), outcomes[0], T0, outcomes=outcomes), T0,
                                  gone=None, rand=lambda: 0.5)
    assert [(r.delivery_id, r.status) for r in records] == [(d.id, "deferred"), ("evb_run.11", "failed")]
