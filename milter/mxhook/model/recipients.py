"""Recipient tags (sub-addresses): `support+ticket-4711@x` is `support@x` with the tag
`ticket-4711`, cut as Postfix's `recipient_delimiter` cuts it (pure)."""
from __future__ import annotations

DEFAULT_RECIPIENT_DELIMITER = "+"
# Local parts Postfix never splits (split_addr.c), whatever the delimiter
_UNSPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})


def split_recipient(address: str, delimiters: str) -> tuple[str, str | None]:
    """(the address without its tag, the tag or None), with Postfix's `recipient_delimiter`
    semantics: the local part is cut at the first character that is in `delimiters` (a set of
    characters; empty: no tags), so `support+ticket-4711@x` -> (`support@x`, `ticket-4711`).
    As Postfix does, a local part starting with a delimiter is not split, nor postmaster,
    mailer-daemon and double-bounce, nor, when `-` is a delimiter, `owner-*` and `*-request`.
    A delimiter at the end gives the tag ''; a quoted local part is not cut."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not delimiters or not local or local.startswith('"'):
        # a quoted local part is a name of its own ("a+b"@x): cutting inside the quotes
        # would make an address nobody wrote
        return address, None
    lower = local.lower()
    if lower in _UNSPLIT or ("-" in delimiters and (lower.startswith("owner-") or
                                                    (len(lower) > 8 and lower.endswith("-request")))):
        return address, None
    cut = next((i for i, c in enumerate(local) if c in delimiters), None)
    if not cut:  # None, or 0: a leading delimiter is part of the name
        return address, None
    return local[:cut] + at + domain, local[cut + 1:]


def recipient_tag(recipients, delimiters: str) -> str | None:
    """The tag of the first of `recipients` (what a payload's `recipient_tag` shows, as
    Postmark's MailboxHash is the first recipient's), or None."""
    return split_recipient(recipients[0], delimiters)[1] if recipients else None
