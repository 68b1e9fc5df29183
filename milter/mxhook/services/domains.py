"""Permitted domains: the domains this server receives inbound mail for, and whether mail to
them that is denied is logged."""
from __future__ import annotations

from mxhook import config as configmod
from mxhook.services.errors import NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb


@translated()
def add(cfg: configmod.Config, name: str, *, log_denied: bool = True) -> dict:
    """{name (the A-label form stored), log_denied, created}."""
    normalized = rulesdb.normalize_domain(name)  # before the database is created
    with rules_store(cfg, create=True) as store:
        return store.add_domain(normalized, log_denied=log_denied)


@translated()
def list_all(cfg: configmod.Config) -> list[dict]:
    with rules_store(cfg) as store:
        return store.list_domains()


@translated()
def get(cfg: configmod.Config, name: str) -> dict:
    """One permitted domain, given in any form (U-label or A-label, any case)."""
    domain = rulesdb.normalize_domain(name)
    found = next((d for d in list_all(cfg) if d["name"] == domain), None)
    if found is None:
        raise NotFound(f"{domain} is not a permitted domain")
    return found


@translated()
def set_log_denied(cfg: configmod.Config, name: str, log_denied: bool) -> dict:
    with rules_store(cfg) as store:
        domain = rulesdb.normalize_domain(name)
        return store.set_domain(domain, log_denied)


@translated()
def remove(cfg: configmod.Config, name: str) -> str:
    """The name removed, as stored."""
    with rules_store(cfg) as store:
        domain = rulesdb.normalize_domain(name)
        store.remove_domain(domain)
    return domain
