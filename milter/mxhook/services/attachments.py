"""Fetch URLs of omitted attachment contents: the install's signing keys ([web]
attachment_key_file, services/keyfiles.py) and their rotation (`rotate_key`, `mxhook
attachments rotate-key`), the
`FetchUrls` the spooler renders payloads with, and `fetch`, what `GET /v1/attachments/<token>`
serves: one part of a message stored in state.db, found by the index the payload gave
(model/fetchurls.py has the token)."""
from __future__ import annotations

import base64
import sys
import time
from dataclasses import dataclass

from mxhook import config as configmod
from mxhook.model import fetchurls
from mxhook.model.message import normalize
from mxhook.services import keyfiles
from mxhook.services.errors import NotFound
from mxhook.services.keyfiles import KeyFile
from mxhook.services.stores import state_store
from mxhook.store import logs as state_logs

# one answer for a forged, expired or unknown token and a message gone: a holder of a URL
# learns nothing about why
GONE = "no such attachment (the URL is not valid, has expired, or its message is no longer kept)"


def rotate_key(cfg: configmod.Config, *, drop_old: bool = False, now: float | None = None) -> dict:
    """`mxhook attachments rotate-key`: a new key signs every fetch URL from then on; an older
    one is dropped once its successor is older than `[web] attachment_url_ttl` (every URL it
    signed has expired). keyfiles.rotate says the rest."""
    return keyfiles.rotate(cfg.value("web", "attachment_key_file"), setting="[web] attachment_key_file",
                           command="mxhook attachments rotate-key", drop_old=drop_old,
                           retire_after=cfg.value("web", "attachment_url_ttl") * 86400, now=now)


_KEY_FILES: dict[str, KeyFile] = {}


def key_file(cfg: configmod.Config) -> KeyFile:
    """The process's KeyFile for the configured path (kept, so a file is read once per change)."""
    path = cfg.value("web", "attachment_key_file")
    found = _KEY_FILES.get(path)
    if found is None:
        found = _KEY_FILES.setdefault(path, KeyFile(path))
    return found


def fetch_urls(cfg: configmod.Config, keys: KeyFile | None = None) -> fetchurls.FetchUrls | None:
    """What the spooler renders fetch URLs with; None when `[web] public_url` is empty (the API
    is not reachable from the application: payloads carry no URL). Creates the key file at
    first use. ConfigError for a key file with a bad line; OSError when it cannot be read or
    made."""
    base = cfg.value("web", "public_url")
    if not base:
        return None
    keys = keys or key_file(cfg)
    try:
        found = keys.keys()
        if not found:
            keys.create()
            found = keys.keys()
    except ValueError as exc:
        raise configmod.ConfigError(f"[web] attachment_key_file {keys.path}: {exc}") from None
    return fetchurls.FetchUrls(base.rstrip("/"), found, cfg.value("web", "attachment_url_ttl") * 86400,
                               cfg.value("spooler", "inbound_log_days") * 86400)


@dataclass(frozen=True)
class Attachment:
    content: bytes
    content_type: str
    filename: str


def part_of(raw: bytes, part: str) -> Attachment | None:
    """`part` of a message as its payload numbered it: "raw" (the message as it came), or the
    index of an attachment in the native `attachments`, parsed the way the payload was."""
    if part == fetchurls.RAW:
        return Attachment(raw, "message/rfc822", "message.eml")
    attachments = normalize(raw, max_attachment_size=sys.maxsize)["attachments"]
    index = int(part)
    if index >= len(attachments):
        return None
    att = attachments[index]
    return Attachment(base64.b64decode(att["content"] or ""), att["content_type"],
                      att.get("filename") or f"attachment-{index + 1}")


def fetch(cfg: configmod.Config, token: str, *, now: float | None = None) -> Attachment:
    """The part a fetch URL's token names; NotFound (the same for every reason) when the token
    is forged, expired or signed with a key no longer listed, or the message is gone."""
    try:
        keys = key_file(cfg).keys()
    except (OSError, ValueError):
        keys = ()
    claim = fetchurls.verify(keys, token, time.time() if now is None else now)
    if claim is None:
        raise NotFound(GONE)
    with state_store(cfg) as store:
        raw = state_logs.message_body(store, claim.message_id)
    found = part_of(raw, claim.part) if raw is not None else None
    if found is None:
        raise NotFound(GONE)
    return found
