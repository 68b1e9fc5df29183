"""The retry policy of a delivery target: when a deferred attempt is tried again, and when it
gives up. Pure: the caller passes the time (`now`) and the source of jitter (`rand`).

A deferred attempt waits the target's retry interval, bounded to RETRY_INTERVAL_RANGE, with
±RETRY_JITTER jitter (so deliveries deferred together do not come back together), or longer
when the receiver sent a Retry-After (at most RETRY_AFTER_MAX, never scaled). It is tried until
`period` days after the first attempt, then it is `failed`. `scale` ([spooler]
retry_time_scale) multiplies interval and period so tests and the demo run the real schedule
in seconds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Protocol

DAY = 86400.0
RETRY_INTERVAL_RANGE = (10, 600)  # seconds
RETRY_PERIOD_RANGE = (1, 10)  # days
RETRY_JITTER = 0.1  # the retry interval varies by up to ±10 %
DEFAULT_RETRY_INTERVAL = 60.0  # a target without one (rules and endpoints always have one)
DEFAULT_RETRY_PERIOD = 3  # days
RETRY_AFTER_MAX = 3600.0  # a Retry-After is honoured up to an hour


@dataclass(frozen=True)
class RetryPolicy:
    """A target's retry interval (seconds) and retry period (days), as configured. Values
    come from spool records and state.db as they were written, so they are not coerced here:
    `schedule` reads them, and its caller falls back to the defaults when they are odd."""

    interval: float | None = DEFAULT_RETRY_INTERVAL
    period: float | None = DEFAULT_RETRY_PERIOD


DEFAULT_POLICY = RetryPolicy()


class Outcome(Protocol):
    """What `schedule` reads of one attempt's outcome (delivery.webhook.Outcome)."""

    status: str  # succeeded | deferred | failed
    error: str | None
    retry_after: float | None


def retry_wait(interval, retry_after: float | None = None, *, scale: float = 1.0,
               rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before the next attempt of a deferred delivery or batch.

    The retry interval, bounded to RETRY_INTERVAL_RANGE (10..600 s; a spool record cannot ask
    for less), times a jitter factor drawn uniformly from [1 - RETRY_JITTER, 1 + RETRY_JITTER],
    times `scale`. The floor is therefore (1 - RETRY_JITTER) * 10 s * scale. A Retry-After
    from the receiver, bounded to [0, RETRY_AFTER_MAX] s and never scaled, lengthens the wait
    (we never come back sooner than asked), and never shortens it below the jittered interval.
    `rand` returns a float in [0, 1) (tests inject a fixed one)."""
    low, high = RETRY_INTERVAL_RANGE
    base = min(max(float(interval or DEFAULT_RETRY_INTERVAL), low), high)
    jitter = 1.0 + RETRY_JITTER * (2.0 * min(max(rand(), 0.0), 1.0) - 1.0)
    wait_s = base * jitter * scale
    if retry_after:
        wait_s = max(wait_s, min(max(float(retry_after), 0.0), RETRY_AFTER_MAX))
    return wait_s


def schedule(outcome: Outcome, policy: RetryPolicy, first_attempt_at: float, now: float,
             *, scale: float = 1.0, rand: Callable[[], float] = random.random
             ) -> tuple[str, float | None, str | None]:
    """(delivery status, next attempt time or None, log reason) after an attempt.

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
    wait_s = retry_wait(policy.interval, outcome.retry_after, scale=scale, rand=rand)
    return "deferred", min(now + wait_s, deadline), outcome.error
