"""Spam heuristics applied to inbound mail before rules. Pure functions.

- from_permitted_domain: the header From address is in one of our own permitted domains. Mail
  from our own domains does not arrive from the internet; inbound it is spoofing.
- from_equals_to: the header From address equals a To header address or an envelope recipient,
  a classic forged "you sent this to yourself" pattern.

Addresses are compared normalized (display names, angle brackets and case do not count).
"""
from __future__ import annotations

from dataclasses import dataclass

from .headers import address_domain, normalize_address, parse_addresses

FROM_PERMITTED_DOMAIN = "from_permitted_domain"
FROM_EQUALS_TO = "from_equals_to"
ALL = (FROM_PERMITTED_DOMAIN, FROM_EQUALS_TO)


@dataclass(frozen=True)
class Verdict:
    heuristic: str
    reason: str  # for the SMTP reply and the log; never includes anything secret


def header_from_addresses(from_values: list[bytes | str]) -> list[str]:
    return [addr for value in from_values for _, addr in parse_addresses(value)]


def check(
    from_values: list[bytes | str],
    to_values: list[bytes | str],
    recipients: list[str],
    permitted_domains: frozenset[str] | set[str],
    enabled: tuple[str, ...] = ALL,
) -> Verdict | None:
    """The first heuristic that rejects the message, or None."""
    senders = header_from_addresses(from_values)
    if FROM_PERMITTED_DOMAIN in enabled:
        for addr in senders:
            if address_domain(addr) in permitted_domains:
                return Verdict(
                    FROM_PERMITTED_DOMAIN,
                    f"header From <{addr}> claims one of this server's own domains",
                )
    if FROM_EQUALS_TO in enabled and senders:
        targets = {addr for value in to_values for _, addr in parse_addresses(value)}
        targets.update(normalize_address(r) for r in recipients)
        for addr in senders:
            if addr in targets:
                return Verdict(FROM_EQUALS_TO, f"header From <{addr}> equals the recipient")
    return None
