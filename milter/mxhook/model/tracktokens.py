"""Signed tracking tokens: what an open pixel, a rewritten link, an unsubscribe URL or the
feedback reference header of one outbound message says about it. Pure.

The milter makes the tokens when it rewrites a message (model/tracking.py); mxhook-track and the
feedback handler verify them. A token carries the message (Postfix queue id), its recipient (""
when the message had several: one body serves them all), the sending domain (suppressions are
per sending domain), when the message passed the milter, and for a click the link's index and
target: the redirect goes where the signed token says, so the tracking host is never an open
redirect. Signed with HMAC-SHA256 (tag cut to 16 bytes) under the newest key of the install's
tracking key file; every listed key verifies (model/keyring.py: rotation with overlap).

    token = base64url("t1" US key_id US kind US queue_id US recipient US domain US sent
                      [US link US url]) "." base64url(tag)            (US = \\x1f)
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass

from mxhook.model.keyring import b64, key_id, mac, signed_by_any, unb64

VERSION = "t1"
OPEN, CLICK, UNSUBSCRIBE, REFERENCE = "o", "c", "u", "r"
KINDS = (OPEN, CLICK, UNSUBSCRIBE, REFERENCE)
TAG_BYTES = 16
MAX_TOKEN = 8192  # a click token holds its URL; longer input is refused unread
_SEP = "\x1f"


@dataclass(frozen=True)
class Track:
    """What a valid token says."""

    kind: str  # OPEN, CLICK, UNSUBSCRIBE or REFERENCE
    queue_id: str
    recipient: str  # "" when the message had several recipients
    sending_domain: str
    sent: int  # Unix time the milter made the token
    link: int | None = None  # CLICK: the link's index in the HTML part, from 0
    url: str | None = None  # CLICK: where the redirect goes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown tracking token kind {self.kind!r}")
        if (self.kind == CLICK) != (self.url is not None and self.link is not None):
            raise ValueError("a click token (and only one) needs a link index and a URL")
        for value in (self.queue_id, self.recipient, self.sending_domain, self.url or ""):
            if _SEP in value:
                raise ValueError("a tracking token value cannot hold \\x1f")
            try:  # undecodable bytes come as surrogate escapes; any other lone surrogate has no bytes
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ValueError("a tracking token value holds a lone surrogate (no UTF-8 for it)") from None


def make_token(keys: tuple[bytes, ...], track: Track) -> str:
    """The token of `track`, signed with the newest (last) key."""
    if not keys:
        raise ValueError("no key to sign with")
    key = keys[-1]
    parts = [VERSION, key_id(key), track.kind, track.queue_id, track.recipient,
             track.sending_domain, str(int(track.sent))]
    if track.kind == CLICK:
        parts += [str(track.link), track.url]
    signed = _SEP.join(parts).encode("utf-8", "surrogateescape")
    return f"{b64(signed)}.{b64(mac(key, signed)[:TAG_BYTES])}"


def verify(keys: tuple[bytes, ...], token: str, *, kind: str | None = None) -> Track | None:
    """The Track of a token signed with one of `keys` (and of `kind` when given); None for
    anything else (malformed, unknown key, bad signature, other kind), never saying which."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        return None
    head, dot, sig = token.partition(".")
    if not dot:
        return None
    try:
        signed, tag = unb64(head), unb64(sig)
        parts = signed.decode("utf-8", "surrogateescape").split(_SEP)
    except (ValueError, binascii.Error):
        return None
    if len(tag) != TAG_BYTES or len(parts) not in (7, 9) or parts[0] != VERSION:
        return None
    if not signed_by_any(keys, parts[1], signed, tag):
        return None
    try:
        _, _, tkind, queue_id, recipient, domain, sent = parts[:7]
        link, url = (int(parts[7]), parts[8]) if len(parts) == 9 else (None, None)
        track = Track(tkind, queue_id, recipient, domain, int(sent), link, url)
    except ValueError:
        return None
    return track if kind is None or track.kind == kind else None
