"""The inbound log and the event log, read from state.db: listings (newest first) and the
details of one entry with its delivery attempts (services.csvexport writes a listing as CSV),
and their retention (`prune`, what mxhook-spooler also does in the background)."""
from __future__ import annotations

import time
from typing import TextIO

from mxhook import config as configmod
from mxhook.services.csvexport import write_csv
from mxhook.services.errors import Invalid, NotFound
from mxhook.services.stores import state_store
from mxhook.store import logs as state_logs
from mxhook.store.logs import EVENT_LOG_KEYS
from mxhook.store.statedb import DELIVERY_STATUSES, LOG_STATUSES

INBOUND_COLUMNS = ["received", "status", "from", "to", "hostName", "messageId", "filterName", "reason"]
EVENT_COLUMNS = list(EVENT_LOG_KEYS)


def _listing(cfg: configmod.Config, method: str, known, status, since, until, limit) -> list[dict]:
    if status is not None and status not in known:
        raise Invalid(f"no status {status!r} (known: {', '.join(known)})")
    with state_store(cfg) as store:
        return getattr(state_logs, method)(store, status=status, since=since, until=until, limit=limit)


def inbound(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
            until: str | None = None, limit: int | None = 100) -> list[dict]:
    """Accepted (queued, succeeded, deferred, failed) and denied mail, newest first; `since`
    and `until` are times as services.times.parse_time returns them."""
    return _listing(cfg, "inbound_log", LOG_STATUSES, status, since, until, limit)


def inbound_detail(cfg: configmod.Config, entry_id: str) -> dict:
    with state_store(cfg) as store:
        d = state_logs.inbound_detail(store, entry_id)
    if d is None:
        raise NotFound(f"no inbound log entry with id {entry_id!r}")
    return d


def events(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
           until: str | None = None, limit: int | None = 100) -> list[dict]:
    """One entry per (event, endpoint), with the webhook status, newest first."""
    return _listing(cfg, "event_log", DELIVERY_STATUSES, status, since, until, limit)


def event_detail(cfg: configmod.Config, event_id: str) -> dict:
    """The event's fields, and its delivery to each endpoint with attempts."""
    with state_store(cfg) as store:
        d = state_logs.event_detail(store, event_id)
    if d is None:
        raise NotFound(f"no event with id {event_id!r}")
    return d


def export_csv(cfg: configmod.Config, log: str, out: TextIO, *, status: str | None = None,
               since: str | None = None, until: str | None = None) -> int:
    """Every row of the inbound (`log` "inbound") or event ("events") log in the window as
    formula-safe CSV on `out`; returns the number of rows."""
    listings = {"inbound": (inbound, INBOUND_COLUMNS), "events": (events, EVENT_COLUMNS)}
    if log not in listings:
        raise Invalid(f"no log {log!r} (known: {', '.join(listings)})")
    listing, columns = listings[log]
    return write_csv(listing(cfg, status=status, since=since, until=until, limit=None), columns, out)


def prune(cfg: configmod.Config, *, dry_run: bool = False, now: float | None = None) -> dict:
    """Delete (with `dry_run`: count) what is older than `[spooler] inbound_log_days` and
    `event_log_days` now, as the spooler does in the background: one pass, in small
    transactions beside a running spooler. Returns the cutoffs (None: that log is kept
    forever) and the rows by table (store.logs.Pruned)."""
    now = time.time() if now is None else now
    inbound_days = cfg.value("spooler", "inbound_log_days")
    event_days = cfg.value("spooler", "event_log_days")
    with state_store(cfg, write=not dry_run) as store:
        pruned = state_logs.Retention(store, inbound_days, event_days, dry_run=dry_run).run(now)
    return {"dry_run": dry_run, "inbound_before": state_logs.cutoff(inbound_days, now),
            "events_before": state_logs.cutoff(event_days, now), "rows": pruned.as_dict()}
