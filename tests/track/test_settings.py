"""mxhook-track's settings and start-up refusals."""
from __future__ import annotations

import subprocess

import pytest

from mxhook import config as configmod
from mxhook.daemons.track import TrackSettings, serve_options
from tests.support.daemons import _program


def test_defaults_listen_on_loopback_behind_a_local_proxy():
    settings = TrackSettings.from_config(configmod.from_dict({}))
    assert (settings.listen, settings.privacy, settings.key_file) == (
        "127.0.0.1:8026", "full", "/etc/mxhook/tracking.key")
    options = serve_options(settings)
    assert options["listen"] == "127.0.0.1:8026" and options["threads"] == 32
    assert options["trusted_proxy"] == "127.0.0.1" and options["clear_untrusted_proxy_headers"]
    bare = serve_options(TrackSettings.from_config(configmod.from_dict({"tracking": {"trusted_proxy": ""}})))
    assert "trusted_proxy" not in bare


@pytest.mark.parametrize("key,value,message", [
    ("privacy", "none", "must be one of full, aggregate"),
    ("machine_burst_seconds", "0", "must be above 0"),
    ("machine_click_seconds", "-1", "must be 0 or more"),
    ("listen", "8026", "HOST:PORT"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(configmod.ConfigError, match=message):
        TrackSettings.from_config(configmod.from_dict({"tracking": {key: value}}))


def test_a_bad_config_exits_2_naming_the_key(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[tracking]\nthreads = 0\n")
    proc = subprocess.run(_program("mxhook-track", "mxhook.daemons.track") + ["--config", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "[tracking] threads must be at least 1" in proc.stderr


def test_an_address_in_use_exits_1(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf = tmp_path / "c.conf"
        conf.write_text(f"[paths]\nspool_dir = {tmp_path / 'spool'}\n[tracking]\n"
                        f"listen = 127.0.0.1:{taken.getsockname()[1]}\nkey_file = {tmp_path / 'none'}\n"
                        "log = stderr\n")
        proc = subprocess.run(_program("mxhook-track", "mxhook.daemons.track") + ["--config", str(conf)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr
    assert "no tracking key" in proc.stderr
