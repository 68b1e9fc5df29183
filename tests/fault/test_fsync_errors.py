"""fsync errors in the milter's spool segments (spool.SegmentWriter).

- A segment that cannot be made durable at creation (the fsync of tmp/ fails) releases its
  descriptor and lock: a disk fault that refuses thousands of messages must not end in EMFILE.
- A record whose write or fdatasync failed was refused (the milter answers 4xx): it is never
  handed over, neither by the sealer nor by recovery, even though the page cache still holds
  it; every record acknowledged before is kept. Checked in-process with random faults among
  concurrent writers, across kill -9 of a writer process at random moments, and end to end
  through the real private Postfix with the real milter under an LD_PRELOAD shim
  (eio_preload.c) that makes fsync/fdatasync fail with EIO.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mxhook import spool

HERE = os.path.dirname(os.path.abspath(__file__))


def _eio(*_args):
    raise OSError(errno.EIO, "Input/output error (injected)")


def _handed_over(spool_dir) -> list[str]:
    """Ids of every record in new/ once dead writers' segments are recovered."""
    spool.recover_segments(str(spool_dir))
    return [r.id for p in spool.pending(str(spool_dir)) for r in spool.read_all(p)]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_segment_refused_at_creation_releases_its_descriptor(tmp_path, monkeypatch):
    spool.ensure_dirs(str(tmp_path))
    real = spool._fsync_dir_now
    monkeypatch.setattr(spool, "_fsync_dir_now",
                        lambda path: _eio() if path.endswith("tmp") else real(path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    before = _open_fds()
    refused = 0
    for n in range(1500):
        with pytest.raises(OSError) as info:
            writer.append(spool.Record(f"refused{n:04d}", "inbound", {}, b"x"))
        assert info.value.errno == errno.EIO, info.value  # not EMFILE
        refused += 1
    leaked = _open_fds() - before
    assert leaked < 10, f"{leaked} descriptors left open after {refused} refused appends"
    assert os.listdir(tmp_path / "tmp") == [], "refused segments left in tmp/"
    monkeypatch.undo()  # the disk is healthy again: the next message is taken
    writer.append(spool.Record("ok", "inbound", {}, b"y"))
    writer.flush()
    assert _handed_over(tmp_path) == ["ok"]
    writer.close()


def _refuse_one_after_ok(tmp_path, monkeypatch, *failing: str) -> spool.SegmentWriter:
    """A writer that acknowledged "ok1", then refused "refused" (fdatasync EIO, and EIO from
    each os call named in `failing` meanwhile), then acknowledged "ok2" in a new segment."""
    spool.ensure_dirs(str(tmp_path))
    writer = spool.SegmentWriter(str(tmp_path), seal_after=60)
    writer.append(spool.Record("ok1", "inbound", {}, b"acknowledged before the fault"))
    for name in ("fdatasync", *failing):
        monkeypatch.setattr(spool.os, name, _eio)
    with pytest.raises(OSError):
        writer.append(spool.Record("refused", "inbound", {}, b"answered 451"))
    monkeypatch.undo()
    writer.append(spool.Record("ok2", "inbound", {}, b"after the fault"))
    writer.flush()
    return writer


def test_a_record_refused_after_fdatasync_eio_is_never_handed_over(tmp_path, monkeypatch):
    writer = _refuse_one_after_ok(tmp_path, monkeypatch)
    # the broken segment is recovered once its writer let go of it (it did: sealed), and the
    # refused record, still in the page cache, must not come back with it
    assert sorted(_handed_over(tmp_path)) == ["ok1", "ok2"]
    assert os.listdir(tmp_path / "tmp") == []
    writer.close()


def test_a_cut_mark_bounds_recovery_while_the_writer_lives(tmp_path, monkeypatch):
    # the truncate fails, the rename to <id>.cut-<N>.seg does not: the writer's sealer lets go
    # of the segment, and its acknowledged records reach new/ without waiting for a restart
    writer = _refuse_one_after_ok(tmp_path, monkeypatch, "ftruncate")
    assert sorted(_handed_over(tmp_path)) == ["ok1", "ok2"]
    assert os.listdir(tmp_path / "tmp") == []
    writer.close()


def test_a_segment_that_cannot_be_cut_nor_renamed_stays_locked_while_the_writer_lives(
        tmp_path, monkeypatch, caplog):
    # a file system gone read-only refuses the truncate and the rename too: recovery must not
    # take the segment (it still holds the refused record) while the milter runs
    writer = _refuse_one_after_ok(tmp_path, monkeypatch, "ftruncate", "rename")
    assert sorted(_handed_over(tmp_path)) == ["ok2"]  # the uncut one is still locked
    assert [n for n in os.listdir(tmp_path / "tmp") if n.endswith(".seg")], "the uncut segment is gone"
    assert any(r.levelname == "CRITICAL" and "cannot withdraw" in r.getMessage() for r in caplog.records)
    writer.close()


CUT_FAILS = textwrap.dedent("""
    import errno, os, sys
    from mxhook import spool
    def eio(*args):
        raise OSError(errno.EIO, "injected")
    writer = spool.SegmentWriter(sys.argv[1], seal_after=60)
    writer.append(spool.Record("ok1", "inbound", {}, b"acknowledged before the fault"))
    real_sync, real_truncate = os.fdatasync, os.ftruncate
    spool.os.fdatasync, spool.os.ftruncate = eio, eio
    try:
        writer.append(spool.Record("refused", "inbound", {}, b"answered 451"))
    except OSError:
        print("451 refused", flush=True)
    spool.os.fdatasync, spool.os.ftruncate = real_sync, real_truncate
    writer.append(spool.Record("ok2", "inbound", {}, b"a new segment"))
    print("250 ok2", flush=True)
    os._exit(0)  # the milter stops: its locks go, recovery may take every segment
""")


def test_a_segment_that_cannot_be_cut_keeps_refused_records_out_after_a_restart(tmp_path):
    spool.ensure_dirs(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", CUT_FAILS, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.stdout.split() == ["451", "refused", "250", "ok2"], res.stdout + res.stderr
    assert sorted(_handed_over(tmp_path)) == ["ok1", "ok2"], "a record answered 451 was handed over"
    assert "renamed so that recovery keeps only those" in res.stderr, res.stderr
    assert os.listdir(tmp_path / "tmp") == []


def test_concurrent_writers_with_random_sync_and_write_faults(tmp_path, monkeypatch):
    spool.ensure_dirs(str(tmp_path))
    rng = random.Random(14)
    rng_lock = threading.Lock()
    real_sync, real_write = os.fdatasync, os.write

    def flaky_sync(fd):
        with rng_lock:
            fail = rng.random() < 0.15
        time.sleep(0.0005)  # let appends pile up behind a flush
        return _eio() if fail else real_sync(fd)

    def flaky_write(fd, data):
        with rng_lock:
            fail = rng.random() < 0.03
        if fail:  # half a record reaches the file, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(fd, data)

    monkeypatch.setattr(spool.os, "fdatasync", flaky_sync)
    monkeypatch.setattr(spool.os, "write", flaky_write)
    writer = spool.SegmentWriter(str(tmp_path), seal_after=0.05)
    ok, refused = set(), set()
    lock = threading.Lock()

    def work(t):
        for n in range(60):
            rid = f"t{t}n{n:03d}"
            try:
                writer.append_many([spool.Record(rid, "inbound", {}, rid.encode() * 50),
                                    spool.Record(rid + "e", "event", {})])
            except OSError:
                with lock:
                    refused.add(rid)
            else:
                with lock:
                    ok.add(rid)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    writer.close()
    monkeypatch.undo()
    got = _handed_over(tmp_path)
    assert refused and ok, (len(ok), len(refused))
    assert sorted(got) == sorted([*ok, *(r + "e" for r in ok)]), (
        f"refused but handed over: {sorted({g.rstrip('e') for g in got} & refused)}; "
        f"acknowledged but missing: {sorted(ok - {g.rstrip('e') for g in got})}")
    assert os.listdir(tmp_path / "tmp") == []


CHILD = textwrap.dedent("""
    import errno, os, random, sys, threading
    from mxhook import spool
    spool_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    real = os.fdatasync
    def flaky(fd):
        if rng.random() < 0.2:
            raise OSError(errno.EIO, "injected")
        return real(fd)
    spool.os.fdatasync = flaky
    writer = spool.SegmentWriter(spool_dir, seal_after=0.02)
    out = threading.Lock()
    def work(t):
        for n in range(100000):
            rid = f"s{seed}t{t}n{n:06d}"
            try:
                writer.append(spool.Record(rid, "inbound", {}, b"x" * 300))
                answer = "250"
            except OSError:
                answer = "451"
            with out:  # the answer is given when this line is out
                os.write(1, f"{answer} {rid}\\n".encode())
    for t in range(4):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.parametrize("seed", range(6))
def test_kill_9_at_any_moment_keeps_every_250_and_no_451(tmp_path, seed):
    spool.ensure_dirs(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(seed)],
                            stdout=subprocess.PIPE, env=env)
    time.sleep(0.4 + random.Random(seed).uniform(0, 0.6))
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    answers = dict(line.split()[::-1] for line in out.decode().splitlines() if line.count(" ") == 1)
    ok = {rid for rid, a in answers.items() if a == "250"}
    refused = {rid for rid, a in answers.items() if a == "451"}
    assert len(ok) > 20 and len(refused) > 5, (len(ok), len(refused))
    got = set(_handed_over(tmp_path))
    assert not ok - got, f"{len(ok - got)} acknowledged record(s) lost, e.g. {sorted(ok - got)[:3]}"
    assert not refused & got, f"{len(refused & got)} refused record(s) handed over, e.g. {sorted(refused & got)[:3]}"
    assert os.listdir(tmp_path / "tmp") == []


# ---------------------------------------------------------------------------------------------
# End to end: the real milter under an EIO shim, through the real private Postfix

@pytest.fixture(scope="module")
def eio_shim(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the LD_PRELOAD fault injector")
    lib = str(tmp_path_factory.mktemp("eio") / "eio_preload.so")
    res = subprocess.run([cc, "-shared", "-fPIC", "-o", lib, os.path.join(HERE, "eio_preload.c"), "-ldl"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot build the fault injector: {res.stderr.strip()}")
    return lib


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _message(subject: str) -> bytes:
    return (f"From: Sender <eio@sender.example>\r\nTo: eio@ours.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@eio.test>\r\n\r\nbody of {subject}\r\n").encode()


def _eio_stack(make_stack, eio_shim, flag: str):
    """A stack whose milter runs under the EIO shim (faults off until `flag` is written)."""
    stack = make_stack(permit=["ours.example"])
    stack.add_rule("eio", "/hook", "--when", r"To~^eio@ours\.example$")
    stack.milter.env = dict(os.environ, LD_PRELOAD=eio_shim, MXHOOK_EIO_FLAG=flag)
    stack.milter.restart()
    stack.wait_milter_snapshot()
    res = stack.send("eio@sender.example", ["eio@ours.example"], _message("warm up"))
    assert res.accepted, res
    return stack


@pytest.mark.e2e
def test_milter_refusing_mail_on_fsync_eio_keeps_no_descriptors(make_stack, eio_shim, tmp_path):
    flag = str(tmp_path / "eio.flag")
    stack = _eio_stack(make_stack, eio_shim, flag)
    pid = stack.milter.proc.pid
    fds_before = _fd_count(pid)
    with open(flag, "w") as fh:  # every fsync fails: no new segment can be made durable
        fh.write("fsync 1\n")
    time.sleep(1)  # the open segment is sealed: the next message needs a new one
    for n in range(300):
        res = stack.send("eio@sender.example", ["eio@ours.example"], _message(f"dir fault {n}"))
        assert not res.accepted and 400 <= (res.code or 0) < 500, res
    leaked = _fd_count(pid) - fds_before
    assert leaked < 20, f"the milter holds {leaked} more descriptors after 300 refused messages"
    os.unlink(flag)
    res = stack.send("eio@sender.example", ["eio@ours.example"], _message("after the fault"))
    assert res.accepted, res


@pytest.mark.e2e
def test_milter_under_fdatasync_eio_never_posts_what_it_answered_4xx(make_stack, eio_shim, tmp_path):
    flag = str(tmp_path / "eio.flag")
    stack = _eio_stack(make_stack, eio_shim, flag)
    with open(flag, "w") as fh:  # every third fdatasync fails
        fh.write("fdatasync 3\n")
    accepted, refused = {"warm up"}, set()
    for n in range(45):
        subject = f"sync fault {n}"
        res = stack.send("eio@sender.example", ["eio@ours.example"], _message(subject))
        if res.accepted:
            accepted.add(subject)
        else:
            assert 400 <= (res.code or 0) < 500, res
            refused.add(subject)
    os.unlink(flag)
    assert len(refused) >= 10 and len(accepted) >= 20, (len(accepted), len(refused))
    res = stack.send("eio@sender.example", ["eio@ours.example"], _message("after the fault"))
    assert res.accepted, res
    accepted.add("after the fault")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if {r.json()["message"]["subject"] for r in stack.receiver.requests} >= accepted:
            break
        time.sleep(0.3)
    time.sleep(5)  # the spooler recovers dead segments every 2 s: give a wrong post time to come
    posted = {r.json()["message"]["subject"] for r in stack.receiver.requests}
    assert posted >= accepted, f"accepted but not posted: {sorted(accepted - posted)}"
    assert not posted & refused, f"answered 4xx yet posted: {sorted(posted & refused)}"


@pytest.mark.e2e
def test_milter_restarted_after_a_failed_cut_never_posts_what_it_answered_4xx(make_stack, eio_shim, tmp_path):
    # every fdatasync fails and so does the truncate that would withdraw the refused record:
    # the segments keep records answered 451, and a restart of the milter lets go of them
    flag = str(tmp_path / "eio.flag")
    stack = _eio_stack(make_stack, eio_shim, flag)
    time.sleep(1)  # the warm-up's segment is sealed
    with open(flag, "w") as fh:
        fh.write("fdatasync,ftruncate 1\n")
    refused = set()
    for n in range(10):
        subject = f"cut fault {n}"
        res = stack.send("eio@sender.example", ["eio@ours.example"], _message(subject))
        assert not res.accepted and 400 <= (res.code or 0) < 500, res
        refused.add(subject)
    os.unlink(flag)
    stack.milter.restart()  # its start-up recovery, and the spooler's, may take every segment now
    stack.wait_milter_snapshot()
    res = stack.send("eio@sender.example", ["eio@ours.example"], _message("after the restart"))
    assert res.accepted, res
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "after the restart" in {r.json()["message"]["subject"] for r in stack.receiver.requests}:
            break
        time.sleep(0.3)
    time.sleep(5)  # the spooler recovers dead segments every 2 s: give a wrong post time to come
    posted = {r.json()["message"]["subject"] for r in stack.receiver.requests}
    assert "after the restart" in posted
    assert not posted & refused, f"answered 4xx yet posted after a restart: {sorted(posted & refused)}"
    spool_tmp = os.path.join(stack.cfg.values["paths"]["spool_dir"], "tmp")
    assert not [n for n in os.listdir(spool_tmp) if n.endswith(".seg")], os.listdir(spool_tmp)
