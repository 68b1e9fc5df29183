"""Egress policy: the SSRF guard for webhook requests.

mxhook posts to URLs that admins type in, from a host inside their network. Before any
connection the endpoint host is resolved once, every address is checked, and the socket is
opened to a checked address -- there is no second DNS lookup between check and connect, so a
DNS answer that changes in between (DNS rebinding) cannot reach a refused address. TLS still
uses the endpoint's host name for SNI and certificate verification, and the ``Host`` header is
unchanged.

Refused (unless an admin allowlist network contains the address; see ``[http]
allow_networks``), each with its reason in the error:

IPv4: 0.0.0.0/8 (this network, incl. unspecified), 10/8, 172.16/12, 192.168/16 (private),
100.64/10 (CGNAT), 127/8 (loopback), 169.254/16 (link-local), 192.0.0/24 (IETF protocol
assignments), 192.0.2/24, 198.51.100/24, 203.0.113/24 (documentation), 192.88.99/24 (6to4
relay anycast), 198.18/15 (benchmarking), 224/4 (multicast), 240/4 (reserved),
255.255.255.255 (broadcast).

IPv6: ::/128, ::1/128, ::/96 (IPv4-compatible, deprecated), ::ffff:0:0:0/96 (IPv4-translated),
100::/64 (discard), 2001::/23 (IETF protocol assignments, incl. Teredo 2001::/32), 2001:db8::/32
and 3fff::/20 (documentation), 2002::/16 (6to4), 5f00::/16 (SRv6 SIDs), fc00::/7 (unique
local), fe80::/10 (link-local), fec0::/10 (site-local, deprecated), ff00::/8 (multicast), and
everything else outside 2000::/3 (not global unicast).

Cloud metadata endpoints (169.254.169.254, 168.63.129.16, fd00:ec2::254) are refused even when
a broader allowlist network covers them; only an allowlist entry for exactly that address
(/32, /128) admits one.

Addresses that embed an IPv4 address:
- IPv4-mapped ``::ffff:a.b.c.d`` is checked as the IPv4 address it is (a dual-stack socket
  reaches exactly that IPv4 host), allowlist included.
- NAT64 well-known prefix ``64:ff9b::a.b.c.d`` (RFC 6052) is checked as its embedded IPv4
  address: on an IPv6-only host behind DNS64/NAT64 that is how public IPv4 receivers are
  reached, and a NAT64 address embedding a refused IPv4 address is refused. The local-use
  prefix 64:ff9b:1::/48 (RFC 8215) is refused (its layout is site-specific). Operator-chosen
  NAT64 prefixes cannot be recognized; RFC 6052 gateways refuse to translate to non-global
  IPv4 addresses themselves.
- 6to4 (2002::/16) and Teredo (2001::/32) are refused outright rather than decoded: both are
  deprecated tunnels whose embedded IPv4 address is where the packets go, and no webhook
  receiver needs them.

Documentation ranges are refused: they are never routed, so refusing them costs nothing and a
copy-pasted example URL fails at ``rule add`` with a clear reason instead of timing out.

Several addresses: `resolve_checked` refuses the endpoint if ANY address of the answer is
refused (fail closed). Using only the passing addresses would also be safe, but a mixed answer
means the name is misconfigured or hostile, the outcome would depend on address order, and the
admin learns about it when the endpoint is added instead of at some later connection.

Whole-attempt deadline: socket timeouts bound each connect and each read, so a server that
trickles its answer (a byte every few seconds) could hold a worker for hours.
`attempt_deadline(seconds)` bounds everything a guarded session does on this thread inside the
`with` block (and the connection `connection_for` hands out in it): connect timeouts are cut to
the time left, and when the time is up a watchdog thread shuts down the sockets in use (TCP
socket, TLS socket during its handshake, kept connection), so a blocked send or receive returns
at once with an error. `deadline.expired` then tells the caller why.
"""
from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import threading
import time
from typing import Callable, Sequence
from urllib.parse import urlsplit

import requests
import requests.certs
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationValueError, NewConnectionError
from urllib3.util import parse_url
from urllib3.util.wait import wait_for_read
from urllib3.util.ssl_ import create_urllib3_context, resolve_cert_reqs

URLLIB3_1 = urllib3.__version__.startswith("1.")  # Debian 12; 2.x in Debian 13 and on PyPI
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list]

CONFIG_KEY = "[http] allow_networks"
TLS_MINIMUM = ssl.TLSVersion.TLSv1_2

_N = ipaddress.ip_network

# Checked in order; the first match names the reason. Metadata first (stricter allowlist rule).
METADATA = (
    (_N("169.254.169.254/32"), "a cloud metadata address"),
    (_N("168.63.129.16/32"), "a cloud metadata address (Azure platform)"),
    (_N("fd00:ec2::254/128"), "a cloud metadata address"),
)

BLOCKED_V4 = (
    (_N("0.0.0.0/8"), "a 'this network' address (0.0.0.0/8)"),
    (_N("10.0.0.0/8"), "a private address"),
    (_N("100.64.0.0/10"), "a carrier-grade NAT address (100.64.0.0/10)"),
    (_N("127.0.0.0/8"), "a loopback address"),
    (_N("169.254.0.0/16"), "a link-local address"),
    (_N("172.16.0.0/12"), "a private address"),
    (_N("192.0.0.0/24"), "an IETF protocol assignment address (192.0.0.0/24)"),
    (_N("192.0.2.0/24"), "a documentation address (TEST-NET-1)"),
    (_N("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_N("192.168.0.0/16"), "a private address"),
    (_N("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"),
    (_N("198.51.100.0/24"), "a documentation address (TEST-NET-2)"),
    (_N("203.0.113.0/24"), "a documentation address (TEST-NET-3)"),
    (_N("224.0.0.0/4"), "a multicast address"),
    (_N("255.255.255.255/32"), "the broadcast address"),
    (_N("240.0.0.0/4"), "a reserved address (240.0.0.0/4)"),
)

BLOCKED_V6 = (
    (_N("::/128"), "the unspecified address"),
    (_N("::1/128"), "a loopback address"),
    (_N("::/96"), "an IPv4-compatible address (deprecated)"),
    (_N("::ffff:0:0:0/96"), "an IPv4-translated address"),
    (_N("64:ff9b:1::/48"), "a local-use NAT64 address (64:ff9b:1::/48)"),
    (_N("100::/64"), "a discard-only address (100::/64)"),
    (_N("2001::/32"), "a Teredo tunnel address (2001::/32)"),
    (_N("2001:db8::/32"), "a documentation address"),
    (_N("2001::/23"), "an IETF protocol assignment address (2001::/23)"),
    (_N("2002::/16"), "a 6to4 tunnel address (2002::/16)"),
    (_N("3fff::/20"), "a documentation address"),
    (_N("5f00::/16"), "an SRv6 SID address (5f00::/16)"),
    (_N("fc00::/7"), "a private (unique local) address"),
    (_N("fe80::/10"), "a link-local address"),
    (_N("fec0::/10"), "a site-local address (deprecated)"),
    (_N("ff00::/8"), "a multicast address"),
)
GLOBAL_UNICAST_V6 = _N("2000::/3")
NAT64_WKP = _N("64:ff9b::/96")


class EgressError(Exception):
    """An address, URL or host the egress policy refuses; the message says why and how to
    permit it. `address`/`reason`/`host` are set when known."""

    def __init__(self, message: str, *, address: IPAddress | None = None, reason: str | None = None,
                 host: str | None = None):
        super().__init__(message)
        self.address = address
        self.reason = reason
        self.host = host


class ResolutionError(EgressError):
    """The endpoint host does not resolve (no address was checked, nothing was connected)."""


class EgressBlocked(requests.exceptions.ConnectionError):
    """Raised by a guarded session when the policy refuses a connection. A subclass of
    requests' ConnectionError, so a caller that treats connection errors as retryable keeps
    working; catch it first to treat it differently. `.egress_error` is the EgressError."""

    def __init__(self, egress_error: EgressError, **kwargs):
        super().__init__(str(egress_error), **kwargs)
        self.egress_error = egress_error


# --- pure checks ------------------------------------------------------------------------------

def _as_ip(ip) -> IPAddress:
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    return ipaddress.ip_address(str(ip).strip().strip("[]"))


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped (::ffff:a.b.c.d) or NAT64 well-known-prefix address stands for."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    plain = ipaddress.IPv6Address(int(ip))  # drop any scope id
    if plain in NAT64_WKP:
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    return None


def blocked_reason(ip) -> tuple[str, Network | None] | None:
    """(reason, network) when the policy refuses `ip` without an allowlist, else None."""
    ip = _as_ip(ip)
    inner = _embedded_v4(ip)
    if inner is not None:
        found = blocked_reason(inner)
        if found is None:
            return None
        kind = "IPv4-mapped" if ip.ipv4_mapped is not None else "NAT64"
        return f"{found[0]} ({kind} form of {inner})", found[1]
    plain = ip if ip.version == 4 else ipaddress.IPv6Address(int(ip))
    for net, reason in METADATA:
        if plain.version == net.version and plain in net:
            return reason, net
    for net, reason in (BLOCKED_V4 if plain.version == 4 else BLOCKED_V6):
        if plain in net:
            return reason, net
    if plain.version == 6 and plain not in GLOBAL_UNICAST_V6:
        return "not a global unicast address (outside 2000::/3)", None
    return None


def _is_metadata(ip: IPAddress) -> bool:
    target = _embedded_v4(ip) or (ip if ip.version == 4 else ipaddress.IPv6Address(int(ip)))
    return any(target.version == net.version and target in net for net, _ in METADATA)


def _allowed(ip: IPAddress, allow: Sequence[Network]) -> bool:
    candidates = [ip if ip.version == 4 else ipaddress.IPv6Address(int(ip))]
    inner = _embedded_v4(ip)
    if inner is not None:
        candidates.append(inner)
    metadata = _is_metadata(ip)
    for net in allow:
        for c in candidates:
            if c.version == net.version and c in net:
                if not metadata or net.num_addresses == 1:
                    return True
    return False


def _hint(ip: IPAddress) -> str:
    if _is_metadata(ip):
        target = _embedded_v4(ip) or ip
        width = 32 if target.version == 4 else 128
        return f"it is refused unless {CONFIG_KEY} lists exactly {target}/{width}"
    return f"add its network to {CONFIG_KEY} to permit it"


def check_address(ip, allow: Sequence[Network] = ()) -> None:
    """Raise EgressError if the policy refuses `ip` (str or ipaddress object) and no allowlist
    network admits it; return None when it may be connected to."""
    try:
        addr = _as_ip(ip)
    except ValueError:
        raise EgressError(f"{ip!r} is not an IP address") from None
    found = blocked_reason(addr)
    if found is None or _allowed(addr, allow):
        return None
    reason, net = found
    raise EgressError(f"{addr} is {reason}; {_hint(addr)}", address=addr, reason=reason)


# --- resolution -------------------------------------------------------------------------------

def static_resolver(table: dict[str, Sequence[str]]) -> Resolver:
    """A getaddrinfo-compatible resolver answering from `table` (host -> addresses) and never
    from DNS; unknown names raise socket.gaierror. For tests and fixed setups."""
    table = {k.lower().rstrip("."): list(v) for k, v in table.items()}

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        name = str(host).lower().rstrip(".")
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for text in table[name]:
            ip = ipaddress.ip_address(text)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ip), int(port or 0))))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), int(port or 0), 0, 0)))
        return out

    return resolve


def resolve_checked(host: str, port: int | None, *, resolver: Resolver | None = None,
                    allow: Sequence[Network] = ()) -> list[IPAddress]:
    """Resolve `host` once and check every address; return them (answer order, duplicates
    removed) or raise EgressError for the first refused one (ResolutionError when the name
    does not resolve). An IP literal is checked without any lookup."""
    name = str(host).strip().strip("[]")
    try:
        literal = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        resolver = resolver or socket.getaddrinfo
        try:
            infos = resolver(name, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, socket.herror, UnicodeError, OSError) as exc:
            raise ResolutionError(f"endpoint host {name} does not resolve: {exc}", host=name) from None
        addrs = []
        for info in infos:
            family, sockaddr = info[0], info[4]
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = sockaddr[0]
            if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3] and "%" not in text:
                text = f"{text}%{sockaddr[3]}"
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise EgressError(f"endpoint host {name} resolved to {text!r}, which is not an IP address",
                                  host=name) from None
            if ip not in addrs:
                addrs.append(ip)
        if not addrs:
            raise ResolutionError(f"endpoint host {name} has no IPv4 or IPv6 address", host=name)
    for ip in addrs:
        try:
            check_address(ip, allow)
        except EgressError as exc:
            what = f"endpoint address {ip}" if literal is not None else f"endpoint host {name} resolves to {ip}"
            raise EgressError(f"{what}, {exc.reason}; {_hint(ip)}", address=ip, reason=exc.reason,
                              host=name) from None
    return addrs


def check_endpoint_url(url: str, allow: Sequence[Network] = (), *, resolver: Resolver | None = None) -> list[IPAddress]:
    """Check an endpoint URL when a rule/endpoint is added or edited: http(s) with a host,
    and every address it resolves to passes the policy. Returns the checked addresses.
    Raises EgressError (ResolutionError if the host does not resolve -- the CLI may choose to
    warn instead, since every connection is checked again)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressError(f"endpoint URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise EgressError(f"endpoint scheme {scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise EgressError("endpoint URL has no host")
    port = port or (443 if scheme == "https" else 80)
    return resolve_checked(parts.hostname, port, resolver=resolver, allow=allow)


# --- whole-attempt deadline ---------------------------------------------------------------------

class Deadline:
    """The end of one attempt (monotonic clock). Sockets and connections registered while it
    runs are shut down when it expires; `finish()` ends it (nothing is shut down after that)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds
        self.expired = False
        self._finished = False
        self._held: list = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def register(self, obj) -> None:
        """A socket, or a connection whose `.sock` is to be shut down at expiry."""
        with self._lock:
            if self._finished:
                return
            if self.expired:
                _abort(obj)
            else:
                self._held.append(obj)

    def expire(self) -> None:
        with self._lock:
            if self._finished or self.expired:
                return
            self.expired = True
            for obj in self._held:
                _abort(obj)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._held.clear()


def _abort(obj) -> None:
    """Shut down the socket of `obj` at the OS level (not SSLSocket.shutdown, which would
    unwrap the TLS object under a thread reading from it): a blocked recv/send returns."""
    sock = obj if isinstance(obj, socket.socket) else getattr(obj, "sock", None)
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # not connected yet, already closed, or detached into a TLS socket


class _Watchdog:
    """One daemon thread that expires deadlines. It keeps the deadlines in progress (a few: one
    per posting thread) and sleeps until the earliest; a new one wakes it only when it ends
    before that (or nothing was in progress): attempts that finish in time, nearly all of
    them, cost no thread switch, and none is kept once finished."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active: set[Deadline] = set()
        self._wake_at = float("inf")  # when the thread will look next (inf: when told)
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            self._active.add(deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mxhook-http-deadline", daemon=True)
                self._thread.start()
            if deadline.at < self._wake_at:
                self._wake_at = deadline.at
                self._cond.notify()

    def discard(self, deadline: Deadline) -> None:
        with self._cond:
            self._active.discard(deadline)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [d for d in self._active if d.at <= now]
                self._active.difference_update(due)
                self._wake_at = min((d.at for d in self._active), default=float("inf"))
                if not due:
                    self._cond.wait(None if self._wake_at == float("inf") else self._wake_at - now)
                    continue
            for deadline in due:
                deadline.expire()


_watchdog = _Watchdog()
_current = threading.local()


def current_deadline() -> Deadline | None:
    return getattr(_current, "deadline", None)


class attempt_deadline:
    """``with attempt_deadline(seconds) as dl:`` -- bound every request a guarded session makes
    on this thread inside the block (see the module docstring)."""

    def __init__(self, seconds: float):
        self.deadline = Deadline(seconds)

    def __enter__(self) -> Deadline:
        self._outer = current_deadline()
        _current.deadline = self.deadline
        _watchdog.add(self.deadline)
        return self.deadline

    def __exit__(self, *exc) -> None:
        self.deadline.finish()
        _watchdog.discard(self.deadline)
        _current.deadline = self._outer


# --- the requests transport -------------------------------------------------------------------
#
# One source for urllib3 1.26 (Debian 12) and 2.x (Debian 13, PyPI). The guard uses only:
# - requests' HTTPAdapter extension points: `init_poolmanager`, `proxy_manager_for`, `send`;
# - urllib3's PoolManager attribute `pool_classes_by_scheme` and the pools' `ConnectionCls`;
# - public connection attributes (`host`, `port`, `timeout`, `source_address`,
#   `socket_options`, `ssl_context`, `cert_reqs`, `ca_certs`, `ca_cert_dir`, `ca_cert_data`)
#   and http.client's public methods (`connect`, `putrequest`, `set_tunnel`);
# - one private method, `HTTPConnection._new_conn()` -> connected socket, which both
#   `connect()` methods call to open the TCP connection.
# tests/unit/test_egress_contract.py pins each of these against the installed urllib3 and
# requests, so a release that changes one fails there by name instead of deferring mail.

class _Policy:
    def __init__(self, allow: Sequence[Network], resolver: Resolver | None):
        self.allow = list(allow)
        self.resolver = resolver

    def resolve(self, host: str, port: int | None) -> list[IPAddress]:
        return resolve_checked(host, port, resolver=self.resolver, allow=self.allow)


def _connect_timeout(value) -> float | None:
    """A connection's `timeout` as seconds or None; urllib3's "default" sentinels (1.26:
    socket._GLOBAL_DEFAULT_TIMEOUT, 2.x: an enum token) mean the process-wide default."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    return socket.getdefaulttimeout()


def _open_socket(ip: IPAddress, port: int, timeout, source_address, socket_options) -> socket.socket:
    """Connect a TCP socket to exactly `ip` (no name lookup: the address is numeric)."""
    if ip.version == 4:
        family, sockaddr = socket.AF_INET, (str(ip), port)
    else:
        scope = ip.scope_id
        plain = str(ipaddress.IPv6Address(int(ip)))
        scope_num = 0
        if scope:
            scope_num = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        family, sockaddr = socket.AF_INET6, (plain, port, 0, scope_num)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for opt in socket_options or ():
            sock.setsockopt(*opt)
        sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
        return sock
    except BaseException:
        sock.close()
        raise


class _GuardedConnectionMixin:
    """Replaces urllib3's `_new_conn`: resolve + check once, connect to a checked address.
    `self.host` stays the endpoint's name, so the Host header, TLS SNI and certificate
    hostname verification all use it. Every request on the connection (new or pooled
    keep-alive) puts it under the thread's attempt deadline."""

    _policy: _Policy
    connected_address: IPAddress | None = None

    def _new_conn(self):
        host = self.host
        try:
            addrs = self._policy.resolve(host, self.port)
        except ResolutionError as exc:
            raise NewConnectionError(self, str(exc)) from None
        last: OSError | None = None
        deadline = current_deadline()
        configured = _connect_timeout(self.timeout)
        for ip in addrs:
            timeout = configured
            if deadline is not None:
                left = deadline.remaining()
                if left <= 0 or deadline.expired:
                    last = socket.timeout("the attempt's deadline passed")
                    break
                if timeout is None or timeout > left:
                    timeout = left
            try:
                sock = _open_socket(ip, self.port, timeout, self.source_address, self.socket_options)
            except OSError as exc:
                last = exc
                continue
            if deadline is not None:
                deadline.register(sock)
            self.connected_address = ip
            return sock
        if isinstance(last, socket.timeout):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={configured})")
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}")

    def putrequest(self, *args, **kwargs):
        deadline = current_deadline()
        if deadline is not None:
            deadline.register(self)
        return super().putrequest(*args, **kwargs)

    def set_tunnel(self, *args, **kwargs):
        raise EgressError("proxies are not supported by the egress guard (the proxy would connect unchecked)")


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    def connect(self):
        # A context of our own for every connection (TLS 1.2 minimum, handshake under the
        # deadline), never one handed down: requests 2.32 passes a process-wide context for
        # verify=True, and setting ours up in it would change it for every user of requests in
        # the process. Trust is what requests asked for: its CA file/dir, else its CA bundle.
        self.ssl_context = tls_context(self.cert_reqs)
        if not (self.ca_certs or self.ca_cert_dir or self.ca_cert_data):
            self.ssl_context.load_verify_locations(cafile=requests.certs.where())
        return super().connect()


class _DeadlineSSLSocket(ssl.SSLSocket):
    """A TLS socket that puts itself under the thread's attempt deadline before its handshake
    (until the handshake is done, urllib3's connection still holds the plain socket, which
    the TLS socket has taken over)."""

    def do_handshake(self, *args, **kwargs):
        deadline = current_deadline()
        if deadline is not None:
            deadline.register(self)
        return super().do_handshake(*args, **kwargs)


def tls_context(cert_reqs=None) -> ssl.SSLContext:
    """urllib3's default client context with TLS 1.2 as the minimum version (and handshakes
    bounded by the attempt deadline)."""
    ctx = create_urllib3_context(cert_reqs=resolve_cert_reqs(cert_reqs))
    ctx.minimum_version = TLS_MINIMUM
    ctx.sslsocket_class = _DeadlineSSLSocket
    return ctx


def _pool_classes(policy: _Policy) -> dict[str, type]:
    http_conn = type("GuardedHTTPConnection", (_GuardedHTTPConnection,), {"_policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"_policy": policy})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter that applies the egress policy to every new connection.

    Each new TCP connection resolves the host once with `resolver` (getaddrinfo-compatible;
    default socket.getaddrinfo), checks every address (`resolve_checked`), and connects to a
    checked address; TLS uses the URL's host name for SNI and verification, minimum TLS 1.2.
    Pooled keep-alive connections were checked when they were opened. Proxies are refused
    (a proxy would connect on our behalf, unchecked). A refused connection raises
    EgressBlocked (a requests ConnectionError)."""

    __attrs__ = HTTPAdapter.__attrs__ + ["_policy"]

    def __init__(self, allow: Sequence[Network] = (), resolver: Resolver | None = None, **kwargs):
        self._policy = _Policy(allow, resolver)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._policy)
        self.connection_classes = {scheme: pool.ConnectionCls
                                   for scheme, pool in self.poolmanager.pool_classes_by_scheme.items()}
        self.kept: dict[tuple, object] = {}  # deliveries' keep-alive connections by origin

    def close(self):
        for conn in self.kept.values():
            conn.close()
        self.kept.clear()
        super().close()

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        raise EgressError("proxies are not supported by the egress guard (the proxy would connect unchecked)")

    def send(self, request, *args, **kwargs):
        try:
            return super().send(request, *args, **kwargs)
        except EgressError as exc:
            raise EgressBlocked(exc, request=request) from exc


def connection_for(session: requests.Session, url: str, timeout: float):
    """A connected guarded connection (urllib3's, `.sock` the socket: TLS for https) to
    `url`'s origin for one delivery, and the request target (path and query). The connection
    the session's last delivery there left open is reused while the server keeps it open;
    otherwise a new one is made: resolve and check once, connect to a checked address (the
    connect timeout cut to the attempt's deadline), TLS 1.2 at least with the certificate
    verified for the URL's host name against requests' CA bundle (or the CA file or directory
    the session's `verify` names). Give it back with `keep_connection` once its answer was read
    to the end, or close it. Raises EgressError, LocationValueError and what connecting
    raises (urllib3's NewConnectionError and ConnectTimeoutError, ssl errors, OSError)."""
    origin, request_uri = _origin(url)
    scheme, host, port = origin
    adapter = session.get_adapter(url)
    if not isinstance(adapter, GuardedAdapter):
        raise EgressError("the session is not guarded by the egress policy")
    conn = adapter.kept.pop(origin, None)
    if conn is not None and (conn.sock is None or wait_for_read(conn.sock, timeout=0.0)):
        conn.close()  # closed by the server (or it sent something unasked): not reusable
        conn = None
    if conn is None:
        cls, tls = adapter.connection_classes[scheme], {}
        if scheme == "https":
            tls = {"cert_reqs": "CERT_REQUIRED"}
            if isinstance(session.verify, str):
                tls["ca_cert_dir" if os.path.isdir(session.verify) else "ca_certs"] = session.verify
        if tls and URLLIB3_1:  # 1.26 takes them by set_cert (which sets its host name check up too)
            conn = cls(host, port, timeout=timeout)
            conn.set_cert(**tls)
        else:  # 2.x: by the constructor (set_cert is deprecated there)
            conn = cls(host, port, timeout=timeout, **tls)
        conn.connect()
    conn.origin = origin
    deadline = current_deadline()
    if deadline is not None:
        deadline.register(conn)
    return conn, request_uri


@functools.lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[tuple[str, str, int], str]:
    """((scheme, host, port), request target) of a URL, parsed by urllib3 (which also
    percent-encodes CR and LF in the path: no header injection); a target's URL is parsed once,
    not on every post. Raises LocationValueError."""
    parts = parse_url(url)
    if not parts.host:
        raise LocationValueError("no host in the URL")
    scheme = parts.scheme or "http"
    return (scheme, parts.host, parts.port or (443 if scheme == "https" else 80)), parts.request_uri


KEPT_ORIGINS = 10  # connections a session keeps, the most recently used (requests' pool count)


def keep_connection(session: requests.Session, conn) -> None:
    """A connection whose answer was read to its end, kept for the session's next delivery to
    the same origin (one per origin; the least recently used closed beyond KEPT_ORIGINS)."""
    kept = session.get_adapter(f"{conn.origin[0]}://").kept
    old = kept.pop(conn.origin, None)
    if old is not None and old is not conn:
        old.close()
    kept[conn.origin] = conn
    while len(kept) > KEPT_ORIGINS:
        kept.pop(next(iter(kept))).close()


def guarded_session(allow: Sequence[Network] = (), resolver: Resolver | None = None) -> requests.Session:
    """A requests Session whose http:// and https:// traffic goes through a GuardedAdapter.
    `trust_env` is off: no proxies or ~/.netrc credentials from the environment."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(allow, resolver=resolver)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
