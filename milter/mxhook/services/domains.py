"""Permitted domains: the domains this server receives inbound mail for, whether mail to them
that is denied is logged, what happens to recipients no rule takes (`unmatched`: reject, or
pass them on to Postfix's own delivery) and the text of the 5xx refusing them."""
from __future__ import annotations

from mxhook import config as configmod
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb


@translated()
def add(cfg: configmod.Config, name: str, *, log_denied: bool = True, unmatched: str = "reject",
        reject_text: str | None = None) -> dict:
    """{name (the A-label form stored), log_denied, unmatched, reject_text, created}."""
    normalized = rulesdb.normalize_domain(name)  # before the database is created
    with rules_store(cfg, create=True) as store:
        return store.add_domain(normalized, log_denied=log_denied, unmatched=unmatched,
                                reject_text=reject_text)


@translated()
def list_all(cfg: configmod.Config) -> list[dict]:
    with rules_store(cfg) as store:
        return store.list_domains()


@translated()
def get(cfg: configmod.Config, name: str) -> dict:
    """One permitted domain, given in any form (U-label or A-label, any case)."""
    with rules_store(cfg) as store:
        found = store.get_domain(name)
    if found is None:
        raise NotFound(f"{rulesdb.normalize_domain(name)} is not a permitted domain")
    return found


@translated()
def edit(cfg: configmod.Config, name: str, *, log_denied: bool | None = None,
         unmatched: str | None = None, reject_text: str | None = None) -> dict:
    """Change a domain's settings; None keeps a value, a reject text '' removes it."""
    if log_denied is None and unmatched is None and reject_text is None:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    with rules_store(cfg) as store:
        domain = rulesdb.normalize_domain(name)
        return store.set_domain(domain, log_denied=log_denied, unmatched=unmatched,
                                reject_text=reject_text)


@translated()
def remove(cfg: configmod.Config, name: str) -> str:
    """The name removed, as stored."""
    with rules_store(cfg) as store:
        domain = rulesdb.normalize_domain(name)
        store.remove_domain(domain)
    return domain
