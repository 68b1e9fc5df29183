"""Opening the two databases for an operation: rules.db (created on the first write) and
state.db (the spooler creates it; an operation never does). An operation that only reads
state.db opens it read-only: it works for a user who may read the file but not write it, and
never migrates it (a file an older mxhook wrote: Unavailable, saying what upgrades it)."""
from __future__ import annotations

import os

from mxhook import config as configmod
from mxhook.services.errors import Unavailable
from mxhook.store.migrations import NotReadable
from mxhook.store.rulesdb import RulesStore
from mxhook.store.statedb import StateStore


def rules_store(cfg: configmod.Config, *, create: bool = False) -> RulesStore:
    path = cfg.rules_db
    if not create and not os.path.exists(path):
        raise Unavailable(
            f"rules database {path} does not exist yet "
            "(`mxhook domain add` or `mxhook rule add` creates it)", "rules_db_missing")
    return RulesStore(path)


def state_store(cfg: configmod.Config, *, write: bool = False) -> StateStore:
    path = cfg.state_db
    if not os.path.exists(path):
        raise Unavailable(f"state database {path} does not exist yet (mxhook-spooler creates it)",
                          "state_db_missing")
    try:
        return StateStore(path, readonly=not write)
    except NotReadable as exc:
        raise Unavailable(str(exc), "state_db_unreadable") from exc
