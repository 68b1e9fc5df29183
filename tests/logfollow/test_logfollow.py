"""mxhook-logfollow against real files written by the test: rotation, truncation, restarts,
garbage, kill -9, journald (through a stand-in journalctl), leftovers of crashed writes.

"Ingest" below plays the spooler: it reads and unlinks the records in spool/new, so a record
written twice shows up twice; the follower must never lose an event, and may repeat one only
with the same id (the spooler ignores a repeated id).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from mxhook import config
from mxhook import spool
from mxhook.daemons import logfollow  # noqa: F401 - registers the [logfollow] config section

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GARBAGE = os.path.join(ROOT, "tests", "unit", "fixtures", "maillog", "garbage.log")


def message_lines(i: int, status: str = "sent") -> list[str]:
    """The log lines of one message with one recipient r<i>@dest.example -> one event."""
    qid = f"{0xA00000 + i:X}"
    rcpt = f"r{i}@dest.example"
    t = f"Nov 22 12:{(i // 60) % 60:02d}:{i % 60:02d}"
    text = {"sent": "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4kMBZq1xG3z5Wtv)",
            "bounced": "dsn=5.1.1, status=bounced (host mx.dest.example[192.0.2.7] said: 550 5.1.1 "
                       "<x>: Recipient address rejected: User unknown (in reply to RCPT TO command))"}[status]
    return [
        f"{t} mail postfix/cleanup[11]: {qid}: message-id=<m{i}@app.example>",
        f"{t} mail postfix/qmgr[12]: {qid}: from=<app@app.example>, size=1234, nrcpt=1 (queue active)",
        f"{t} mail postfix/smtp[13]: {qid}: to=<{rcpt}>, relay=mx.dest.example[192.0.2.7]:25, "
        f"delay=0.5, delays=0.1/0/0.2/0.2, {text}",
        f"{t} mail postfix/qmgr[12]: {qid}: removed",
    ]


def block(start: int, count: int) -> str:
    return "".join(line + "\n" for i in range(start, start + count) for line in message_lines(i))


class Env:
    def __init__(self, tmp_path, **overrides):
        self.root = str(tmp_path)
        self.log_dir = os.path.join(self.root, "log")
        os.makedirs(self.log_dir)
        self.log = os.path.join(self.log_dir, "mail.log")
        self.spool_dir = os.path.join(self.root, "spool")
        self.state_file = os.path.join(self.root, "state", "logfollow.pos")
        settings = {
            "source": "file", "path": self.log, "state_file": self.state_file,
            "start_at": "beginning", "poll_interval": "0.02", "batch_lines": "200",
            "stats_interval": "3600", "log": "stderr", "log_level": "info",
        }
        settings.update({k: str(v) for k, v in overrides.items()})
        self.config = os.path.join(self.root, "mxhook.conf")
        with open(self.config, "w") as fh:
            fh.write(config.render({"paths": {"spool_dir": self.spool_dir}, "logfollow": settings}))
        self.ingested: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []

    # -- the log -------------------------------------------------------------------------------
    def append(self, text: str, path: str | None = None) -> None:
        with open(path or self.log, "a") as fh:
            fh.write(text)

    # -- the follower --------------------------------------------------------------------------
    def start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "mxhook.daemons.logfollow", "--config", self.config],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        self.procs.append(proc)
        return proc

    def once(self) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))
        return subprocess.run(
            [sys.executable, "-m", "mxhook.daemons.logfollow", "--config", self.config, "--once"],
            capture_output=True, text=True, env=env, timeout=120,
        )

    def stop(self, proc: subprocess.Popen) -> tuple[int, str]:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        return proc.returncode, err

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    # -- the spooler's side ----------------------------------------------------------------------
    def ingest(self) -> int:
        n = 0
        with self.lock:
            for path in spool.pending(self.spool_dir):
                try:
                    in_file = spool.read_all(path)  # one file per chunk of lines
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                for rec in in_file:
                    assert rec.kind == "event"
                    self.ingested.append((rec.id, rec.meta))
                    n += 1
        return n

    def recipients(self) -> list[str]:
        return [m["recipient"] for _id, m in self.ingested]

    def wait_for(self, count: int, timeout: float = 30.0, proc=None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.ingest()
            if len(set(self.recipients())) >= count:
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"follower exited {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(set(self.recipients()))} of {count} events after {timeout}s")
            time.sleep(0.02)

    def assert_exactly(self, indices, allow_repeats: bool = False) -> None:
        want = {f"r{i}@dest.example" for i in indices}
        got = self.recipients()
        assert set(got) == want, (sorted(want - set(got))[:5], sorted(set(got) - want)[:5])
        ids_per_rcpt: dict[str, set] = {}
        for rid, meta in self.ingested:
            ids_per_rcpt.setdefault(meta["recipient"], set()).add(rid)
        assert all(len(ids) == 1 for ids in ids_per_rcpt.values()), "a repeat with a new id"
        if not allow_repeats:
            assert len(got) == len(want), "an event was written twice"


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.cleanup()


def test_once_reads_everything_then_only_what_is_new(env):
    env.append(block(0, 100))
    r = env.once()
    assert r.returncode == 0, r.stderr
    env.ingest()
    env.assert_exactly(range(100))
    meta = env.ingested[0][1]
    assert meta["type"] == "succeeded" and meta["source"] == "log" and meta["host_name"] == "mail"
    assert meta["message_id"] == "<m0@app.example>" and meta["queued_as"] == "4kMBZq1xG3z5Wtv"
    assert meta["received"] == meta["at"]
    state = json.load(open(env.state_file))
    assert state["offset"] == os.path.getsize(env.log) and state["inode"] == os.stat(env.log).st_ino

    assert env.once().returncode == 0
    assert env.ingest() == 0  # nothing read twice
    env.append(block(100, 10))
    assert env.once().returncode == 0
    env.ingest()
    env.assert_exactly(range(110))


def test_lines_about_a_message_start_with_its_queue_id(tmp_path):
    """log_level = debug: a line per event spooled, `QID: ...` as Postfix's own lines, so a
    grep for the queue id finds it beside them; a line that cannot be parsed names its queue id."""
    env = Env(tmp_path, log_level="debug")
    try:
        env.append(block(0, 2) + "Nov 22 12:00:05 mail postfix/smtp[13]: A00009: to=<broken\n")
        r = env.once()
        assert r.returncode == 0, r.stderr
        env.ingest()
        (event_id,) = [i for i, m in env.ingested if m["recipient"] == "r1@dest.example"]
        assert f"A00001: succeeded to=<r1@dest.example> spooled as event {event_id}" in r.stderr
        assert "A00009: could not parse Postfix line (format change?)" in r.stderr
    finally:
        env.cleanup()


def test_partial_line_waits_for_its_newline(env):
    lines = message_lines(0)
    env.append("\n".join(lines[:2]) + "\n" + lines[2][:40])
    assert env.once().returncode == 0
    assert env.ingest() == 0
    env.append(lines[2][40:] + "\n" + lines[3] + "\n")
    assert env.once().returncode == 0
    env.ingest()
    env.assert_exactly([0])


def test_start_at_end_skips_history(tmp_path):
    env = Env(tmp_path, start_at="end")
    env.append(block(0, 20))
    assert env.once().returncode == 0
    assert env.ingest() == 0
    env.append(block(20, 5))
    assert env.once().returncode == 0
    env.ingest()
    env.assert_exactly(range(20, 25))


def test_rotation_while_following(env):
    env.append(block(0, 50))
    proc = env.start()
    env.wait_for(50, proc=proc)
    # logrotate: rename; the writer still appends to the old file until it reopens
    os.rename(env.log, env.log + ".1")
    env.append(block(50, 30), path=env.log + ".1")
    env.append(block(80, 40))  # the new file
    env.append(block(120, 10), path=env.log + ".1")  # a late write to the old one
    env.wait_for(130, proc=proc)
    # a second rotation, old file removed this time (and the new file's inode may be reused)
    time.sleep(0.3)
    os.rename(env.log, env.log + ".2")
    env.append(block(130, 20))
    env.wait_for(150, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err
    env.assert_exactly(range(150))
    assert "rotated" in err


def test_copytruncate_while_following(env):
    env.append(block(0, 40))
    proc = env.start()
    env.wait_for(40, proc=proc)
    shutil.copy(env.log, env.log + ".1")
    with open(env.log, "r+") as fh:
        fh.truncate(0)
    time.sleep(0.2)  # the follower notices the shorter file before the writer fills it again
    env.append(block(40, 15))
    env.wait_for(55, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err
    env.assert_exactly(range(55))
    assert "truncated" in err


def test_restart_resumes_across_a_rotation_while_down(env):
    env.append(block(0, 30))
    proc = env.start()
    env.wait_for(30, proc=proc)
    assert env.stop(proc)[0] == 0
    env.append(block(30, 20))  # written while the follower is down
    os.rename(env.log, env.log + ".1")  # and rotated while it is down
    env.append(block(50, 25))
    proc = env.start()
    env.wait_for(75, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err
    env.assert_exactly(range(75))
    assert "resuming in rotated file" in err


def block_with_bounce(start: int, count: int, bounced: int) -> str:
    """`block`, but message `bounced` ends in a hard bounce."""
    return "".join(line + "\n" for i in range(start, start + count)
                   for line in message_lines(i, "bounced" if i == bounced else "sent"))


def compress(path: str, mtime: float | None = None) -> str:
    """gzip PATH as gzip(1) does (what `postfix logrotate` runs): PATH.gz with PATH's mtime, a
    new inode, PATH removed."""
    import gzip
    st = os.stat(path)
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.utime(path + ".gz", ns=(st.st_atime_ns, st.st_mtime_ns) if mtime is None else (mtime * 1e9, mtime * 1e9))
    os.unlink(path)
    return path + ".gz"


def follow_until_stopped(env, count: int) -> None:
    proc = env.start()
    env.wait_for(count, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err


def finish(env, count: int) -> str:
    proc = env.start()
    env.wait_for(count, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err
    env.assert_exactly(range(count))
    return err


@pytest.mark.parametrize("compressed", [False, True], ids=["rename", "rename+gzip"])
def test_postfix_logrotate_while_down(env, compressed):
    # `postfix logrotate`: rename to maillog.<date>-<time>, HUP postlogd (a new file), then
    # gzip the old one (maillog_file_compressor) — new inode, same content
    env.append(block(0, 30))
    follow_until_stopped(env, 30)
    env.append(block_with_bounce(30, 20, bounced=41))  # never read before the rotation
    rotated = env.log + ".20261203-093000"
    os.rename(env.log, rotated)
    if compressed:
        compress(rotated)
    env.append(block(50, 40))  # the new file: longer than the old position
    err = finish(env, 90)
    assert "resuming in rotated file" in err, err
    assert [m["type"] for _i, m in env.ingested if m["recipient"] == "r41@dest.example"] == ["bounced"]


def test_two_rotations_while_down_are_read_in_order(env):
    # logrotate (numbered, compress + delaycompress) twice while the follower is down
    env.append(block(0, 10))
    follow_until_stopped(env, 10)
    now = time.time()
    env.append(block(10, 10))
    os.rename(env.log, env.log + ".1")
    os.utime(env.log + ".1", (now - 20, now - 20))
    env.append(block(20, 10))
    os.rename(env.log + ".1", env.log + ".2")
    compress(env.log + ".2")
    os.rename(env.log, env.log + ".1")
    os.utime(env.log + ".1", (now - 10, now - 10))
    env.append(block(30, 10))
    env.append("an old file of another kind\n", path=env.log + ".pos")  # not a rotated log
    err = finish(env, 40)
    order = [int(m["recipient"][1:].split("@")[0]) for _i, m in env.ingested]
    assert order == sorted(order), order  # the old file, then the one rotated after it, then the new
    assert "resuming in rotated file" in err


@pytest.mark.parametrize("compressed", [False, True], ids=["copy", "copy+gzip"])
def test_copytruncate_while_down(env, compressed):
    env.append(block(0, 30))
    follow_until_stopped(env, 30)
    env.append(block(30, 20))
    shutil.copy(env.log, env.log + ".1")  # logrotate copytruncate: copy, then truncate in place
    with open(env.log, "r+") as fh:
        fh.truncate(0)
    if compressed:
        compress(env.log + ".1")
    env.append(block(50, 60))  # the same inode, longer than the old position again
    err = finish(env, 110)
    assert "resuming in rotated file" in err, err


@pytest.mark.parametrize("refill", [5, 60], ids=["refilled-shorter", "refilled-longer"])
def test_copytruncate_between_two_polls_finishes_the_copy(env, refill):
    # the follower sleeps between polls; lines written meanwhile are copied, then truncated,
    # and the file is written again (past the old position, too) before the next poll
    env = Env(env.root + "/slow", poll_interval=2)
    try:
        env.append(block(0, 40))
        proc = env.start()
        env.wait_for(40, proc=proc)
        time.sleep(0.2)  # the poll that found nothing more has begun its sleep
        env.append(block(40, 20))
        shutil.copy(env.log, env.log + ".1")
        with open(env.log, "r+") as fh:
            fh.truncate(0)
        env.append(block(60, refill))
        env.wait_for(60 + refill, proc=proc, timeout=30)
        code, err = env.stop(proc)
        assert code == 0, err
        env.assert_exactly(range(60 + refill))
        assert "copytruncate" in err, err
    finally:
        env.cleanup()


def test_garbage_is_counted_never_fatal(env):
    with open(GARBAGE, "rb") as fh:
        garbage = fh.read()
    with open(env.log, "ab") as fh:
        fh.write(block(0, 10).encode())
        fh.write(garbage)
        fh.write(b"\xff\xfe binary junk \x00\x01 without meaning\n")
        fh.write(block(10, 10).encode())
    proc = env.start()
    # garbage.log contains one bounced-looking delivery with a binary recipient: ignore it here
    deadline = time.monotonic() + 30
    while len({r for r in env.recipients() if r.startswith("r")}) < 20 and time.monotonic() < deadline:
        env.ingest()
        time.sleep(0.02)
    code, err = env.stop(proc)
    assert code == 0, err
    env.ingested = [(i, m) for i, m in env.ingested if m["recipient"].startswith("r")]
    env.assert_exactly(range(20))
    assert "not postfix 1" in err  # the summary at exit counts the lines it could not use
    assert "could not parse Postfix line" in err


def test_kill9_mid_stream_loses_nothing(tmp_path):
    env = Env(tmp_path, batch_lines=300)
    total = 6000
    env.append(block(0, total))  # 24,000 lines
    stop = threading.Event()

    def spooler():
        while not stop.is_set():
            env.ingest()
            time.sleep(0.005)

    t = threading.Thread(target=spooler, daemon=True)
    t.start()
    kills: list[int] = []
    try:
        for _round in range(3):
            proc = env.start()
            # wait until it is busy writing, then kill it without warning
            before = len(env.ingested)
            deadline = time.monotonic() + 30
            while len(env.ingested) < before + 200 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
            proc.kill()
            proc.communicate()
            kills.append(len(env.ingested))
        proc = env.start()
        env.append(block(total, 100))  # and more arrives meanwhile
        env.wait_for(total + 100, timeout=120, proc=proc)
        code, err = env.stop(proc)
        assert code == 0, err
    finally:
        stop.set()
        t.join()
    env.ingest()
    # the kills happened mid-stream (not before the first or after the last event)
    assert 0 < kills[0] and kills[-1] < total, kills
    env.assert_exactly(range(total + 100), allow_repeats=True)


def test_leftover_tmp_file_of_a_crashed_write(env):
    env.append(block(0, 5))
    assert env.once().returncode == 0
    files = spool.pending(env.spool_dir)
    assert len(files) == 1  # the chunk's events in one file
    ids = [r.id for r in spool.read_all(files[0])]
    assert len(ids) == 5
    # as if killed between tmp write and rename: the file is in tmp/, the position is old
    leftover = os.path.join(env.spool_dir, "tmp", os.path.basename(files[0]))
    os.rename(files[0], leftover)
    os.unlink(env.state_file)
    r = env.once()
    assert r.returncode == 0, r.stderr
    again = spool.pending(env.spool_dir)
    assert len(again) == 1 and again[0] != files[0]  # a fresh name: never replaces a file
    assert [r.id for r in spool.read_all(again[0])] == ids  # the same events (same ids)
    # the never-acknowledged leftover is the spooler's to remove once it is stale
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    assert spool.clean_tmp(env.spool_dir) == 1
    assert os.listdir(os.path.join(env.spool_dir, "tmp")) == []


def test_bad_config_exits_2(tmp_path):
    env = Env(tmp_path, source="carrier-pigeon")
    r = env.once()
    assert r.returncode == 2
    assert "[logfollow] source" in r.stderr


# ---------------------------------------------------------------------------------------------
# journald, through a stand-in journalctl that serves entries from a JSON-lines file

FAKE_JOURNALCTL = r'''#!{python}
import json, sys, time
args = sys.argv[1:]
entries = [json.loads(l) for l in open({entries!r}) if l.strip()]
after = None
if "--after-cursor" in args:
    after = args[args.index("--after-cursor") + 1]
with open({argv_log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\n")
start = 0
if after is not None:
    start = next((i + 1 for i, e in enumerate(entries) if e["__CURSOR"] == after), 0)
elif "--lines=0" in args:
    start = len(entries)
for e in entries[start:]:
    sys.stdout.write(json.dumps(e) + "\n")
sys.stdout.flush()
if "--follow" in args:
    time.sleep(3600)
'''


def journal_entry(n: int, line: str) -> dict:
    # "Nov 22 12:00:01 mail postfix/smtp[13]: MSG" -> journald fields
    head, _, msg = line.partition(": ")
    parts = head.split()
    tag, _, pid = parts[4].partition("[")
    return {"__CURSOR": f"s=abc;i={n:x}", "__REALTIME_TIMESTAMP": str(1_795_348_800_000_000 + n),
            "_HOSTNAME": "mail", "SYSLOG_IDENTIFIER": tag, "SYSLOG_PID": pid.rstrip("]"),
            "MESSAGE": msg}


def test_journald_source(tmp_path):
    entries = os.path.join(str(tmp_path), "journal.jsonl")
    argv_log = os.path.join(str(tmp_path), "argv.log")
    fake = os.path.join(str(tmp_path), "journalctl")
    with open(fake, "w") as fh:
        fh.write(FAKE_JOURNALCTL.format(python=sys.executable, entries=entries, argv_log=argv_log))
    os.chmod(fake, 0o755)
    env = Env(tmp_path, source="journald", journalctl=fake)

    def write_entries(indices, start_n):
        n = start_n
        with open(entries, "a") as fh:
            for i in indices:
                for line in message_lines(i):
                    fh.write(json.dumps(journal_entry(n, line)) + "\n")
                    n += 1
            fh.write(json.dumps({"__CURSOR": f"s=abc;i={n:x}", "SYSLOG_IDENTIFIER": "dovecot",
                                 "MESSAGE": "imap-login: x"}) + "\n")
            n += 1
            fh.write(json.dumps({"__CURSOR": f"s=abc;i={n:x}", "SYSLOG_IDENTIFIER": "postfix/smtp",
                                 "MESSAGE": [0xff, 0xfe, 0x41]}) + "\n")
            n += 1
        return n

    n = write_entries(range(10), 0)
    r = env.once()
    assert r.returncode == 0, r.stderr
    env.ingest()
    env.assert_exactly(range(10))
    assert env.ingested[0][1]["at"] == "2026-11-22T12:00:00.000002Z"
    assert env.ingested[0][1]["host_name"] == "mail"  # _HOSTNAME: the server that recorded it
    state = json.load(open(env.state_file))
    assert state == {"version": 1, "source": "journald", "cursor": f"s=abc;i={n - 1:x}"}

    write_entries(range(10, 15), n)
    proc = env.start()  # following, resumes after the saved cursor
    env.wait_for(15, proc=proc)
    code, err = env.stop(proc)
    assert code == 0, err
    env.assert_exactly(range(15))
    calls = [json.loads(l) for l in open(argv_log)]
    assert "--follow" not in calls[0] and "--no-tail" in calls[0]
    assert calls[1][calls[1].index("--after-cursor") + 1] == f"s=abc;i={n - 1:x}"
    assert "--follow" in calls[1] and calls[1][-1] == "SYSLOG_FACILITY=2"
