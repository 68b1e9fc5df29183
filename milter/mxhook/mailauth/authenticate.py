"""The entry point for the milter and `rule test`: the `[authentication]` settings, the verdicts
of one message under them (`authenticate`), and the DMARC refusal they may ask for."""
from __future__ import annotations

import functools
import random
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from mxhook import config as configmod
from mxhook.mailauth.resolvers import DnsPythonResolver, Resolver
from mxhook.mailauth.upstream import upstream_results, verdicts_from_upstream
from mxhook.mailauth.verdicts import Verdicts
from mxhook.mailauth.verify import verify
from mxhook.model.inbound import Authentication
from mxhook.model.message import header_section


@dataclass
class AuthSettings(configmod.FromConfig):
    """The [authentication] keys (docs/configuration.md)."""

    SECTION = "authentication"
    mode: str
    authserv_id: str
    trusted_authserv_ids: tuple[str, ...]
    nameservers: tuple[str, ...]
    dns_timeout: float
    dns_budget: float
    dmarc_reject: bool
    _resolver: Resolver | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.authserv_id = self.authserv_id or socket.getfqdn()
        self.trusted_authserv_ids = tuple(t.lower() for t in self.trusted_authserv_ids)

    @property
    def resolver(self) -> Resolver:
        """The dnspython resolver over `nameservers`, made once (it reads resolv.conf)."""
        if self._resolver is None:
            self._resolver = DnsPythonResolver(self.nameservers)
        return self._resolver


def authenticate(message: bytes, settings: AuthSettings, *, client_ip: str, helo: str,
                 mail_from: str, dns: Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Verdicts | None:
    """The verdicts of `message` as `settings.mode` says (None when off), with every
    Authentication-Results field it came with in `upstream`, each marked trusted or not. `dns`
    overrides the settings' resolver (tests, dry runs)."""
    if settings.mode == "off":
        return None
    fields, _offset, _defects = header_section(message)
    upstream = upstream_results(fields, settings.trusted_authserv_ids)
    if settings.mode == "upstream":
        return verdicts_from_upstream(upstream)
    verdicts = verify(message, client_ip=client_ip, helo=helo, mail_from=mail_from,
                      dns=dns or settings.resolver, authserv_id=settings.authserv_id,
                      budget=settings.dns_budget, timeout=settings.dns_timeout, clock=clock)
    return Verdicts(spf=verdicts.spf, dkim=verdicts.dkim, dmarc=verdicts.dmarc, arc=verdicts.arc,
                    source=verdicts.source, authserv_id=verdicts.authserv_id, upstream=upstream)


def dmarc_rejection(verdicts: Verdicts | None, *,
                    sample: Callable[[], float] = random.random) -> str | None:
    """The text of a 550 5.7.1 when the From domain's DMARC policy asks to reject this message
    (result fail, policy reject, and the record's pct sampling picks it), else None. Only
    `dmarc_reject = yes` makes the milter use it."""
    if verdicts is None or verdicts.dmarc.result != "fail" or verdicts.dmarc.policy != "reject":
        return None
    if verdicts.dmarc.pct < 100 and sample() * 100 >= verdicts.dmarc.pct:
        return None
    return (f"mxhook: DMARC policy of {verdicts.dmarc.domain} rejects this message "
            "(no SPF or DKIM pass aligned with the From domain)")


def for_decision(message: bytes, settings: AuthSettings, *, client_ip: str, helo: str,
                 mail_from: str, dns: Resolver | None = None) -> Authentication | None:
    """The verdicts as the inbound decision takes them (model/inbound.py `Authentication`):
    the rule conditions' values, the payload object, and the DMARC refusal when
    `dmarc_reject` is on and the From domain's policy asks for it. None when mode is off."""
    verdicts = authenticate(message, settings, client_ip=client_ip, helo=helo,
                            mail_from=mail_from, dns=dns)
    if verdicts is None:
        return None
    reject = dmarc_rejection(verdicts) if settings.dmarc_reject else None
    return Authentication(verdicts.conditions(), verdicts.as_dict(),
                          _UNSAFE_REPLY.sub("?", reject) if reject else None)


def authenticator(settings: AuthSettings, *, client_ip: str, helo: str, mail_from: str,
                  dns: Resolver | None = None) -> Callable[[bytes], Authentication | None] | None:
    """`for_decision` for one envelope, as the inbound decision takes it (`authenticate`);
    None with mode off."""
    if settings.mode == "off":
        return None
    return functools.partial(for_decision, settings=settings, client_ip=client_ip, helo=helo,
                             mail_from=mail_from, dns=dns)


# What an SMTP reply line cannot carry, and `%` (libmilter reads it as a format character): a
# From domain is the sender's text
_UNSAFE_REPLY = re.compile(r"[^ -~]|%")
