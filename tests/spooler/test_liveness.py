"""`mxhook check`'s liveness rows against real daemon processes: mxhook-spooler and
mxhook-logfollow write heartbeat files from their loops (mxhook.heartbeat); a stopped, killed
or hanging one is reported DOWN, and check exits 1."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from tests.support.ports import free_port

from mxhook import config as configmod
from mxhook import heartbeat
from mxhook.services import check as checksvc
from tests.support.daemons import Cli, LogfollowProcess, MxhookConfig, SpoolerProcess, logfollow_settings


def wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)


def rows(cfg: MxhookConfig) -> dict[str, dict]:
    return {r["check"]: r for r in checksvc.check_daemons(configmod.load(cfg.path))}


@pytest.fixture
def cfg(tmp_path):
    maillog = tmp_path / "mail.log"
    maillog.write_text("")
    c = MxhookConfig(str(tmp_path), socket="unix:" + str(tmp_path / "milter.sock"),
                     overrides={**logfollow_settings(str(tmp_path), str(maillog)),
                                "web": {"access_db": str(tmp_path / "access.db"),
                                        "listen": f"127.0.0.1:{free_port()}"}})
    return c


def test_a_running_spooler_is_alive_a_stopped_or_killed_one_is_down(cfg):
    spooler = SpoolerProcess(cfg).start()
    beat = heartbeat.path_for(cfg.state_db, heartbeat.SPOOLER)
    try:
        wait_for(beat)
        row = rows(cfg)["spooler"]
        assert row["ok"] and row["message"].startswith(f"mxhook-spooler is running (pid {spooler.pid};")
        with open(beat) as fh:
            assert json.load(fh)["pid"] == spooler.pid

        # hanging: the loop stopped touching the file (its age is what tells)
        past = time.time() - heartbeat.STALE_AFTER - 5
        os.utime(beat, (past, past))
        row = rows(cfg)["spooler"]
        assert not row["ok"] and row["code"] == "daemon_down"
        assert "mxhook-spooler is DOWN: its loop last wrote" in row["message"] and "it hangs" in row["message"]
    finally:
        spooler.stop()

    # stopped cleanly: the file is gone
    assert not os.path.exists(beat)
    row = rows(cfg)["spooler"]
    assert not row["ok"]
    assert row["message"].startswith(f"mxhook-spooler is DOWN: {beat} does not exist: it is not running")

    # killed: the file stays, its pid is gone
    spooler.start()
    wait_for(beat)
    spooler.kill(signal.SIGKILL)
    row = rows(cfg)["spooler"]
    assert not row["ok"] and "died without stopping cleanly" in row["message"]

    # the command says so and exits 1
    proc = Cli(cfg).run("check", "--json", check=False)
    assert proc.returncode == 1
    (found,) = [r for r in json.loads(proc.stdout) if r["check"] == "spooler"]
    assert found["ok"] is False and "DOWN" in found["message"]


def test_the_log_follower_is_expected_once_it_ran(cfg):
    state_file = cfg.values["logfollow"]["state_file"]
    assert rows(cfg)["logfollow"] == {
        "check": "logfollow", "ok": True,
        "message": f"mxhook-logfollow is not running here (it never ran: no position file "
                   f"{state_file}; delivery events need it)"}
    follower = LogfollowProcess(cfg).start()
    beat = heartbeat.path_for(state_file, heartbeat.LOGFOLLOW)
    try:
        wait_for(beat)
        wait_for(state_file)
        assert rows(cfg)["logfollow"]["ok"]
    finally:
        follower.stop()
    row = rows(cfg)["logfollow"]
    assert not row["ok"] and row["message"].startswith("mxhook-logfollow is DOWN")


def test_web_is_checked_once_access_db_exists_and_a_dead_milter_socket_is_down(cfg, tmp_path):
    assert rows(cfg)["web"]["ok"]
    Cli(cfg)("token", "add", "ops", "--read-only")
    row = rows(cfg)["web"]
    assert not row["ok"] and row["message"].startswith(
        f"mxhook-web is DOWN: http://{cfg.values['web']['listen']}/: Connection refused")
    row = rows(cfg)["milter"]
    assert not row["ok"] and row["message"].startswith(f"mxhook-milter is DOWN: {tmp_path}/milter.sock: connect:")
