"""The inbound log and the event log, read from state.db: listings (newest first) a page at a
time or as long as wanted (`pages`, `count`, `csv_chunks`: services.csvexport writes them), the
details of one entry with its delivery attempts, and their retention (`prune`, what mxhook-spooler also does in the background)."""
from __future__ import annotations

import base64
import binascii
import json
import os
import time
from typing import Callable, Iterator, NamedTuple

from mxhook import config as configmod
from mxhook.services.csvexport import header_line, row_line
from mxhook.services.errors import Invalid, NotFound
from mxhook.model import batching
from mxhook.services.stores import rules_store, state_store
from mxhook.store import logs as state_logs
from mxhook.store.logs import EVENT_LOG_KEYS
from mxhook.store.statedb import DELIVERY_STATUSES, LOG_STATUSES

INBOUND_COLUMNS = ["received", "status", "from", "to", "hostName", "messageId", "filterName", "reason"]
EVENT_COLUMNS = list(EVENT_LOG_KEYS)


def inbound_detail(cfg: configmod.Config, entry_id: str) -> dict:
    with state_store(cfg) as store:
        d = state_logs.inbound_detail(store, entry_id)
    if d is None:
        raise NotFound(f"no inbound log entry with id {entry_id!r}")
    return d


def event_detail(cfg: configmod.Config, event_id: str) -> dict:
    """The event's fields, and its delivery to each endpoint with attempts and the webhook-id
    its request had: its batch's id, or for an endpoint that posts an event per request, the
    id of the event's request in its run (model.batching.run_part_id)."""
    with state_store(cfg) as store:
        d = state_logs.event_detail(store, event_id)
    if d is None:
        raise NotFound(f"no event with id {event_id!r}")
    runs = _run_endpoints(cfg) if any(e["batchId"] for e in d["deliveries"]) else frozenset()
    for entry in d["deliveries"]:
        seq = entry.pop("seq")
        batch_id = entry["batchId"]
        entry["webhookId"] = (batching.run_part_id(batch_id, seq, entry["batchSize"])
                              if batch_id and entry["endpointId"] in runs else batch_id)
    return d


def _run_endpoints(cfg: configmod.Config) -> frozenset[int]:
    """Ids of the endpoints whose payload posts one event per request (their batches are runs)."""
    from mxhook.payloads import registry  # MIME and dialect modules: only when a batch is shown

    if not os.path.exists(cfg.rules_db):
        return frozenset()
    with rules_store(cfg) as store:
        endpoints = store.list_endpoints()
    return frozenset(ep.id for ep in endpoints if registry.events_per_request(ep.target) == 1)


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
CSV_PAGE = 1000  # rows read at once by a listing of any length (`pages`)
INBOUND_KEY, EVENT_KEY = (str, str), (str, int)  # the types of a cursor's sort key


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


def _known(status: str | None, known: tuple) -> None:
    if status is not None and status not in known:
        raise Invalid(f"no status {status!r} (known: {', '.join(known)})")


def _page(cfg: configmod.Config, reader, known: tuple, key_types: tuple, status, limit: int,
          cursor, offset: int, filters: dict) -> dict:
    _known(status, known)
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1..{MAX_PAGE}")
    after = decode_cursor(cursor, key_types)
    with state_store(cfg) as store:
        rows, key = reader(store, status=status, after=after, limit=limit, offset=offset, **filters)
    return {"items": rows, "next_cursor": encode_cursor(key)}


def inbound_page(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
                 until: str | None = None, rule: str | None = None, recipient: str | None = None,
                 cursor: str | None = None, limit: int = 100, offset: int = 0) -> dict:
    """{items: rows of the inbound log, newest first (store.logs.inbound_page), next_cursor:
    the cursor of the next page or None}; `offset` rows after the cursor skipped."""
    return _page(cfg, state_logs.inbound_page, LOG_STATUSES, INBOUND_KEY, status, limit, cursor,
                 offset, {"since": since, "until": until, "rule": rule, "recipient": recipient})


def events_page(cfg: configmod.Config, *, status: str | None = None, since: str | None = None,
                until: str | None = None, endpoint: int | None = None, recipient: str | None = None,
                cursor: str | None = None, limit: int = 100, offset: int = 0) -> dict:
    """{items: one row per (event, endpoint) delivery with the webhook status, newest first
    (store.logs.event_page), next_cursor}."""
    return _page(cfg, state_logs.event_page, DELIVERY_STATUSES, EVENT_KEY, status, limit, cursor,
                 offset, {"since": since, "until": until, "endpoint": endpoint, "recipient": recipient})


class Log(NamedTuple):
    page: Callable[..., dict]  # inbound_page / events_page
    columns: list[str]  # of its CSV
    count: Callable[..., int | None]  # store.logs inbound_count / event_count
    key_types: tuple  # of its cursors
    statuses: tuple[str, ...]


LOGS = {"inbound": Log(inbound_page, INBOUND_COLUMNS, state_logs.inbound_count, INBOUND_KEY, LOG_STATUSES),
        "events": Log(events_page, EVENT_COLUMNS, state_logs.event_count, EVENT_KEY, DELIVERY_STATUSES)}


def log_of(name: str) -> Log:
    """The inbound ("inbound") or event ("events") log, by name."""
    if name not in LOGS:
        raise Invalid(f"no log {name!r} (known: {', '.join(LOGS)})")
    return LOGS[name]


def pages(cfg: configmod.Config, log: str, *, limit: int | None = None, cursor: str | None = None,
          offset: int = 0, **filters) -> Iterator[dict]:
    """Up to `limit` rows (None: every one) of the inbound (`log` "inbound") or event ("events")
    log after `cursor`, `offset` rows skipped, with the filters of inbound_page / events_page,
    as pages ({items, next_cursor}) of at most CSV_PAGE rows read one at a time, so a listing
    of any length holds one page in memory. The last page's next_cursor continues after its
    last row (None: no more rows). The first page is read before this returns, so a refusal
    (a bad cursor or status) comes before anything is written."""
    page_of = log_of(log).page

    def read(cursor, offset, remaining):
        size = CSV_PAGE if remaining is None else min(CSV_PAGE, remaining)
        return page_of(cfg, limit=size, cursor=cursor, offset=offset, **filters)

    first = read(cursor, offset, limit)

    def walk() -> Iterator[dict]:
        page, remaining = first, limit
        while True:
            yield page
            if remaining is not None:
                remaining -= len(page["items"])
            if page["next_cursor"] is None or remaining == 0:
                return
            page = read(page["next_cursor"], 0, remaining)

    return walk()


def count(cfg: configmod.Config, log: str, *, cursor: str | None = None, **filters) -> int | None:
    """How many rows of the log match the filters after `cursor` (None: from the newest); None
    when counting them would be slow (store.logs.COUNT_BUDGET)."""
    which = log_of(log)
    _known(filters.get("status"), which.statuses)
    with state_store(cfg) as store:
        return which.count(store, after=decode_cursor(cursor, which.key_types), **filters)


def csv_chunks(cfg: configmod.Config, log: str, **filters) -> Iterator[str]:
    """Every matching row of the inbound (`log` "inbound") or event ("events") log as
    formula-safe CSV (services.csvexport), a page at a time (for a streamed download); the
    filters of inbound_page / events_page. The first page is read before the first chunk is
    given, so a refusal comes before anything is sent."""
    columns = log_of(log).columns
    read = pages(cfg, log, **filters)

    def chunks() -> Iterator[str]:
        yield header_line(columns)
        for page in read:
            yield "".join(row_line(row, columns) for row in page["items"])

    return chunks()
