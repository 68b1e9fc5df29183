"""daemons/systemd.py: sd_notify through a real AF_UNIX datagram socket, the reload signal's
thread, and Reload's comparison of the running configuration with the file."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import pytest

from mxhook import config as configmod
from mxhook.daemons import systemd
from mxhook.daemons.spooler import RELOADABLE, SpoolerSettings


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET (through
    python3-systemd: without it, a pip install without the [systemd] extra, nothing is sent)."""
    if systemd._sd is None:
        pytest.skip("no python3-systemd (pip install 'mxhook[systemd]')")
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_stopping_reach_the_socket(notify_socket):
    assert systemd.ready("listening on 127.0.0.1:8025")
    assert received(notify_socket) == ["READY=1", "STATUS=listening on 127.0.0.1:8025"]
    assert systemd.status("opening state.db")
    assert received(notify_socket) == ["STATUS=opening state.db"]
    assert systemd.stopping()
    assert received(notify_socket) == ["STOPPING=1", "STATUS=stopping"]


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False


def test_without_the_module_the_daemon_goes_on_and_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setattr(systemd, "_sd", None)
    monkeypatch.setattr(systemd, "_missing_said", False)
    with caplog.at_level(logging.ERROR):
        assert systemd.ready("x") is False
        assert systemd.ready("x") is False
    said = [r for r in caplog.records if "python3-systemd" in r.getMessage()]
    assert len(said) == 1  # once, not at every notification


def test_a_socket_that_is_gone_is_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.ready("x") is False


def test_signal_thread_runs_the_action_and_restores_the_mask():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    ran = threading.Event()
    with systemd.SignalThread(signal.SIGUSR2) as hook:
        assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        signal.pthread_kill(hook._thread.ident, signal.SIGUSR2)  # before the action: ignored
        hook.action = ran.set
        signal.pthread_kill(hook._thread.ident, signal.SIGUSR2)
        assert ran.wait(5)
        thread = hook._thread
    assert not thread.is_alive()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_signal_thread_survives_a_failing_action(caplog):
    calls = []
    done = threading.Semaphore(0)

    def action():
        calls.append(1)
        done.release()
        if len(calls) == 1:
            raise RuntimeError("boom")

    with systemd.SignalThread(signal.SIGUSR2) as hook:
        hook.action = action
        for _ in range(2):
            signal.pthread_kill(hook._thread.ident, signal.SIGUSR2)
            assert done.acquire(timeout=5)
    assert len(calls) == 2
    assert "reload failed" in caplog.text


def write(path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "mxhook.conf"
    write(path, "[spooler]\nlog = stderr\npoll_interval = 0.5\nworkers = 8\n")
    return str(path)


def spooler_reload(conf: str, applied: list) -> systemd.Reload:
    return systemd.Reload("mxhook-spooler", "spooler", configmod.load(conf), (SpoolerSettings,),
                          RELOADABLE, lambda cfg: applied.append(SpoolerSettings.from_config(cfg)),
                          path=conf)


def test_reload_applies_hot_keys_and_names_those_waiting_for_a_restart(conf, caplog):
    applied = []
    reload = spooler_reload(conf, applied)
    write(conf, "[spooler]\nlog = stderr\npoll_interval = 2\nworkers = 16\nuser_agent = ours/2\n")
    with caplog.at_level(logging.INFO):
        assert reload.reload() == [("spooler", "poll_interval"), ("spooler", "user_agent")]
    (settings,) = applied
    assert settings.poll_interval == 2.0 and settings.user_agent == "ours/2"
    assert settings.workers == 8  # read only at start: the running value stays
    assert "applied [spooler] poll_interval = '2', [spooler] user_agent = 'ours/2'" in caplog.text
    assert "[spooler] workers changed; read only at start: `systemctl restart mxhook-spooler`" in caplog.text
    # What runs is compared with the file next time: workers still waits, the rest is known.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert reload.reload() == []
    assert "applied" not in caplog.text and "[spooler] workers changed" in caplog.text


def test_reload_with_a_bad_file_keeps_the_running_configuration(conf, caplog):
    applied = []
    reload = spooler_reload(conf, applied)
    for text in ("[spooler]\npoll_interval = soon\n", "[spooler]\nno such key = 1\n", "not ini\n"):
        write(conf, text)
        caplog.clear()
        assert reload.reload() == []
        assert "the running configuration stays" in caplog.text
    os.unlink(conf)
    assert reload.reload() == [] and "config file not found" in caplog.text
    assert applied == [] and reload.cfg.get("spooler", "poll_interval") == "0.5"


def test_reload_changes_the_log_level(conf):
    reload = spooler_reload(conf, [])
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        write(conf, "[spooler]\nlog = stderr\nlog_level = debug\npoll_interval = 0.5\nworkers = 8\n")
        assert reload.reload() == [("spooler", "log_level")]
        assert root.level == logging.DEBUG
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def test_reload_tells_the_service_manager(conf, notify_socket):
    reload = systemd.Reload("mxhook-spooler", "spooler", configmod.load(conf), (SpoolerSettings,),
                            RELOADABLE, path=conf, monotonic_ns=lambda: 5_000_000)
    systemd.ready("delivering")
    received(notify_socket)
    reload()
    assert received(notify_socket) == ["RELOADING=1", "STATUS=reloading the configuration",
                                       "MONOTONIC_USEC=5000"]
    assert received(notify_socket) == ["READY=1", "STATUS=delivering"]  # ready again, as before
