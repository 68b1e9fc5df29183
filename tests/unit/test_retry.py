"""The retry policy (model.retry): pure functions, with the jitter's random source injected."""
from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as hst

from mxhook.delivery.webhook import Outcome
from mxhook.model import retry
from mxhook.model.retry import RetryPolicy

NO_JITTER = lambda: 0.5  # noqa: E731  (the middle of [0, 1): factor 1.0)


def test_schedule():
    t = RetryPolicy(interval=60, period=2)
    d = Outcome("deferred", 500, "HTTP 500")
    sched = lambda *a, **kw: retry.schedule(*a, rand=NO_JITTER, **kw)  # noqa: E731
    assert sched(Outcome("succeeded", 200), t, 0, 5) == ("succeeded", None, None)
    assert sched(Outcome("failed", 404, "HTTP 404"), t, 0, 5) == ("failed", None, "HTTP 404")
    assert sched(d, t, 0, 5) == ("deferred", 65, "HTTP 500")
    # Retry-After wins when longer, never shortens the interval
    assert sched(Outcome("deferred", 429, "x", retry_after=300), t, 0, 5)[1] == 305
    assert sched(Outcome("deferred", 429, "x", retry_after=1), t, 0, 5)[1] == 65
    # never past the end of the retry period: a last attempt exactly then
    end = 2 * 86400
    assert sched(d, t, 0, end - 10) == ("deferred", end, "HTTP 500")
    status, nxt, reason = sched(d, t, 0, end)
    assert (status, nxt) == ("failed", None) and reason == "HTTP 500; gave up: retry period of 2 days ended"
    # the scale compresses interval and period alike
    assert sched(d, t, 0, 5, scale=0.01) == ("deferred", 5.6, "HTTP 500")
    assert sched(d, t, 0, 0.02 * 86400, scale=0.01)[0] == "failed"


@pytest.mark.parametrize("interval", [10, 60, 600])
def test_retry_jitter_bounds(interval):
    """±10 % of the interval: the extremes of rand, and a spread in between."""
    low = retry.retry_wait(interval, rand=lambda: 0.0)
    high = retry.retry_wait(interval, rand=lambda: 0.999999)
    assert low == pytest.approx(interval * 0.9) and high == pytest.approx(interval * 1.1, rel=1e-5)
    rng = __import__("random").Random(7)
    waits = [retry.retry_wait(interval, rand=rng.random) for _ in range(2000)]
    assert min(waits) >= interval * 0.9 and max(waits) <= interval * 1.1
    assert max(waits) - min(waits) > interval * 0.15  # really spread, not a constant
    assert len({round(w, 6) for w in waits}) > 1000
    # scaled alike
    assert retry.retry_wait(interval, rand=lambda: 0.0, scale=0.01) == pytest.approx(interval * 0.9 * 0.01)


def test_retry_interval_floor_and_ceiling():
    """A spool record cannot ask for a tighter (or looser) schedule than a rule can have."""
    assert retry.retry_wait(0.001, rand=lambda: 0.0) == pytest.approx(9.0)
    assert retry.retry_wait(-5, rand=lambda: 0.0) == pytest.approx(9.0)
    assert retry.retry_wait(None, rand=NO_JITTER) == 60.0  # the default
    assert retry.retry_wait(86400, rand=NO_JITTER) == 600.0
    assert retry.retry_wait(30, rand=lambda: 7.0) == pytest.approx(33.0)  # a bad rand is clamped


def test_retry_after_bounds():
    # honoured exactly when longer than the jittered interval; never scaled
    assert retry.retry_wait(60, 300, rand=NO_JITTER) == 300
    assert retry.retry_wait(60, 300, rand=NO_JITTER, scale=0.01) == 300
    # never sooner than the jittered interval
    assert retry.retry_wait(60, 5, rand=lambda: 0.0) == pytest.approx(54.0)
    # bounded to an hour, and to [0, ...]
    assert retry.retry_wait(60, 10 ** 9, rand=NO_JITTER) == retry.RETRY_AFTER_MAX == 3600
    assert retry.retry_wait(60, -100, rand=NO_JITTER) == 60
    # and never past the end of the retry period
    t = RetryPolicy(interval=60, period=1)
    out = retry.schedule(Outcome("deferred", 429, "x", retry_after=3600), t, 0, 86400 - 100, rand=NO_JITTER)
    assert out == ("deferred", 86400, "x")




@hsettings(max_examples=300, deadline=None)
@given(interval=hst.integers(10, 600), u=hst.floats(0, 1, exclude_max=True),
       retry_after=hst.none() | hst.floats(-1e9, 1e9, allow_nan=False),
       scale=hst.sampled_from([1.0, 0.05, 0.01]))
def test_retry_wait_bounds_property(interval, u, retry_after, scale):
    wait = retry.retry_wait(interval, retry_after, scale=scale, rand=lambda: u)
    jittered = interval * scale
    assert wait >= jittered * 0.9 - 1e-9  # the floor: never sooner than the jittered interval
    ra = min(max(retry_after or 0.0, 0.0), 3600.0)
    assert wait <= max(jittered * 1.1, ra) + 1e-9  # the ceiling: jitter or the bounded Retry-After
    if ra > jittered * 1.1:
        assert wait == ra  # honoured exactly (never scaled)
