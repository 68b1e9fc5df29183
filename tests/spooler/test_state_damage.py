"""A damaged state.db (one index page overwritten) is not a bad spool record.

Real Postfix, milter and spooler processes, a real state.db whose index page is overwritten
while the spooler is stopped: the spooler must leave the accepted mail in new/ (nothing in
bad/), stop with a CRITICAL line and exit status 3, and `mxhook status` and `mxhook check` must
say state.db is damaged. Once state.db is replaced, the same mail is ingested and posted.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from mxhook import spool
from tests.support.daemons import DaemonError
from tests.support.postfix import make_message
from tests.spooler.test_spooler import wait_status

pytestmark = pytest.mark.e2e

RCPT = "dmg@ours.example"
SENDER = "someone@sender.example"


def _send(stack, subject: str) -> None:
    res = stack.send(SENDER, [RCPT], make_message(from_=SENDER, to=RCPT, subject=subject))
    assert res.accepted, res


def _wait_posted(stack, subjects: set[str], timeout: float = 30.0) -> set[str]:
    """The subjects posted once all of `subjects` are, or when `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        seen = stack.receiver.requests
        posted = {r.json()["message"]["subject"] for r in seen}
        left = deadline - time.monotonic()
        if posted >= subjects or left <= 0:
            return posted
        try:
            stack.receiver.wait_for(len(seen) + 1, timeout=left)  # the next post
        except AssertionError:  # none came in time
            pass


def _overwrite_an_index_page(path: str) -> str:
    """Overwrite the root page of an index of the messages table (what every inbound ingest
    writes to) with bytes that are no b-tree page; returns the index's name."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        name, root = conn.execute(
            "SELECT name, rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' "
            "ORDER BY name LIMIT 1").fetchone()
    finally:
        conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(bytes((n * 37 + 11) % 256 for n in range(page_size)))
    return name


def _start(daemon) -> None:
    """Start a daemon that may well exit at once (its exit status is what is checked)."""
    try:
        daemon.start()
    except DaemonError:
        pass


def _wait_exit(daemon, timeout: float = 30.0) -> int | None:
    try:
        return daemon.proc.wait(timeout)
    except Exception:
        return None


def test_damaged_state_db_stops_the_spooler_and_keeps_the_mail(make_stack):
    stack = make_stack(permit=["ours.example"])
    stack.add_rule("dmg", "/hook", "--when", r"To~^dmg@ours\.example$")
    stack.wait_milter_snapshot()
    first = {f"before {n}" for n in range(5)}
    for subject in sorted(first):
        _send(stack, subject)
    assert _wait_posted(stack, first) >= first
    stack.spooler.stop()
    state_db = stack.cfg.state_db
    index = _overwrite_an_index_page(state_db)

    later = {f"after {n}" for n in range(4)}
    for subject in sorted(later):
        _send(stack, subject)  # the milter takes them: 250, spooled
    spool_dir = stack.cfg.values["paths"]["spool_dir"]
    _start(stack.spooler)
    status = _wait_exit(stack.spooler)
    stderr = stack.spooler.stderr_text()
    assert status == 3, f"spooler still running or exited {status} with state.db's {index} overwritten\n{stderr[-2000:]}"
    assert "CRITICAL" in stderr and "damaged" in stderr, stderr[-2000:]
    assert os.listdir(os.path.join(spool_dir, "bad")) == [], "good mail quarantined for a database error"
    waiting = {r.payload.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
               for r in spool.handed_over(spool_dir) if r.kind == "inbound"}
    assert waiting == later, waiting

    report = json.loads(stack.cli("status", "--json").stdout)
    assert report["state_db"]["fault"], report["state_db"]
    text = stack.cli("status").stdout
    assert "state db:   DAMAGED" in text, text
    check = stack.cli("check", "--json", check=False)
    rows = [r for r in json.loads(check.stdout) if r["check"] == "state_db"] if check.stdout.startswith("[") else []
    assert check.returncode != 0, check.stdout
    assert any(not r["ok"] and "damaged" in r["message"] for r in rows), check.stdout
    assert any(not r["ok"] and ("integrity" in r["message"] or "cannot be read" in r["message"])
               for r in rows), check.stdout

    # a restart does not go on with the damaged file either
    _start(stack.spooler)
    assert _wait_exit(stack.spooler) == 3

    # the admin restores state.db (here: an empty one): the mail that waited is posted
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(state_db + suffix):
            os.rename(state_db + suffix, state_db + suffix + ".damaged")
    stack.spooler.start()
    assert _wait_posted(stack, first | later) >= later
    assert not os.path.exists(state_db + ".fault")
    assert json.loads(stack.cli("status", "--json").stdout)["state_db"]["fault"] is None


def _overwrite_table_root(path: str, table: str) -> None:
    """Overwrite the root page of `table` (one ingest never touches: only results write it)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,)).fetchone()[0]
    finally:
        conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(bytes((n * 37 + 11) % 256 for n in range(page_size)))


def test_damage_found_while_recording_a_result_stops_the_spooler_too(make_stack):
    # damage anywhere (here: the attempts table, met when a post's result is written) is
    # treated as at ingest: CRITICAL, fault file, exit 3, and the post is not repeated
    stack = make_stack(permit=["ours.example"])
    stack.add_rule("dmg", "/hook", "--when", r"To~^dmg@ours\.example$")
    stack.wait_milter_snapshot()
    _send(stack, "before")
    assert _wait_posted(stack, {"before"}) == {"before"}
    (before,) = stack.receiver.requests
    wait_status(stack.cfg, before.headers["webhook-id"], "succeeded")  # its result is recorded
    stack.spooler.stop()
    state_db = stack.cfg.state_db
    _overwrite_table_root(state_db, "attempts")
    seen = len(stack.receiver.requests)
    _start(stack.spooler)
    _send(stack, "after")
    status = _wait_exit(stack.spooler, timeout=20)
    stderr = stack.spooler.stderr_text()
    # Nothing can come after the exit: the spooler lets posts under way finish before it
    # exits, and the receiver records a request before it answers it.
    ids = [r.headers.get("webhook-id") for r in stack.receiver.requests[seen:]]
    assert status == 3, f"spooler still running or exited {status}; {len(ids)} post(s)\n{stderr[-2000:]}"
    assert len(ids) <= 1, f"{len(ids)} posts ({len(set(ids))} webhook-ids) with state.db damaged"
    assert "CRITICAL" in stderr and "damaged" in stderr, stderr[-2000:]
    assert stderr.count("cannot record") <= 1, stderr[-2000:]
    assert os.path.exists(state_db + ".fault")
    assert json.loads(stack.cli("status", "--json").stdout)["state_db"]["fault"]
