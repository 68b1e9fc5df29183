"""Tracking of outbound mail: each sending domain's settings in rules.db (what the milter's
snapshot carries), what one message gets once its `X-Mxhook-Track` header field is read, and
the install's token keys (`[tracking] key_file`, rotated with overlap)."""
from __future__ import annotations

import base64
import grp
import os
import secrets
import tempfile

from mxhook import config as configmod
from mxhook.model import keyring
from mxhook.services.attachments import KEY_FILE_MODE, KeyFile
from mxhook.services.errors import Failed, Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb
from mxhook.store.rulesdb import TRACKING_FEATURES, TrackingSettings

HEADER = "X-Mxhook-Track"
KEY_GROUP = "mxhook"  # the daemons' group: the milter signs, mxhook-track verifies
# the header's words, as the application writes them -> the settings' names
HEADER_WORDS = {"opens": "opens", "clicks": "clicks", "text-links": "text_links",
                "unsubscribe": "unsubscribe", "honeypot": "honeypot"}


@translated()
def set_domain(cfg: configmod.Config, domain: str, **changes: bool) -> dict:
    """Set tracking features of a sending domain (`TRACKING_FEATURES`, None keeps a value);
    a domain without settings starts from TrackingSettings' defaults."""
    changes = {k: v for k, v in changes.items() if v is not None}
    name = rulesdb.normalize_domain(domain)  # before the database is created
    with rules_store(cfg, create=True) as store:
        return store.set_tracking(name, **changes).to_dict()


@translated()
def list_all(cfg: configmod.Config) -> list[dict]:
    with rules_store(cfg) as store:
        return [t.to_dict() for t in store.list_tracking()]


@translated()
def get(cfg: configmod.Config, domain: str) -> dict:
    with rules_store(cfg) as store:
        found = store.get_tracking(domain)
    if found is None:
        raise NotFound(f"sending domain {rulesdb.normalize_domain(domain)} has no tracking settings")
    return found.to_dict()


@translated()
def remove(cfg: configmod.Config, domain: str) -> str:
    """The domain whose settings were removed, as stored."""
    with rules_store(cfg) as store:
        return store.remove_tracking(domain)


# ---------------------------------------------------------------------------------------------
# One message

def header_features(value: str) -> frozenset[str] | None:
    """The features an `X-Mxhook-Track` value asks for ("opens, clicks", "none"); None when
    it names none of them and is not "none" (then the domain's settings apply)."""
    words = {w.strip().lower() for w in value.replace(";", ",").replace(" ", ",").split(",")} - {""}
    if words == {"none"}:
        return frozenset()
    found = frozenset(HEADER_WORDS[w] for w in words if w in HEADER_WORDS)
    return found or None


def features(settings: TrackingSettings | None, header: str | None) -> frozenset[str]:
    """What one message gets: the header's features when it has a valid one, else its sending
    domain's settings (none without). A honeypot link is the domain's choice unless the header
    names it."""
    configured = frozenset(f for f in TRACKING_FEATURES if settings is not None and getattr(settings, f))
    asked = header_features(header) if header is not None else None
    if asked is None:
        return configured
    if asked and "honeypot" in configured:
        asked |= {"honeypot"}
    return asked


# ---------------------------------------------------------------------------------------------
# Keys

def rotate_key(cfg: configmod.Config, *, drop_old: bool = False) -> dict:
    """Append a new key to `[tracking] key_file` (made when missing), or with `drop_old` leave
    only the new one; the file is replaced atomically, mode 0640, group mxhook when it exists.
    {path, key_id, keys (ids, oldest first), dropped}."""
    path = cfg.value("tracking", "key_file")
    try:
        old = KeyFile(path).keys()
    except ValueError as exc:
        raise Invalid(f"[tracking] key_file {path}: {exc}; fix or remove the line first",
                      "bad_key_file") from None
    except OSError as exc:
        raise Failed(f"cannot read [tracking] key_file {path}: {exc}", "key_file_unreadable") from None
    new = secrets.token_bytes(32)
    keys = (new,) if drop_old else (*old, new)
    text = "".join(base64.b64encode(k).decode("ascii") + "\n" for k in keys)
    try:
        _write_atomically(path, text.encode("ascii"))
    except OSError as exc:
        raise Failed(f"cannot write [tracking] key_file {path}: {exc}", "key_file_unwritable") from None
    return {"path": path, "key_id": keyring.key_id(new), "keys": [keyring.key_id(k) for k in keys],
            "dropped": len(old) if drop_old else 0}


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tracking-key.", dir=directory)
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        try:
            gid = grp.getgrnam(KEY_GROUP).gr_gid
        except KeyError:
            gid = -1  # no such group here (a test, a source checkout): the file keeps ours
        if gid != -1 and os.geteuid() == 0:
            os.fchown(fd, 0, gid)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
