"""Spam heuristics applied to inbound mail before rules. Pure functions.

- from_permitted_domain: an address in the header From is in one of our own permitted domains.
  Mail from our own domains does not arrive from the internet; inbound it is spoofing. Every
  address a mail client might show or reply to counts, not only the one the field means: the
  parsed mailboxes, and every `local@domain` in the field's raw or RFC 2047-decoded text
  (display names and comments included, `headers.written_addresses`), so no shape of the field
  that some reader takes for our domain passes.
- from_equals_to: a message addressed to its own sender, the classic forged "you sent this to
  yourself" pattern. It fires when a header From address equals an envelope recipient, or
  when the To header fields name only the sender: every To address (all To fields together,
  duplicates and case aside) is a From address. A To that also names someone else (`To:
  rich@ours, alice@sender` from alice@sender: a sender who copies themselves) does not fire,
  nor a message without To addresses (none, or only an empty group). Cc and Bcc do not count.

Addresses are compared normalized (display names, angle brackets and case do not count).
"""
from __future__ import annotations

from dataclasses import dataclass

from mxhook.model.headers import (
    address_domain,
    normalize_address,
    parse_addresses,
    written_addresses,
)

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
        ours = [addr for addr in senders if address_domain(addr) in permitted_domains]
        ours += [addr for value in from_values for addr in written_addresses(value, permitted_domains)]
        if ours:
            return Verdict(
                FROM_PERMITTED_DOMAIN,
                f"header From <{_for_reply(ours[0])}> claims one of this server's own domains",
            )
    if FROM_EQUALS_TO in enabled and senders:
        envelope = {normalize_address(r) for r in recipients}
        for addr in senders:
            if addr in envelope:
                return Verdict(FROM_EQUALS_TO, f"header From <{_for_reply(addr)}> equals the recipient")
        to = [addr for value in to_values for _, addr in parse_addresses(value)]
        if to and set(to) <= set(senders):
            return Verdict(FROM_EQUALS_TO, f"header To names only the sender <{_for_reply(to[0])}> "
                                           "(a message addressed to its own sender)")
    return None


_REPLY_ADDRESS_LENGTH = 200


def _for_reply(addr: str) -> str:
    """An address fit for one SMTP reply line: printable, and not longer than a real one."""
    text = "".join(c if c.isprintable() else "?" for c in addr[:_REPLY_ADDRESS_LENGTH + 1])
    return text if len(text) <= _REPLY_ADDRESS_LENGTH else text[:_REPLY_ADDRESS_LENGTH - 3] + "..."
