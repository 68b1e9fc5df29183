"""The block list: outbound mail to these addresses is refused (event `blocked`), from every
sending domain or, for a suppression (an unsubscribe, a complaint), from one sending domain
(its `scope`). Adding or removing an address hands a `registered` / `deleted` event to the
spooler through the spool (durably), as the milter and the log follower hand theirs."""
from __future__ import annotations

import os
from dataclasses import dataclass

from mxhook import config as configmod
from mxhook import spool
from mxhook.model import events as eventsmod
from mxhook.services.errors import Conflict, Failed, NotFound, Unavailable, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb


@dataclass(frozen=True)
class Change:
    address: str  # as stored (normalized)
    event_id: str  # of the registered / deleted event


@translated()
def list_all(cfg: configmod.Config) -> list[dict]:
    """[{address, scope, reason, dsn, source, event_id, created}], oldest first (scope `*`:
    every sending domain)."""
    with rules_store(cfg) as store:
        return store.block_list()


@translated()
def search(cfg: configmod.Config, address: str) -> dict:
    """The entry for `address` (given in any case or form mail uses): the one for every
    sending domain when there is one, else its oldest suppression."""
    addr = rulesdb.normalize_block_address(address)
    with rules_store(cfg) as store:
        found = store.block_list(address=addr)
    if not found:
        raise NotFound(f"{addr} is not on the block list")
    return next((e for e in found if e["scope"] == rulesdb.SCOPE_ALL), found[0])


@translated()
def add(cfg: configmod.Config, address: str, *, reason: str | None = None,
        source: str = "cli", scope: str = rulesdb.SCOPE_ALL) -> Change:
    """`source`: who asks (events.SOURCES: cli, api), kept on the entry and the event.
    `scope`: a sending domain, or `*` (every one)."""
    addr = rulesdb.normalize_block_address(address)
    scope = rulesdb.block_scope(scope)
    _check_spool(cfg)
    with rules_store(cfg, create=True) as store:
        if not store.block_add(addr, reason=reason, source=source, scope=scope):
            raise Conflict(f"{addr} is already on the block list"
                           + ("" if scope == rulesdb.SCOPE_ALL else f" for {scope}"))
    try:
        return Change(addr, _spool_event(cfg, "registered", addr, reason, source))
    except OSError as exc:
        raise Failed(f"{addr} was added to the block list, but its registered "
                     f"event could not be spooled: {exc}", "event_not_spooled") from None


@translated()
def remove(cfg: configmod.Config, address: str, *, reason: str = "removed by the admin",
           source: str = "cli", scope: str | None = None) -> Change:
    """Seed 000's delete and cancel alike: the address's entries go (only the one of `scope`
    when given: a suppression), and a `deleted` event with `reason` says why."""
    addr = rulesdb.normalize_block_address(address)
    scope = None if scope is None else rulesdb.block_scope(scope)
    _check_spool(cfg)
    with rules_store(cfg) as store:
        if not store.block_remove(addr, scope=scope):
            raise NotFound(f"{addr} is not on the block list"
                           + ("" if scope in (None, rulesdb.SCOPE_ALL) else f" for {scope}"))
    try:
        return Change(addr, _spool_event(cfg, "deleted", addr, reason, source))
    except OSError as exc:
        raise Failed(f"{addr} was removed from the block list, but its deleted "
                     f"event could not be spooled: {exc}", "event_not_spooled") from None


def _check_spool(cfg: configmod.Config) -> None:
    """Before writing rules.db: the event must be writable afterwards."""
    new_dir = os.path.join(cfg.spool_dir, "new")
    if not os.path.isdir(new_dir) or not os.path.isdir(os.path.join(cfg.spool_dir, "tmp")):
        raise Unavailable(f"spool directory {cfg.spool_dir} does not exist "
                          "(mxhook-spooler creates it); the block list event could not be sent",
                          "spool_missing")


def _spool_event(cfg: configmod.Config, event_type: str, address: str, reason: str | None,
                 source: str) -> str:
    """Write the event to the spool; returns its id. Run as root, the file is written with the
    owner of the spool directory (the spooler must be able to read it)."""
    event = eventsmod.Event(type=event_type, at=eventsmod.now_iso(), id=spool.new_id(),
                            source=source, recipient=address, reason=reason)
    record = spool.event_record(event)
    spool_dir = cfg.spool_dir
    _as_owner(os.path.join(spool_dir, "new"), lambda: spool.write(spool_dir, record, durable=True))
    return event.id


def _as_owner(directory: str, fn):
    """Run fn() with the effective uid/gid of `directory`'s owner when running as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return fn()
    st = os.stat(directory)
    if st.st_uid == 0:
        return fn()
    os.setegid(st.st_gid)
    try:
        os.seteuid(st.st_uid)
        try:
            return fn()
        finally:
            os.seteuid(0)
    finally:
        os.setegid(0)
