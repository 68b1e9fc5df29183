"""mxhook-web as a real server process over HTTP (waitress on a free loopback port), with its
own config, databases and spool in a temp directory, and the real `mxhook` CLI beside it."""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

from mxhook import spool
from mxhook.store.statedb import StateStore
from tests.support.daemons import Cli, Daemon, DaemonError, MxhookConfig, _program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebProcess(Daemon):
    """`mxhook-web --config PATH`; ready when it accepts a connection."""

    name = "web"

    def __init__(self, cfg: MxhookConfig, **kw):
        super().__init__(_program("mxhook-web", "mxhook.daemons.web") + ["--config", cfg.path],
                         cfg.workdir, **kw)
        self.cfg = cfg
        self.port = int(cfg.values["web"]["listen"].rsplit(":", 1)[1])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise DaemonError(f"mxhook-web not listening after {self.ready_timeout}s:\n{self.stderr_text()}")


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        """The error code of an error answer."""
        return self.json()["error"]["code"]


class Client:
    """HTTP requests to the server; every answer's body is kept (`bodies`) so a test can look
    through all of them (no secret in any)."""

    def __init__(self, base: str):
        self.base = base
        self.bodies: list[bytes] = []

    def request(self, method: str, path: str, *, token: str | None = None, json_body=None,
                data: bytes | None = None, headers: dict | None = None) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                reply = Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, exc.headers, exc.read())
        self.bodies.append(reply.body)
        return reply


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
