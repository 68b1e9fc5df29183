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


def exists(path: str, what: str) -> bool:
    """Whether `path` exists. Unavailable (`permission_denied`) when this user cannot even look
    (a directory on the way is not searchable), which os.path.exists would call absent."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError as exc:
        raise Unavailable(f"{what} {path} cannot be reached by this user ({exc.strerror}): run as "
                          "root or as a member of group mxhook", "permission_denied") from None
    return True


def rules_store(cfg: configmod.Config, *, create: bool = False) -> RulesStore:
    path = cfg.rules_db
    if not create and not exists(path, "rules database"):
        raise Unavailable(
            f"rules database {path} does not exist yet "
            "(`mxhook domain add` or `mxhook rule add` creates it)", "rules_db_missing")
    return RulesStore(path)


def state_store(cfg: configmod.Config, *, write: bool = False) -> StateStore:
    path = cfg.state_db
    if not exists(path, "state database"):
        raise Unavailable(f"state database {path} does not exist yet (mxhook-spooler creates it)",
                          "state_db_missing")
    try:
        return StateStore(path, readonly=not write)
    except NotReadable as exc:
        raise Unavailable(str(exc), "state_db_unreadable") from exc
