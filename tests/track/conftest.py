"""mxhook-track as a real process on loopback, over a real spool directory."""
from __future__ import annotations

import base64
import http.client
import os
import subprocess
import time

import pytest

from mxhook import spool
from mxhook.model import tracktokens
from mxhook.model.events import Event
from tests.support.daemons import _program
from tests.support.postfix import free_port, wait_port
from tests.track import mmdb

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
GEO_NET = "192.0.2.0/24"
GEO_RECORD = {"city": {"names": {"en": "Berlin"}},
              "continent": {"code": "EU", "names": {"en": "Europe"}},
              "country": {"iso_code": "DE", "names": {"en": "Germany"}}}


def key_line(key: bytes) -> str:
    return base64.b64encode(key).decode() + "\n"


class Track:
    """A running mxhook-track: `get`/`post` answer (status, headers dict, body); `events()`
    reads what is durably in the spool."""

    def __init__(self, workdir, extra: dict | None = None):
        self.workdir = workdir
        self.spool_dir = str(workdir / "spool")
        self.key_file = workdir / "tracking.key"
        self.key_file.write_text(key_line(KEY_A))
        mmdb.write(str(workdir / "geo.mmdb"), GEO_NET, GEO_RECORD)
        self.port = free_port()
        settings = {"key_file": str(self.key_file), "listen": f"127.0.0.1:{self.port}",
                    "geoip_database": str(workdir / "geo.mmdb"), "threads": "4",
                    "log": "stderr", "log_level": "debug", **(extra or {})}
        conf = workdir / "mxhook.conf"
        conf.write_text(f"[paths]\nspool_dir = {self.spool_dir}\n[tracking]\n"
                        + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self.log = open(workdir / "track.log", "wb")
        self.proc = subprocess.Popen(_program("mxhook-track", "mxhook.daemons.track")
                                     + ["--config", str(conf)], stdout=self.log, stderr=self.log)
        if not wait_port(self.port, 30, self.proc):
            self.stop()
            raise RuntimeError("mxhook-track did not start:\n" + self.log_text())

    def log_text(self) -> str:
        return (self.workdir / "track.log").read_text(errors="replace")

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=b"List-Unsubscribe=One-Click", **kw):
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        return self.request("POST", path, body=body, headers=headers, **kw)

    def events(self) -> list[Event]:
        records = spool.handed_over(self.spool_dir)
        return sorted((Event.from_meta(r.meta, r.id) for r in records if r.kind == "event"),
                      key=lambda e: e.id)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def track(tmp_path):
    t = Track(tmp_path)
    yield t
    t.stop()


@pytest.fixture
def make_track(tmp_path):
    started = []

    def make(**extra):
        workdir = tmp_path / f"t{len(started)}"
        os.makedirs(workdir)
        started.append(Track(workdir, extra))
        return started[-1]

    yield make
    for t in started:
        t.stop()


def token(kind=tracktokens.OPEN, *, key=KEY_A, queue_id="4ABC123", recipient="alice@example.org",
          domain="shop.example", sent=None, link=None, url=None) -> str:
    if kind == tracktokens.CLICK:
        link = 0 if link is None else link
        url = url or "https://shop.example/item?id=7&x=<y>"
    sent = time.time() - 3600 if sent is None else sent
    return tracktokens.make_token((key,), tracktokens.Track(kind, queue_id, recipient, domain,
                                                            int(sent), link, url))
