"""The one DNS interface the SPF, DKIM, DMARC and ARC checks share.

A resolver answers `lookup(name, rdtype, timeout)` for TXT, A, AAAA, MX and PTR with a list of
values (TXT: each record's strings joined, as bytes; A/AAAA: address text; MX: (preference,
exchange); PTR: host name), [] when the name or the type does not exist, and raises
`DnsTempError` when it cannot tell (timeout, SERVFAIL, no server reachable). `Budget` wraps one
for one message: answers are cached, and the lookups together get at most `seconds`, after which
every lookup is a `DnsTempError` at once, so a message's checks end as temperror rather than
holding the SMTP session.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import dns.exception
import dns.name
import dns.resolver

from mxhook.config import parse_nameserver

TYPES = ("TXT", "A", "AAAA", "MX", "PTR")


class DnsTempError(Exception):
    """The answer could not be had: the check that asked ends as temperror."""


class Resolver(Protocol):
    def lookup(self, name: str, rdtype: str, timeout: float) -> list: ...


class DnsPythonResolver:
    """Lookups with dnspython: the system's resolvers (/etc/resolv.conf) or the `nameservers`
    given (each 'address' or 'address:port'), over UDP with TCP for truncated answers."""

    def __init__(self, nameservers: tuple[str, ...] = ()):
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            servers = [parse_nameserver(s) for s in nameservers]
            # ports first: dnspython >= 2.4 reads them when the nameservers are set
            self._resolver.nameserver_ports = {host: port for host, port in servers}
            self._resolver.nameservers = [host for host, _ in servers]
        else:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:  # no usable /etc/resolv.conf
                self._resolver, self._problem = None, f"no system resolver: {exc}"
        if self._resolver is not None:
            # a SERVFAIL is an answer (temperror), not a reason to ask again until the lifetime ends
            self._resolver.retry_servfail = False

    def lookup(self, name: str, rdtype: str, timeout: float) -> list:
        if self._resolver is None:
            raise DnsTempError(self._problem)
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError):
            return []  # not a DNS name (an empty or over-long label): nothing can exist there
        try:
            answer = self._resolver.resolve(qname, rdtype, lifetime=max(timeout, 0.001),
                                            search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{name} {rdtype}: timed out ({exc})") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"{name} {rdtype}: no server answered ({exc})") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None
        if answer.rrset is None:
            return []
        return [_value(rdtype, rdata) for rdata in answer.rrset]


def _value(rdtype: str, rdata) -> object:
    if rdtype == "TXT":
        return b"".join(rdata.strings)
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    return rdata.target.to_text(omit_final_dot=True)  # PTR


class StaticResolver:
    """Answers from a table: {(name, rdtype): [values]} with values as `lookup` returns them
    (TXT may be given as text). For tests, the bench and dry runs; names compare without case
    and trailing dot."""

    def __init__(self, records: dict[tuple[str, str], list]):
        self.records = {(_key(n), t.upper()): [v.encode() if isinstance(v, str) and t.upper() == "TXT"
                                              else v for v in values]
                        for (n, t), values in records.items()}

    def lookup(self, name: str, rdtype: str, timeout: float) -> list:
        return list(self.records.get((_key(name), rdtype.upper()), ()))


def _key(name: str) -> str:
    return name.rstrip(".").lower()


@dataclass
class Budget:
    """One message's lookups: cached (SPF, DKIM, DMARC and ARC ask some names twice), each
    bounded by `timeout` and all of them together by `seconds` on `clock`. A failed lookup is
    remembered, so the same name is not waited for again."""

    resolver: Resolver
    seconds: float = 5.0
    timeout: float = 2.0
    clock: Callable[[], float] = time.monotonic
    lookups: int = 0
    _cache: dict = field(default_factory=dict)
    _deadline: float | None = None

    def lookup(self, name: str, rdtype: str) -> list:
        key = (_key(name), rdtype)
        if key in self._cache:
            cached = self._cache[key]
            if isinstance(cached, DnsTempError):
                raise cached
            return cached
        now = self.clock()
        if self._deadline is None:
            self._deadline = now + self.seconds
        left = self._deadline - now
        if left <= 0:
            raise DnsTempError(f"{name} {rdtype}: the DNS budget of {self.seconds:g} s per "
                               "message is spent")
        self.lookups += 1
        try:
            answer = list(self.resolver.lookup(name, rdtype, min(self.timeout, left)))
        except DnsTempError as exc:
            self._cache[key] = exc
            raise
        except Exception as exc:  # a resolver's own failure is an unknown answer, never a crash
            err = DnsTempError(f"{name} {rdtype}: {type(exc).__name__}: {exc}")
            self._cache[key] = err
            raise err from None
        self._cache[key] = answer
        return answer

    def txt(self, name: str) -> list[bytes]:
        return self.lookup(name, "TXT")
