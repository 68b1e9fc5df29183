"""The retry policy (model.retry): pure functions, with the jitter's random source injected."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings as hsettings, strategies as hst

from mxhook.delivery.webhook import Outcome
from mxhook.model import retry
from mxhook.model.retry import RetryPolicy

NO_JITTER = lambda: 0.5  # noqa: E731  (the middle of [0, 1): factor 1.0)
FIXED = RetryPolicy(interval=60)
EXP = RetryPolicy(interval=60, backoff="exponential", cap=3600)


def fixed(interval):
    return RetryPolicy(interval=interval)


def test_schedule():
    t = RetryPolicy(interval=60, period=2)
    d = Outcome("deferred", 500, "HTTP 500")
    sched = lambda *a, **kw: retry.schedule(*a, attempt=1, rand=NO_JITTER, **kw)  # noqa: E731
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


def test_fixed_backoff_waits_the_interval_whatever_the_attempt():
    assert {retry.retry_wait(FIXED, n, rand=NO_JITTER) for n in (1, 2, 5, 50, 10 ** 6)} == {60.0}
    assert retry.DEFAULT_POLICY.backoff == "fixed"


def test_exponential_backoff_doubles_from_the_interval_up_to_the_cap():
    waits = [retry.retry_wait(EXP, n, rand=NO_JITTER) for n in range(1, 10)]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    # another interval and cap; the scale compresses both alike
    p = RetryPolicy(interval=10, backoff="exponential", cap=100)
    assert [retry.retry_wait(p, n, rand=NO_JITTER) for n in range(1, 6)] == [10, 20, 40, 80, 100]
    assert [retry.retry_wait(p, n, rand=NO_JITTER, scale=0.01) for n in range(1, 6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0])
    # a delivery deferred for a very long time: no overflow, still the cap
    assert retry.retry_wait(EXP, 10 ** 6, rand=NO_JITTER) == 3600
    # attempt numbers below 1 count as the first
    assert retry.retry_wait(EXP, 0, rand=NO_JITTER) == retry.retry_wait(EXP, -3, rand=NO_JITTER) == 60


@pytest.mark.parametrize("attempt, backoff", [(1, 60), (3, 240), (8, 3600)])
def test_exponential_jitter_bounds(attempt, backoff):
    """±10 % of the backoff, as for the fixed interval."""
    assert retry.retry_wait(EXP, attempt, rand=lambda: 0.0) == pytest.approx(backoff * 0.9)
    assert retry.retry_wait(EXP, attempt, rand=lambda: 0.999999) == pytest.approx(backoff * 1.1, rel=1e-5)
    rng = random.Random(attempt)
    waits = [retry.retry_wait(EXP, attempt, rand=rng.random) for _ in range(1000)]
    assert backoff * 0.9 <= min(waits) and max(waits) <= backoff * 1.1
    assert max(waits) - min(waits) > backoff * 0.15  # really spread, not a constant


def test_exponential_cap_and_interval_are_bounded_to_their_ranges():
    """A spool record cannot ask for a tighter (or looser) schedule than a rule can have."""
    tiny = RetryPolicy(interval=1, backoff="exponential", cap=1)
    assert retry.retry_wait(tiny, 1, rand=NO_JITTER) == 10  # both at their floor
    huge = RetryPolicy(interval=60, backoff="exponential", cap=10 ** 9)
    assert retry.retry_wait(huge, 40, rand=NO_JITTER) == 86400  # the cap's ceiling: a day
    # an absent cap (a record without one) is the default
    assert retry.retry_wait(RetryPolicy(60, 3, "exponential", None), 40, rand=NO_JITTER) == retry.DEFAULT_RETRY_CAP


def test_odd_backoff_values():
    # a record of an older mxhook has none: fixed
    assert retry.retry_wait(RetryPolicy(60, 3, None, None), 9, rand=NO_JITTER) == 60
    with pytest.raises(ValueError, match="retry backoff must be one of fixed, exponential, got 'linear'"):
        retry.retry_wait(RetryPolicy(60, 3, "linear"), 1, rand=NO_JITTER)
    with pytest.raises(TypeError):
        retry.retry_wait(EXP, None, rand=NO_JITTER)


@pytest.mark.parametrize("interval", [10, 60, 600])
def test_retry_jitter_bounds(interval):
    """±10 % of the interval: the extremes of rand, and a spread in between."""
    low = retry.retry_wait(fixed(interval), 1, rand=lambda: 0.0)
    high = retry.retry_wait(fixed(interval), 1, rand=lambda: 0.999999)
    assert low == pytest.approx(interval * 0.9) and high == pytest.approx(interval * 1.1, rel=1e-5)
    rng = random.Random(7)
    waits = [retry.retry_wait(fixed(interval), 1, rand=rng.random) for _ in range(2000)]
    assert min(waits) >= interval * 0.9 and max(waits) <= interval * 1.1
    assert max(waits) - min(waits) > interval * 0.15  # really spread, not a constant
    assert len({round(w, 6) for w in waits}) > 1000
    # scaled alike
    assert retry.retry_wait(fixed(interval), 1, rand=lambda: 0.0, scale=0.01) == pytest.approx(interval * 0.9 * 0.01)


def test_retry_interval_floor_and_ceiling():
    """A spool record cannot ask for a tighter (or looser) schedule than a rule can have."""
    assert retry.retry_wait(fixed(0.001), 1, rand=lambda: 0.0) == pytest.approx(9.0)
    assert retry.retry_wait(fixed(-5), 1, rand=lambda: 0.0) == pytest.approx(9.0)
    assert retry.retry_wait(fixed(None), 1, rand=NO_JITTER) == 60.0  # the default
    assert retry.retry_wait(fixed(86400), 1, rand=NO_JITTER) == 600.0
    assert retry.retry_wait(fixed(30), 1, rand=lambda: 7.0) == pytest.approx(33.0)  # a bad rand is clamped


def test_retry_after_bounds():
    # honoured exactly when longer than the jittered interval; never scaled
    assert retry.retry_wait(FIXED, 1, 300, rand=NO_JITTER) == 300
    assert retry.retry_wait(FIXED, 1, 300, rand=NO_JITTER, scale=0.01) == 300
    # never sooner than the jittered interval
    assert retry.retry_wait(FIXED, 1, 5, rand=lambda: 0.0) == pytest.approx(54.0)
    # bounded to an hour, and to [0, ...]
    assert retry.retry_wait(FIXED, 1, 10 ** 9, rand=NO_JITTER) == retry.RETRY_AFTER_MAX == 3600
    assert retry.retry_wait(FIXED, 1, -100, rand=NO_JITTER) == 60
    # and never past the end of the retry period
    t = RetryPolicy(interval=60, period=1)
    out = retry.schedule(Outcome("deferred", 429, "x", retry_after=3600), t, 0, 86400 - 100,
                         attempt=1, rand=NO_JITTER)
    assert out == ("deferred", 86400, "x")


def test_retry_after_lengthens_an_exponential_wait_but_never_shortens_it():
    assert retry.retry_wait(EXP, 2, 900, rand=NO_JITTER) == 900  # 120 s asked for 900
    assert retry.retry_wait(EXP, 5, 900, rand=NO_JITTER) == 960  # the backoff is longer
    assert retry.retry_wait(EXP, 5, 900, rand=NO_JITTER, scale=0.01) == 900  # never scaled


def test_an_exponential_schedule_until_the_retry_period_ends():
    """Attempt after attempt, as the spooler counts them: the waits double up to the cap, and
    the last attempt is at the end of the period."""
    policy = RetryPolicy(interval=60, period=1, backoff="exponential", cap=3600)
    d = Outcome("deferred", 503, "HTTP 503")
    now, attempt, times = 0.0, 1, [0.0]
    while True:
        status, nxt, reason = retry.schedule(d, policy, 0.0, now, attempt=attempt, rand=NO_JITTER)
        if status == "failed":
            break
        now, attempt = nxt, attempt + 1
        times.append(now)
    waits = [b - a for a, b in zip(times, times[1:])]
    assert waits[:8] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert set(waits[6:-1]) == {3600} and 0 < waits[-1] <= 3600
    assert times[-1] == 86400 and reason == "HTTP 503; gave up: retry period of 1 day ended"
    assert len(times) == 30  # 6 doublings (3780 s), then hourly to the end of the day


@hsettings(max_examples=300, deadline=None)
@given(interval=hst.integers(10, 600), u=hst.floats(0, 1, exclude_max=True),
       retry_after=hst.none() | hst.floats(-1e9, 1e9, allow_nan=False),
       scale=hst.sampled_from([1.0, 0.05, 0.01]))
def test_retry_wait_bounds_property(interval, u, retry_after, scale):
    wait = retry.retry_wait(fixed(interval), 1, retry_after, scale=scale, rand=lambda: u)
    jittered = interval * scale
    assert wait >= jittered * 0.9 - 1e-9  # the floor: never sooner than the jittered interval
    ra = min(max(retry_after or 0.0, 0.0), 3600.0)
    assert wait <= max(jittered * 1.1, ra) + 1e-9  # the ceiling: jitter or the bounded Retry-After
    if ra > jittered * 1.1:
        assert wait == ra  # honoured exactly (never scaled)


@hsettings(max_examples=300, deadline=None)
@given(interval=hst.integers(10, 600), cap=hst.integers(10, 86400), attempt=hst.integers(1, 10 ** 4),
       u=hst.floats(0, 1, exclude_max=True), retry_after=hst.none() | hst.floats(-1e9, 1e9, allow_nan=False),
       scale=hst.sampled_from([1.0, 0.05, 0.01]))
def test_exponential_wait_bounds_property(interval, cap, attempt, u, retry_after, scale):
    policy = RetryPolicy(interval=interval, backoff="exponential", cap=cap)
    wait = retry.retry_wait(policy, attempt, retry_after, scale=scale, rand=lambda: u)
    backoff = min(cap, interval * 2 ** min(attempt - 1, 30))
    ra = min(max(retry_after or 0.0, 0.0), 3600.0)
    # within ±10 % of the capped backoff (scaled), or the bounded Retry-After when longer
    assert backoff * scale * 0.9 - 1e-9 <= wait <= max(backoff * scale * 1.1, ra) + 1e-9
    assert wait <= max(cap * scale * 1.1, ra) + 1e-9  # never beyond the cap's jitter
    assert wait >= min(interval, cap) * scale * 0.9 - 1e-9  # never sooner than the first wait
    # the same draw of jitter never waits less for a later attempt
    later = retry.retry_wait(policy, attempt + 1, retry_after, scale=scale, rand=lambda: u)
    assert later >= wait
