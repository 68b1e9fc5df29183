"""The e2e harness itself: a private Postfix that starts fast, reports where mail was refused,
works with a pymilter milter on a unix socket, and leaves nothing behind."""
from __future__ import annotations

import grp
import os
import signal
import sys
import time

import pytest

from tests.support.daemons import Daemon
from tests.support.postfix import PrivatePostfix, _alive, make_message

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def processes_in(directory: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd").removesuffix(" (deleted)")
            except OSError:
                continue
            if cwd == directory or cwd.startswith(directory + "/"):
                found.append(int(entry))
    return found


def test_starts_fast_relays_to_the_sink_and_leaves_nothing_behind():
    t0 = time.monotonic()
    pf = PrivatePostfix(relay_domains=["ours.example"]).start()
    try:
        assert time.monotonic() - t0 < 2.0
        root, sink = pf.root, pf._sink
        res = pf.send("a@sender.example", ["in@ours.example"], make_message())
        assert res.accepted and res.queue_id and res.stage is None, res
        pf.wait_log(rf"{res.queue_id}: to=<in@ours.example>, relay=127\.0\.0\.1.*status=sent")
        pf.wait_queue_empty(10)
        master = pf._master_daemon_pid
        assert master and _alive(master)
    finally:
        pf.stop()
    time.sleep(0.2)
    assert not os.path.exists(root)
    assert sink.poll() is not None
    assert not processes_in(os.path.join(root, "queue"))
    assert not _alive(master)


def test_send_reports_the_refusing_stage():
    # without permit_mynetworks, relaying to a foreign domain is refused at RCPT by Postfix
    with PrivatePostfix(relay_domains=["ours.example"],
                        main_cf={"smtpd_relay_restrictions": "reject_unauth_destination"}) as pf:
        res = pf.send("a@sender.example", ["x@elsewhere.example"], make_message(to="x@elsewhere.example"))
        assert res.stage == "RCPT" and res.code == 554 and res.final is None, res
        res = pf.send("a@sender.example", ["x@elsewhere.example", "in@ours.example"], make_message())
        assert res.accepted, res  # one recipient left is enough
        assert res.rcpt["x@elsewhere.example"].code == 554


def test_missing_milter_is_tempfail():
    with PrivatePostfix(milters="unix:nothing/here.sock") as pf:
        res = pf.send("a@sender.example", ["in@ours.example"], make_message())
        assert not res.accepted and 400 <= res.code < 500, res


def test_null_pymilter_on_a_relative_unix_socket():
    with PrivatePostfix(milters="unix:null/null.sock") as pf:
        sock_dir = os.path.join(pf.queue_dir, "null")
        os.makedirs(sock_dir, mode=0o755)
        sock = os.path.join(sock_dir, "null.sock")
        milter = _NullMilter(pf.root, sock)
        with milter:
            st = os.stat(sock)
            assert st.st_mode & 0o777 == 0o660
            res = pf.send("a@sender.example", ["in@ours.example"], make_message())
            assert res.accepted, f"{res}\n{pf.log_text()}\n{milter.stderr_text()}"
            # libmilter notices SIGTERM only every 5 s; a null milter has nothing to finish
            milter.kill(signal.SIGKILL)


class _NullMilter(Daemon):
    name = "null-milter"

    def __init__(self, workdir, sock):
        super().__init__([sys.executable, os.path.join(ROOT, "bench", "null_milter.py"), "unix:" + sock], workdir)
        self.sock = sock

    def wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._check_alive()
            st = os.stat(self.sock) if os.path.exists(self.sock) else None
            if st and st.st_mode & 0o777 == 0o660 and st.st_gid == grp.getgrnam("postfix").gr_gid:
                return
            time.sleep(0.02)
        raise AssertionError(self.stderr_text())
