"""What mxhook-track leaves in the spool is what the spooler ingests: engagement events into
state.db, enriched from the message's queued event by queue id."""
from __future__ import annotations

import json

from mxhook import spool
from mxhook.model import tracktokens
from mxhook.model.events import Event, now_iso
from mxhook.store import ingest
from mxhook.store.statedb import StateStore
from tests.track.conftest import token


def test_track_events_are_ingested_and_enriched_from_the_queued_event(track, tmp_path):
    queued = Event("queued", now_iso(), "0" * 16 + "q" * 12, source="milter", queue_id="4ABC123",
                   recipient="alice@example.org", sender="news@shop.example", subject="Winter sale",
                   message_id="<m1@shop.example>")
    store = StateStore(str(tmp_path / "state.db"))
    try:
        assert ingest.records(store, [spool.event_record(queued)]) == 1
        track.get(f"/o/{token(tracktokens.OPEN)}", headers={"User-Agent": "Mozilla/5.0 (X11) Firefox/120.0"})
        track.get(f"/c/{token(tracktokens.CLICK)}")
        track.post(f"/u/{token(tracktokens.UNSUBSCRIBE)}")
        records = [r for r in spool.handed_over(track.spool_dir) if r.kind == "event"]
        assert ingest.records(store, records) == 3
        assert ingest.records(store, records) == 0  # a record read twice is ingested once
        rows = store.conn.execute("SELECT meta FROM events WHERE queue_id = '4ABC123' AND type != 'queued'"
                                  " ORDER BY id").fetchall()
        events = store.enrich([json.loads(meta) for (meta,) in rows])
    finally:
        store.close()
    assert [e["type"] for e in events] == ["opened", "clicked", "unsubscribed"]
    for e in events:
        assert (e["source"], e["subject"], e["sender"], e["message_id"]) == (
            "track", "Winter sale", "news@shop.example", "<m1@shop.example>")
    assert events[0]["engagement"]["client"] == "Firefox"
    assert events[1]["engagement"]["url"] == "https://shop.example/item?id=7&x=<y>"
