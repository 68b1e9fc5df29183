"""mxhook.http: the pure classification, Retry-After parsing, and real posts to a loopback
receiver (headers, auth, redirects, timeouts, connection errors, response excerpts)."""
from __future__ import annotations

import base64
import email.utils
import socket
import threading
import time

import pytest

from mxhook.delivery import egress
from mxhook.delivery import webhook
from mxhook.model.targets import Target
from tests.support.ports import free_port
from tests.support.receiver import Receiver, Response

LOOPBACK = "127.0.0.1/32"  # the receiver's network, allowlisted as [http] allow_networks would


@pytest.mark.parametrize(
    "code, status",
    [
        (200, "succeeded"), (201, "succeeded"), (202, "succeeded"), (204, "succeeded"), (299, "succeeded"),
        (500, "deferred"), (502, "deferred"), (503, "deferred"), (504, "deferred"), (599, "deferred"),
        (408, "deferred"), (429, "deferred"),
        (400, "failed"), (401, "failed"), (403, "failed"), (404, "failed"), (405, "failed"),
        (409, "failed"), (410, "failed"), (413, "failed"), (422, "failed"), (499, "failed"),
        (300, "failed"), (301, "failed"), (302, "failed"), (303, "failed"), (307, "failed"), (308, "failed"),
    ],
)
def test_classify_table(code, status):
    assert webhook.classify(code, {}).status == status


def test_classify_redirect_names_location():
    v = webhook.classify(301, {"Location": "https://elsewhere.example/hook"})
    assert v.status == "failed"
    assert "https://elsewhere.example/hook" in v.error and "not followed" in v.error
    assert "without a Location" in webhook.classify(302, {}).error


def test_classify_errors_and_retry_after():
    assert webhook.classify(200, {}).error is None
    v = webhook.classify(503, {"retry-after": "120"})
    assert (v.status, v.retry_after) == ("deferred", 120.0)
    assert "503" in v.error and "Retry-After 120s" in v.error
    assert webhook.classify(404, {"Retry-After": "5"}).retry_after is None  # only deferred honour it
    assert webhook.classify(404, {}).error == "HTTP 404 Not Found"
    assert webhook.classify(599, {}).error == "HTTP 599"


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None), ("", None), ("  ", None), ("soon", None), ("-5", None), ("1.5", None),
        ("²", None), ("३", None), ("0", 0.0), ("30", 30.0), (" 30 ", 30.0), ("3600", 3600.0), ("3601", 3600.0), ("999999999", 3600.0),
    ],
)
def test_parse_retry_after_seconds(value, expected):
    assert webhook.parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = 1_800_000_000.0
    in_90s = email.utils.formatdate(now + 90, usegmt=True)
    assert webhook.parse_retry_after(in_90s, now=now) == 90.0
    assert webhook.parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert webhook.parse_retry_after(email.utils.formatdate(now + 7200, usegmt=True), now=now) == 3600.0
    # the obsolete RFC 850 and asctime forms are also HTTP-dates
    assert webhook.parse_retry_after("Sun Nov  6 08:49:37 1994", now=now) == 0.0
    assert webhook.parse_retry_after("Mon, 99 Foo 2026 99:00:00 GMT", now=now) is None


def test_auth_header():
    url = "https://hooks.example/in"
    assert webhook.auth_header(target(url)) is None
    assert webhook.auth_header(target(url, basic_auth="u:p w")) == "Basic " + base64.b64encode(b"u:p w").decode()
    assert webhook.auth_header(target(url, bearer="tok")) == "Bearer tok"
    with pytest.raises(ValueError):
        webhook.auth_header(target(url, basic_auth="u:p", bearer="tok"))


# ---------------------------------------------------------------------------------------------
# Real posts

def target(url, **kw) -> Target:
    return Target(**{"kind": "rule", "id": None, "name": "r1", "url": url, "timeout": 5,
                     "allow_http": True, **kw})


def post(tgt, body=b'{"a":1}', max_response_bytes=4096, webhook_id="wh-1", session=None, **kw):
    return webhook.deliver(session or webhook.make_session(LOOPBACK), tgt, body, "application/json", webhook_id,
                        user_agent="mxhook-test/1", max_response_bytes=max_response_bytes, **kw)


@pytest.fixture()
def rx():
    with Receiver() as r:
        yield r


def test_post_headers_and_body(rx):
    out = post(target(rx.url + "/hook"), body=b'{"x":"\xc3\xa9"}')
    assert out.status == "succeeded" and out.status_code == 200 and out.error is None
    assert out.response_excerpt == '{"ok":true}'
    assert out.duration_ms >= 0
    (req,) = rx.wait_for(1)
    assert req.method == "POST" and req.path == "/hook"
    assert req.body == b'{"x":"\xc3\xa9"}'
    assert req.headers["webhook-id"] == "wh-1"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == "mxhook-test/1"
    assert "Authorization" not in req.headers


def test_basic_and_bearer(rx):
    post(target(rx.url + "/b", basic_auth="user:s3cret"))
    post(target(rx.url + "/t", bearer="tok-123"))
    b, t = rx.wait_for(2)
    assert b.headers["authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert t.headers["authorization"] == "Bearer tok-123"


def test_both_auths_refused_without_posting(rx):
    out = post(target(rx.url + "/x", basic_auth="u:pw1", bearer="zz-secret"))
    assert out.status == "failed" and "both Basic auth and a Bearer" in out.error
    assert "zz-secret" not in out.error and "pw1" not in out.error
    assert rx.requests == []


def test_https_required_unless_allowed(rx):
    out = post(target(rx.url + "/x", allow_http=False))
    assert out.status == "failed" and "HTTPS is required" in out.error
    assert rx.requests == []


def test_redirect_not_followed(rx):
    rx.script("/old", [(301, {"Location": rx.url + "/new"}, b"moved")])
    out = post(target(rx.url + "/old"))
    assert out.status == "failed" and out.status_code == 301
    assert rx.url + "/new" in out.error
    rx.wait_for(1)
    assert [r.path for r in rx.requests] == ["/old"]


def test_5xx_with_retry_after(rx):
    rx.script("/busy", [(503, {"Retry-After": "42"}, b"later")])
    out = post(target(rx.url + "/busy"))
    assert (out.status, out.status_code, out.retry_after) == ("deferred", 503, 42.0)
    assert out.response_excerpt == "later"


def test_404_failed(rx):
    rx.script("/gone", [(404, {}, b"no such hook")])
    out = post(target(rx.url + "/gone"))
    assert (out.status, out.status_code, out.error) == ("failed", 404, "HTTP 404 Not Found")


def test_response_excerpt_truncated(rx):
    rx.script("/big", [(200, {"Content-Type": "text/plain"}, b"x" * 100_000)])
    out = post(target(rx.url + "/big"), max_response_bytes=100)
    assert out.status == "succeeded" and out.response_excerpt == "x" * 100
    out = post(target(rx.url + "/big"), max_response_bytes=0)
    assert out.response_excerpt == ""


def test_read_timeout_deferred(rx):
    rx.script("/slow", [Response(200, delay=5)])
    out = post(target(rx.url + "/slow", timeout=1))
    assert out.status == "deferred" and out.status_code is None
    assert out.error == "read timeout: no response within 1s"
    assert 900 <= out.duration_ms < 4000


def test_connection_refused_deferred():
    port = free_port()
    out = post(target(f"http://127.0.0.1:{port}/hook?token=SECRET", bearer="tok-xyz"))
    assert out.status == "deferred" and out.status_code is None
    assert out.error.startswith("connection error:") and "refused" in out.error.lower()
    for secret in ("SECRET", "tok-xyz", "object at 0x", "HTTPConnectionPool"):
        assert secret not in out.error


def test_connection_dropped_deferred(rx):
    rx.script("/drop", [Response(drop=True)])
    out = post(target(rx.url + "/drop", basic_auth="u:pw"))
    assert out.status == "deferred" and out.error.startswith("connection error:")
    assert "pw" not in out.error


def test_tls_error_deferred(rx):
    # the receiver speaks plain HTTP: an https:// client gets a TLS handshake error
    out = post(target(rx.url.replace("http://", "https://") + "/x", allow_http=False))
    assert out.status == "deferred" and out.error.startswith("TLS error:")


def test_invalid_url_failed():
    out = post(target("http:///nohost"))
    assert out.status == "failed"


def test_redirect_location_is_shown_without_its_query():
    v = webhook.classify(301, {"Location": "https://u:pw@elsewhere.example:8443/hook?token=SECRET#x"})
    assert "https://elsewhere.example:8443/hook?…" in v.error
    assert "SECRET" not in v.error and "pw" not in v.error


@pytest.mark.parametrize("bad", [{"bearer": "SECRET-TOKEN\r"}, {"bearer": "SECRET-LFTOKEN\n"},
                                 {"bearer": "SECRET-tök€n"}])
def test_a_header_value_http_refuses_fails_without_quoting_it(rx, bad):
    # a token read from a file with its line end: requests/http.client quote the header in their error
    out = post(target(rx.url + "/hook", **bad))
    assert out.status == "failed" and "invalid request" in out.error
    assert "SECRET" not in out.error


def test_a_malformed_url_fails_without_its_query():
    out = post(target("https://%zz/h?token=SECRET"))
    assert out.status == "failed" and "SECRET" not in out.error


# ---------------------------------------------------------------------------------------------
# The SSRF guard in deliveries

def test_make_session_is_guarded():
    session = webhook.make_session()
    assert isinstance(session.get_adapter("https://x.test/"), egress.GuardedAdapter)
    assert session.trust_env is False
    assert isinstance(webhook.make_session("127.0.0.1/32, 10.0.0.0/8").get_adapter("http://x/"), egress.GuardedAdapter)


def test_blocked_address_is_deferred_with_the_reason(rx):
    """Without an allowlist the loopback receiver is refused before any connection."""
    out = post(target(rx.url + "/hook?token=SECRET", bearer="tok-secret"), session=webhook.make_session())
    assert out.status == "deferred" and out.status_code is None
    assert out.error.startswith("egress refused: endpoint address 127.0.0.1, a loopback address")
    assert "[http] allow_networks" in out.error
    for secret in ("SECRET", "tok-secret"):
        assert secret not in out.error
    time.sleep(0.1)
    assert rx.requests == [] and rx.incomplete == []


def test_blocked_host_name_is_deferred():
    session = webhook.make_session((), resolver=egress.static_resolver({"hooks.test": ["10.1.2.3"]}))
    out = post(target("https://hooks.test/in", allow_http=False), session=session)
    assert out.status == "deferred"
    assert "hooks.test resolves to 10.1.2.3, a private address" in out.error


def test_allowlisted_host_name_is_delivered(rx):
    session = webhook.make_session(LOOPBACK, resolver=egress.static_resolver({"hooks.test": ["127.0.0.1"]}))
    out = post(target(rx.url.replace("127.0.0.1", "hooks.test") + "/named"), session=session)
    assert out.status == "succeeded"
    (req,) = rx.wait_for(1)
    assert req.headers["Host"].startswith("hooks.test:")


# ---------------------------------------------------------------------------------------------
# The whole-attempt deadline

def test_trickled_body_is_cut_at_the_deadline(rx):
    """A 200 whose body trickles in (each read quick, the whole slow) no longer holds the
    worker: the attempt ends at timeout + grace, and the status line decides."""
    rx.script("/slow", [Response(200, {}, b"x" * 40, trickle=0.3, trickle_piece=1)])  # ~12 s
    start = time.monotonic()
    out = post(target(rx.url + "/slow", timeout=1))
    elapsed = time.monotonic() - start
    assert elapsed < 1 + webhook.DEADLINE_GRACE + 0.8, elapsed
    assert out.status == "succeeded" and out.status_code == 200
    assert 0 < len(out.response_excerpt) < 40


def test_trickled_status_line_is_deferred_at_the_deadline():
    """A server that sends its status line and headers a byte at a time."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(1)
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: " + b"a" * 200:
                    if stop.wait(0.2):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        out = post(target(f"http://127.0.0.1:{port}/x", timeout=1))
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        srv.close()
        thread.join(5)
    assert elapsed < 1 + webhook.DEADLINE_GRACE + 0.8, elapsed
    assert out.status == "deferred" and out.status_code is None
    assert out.error == "timeout: no complete answer within 1s (whole-attempt deadline)"


def test_deadline_does_not_touch_a_pooled_connection(rx):
    """After an attempt, its keep-alive connection is reused by the next one untouched."""
    session = webhook.make_session(LOOPBACK)
    assert post(target(rx.url + "/a", timeout=1), session=session).status == "succeeded"
    time.sleep(1 + webhook.DEADLINE_GRACE + 0.3)  # the first attempt's deadline has passed
    assert post(target(rx.url + "/b", timeout=1), session=session).status == "succeeded"
    assert [r.path for r in rx.wait_for(2)] == ["/a", "/b"]


def test_attempts_reuse_one_keep_alive_connection(rx, monkeypatch):
    """One worker's session keeps its connection to an endpoint open from one attempt to the
    next; an answer whose body was not read to its end (over max_response_bytes) closes it,
    so the rest of that body is never read as the next answer."""
    real, opened = egress._open_socket, []

    def counting(*args):
        opened.append(args[:2])
        return real(*args)

    monkeypatch.setattr(egress, "_open_socket", counting)
    session = webhook.make_session(LOOPBACK)
    for i in range(3):
        assert post(target(rx.url + f"/k{i}"), session=session).status == "succeeded"
    assert len(opened) == 1
    rx.script("/big", [(200, {}, b"x" * 2_000_000)])  # more than one read brings
    out = post(target(rx.url + "/big"), session=session, max_response_bytes=10)
    assert out.response_excerpt == "x" * 10
    out = post(target(rx.url + "/after"), session=session)
    assert out.status == "succeeded" and out.response_excerpt == '{"ok":true}'
    assert len(opened) == 2
    assert [r.path for r in rx.wait_for(5)] == ["/k0", "/k1", "/k2", "/big", "/after"]


def test_a_session_keeps_a_bounded_number_of_connections(rx, monkeypatch):
    monkeypatch.setattr(egress, "KEPT_ORIGINS", 2)
    session = webhook.make_session(LOOPBACK, resolver=egress.static_resolver(
        {f"h{i}.test": ["127.0.0.1"] for i in range(3)}))
    for i in range(3):
        url = rx.url.replace("127.0.0.1", f"h{i}.test")
        assert post(target(url + "/k"), session=session).status == "succeeded"
    kept = session.get_adapter("http://").kept
    assert [origin[1] for origin in kept] == ["h1.test", "h2.test"]


def test_gzip_answer_is_excerpted_as_text(rx):
    import gzip

    rx.script("/z", [(200, {"Content-Encoding": "gzip"}, gzip.compress(b'{"ok":"zipped"}'))])
    out = post(target(rx.url + "/z"))
    assert out.status == "succeeded" and out.response_excerpt == '{"ok":"zipped"}'
    (req,) = rx.wait_for(1)
    assert req.headers["Accept-Encoding"] == "gzip, deflate" and req.headers["Accept"] == "*/*"


class RawServer:
    """A loopback server answering each request with the next of `answers` (bytes sent as
    they are; a `None` after one: close the connection then). Counts the connections."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.connections = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.answers:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                buf = b""
                while self.answers:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    buf = buf[length:]
                    conn.sendall(self.answers.pop(0))
                    if self.answers and self.answers[0] is None:
                        self.answers.pop(0)
                        break

    def close(self):
        self.srv.close()


def test_chunked_interim_and_close_delimited_answers():
    chunked = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"ok\r\n6\r\n\":true\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n")
    srv = RawServer([chunked, chunked, b"HTTP/1.0 202 Accepted\r\n\r\nno length", None])
    try:
        session = webhook.make_session(LOOPBACK)
        for _ in range(2):  # the chunked body read to its end: the connection is kept
            out = post(target(srv.url + "/c"), session=session)
            assert (out.status, out.status_code, out.response_excerpt) == ("succeeded", 200, '{"ok":true}')
        assert srv.connections == 1
        out = post(target(srv.url + "/c"), session=session)
        assert (out.status_code, out.response_excerpt) == (202, "no length")
        assert session.get_adapter("http://").kept == {}  # delimited by the close: not kept
    finally:
        srv.close()


def test_connection_close_and_a_server_gone_idle_mean_a_new_connection():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    srv = RawServer([ok.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), ok, None, ok])
    try:
        session = webhook.make_session(LOOPBACK)
        assert post(target(srv.url + "/a"), session=session).status == "succeeded"  # says close
        assert post(target(srv.url + "/b"), session=session).status == "succeeded"  # a new one, kept
        time.sleep(0.2)  # meanwhile the server closed that one (the None after it)
        assert post(target(srv.url + "/c"), session=session).status == "succeeded"
        assert srv.connections == 3
    finally:
        srv.close()


def test_bytes_beyond_the_content_length_mean_a_new_connection():
    srv = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 X\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    try:
        session = webhook.make_session(LOOPBACK)
        for _ in range(2):
            out = post(target(srv.url + "/x"), session=session)
            assert (out.status_code, out.response_excerpt) == (200, "ok")
        assert srv.connections == 2
    finally:
        srv.close()


def test_an_answer_that_is_not_http_is_a_connection_error():
    srv = RawServer([b"SSH-2.0-OpenSSH\r\n\r\n"])
    try:
        out = post(target(srv.url + "/x", bearer="tok-secret"))
        assert out.status == "deferred" and out.error.startswith("connection error:")
        assert "tok-secret" not in out.error
    finally:
        srv.close()


def test_bare_lf_answers_a_cut_chunk_and_a_bad_status_code():
    srv = RawServer([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare LF (RFC 9112 2.2)
                     b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhello wor", None,
                     b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"])
    try:
        session = webhook.make_session(LOOPBACK)
        for _ in range(2):  # read to their ends: the one connection is kept
            out = post(target(srv.url + "/lf"), session=session)
            assert (out.status, out.status_code, out.response_excerpt) == ("succeeded", 200, "ok")
        assert srv.connections == 1
        out = post(target(srv.url + "/cut"), session=session)  # the chunk breaks off: what came stays
        assert (out.status, out.response_excerpt) == ("succeeded", "hello wor")
        out = post(target(srv.url + "/bad"), session=session)
        assert out.status == "deferred" and out.error.startswith("connection error:")
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------------
# Signature headers

def test_signature_headers_per_attempt(rx):
    from mxhook.delivery import signing

    secret = signing.generate_secret()
    keys = signing.KeySet(secrets=(secret,))
    post(target(rx.url + "/s"), body=b'{"n":1}', webhook_id="del-1", keys=keys, now=1_800_000_000)
    post(target(rx.url + "/s"), body=b'{"n":1}', webhook_id="del-1", keys=keys)
    first, second = rx.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "del-1"
    assert first.headers["webhook-timestamp"] == "1800000000"
    assert abs(int(second.headers["webhook-timestamp"]) - time.time()) < 5
    assert first.headers["webhook-signature"] == signing.sign([secret], "del-1", 1_800_000_000, b'{"n":1}')
    assert signing.verify(secret, second.headers, second.body) == "del-1"


def test_no_keys_no_signature_header(rx):
    post(target(rx.url + "/u"), webhook_id="del-2")
    (req,) = rx.wait_for(1)
    assert req.headers["webhook-id"] == "del-2" and req.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in req.headers


def test_unusable_key_defers_without_posting(rx):
    from mxhook.delivery import signing

    out = post(target(rx.url + "/k"), keys=signing.KeySet(secrets=("whsec_notbase64!!",)))
    assert out.status == "deferred" and out.error.startswith("cannot sign the request:")
    assert "notbase64" not in out.error
    assert rx.requests == []
