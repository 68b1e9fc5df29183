"""The heartbeat files of the spooler's and log follower's loops (mxhook.heartbeat), and what
/metrics counts in the spool's new/ directory (spool.waiting)."""
from __future__ import annotations

import json
import os

from mxhook import heartbeat, spool


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_beat_writes_pid_then_touches_at_most_every_interval(tmp_path):
    path = heartbeat.path_for(str(tmp_path / "state.db"), heartbeat.SPOOLER)
    assert path == str(tmp_path / "mxhook-spooler.heartbeat")
    clock = Clock()
    beat = heartbeat.Heartbeat(path, interval=10, monotonic=clock)
    beat.beat()
    with open(path) as fh:
        assert json.load(fh)["pid"] == os.getpid()
    assert heartbeat.read(path)["state"] == "alive"
    os.utime(path, (0, 0))
    clock.now += 5
    beat.beat()  # within the interval: not touched
    assert os.stat(path).st_mtime == 0
    clock.now += 5
    beat.beat()
    assert os.stat(path).st_mtime > 0
    os.unlink(path)  # removed under the daemon: written again at the next beat
    clock.now += 10
    beat.beat()
    assert heartbeat.read(path)["pid"] == os.getpid()
    beat.stop()
    assert not os.path.exists(path) and heartbeat.read(path)["state"] == "missing"


def test_read_tells_stale_dead_and_unreadable(tmp_path):
    path = str(tmp_path / "x.heartbeat")
    with open(path, "w") as fh:
        json.dump({"pid": os.getpid(), "started": 0}, fh)
    os.utime(path, (100, 100))
    found = heartbeat.read(path, now=100 + heartbeat.STALE_AFTER + 1)
    assert (found["state"], found["age"]) == ("stale", heartbeat.STALE_AFTER + 1)
    for pid in (2**22 + 12345, 0, -1, "1"):  # no such process; never a process group
        with open(path, "w") as fh:
            json.dump({"pid": pid}, fh)
        assert heartbeat.read(path)["state"] == "dead", pid
    with open(path, "w") as fh:
        fh.write("{not json")
    assert heartbeat.read(path)["state"] == "unreadable"


def test_a_heartbeat_that_cannot_be_written_is_logged_once(tmp_path, caplog):
    beat = heartbeat.Heartbeat(str(tmp_path / "missing-dir" / "x.heartbeat"), interval=0)
    beat.beat()
    beat.beat()
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_waiting_counts_records_by_kind_from_metadata_lines_only(tmp_path):
    spool_dir = str(tmp_path / "spool")
    spool.ensure_dirs(spool_dir)
    assert spool.waiting(spool_dir) == {"files": 0, "oldest_mtime": None,
                                        "records": {"inbound": 0, "denied": 0, "event": 0}}
    big = b"X" * 200_000 + b"\nMXHOOK-SPOOL 1\n{\"kind\": \"event\"}\n"  # a payload that looks like a record
    records = [spool.Record(id="a" * 28, kind="inbound", meta={"received": "x"}, payload=big),
               spool.Record(id="b" * 28, kind="denied", meta={}),
               spool.Record(id="c" * 28, kind="event", meta={})]
    with open(os.path.join(spool_dir, "new", "seg.rec"), "wb") as fh:
        fh.write(b"".join(map(spool.encode, records)))
    with open(os.path.join(spool_dir, "new", "junk.rec"), "wb") as fh:
        fh.write(b"not a spool file")
    with open(os.path.join(spool_dir, "new", "other.tmp"), "wb") as fh:
        fh.write(b"ignored")
    found = spool.waiting(spool_dir)
    assert found["files"] == 2 and found["oldest_mtime"] > 0
    assert found["records"] == {"inbound": 1, "denied": 1, "event": 1, "unreadable": 1}
