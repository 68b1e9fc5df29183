"""Open event batches that no longer fit their endpoint: its payload changed after they were
made (`mxhook endpoint edit --dialect`, `--max-events`) and now takes fewer events per request,
e.g. a 50-event native batch, deferred after an attempt, for an endpoint that now posts SMTP2GO's
one event per request.

A batch's membership is fixed when it is made, so that a retry posts the same events under the
same id (`webhook-id`); its body is made at each attempt, in the endpoint's payload of that
moment. A batch of more events than that payload takes would fail as a whole, so the spooler
splits it before picking it (`split_oversized`): it keeps its oldest events, as many as one
request takes, with its id, attempts and retry schedule; the others go back to pending, where
they come before every newer event (they keep their place in arrival order) and are batched
in the new shape at once. Nothing is lost; an event of a type the new payload has no name for
fails alone, with that reason, when its own request is rendered.

Run by the spooler on its main thread, the only writer of batches, on batches that are neither
posting nor waiting for their result to be written: one in flight is posted in the shape it
had, and split at the next pick if it is deferred.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from mxhook.store.migrations import transaction
from mxhook.store.statedb import EventBatch, StateStore


def split_oversized(state: StateStore, open_batches: Mapping[int, Iterable[EventBatch]],
                    sizes: Mapping[int, int], busy: Iterable[str]) -> int:
    """Split the open batches of each endpoint in `sizes` (endpoint id -> events per request
    now) that hold more than that and are not `busy` (posting, or their result not written),
    in one transaction; each batch's `size` is updated in place. Returns how many events went
    back to pending."""
    busy = set(busy)
    over = [(batch, sizes[endpoint_id]) for endpoint_id, batches in open_batches.items()
            if endpoint_id in sizes for batch in batches
            if batch.size > sizes[endpoint_id] and batch.id not in busy]
    if not over:
        return 0
    returned = 0
    with transaction(state.conn) as conn:
        for batch, size in over:
            seqs = [row[0] for row in conn.execute(
                "SELECT seq FROM event_deliveries WHERE endpoint_id = ? AND batch_id = ? ORDER BY seq",
                (batch.endpoint_id, batch.id))]
            rest = seqs[size:]
            conn.executemany("UPDATE event_deliveries SET batch_id = NULL WHERE seq = ?",
                             [(seq,) for seq in rest])
            kept = len(seqs) - len(rest)
            conn.execute("UPDATE event_batches SET size = ? WHERE id = ?", (kept, batch.id))
            batch.size = kept
            returned += len(rest)
    return returned
