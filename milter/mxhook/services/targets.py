"""What inbound rules and event endpoints share as webhook destinations: the destination as
shown (secrets masked) and as given (secrets never empty), the SSRF guard's verdict on a URL,
and signing-key rotation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

from mxhook import config as configmod
from mxhook.delivery import egress
from mxhook.model.records import to_datetime
from mxhook.model.targets import AUTH_FIELDS, Destination
from mxhook.services.errors import Invalid
from mxhook.store import rulesdb

# getaddrinfo-compatible resolver for the endpoint check (None: the system's); tests set one
RESOLVER = None

Warn = Callable[[str], None]


def no_warnings(_message: str) -> None:
    pass


def mask_secret(secret: str | None) -> str | None:
    """'****' plus the last 4 characters when the secret is long enough that they give little
    away; never the whole secret."""
    if secret is None:
        return None
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def mask_basic(basic: str | None) -> str | None:
    if basic is None:
        return None
    user, _, _ = basic.partition(":")
    return f"{user}:****"


def masked_auth(dest: Destination) -> dict:
    """The auth fields of a destination as shown: secrets masked."""
    return {"basic_auth": mask_basic(dest.basic_auth), "bearer": mask_secret(dest.bearer),
            "api_key": mask_secret(dest.api_key), "signing_key": mask_secret(dest.signing_key)}


def as_dict(dest: Destination) -> dict:
    """A destination as `show --json` prints it: every field, secrets masked."""
    return {**dataclasses.asdict(dest), **masked_auth(dest)}


def check_secrets(values: Destination | Mapping, *, what: str) -> None:
    """A secret given empty is an error: removing auth is said explicitly (--clear-auth).
    `values`: a new destination, or an edit's changes (field -> value)."""
    get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
    for option in AUTH_FIELDS:
        if get(option) == "":
            raise Invalid(f"--{option.replace('_', '-')} must not be empty "
                          f"({what} edit --clear-auth removes auth)")


def check_egress(cfg: configmod.Config, url: str, warn: Warn) -> None:
    """The SSRF guard's verdict on an endpoint URL before it is stored: a host that resolves to
    an address the guard refuses (and `[http] allow_networks` does not admit) is an error; a
    host that does not resolve now is only a warning (DNS may be down, and every connection is
    checked again)."""
    allow = cfg.value("http", "allow_networks")
    try:
        egress.check_endpoint_url(url, allow, resolver=RESOLVER)
    except egress.ResolutionError as exc:
        warn(f"warning: {exc}; stored anyway (every connection is checked again)")
    except egress.EgressError as exc:
        raise Invalid(f"refused by the SSRF guard: {exc}", "egress_refused") from None


@dataclass(frozen=True)
class Rotation:
    key: rulesdb.SigningKey  # the new one, secret in full (shown once)
    first: bool  # the owner had no key of this scheme: added, not rotated
    overlap: float  # seconds the previous key keeps signing
    until: str | None  # when the previous key stops signing (None: at once, or first key)


def rotate(store: rulesdb.RulesStore, kind: str, owner_id: int, overlap: float,
           ed25519: bool) -> Rotation:
    scheme = "v1a" if ed25519 else "v1"
    had = [k for k in store.signing_keys(kind, owner_id) if k.scheme == scheme]
    new = store.rotate_key(kind, owner_id, overlap=overlap, scheme=scheme)
    until = None
    if had and overlap > 0:  # as stored: the time the previous key really stops signing
        expires = [k.expires for k in store.signing_keys(kind, owner_id)
                   if k.scheme == scheme and k.expires]
        until = to_datetime(max(expires)).strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None
    return Rotation(key=new, first=not had, overlap=overlap, until=until)
