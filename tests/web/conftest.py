"""mxhook-web as a real server process over HTTP (waitress on a free loopback port), with its
own config, databases and spool in a temp directory, and the real `mxhook` CLI beside it."""
from __future__ import annotations

import os

import pytest

from mxhook import spool
from mxhook.store.statedb import StateStore
from tests.support.daemons import Cli, MxhookConfig, WebProcess
from tests.support.ports import free_port
from tests.support.web_client import Client, Reply


class WebStack:
    def __init__(self, workdir: str):
        self.port = free_port()
        self.cfg = MxhookConfig(workdir, socket="unix:" + os.path.join(workdir, "milter.sock"), overrides={
            "web": {"listen": f"127.0.0.1:{self.port}", "access_db": os.path.join(workdir, "access.db"),
                    "log": "stderr"},
            "http": {"allow_networks": "127.0.0.0/8"},
        })
        spool.ensure_dirs(self.cfg.spool_dir)
        StateStore(self.cfg.state_db).close()
        self.cli = Cli(self.cfg)
        self.tokens = {name: self.token(name) for name in ("admin", "other")}
        self.tokens["reader"] = self.token("reader", "--read-only")
        self.web = WebProcess(self.cfg)
        self.client = Client(f"http://127.0.0.1:{self.port}")

    def token(self, name: str, *args: str) -> str:
        return self.cli("token", "add", name, *args).stdout.strip()

    def __call__(self, method: str, path: str, *, token: str | None = "admin", **kw) -> Reply:
        """A request with the named token (None: no Authorization)."""
        return self.client.request(method, path, token=self.tokens.get(token, token) if token else None, **kw)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = WebStack(str(tmp_path_factory.mktemp("web")))
    s.web.start()
    try:
        yield s
    finally:
        s.web.stop()
