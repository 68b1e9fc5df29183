"""One dispatch pipeline for inbound deliveries and event batches.

A `Dispatch` is one webhook to post: its id (the `webhook-id`, the same for every attempt and
replay), its `Target`, its body and the attempts so far. Inbound deliveries (one message, one
rule) and event batches (an endpoint's pending events, in order) differ only in how the
spooler picks them; from then on both go through the same steps:

    attempt(dispatch, send, clock)       worker thread: render the body, POST once -> Attempt
                                         (or nothing, when `send` withholds it)
    settle(attempt, now, ...)            main thread: the retry policy (model.retry), a 410's
                                         note from the health policy, the log line
                                         -> statedb.AttemptRecord, which `record_attempts` stores

The body is rendered on the worker (`Dispatch.render`), not when the dispatch is picked, so
rendering runs in the post pool and not on the spooler's loop.

A run (`Dispatch.parts`): an event batch of an endpoint whose payload takes one event per
request is posted as one request per event (`Part`: its own webhook-id and body), all by the
worker that took the dispatch (`send_run`: the requests of the run together). `settle_run`
gives the batch the result its requests share; where they differ, the batch keeps the
succeeded ones and every other event is split off into a batch of its own, named by the
webhook-id its request had, with that result: a retry posts it under the same webhook-id.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from mxhook.model.records import iso, to_datetime
from mxhook.delivery.webhook import Outcome
from mxhook.model.retry import DEFAULT_POLICY, schedule
from mxhook.model.targets import Target
from mxhook.store import statedb
from mxhook.store.statedb import AttemptRecord

log = logging.getLogger(__name__)

GONE = 410  # the receiver says the endpoint is gone for good: disable the rule/endpoint


class Body(Protocol):
    """A rendered payload (payloads.encodings.Rendered)."""

    body: bytes
    content_type: str


class Withheld(Exception):
    """Raised by `send` for a dispatch not to be posted after all (its target answered 410
    Gone while the dispatch waited in the pool): no attempt is made, and it stays due."""


class Unsendable(Exception):
    """Raised by a dispatch's `render` when there is nothing to send: the attempt is `failed`
    with this text."""


class NotNow(Exception):
    """Raised by a dispatch's `render` when its body cannot be made now but may be later (the
    template could not be read from rules.db): the attempt is `deferred` with this text."""


@dataclass
class Dispatch:
    id: str  # the webhook-id: a delivery id, or an event batch id (statedb.BATCH_PREFIX)
    target: Target
    attempts: int  # made so far
    first_attempt_at: str | None
    owner: tuple[str, str]  # (kind, ref) in target_health: whose health an attempt counts for
    label: str  # how log lines name it: "delivery <id> rule=<name>", "event batch <id> ..."
    payload: str  # how a render error names the payload: its format or "event", dialect, template
    render: Callable[[], Body] | None  # called on a worker thread; may raise Unsendable, NotNow
    # one of the many posts of a one-per-request endpoint: posted after the inbound deliveries
    # and batches waiting in the pool, from a budget of its own
    bulk: bool = False
    parts: tuple["Part", ...] = ()  # a run: one request per part, `render` unused

    @property
    def noun(self) -> str:
        return "event batch" if self.id.startswith(statedb.BATCH_PREFIX) else "delivery"


@dataclass(frozen=True)
class Part:
    """One request of a run: one event of the batch (`seq`: its place in state.db's
    event_deliveries), under its own webhook-id."""

    id: str
    seq: int
    render: Callable[[], Body]


@dataclass
class Attempt:
    """What one attempt came to, before the retry policy is applied."""

    dispatch: Dispatch
    outcome: Outcome | None  # None: withheld, nothing was posted (nothing to record)
    started: float  # epoch seconds
    outcomes: Sequence[Outcome] = ()  # a run's: one per part, in order (`outcome` is the first)


Send = Callable[[Target, Body, str], Outcome]  # (target, body, webhook-id) -> outcome
# (target, [(body, webhook-id), ...]) -> an outcome each, in order
SendRun = Callable[[Target, Sequence[tuple[Body, str]]], Sequence[Outcome]]


def _render(dispatch: Dispatch, render: Callable[[], Body]) -> Body | Outcome:
    """A body, or the outcome of an attempt whose body cannot be made."""
    try:
        return render()
    except Unsendable as exc:
        return Outcome("failed", error=str(exc))
    except NotNow as exc:
        return Outcome("deferred", error=str(exc))
    except ValueError as exc:  # the payloads' word for a body that cannot be made (a template's error)
        log.warning("%s: cannot render the %s payload: %s", dispatch.label, dispatch.payload, exc)
        return Outcome("failed", error=f"cannot render the {dispatch.payload} payload: {exc}")
    except Exception as exc:
        log.exception("%s %s: cannot render the %s payload", dispatch.noun, dispatch.id, dispatch.payload)
        return Outcome("failed", error=f"cannot render the {dispatch.payload} payload: "
                                       f"{type(exc).__name__}: {exc}")


def attempt(dispatch: Dispatch, send: Send, clock: Callable[[], float], *,
            send_run: SendRun | None = None) -> Attempt:
    """Worker thread: render and post once (a run: each part once, `send_run`, else `send`
    one after the other). Never raises; never touches state.db."""
    started = clock()
    try:
        if dispatch.parts:
            return _attempt_run(dispatch, send, send_run, started)
        body = _render(dispatch, dispatch.render)
        if isinstance(body, Outcome):
            return Attempt(dispatch, body, started)
        return Attempt(dispatch, send(dispatch.target, body, dispatch.id), started)
    except Withheld:
        return Attempt(dispatch, None, started)
    except Exception as exc:  # a bug: retry (deferred) rather than lose the delivery or batch
        log.exception("%s %s: internal error", dispatch.noun, dispatch.id)
        return Attempt(dispatch, Outcome("deferred", error=f"internal error: {type(exc).__name__}: {exc}"),
                       started)


def _attempt_run(dispatch: Dispatch, send: Send, send_run: SendRun | None, started: float) -> Attempt:
    outcomes: list[Outcome | None] = []
    todo: list[tuple[int, Body, str]] = []
    for i, part in enumerate(dispatch.parts):
        body = _render(dispatch, part.render)
        if isinstance(body, Outcome):
            outcomes.append(body)
        else:
            outcomes.append(None)
            todo.append((i, body, part.id))
    if todo:
        requests = [(body, part_id) for _, body, part_id in todo]
        if send_run is not None:
            answers = send_run(dispatch.target, requests)
        else:
            answers = [send(dispatch.target, body, part_id) for body, part_id in requests]
        for (i, _, _), answer in zip(todo, answers):
            outcomes[i] = answer
    return Attempt(dispatch, outcomes[0], started, outcomes=outcomes)


def settle(done: Attempt, now: float, *, gone: Callable[[Dispatch, Outcome], str],
           scale: float = 1.0, rand: Callable[[], float] = random.random) -> AttemptRecord:
    """The result of an attempt as state.db records it: the status it leads to and when the
    next attempt is due (model.retry.schedule with the target's policy and this attempt's
    number, one more than state.db's count; the default policy when the target's values are
    odd). `gone(dispatch, outcome)` is called for a 410 and returns a note for the reason (the
    health policy disables the rule/endpoint)."""
    d, outcome = done.dispatch, done.outcome
    status, next_at, reason = _schedule(d, outcome, done.started, now, scale, rand)
    if outcome.status_code == GONE:
        reason = (reason or "") + gone(d, outcome)
    _log_attempt(d.label, d.attempts + 1, outcome, status, next_at, now, reason)
    return _record(d.id, done.started, outcome, status, next_at, reason)


def settle_run(done: Attempt, now: float, *, gone: Callable[[Dispatch, Outcome], str],
               scale: float = 1.0, rand: Callable[[], float] = random.random) -> list[AttemptRecord]:
    """The results of a run's attempt (module docstring): one record for the batch, and one
    for each event split off into a batch of its own (`split_from`), each with the outcome
    of its request. The batch keeps the succeeded events, or, when none succeeded, those
    whose outcome the first one shares; a run whose requests all came to the same is one
    result, as a batch's. One log line for the batch, one for each event split off."""
    d = done.dispatch
    outcomes = list(done.outcomes)
    statuses = {o.status for o in outcomes}
    kept = "succeeded" if "succeeded" in statuses else outcomes[0].status
    note = ""
    gone_outcome = next((o for o in outcomes if o.status_code == GONE), None)
    if gone_outcome is not None:  # once per run: the health policy disables the endpoint
        note = gone(d, gone_outcome)
    own = [o for o in outcomes if o.status == kept]
    # the batch's outcome: the longest Retry-After among its requests, so none is retried sooner
    outcome = max(own, key=lambda o: o.retry_after or 0.0)
    status, next_at, reason = _schedule(d, outcome, done.started, now, scale, rand)
    if gone_outcome is not None and gone_outcome.status == kept:
        reason = (reason or "") + note
    split = len(outcomes) - len(own)
    _log_attempt(f"{d.label} requests={len(outcomes)}" + (f" split={split}" if split else ""),
                 d.attempts + 1, outcome, status, next_at, now, reason)
    records = [_record(d.id, done.started, outcome, status, next_at, reason)]
    for part, part_outcome in zip(d.parts, outcomes):
        if part_outcome.status == kept:
            continue
        status, next_at, reason = _schedule(d, part_outcome, done.started, now, scale, rand)
        if part_outcome is gone_outcome:
            reason = (reason or "") + note
        _log_attempt(f"{d.label} split_off={part.id}", d.attempts + 1, part_outcome,
                     status, next_at, now, reason)
        records.append(_record(part.id, done.started, part_outcome, status, next_at, reason,
                               split_from=d.id, seq=part.seq))
    return records


def _schedule(d: Dispatch, outcome: Outcome, started: float, now: float, scale: float,
              rand: Callable[[], float]) -> tuple[str, float | None, str | None]:
    try:
        first = to_datetime(d.first_attempt_at).timestamp() if d.first_attempt_at else started
        return schedule(outcome, d.target.retry, first, now, attempt=d.attempts + 1,
                        scale=scale, rand=rand)
    except (TypeError, ValueError) as exc:
        log.error("%s %s: bad retry settings (%s); using the defaults", d.noun, d.id, exc)
        return schedule(outcome, DEFAULT_POLICY, started, now, attempt=1, scale=scale, rand=rand)


def _log_attempt(label: str, number: int, outcome: Outcome, status: str, next_at: float | None,
                 now: float, reason: str | None) -> None:
    log.info(
        "%s attempt=%d outcome=%s status=%s code=%s duration=%dms%s%s",
        label, number, outcome.status, status,
        outcome.status_code if outcome.status_code is not None else "-", outcome.duration_ms,
        f" retry_in={next_at - now:.1f}s" if next_at is not None else "",
        f" error={reason!r}" if reason else "",
    )


def _record(delivery_id: str, started: float, outcome: Outcome, status: str, next_at: float | None,
            reason: str | None, **split) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=delivery_id, at=iso(started), outcome=outcome.status, status=status,
        status_code=outcome.status_code, error=outcome.error, duration_ms=outcome.duration_ms,
        response_excerpt=outcome.response_excerpt,
        next_attempt_at=iso(next_at) if next_at is not None else None, reason=reason, **split,
    )
