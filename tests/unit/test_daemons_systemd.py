"""The five daemons as real processes under a stand-in for systemd's notify socket: READY=1
only once each serves, RELOADING=1/READY=1 around a reload (the unit's reload signal), a bad
file that keeps the running configuration, STOPPING=1 at SIGTERM."""
from __future__ import annotations

import grp
import os
import signal
import socket
import time

import pytest

from mxhook.daemons import systemd
from tests.support.daemons import (
    LogfollowProcess, MilterProcess, MxhookConfig, SpoolerProcess, TrackProcess, WebProcess,
    logfollow_settings)
from tests.support.ports import free_port

pytestmark = pytest.mark.skipif(systemd._sd is None, reason="no python3-systemd (pip install 'mxhook[systemd]')")


class Notifications:
    """A datagram socket standing in for systemd's (NOTIFY_SOCKET), and what came in."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen: list[dict[str, str]] = []

    def env(self) -> dict[str, str]:
        return dict(os.environ, NOTIFY_SOCKET=self.path)

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        fields = dict(line.split("=", 1) for line in self.sock.recv(4096).decode().split("\n"))
        self.seen.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            fields = self.next(max(0.1, deadline - time.monotonic()))
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path):
    n = Notifications(str(tmp_path / "notify"))
    yield n
    n.close()


def wait_text(daemon, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = daemon.stderr_text()
        if text in out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {daemon.name}'s log:\n{daemon.stderr_text()}")


def reload_and_check(daemon, cfg: MxhookConfig, notifications: Notifications, sig: int,
                     hot: dict, cold: dict, applied: str, waiting: str) -> None:
    """Change a hot and a cold key, send the reload signal: both logged as they should be; then
    a file that does not check: the daemon says so and keeps running."""
    cfg.update(hot)
    cfg.update(cold)
    os.kill(daemon.pid, sig)
    assert "MONOTONIC_USEC" in notifications.wait_for("RELOADING")
    assert notifications.wait_for("READY")["READY"] == "1"
    out = wait_text(daemon, f"applied {applied}")
    assert waiting in out and "read only at start" in out
    with open(cfg.path, "a", encoding="utf-8") as fh:
        fh.write("\n[spooler]\nworkers = many\n")
    os.kill(daemon.pid, sig)
    notifications.wait_for("READY")
    wait_text(daemon, "the running configuration stays")
    assert daemon.running()


def stop_and_check(daemon, notifications: Notifications) -> None:
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.stderr_text()
    assert notifications.wait_for("STOPPING")["STOPPING"] == "1"


def test_milter_is_ready_once_its_socket_serves_and_reloads_on_sigusr1(tmp_path, notifications):
    socket_path = tmp_path / "postfix" / "mxhook" / "milter.sock"
    cfg = MxhookConfig(str(tmp_path), socket=f"unix:{socket_path}")
    milter = MilterProcess(cfg, env=notifications.env())
    with milter:
        ready = notifications.wait_for("READY")
        assert ready["STATUS"] == f"listening on unix:{socket_path}"
        # When READY=1 was sent the socket was there, with the mode and group Postfix needs.
        st = os.stat(socket_path)
        assert st.st_mode & 0o777 == 0o660 and st.st_gid == grp.getgrnam("postfix").gr_gid
        reload_and_check(milter, cfg, notifications, signal.SIGUSR1,
                         hot={"milter": {"unknown_domains": "pass", "log_level": "debug"}},
                         cold={"milter": {"timeout": "30"}},
                         applied="[milter] log_level = 'debug', [milter] unknown_domains = 'pass'",
                         waiting="[milter] timeout changed")
        stop_and_check(milter, notifications)


def test_spooler_is_ready_with_state_db_open_and_reloads_on_sighup(tmp_path, notifications):
    cfg = MxhookConfig(str(tmp_path), socket="unix:/nonexistent/milter.sock")
    spooler = SpoolerProcess(cfg, env=notifications.env())
    with spooler:
        assert notifications.wait_for("STATUS")["STATUS"].startswith(f"opening {cfg.state_db}")
        ready = notifications.wait_for("READY")
        assert ready["STATUS"].startswith("delivering") and os.path.exists(cfg.state_db)
        reload_and_check(spooler, cfg, notifications, signal.SIGHUP,
                         hot={"spooler": {"poll_interval": "0.2", "user_agent": "ours/2"}},
                         cold={"spooler": {"workers": "3"}},
                         applied="[spooler] poll_interval = '0.2', [spooler] user_agent = 'ours/2'",
                         waiting="[spooler] workers changed")
        stop_and_check(spooler, notifications)


def test_logfollow_is_ready_when_following_and_reloads_on_sighup(tmp_path, notifications):
    maillog = tmp_path / "mail.log"
    maillog.write_text("")
    cfg = MxhookConfig(str(tmp_path), socket="unix:/nonexistent/milter.sock",
                       overrides=logfollow_settings(str(tmp_path), str(maillog)))
    follower = LogfollowProcess(cfg, env=notifications.env())
    with follower:
        assert notifications.wait_for("READY")["STATUS"] .startswith(f"following {maillog}")
        reload_and_check(follower, cfg, notifications, signal.SIGHUP,
                         hot={"logfollow": {"poll_interval": "0.3"}},
                         cold={"logfollow": {"start_at": "end"}},
                         applied="[logfollow] poll_interval = '0.3'",
                         waiting="[logfollow] start_at changed")
        stop_and_check(follower, notifications)


@pytest.mark.parametrize("kind, hot, applied", [
    ("web", {"log_level": "debug"}, "[web] log_level = 'debug'"),
    ("track", {"log_level": "debug", "privacy": "aggregate"},
     "[tracking] log_level = 'debug', [tracking] privacy = 'aggregate'"),
])
def test_web_and_track_are_ready_when_listening_and_reload(tmp_path, notifications, kind, hot, applied):
    port = free_port()
    section = "web" if kind == "web" else "tracking"
    cfg = MxhookConfig(str(tmp_path), socket="unix:/nonexistent/milter.sock", overrides={
        section: {"listen": f"127.0.0.1:{port}", "log": "stderr"}})
    daemon = (WebProcess if kind == "web" else TrackProcess)(cfg, env=notifications.env())
    with daemon:
        assert notifications.wait_for("READY")["STATUS"] == f"listening on 127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        reload_and_check(daemon, cfg, notifications, signal.SIGHUP, hot={section: hot},
                         cold={section: {"threads": "2"}}, applied=applied,
                         waiting=f"[{section}] threads changed")
        stop_and_check(daemon, notifications)
