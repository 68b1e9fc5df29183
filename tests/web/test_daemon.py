"""mxhook-web's settings and start-up refusals."""
from __future__ import annotations

import subprocess

import pytest

from mxhook import config as configmod
from mxhook.daemons.web import WebSettings, serve_options
from tests.support.daemons import _program


@pytest.mark.parametrize("listen", ["127.0.0.1:8025", "[::1]:8025", "localhost:1"])
def test_listen_takes_host_and_port(listen):
    assert configmod.from_dict({"web": {"listen": listen}}).value("web", "listen") == listen


@pytest.mark.parametrize("listen", ["8025", "127.0.0.1", ":8025", "127.0.0.1:0", "h:65536", "h:x"])
def test_listen_refuses_other_forms(listen):
    with pytest.raises(configmod.ConfigError, match=r"\[web\] listen"):
        configmod.from_dict({"web": {"listen": listen}}).value("web", "listen")


def test_defaults_serve_loopback_and_trust_no_proxy():
    options = serve_options(WebSettings.from_config(configmod.from_dict({})))
    assert options["listen"] == "127.0.0.1:8025" and options["threads"] == 4
    assert "trusted_proxy" not in options and options["clear_untrusted_proxy_headers"]
    proxied = serve_options(WebSettings.from_config(configmod.from_dict(
        {"web": {"trusted_proxy": "127.0.0.1", "max_request_size": "64K"}})))
    assert proxied["trusted_proxy"] == "127.0.0.1" and proxied["max_request_body_size"] == 65536
    assert proxied["trusted_proxy_headers"] == {"x-forwarded-for", "x-forwarded-proto"}


def test_a_bad_config_exits_2_naming_the_key(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[web]\nthreads = 0\n")
    proc = subprocess.run(_program("mxhook-web", "mxhook.daemons.web") + ["--config", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "[web] threads must be at least 1" in proc.stderr
