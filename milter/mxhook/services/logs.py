"""The inbound log and the event log, read from state.db: listings (newest first) and the
details of one entry with its delivery attempts (services.csvexport writes a listing as CSV),
and their retention (`prune`, what mxhook-spooler also does in the background)."""
from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Iterator, TextIO

from mxhook import config as configmod
from mxhook.services.csvexport import header_line, row_line, write_csv
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


# Pages over all results (the API and the console): a cursor is the opaque form of the last
# row's sort key, so a page costs the same wherever it is, and rows written meanwhile neither
# shift nor repeat the pages after it.

MAX_PAGE = 1000
CSV_PAGE = 1000


def encode_cursor(key: tuple | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, types: tuple) -> tuple | None:
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(key, list) and len(key) == len(types) and all(
                isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types)):
            return tuple(key)
    except (ValueError, binascii.Error):
        pass
    raise Invalid("the cursor is not one this API gave (use next_cursor as returned)", "bad_cursor")


def _page(cfg: configmod.Config, reader, known: tuple, key_types: tuple, status, limit: int,
          cursor, filters: dict) -> dict:
    if status is not None and status not in known:
        raise Invalid(f"no status {status!r} (known: {', '.join(known)})")
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1..{MAX_PAGE}")
    after = decode_cursor(cursor, key_types)
    with state_store(cfg) as store:
        rows, key = reader(store, status=status, after=after, limit=limit, **filters)
    return {"items": rows, "next_cursor": encode_cursor(key)}


def inbound_page(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
                 until: str | None = None, rule: str | None = None, recipient: str | None = None,
                 cursor: str | None = None, limit: int = 100) -> dict:
    """{items: rows as `inbound` gives them, next_cursor: the cursor of the next page or None}."""
    return _page(cfg, state_logs.inbound_page, LOG_STATUSES, (str, str), status, limit, cursor,
                 {"since": since, "until": until, "rule": rule, "recipient": recipient})


def events_page(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
                until: str | None = None, endpoint: int | None = None, recipient: str | None = None,
                cursor: str | None = None, limit: int = 100) -> dict:
    """{items: rows as `events` gives them, next_cursor}."""
    return _page(cfg, state_logs.event_page, DELIVERY_STATUSES, (str, int), status, limit, cursor,
                 {"since": since, "until": until, "endpoint": endpoint, "recipient": recipient})


def csv_chunks(cfg: configmod.Config, log: str, **filters) -> Iterator[str]:
    """Every matching row of the inbound (`log` "inbound") or event ("events") log as the
    formula-safe CSV `export_csv` writes, a page at a time (for a streamed download); the
    filters of inbound_page / events_page. The first page is read before the first chunk is
    given, so a refusal comes before anything is sent."""
    pages = {"inbound": (inbound_page, INBOUND_COLUMNS), "events": (events_page, EVENT_COLUMNS)}
    if log not in pages:
        raise Invalid(f"no log {log!r} (known: {', '.join(pages)})")
    page_of, columns = pages[log]
    page = page_of(cfg, limit=CSV_PAGE, **filters)

    def chunks() -> Iterator[str]:
        current = page
        yield header_line(columns)
        while True:
            yield "".join(row_line(row, columns) for row in current["items"])
            if current["next_cursor"] is None:
                return
            current = page_of(cfg, limit=CSV_PAGE, **dict(filters, cursor=current["next_cursor"]))

    return chunks()
