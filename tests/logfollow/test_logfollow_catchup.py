"""mxhook-logfollow catching up after it was down: a position in an empty file, compressed
copies written beside their input, an incomplete compressed file, and a rotation while it is
still reading the files rotated before (real files, the real follower process)."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import time
import zlib

import pytest

from mxhook import config
from mxhook.daemons import logfollow

from .test_logfollow import Env, block, compress, finish, follow_until_stopped, message_lines


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.cleanup()


@pytest.mark.parametrize("first", ["", "a short first line\n"], ids=["empty", "short"])
def test_position_in_an_empty_or_short_file_survives_a_rotation_while_down(env, first):
    # right after a nightly rotation the log is often empty (or shorter than the fingerprint)
    env.append(first)
    assert env.once().returncode == 0
    env.append(block(0, 5))  # written while the follower is down
    os.rename(env.log, env.log + ".1")  # and rotated
    env.append(block(5, 5))
    err = finish(env, 10)
    assert "resuming in rotated file" in err, err


def gzip_beside(path: str) -> str:
    """gzip(1) half done: PATH.gz written (mtime now), PATH not yet removed."""
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path + ".gz"


def gzip_done(path: str) -> None:
    """gzip(1) finishing: PATH.gz gets PATH's times, PATH is removed."""
    st = os.stat(path)
    os.utime(path + ".gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.unlink(path)


@pytest.mark.parametrize("mode", ["compress", "delaycompress"])
def test_restart_while_a_rotated_file_is_being_compressed(env, mode):
    env.append(block(0, 5))
    follow_until_stopped(env, 5)
    env.append(block(5, 5))  # never read before the rotation
    now = time.time()
    if mode == "compress":  # logrotate: rename, create, gzip the renamed file
        os.rename(env.log, env.log + ".1")
        twin = env.log + ".1"
        env.append(block(10, 5))
    else:  # two rotations; the second one compresses the file the first one renamed
        os.rename(env.log, env.log + ".1")
        os.utime(env.log + ".1", (now - 20, now - 20))
        env.append(block(10, 3))
        os.rename(env.log + ".1", env.log + ".2")
        os.rename(env.log, env.log + ".1")
        os.utime(env.log + ".1", (now - 10, now - 10))
        twin = env.log + ".2"
        env.append(block(13, 2))
    gzip_beside(twin)
    saved = open(env.state_file).read()
    finish(env, 15)  # each event once
    # gzip finishes; a crash had lost the position saved after the first run: the same lines
    # are read again, now from the compressed copy, and must come with the same ids
    gzip_done(twin)
    with open(env.state_file, "w") as fh:
        fh.write(saved)
    r = env.once()
    assert r.returncode == 0, r.stderr
    env.ingest()
    env.assert_exactly(range(15), allow_repeats=True)
    assert len(env.ingested) > 15  # it was read again


def incomplete_gzip(path: str, text: str) -> None:
    """A gzip file whose writer stopped after TEXT (no end-of-stream marker)."""
    raw = io.BytesIO()
    gz = gzip.GzipFile(fileobj=raw, mode="wb")
    gz.write(text.encode())
    gz.flush(zlib.Z_SYNC_FLUSH)
    with open(path, "wb") as fh:
        fh.write(raw.getvalue())


def test_incomplete_compressed_file_gives_no_partial_line(env):
    env.append(block(0, 5))
    follow_until_stopped(env, 5)
    now = time.time()
    env.append(block(5, 5))
    os.rename(env.log, env.log + ".2")
    os.utime(env.log + ".2", (now - 20, now - 20))
    # it stops in message 15's delivery line: whole or not, nothing tells (no newline)
    lines = message_lines(15)
    incomplete_gzip(env.log + ".1.gz", block(10, 5) + "".join(line + "\n" for line in lines[:2]) + lines[2])
    os.utime(env.log + ".1.gz", (now - 10, now - 10))
    env.append(block(20, 5))
    r = env.once()
    assert r.returncode == 0, r.stderr
    env.ingest()
    env.assert_exactly([*range(15), *range(20, 25)])
    assert "ends early" in r.stderr, r.stderr


def test_rotation_while_catching_up_reads_the_file_in_between(tmp_path):
    env = Env(tmp_path, batch_lines=4)  # one message per chunk: catching up takes a while
    try:
        env.append(block(0, 5))
        follow_until_stopped(env, 5)
        env.append(block(5, 400))  # A: much to read after the restart
        os.rename(env.log, env.log + ".1")
        env.append(block(405, 20))  # B
        proc = env.start()
        env.wait_for(10, proc=proc)
        proc.send_signal(signal.SIGSTOP)  # still in A, which is now rotated away again
        try:
            env.ingest()
            assert len(set(env.recipients())) < 400, "finished A before the second rotation"
            os.rename(env.log + ".1", env.log + ".2")
            os.rename(env.log, env.log + ".1")
            env.append(block(425, 10))  # C
        finally:
            proc.send_signal(signal.SIGCONT)
        env.wait_for(435, proc=proc, timeout=60)
        time.sleep(0.3)
        code, err = env.stop(proc)
        assert code == 0, err
        env.ingest()
        env.assert_exactly(range(435))
    finally:
        env.cleanup()


def test_a_crash_in_a_later_rotated_file_repeats_its_lines_with_the_same_ids(env):
    env.append(block(0, 5))
    follow_until_stopped(env, 5)
    now = time.time()
    env.append(block(5, 5))
    os.rename(env.log, env.log + ".2")  # A, holding the position
    os.utime(env.log + ".2", (now - 20, now - 20))
    env.append(block(10, 5))
    os.rename(env.log, env.log + ".1")  # B, rotated after it: never positioned in before
    os.utime(env.log + ".1", (now - 10, now - 10))
    env.append(block(15, 5))
    b_key = f"f:{os.stat(env.log + '.1').st_ino}:"
    # The follower's own loop, up to a crash right after the first events of B are spooled and
    # before the position after them is saved.
    follower = logfollow.Follower(logfollow.LogfollowSettings.from_config(config.load(env.config)),
                                  follow=False)
    try:
        while True:
            chunk = follower.source.read_chunk(4)
            assert chunk.items or not chunk.eof, "never reached B"
            crash = any(key.startswith(b_key) for key, _line, _hint in chunk.items)
            if crash:
                chunk.state = follower._last_saved  # its events are spooled, its position is not
            follower.handle_chunk(chunk)
            if crash:
                break
    finally:
        follower.source.close()
    compress(env.log + ".1")  # B is compressed (a new inode) before the follower runs again
    r = env.once()
    assert r.returncode == 0, r.stderr
    env.ingest()
    env.assert_exactly(range(20), allow_repeats=True)
