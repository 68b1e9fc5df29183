"""The retry policy of a delivery target: when a deferred attempt is tried again, and when it
gives up. Pure: the caller passes the time (`now`), the number of the attempt just made, and
the source of jitter (`rand`).

The target's backoff says how the wait grows:
- `fixed` (the seed's, and the default): every wait is the retry interval.
- `exponential`: the wait after attempt n is min(cap, interval * 2**(n-1)): the interval
  after the first attempt, doubling after each further one, up to the target's retry cap.
  Standard Webhooks recommends exponential backoff with some random jitter over a schedule
  of days; Svix's schedule grows so (5 s, 5 min, 30 min, 2 h, 5 h, 10 h).
Either wait is bounded to RETRY_INTERVAL_RANGE (the interval) and RETRY_CAP_RANGE (the cap),
then varies by ±RETRY_JITTER, the same in both modes, so deliveries deferred together do not
come back together, and none comes back sooner than 90 % of the interval (AWS's "full jitter",
a wait drawn from 0 to the backoff, could retry at once). It is longer when the receiver sent
a Retry-After (at most RETRY_AFTER_MAX, never scaled). It is tried until `period` days after
the first attempt, then it is `failed`. `scale` ([spooler] retry_time_scale) multiplies waits
and period so tests and the demo run the real schedule in seconds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Protocol

DAY = 86400.0
FIXED, EXPONENTIAL = "fixed", "exponential"
BACKOFFS = (FIXED, EXPONENTIAL)
RETRY_INTERVAL_RANGE = (10, 600)  # seconds
RETRY_PERIOD_RANGE = (1, 10)  # days
RETRY_CAP_RANGE = (10, 86400)  # seconds: up to a day, where Standard Webhooks' example schedule ends
RETRY_JITTER = 0.1  # a wait varies by up to ±10 %
DEFAULT_RETRY_INTERVAL = 60.0  # a target without one (rules and endpoints always have one)
DEFAULT_RETRY_PERIOD = 3  # days
DEFAULT_RETRY_CAP = 3600  # seconds
RETRY_AFTER_MAX = 3600.0  # a Retry-After is honoured up to an hour
_MAX_DOUBLINGS = 30  # 10 s * 2**30 is beyond any cap; a larger exponent would only risk overflow


@dataclass(frozen=True)
class RetryPolicy:
    """A target's retry interval (seconds), retry period (days), backoff (BACKOFFS) and the
    cap of an exponential backoff (seconds), as configured. Values come from spool records and
    state.db as they were written, so they are not coerced here: `schedule` reads them (None,
    as a record of an older mxhook has, is the default), and its caller falls back to the
    defaults when they are odd."""

    interval: float | None = DEFAULT_RETRY_INTERVAL
    period: float | None = DEFAULT_RETRY_PERIOD
    backoff: str | None = FIXED
    cap: float | None = DEFAULT_RETRY_CAP


DEFAULT_POLICY = RetryPolicy()


class Outcome(Protocol):
    """What `schedule` reads of one attempt's outcome (delivery.webhook.Outcome)."""

    status: str  # succeeded | deferred | failed
    error: str | None
    retry_after: float | None


def _bounded(value, bounds: tuple[int, int]) -> float:
    low, high = bounds
    return min(max(float(value), low), high)


def backoff_wait(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after attempt number `attempt` (1: the first) failed, before jitter and
    scale: the retry interval (fixed), or min(cap, interval * 2**(attempt-1)) (exponential).
    Interval and cap are bounded to their ranges (a spool record cannot ask for less). Raises
    ValueError for a backoff that is not one of BACKOFFS, TypeError for an attempt that is
    not a number."""
    interval = _bounded(policy.interval or DEFAULT_RETRY_INTERVAL, RETRY_INTERVAL_RANGE)
    backoff = policy.backoff or FIXED
    if backoff == FIXED:
        return interval
    if backoff != EXPONENTIAL:
        raise ValueError(f"retry backoff must be one of {', '.join(BACKOFFS)}, got {backoff!r}")
    cap = _bounded(policy.cap or DEFAULT_RETRY_CAP, RETRY_CAP_RANGE)
    doublings = min(max(int(attempt) - 1, 0), _MAX_DOUBLINGS)
    return min(cap, interval * 2.0 ** doublings)


def retry_wait(policy: RetryPolicy, attempt: int, retry_after: float | None = None, *,
               scale: float = 1.0, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before the next attempt of a deferred delivery or batch.

    `backoff_wait(policy, attempt)`, times a jitter factor drawn uniformly from
    [1 - RETRY_JITTER, 1 + RETRY_JITTER], times `scale`. The floor is therefore
    (1 - RETRY_JITTER) * 10 s * scale, the ceiling (1 + RETRY_JITTER) * the cap (exponential) or
    600 s (fixed), times `scale`. A Retry-After from the receiver, bounded to
    [0, RETRY_AFTER_MAX] s and never scaled, lengthens the wait (we never come back sooner than
    asked), and never shortens it below the jittered wait. `rand` returns a float in [0, 1)
    (tests inject a fixed one)."""
    jitter = 1.0 + RETRY_JITTER * (2.0 * min(max(rand(), 0.0), 1.0) - 1.0)
    wait_s = backoff_wait(policy, attempt) * jitter * scale
    if retry_after:
        wait_s = max(wait_s, min(max(float(retry_after), 0.0), RETRY_AFTER_MAX))
    return wait_s


def schedule(outcome: Outcome, policy: RetryPolicy, first_attempt_at: float, now: float,
             *, attempt: int, scale: float = 1.0, rand: Callable[[], float] = random.random
             ) -> tuple[str, float | None, str | None]:
    """(delivery status, next attempt time or None, log reason) after attempt number `attempt`
    (1: the first; the caller counts them, as state.db does).

    Deferred outcomes wait `retry_wait(...)`, and never past the end of the retry period
    (first attempt + period days * scale), so there is a last attempt at that moment; a
    deferred outcome at or after it makes the delivery `failed`. Raises TypeError/ValueError
    for odd policy values."""
    if outcome.status != "deferred":
        return outcome.status, None, outcome.error
    period_days = policy.period or DEFAULT_RETRY_PERIOD
    deadline = first_attempt_at + period_days * DAY * scale
    if now >= deadline:
        days = f"{period_days:g} day{'s' if period_days != 1 else ''}"
        return "failed", None, f"{outcome.error or 'deferred'}; gave up: retry period of {days} ended"
    wait_s = retry_wait(policy, attempt, outcome.retry_after, scale=scale, rand=rand)
    return "deferred", min(now + wait_s, deadline), outcome.error
