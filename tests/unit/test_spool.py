import os

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
