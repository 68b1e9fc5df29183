"""mxhook-milter as a real process: socket mode/group from birth, clean stop on SIGTERM."""
import grp
import os
import signal
import socket
import time

import pytest

from tests.support.daemons import MilterProcess, MxhookConfig

pytestmark = pytest.mark.e2e


def test_socket_is_born_0660_group_postfix_and_sigterm_stops_cleanly(tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    cfg = MxhookConfig(str(tmp_path / "mx"), queue_dir=str(queue))
    milter = MilterProcess(cfg)
    milter.start()
    try:
        path = cfg.socket_path
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, grp.getgrnam("postfix").gr_gid)
        d = os.stat(os.path.dirname(path))
        assert d.st_mode & 0o2000 and d.st_gid == grp.getgrnam("postfix").gr_gid  # setgid dir
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
        milter.proc.send_signal(signal.SIGTERM)
        assert milter.proc.wait(10) == 0, milter.stderr_text()
        assert "stopped" in milter.stderr_text()
    finally:
        milter.stop()


def test_bad_config_exits_2_with_a_clear_message(tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    cfg = MxhookConfig(str(tmp_path / "mx"), queue_dir=str(queue))
    text = open(cfg.path).read().replace("[milter]\n", "[milter]\nunknown_domains = maybe\n")
    with open(cfg.path, "w") as fh:
        fh.write(text)
    milter = MilterProcess(cfg)
    with pytest.raises(Exception):
        milter.start()
    deadline = time.monotonic() + 10
    while milter.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert milter.proc.returncode == 2
    assert "unknown_domains" in milter.stderr_text() and "must be one of reject, pass" in milter.stderr_text()
