"""A real HTTP receiver on loopback, for tests and the demo.

    with Receiver() as rx:
        rx.script("/hook", [(500, {}, b"busy"), (200, {}, b"ok")])
        ...post to rx.url + "/hook"...
        reqs = rx.wait_for(2, path="/hook")
        assert reqs[1].json()["id"] == ...

Each path has its own script of responses, served in order; the last one repeats. A path without
a script answers 200 `{"ok":true}`. A response item is one of:

- a tuple `(status, headers, body)` or `(status, headers, body, delay_seconds)`;
- a `Response(status, headers, body, delay=0.0, drop=False, trickle=0.0)`; `drop=True` closes the
  connection without answering (a connection error for the client); `trickle=s` sends the body
  in small pieces with `s` seconds between them (a slow body: each read is quick, the whole is
  not);
- a callable `f(request) -> item` (any of the above), for responses that depend on the request.

A whole script may also be a callable: it is then called for every request on that path.
`Receiver(default=item)` sets the answer for paths without a script.

Requests are recorded when their body has been read, *before* any delay, so a test can see a
request that is still waiting for its answer (e.g. to kill the client mid-request). A request
whose body never fully arrived (the client died mid-upload) is not answered and not in
`requests`: it is in `incomplete`.

Runnable for manual use: `python -m tests.support.receiver --port 8025 [--status 200]` prints
each request.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

DEFAULT_BODY = b'{"ok":true}'


class Headers(dict):
    """A dict of header name -> value whose keys are stored lower-case, so lookups in any case
    work (`h["Content-Type"]`, `h.get("webhook-id")`, `"WEBHOOK-ID" in h`). A header sent more
    than once keeps its values joined with ", " (as RFC 9110 allows for list headers)."""

    def __init__(self, items=()):
        super().__init__()
        for key, value in (items.items() if isinstance(items, dict) else items):
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


@dataclass
class ReceivedRequest:
    method: str
    path: str  # without the query string
    headers: Headers
    body: bytes
    at: float  # time.time() when the request was fully read
    query: str = ""
    # False when the connection ended before the whole body came (the client died or gave up
    # mid-upload): no real endpoint would act on such a request; it is recorded, not answered.
    complete: bool = True

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Response:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes | str | dict | list = DEFAULT_BODY
    delay: float = 0.0
    drop: bool = False
    trickle: float = 0.0  # seconds between pieces of the body (a slow body)
    trickle_piece: int = 4  # bytes per piece


def _as_response(item, request: ReceivedRequest) -> Response:
    if callable(item) and not isinstance(item, Response):
        item = item(request)
    if isinstance(item, Response):
        return item
    if isinstance(item, int):
        return Response(status=item)
    if isinstance(item, dict):
        return Response(**item)
    if isinstance(item, (tuple, list)):
        if len(item) == 3:
            return Response(item[0], dict(item[1] or {}), item[2])
        if len(item) == 4:
            return Response(item[0], dict(item[1] or {}), item[2], float(item[3]))
    raise TypeError(f"receiver: cannot use {item!r} as a response")


def _body_bytes(body) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: "Receiver"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints; every answer has a length
    # Headers and body go out in two writes: without TCP_NODELAY the second waits ~40 ms for
    # the client's delayed ACK, on every request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def _read_body(self) -> tuple[bytes, bool]:
        """(body, complete): complete is False when the connection ended early."""
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return b"".join(chunks), False
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunk = self.rfile.read(size)
                    chunks.append(chunk)
                    if len(chunk) < size:
                        return b"".join(chunks), False
                    self.rfile.readline()
                return b"".join(chunks), True
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            return body, len(body) == length
        except (ConnectionError, OSError, ValueError):
            return b"", False

    def _handle(self):
        rx = self.server.receiver
        body, complete = self._read_body()
        parts = urlsplit(self.path)
        request = ReceivedRequest(
            method=self.command,
            path=parts.path or "/",
            headers=Headers(self.headers.items()),
            body=body,
            at=time.time(),
            query=parts.query,
            complete=complete,
        )
        if not complete:  # recorded for tests that look, but no script answer is used up
            rx._record_incomplete(request)
            self.close_connection = True
            return
        response = rx._record_and_pick(request)
        if response.delay > 0:
            if rx._closing.wait(response.delay):
                self.close_connection = True
                return
        if response.drop:
            self.close_connection = True
            return
        payload = _body_bytes(response.body)
        try:
            self.send_response(response.status)
            headers = Headers(response.headers)
            if "content-type" not in headers:
                self.send_header("Content-Type", "application/json")
            for key, value in response.headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                if response.trickle > 0 and payload:
                    self.wfile.flush()
                    step = max(1, response.trickle_piece)
                    for i in range(0, len(payload), step):
                        if i and rx._closing.wait(response.trickle):
                            self.close_connection = True
                            return
                        self.wfile.write(payload[i:i + step])
                        self.wfile.flush()
                else:
                    self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (killed, timed out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 (free port unless given) in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default=None):
        """`default`: the response item (or callable) for paths without a script."""
        self._default = default
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._incomplete: list[ReceivedRequest] = []
        self._scripts: dict[str, list | Callable] = {}
        self._served: dict[str, int] = {}
        self._closing = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.receiver = self
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Receiver":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"receiver:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # scripting ----------------------------------------------------------------------------
    def script(self, path: str, responses) -> None:
        """Responses for `path`, served in order, the last one repeating (see module doc)."""
        if not callable(responses):
            responses = list(responses)
            if not responses:
                raise ValueError("script needs at least one response")
        with self._lock:
            self._scripts[path] = responses
            self._served[path] = 0

    def _record_incomplete(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._incomplete.append(request)
            self._lock.notify_all()

    @property
    def incomplete(self) -> list[ReceivedRequest]:
        """Requests whose body never fully arrived (not in `requests`, never answered)."""
        with self._lock:
            return list(self._incomplete)

    def _record_and_pick(self, request: ReceivedRequest) -> Response:
        with self._lock:
            self._requests.append(request)
            script = self._scripts.get(request.path)
            n = self._served.get(request.path, 0)
            self._served[request.path] = n + 1
            self._lock.notify_all()
        if script is None:
            return _as_response(self._default, request) if self._default is not None else Response()
        if callable(script):
            return _as_response(script(request), request)
        return _as_response(script[min(n, len(script) - 1)], request)

    # inspection ---------------------------------------------------------------------------
    @property
    def requests(self) -> list[ReceivedRequest]:
        """A snapshot copy of everything received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def _matching(self, path: str | None) -> list[ReceivedRequest]:
        return [r for r in self._requests if path is None or r.path == path]

    def wait_for(self, n: int, timeout: float = 10.0, path: str | None = None) -> list[ReceivedRequest]:
        """Block until at least `n` requests (on `path`, if given) arrived; return them all.
        Raises AssertionError saying what did arrive when `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = self._matching(path)
                if len(got) >= n:
                    return list(got)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{r.method} {r.path}" for r in self._requests) or "nothing"
                    where = f" on {path}" if path else ""
                    raise AssertionError(
                        f"receiver {self.url}: expected {n} request(s){where} within {timeout}s, "
                        f"got {len(got)} (all received: {seen})"
                    )
                self._lock.wait(left)

    def clear(self) -> None:
        """Forget received requests and restart every script from its first response."""
        with self._lock:
            self._requests.clear()
            self._incomplete.clear()
            self._served = {p: 0 for p in self._served}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print every HTTP request received")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--status", type=int, default=200, help="status to answer with")
    args = parser.parse_args(argv)

    def show(request: ReceivedRequest) -> Response:
        out = sys.stdout
        stamp = time.strftime("%H:%M:%S", time.localtime(request.at))
        out.write(f"--- {stamp} {request.method} {request.path}{'?' + request.query if request.query else ''}\n")
        for key, value in request.headers.items():
            out.write(f"{key}: {value}\n")
        out.write("\n")
        try:
            out.write(json.dumps(request.json(), indent=2, ensure_ascii=False) + "\n")
        except ValueError:
            out.write(request.text() + "\n")
        out.flush()
        return Response(status=args.status)

    rx = Receiver(args.host, args.port, default=show)
    print(f"listening on {rx.url}", flush=True)
    rx.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
