"""model/records.py and Event.to_meta/from_meta: the schema of spool records' metadata."""
import pytest

from mxhook.model.events import Event
from mxhook.model.records import DeniedRecord, InboundRecord, RecordError, Routed

TARGET = {"id": 3, "name": "sales", "endpoint": "https://hook.example/in", "discard": False}


def test_inbound_record_round_trip_keeps_the_keys_and_their_order():
    record = InboundRecord(received="2026-11-22T12:00:00.000000Z", queue_id="4QX1", mail_from="",
                           deliveries=[Routed(["a@ours.example"], TARGET)])
    meta = record.to_meta()
    assert list(meta) == ["received", "queue_id", "mail_from", "client_addr", "client_name", "helo",
                          "header_from", "subject", "message_id", "deliveries"]
    assert meta["deliveries"] == [{"recipients": ["a@ours.example"], "rule": TARGET}]
    assert InboundRecord.from_meta(meta) == record
    assert record.sender == ""


def test_denied_record_round_trip():
    record = DeniedRecord(received="2026-11-22T12:00:00.000000Z", header_from="x@y.example",
                          recipients=["a@ours.example"], filter="no_rule", reason="no rule matched")
    assert DeniedRecord.from_meta(record.to_meta()) == record
    assert record.sender == "x@y.example"
    assert DeniedRecord.from_meta({}).recipients == []


@pytest.mark.parametrize("meta,message", [
    ({"deliveries": []}, "without a 'deliveries' list"),
    ({"deliveries": [{"recipients": ["a"], "rule": {**TARGET, "id": True}}]}, "rule.id is not an integer"),
    ({"received": "later", "deliveries": []}, "bad 'received': not an ISO 8601 time"),
    ({"subject": ["x"], "deliveries": []}, "inbound record 'subject' is not a string: list"),
])
def test_inbound_from_meta_says_why(meta, message):
    with pytest.raises(RecordError, match=message):
        InboundRecord.from_meta(meta)


def test_event_from_meta_takes_a_minimal_record_and_says_why_it_refuses_one():
    event = Event.from_meta({"type": "queued", "received": "2026-11-22T12:00:00Z"}, "e1")
    assert (event.id, event.at, event.source, event.custom_headers) == ("e1", "2026-11-22T12:00:00Z", "log", {})
    full = Event(type="bounced", at="2026-11-22T12:00:00.000000Z", id="e2", bounce_type="hard",
                 recipient="a@remote.example", custom_headers={"x-a": "b"})
    meta = full.to_meta()
    assert meta["received"] == full.at
    del meta["id"]  # a decoded record's metadata has no id: the record has
    assert Event.from_meta(meta, "e2") == full
    for bad, message in [({"type": "sent"}, "unknown type 'sent'"),
                         ({"type": "queued", "source": "smtp"}, "unknown event source"),
                         ({"type": "queued", "custom_headers": []}, "'custom_headers' is not an object"),
                         ({"type": "queued", "at": 1e300}, "bad 'at': time out of range")]:
        with pytest.raises(RecordError, match=message):
            Event.from_meta(bad)
