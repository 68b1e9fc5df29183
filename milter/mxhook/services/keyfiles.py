"""Key files: an install's signing keys, one a line, oldest first (model/keyring.py reads
them), for the attachment fetch URLs ([web] attachment_key_file) and the tracking tokens
([tracking] key_file). `KeyFile` reads one again when it changes; `rotate` adds a new key (the
one that signs from then on) and drops the keys that can no longer have signed anything valid,
replacing the file atomically."""
from __future__ import annotations

import base64
import grp
import os
import re
import secrets
import tempfile
import threading
import time
import types

from mxhook.model import keyring
from mxhook.model.records import iso, to_datetime
from mxhook.services.errors import Failed, Invalid

KEY_FILE_MODE = 0o640


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
            keyring.parse_keys(line)  # ValueError for a line that is not a key
            entries.append((added, line))
            added = None
    return entries


def _line_key(line: str) -> bytes:
    return keyring.parse_keys(line)[0]


def rotate(path: str, *, setting: str, command: str, drop_old: bool = False,
           retire_after: float | None = None, now: float | None = None,
           group: str | None = None) -> dict:
    """Add a new signing key to the key file `path` (`setting` names it in messages), which
    signs from then on. The keys before it keep verifying what they signed (overlap); with
    `retire_after` (seconds: the longest anything signed stays valid), a key is dropped once
    the key after it was added longer ago than that (a key without an `# added` line after it
    is kept). `drop_old`: only the new key is kept, so everything signed before stops working
    now (after a leak). The file is replaced atomically (a new file, fsynced, renamed over
    it) with mode 0640 and the old file's owner and group (when there is none: its directory's,
    or root and `group` when that group exists and the caller is root: the daemons that read
    a key file in root's /etc/mxhook need it), so running daemons read the new keys at their
    next use. Returns {path,
    key_id, kept: [key ids], dropped: [key ids]}."""
    now = time.time() if now is None else now
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            entries = _key_entries(f.read())
        st = os.stat(path)
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o750, exist_ok=True)
        entries, st = [], os.stat(directory)
        st = _owner_for_new(st, group)
    except ValueError as exc:
        raise Invalid(f"{setting} {path}: {exc}: fix or remove that line first", "bad_key_file") from None
    except OSError as exc:
        raise Failed(f"cannot read {setting} {path}: {exc}", "key_file_unreadable") from None
    kept = [] if drop_old else [
        (added, line) for i, (added, line) in enumerate(entries)
        if retire_after is None or not (i + 1 < len(entries) and entries[i + 1][0] is not None
                                        and entries[i + 1][0] + retire_after <= now)]
    new = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    lines = [(f"# added {iso(added)}\n" if added is not None else "") + line + "\n" for added, line in kept]
    lines.append(f"# added {iso(now)} ({command}): signs from now on\n{new}\n")
    try:
        _replace(path, "".join(lines), st)
    except OSError as exc:
        raise Failed(f"cannot write {setting} {path}: {exc}", "key_file_unwritable") from None
    ids = lambda chosen: [keyring.key_id(_line_key(line)) for _, line in chosen]  # noqa: E731
    return {"path": path, "key_id": keyring.key_id(_line_key(new)), "kept": ids(kept),
            "dropped": ids([e for e in entries if e not in kept])}


def _owner_for_new(directory: os.stat_result, group: str | None):
    """(uid, gid) as `st_uid`/`st_gid` for a key file made now: root and `group` when named,
    existing and we are root; else the directory's."""
    if group and os.geteuid() == 0:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:  # no such group here (a source checkout, a test): the directory's
            return directory
        return types.SimpleNamespace(st_uid=0, st_gid=gid)
    return directory


def _replace(path: str, text: str, owner) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mxhook-key.", dir=directory)
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
