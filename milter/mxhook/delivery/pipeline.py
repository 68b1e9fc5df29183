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
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Protocol

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
    render: Callable[[], Body]  # called on a worker thread; may raise Unsendable, NotNow
    # one of the many single-event posts of a one-per-request endpoint: posted after the
    # inbound deliveries and batches waiting in the pool, from a budget of its own
    bulk: bool = False

    @property
    def noun(self) -> str:
        return "event batch" if self.id.startswith(statedb.BATCH_PREFIX) else "delivery"


@dataclass
class Attempt:
    """What one attempt came to, before the retry policy is applied."""

    dispatch: Dispatch
    outcome: Outcome | None  # None: withheld, nothing was posted (nothing to record)
    started: float  # epoch seconds


Send = Callable[[Target, Body, str], Outcome]  # (target, body, webhook-id) -> outcome


def attempt(dispatch: Dispatch, send: Send, clock: Callable[[], float]) -> Attempt:
    """Worker thread: render and post once. Never raises; never touches state.db."""
    started = clock()
    try:
        try:
            body = dispatch.render()
        except Unsendable as exc:
            return Attempt(dispatch, Outcome("failed", error=str(exc)), started)
        except NotNow as exc:
            return Attempt(dispatch, Outcome("deferred", error=str(exc)), started)
        except ValueError as exc:  # the payloads' word for a body that cannot be made (a template's error)
            log.warning("%s: cannot render the %s payload: %s", dispatch.label, dispatch.payload, exc)
            return Attempt(dispatch, Outcome("failed", error=f"cannot render the {dispatch.payload} "
                                                             f"payload: {exc}"), started)
        except Exception as exc:
            log.exception("%s %s: cannot render the %s payload", dispatch.noun, dispatch.id, dispatch.payload)
            return Attempt(dispatch, Outcome("failed", error=f"cannot render the {dispatch.payload} payload: "
                                                             f"{type(exc).__name__}: {exc}"), started)
        return Attempt(dispatch, send(dispatch.target, body, dispatch.id), started)
    except Withheld:
        return Attempt(dispatch, None, started)
    except Exception as exc:  # a bug: retry (deferred) rather than lose the delivery or batch
        log.exception("%s %s: internal error", dispatch.noun, dispatch.id)
        return Attempt(dispatch, Outcome("deferred", error=f"internal error: {type(exc).__name__}: {exc}"),
                       started)


def settle(done: Attempt, now: float, *, gone: Callable[[Dispatch, Outcome], str],
           scale: float = 1.0, rand: Callable[[], float] = random.random) -> AttemptRecord:
    """The result of an attempt as state.db records it: the status it leads to and when the
    next attempt is due (model.retry.schedule with the target's policy and this attempt's
    number, one more than state.db's count; the default policy when the target's values are
    odd). `gone(dispatch, outcome)` is called for a 410 and returns a note for the reason (the
    health policy disables the rule/endpoint)."""
    d, outcome = done.dispatch, done.outcome
    try:
        first = to_datetime(d.first_attempt_at).timestamp() if d.first_attempt_at else done.started
        status, next_at, reason = schedule(outcome, d.target.retry, first, now, attempt=d.attempts + 1,
                                           scale=scale, rand=rand)
    except (TypeError, ValueError) as exc:
        log.error("%s %s: bad retry settings (%s); using the defaults", d.noun, d.id, exc)
        status, next_at, reason = schedule(outcome, DEFAULT_POLICY, done.started, now, attempt=1,
                                           scale=scale, rand=rand)
    if outcome.status_code == GONE:
        reason = (reason or "") + gone(d, outcome)
    log.info(
        "%s attempt=%d outcome=%s status=%s code=%s duration=%dms%s%s",
        d.label, d.attempts + 1, outcome.status, status,
        outcome.status_code if outcome.status_code is not None else "-", outcome.duration_ms,
        f" retry_in={next_at - now:.1f}s" if next_at is not None else "",
        f" error={reason!r}" if reason else "",
    )
    return AttemptRecord(
        delivery_id=d.id, at=iso(done.started), outcome=outcome.status, status=status,
        status_code=outcome.status_code, error=outcome.error, duration_ms=outcome.duration_ms,
        response_excerpt=outcome.response_excerpt,
        next_attempt_at=iso(next_at) if next_at is not None else None, reason=reason,
    )
