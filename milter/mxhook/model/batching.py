"""When an event endpoint's pending events make a batch. Pure: the caller passes the time.

An endpoint gets a batch when `max_events` of its events are pending, or when the oldest
pending one has waited `interval` seconds (model.endpoints). A disabled endpoint gets none, and
neither does a busy one (its open batch is not settled yet: events reach an endpoint in order,
one batch at a time). A flush (`mxhook-spooler --once`) makes a batch of whatever is pending,
due or not.
"""
from __future__ import annotations

from typing import Mapping, Protocol


class BatchPolicy(Protocol):
    """What the policy reads of an endpoint (model.endpoints.Endpoint)."""

    enabled: bool
    interval: float
    max_events: int


def batch_due(count: int, oldest_added: float | None, *, interval: float, max_events: int,
              now: float) -> bool:
    """Whether `count` pending events make a batch at `now`: `max_events` are pending, or the
    oldest (pending since `oldest_added`, epoch seconds) has waited `interval` seconds."""
    if count <= 0:
        return False
    if count >= max_events:
        return True
    return oldest_added is not None and now - oldest_added >= interval


def due_batches(pending: Mapping[int, tuple[int, float | None]], endpoints: Mapping[int, BatchPolicy],
                now: float, *, busy=frozenset(), flush: bool = False) -> list[int]:
    """The endpoints (ids, in id order) for which a batch is to be made at `now`. `pending`
    maps an endpoint id to (pending count, capped at max_events; when the oldest became
    pending); unknown and disabled endpoints and those in `busy` get none. `flush`: every
    other endpoint with anything pending gets one."""
    out = []
    for endpoint_id in sorted(pending):
        ep = endpoints.get(endpoint_id)
        if ep is None or not ep.enabled or endpoint_id in busy:
            continue
        count, oldest = pending[endpoint_id]
        if count > 0 and (flush or batch_due(count, oldest, interval=ep.interval,
                                             max_events=ep.max_events, now=now)):
            out.append(endpoint_id)
    return out
