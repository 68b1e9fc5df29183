"""store/endpointbatches.py: open batches bigger than their endpoint's payload now takes are
split, keeping their id and oldest events; the rest goes back to pending in arrival order.
The spooler's use of it: tests/spooler/test_endpoint_changes.py."""
from __future__ import annotations

from mxhook.store import endpointbatches, ingest
from tests.unit.test_state import EP_ALL, event, store  # noqa: F401  (store: a fixture)


def members(store, batch_id):
    return [r[0] for r in store.conn.execute(
        "SELECT event_id FROM event_deliveries WHERE batch_id IS ? AND endpoint_id = 1 ORDER BY seq",
        (batch_id,))]


def test_a_batch_over_the_size_keeps_its_oldest_events_and_the_rest_is_pending_first(store):
    ingest.records(store, [event(f"e{i}") for i in range(5)], endpoints=[EP_ALL])
    (batch,) = store.create_batches([(1, 4, 1, None)], 0)
    assert members(store, batch.id) == ["e0", "e1", "e2", "e3"] and members(store, None) == ["e4"]
    assert endpointbatches.split_oversized(store, {1: [batch]}, {1: 1}, busy=()) == 3
    assert batch.size == 1 == store.batch(batch.id).size
    assert members(store, batch.id) == ["e0"] and members(store, None) == ["e1", "e2", "e3", "e4"]
    made = store.create_batches([(1, 1, 2, None)], 0)
    assert [members(store, b.id) for b in made] == [["e1"], ["e2"]]


def test_busy_batches_other_endpoints_and_batches_that_fit_are_left_alone(store):
    ingest.records(store, [event(f"e{i}") for i in range(3)], endpoints=[EP_ALL])
    (batch,) = store.create_batches([(1, 3, 1, None)], 0)
    assert endpointbatches.split_oversized(store, {1: [batch]}, {1: 1}, busy={batch.id}) == 0
    assert endpointbatches.split_oversized(store, {1: [batch]}, {2: 1}, busy=()) == 0
    assert endpointbatches.split_oversized(store, {1: [batch]}, {1: 3}, busy=()) == 0
    assert members(store, batch.id) == ["e0", "e1", "e2"] and store.batch(batch.id).size == 3
