"""Signed, expiring fetch URLs for attachment contents a payload omitted (the size cap). Pure.

A token names a stored message (state.db's `messages.id`), a part (an attachment's index in the
payload's `attachments`, from 0, or `raw` for the whole message of --include-raw) and when it
expires; it is signed with HMAC-SHA256 under one of the install's keys, named in the token by a
key id (the first bytes of the key's SHA-256), so keys rotate with overlap: sign with the newest,
accept every key still listed. The signature is the credential (as an ESP's signed download
URL): whoever holds the URL may fetch that one part until it expires.

    token = base64url("v1:" key_id ":" message_id ":" part ":" expires) "." base64url(mac)

Clocks and keys come from the caller (services/attachments.py reads the key file).
"""
from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from mxhook.model.keyring import b64, key_id, mac, signed_by_any, unb64

VERSION = "v1"
RAW = "raw"
_PART = re.compile(r"raw|0|[1-9][0-9]{0,5}")


@dataclass(frozen=True)
class Claim:
    """What a valid token grants: one part of one stored message."""

    message_id: str
    part: str  # "raw" or an attachment index as text ("0", "1", ...)
    expires: int  # Unix time


def make_token(keys: tuple[bytes, ...], message_id: str, part: str, expires: int) -> str:
    """A token for `part` of `message_id` until `expires`, signed with the newest (last) key."""
    if not keys:
        raise ValueError("no key to sign with")
    if not _PART.fullmatch(part) or ":" in message_id:
        raise ValueError(f"cannot sign part {part!r} of message {message_id!r}")
    key = keys[-1]
    signed = f"{VERSION}:{key_id(key)}:{message_id}:{part}:{int(expires)}".encode("utf-8")
    return f"{b64(signed)}.{b64(mac(key, signed))}"


def verify(keys: tuple[bytes, ...], token: str, now: float) -> Claim | None:
    """The claim of a token signed with one of `keys` and not expired at `now`; None for
    anything else (malformed, unknown key, bad signature, expired), never saying which."""
    head, dot, sig = token.partition(".")
    if not dot or len(token) > 1024:
        return None
    try:
        signed, tag = unb64(head), unb64(sig)
        version, kid, message_id, part, expires = signed.decode("utf-8").split(":")
        expires_at = int(expires)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if version != VERSION or not _PART.fullmatch(part) or not message_id:
        return None
    if len(tag) != 32 or not signed_by_any(keys, kid, signed, tag) or now >= expires_at:
        return None
    return Claim(message_id, part, expires_at)


@dataclass(frozen=True)
class FetchUrls:
    """How the spooler makes fetch URLs: `base_url` ([web] public_url, without the trailing
    /), the keys, the lifetime ([web] attachment_url_ttl) and the longest a message is kept
    ([spooler] inbound_log_days; 0 = forever): a URL never outlives its message."""

    base_url: str
    keys: tuple[bytes, ...]
    ttl: float  # seconds
    retention: float = 0.0  # seconds; 0 = messages are kept forever

    def expires(self, now: float, received: float | None) -> int:
        """From the message's arrival, so every attempt of a delivery posts the same URL (the
        same bytes on a retry); from `now` for an attempt later than that (a replay)."""
        start = received if received is not None and received + self.ttl > now else now
        end = start + self.ttl
        if self.retention and received is not None:
            end = min(end, received + self.retention)
        return int(end)

    def url(self, message_id: str, part: str, *, now: float, received: float | None = None) -> str:
        token = make_token(self.keys, message_id, part, self.expires(now, received))
        return f"{self.base_url.rstrip('/')}/v1/attachments/{token}"
