"""`mxhook check`'s `track` lines against a real mxhook-track process: probed on `[tracking]
listen` once `public_url` is set, DOWN when it does not answer; a missing or empty key file
and a public URL that is not https are problems too."""
from __future__ import annotations

import base64
import os

import pytest

from mxhook import config as configmod
from mxhook.services import check as checksvc
from tests.support.daemons import MxhookConfig, TrackProcess
from tests.support.postfix import free_port

PUBLIC = "https://t.example.com"


def track_rows(cfg: MxhookConfig) -> list[dict]:
    return [r for r in checksvc.check_daemons(configmod.load(cfg.path)) if r["check"] == "track"]


@pytest.fixture
def cfg(tmp_path):
    key_file = tmp_path / "tracking.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return MxhookConfig(str(tmp_path), socket="unix:" + str(tmp_path / "milter.sock"),
                        overrides={"tracking": {"key_file": str(key_file), "log": "stderr",
                                                "listen": f"127.0.0.1:{free_port()}"}})


def test_track_is_probed_once_public_url_is_set(cfg):
    assert track_rows(cfg) == [{"check": "track", "ok": True, "message": (
        "mxhook-track is not set up ([tracking] public_url is empty: no tracking)")}]
    cfg.update({"tracking": {"public_url": PUBLIC}})
    listen = cfg.values["tracking"]["listen"]
    with TrackProcess(cfg):
        assert track_rows(cfg) == [{"check": "track", "ok": True, "message": (
            f"mxhook-track is running (it answers on http://{listen}/healthz)")}]
    (row,) = track_rows(cfg)
    assert not row["ok"] and row["code"] == "daemon_down"
    assert row["message"].startswith(f"mxhook-track is DOWN: http://{listen}/healthz: Connection refused")
    assert "`systemctl restart mxhook-track`" in row["message"]


def test_another_server_on_the_port_is_not_mxhook_track(monkeypatch):
    monkeypatch.setattr(checksvc, "_get", lambda listen, path, timeout: (404, b"not found\n"))
    assert checksvc.probe_track("127.0.0.1:8026") == (
        "http://127.0.0.1:8026/healthz answered 404, not as mxhook-track does")


@pytest.mark.parametrize("content,why", [
    (None, "does not exist"),
    ("# rotated away\n\n", "holds no key"),
    ("c2hvcnQ=\n", "cannot be used (line 1: a key needs at least 32 bytes, this has 5)"),
])
def test_a_missing_or_empty_key_file_is_a_problem(cfg, monkeypatch, content, why):
    monkeypatch.setattr(checksvc, "probe_track", lambda listen: None)
    key_file = cfg.values["tracking"]["key_file"]
    if content is None:
        os.unlink(key_file)
    else:
        with open(key_file, "w") as fh:
            fh.write(content)
    cfg.update({"tracking": {"public_url": PUBLIC}})
    alive, problem = track_rows(cfg)
    assert alive["ok"]
    assert not problem["ok"] and problem["code"] == "tracking_key_missing"
    assert problem["message"].startswith(f"tracking key: {key_file} {why}, so the milter tracks no mail")
    assert "`mxhook tracking rotate-key`" in problem["message"]


def test_a_public_url_without_tls_is_a_problem(cfg, monkeypatch):
    monkeypatch.setattr(checksvc, "probe_track", lambda listen: None)
    cfg.update({"tracking": {"public_url": "http://t.example.com"}})
    alive, problem = track_rows(cfg)
    assert alive["ok"]
    assert not problem["ok"] and problem["code"] == "tracking_not_https"
    assert problem["message"].startswith("[tracking] public_url http://t.example.com is not https")
