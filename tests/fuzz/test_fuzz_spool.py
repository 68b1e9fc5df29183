"""Fuzzing spool decoding: what the spooler does with each file in new/.

- `spool.decode` on arbitrary bytes, and on valid files mutated: a Record or SpoolError, never
  another exception; encode/decode round-trips;
- `spool.decode_parts` (what the spooler reads) on segments of good and damaged records;
- the spooler's whole check (`spool.decode` then `ingest.check_record`, as `spool.Reader` does):
  SpoolError or RecordError only, because `spool.Reader` quarantines exactly those (to bad/);
  anything else escapes the batch or is taken for a passing I/O error. (Non-string rule names
  and out-of-range times were such bugs; the two tests at the end pin them.)
"""
from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mxhook import spool
from mxhook.model.records import RecordError
from mxhook.store import ingest
from mxhook.spool import Record, SpoolError

from . import FUZZ

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=10,
)
KINDS = st.sampled_from(list(spool.KINDS)) | JSON


def good_records():
    meta = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("id", "kind", "payload_size")),
                           JSON, max_size=5)
    return st.builds(Record, id=st.text(min_size=1, max_size=30), kind=st.sampled_from(spool.KINDS),
                     meta=meta, payload=st.binary(max_size=300))


@FUZZ
@given(st.binary(max_size=600))
@example(b"")
@example(spool.MAGIC)
@example(spool.MAGIC + b"{}\n")
@example(spool.MAGIC + b'{"id":"a","kind":"inbound","payload_size":1e309}\n')
@example(spool.MAGIC + b'{"id":"a","kind":[],"payload_size":0}\n')
def test_decode_arbitrary_bytes(data):
    try:
        record = spool.decode(data)
    except SpoolError as exc:
        assert str(exc)
        return
    assert record.kind in spool.KINDS


@FUZZ
@given(good_records())
def test_encode_decode_round_trip(record):
    back = spool.decode(spool.encode(record))
    assert back == record


@st.composite
def mutated_files(draw):
    data = bytearray(spool.encode(draw(good_records())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "meta"]))
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.sampled_from([b"\n", b"{", b"}", b'"', b"\x00", b"\xff"]) | st.binary(max_size=8))
        else:  # replace the metadata line with arbitrary JSON
            head, _, rest = bytes(data[len(spool.MAGIC):]).partition(b"\n")
            meta = draw(JSON)
            data = bytearray(spool.MAGIC + json.dumps(meta).encode() + b"\n" + rest)
    return bytes(data)


@FUZZ
@given(mutated_files())
def test_decode_mutated_files(data):
    try:
        spool.decode(data)
    except SpoolError:
        pass


@FUZZ
@given(st.lists(good_records().map(spool.encode) | mutated_files(), min_size=1, max_size=4))
def test_decode_parts_accounts_for_every_byte(chunks):
    """A segment of good and damaged records: decode_parts never raises, its bad parts are the
    file's own bytes in order, and nothing is quarantined from a file decode_many reads."""
    data = b"".join(chunks)
    records, bad = spool.decode_parts(data, check=ingest.check_record)
    offsets = [part.offset for part in bad]
    assert offsets == sorted(set(offsets))
    for part in bad:
        assert data[part.offset:part.offset + len(part.data)] == part.data and part.reason
    if not bad:
        assert records == spool.decode_many(data)


@st.composite
def spool_files_with_odd_meta(draw):
    """Structurally valid files (magic, JSON object, right payload size) whose metadata values
    are arbitrary JSON: what a buggy or older writer could leave in new/."""
    kind = draw(st.sampled_from(spool.KINDS))
    meta = {"id": draw(JSON | st.text(min_size=1, max_size=10)), "kind": kind}
    for key in ("received", "deliveries", "recipients", "type", "at", "queue_id", "mail_from"):
        if draw(st.booleans()):
            meta[key] = draw(JSON)
    if kind == "inbound" and draw(st.booleans()):
        meta["deliveries"] = [{"recipients": draw(JSON), "rule": {"name": draw(JSON), "endpoint": draw(JSON)}}
                              for _ in range(draw(st.integers(1, 3)))]
    payload = draw(st.binary(max_size=50))
    meta["payload_size"] = len(payload)
    return spool.MAGIC + json.dumps(meta).encode() + b"\n" + payload


def spooler_check(data: bytes) -> None:
    """What spool.Reader does with a file's bytes before ingesting it."""
    try:
        record = spool.decode(data)
        ingest.check_record(record)
    except (SpoolError, RecordError) as exc:
        assert str(exc)


@settings(FUZZ, report_multiple_bugs=False)
@given(spool_files_with_odd_meta())
def test_spooler_check_odd_metadata(data):
    spooler_check(data)


UNHASHABLE_RULE_NAME = (spool.MAGIC + json.dumps({
    "id": "0000000000000001aaaaaaaaaaaa", "kind": "inbound", "payload_size": 0,
    "deliveries": [{"recipients": ["in@ours.example"], "rule": {"name": ["x"], "endpoint": "https://h/"}}],
}).encode() + b"\n")


def test_check_record_rejects_non_string_rule_name():
    with pytest.raises(RecordError, match="name is not a string"):
        ingest.check_record(spool.decode(UNHASHABLE_RULE_NAME))


@pytest.mark.parametrize("received", [1e300, 6.77680361916768e16])
def test_check_record_rejects_out_of_range_times(received):
    with pytest.raises(RecordError, match="out of range"):
        ingest.check_record(spool.decode(spool.MAGIC + json.dumps(
            {"id": "0", "kind": "denied", "received": received, "payload_size": 0}).encode() + b"\n"))


def test_decode_deeply_nested_metadata_is_a_spool_error():
    with pytest.raises(SpoolError):
        spool.decode(spool.MAGIC + b"[" * 5000 + b"\n")
