"""Spool files written by earlier code (tests/unit/fixtures/spool_v1, written by the code of
the "layers" tree) are still read, checked and ingested, and records encode to the same bytes."""
import os

import pytest

from mxhook import spool
from mxhook.model.events import Event
from mxhook.model.records import DeniedRecord, InboundRecord
from mxhook.store import ingest, logs
from mxhook.store.statedb import StateStore

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "spool_v1")
FILES = ("inbound.spool", "denied.spool", "events.spool")


def read(name):
    with open(os.path.join(FIXTURES, name), "rb") as fh:
        return fh.read()


def lines(data):
    """(metadata, payload) of each record: decoding takes id and kind out of the metadata, so
    a decoded record encodes its keys in another order."""
    return [spool._frame_at(data, 0)[0]] if data.count(spool.MAGIC) == 1 else [
        spool._frame_at(spool.MAGIC + part, 0)[0] for part in data.split(spool.MAGIC)[1:]]


@pytest.mark.parametrize("name", FILES)
def test_old_spool_files_decode_check_and_encode_the_same(name):
    data = read(name)
    records = spool.decode_many(data)
    for record in records:
        ingest.check_record(record)
    assert lines(b"".join(spool.encode(r) for r in records)) == lines(data)


def test_events_written_again_are_the_same_bytes():
    data = read("events.spool")
    again = [spool.event_record(Event.from_meta(r.meta, r.id)) for r in spool.decode_many(data)]
    assert b"".join(spool.encode(r) for r in again) == data


@pytest.mark.parametrize("name,schema", [("inbound.spool", InboundRecord), ("denied.spool", DeniedRecord)])
def test_messages_written_again_are_the_same_bytes(name, schema):
    data = read(name)
    [record] = spool.decode_many(data)
    typed = ingest.check_record(record)
    assert type(typed) is schema
    assert spool.encode(spool.Record(record.id, record.kind, typed.to_meta(), record.payload)) == data


def test_typed_fields_of_old_records():
    [inbound] = spool.decode_many(read("inbound.spool"))
    message = ingest.check_record(inbound)
    assert (message.queue_id, message.subject, message.sender) == ("4QX1", "Caf\u00e9 urgent", "alice@sender.example")
    [routed] = message.deliveries
    assert (routed.name, routed.recipients, routed.target["endpoint"]) == (
        "sales", ["sales@ours.example"], "https://hook.example/sales")
    [denied] = spool.decode_many(read("denied.spool"))
    assert ingest.check_record(denied).recipients == ["nobody@ours.example"]
    events = [ingest.check_record(r) for r in spool.decode_many(read("events.spool"))]
    assert [(e.type, e.source) for e in events] == [
        ("queued", "milter"), ("bounced", "log"), ("failed", "log"), ("registered", "cli"), ("bounced", "dsn")]
    assert events[0].custom_headers == {"x-campaign": "spring"} and events[1].delay == 1.5


def test_old_spool_files_are_ingested(tmp_path):
    store = StateStore(str(tmp_path / "state.db"))
    try:
        records = [r for name in FILES for r in spool.decode_many(read(name))]
        # the delivery-status report is about no message sent from here: left out
        assert ingest.records(store, records) == len(records) - 1
        counts = logs.counts(store)
        assert (counts["messages"], counts["denied"], counts["deliveries"]["queued"]) == (1, 1, 1)
        assert counts["events"] == 4
    finally:
        store.close()
