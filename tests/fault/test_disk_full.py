"""Disk full: the spool on a small file system (a 2 MiB tmpfs) that fills up.

1. With the spooler stopped, spool files pile up until the file system is full: Postfix must
   answer 4xx (never 250) from then on; what the spool holds, as whole records, is exactly the
   accepted mail (a torn record at the end of a segment does not count: it was never
   acknowledged); no stray half-written file is left in tmp/.
2. The spooler is started: it ingests and posts everything that was accepted — each payload
   byte for byte what was sent — and nothing that was refused; with the space back, the next
   message gets 250 and is posted (recovery without a restart).
3. A filler file takes all the space with the spooler running: 4xx again; delete the filler
   and the next message gets 250 and is posted. At the end tmp/, new/ and bad/ are empty.

The checks go through the records (spool.handed_over where it exists), not the file layout,
so they hold for one file per record and for segments alike.

Needs root and mount(8). If a tmpfs cannot be mounted here, a loop-mounted ext4 image is tried;
if neither works the test is skipped saying why. The file system is unmounted in teardown.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest

from mxhook import spool
from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

SIZE = "2m"
RCPT = "full@ours.example"
SENDER = "filler@sender.example"
ATTACHMENT = 150_000  # bytes; ~205 KB on the wire (base64): about 10 fit in 2 MiB


def _run(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def small_fs():
    """A mounted 2 MiB file system: (path, how). Unmounted (and removed) in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    base = tempfile.mkdtemp(prefix="mxhook-diskfull-")
    os.chmod(base, 0o755)
    mnt = os.path.join(base, "spool")
    os.mkdir(mnt)
    how = None
    res = _run("mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0750", "tmpfs", mnt)
    if res.returncode == 0:
        how = "tmpfs"
    else:
        tmpfs_error = (res.stderr or res.stdout).strip()
        image = os.path.join(base, "spool.img")
        with open(image, "wb") as fh:
            fh.truncate(4 * 1024 * 1024)  # ext4 needs a little room for itself
        steps = [("mkfs.ext4", "-q", "-F", "-m", "0", image), ("mount", "-o", "loop", image, mnt)]
        for argv in steps:
            res = _run(*argv)
            if res.returncode != 0:
                shutil.rmtree(base, ignore_errors=True)
                pytest.skip(f"cannot mount a small file system here: tmpfs: {tmpfs_error}; "
                            f"loop ext4 ({argv[0]}): {(res.stderr or res.stdout).strip()}")
        how = "loop ext4"
    try:
        yield mnt, how
    finally:
        res = _run("umount", mnt)
        if res.returncode != 0:
            time.sleep(0.5)
            res = _run("umount", "-l", mnt)
        assert res.returncode == 0, f"umount {mnt}: {res.stderr}"
        shutil.rmtree(base, ignore_errors=True)


def fill(path: str) -> int:
    """Write zeros to `path` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
                continue
            written += n
    finally:
        os.close(fd)
    return written


def files(spool_dir: str, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool_dir, sub)))


def stray_tmp(spool_dir: str) -> list[str]:
    """Files in tmp/ other than segments (`*.seg`: the milter's open or broken append-only
    segments, whose whole records count as handed over and whose torn tail is cut on recovery):
    a per-record temp file left there was half-written and never renamed."""
    return [n for n in files(spool_dir, "tmp") if not n.endswith(".seg")]


def handed_over(spool_dir: str) -> list:
    """Every whole record durably in the spool, whatever the layout: files in new/ (one or
    more records each) and the whole records of segments in tmp/."""
    if hasattr(spool, "handed_over"):
        return spool.handed_over(spool_dir)
    read_all = getattr(spool, "read_all", None)
    return [r for p in spool.pending(spool_dir) for r in (read_all(p) if read_all else [spool.read(p)])]


def subject_of(record) -> str:
    for line in record.payload.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode("utf-8", "replace")
    return ""


def wait_tmp_clean(spool_dir: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while files(spool_dir, "tmp") and time.monotonic() < deadline:
        time.sleep(0.2)
    return files(spool_dir, "tmp")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def posted(receiver) -> dict[str, str]:
    """subject -> sha256 of the attachment, for every request the receiver got."""
    out = {}
    for req in receiver.requests:
        m = req.json()["message"]
        (att,) = m["attachments"]
        assert att["size"] == len(base64.b64decode(att["content"])), "attachment size does not match its content"
        out[m["subject"]] = digest(base64.b64decode(att["content"]))
    return out


def drained(mnt: str, timeout: float = 30) -> None:
    """Wait until the spool holds nothing: every ingested file unlinked."""
    deadline = time.monotonic() + timeout
    while (files(mnt, "new") or handed_over(mnt)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert files(mnt, "new") == [] and handed_over(mnt) == []


def test_spool_on_a_full_file_system(small_fs, make_stack):
    mnt, how = small_fs
    stack = make_stack(config={"paths": {"spool_dir": mnt}})
    stack.add_rule("full", "/hook", "--when", r"To~^full@ours\.example$", "--discard")
    stack.wait_milter_snapshot()
    rng = random.Random(4242)
    sent: dict[str, str] = {}  # subject -> attachment sha256, for 250s
    refused: list[str] = []

    def send(subject: str):
        content = rng.randbytes(ATTACHMENT)
        msg = make_message(from_=SENDER, to=RCPT, subject=subject,
                           attachments=[("blob.bin", "application/octet-stream", content)])
        res = stack.send(SENDER, [RCPT], msg, timeout=60)
        if res.accepted:
            sent[subject] = digest(content)
        else:
            refused.append(subject)
        return res

    # 1. pile up with the spooler stopped until the file system is full
    stack.spooler.stop()
    first_refusal = None
    for i in range(40):
        res = send(f"pile {i}")
        if not res.accepted:
            first_refusal = res
            break
    assert first_refusal is not None, f"{how} of {SIZE} never filled up after 40 messages"
    assert first_refusal.stage == "DATA" and 400 <= first_refusal.code < 500, first_refusal
    assert len(sent) >= 3, f"only {len(sent)} message(s) fit before the refusal: {first_refusal}"
    res = send("still full")
    assert not res.accepted and 400 <= res.code < 500, res
    assert stray_tmp(mnt) == [], "a refused message left a half-written file in tmp/"
    assert files(mnt, "bad") == []
    # what the spool holds, whole, is exactly what Postfix accepted: nothing refused, no torn
    # record counted (every file in new/ decodes; segments count up to their last whole record)
    records = handed_over(mnt)
    assert sorted(subject_of(r) for r in records) == sorted(sent), (
        sorted(subject_of(r) for r in records), sorted(sent), refused)
    for record in records:
        assert record.kind == "inbound" and len(record.payload) > ATTACHMENT

    # 2. the spooler drains the spool: everything accepted is posted intact, nothing refused
    stack.spooler.start()
    stack.receiver.wait_for(len(sent), timeout=60)
    drained(mnt)
    got = posted(stack.receiver)
    assert got == sent, {"missing": sorted(set(sent) - set(got)), "unexpected": sorted(set(got) - set(sent))}
    res = send("after drain")
    assert res.accepted, f"no recovery after the spool drained: {res}"
    stack.receiver.wait_for(len(sent), timeout=30)
    drained(mnt)  # its file unlinked (after the post, as may be): else it frees room below

    # 3. a filler file takes every byte; removing it brings 250 back, no restart
    filler = os.path.join(mnt, "filler")
    fill(filler)
    res = send("while filled")
    assert not res.accepted and res.stage == "DATA" and 400 <= res.code < 500, res
    assert stray_tmp(mnt) == [] and handed_over(mnt) == []
    os.unlink(filler)
    res = send("after filler removed")
    assert res.accepted, f"no recovery after the filler was removed: {res}"
    stack.receiver.wait_for(len(sent), timeout=30)
    time.sleep(1.0)  # anything refused that was (wrongly) spooled would be posted by now
    got = posted(stack.receiver)
    assert got == sent, {"missing": sorted(set(sent) - set(got)), "unexpected": sorted(set(got) - set(sent))}
    assert not set(got) & set(refused)
    assert files(mnt, "bad") == []
    assert wait_tmp_clean(mnt) == [], "spool tmp/ not cleaned up (broken segments are recovered by the spooler)"
    assert files(mnt, "new") == []
    rows = stack.wait_status(lambda rows: sum(r.get("status") == "succeeded" for r in rows) == len(sent),
                             30, "--limit", "1000")
    assert not [r for r in rows if r.get("status") in ("queued", "deferred", "failed")], rows
    print(f"disk full on {how} {SIZE}: {len(sent)} accepted and posted intact, "
          f"{len(refused)} refused with 4xx and never posted")
