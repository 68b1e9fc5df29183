"""The SSRF guard: address policy, resolution, and the requests transport.

Nothing here connects anywhere but 127.0.0.1: resolvers are injected (`static_resolver` or
counting fakes), system DNS is trapped, and the one test that "connects" to a public-looking
address replaces the socket opener before any socket exists.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mxhook.config import parse_networks
from mxhook.delivery import egress
from mxhook.delivery.egress import EgressBlocked, EgressError, ResolutionError

LOOPBACK_ONLY = parse_networks("127.0.0.1/32")

# --- the address policy -----------------------------------------------------------------------

BLOCKED = [
    # IPv4
    ("0.0.0.0", "this network"),
    ("0.1.2.3", "this network"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.10", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("100.100.100.200", "carrier-grade NAT"),  # Alibaba Cloud metadata lives here
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::7f00:1", "IPv4-compatible"),
    ("::ffff:0:a00:1", "IPv4-translated"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("100::1", "discard"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "IETF protocol assignment"),
    ("2002:a00:1::1", "6to4"),
    ("2002:808:808::1", "6to4"),  # even with a public IPv4 inside: 6to4 is refused outright
    ("5f00::1", "SRv6"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("4000::1", "not a global unicast"),
    ("1::1", "not a global unicast"),
    # IPv4 embedded in IPv6
    ("::ffff:10.0.0.1", "private address (IPv4-mapped form of 10.0.0.1)"),
    ("::ffff:127.0.0.1", "loopback address (IPv4-mapped"),
    ("::ffff:169.254.169.254", "cloud metadata address (IPv4-mapped"),
    ("::ffff:7f00:1", "loopback address (IPv4-mapped"),
    ("::ffff:0.0.0.0", "this network"),
    ("64:ff9b::10.0.0.1", "private address (NAT64 form of 10.0.0.1)"),
    ("64:ff9b::7f00:1", "loopback address (NAT64"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata address (NAT64"),
]

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.15.255.255",
    "172.32.0.0", "192.167.255.255", "192.169.0.0", "223.255.255.255", "169.253.255.255",
    "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
]


@pytest.mark.parametrize("ip, reason", BLOCKED)
def test_blocked_addresses_are_refused(ip, reason):
    with pytest.raises(EgressError, match=re.escape(reason)) as info:
        egress.check_address(ip)
    assert "[http] allow_networks" in str(info.value)
    assert egress.blocked_reason(ip) is not None
    # ipaddress objects are accepted as well as strings
    with pytest.raises(EgressError):
        egress.check_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip):
    assert egress.check_address(ip) is None
    assert egress.blocked_reason(ip) is None


def test_not_an_address():
    with pytest.raises(EgressError, match="not an IP address"):
        egress.check_address("hooks.test")


def test_allowlist_admits_its_networks_only():
    allow = parse_networks("127.0.0.0/8, 192.168.1.0/24 fd00:1::/64")
    for ip in ("127.0.0.1", "127.1.2.3", "192.168.1.5", "::ffff:192.168.1.5", "::ffff:127.0.0.1",
               "64:ff9b::c0a8:105", "fd00:1::5"):
        assert egress.check_address(ip, allow) is None, ip
    for ip in ("192.168.2.5", "10.0.0.1", "::1", "fd00:2::5", "169.254.169.254"):
        with pytest.raises(EgressError):
            egress.check_address(ip, allow)


def test_metadata_needs_an_exact_allowlist_entry():
    for broad in ("169.254.0.0/16", "0.0.0.0/0", "168.63.0.0/16"):
        allow = parse_networks(broad)
        for ip in ("169.254.169.254", "::ffff:169.254.169.254"):
            if ipaddress.ip_address("169.254.169.254") not in allow[0]:
                continue
            with pytest.raises(EgressError, match="lists exactly 169.254.169.254/32"):
                egress.check_address(ip, allow)
    with pytest.raises(EgressError, match="lists exactly 168.63.129.16/32"):
        egress.check_address("168.63.129.16", parse_networks("0.0.0.0/0"))
    with pytest.raises(EgressError, match="fd00:ec2::254/128"):
        egress.check_address("fd00:ec2::254", parse_networks("fc00::/7"))
    assert egress.check_address("169.254.169.254", parse_networks("169.254.169.254/32")) is None
    assert egress.check_address("169.254.169.254", parse_networks("169.254.169.254")) is None
    # a broad allowlist still admits everything else in it
    assert egress.check_address("169.254.1.1", parse_networks("169.254.0.0/16")) is None


def test_parse_networks():
    assert parse_networks("") == []
    assert parse_networks(" 127.0.0.0/8 ,192.168.1.0/24,, ::1 ") == [
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("::1/128")]
    assert parse_networks(["10.0.0.0/8"]) == [ipaddress.ip_network("10.0.0.0/8")]
    with pytest.raises(ValueError, match="did you mean 192.168.1.0/24"):
        parse_networks("192.168.1.5/24")
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks("lan")


# --- resolution -------------------------------------------------------------------------------

class CountingResolver:
    """getaddrinfo-compatible; answers[i] is the answer to the i-th call (the last repeats)."""

    def __init__(self, *answers):
        self.answers = [list(a) for a in answers]
        self.calls = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append((host, port))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        return egress.static_resolver({host: answer})(host, port)


def test_resolve_checked_returns_checked_addresses():
    r = CountingResolver(["8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"])
    addrs = egress.resolve_checked("hooks.test", 443, resolver=r)
    assert addrs == [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("2606:4700:4700::1111")]
    assert r.calls == [("hooks.test", 443)]


def test_any_blocked_address_refuses_the_host():
    r = CountingResolver(["8.8.8.8", "10.0.0.5"])
    with pytest.raises(EgressError) as info:
        egress.resolve_checked("hooks.test", 443, resolver=r)
    assert str(info.value) == ("endpoint host hooks.test resolves to 10.0.0.5, a private address; "
                               "add its network to [http] allow_networks to permit it")
    assert info.value.address == ipaddress.ip_address("10.0.0.5") and info.value.host == "hooks.test"
    # allowlisting the private one admits the whole answer
    assert len(egress.resolve_checked("hooks.test", 443, resolver=r,
                                      allow=parse_networks("10.0.0.0/24"))) == 2


def test_ip_literals_are_checked_without_lookup():
    r = CountingResolver(["8.8.8.8"])
    assert egress.resolve_checked("[2606:4700:4700::1111]", 443, resolver=r) == [
        ipaddress.ip_address("2606:4700:4700::1111")]
    with pytest.raises(EgressError, match="endpoint address 127.0.0.1, a loopback address"):
        egress.resolve_checked("127.0.0.1", 80, resolver=r)
    assert r.calls == []


def test_unresolvable_host():
    with pytest.raises(ResolutionError, match="endpoint host nowhere.test does not resolve"):
        egress.resolve_checked("nowhere.test", 443, resolver=egress.static_resolver({}))


def test_check_endpoint_url():
    r = CountingResolver(["93.184.216.34"])
    assert egress.check_endpoint_url("https://hooks.test/in?x=1", resolver=r) == [
        ipaddress.ip_address("93.184.216.34")]
    assert egress.check_endpoint_url("http://hooks.test:8080/", resolver=r)
    assert r.calls == [("hooks.test", 443), ("hooks.test", 8080)]
    with pytest.raises(EgressError, match="resolves to 192.168.0.10, a private address; add its network"):
        egress.check_endpoint_url("https://lan.test/", resolver=egress.static_resolver({"lan.test": ["192.168.0.10"]}))
    with pytest.raises(EgressError, match="loopback"):
        egress.check_endpoint_url("http://[::1]:8080/")
    with pytest.raises(EgressError, match="'ftp' is not http or https"):
        egress.check_endpoint_url("ftp://hooks.test/")
    with pytest.raises(EgressError, match="no host"):
        egress.check_endpoint_url("https:///path")
    with pytest.raises(EgressError, match="malformed"):
        egress.check_endpoint_url("https://hooks.test:99999/")
    # numeric tricks resolve to what they are, and that is what is checked
    tricky = egress.static_resolver({"2130706433": ["127.0.0.1"], "0x7f.1": ["127.0.0.1"]})
    for url in ("http://2130706433/", "http://0x7f.1/"):
        with pytest.raises(EgressError, match="loopback"):
            egress.check_endpoint_url(url, resolver=tricky)


# --- the transport: loopback servers ----------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append({"path": self.path, "host": self.headers.get("Host"), "body": body,
                                 "peer": self.client_address[0]})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer


class _KeepAliveHandler(_Handler):
    """HTTP/1.1: the connection stays open for the next request, until idle for `timeout`."""
    protocol_version = "HTTP/1.1"
    timeout = 1.5


class LoopbackServer:
    def __init__(self, tls_context: ssl.SSLContext | None = None, keep_alive: bool = False):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler if keep_alive else _Handler)
        self.httpd.daemon_threads = True
        self.httpd.seen = []
        self.sni = []
        if tls_context is not None:
            tls_context.sni_callback = lambda sslobj, name, ctx: self.sni.append(name)
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def seen(self):
        return self.httpd.seen

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_system_dns(monkeypatch):
    """Any lookup of a name through the real resolver is recorded and fails."""
    real = socket.getaddrinfo
    looked_up = []

    def trapped(host, *args, **kwargs):
        try:
            ipaddress.ip_address(str(host).strip("[]").split("%")[0])
        except ValueError:
            looked_up.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "system DNS is not used in these tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", trapped)
    return looked_up


@pytest.fixture
def opened(monkeypatch):
    """Records every address the guard opens a socket to (and still opens it)."""
    real = egress._open_socket
    log = []

    def spy(ip, port, *args):
        log.append((ip, port))
        assert ip.is_loopback, f"test tried to connect to non-loopback {ip}"
        return real(ip, port, *args)

    monkeypatch.setattr(egress, "_open_socket", spy)
    return log


def test_dns_rebinding_cannot_reach_a_blocked_address(no_system_dns, opened):
    """The resolver answers an allowlisted address first and a refused one on any later call:
    the request must reach the first, with one lookup, and the Host header of the URL."""
    with LoopbackServer() as srv:
        r = CountingResolver(["127.0.0.1"], ["127.0.0.2"])
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=r)
        resp = session.post(f"http://hooks.test:{srv.port}/hook?a=1", data=b"payload", timeout=5)
        assert resp.status_code == 200 and resp.text == "ok"
        assert len(r.calls) == 1
        assert opened == [(ipaddress.ip_address("127.0.0.1"), srv.port)]
        assert srv.seen == [{"path": "/hook?a=1", "host": f"hooks.test:{srv.port}", "body": b"payload",
                             "peer": "127.0.0.1"}]

        # a new connection looks up again, gets the rebound answer, and is refused before connecting
        fresh = egress.guarded_session(LOOPBACK_ONLY, resolver=r)
        with pytest.raises(EgressBlocked, match="hooks.test resolves to 127.0.0.2, a loopback address") as info:
            fresh.post(f"http://hooks.test:{srv.port}/hook", data=b"again", timeout=5)
        assert isinstance(info.value, requests.exceptions.ConnectionError)
        assert isinstance(info.value.egress_error, EgressError)
        assert len(r.calls) == 2
        assert len(opened) == 1 and len(srv.seen) == 1
    assert no_system_dns == []


def test_connects_to_the_checked_public_address_only(monkeypatch, no_system_dns):
    """A public-looking answer: the socket is opened to exactly that address (the opener is
    replaced, so nothing leaves the machine)."""
    attempts = []

    def fake_open(ip, port, *args):
        attempts.append((ip, port))
        raise ConnectionRefusedError(111, "refused (test stub)")

    monkeypatch.setattr(egress, "_open_socket", fake_open)
    r = CountingResolver(["93.184.216.34", "2606:2800:220:1::1"], ["127.0.0.1"])
    session = egress.guarded_session((), resolver=r)
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        session.get("https://hooks.test/x", timeout=5)
    assert not isinstance(info.value, EgressBlocked)
    assert "refused (test stub)" in str(info.value)
    assert attempts == [(ipaddress.ip_address("93.184.216.34"), 443), (ipaddress.ip_address("2606:2800:220:1::1"), 443)]
    assert len(r.calls) == 1 and no_system_dns == []


@pytest.mark.parametrize("answer", [["10.0.0.5"], ["127.0.0.1", "10.0.0.5"], ["::ffff:127.0.0.2"],
                                    ["169.254.169.254"]])
def test_blocked_answers_never_open_a_socket(monkeypatch, answer):
    monkeypatch.setattr(egress, "_open_socket", lambda *a: pytest.fail("a socket was opened"))
    session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(answer))
    for url in ("http://hooks.test/", "https://hooks.test/"):
        with pytest.raises(EgressBlocked, match="endpoint host hooks.test resolves to"):
            session.post(url, data=b"x", timeout=5)


def test_ip_literal_url_is_checked(monkeypatch):
    monkeypatch.setattr(egress, "_open_socket", lambda *a: pytest.fail("a socket was opened"))
    session = egress.guarded_session()
    for url in ("http://127.0.0.1:1/", "http://[::1]:1/", "http://[::ffff:10.0.0.1]/", "http://0.0.0.0:1/"):
        with pytest.raises(EgressBlocked, match="endpoint address"):
            session.get(url, timeout=5)


def test_unresolvable_host_is_a_connection_error():
    session = egress.guarded_session(resolver=egress.static_resolver({}))
    with pytest.raises(requests.exceptions.ConnectionError, match="endpoint host nowhere.test does not resolve") as info:
        session.get("https://nowhere.test/", timeout=5)
    assert not isinstance(info.value, EgressBlocked)


def test_proxies_are_refused():
    session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
    session.proxies = {"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"}
    with pytest.raises(EgressBlocked, match="proxies are not supported"):
        session.get("http://hooks.test/", timeout=5)


def test_session_ignores_environment(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    session = egress.guarded_session()
    assert session.trust_env is False
    assert isinstance(session.get_adapter("https://x.test/"), egress.GuardedAdapter)
    assert isinstance(session.get_adapter("http://x.test/"), egress.GuardedAdapter)


# --- HTTPS: SNI and certificate verification use the host name --------------------------------

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA and leaf certificates for hooks.test and other.test."""
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("mxhook test CA")).issuer_name(_name("mxhook test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for host in ("hooks.test", "other.test"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (d / f"{host}.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return d


def _server_context(pki, host):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / f"{host}.pem"))
    return ctx


def test_https_verifies_the_host_name_while_connecting_to_the_checked_ip(pki, no_system_dns, opened):
    with LoopbackServer(_server_context(pki, "hooks.test")) as srv:
        r = CountingResolver(["127.0.0.1"], ["127.0.0.2"])
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=r)
        session.verify = str(pki / "ca.pem")
        resp = session.post(f"https://hooks.test:{srv.port}/in", data=b"{}", timeout=5)
        assert resp.status_code == 200
        assert srv.sni == ["hooks.test"]
        assert srv.seen[0]["host"] == f"hooks.test:{srv.port}"
        assert opened == [(ipaddress.ip_address("127.0.0.1"), srv.port)]
        assert len(r.calls) == 1
        # the pool requests used (its key includes the TLS settings requests passes, so look
        # it up among the manager's pools rather than by URL)
        manager = session.get_adapter("https://").poolmanager
        pools = [manager.pools[key] for key in manager.pools.keys()]
        conns = [c for pool in pools for c in pool.pool.queue if c is not None]
        assert conns and conns[0].connected_address == ipaddress.ip_address("127.0.0.1")
        assert conns[0].ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert no_system_dns == []


def test_https_never_uses_an_ssl_context_handed_down(pki, opened):
    """requests 2.32 hands pools a process-wide context (verify=True); any context handed down
    is left as it is, and the connection uses a fresh one of the guard's own."""
    handed = ssl.create_default_context()
    before = (handed.minimum_version, handed.sslsocket_class, handed.cert_store_stats())
    with LoopbackServer(_server_context(pki, "hooks.test")) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        session.verify = str(pki / "ca.pem")
        manager = session.get_adapter("https://").poolmanager
        manager.connection_pool_kw["ssl_context"] = handed
        assert session.get(f"https://hooks.test:{srv.port}/", timeout=5).status_code == 200
        conns = [c for key in manager.pools.keys() for c in manager.pools[key].pool.queue if c is not None]
    assert conns and all(c.ssl_context is not handed for c in conns)
    assert conns[0].ssl_context.sslsocket_class is egress._DeadlineSSLSocket
    assert (handed.minimum_version, handed.sslsocket_class, handed.cert_store_stats()) == before


def test_https_certificate_for_another_name_fails(pki, opened):
    with LoopbackServer(_server_context(pki, "other.test")) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        session.verify = str(pki / "ca.pem")
        with pytest.raises(requests.exceptions.SSLError, match="hooks.test"):
            session.get(f"https://hooks.test:{srv.port}/", timeout=5)
        assert srv.sni == ["hooks.test"] and srv.seen == []


def test_https_untrusted_ca_fails(pki, opened):
    with LoopbackServer(_server_context(pki, "hooks.test")) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://hooks.test:{srv.port}/", timeout=5)  # system CAs only
        assert srv.seen == []


def test_deliveries_verify_the_certificate(pki, opened):
    """webhook.deliver posts through the session's guarded pool: the certificate is verified
    (for the URL's host name, against the session's CA), TLS 1.2 at least."""
    from mxhook.delivery import webhook
    from mxhook.model.targets import Target

    def deliver(session, url):
        return webhook.deliver(session, Target(url, kind="endpoint", id=1, name="e", timeout=5), b"{}",
                               "application/json", "wh-1", user_agent="t", max_response_bytes=100)
    with LoopbackServer(_server_context(pki, "hooks.test")) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        out = deliver(session, f"https://hooks.test:{srv.port}/in")
        assert out.status == "deferred" and out.error.startswith("TLS error:")  # system CAs only
        assert srv.seen == []
        session.verify = str(pki / "ca.pem")
        for _ in range(3):
            out = deliver(session, f"https://hooks.test:{srv.port}/in")
            assert (out.status, out.response_excerpt) == ("succeeded", "ok")
        assert len(srv.seen) == 3 and set(srv.sni) == {"hooks.test"}
        assert len(opened) == 4  # this server answers HTTP/1.0 and closes: nothing is kept
        assert session.get_adapter("https://").kept == {}
    with LoopbackServer(_server_context(pki, "other.test")) as srv:
        out = deliver(session, f"https://hooks.test:{srv.port}/in")
        assert out.status == "deferred" and out.error.startswith("TLS error:") and srv.seen == []


def test_a_kept_tls_connection_is_reused_until_the_server_closes_it(pki, opened):
    """Over TLS as over plain HTTP: the verified connection of one delivery carries the next,
    and one the server closed meanwhile (its idle timeout: TLS close_notify, then EOF) is
    replaced by a new one, verified again."""
    from mxhook.delivery import webhook
    from mxhook.model.targets import Target

    def deliver(session, url):
        return webhook.deliver(session, Target(url, kind="endpoint", id=1, name="e", timeout=5), b"{}",
                               "application/json", "wh-1", user_agent="t", max_response_bytes=100)
    with LoopbackServer(_server_context(pki, "hooks.test"), keep_alive=True) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        session.verify = str(pki / "ca.pem")
        for _ in range(3):
            out = deliver(session, f"https://hooks.test:{srv.port}/in")
            assert (out.status, out.response_excerpt) == ("succeeded", "ok")
        assert len(srv.seen) == 3 and len(opened) == 1  # one TLS connection for the three
        assert list(session.get_adapter("https://").kept) == [("https", "hooks.test", srv.port)]
        time.sleep(2.5)  # the server's idle timeout closed it
        out = deliver(session, f"https://hooks.test:{srv.port}/in")
        assert (out.status, out.response_excerpt) == ("succeeded", "ok")
        assert len(srv.seen) == 4 and len(opened) == 2 and srv.sni == ["hooks.test"] * 2


def test_https_refuses_tls_below_1_2(pki, opened):
    ctx = _server_context(pki, "hooks.test")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot serve TLS 1.1")
    with LoopbackServer(ctx) as srv:
        session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
        session.verify = str(pki / "ca.pem")
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://hooks.test:{srv.port}/", timeout=5)
        assert srv.seen == []


def test_tls_context_minimum():
    assert egress.tls_context().minimum_version == ssl.TLSVersion.TLSv1_2
    assert egress.tls_context().verify_mode == ssl.CERT_REQUIRED


# --- the whole-attempt deadline -----------------------------------------------------------------

def test_deadline_shuts_down_registered_sockets():
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(10)
        with egress.attempt_deadline(0.3) as dl:
            assert egress.current_deadline() is dl
            dl.register(a)
            start = time.monotonic()
            assert a.recv(10) == b""  # blocked until the watchdog shut the socket down
            assert time.monotonic() - start < 2
            assert dl.expired
        assert egress.current_deadline() is None


def test_finished_deadline_leaves_sockets_alone():
    a, b = socket.socketpair()
    with a, b:
        with egress.attempt_deadline(0.1) as dl:
            dl.register(a)
        time.sleep(0.3)
        assert not dl.expired
        b.sendall(b"still open")
        assert a.recv(10) == b"still open"


def test_watchdog_keeps_no_finished_deadline_and_wakes_for_an_earlier_one():
    """A deadline that ends later than the watchdog's next look costs no wake-up; one that
    ends sooner (here under a 60 s one in progress) is still enforced on time."""
    with egress.attempt_deadline(60) as long:
        a, b = socket.socketpair()
        with a, b:
            a.settimeout(10)
            with egress.attempt_deadline(0.3) as short:
                short.register(a)
                start = time.monotonic()
                assert a.recv(10) == b""
                assert time.monotonic() - start < 2 and short.expired
        assert not long.expired
    assert long not in egress._watchdog._active and short not in egress._watchdog._active


def test_registering_after_expiry_shuts_down_at_once():
    dl = egress.Deadline(0)
    dl.expire()
    a, b = socket.socketpair()
    with a, b:
        dl.register(a)
        assert a.recv(10) == b""


def test_deadline_cuts_the_connect_timeout(monkeypatch):
    seen = []

    def fake_open(ip, port, timeout, *args):
        seen.append(timeout)
        raise ConnectionRefusedError(111, "refused (test stub)")

    monkeypatch.setattr(egress, "_open_socket", fake_open)
    session = egress.guarded_session(LOOPBACK_ONLY, resolver=CountingResolver(["127.0.0.1"]))
    with egress.attempt_deadline(2):
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get("http://hooks.test/", timeout=30)
    assert seen and seen[0] <= 2
    seen.clear()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get("http://hooks.test/", timeout=30)
    assert seen == [30]


def test_tls_context_sockets_join_the_deadline():
    assert issubclass(egress.tls_context().sslsocket_class, ssl.SSLSocket)
    assert egress.tls_context().sslsocket_class is egress._DeadlineSSLSocket
