"""Fetch URLs of omitted attachment contents: the install's signing keys ([web]
attachment_key_file) and their rotation (`rotate_key`, `mxhook attachments rotate-key`), the
`FetchUrls` the spooler renders payloads with, and `fetch`, what `GET /v1/attachments/<token>`
serves: one part of a message stored in state.db, found by the index the payload gave
(model/fetchurls.py has the token)."""
from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from mxhook import config as configmod
from mxhook.model import fetchurls, keyring
from mxhook.model.message import normalize
from mxhook.model.records import iso, to_datetime
from mxhook.services.errors import Invalid, NotFound
from mxhook.services.stores import state_store
from mxhook.store import logs as state_logs

KEY_FILE_MODE = 0o640
# one answer for a forged, expired or unknown token and a message gone: a holder of a URL
# learns nothing about why
GONE = "no such attachment (the URL is not valid, has expired, or its message is no longer kept)"


class KeyFile:
    """The signing keys in `path`, one a line, oldest first (the newest signs; every listed key
    verifies), read again when the file changes: a key appended takes effect at the next URL."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple | None = None
        self._keys: tuple[bytes, ...] = ()
        self._lock = threading.Lock()

    def create(self) -> bool:
        """Write a first key when there is no file (mode 0640, never over an existing one);
        whether it did."""
        line = base64.b64encode(secrets.token_bytes(32)) + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return True

    def keys(self) -> tuple[bytes, ...]:
        """The keys (empty when the file is missing). ValueError when the file holds a line
        that is not a key."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if seen != self._seen:
                with open(self.path, encoding="ascii", errors="replace") as f:
                    keys = keyring.parse_keys(f.read())
                self._keys, self._seen = keys, seen
            return self._keys


_ADDED = re.compile(r"#\s*added (\S+)")


def _key_entries(text: str) -> list[tuple[float | None, str]]:
    """The keys of a key file as (when it was added: the time of an `# added TIME` comment
    right before it, else None; the key's line), oldest first."""
    entries, added = [], None
    for line in text.splitlines():
        line = line.strip()
        found = _ADDED.match(line)
        if found:
            try:
                added = to_datetime(found.group(1)).timestamp()
            except ValueError:
                added = None
        elif line and not line.startswith("#"):
            fetchurls.parse_keys(line)  # ValueError for a line that is not a key
            entries.append((added, line))
            added = None
    return entries


def _line_key(line: str) -> bytes:
    return fetchurls.parse_keys(line)[0]


def rotate_key(cfg: configmod.Config, *, drop_old: bool = False, now: float | None = None) -> dict:
    """Add a new signing key to the key file, which signs every fetch URL from then on. The
    keys before it keep verifying the URLs they signed (overlap), until they can have signed
    none still valid: a key is dropped once the key after it was added longer than `[web]
    attachment_url_ttl` ago (a URL expires at most that long after it was signed; a key
    without an `# added` line after it is kept). `drop_old`: only the new key is kept, so
    every URL signed before stops working now (after a leak). The file is replaced
    atomically (a new file, fsynced, renamed over it) with mode 0640 and the old file's owner
    and group (when there is none, its directory's), so running daemons read the new keys at
    their next URL. Returns {path, key_id, kept: [key ids], dropped: [key ids]}."""
    now = time.time() if now is None else now
    path = cfg.value("web", "attachment_key_file")
    ttl = cfg.value("web", "attachment_url_ttl") * 86400
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            entries = _key_entries(f.read())
        st = os.stat(path)
    except FileNotFoundError:
        entries, st = [], os.stat(os.path.dirname(os.path.abspath(path)))
    except ValueError as exc:
        raise Invalid(f"[web] attachment_key_file {path}: {exc}: fix or remove that line first") from None
    kept = [] if drop_old else [
        (added, line) for i, (added, line) in enumerate(entries)
        if not (i + 1 < len(entries) and entries[i + 1][0] is not None and entries[i + 1][0] + ttl <= now)]
    new = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    lines = [(f"# added {iso(added)}\n" if added is not None else "") + line + "\n" for added, line in kept]
    lines.append(f"# added {iso(now)} (mxhook attachments rotate-key): signs from now on\n{new}\n")
    _replace(path, "".join(lines), st)
    ids = lambda chosen: [fetchurls.key_id(_line_key(line)) for _, line in chosen]  # noqa: E731
    return {"path": path, "key_id": fetchurls.key_id(_line_key(new)), "kept": ids(kept),
            "dropped": ids([e for e in entries if e not in kept])}


def _replace(path: str, text: str, owner: os.stat_result) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".attachment-key.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), KEY_FILE_MODE)
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename survives a crash
    finally:
        os.close(dfd)


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
