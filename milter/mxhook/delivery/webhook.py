"""The delivery client: one POST of a rendered payload to a target (model.targets), classified.

    session = make_session(allow_networks)          # one per worker thread
    outcome = deliver(session, target, body, content_type, webhook_id,
                      user_agent="mxhook/0.1", max_response_bytes=4096, keys=keyset)

- every connection is opened by the SSRF guard (`egress.guarded_session`,
  `egress.connection_for`): the endpoint host is resolved once, non-public addresses are
  refused unless `[http] allow_networks` admits them, the socket is opened to the checked
  address, TLS 1.2 at least with the certificate verified for the URL's host name. A refused
  address is `deferred` (the admin may fix DNS or the allowlist) with the reason.
- one connection per worker and endpoint, kept open from one attempt to the next while the
  server keeps it (HTTP/1.1 keep-alive; one request at a time on it, never pipelined). The
  request is one send of head and body; the answer is read by `_Answer` (status line,
  headers, a Content-Length, chunked or close-delimited body). requests' Session.post cost
  ~15 times the CPU of this, most of a one-per-request dialect's post.
- explicit timeout (the target's `timeout`, for connecting and for each read), and a deadline
  for the whole attempt (connect + send + response headers + the capped body) of that timeout
  plus DEADLINE_GRACE: a server that trickles its answer cannot hold a worker longer.
- redirects never followed, Basic auth XOR Bearer in `Authorization`, `User-Agent`,
  `Content-Type`; HTTPS unless the target says `allow_http`.
- Standard Webhooks headers per attempt (`signing.headers`): `webhook-id` (the delivery id,
  stable across retries and replays), `webhook-timestamp` (this attempt) and, when the target
  has keys, `webhook-signature` (every active `v1` secret and `v1a` key; `keys` is looked up
  by the caller at attempt time, so a rotation applies to retries).
- at most `max_response_bytes` of the response body are read and kept (as text).
- `classify(status_code, headers)` is the pure decision: 2xx succeeded; 5xx, 408, 429 deferred
  (Retry-After honoured, bounded to [0, 3600] s); 3xx (never followed) and other 4xx failed.
  Timeouts, connection and TLS errors are deferred. A status line that arrived in time decides
  even if the body is then cut off by the deadline.

Secrets: auth values and signing keys go only into request headers; no error text, log line
or Outcome contains a header value, and error texts leave the URL out (its query string may
carry a token).
"""
from __future__ import annotations

import base64
import email.utils
import re
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Mapping
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, HTTPError as UrllibError, NewConnectionError
from urllib3.util.ssl_match_hostname import CertificateError as HostnameMismatch

from mxhook.config import parse_networks
from mxhook.delivery import egress
from mxhook.delivery import signing
from mxhook.model.retry import RETRY_AFTER_MAX
from mxhook.model.targets import DEFAULT_TIMEOUT, Target

DEADLINE_GRACE = 1.0  # seconds a whole attempt may take beyond the target's timeout
DEFERRED_CODES = frozenset({408, 429})


@dataclass
class Outcome:
    status: str  # succeeded | deferred | failed
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from Retry-After, bounded to [0, 3600]
    duration_ms: int = 0
    response_excerpt: str | None = None  # at most max_response_bytes of the body, as text


@dataclass(frozen=True)
class Classification:
    """What an HTTP status means for the delivery (`classify`)."""
    status: str
    retry_after: float | None
    error: str | None


def make_session(allow_networks=(), resolver=None) -> requests.Session:
    """The session every delivery goes through (one per worker thread: Session is not
    thread-safe): the SSRF guard with the admin's allowlist (`[http] allow_networks`, as
    ip_network objects or CIDR text). `trust_env=False`: no proxies from the environment and,
    above all, no credentials from ~/.netrc added to requests behind the admin's back."""
    if isinstance(allow_networks, str):
        allow_networks = parse_networks(allow_networks)
    return egress.guarded_session(allow_networks, resolver=resolver)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date, bounded to [0, 3600].
    None when absent or unparsable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():  # isdigit alone admits "²"
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        now_dt = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
        seconds = (when - now_dt).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _reason(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    getter = getattr(headers, "get", None)
    value = getter(name) if getter else None
    if value is None:
        for key, v in headers.items():
            if key.lower() == name.lower():
                return v
    return value


def classify(status_code: int, headers: Mapping[str, str] | None = None, now: float | None = None) -> Classification:
    """The outcome of a response status: see the module docstring."""
    if 200 <= status_code < 300:
        return Classification("succeeded", None, None)
    if status_code >= 500 or status_code in DEFERRED_CODES:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
        error = _reason(status_code)
        if retry_after is not None:
            error += f" (Retry-After {retry_after:g}s)"
        return Classification("deferred", retry_after, error)
    if 300 <= status_code < 400:
        location = _header(headers, "Location")
        where = f" to {redact_url(location)}" if location else " without a Location"
        return Classification("failed", None, f"{_reason(status_code)}: redirect{where} not followed")
    if 400 <= status_code < 500:
        return Classification("failed", None, _reason(status_code))
    # 1xx final statuses do not happen over requests; anything else is not an answer
    return Classification("deferred", None, f"unexpected HTTP status {status_code}")


def redact_url(url: str) -> str:
    """A URL fit for logs and stored errors: scheme, host, port and path; the query, fragment
    and any user:password left out (they may carry a token)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed URL)"
    if not parts.scheme or not host:
        return "(malformed URL)"
    if ":" in host:
        host = f"[{host}]"
    hidden = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*")


def auth_header(target: Target) -> str | None:
    """The Authorization value for a target: Basic XOR Bearer (validated rules never have
    both; if one does, this raises rather than choose)."""
    basic, bearer = target.basic_auth, target.bearer
    if basic and bearer:
        raise ValueError("rule has both Basic auth and a Bearer token")
    if basic:
        return "Basic " + base64.b64encode(basic.encode("utf-8")).decode("ascii")
    if bearer:
        return f"Bearer {bearer}"
    return None


_OBJ_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*")
_WITH_URL = re.compile(r"\s*with url: \S*")


def _root_cause(exc: BaseException) -> BaseException:
    """Dig through requests/urllib3 wrapping to the exception that says what happened."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
            continue
        break
    return exc


def describe_error(exc: BaseException) -> str:
    """A one-line error text without object reprs, URLs or headers."""
    cause = _root_cause(exc)
    text = str(cause) or type(cause).__name__
    text = _OBJ_REPR.sub("", text)
    text = _WITH_URL.sub("", text)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = re.sub(r"\(Caused by .*", "", text).strip()
    return " ".join(text.split())[:300]


_HEAD_END = re.compile(rb"\r?\n\r?\n")


class _NoAnswer(Exception):
    """The connection broke off, or the server's bytes are not an HTTP/1.x answer, before a
    whole status line and header block arrived."""


class _Answer:
    """One HTTP/1.1 answer read off a connection: the status and the headers (names in lower
    case), then at most `limit` bytes of the body (`excerpt`); `reusable` when the body was
    read to its end and the server keeps the connection open."""

    MAX_HEAD = 65536  # bytes of status line and headers

    def __init__(self, sock, limit: int, deadline: egress.Deadline):
        self.sock, self.deadline = sock, deadline
        self.buf = b""
        self.reusable = False
        while True:  # interim 1xx answers (100 Continue, 103 Early Hints) come before the answer
            head = self._head()
            lines = head.splitlines()  # CRLF, or the bare LF some servers send (RFC 9112 2.2)
            status = lines[0].split(None, 2) if lines else []
            if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not (
                    len(status[1]) == 3 and status[1].isdigit()):
                raise _NoAnswer("the server's answer is not HTTP/1.x")
            self.status = int(status[1])
            if not 100 <= self.status < 200 or self.status == 101:
                break
        self.version11 = status[0] == b"HTTP/1.1"
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                key = name.strip().lower().decode("latin-1")
                value = value.strip().decode("latin-1")
                self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        self.kept = bytearray()  # of the body, at most `limit` bytes
        try:
            done = self._body(limit)
        except (OSError, ValueError):
            done = False  # a body that breaks off (or hits the deadline): the status line decides
        close = "close" in self.headers.get("connection", "").lower()
        self.reusable = done and self.version11 and not close and not deadline.expired
        try:
            self.excerpt = _decoded(bytes(self.kept), self.headers.get("content-encoding", ""), limit)
        except zlib.error:
            self.excerpt = ""

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        return data

    def _head(self) -> bytes:
        while True:
            end = _HEAD_END.search(self.buf)
            if end:
                head, self.buf = self.buf[:end.start()], self.buf[end.end():]
                return head
            if len(self.buf) > self.MAX_HEAD:
                raise _NoAnswer("the answer's header block is too long")
            try:
                data = self._recv()
            except ConnectionResetError:
                raise _NoAnswer("the server closed the connection without an answer") from None
            self.buf += data

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 4096:
                raise ValueError("a chunk line is too long")
            self.buf += self._recv()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def _body(self, limit: int) -> bool:
        """Read the body, keeping `limit` bytes; True when it was read to its end."""
        length = self.headers.get("content-length")
        if self.status in (204, 304):
            return True
        if self.status < 200:  # 101: a protocol switch nobody asked for; no body, not kept
            return False
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line():  # trailers, up to the blank line
                        pass
                    return not self.buf
                if not self._sized(self.kept, limit, size):  # what came of a cut chunk is kept
                    return False
                if self._line():
                    raise ValueError("a chunk is longer than its size")
        if length is not None and length.strip().isdigit():  # and nothing after it: no answer comes unasked
            return self._sized(self.kept, limit, int(length)) and not self.buf
        self._sized(self.kept, limit, None)  # delimited by the close: the cap's worth, then close
        return False

    def _sized(self, kept: bytearray, limit: int, length: int | None) -> bool:
        """Read `length` bytes (None: until the close) into `kept` up to `limit` of them; True
        when all were read."""
        got = 0
        while True:
            if self.buf:
                piece = self.buf if length is None else self.buf[:length - got]
                self.buf = self.buf[len(piece):]
                got += len(piece)
                kept += piece[:max(limit - len(kept), 0)]
            if length is not None and got >= length:
                return True
            if len(kept) >= limit or self.deadline.expired:
                return False
            try:
                self.buf = self._recv()
            except ConnectionResetError:
                return False


def _decoded(body: bytes, encoding: str, limit: int) -> str:
    """The excerpt as text, a gzip or deflate body undone (we accept both, as requests did)."""
    encoding = encoding.strip().lower()
    if body and encoding in ("gzip", "x-gzip", "deflate"):
        try:
            body = zlib.decompressobj(47).decompress(body, limit)  # zlib or gzip header
        except zlib.error:
            if encoding != "deflate":
                return ""
            body = zlib.decompressobj(-15).decompress(body, limit)  # raw deflate
    return body[:limit].decode("utf-8", "replace")


def _request(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The request's bytes, head and body for one send. Raises ValueError for a header value
    HTTP does not allow (CR, LF, NUL, or not Latin-1; the text names no value)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        value = str(value)
        if _BAD_HEADER.search(value):
            raise ValueError("a header value has characters HTTP does not allow")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header value is not Latin-1") from None
    return head + body


_BAD_HEADER = re.compile(r"[\r\n\0]")


def _host_header(conn) -> str:
    scheme, host, port = conn.origin
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"


# What requests sent with every request (its session defaults), sent as before.
_WIRE_HEADERS = {"Accept-Encoding": "gzip, deflate", "Accept": "*/*", "Connection": "keep-alive"}

_BAD_REQUEST = ("invalid request: a header value (the rule's credentials?) or the URL has characters "
                "HTTP does not allow")


def _too_slow(timeout: float) -> str:
    return f"timeout: no complete answer within {timeout:g}s (whole-attempt deadline)"


def deliver(
    session: requests.Session,
    target: Target,
    body: bytes,
    content_type: str,
    webhook_id: str,
    *,
    user_agent: str,
    max_response_bytes: int,
    keys: signing.KeySet | None = None,
    now: float | None = None,
) -> Outcome:
    """POST `body` to the target's endpoint once; never raises for network or HTTP trouble.
    `keys`: the signing secrets/keys active now (None or empty: no `webhook-signature`);
    `now`: the `webhook-timestamp` (default: the current time)."""
    url = target.url
    scheme = urlsplit(url).scheme.lower()
    if scheme != "https" and not (scheme == "http" and target.allow_http):
        return Outcome("failed", error=f"endpoint scheme {scheme or '(none)'!r} refused: HTTPS is required "
                                       "unless the rule allows http")
    timeout = float(target.timeout or DEFAULT_TIMEOUT)
    headers = {"Content-Type": content_type, "User-Agent": user_agent}
    try:
        authorization = auth_header(target)
    except ValueError as exc:
        return Outcome("failed", error=str(exc))
    if authorization:
        headers["Authorization"] = authorization
    try:
        headers.update(signing.headers(
            webhook_id, body, keys.secrets if keys else (),
            ed25519_keys=keys.ed25519_keys if keys else (), now=now))
    except signing.SigningError as exc:  # a broken key in rules.db: retry once it is fixed
        return Outcome("deferred", error=f"cannot sign the request: {exc}")

    start = time.monotonic()
    elapsed = lambda: int((time.monotonic() - start) * 1000)  # noqa: E731
    headers.update(_WIRE_HEADERS)
    with egress.attempt_deadline(timeout + DEADLINE_GRACE) as deadline:
        try:
            conn, path = egress.connection_for(session, url, timeout)
        except egress.EgressError as exc:
            return Outcome("deferred", error=f"egress refused: {exc}", duration_ms=elapsed())
        except (UrllibError, OSError, ValueError) as exc:  # ssl errors included
            if deadline.expired:
                return Outcome("deferred", error=_too_slow(timeout), duration_ms=elapsed())
            return _request_error(exc, timeout, elapsed())
        answer = None
        try:
            request = _request("POST", path, _host_header(conn), headers, body)
            if conn.sock.gettimeout() != timeout:  # each send and read; the deadline bounds them all
                conn.sock.settimeout(timeout)
            conn.sock.sendall(request)
            answer = _Answer(conn.sock, max_response_bytes, deadline)
        except ValueError:
            # a header value HTTP does not allow (never quoted: it may be a secret)
            return Outcome("failed", error=_BAD_REQUEST, duration_ms=elapsed())
        except (OSError, _NoAnswer) as exc:
            if deadline.expired:
                return Outcome("deferred", error=_too_slow(timeout), duration_ms=elapsed())
            if isinstance(exc, socket.timeout):
                return Outcome("deferred", error=f"read timeout: no response within {timeout:g}s",
                               duration_ms=elapsed())
            return _request_error(exc, timeout, elapsed())
        finally:
            if answer is not None and answer.reusable:
                egress.keep_connection(session, conn)
            else:
                conn.close()
    verdict = classify(answer.status, answer.headers)
    return Outcome(
        verdict.status, status_code=answer.status, error=verdict.error,
        retry_after=verdict.retry_after, duration_ms=elapsed(), response_excerpt=answer.excerpt,
    )


def _request_error(exc: Exception, timeout: float, duration_ms: int) -> Outcome:
    """The outcome of a request that got no HTTP answer."""
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError, HostnameMismatch)) or type(exc).__name__ == "SSLError":
        return Outcome("deferred", error=f"TLS error: {describe_error(exc)}", duration_ms=duration_ms)
    if isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError):
        return Outcome("deferred", error=f"connect timeout: no connection within {timeout:g}s",
                       duration_ms=duration_ms)
    if isinstance(exc, ValueError):  # a URL urllib3 cannot parse (LocationValueError)
        return Outcome("failed", error=f"invalid request: {describe_error(exc)}", duration_ms=duration_ms)
    return Outcome("deferred", error=f"connection error: {describe_error(exc)}", duration_ms=duration_ms)
