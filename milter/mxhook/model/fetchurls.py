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

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

VERSION = "v1"
RAW = "raw"
MIN_KEY_BYTES = 32
_PART = re.compile(r"raw|0|[1-9][0-9]{0,5}")


@dataclass(frozen=True)
class Claim:
    """What a valid token grants: one part of one stored message."""

    message_id: str
    part: str  # "raw" or an attachment index as text ("0", "1", ...)
    expires: int  # Unix time


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys of a key file: one per line, base64 (or hex), oldest first; blank lines and
    `#` comments skipped. ValueError for a line that is not a key of at least 32 bytes."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line) if re.fullmatch(r"[0-9a-fA-F]+", line) and len(line) % 2 == 0 \
                else base64.b64decode(line, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError(f"line {n}: not a base64 or hex key") from None
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"line {n}: a key needs at least {MIN_KEY_BYTES} bytes, this has {len(key)}")
        keys.append(key)
    return tuple(keys)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def make_token(keys: tuple[bytes, ...], message_id: str, part: str, expires: int) -> str:
    """A token for `part` of `message_id` until `expires`, signed with the newest (last) key."""
    if not keys:
        raise ValueError("no key to sign with")
    if not _PART.fullmatch(part) or ":" in message_id:
        raise ValueError(f"cannot sign part {part!r} of message {message_id!r}")
    key = keys[-1]
    signed = f"{VERSION}:{key_id(key)}:{message_id}:{part}:{int(expires)}".encode("utf-8")
    return f"{_b64(signed)}.{_b64(_mac(key, signed))}"


def verify(keys: tuple[bytes, ...], token: str, now: float) -> Claim | None:
    """The claim of a token signed with one of `keys` and not expired at `now`; None for
    anything else (malformed, unknown key, bad signature, expired), never saying which."""
    head, dot, sig = token.partition(".")
    if not dot or len(token) > 1024:
        return None
    try:
        signed, mac = _unb64(head), _unb64(sig)
        version, kid, message_id, part, expires = signed.decode("utf-8").split(":")
        expires_at = int(expires)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if version != VERSION or not _PART.fullmatch(part) or not message_id:
        return None
    good = False
    for key in keys:  # every listed key is tried: timing does not tell which key id matched
        good |= hmac.compare_digest(_mac(key, signed), mac) and key_id(key) == kid
    if not good or now >= expires_at:
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
