"""Signing keys of an install and the primitives of mxhook's signed tokens. Pure.

A key file holds one key per line (base64 or hex, at least 32 bytes), oldest first, so keys
rotate with overlap: tokens are signed with the newest key and accepted under every key still
listed. A token names its key by `key_id` (the first bytes of the key's SHA-256). Used by the
attachment fetch URLs (model/fetchurls.py) and the tracking tokens (model/tracktokens.py).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

MIN_KEY_BYTES = 32


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


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """The bytes of canonical unpadded base64url text (as b64 writes it), so that one token has
    one spelling; ValueError for anything else."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data


def mac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def signed_by_any(keys: tuple[bytes, ...], kid: str, signed: bytes, tag: bytes) -> bool:
    """Whether `tag` is the MAC (or its first len(tag) bytes, at least 16) of `signed` under the
    listed key named `kid`. Every key is tried, so timing does not tell which id matched."""
    if len(tag) < 16:
        return False
    good = False
    for key in keys:
        good |= hmac.compare_digest(mac(key, signed)[:len(tag)], tag) and key_id(key) == kid
    return good
