"""When an event endpoint's pending events make a batch, and how many may be open. Pure: the
caller passes the time and what the endpoint's payload posts per request.

An endpoint gets a batch when its batch size of events are pending, or when the oldest
pending one has waited `interval` seconds (model.endpoints). The batch size is `max_events`, or
for a payload that posts one event per request up to RUN_EVENTS of them (`batch_size`): a run,
posted as a request per event by one worker (delivery.pipeline), due as soon as an event is
pending. A disabled endpoint gets none,
and neither does a busy one: one whose open batches (posting, or waiting for a retry) are as
many as `open_limit` allows. A flush (`mxhook-spooler --once`) makes batches of whatever is
pending, due or not.

Order. A batching endpoint has one open batch at a time, so its events arrive in order. A
one-event-per-request endpoint (the smtp2go, paubox, msndr, mailgun and postmark dialects)
would get one event per round trip that way, far below the rate mail makes them: it may have
OPEN_PER_WORKER runs open per spooler worker (posted from a budget of the spooler's own, after
inbound deliveries and batches, so they leave room for those), so its events may arrive out
of order (and a retried one after later ones), as they do from the
systems those dialects copy, none of which promises an order (docs/payloads.md, "Batches, ids
and order"). The bound stays: a batch waiting for its retry is open too, so a receiver that is
down holds that many deferred batches and no more are made for it until one settles.
"""
from __future__ import annotations

from typing import Mapping, Protocol

# Events in a run: a one-per-request endpoint's batch, a request per event. The spooler's
# bookkeeping (a batch row, a dispatch, an attempt row, a log line, a loop step and its commit
# when it comes back) is per run, not per event: with a batch per event it cost more than the
# posts did. bench/events.py, msndr, CPU per posted event: runs of 32 ~176 µs, 64 ~145, 128
# and 256 ~105-140. Each event's request keeps its webhook-id across retries
# (`run_part_id`).
RUN_EVENTS = 256
# Runs a one-per-request endpoint may have open per spooler worker: the spooler's budget for
# such posts (daemons/spooler.py BULK_DEPTH per worker, beside the pool its inbound deliveries
# and batches use, and posted after them), so one run posts while the next is made.
OPEN_PER_WORKER = 2


class BatchPolicy(Protocol):
    """What the policy reads of an endpoint (model.endpoints.Endpoint)."""

    enabled: bool
    interval: float
    max_events: int


def batch_size(max_events: int, events_per_request: int | None) -> int:
    """Events per batch: a run of up to RUN_EVENTS (and max_events) for a payload of one event
    per request, else the payload's events per request, else the endpoint's max_events."""
    if events_per_request == 1:
        return max(1, min(max_events, RUN_EVENTS))
    return events_per_request or max_events


def open_limit(events_per_request: int | None, workers: int) -> int:
    """How many batches an endpoint may have open at once with `workers` posting (module
    docstring, "Order")."""
    return max(1, workers) * OPEN_PER_WORKER if events_per_request == 1 else 1


def run_part_id(batch_id: str, seq: int, size: int) -> str:
    """The webhook-id of one event's request in a run of `size` events (`seq`: its
    event_deliveries row): the batch's own id when it holds one event, else
    `<batch id>.<seq>`, which is also the id of the batch the event is split off into when it
    has to be retried alone (delivery.pipeline.settle_run): the id never changes."""
    return batch_id if size == 1 else f"{batch_id}.{seq}"


def batches_to_make(count: int, size: int, room: int) -> int:
    """How many batches `count` pending events make (a due endpoint) with `room` more open
    batches allowed: at least one, each of up to `size` events."""
    return max(1, min(room, -(-count // size)))


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
                now: float, *, busy=frozenset(), flush: bool = False,
                sizes: Mapping[int, int] | None = None, at_once=frozenset()) -> list[int]:
    """The endpoints (ids, in id order) for which batches are to be made at `now`. `pending`
    maps an endpoint id to (pending count, capped at what its batches can take; when the
    oldest became pending); unknown and disabled endpoints and those in `busy` get none.
    `sizes`: an endpoint's batch size where it is not its max_events (`batch_size`). `flush`:
    every other endpoint with anything pending gets them, as do those in `at_once` (runs:
    a one-per-request endpoint's events are posted as soon as they are pending)."""
    out = []
    for endpoint_id in sorted(pending):
        ep = endpoints.get(endpoint_id)
        if ep is None or not ep.enabled or endpoint_id in busy:
            continue
        count, oldest = pending[endpoint_id]
        if count > 0 and (flush or endpoint_id in at_once or batch_due(
                count, oldest, interval=ep.interval,
                max_events=sizes.get(endpoint_id, ep.max_events) if sizes else ep.max_events,
                now=now)):
            out.append(endpoint_id)
    return out
