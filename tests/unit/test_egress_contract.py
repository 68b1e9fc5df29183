"""What the SSRF guard (mxhook.egress) relies on in urllib3 and requests, pinned.

The guard runs on urllib3 1.26 (Debian 12) and 2.x (Debian 13, PyPI) from one source. It
overrides one private method, `HTTPConnection._new_conn()`, and otherwise uses public names
(see the comment above egress's transport section). Each test here names one thing it relies on,
so a urllib3/requests release that changes it fails here, by name, instead of every delivery
being deferred. No test connects anywhere but 127.0.0.1 or a socketpair.
"""
from __future__ import annotations

import inspect
import socket
import threading
import time

import pytest
import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mxhook.config import parse_networks
from mxhook.delivery import egress

LOOPBACK_ONLY = parse_networks("127.0.0.1/32")


class _SocketpairConnection:
    """`_new_conn` hands the connection one end of a socketpair: what urllib3 then does with
    the socket shows up at the other end."""

    def _new_conn(self):
        self.calls.append("_new_conn")
        return self.ours

    def putrequest(self, *args, **kwargs):
        self.calls.append("putrequest")
        return super().putrequest(*args, **kwargs)


def _read_some(sock: socket.socket, want: bytes, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while want not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_new_conn_is_a_method_of_self_only():
    params = list(inspect.signature(HTTPConnection._new_conn).parameters)
    assert params == ["self"], f"urllib3 changed HTTPConnection._new_conn's signature: {params}"


def test_http_connect_uses_the_socket_new_conn_returns():
    ours, theirs = socket.socketpair()
    cls = type("Probe", (_SocketpairConnection, HTTPConnection), {"calls": [], "ours": ours})
    with theirs:
        conn = cls("hooks.test", 8080)
        conn.request("GET", "/x", headers={"Content-Length": "0"})
        sent = _read_some(theirs, b"\r\n\r\n")
        conn.close()
    assert sent.startswith(b"GET /x HTTP/1.1\r\n") and b"Host: hooks.test:8080\r\n" in sent
    assert cls.calls == ["putrequest", "_new_conn"] or cls.calls == ["_new_conn", "putrequest"]


def test_https_connect_uses_the_socket_new_conn_returns_and_sends_the_host_name():
    """The TLS client hello arrives on the socket from `_new_conn`, with SNI = the URL's host
    name (not the address connected to)."""
    ours, theirs = socket.socketpair()
    cls = type("Probe", (_SocketpairConnection, HTTPSConnection), {"calls": [], "ours": ours})
    conn = cls("hooks.test", 443)
    errors = []

    def connect():
        try:
            conn.connect()
        except Exception as exc:  # noqa: BLE001 -- the peer hangs up mid-handshake
            errors.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    try:
        hello = _read_some(theirs, b"hooks.test")
    finally:
        theirs.close()
        thread.join(5)
    assert cls.calls == ["_new_conn"]
    assert hello[:1] == b"\x16", "not a TLS handshake record"
    assert b"hooks.test" in hello
    assert errors, "the handshake cannot have succeeded"


def test_connection_attributes_the_guard_reads():
    for conn in (HTTPConnection("hooks.test", 80), HTTPSConnection("hooks.test", 443)):
        for name in ("host", "port", "timeout", "source_address", "socket_options"):
            assert hasattr(conn, name), f"urllib3 connections lost .{name}"
    conn = HTTPSConnection("hooks.test.", 443)
    assert conn.host == "hooks.test"  # the name to resolve and to verify, trailing dot dropped
    for name in ("ssl_context", "cert_reqs", "ca_certs", "ca_cert_dir", "ca_cert_data"):
        assert hasattr(conn, name), f"urllib3 HTTPSConnection lost .{name}"


def test_pools_use_their_connection_class_and_the_manager_its_pool_classes():
    adapter = egress.GuardedAdapter(LOOPBACK_ONLY)
    manager = adapter.poolmanager
    for url, pool_base, conn_base in (("http://hooks.test/", HTTPConnectionPool, egress._GuardedHTTPConnection),
                                      ("https://hooks.test/", HTTPSConnectionPool, egress._GuardedHTTPSConnection)):
        pool = manager.connection_from_url(url)
        assert isinstance(pool, pool_base) and issubclass(pool.ConnectionCls, conn_base), (
            "urllib3's PoolManager no longer builds pools from pool_classes_by_scheme")


def test_guarded_https_connection_refuses_a_tunnel():
    conn = egress._pool_classes(egress._Policy((), None))["https"].ConnectionCls("hooks.test", 443)
    with pytest.raises(egress.EgressError, match="proxies are not supported"):
        conn.set_tunnel("elsewhere.test", 443)


# --- the attempt deadline reaches what the hooks above feed it ---------------------------------

class _StallServer:
    """A TCP server on 127.0.0.1: `answers` canned replies, one per request read, then it
    reads and never answers (the connection stays open until the test ends)."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.sock.settimeout(0.1)
        conns = []
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        for conn in conns:
            conn.close()

    def _serve(self, conn):
        conn.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if self.answers and b"\r\n\r\n" in data:
                conn.sendall(self.answers.pop(0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_stalled_tls_handshake_is_cut_by_the_deadline():
    """verify=True (requests 2.32 then hands the pool a process-wide SSL context of its own):
    a server that accepts and never answers the client hello holds the attempt no longer than
    its deadline."""
    with _StallServer() as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=egress.static_resolver({"hooks.test": ["127.0.0.1"]}))
        start = time.monotonic()
        with egress.attempt_deadline(0.5) as deadline:
            with pytest.raises(requests.exceptions.RequestException):
                session.get(f"https://hooks.test:{srv.port}/", timeout=(10, 10))
        assert time.monotonic() - start < 3
        assert deadline.expired and srv.accepted == 1


def test_a_stalled_pooled_connection_is_cut_by_the_deadline():
    """The keep-alive connection was opened outside any deadline; the next request on it joins
    the deadline of its attempt (the connection's `putrequest`)."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    with _StallServer([ok]) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=egress.static_resolver({"hooks.test": ["127.0.0.1"]}))
        assert session.get(f"http://hooks.test:{srv.port}/1", timeout=(10, 10)).text == "ok"
        start = time.monotonic()
        with egress.attempt_deadline(0.5) as deadline:
            with pytest.raises(requests.exceptions.RequestException):
                session.get(f"http://hooks.test:{srv.port}/2", timeout=(10, 10))
        assert time.monotonic() - start < 3
        assert deadline.expired and srv.accepted == 1, "the second request did not reuse the connection"
