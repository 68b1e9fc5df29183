"""Who may use the HTTP API and the console: API tokens, console users, and the audit log of
every change made through them. Kept in access.db ([web] access_db, store/access.py).

Tokens are 32 random bytes (`mxh_` + URL-safe base64), shown once and stored as their SHA-256.
A fast hash is right here: a KDF's cost defends guessable secrets (passwords) against offline
guessing, and 256 bits of randomness cannot be guessed whatever the hash costs; a fast hash also
lets every API request find its token with one indexed lookup instead of a KDF run per request.

Passwords (console users) are what people choose, so they get a memory-hard KDF: scrypt from
the standard library (hashlib.scrypt, OpenSSL's), N=2^15, r=8, p=1 (32 MiB, ~0.1 s), a random
16-byte salt each, stored as `scrypt$N$r$p$salt$hash` so the cost can be raised later without
breaking stored passwords.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets

from mxhook import config as configmod
from mxhook.model.records import iso, to_datetime
from mxhook.services.errors import Conflict, Invalid, NotFound, Unavailable
from mxhook.store import access as accessdb
from mxhook.store.migrations import NotReadable

TOKEN_PREFIX = "mxh_"
TOKEN_BYTES = 32
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
TOUCH_INTERVAL = 60.0  # seconds: a token's last_used is written at most this often


def access_store(cfg: configmod.Config, *, write: bool = True) -> accessdb.AccessStore:
    path = cfg.get("web", "access_db")
    if not write and not os.path.exists(path):
        raise Unavailable(f"access database {path} does not exist yet "
                          "(`mxhook token add` creates it)", "access_db_missing")
    try:
        return accessdb.AccessStore(path, readonly=not write)
    except NotReadable as exc:
        if not write and os.access(path, os.W_OK):  # an older schema its owner upgrades now
            return access_store(cfg)
        raise Unavailable(str(exc), "access_db_unreadable") from exc


def _name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise Invalid(f"{what} name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                      "starting with a letter or digit")
    return name


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# -- tokens ---------------------------------------------------------------------------------

def add_token(cfg: configmod.Config, name: str, *, read_only: bool = False) -> tuple[str, dict]:
    """(the token, shown this once; its entry)."""
    _name(name, "token")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    with access_store(cfg) as store:
        try:
            entry = store.add_token(name, token_hash(token), read_only)
        except accessdb.Exists as exc:
            raise Conflict(str(exc)) from None
        store.add_audit("cli", "token.add", name, {"read_only": read_only}, None)
    return token, entry


def list_tokens(cfg: configmod.Config) -> list[dict]:
    """[{name, read_only, created, last_used}]; never the token."""
    if not os.path.exists(cfg.get("web", "access_db")):
        return []
    with access_store(cfg, write=False) as store:
        return store.list_tokens()


def remove_token(cfg: configmod.Config, name: str) -> None:
    _change(cfg, "token.remove", name, lambda store: store.remove_token(name))


def _change(cfg: configmod.Config, action: str, name: str, change) -> None:
    """`change(store)` on a token or user that must exist, recorded in the audit log."""
    with access_store(cfg) as store:
        try:
            change(store)
        except accessdb.Missing as exc:
            raise NotFound(str(exc)) from None
        store.add_audit("cli", action, name, None, None)


def authenticate_token(cfg: configmod.Config, token: str) -> dict | None:
    """The token's entry {name, read_only, ...}, or None when no stored token has its hash
    (unknown or removed)."""
    if not token or not os.path.exists(cfg.get("web", "access_db")):
        return None
    with access_store(cfg) as store:
        found = store.token_by_hash(token_hash(token))
        if found is not None:
            last = found["last_used"]
            if last is None or (to_datetime(iso()) - to_datetime(last)).total_seconds() > TOUCH_INTERVAL:
                store.touch_token(found["name"], iso())
        return found


# -- users ----------------------------------------------------------------------------------

def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=64 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def add_user(cfg: configmod.Config, name: str, password: str, *, read_only: bool = False) -> dict:
    """A console user; `read_only`: sees the logs and the settings, changes nothing."""
    _name(name, "user")
    stored = hash_password(_password(password))
    with access_store(cfg) as store:
        try:
            entry = store.add_user(name, stored, read_only)
        except accessdb.Exists as exc:
            raise Conflict(str(exc)) from None
        store.add_audit("cli", "user.add", name, {"read_only": read_only}, None)
    return entry


def list_users(cfg: configmod.Config) -> list[dict]:
    """[{name, read_only, created, updated}]; never the password."""
    if not os.path.exists(cfg.get("web", "access_db")):
        return []
    with access_store(cfg, write=False) as store:
        return store.list_users()


def set_password(cfg: configmod.Config, name: str, password: str) -> None:
    stored = hash_password(_password(password))
    _change(cfg, "user.passwd", name, lambda store: store.set_password(name, stored))


def remove_user(cfg: configmod.Config, name: str) -> None:
    _change(cfg, "user.remove", name, lambda store: store.remove_user(name))


def authenticate_user(cfg: configmod.Config, name: str, password: str) -> bool:
    """Whether `password` is user `name`'s; the KDF runs for an unknown name too, so the
    answer takes as long either way."""
    stored = None
    if os.path.exists(cfg.get("web", "access_db")):
        with access_store(cfg) as store:
            stored = store.user_password(name)
    if stored is None:
        check_password(password, _unknown_user())
        return False
    return check_password(password, stored)


@functools.lru_cache(maxsize=1)
def _unknown_user() -> str:
    return hash_password("not a password of anyone", salt=b"\0" * 16)


# -- audit ----------------------------------------------------------------------------------

def record(cfg: configmod.Config, actor: str, action: str, target: str | None = None,
           detail: dict | None = None, remote_addr: str | None = None) -> dict:
    """Record one change: who (`token:NAME`, `user:NAME`, `cli`), what (`rule.add`, ...), on
    what (`target`), with `detail` (no secrets: the caller leaves them out)."""
    with access_store(cfg) as store:
        return store.add_audit(actor, action, target, detail, remote_addr)


def audit(cfg: configmod.Config, *, limit: int | None = 100) -> list[dict]:
    """The newest entries first."""
    if not os.path.exists(cfg.get("web", "access_db")):
        return []
    with access_store(cfg, write=False) as store:
        return store.audit(limit)
