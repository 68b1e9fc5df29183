"""What inbound rules and event endpoints share as webhook destinations: the destination as
shown (secrets masked) and as given (secrets never empty; a dialect's demands, checked through
the catalogue; credentials in an SMTP2GO URL; a template compiled and tried on a sample before it
is stored), the SSRF guard's verdict on a URL, and signing-key rotation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

from mxhook import config as configmod
from mxhook.delivery import egress
from mxhook.model.records import to_datetime
from mxhook.model.targets import AUTH_FIELDS, Destination
from mxhook.payloads import templates
from mxhook.payloads.dialects import catalogue
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


def as_dict(dest: Destination, template: dict | None = None, *,
            template_source: bool = False) -> dict:
    """A destination as `show --json` prints it: every field, secrets masked; `template` (the
    owner's template_view) as the current version's {version, content_type, digest, created}
    (`source` too with `template_source`) or null, and `template_versions`, every stored one."""
    current = template["current"] if template else None
    return {**dataclasses.asdict(dest), **masked_auth(dest),
            "template": current.to_public_dict(source=template_source) if current else None,
            "template_versions": [t.to_public_dict() for t in template["versions"]] if template else []}


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


# ---------------------------------------------------------------------------------------------
# Dialects and templates

# The most a template file may hold (UTF-8 takes at most 4 bytes a character): front-ends read
# no more, so `--template /dev/zero` ends.
MAX_TEMPLATE_BYTES = templates.MAX_SOURCE_SIZE * 4


@dataclass(frozen=True)
class TemplateGiven:
    """A template as the admin gives it (`--template FILE`)."""

    source: bytes | str  # bytes: read from a file, must be UTF-8
    content_type: str = templates.JSON  # one of templates.CONTENT_TYPES
    name: str = "the template"  # where it came from (the file name), for messages


def new_template(given: TemplateGiven, side: str) -> rulesdb.NewTemplate:
    """The template to store for an owner on `side` (inbound | events), once it compiles and
    renders the side's sample (payloads.templates.check); Invalid with its line otherwise."""
    source = given.source
    if isinstance(source, bytes):
        if len(source) > MAX_TEMPLATE_BYTES:
            raise Invalid(f"{given.name} is larger than a template may be "
                          f"({templates.MAX_SOURCE_SIZE:,} characters)", "template_invalid")
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"{given.name} is not UTF-8 text (byte {exc.start + 1})",
                          "template_invalid") from None
    try:
        templates.check(templates.compile_template(source, given.content_type, side))
    except templates.TemplateError as exc:
        where = f" line {exc.line}" if exc.line else ""
        raise Invalid(f"{given.name}{where}: {exc.reason} (nothing stored)", "template_invalid") from None
    return rulesdb.NewTemplate(given.content_type, source,
                               templates.template_version(source, given.content_type))


def with_url_credentials(values: Mapping[str, object], dialect: str) -> dict:
    """`values` (a new destination's fields, or an edit's changes) with the user info of an
    SMTP2GO-style URL (https://USER:PASS@host/path) taken out of the URL into `basic_auth`, for
    the dialects that take credentials so (`url_userinfo`). Other dialects keep the URL as
    given: check_url refuses user info there."""
    values = dict(values)
    url = values.get("url")
    found = catalogue.DIALECTS.get(dialect)
    if not url or found is None or not found.url_userinfo:
        return values
    bare, basic = catalogue.split_userinfo(url)
    if basic is None:
        return values
    if values.get("basic_auth") is not None or values.get("bearer") is not None:
        raise Invalid("give the credentials once: in the URL (https://USER:PASS@host/path) or "
                      "as --basic-auth / --bearer, not both")
    values.update(url=bare, basic_auth=basic)
    return values


def edited(old: Destination, changes: Mapping[str, object], *, clear_auth: bool,
           no_template: bool) -> Destination:
    """`old` with an edit's `changes` (Destination.edited), its template removed with
    `no_template`, and its signing key dropped when the dialect changes to one that signs with
    none (the key belongs to the dialect it was given for)."""
    new = old.edited(changes, clear_auth=clear_auth)
    drop = {}
    if no_template:
        drop["template"] = None
    dialect = catalogue.DIALECTS.get(new.dialect)
    if (new.dialect != old.dialect and changes.get("signing_key") is None
            and dialect is not None and not dialect.signing_key):
        drop["signing_key"] = None
    return dataclasses.replace(new, **drop) if drop else new


def warn_unposted(dialect: catalogue.Dialect, event_types, warn: Warn) -> None:
    """A warning when an endpoint's dialect posts none of the event types its categories
    select (Paubox has no event for a blocked address, for one)."""
    if dialect.event_types is not None and not set(dialect.event_types) & set(event_types):
        warn(f"warning: the {dialect.name} dialect posts none of the events selected "
             f"({', '.join(event_types)}); it posts {', '.join(dialect.event_types)}")


def template_view(store: rulesdb.RulesStore, kind: str, owner_id: int,
                  dest: Destination) -> dict | None:
    """The owner's template as `show` describes it: the current version and every stored one
    (None: it has never had one)."""
    versions = store.template_versions(kind, owner_id)
    if not versions:
        return None
    current = next((t for t in versions if t.version == dest.template), None)
    return {"current": current, "versions": versions}


def dialect_list() -> list[dict]:
    """Every dialect of the catalogue, as `mxhook dialect list --json` prints it."""
    out = []
    for d in catalogue.DIALECTS.values():
        sides = {side: None if d.side(side) is None else
                 {"content_types": list(d.side(side).content_types), "api_key": d.side(side).api_key}
                 for side in catalogue.SIDES}
        if sides[catalogue.EVENTS] is not None:
            sides[catalogue.EVENTS]["events_per_request"] = d.events_per_request
            sides[catalogue.EVENTS]["event_types"] = list(d.event_types) if d.event_types else None
        out.append({"name": d.name, "sides": list(d.sides), "description": d.description, **sides,
                    "signing_key": d.signing_key, "https_only": d.https_only,
                    "url_userinfo": d.url_userinfo})
    return out