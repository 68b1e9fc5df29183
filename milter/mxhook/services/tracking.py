"""Tracking of outbound mail: each sending domain's settings in rules.db (what the milter's
snapshot carries), what one message gets once its `X-Mxhook-Track` header field is read, and
the install's token keys (`[tracking] key_file`, rotated with overlap)."""
from __future__ import annotations

from mxhook import config as configmod
from mxhook.services import keyfiles
from mxhook.services.errors import NotFound, translated
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
    """`mxhook tracking rotate-key`: a new key in `[tracking] key_file` (made when missing)
    signs from then on; the older ones keep verifying the links of mail already sent (no
    expiry: drop them with `drop_old`). keyfiles.rotate says the rest."""
    return keyfiles.rotate(cfg.value("tracking", "key_file"), setting="[tracking] key_file",
                           command="mxhook tracking rotate-key", drop_old=drop_old,
                           group=KEY_GROUP)
