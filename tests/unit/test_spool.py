import json
import os
import threading
import time

import pytest

from mxhook import spool


def test_write_then_read_round_trip_and_order(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    ids = []
    for n in range(3):
        rec = spool.Record(spool.new_id(), "inbound", {"n": n, "ü": "x"}, b"raw\r\n\xff")
        spool.write(str(tmp_path), rec)
        ids.append(rec.id)
    paths = spool.pending(str(tmp_path))
    assert [os.path.basename(p)[:-4] for p in paths] == ids
    back = spool.read(paths[0])
    assert (back.kind, back.meta, back.payload) == ("inbound", {"n": 0, "ü": "x"}, b"raw\r\n\xff")
    assert os.listdir(tmp_path / "tmp") == []
    assert oct(os.stat(paths[0]).st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("data,message", [
    (b"garbage", "bad magic"),
    (spool.MAGIC + b"{not json\n", "not JSON"),
    (spool.MAGIC + b'{"id":"x","kind":"inbound","payload_size":5}\nabc', "payload is 3 bytes"),
    (spool.MAGIC + b'{"id":"x","kind":"weird","payload_size":0}\n', "unknown record kind"),
    (spool.MAGIC + b'{"id":"x"', "truncated"),
])
def test_decode_says_why_a_file_is_bad(data, message):
    with pytest.raises(spool.SpoolError, match=message):
        spool.decode(data)


def test_failed_write_leaves_nothing_behind(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    os.rmdir(tmp_path / "new")
    (tmp_path / "new").write_text("not a directory")
    with pytest.raises(OSError):
        spool.write(str(tmp_path), spool.Record(spool.new_id(), "inbound", {}, b"x"))
    assert os.listdir(tmp_path / "tmp") == []


def test_move_bad_keeps_file_and_reason(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    path = tmp_path / "new" / "x.rec"
    path.write_bytes(b"junk")
    target = spool.move_bad(str(tmp_path), str(path), "bad magic")
    assert open(target, "rb").read() == b"junk"
    assert open(target + ".reason").read() == "bad magic\n"


def test_concurrent_writers_share_directory_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    import threading
    import time as _time

    spool.ensure_dirs(str(tmp_path))
    calls = []
    real = spool._fsync_dir_now

    def slow_fsync(path):
        calls.append(path)
        _time.sleep(0.005)  # a slow disk: writers pile up behind the running fsync
        real(path)

    monkeypatch.setattr(spool, "_fsync_dir_now", slow_fsync)
    ids = [[spool.new_id() + f"{t:02d}{i:03d}" for i in range(20)] for t in range(8)]

    def writer(my_ids):
        for rid in my_ids:
            spool.write(str(tmp_path), spool.Record(rid, "inbound", {}, b"x"))

    threads = [threading.Thread(target=writer, args=(chunk,)) for chunk in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = {p.rsplit("/", 1)[1][:-4] for p in spool.pending(str(tmp_path))}
    assert names == {rid for chunk in ids for rid in chunk}
    assert len(calls) < 160 / 2, f"{len(calls)} directory fsyncs for 160 writes: no group commit"


def _records(spool_dir):
    return [r for p in spool.pending(str(spool_dir)) for r in spool.read_all(p)]


def test_segment_writer_group_commits_and_seals_into_new(tmp_path, monkeypatch):
    import threading

    spool.ensure_dirs(str(tmp_path))
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(spool.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    ids = [[f"{t:02d}{i:04d}" for i in range(25)] for t in range(8)]

    def work(chunk):
        for rid in chunk:
            writer.append(spool.Record(rid, "inbound", {"t": rid}, b"raw " + rid.encode()))

    threads = [threading.Thread(target=work, args=(c,)) for c in ids]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert spool.pending(str(tmp_path)) == []  # not sealed yet: still in tmp/, locked
    assert spool.recover_segments(str(tmp_path)) == 0  # a live writer's segment is left alone
    writer.flush()
    got = _records(tmp_path)
    assert sorted(r.id for r in got) == sorted(rid for c in ids for rid in c)
    assert all(r.payload == b"raw " + r.id.encode() for r in got)
    assert len(syncs) < 200, f"{len(syncs)} fdatasyncs for 200 records: no group commit"
    assert os.listdir(tmp_path / "tmp") == []
    writer.close()


def test_recovery_between_create_and_lock_does_not_swallow_acknowledged_records(tmp_path, monkeypatch):
    # recover_segments (the spooler, every few seconds) may find the writer's new segment
    # empty and unlocked, and remove it, just before the writer locks it.
    spool.ensure_dirs(str(tmp_path))
    real_flock = spool.fcntl.flock
    raced = []

    def flock(fd, op):
        if not raced and op == spool.fcntl.LOCK_EX:
            raced.append(spool.recover_segments(str(tmp_path)))  # runs in the window
        return real_flock(fd, op)

    monkeypatch.setattr(spool.fcntl, "flock", flock)
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    writer.append(spool.Record("r1", "inbound", {}, b"acknowledged"))
    writer.flush()
    assert raced == [0]
    assert [r.id for r in _records(tmp_path)] == ["r1"]
    writer.close()


def test_segments_are_sealed_after_a_while(tmp_path):
    import time as _time

    spool.ensure_dirs(str(tmp_path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=0.05)
    writer.append(spool.Record("a1", "inbound", {}, b"x"))
    deadline = _time.monotonic() + 5
    while not spool.pending(str(tmp_path)):
        assert _time.monotonic() < deadline, "segment never sealed"
        _time.sleep(0.01)
    assert [r.id for r in _records(tmp_path)] == ["a1"]
    writer.close()


def test_dead_writers_segment_is_recovered_without_its_torn_tail(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    good = spool.encode(spool.Record("r1", "inbound", {}, b"one")) + spool.encode(spool.Record("r2", "inbound", {}, b"two"))
    torn = spool.encode(spool.Record("r3", "inbound", {}, b"three"))[:-2]
    (tmp_path / "tmp" / "seg1.seg").write_bytes(good + torn)  # nobody holds its lock: writer died
    (tmp_path / "tmp" / "seg2.seg").write_bytes(torn[:10])  # nothing whole in it
    assert spool.recover_segments(str(tmp_path)) == 1
    assert [r.id for r in _records(tmp_path)] == ["r1", "r2"]
    assert os.listdir(tmp_path / "tmp") == []


def test_a_failed_write_breaks_the_segment_and_raises(tmp_path, monkeypatch):
    spool.ensure_dirs(str(tmp_path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    writer.append(spool.Record("ok1", "inbound", {}, b"x"))
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.os, "write", full)
    with pytest.raises(OSError):
        writer.append(spool.Record("lost", "inbound", {}, b"y"))
    monkeypatch.undo()
    writer.append(spool.Record("ok2", "inbound", {}, b"z"))  # a fresh segment
    writer.flush()
    # The broken one, once its writer let go: a thread of the writer closes it (and so drops
    # its lock) in the background.
    deadline = time.monotonic() + 10
    while True:
        spool.recover_segments(str(tmp_path))
        found = sorted(r.id for r in _records(tmp_path))
        if found == ["ok1", "ok2"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert found == ["ok1", "ok2"]
    writer.close()


def test_decode_many_reads_segments_and_decode_refuses_trailing_data():
    two = spool.encode(spool.Record("a", "inbound", {}, b"1")) + spool.encode(spool.Record("b", "denied", {}, b""))
    assert [r.id for r in spool.decode_many(two)] == ["a", "b"]
    with pytest.raises(spool.SpoolError):
        spool.decode(two)
    with pytest.raises(spool.SpoolError, match="bad magic line at byte"):
        spool.decode_many(two + b"junk")


def _rec(rid, kind="event", payload=b""):
    return spool.encode(spool.Record(rid, kind, {"type": "queued"} if kind == "event" else {}, payload))


def test_decode_parts_quarantines_a_bad_record_alone_when_its_framing_holds():
    first, second = _rec("a", "inbound", b"raw\n"), _rec("b")
    odd = spool.MAGIC + b'{"id":"x","kind":"weird","payload_size":3}\nabc'
    records, bad = spool.decode_parts(first + odd + second)
    assert [r.id for r in records] == ["a", "b"]
    assert [(p.offset, p.data, p.record_id) for p in bad] == [(len(first), odd, "x")]
    assert bad[0].reason == "SpoolError: unknown record kind 'weird'"
    assert bad[0].where == f"byte {len(first)} (record x)"


def test_decode_parts_takes_the_rest_of_the_file_where_the_framing_breaks():
    first, second = _rec("a"), _rec("b")
    for broken, why in [
        # no magic line where a record ends: that record's payload_size may be what is wrong
        (second + b"junk" + second, f"no magic line at byte {len(first + second)}, where the record at"),
        (spool.MAGIC + b'{"id":"x","kind":"event","payload_size":1}\nab' + second, "(wrong payload_size?)"),
        (spool.MAGIC + b"[1]\n" + second, "not a JSON object"),
        (spool.MAGIC + b'{"id":"x","kind":"event"}\n' + second, "lacks 'payload_size'"),
        (spool.MAGIC + b'{"id":"x","kind":"event","payload_size":99}\nab', "payload is 2 bytes"),
    ]:
        records, bad = spool.decode_parts(first + broken)
        assert [r.id for r in records] == ["a"], why
        assert [(p.offset, p.data) for p in bad] == [(len(first), broken)]
        assert why in bad[0].reason


def test_decode_parts_of_good_files_and_of_nothing():
    data = _rec("a", "inbound", b"x") + _rec("b") + _rec("c", "denied")
    lines = {}
    assert spool.decode_parts(data, lines) == (spool.decode_many(data), [])
    assert sorted(lines) == ["a", "b", "c"]
    assert [(p.offset, p.data) for p in spool.decode_parts(b"")[1]] == [(0, b"")]


def test_decode_parts_per_file_and_per_record_agree(monkeypatch):
    """A file of payload-less records is decoded per file (_decode_bare); whatever that way
    does not take (a payload, odd spacing, a bool payload_size, a record that fails) is read
    record by record, with the same result."""
    plain = _rec("a") + _rec("b") + _rec("c", "denied")
    assert spool._decode_bare(plain, None) is not None
    odd_lines = [b' {"id":"x","kind":"event","payload_size":0}', b'{"id":"x","kind":"event","payload_size":0}\r',
                 b'{"id":"x","kind":"event","payload_size":false}', b'{"id":"x","kind":"event","payload_size":0.0}',
                 b'{"id":"x","kind":"weird","payload_size":0}', b'{"kind":"event","payload_size":0}', b"[0]",
                 b'{"id":"x","kind":"event","payload_size":0}{}', b'{"id":"\xff","kind":"event","payload_size":0}']
    files = [plain, b"", spool.MAGIC, _rec("a", "inbound", b"x\n") + _rec("b")]
    files += [_rec("a") + spool.MAGIC + line + b"\n" + _rec("b") for line in odd_lines]

    def check(record):
        if record.id == "b":
            raise ValueError("no b")

    for data in files:
        for with_check in (None, check):
            lines = {}
            per_file = spool.decode_parts(data, lines, check=with_check)
            with monkeypatch.context() as m:
                m.setattr(spool, "_decode_bare", lambda data, check: None)
                by_record_lines = {}
                by_record = spool.decode_parts(data, by_record_lines, check=with_check)
            assert per_file == by_record and lines == by_record_lines


def test_decode_parts_check_refuses_single_records():
    def check(record):
        if record.meta.get("type") == "bad":
            raise ValueError("type bad")

    refused = spool.encode(spool.Record("b", "event", {"type": "bad"}))
    lines = {}
    records, bad = spool.decode_parts(_rec("a") + refused + _rec("c"), lines, check=check)
    assert [r.id for r in records] == ["a", "c"] and sorted(lines) == ["a", "c"]
    assert [(p.data, p.reason, p.record_id) for p in bad] == [(refused, "ValueError: type bad", "b")]


def test_write_bad_is_durable_and_replaces_on_a_second_run(tmp_path, monkeypatch):
    spool.ensure_dirs(str(tmp_path))
    path = str(tmp_path / "new" / "0000000000000001aaaaaaaaaaaa.rec")
    parts = [spool.BadPart(57, b"one", "SpoolError: odd"), spool.BadPart(90, b"rest", "SpoolError: broken\n")]
    synced = []  # what each fsync flushed, by the path behind its descriptor
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    targets = spool.write_bad(str(tmp_path), path, parts)
    # every file while still in tmp/ (before its rename), then bad/ itself, last
    stems = ["0000000000000001aaaaaaaaaaaa.57.rec", "0000000000000001aaaaaaaaaaaa.90.rec"]
    assert synced == [str(tmp_path / "tmp" / f) for stem in stems for f in (stem + ".reason", stem)] + [
        str(tmp_path / "bad")]
    assert targets == [str(tmp_path / "bad" / "0000000000000001aaaaaaaaaaaa.57.rec"),
                       str(tmp_path / "bad" / "0000000000000001aaaaaaaaaaaa.90.rec")]
    assert spool.write_bad(str(tmp_path), path, parts) == targets  # the spooler died before unlinking
    assert sorted(os.listdir(tmp_path / "bad")) == [
        "0000000000000001aaaaaaaaaaaa.57.rec", "0000000000000001aaaaaaaaaaaa.57.rec.reason",
        "0000000000000001aaaaaaaaaaaa.90.rec", "0000000000000001aaaaaaaaaaaa.90.rec.reason"]
    assert open(targets[1], "rb").read() == b"rest"
    assert open(targets[1] + ".reason").read() == "SpoolError: broken\n"
    assert os.listdir(tmp_path / "tmp") == []


def test_write_many_hands_records_over_as_one_file_under_a_fresh_name(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    records = [spool.Record(f"ev{i}", "event", {"type": "queued", "n": i}) for i in range(3)]
    path = spool.write_many(str(tmp_path), records)
    assert spool.pending(str(tmp_path)) == [path]
    assert os.path.basename(path)[:-4] not in {r.id for r in records}
    lines = {}
    back = spool.decode_many(open(path, "rb").read(), lines)
    assert back == records
    assert {rid: json.loads(text)["n"] for rid, text in lines.items()} == {"ev0": 0, "ev1": 1, "ev2": 2}
    again = spool.write_many(str(tmp_path), records)  # handed over twice: a second file
    assert again != path and len(spool.pending(str(tmp_path))) == 2
    assert spool.write_many(str(tmp_path), []) is None
    assert os.listdir(os.path.join(str(tmp_path), "tmp")) == []


def test_ingest_bound_holds_files_newer_than_an_open_segment(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    now = 0x18000000_00000000
    sec = 1_000_000_000
    below, beyond = spool.ingest_bound(str(tmp_path), now_ns=now)
    assert (below, beyond) == (f"{now:016x}", f"{now + 60 * sec:016x}")  # no segment: up to now

    open_seg = f"{now - sec // 5:016x}aaaaaaaaaaaa"  # opened 0.2 s ago: a live writer's
    stale_seg = f"{now - 6 * sec:016x}bbbbbbbbbbbb"  # beyond SEGMENT_HOLD: a dead writer's
    for name in (open_seg, stale_seg):
        (tmp_path / "tmp" / (name + ".seg")).write_bytes(b"")
    (tmp_path / "tmp" / f"{now - sec:016x}cccccccccccc.rec").write_bytes(b"")  # not a segment
    below, beyond = spool.ingest_bound(str(tmp_path), now_ns=now)
    assert below == open_seg

    def ready(name):
        return name < below or name >= beyond

    assert ready(f"{now - sec:016x}dddddddddddd.rec")  # written before the segment opened
    assert not ready(f"{now - sec // 10:016x}eeeeeeeeeeee.rec")  # may follow a record in it
    assert not ready(f"{now + sec:016x}ffffffffffff.rec")  # newer than the listing
    assert ready(f"{now + 61 * sec:016x}000000000000.rec")  # far ahead of the clock: not held
    assert ready("zz-by-hand.rec")


def test_segment_append_many_is_one_durable_write(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=3600)
    records = [spool.Record(spool.new_id(), "event", {"type": "queued", "n": i}) for i in range(3)]
    writer.append_many(records)
    writer.append_many([])
    [seg] = os.listdir(tmp_path / "tmp")
    assert spool.decode_many((tmp_path / "tmp" / seg).read_bytes()) == records
    writer.close()
    assert [r for p in spool.pending(str(tmp_path)) for r in spool.read_all(p)] == records


# The reader: the spooler's verbs ----------------------------------------------------------

def _events(spool_dir: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        rec = spool.Record(spool.new_id(), "event", {"type": "queued"})
        spool.write(spool_dir, rec)
        ids.append(rec.id)
    return ids


def _new(spool_dir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool_dir, "new")))


def test_reader_takes_in_name_order_and_unlinks_only_what_is_finished(tmp_path):
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ids = _events(d, 5)
    reader = spool.Reader(d, batch_files=3)
    try:
        first = reader.take()
        assert [r.id for r in first.records] == ids[:3]
        assert set(first.raw_meta) == set(ids[:3])  # event metadata as written
        assert first.files == first.taken and not first.cut_short
        second = reader.take()  # read ahead meanwhile; claimed names are not taken twice
        assert [r.id for r in second.records] == ids[3:]
        reader.finish(first, first.files[:2])  # the third was not committed: given back
        reader.give_back(second)
    finally:
        reader.close()
    assert _new(d) == [i + ".rec" for i in ids[2:]]
    reader = spool.Reader(d, batch_files=10)
    try:
        batch = reader.take()
        assert [r.id for r in batch.records] == ids[2:]
        reader.finish(batch)
    finally:
        reader.close()
    assert _new(d) == []


def test_reader_unlinks_finished_files_only_after_durable_returns(tmp_path):
    """`durable` (the spooler's fsync of state.db's WAL) runs before the files a finish
    names are unlinked, off the caller's thread: till it returns they stay in new/."""
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ids = _events(d, 3)
    calls, release = [], threading.Event()

    def durable():
        calls.append((threading.current_thread().name, _new(d)))
        assert release.wait(10)

    reader = spool.Reader(d, batch_files=10, durable=durable)
    try:
        batch = reader.take()
        reader.finish(batch)  # returns at once: the caller's loop does not wait for the fsync
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _new(d) == [i + ".rec" for i in ids]  # durable() has not returned
        release.set()
    finally:
        reader.close()
    assert [(name.startswith("mxhook-unlink"), files) for name, files in calls] == [
        (True, [i + ".rec" for i in ids])]
    assert _new(d) == []


def test_reader_keeps_the_files_when_durable_fails_and_takes_them_again(tmp_path, caplog):
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ids = _events(d, 2)
    failures = [OSError(5, "Input/output error")]

    def durable():
        if failures:
            raise failures.pop()

    reader = spool.Reader(d, batch_files=10, durable=durable)
    try:
        first = reader.take()
        reader.finish(first)
        deadline = time.monotonic() + 5
        while "Input/output error" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _new(d) == [i + ".rec" for i in ids]
        while not reader.changed() and time.monotonic() < deadline:  # given back on the I/O thread
            time.sleep(0.01)
        assert reader.changed()  # no wait: they are there to be read again
        again = reader.take()
        assert [r.id for r in again.records] == ids
        reader.finish(again)
    finally:
        reader.close()
    assert _new(d) == []
    assert "cannot make the ingest of 2 spool file(s) durable" in caplog.text


def test_reader_gives_back_first_in_line_before_the_batch_read_ahead(tmp_path):
    """Files given back (state.db refused them) come again before the batch already read
    ahead."""
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ids = _events(d, 6)
    reader = spool.Reader(d, batch_files=2)
    try:
        first = reader.take()  # the next two are read ahead meanwhile
        assert [r.id for r in first.records] == ids[:2]
        reader.finish(first, first.files[:1])  # the second file was not committed
        order = []
        while (batch := reader.take()).taken:
            order += [r.id for r in batch.records]
            reader.finish(batch)
        assert order == ids[1:]
    finally:
        reader.close()
    assert _new(d) == []


def test_reader_give_back_alone_ends_no_wait(tmp_path):
    """Files given back are not new arrivals: `changed` stays False (a finish that unlinks
    files moves new/'s mtime, which cannot be told from an arrival: that one ends a wait)."""
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ids = _events(d, 6)
    time.sleep(spool.MTIME_TICK_NS / 1e9 * 2)  # past the tick that may hide a change
    reader = spool.Reader(d, batch_files=2)
    try:
        first = reader.take()  # the next two are read ahead meanwhile
        reader.give_back(first)
        assert not reader.changed()
        order = []
        while (batch := reader.take()).taken:
            order += [r.id for r in batch.records]
            reader.finish(batch)
        assert order == ids
    finally:
        reader.close()
    assert _new(d) == []


def test_reader_quarantines_a_file_with_no_good_record_and_a_refused_one(tmp_path):
    d = str(tmp_path)
    spool.ensure_dirs(d)
    ok, refused = _events(d, 2)
    with open(os.path.join(d, "new", "0000000000000000bad.rec"), "wb") as fh:
        fh.write(b"garbage")

    def check(record):
        if record.id == refused:
            raise ValueError("refused")
    reader = spool.Reader(d, batch_files=10, check=check)
    try:
        batch = reader.take()
        assert [r.id for r in batch.records] == [ok] and batch.quarantined == 2
        reader.finish(batch)
    finally:
        reader.close()
    assert _new(d) == []
    bad = sorted(os.listdir(os.path.join(d, "bad")))
    assert bad == sorted(["0000000000000000bad.rec", "0000000000000000bad.rec.reason",
                          refused + ".rec", refused + ".rec.reason"])


def test_reader_holds_back_files_behind_an_open_segment(tmp_path):
    d = str(tmp_path)
    spool.ensure_dirs(d)
    older = _events(d, 1)
    open(os.path.join(d, "tmp", spool.new_id() + ".seg"), "wb").close()  # a live writer's
    _events(d, 1)
    reader = spool.Reader(d, batch_files=10)
    try:
        batch = reader.take()
        assert [r.id for r in batch.records] == older and reader.held_back
        reader.finish(batch)
    finally:
        reader.close()


def test_reader_changed_sees_a_new_file(tmp_path):
    d = str(tmp_path)
    spool.ensure_dirs(d)
    reader = spool.Reader(d, batch_files=10)
    try:
        time.sleep(spool.MTIME_TICK_NS / 1e9 * 2)  # past the tick that may hide a change
        assert reader.take().taken == []
        assert not reader.changed()
        _events(d, 1)
        assert reader.changed()
    finally:
        reader.close()


def test_take_spares_the_io_thread_while_new_is_unchanged(tmp_path):
    """Nothing can be ready (new/ as at the last scan, nothing left from it): take answers
    at once, without a scan on the I/O thread; a new file is taken by the next take, and
    files given back are taken again without new/ changing."""
    d = str(tmp_path)
    spool.ensure_dirs(d)
    reader = spool.Reader(d, batch_files=10)
    scans = []
    load = reader._load_batch
    reader._load_batch = lambda: scans.append(1) or load()
    try:
        time.sleep(spool.MTIME_TICK_NS / 1e9 * 2)  # past the tick that may hide a change
        assert reader.take().taken == [] and len(scans) == 1
        assert reader.take().taken == [] and reader.take().taken == [] and len(scans) == 1
        _events(d, 1)
        batch = reader.take()
        assert len(batch.taken) == 1
        reader.give_back(batch)
        time.sleep(spool.MTIME_TICK_NS / 1e9 * 2)
        again = reader.take()  # given back: first in line, new/ unchanged
        assert again.taken == batch.taken
        reader.finish(again)
    finally:
        reader.close()


def test_handed_over_counts_a_segment_sealed_while_it_reads_once(tmp_path, monkeypatch):
    # The writer seals (tmp/ -> new/) at any moment; a count that read new/ before the seal
    # and tmp/ after it missed the whole segment (a flaky "456 of 500 spooled").
    spool.ensure_dirs(str(tmp_path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    writer.append_many([spool.Record(f"r{i}", "inbound", {}, b"x") for i in range(3)])
    real_pending = spool.pending

    def seal_after_listing_new(spool_dir):
        listed = real_pending(spool_dir)
        writer.flush()  # the seal lands just after new/ was listed
        return listed

    monkeypatch.setattr(spool, "pending", seal_after_listing_new)
    assert sorted(r.id for r in spool.handed_over(str(tmp_path))) == ["r0", "r1", "r2"]
    monkeypatch.setattr(spool, "pending", real_pending)
    assert sorted(r.id for r in spool.handed_over(str(tmp_path))) == ["r0", "r1", "r2"]
    writer.close()
