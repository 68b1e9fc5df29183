"""model/batching.py: when an endpoint's pending events make a batch, at a time the test gives."""
from __future__ import annotations

from mxhook.model.batching import batch_due, due_batches
from mxhook.model.endpoints import Endpoint
from mxhook.model.targets import Destination

T0 = 1_000.0


class Clock:
    """The time the test says it is."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_batch_due_by_interval_or_max_events():
    assert not batch_due(0, None, interval=10, max_events=100, now=T0)
    assert not batch_due(0, T0 - 100, interval=10, max_events=100, now=T0)  # nothing pending
    assert not batch_due(5, T0 - 5, interval=10, max_events=100, now=T0)
    assert batch_due(5, T0 - 10, interval=10, max_events=100, now=T0)
    assert batch_due(100, T0 - 0.1, interval=10, max_events=100, now=T0)
    assert not batch_due(99, None, interval=10, max_events=100, now=T0)  # no time known: by count only


def test_a_batch_becomes_due_as_the_clock_moves():
    clock = Clock(T0)
    eps = {1: Endpoint(Destination("https://a.example/"), id=1, interval=10, max_events=100)}
    pending = {1: (3, T0)}
    assert due_batches(pending, eps, clock()) == []
    clock.now += 9.9
    assert due_batches(pending, eps, clock()) == []
    clock.now += 0.1
    assert due_batches(pending, eps, clock()) == [1]


def test_due_batches_leaves_out_disabled_busy_and_unknown_endpoints():
    eps = {1: Endpoint(Destination("https://a.example/"), id=1, interval=10, max_events=100),
           2: Endpoint(Destination("https://b.example/"), id=2, interval=60, max_events=100),
           3: Endpoint(Destination("https://c.example/"), id=3, enabled=False),
           4: Endpoint(Destination("https://d.example/"), id=4, max_events=100)}
    pending = {4: (100, 999.0), 1: (3, 980.0), 2: (3, 980.0), 3: (500, 0.0), 9: (5, 0.0)}
    assert due_batches(pending, eps, T0) == [1, 4]  # in id order
    assert due_batches(pending, eps, T0, busy={4}) == [1]


def test_flush_makes_a_batch_of_whatever_is_pending():
    eps = {1: Endpoint(Destination("https://a.example/"), id=1, interval=600, max_events=1000),
           2: Endpoint(Destination("https://b.example/"), id=2),
           3: Endpoint(Destination("https://c.example/"), id=3, enabled=False)}
    pending = {1: (1, T0), 2: (0, None), 3: (5, 0.0)}
    assert due_batches(pending, eps, T0) == []
    assert due_batches(pending, eps, T0, flush=True) == [1]
    assert due_batches(pending, eps, T0, flush=True, busy={1}) == []


def test_batch_size_and_open_limit_by_events_per_request():
    from mxhook.model.batching import batch_size, batches_to_make, open_limit

    assert batch_size(1000, None) == 1000 and batch_size(1000, 1) == 256  # a run of RUN_EVENTS
    assert batch_size(10, 1) == 10 and batch_size(0, 1) == 1  # never more than max_events
    assert open_limit(None, 8) == 1  # batches: one open at a time, events in order
    # one per request: OPEN_PER_WORKER runs open per spooler worker, a bound (retries waiting count too)
    assert open_limit(1, 8) == 16 and open_limit(1, 32) == 64 and open_limit(1, 0) == 2
    assert batches_to_make(10, 1, 4) == 4 and batches_to_make(2, 1, 4) == 2
    assert batches_to_make(2500, 1000, 1) == 1 and batches_to_make(0, 1, 4) == 1


def test_due_batches_with_a_batch_size_of_one_is_due_at_once():
    from types import SimpleNamespace

    from mxhook.model.batching import due_batches

    eps = {1: SimpleNamespace(enabled=True, interval=600, max_events=1000),
           2: SimpleNamespace(enabled=True, interval=600, max_events=1000)}
    pending = {1: (1, 100.0), 2: (1, 100.0)}
    assert due_batches(pending, eps, 101.0, sizes={1: 1}) == [1]
    # a run (one event per request) is due as soon as an event is pending, whatever its size
    assert due_batches(pending, eps, 101.0, sizes={1: 32, 2: 32}, at_once={2}) == [2]
