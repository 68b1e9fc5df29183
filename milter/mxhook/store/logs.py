"""state.db for people: the inbound log and the event log (a listing and one entry's detail
with its attempts), totals, the count of unknown-domain denials left out of the log, and the
logs' retention (`Retention`, the one writer here: the spooler in the background and `mxhook
log prune`). Functions over a StateStore's connection."""
from __future__ import annotations

import json
import logging
import sqlite3
import string
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

from mxhook.model.records import iso, to_datetime
from mxhook.store.migrations import transaction
from mxhook.store.statedb import (DELIVERY_STATUSES, EVENT_DOMAIN, EVENT_RECIPIENT, LOG_STATUSES,
                                   StateStore, _load_event)

log = logging.getLogger(__name__)

LOG_KEYS = ("id", "received", "status", "from", "to", "hostName", "messageId", "filterName", "reason")
EVENT_LOG_KEYS = ("received", "status", "hostName", "endpointUrl", "reason")


def event_host(meta: dict) -> str | None:
    """The event log's `hostName`, seed 000's host name of the server that recorded the log:
    the event's `host_name` (the MX: Postfix's myhostname, the log line's host); None for the
    admin's block-list changes and events stored before events had one. The remote server is
    the event's `remote_host`."""
    return meta.get("host_name")


def time_window(where: list[str], params: list, col: str, since, until) -> None:
    """Add `since <= col < until` (either end optional) to a WHERE clause being built."""
    if since is not None:
        where.append(f"{col} >= ?")
        params.append(iso(since))
    if until is not None:
        where.append(f"{col} < ?")
        params.append(iso(until))


def _log_query(select: str, status: str | None, statuses: tuple[str, ...], status_expr: str,
               time_col: str, since, until, order: str | None, limit: int | None,
               filters: tuple[tuple[str, tuple], ...] = (), offset: int = 0) -> tuple[str, list]:
    """A log listing: `select` filtered by status, a [since, until) time window and `filters`
    ((SQL condition, its parameters) each), ordered (None: in no order, to count), limited,
    `offset` rows skipped. Times are ISO 8601 text, datetimes or epoch seconds (naive = UTC)."""
    where, params = [], []
    if status is not None:
        if status not in statuses:
            raise ValueError(f"status must be one of {', '.join(statuses)}")
        where.append(f"{status_expr} = ?")
        params.append(status)
    time_window(where, params, time_col, since, until)
    for condition, values in filters:
        where.append(condition)
        params.extend(values)
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    if order is not None:
        sql += f" ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params.extend((int(limit), int(offset)))
    return sql, params


# counting a listing's rows stops after this long (seconds): its table then says "more"
COUNT_BUDGET = 0.25


def bounded_count(store: StateStore, sql: str, params: list, budget: float | None = None,
                  clock: Callable[[], float] = time.monotonic) -> int | None:
    """The number of rows `sql` gives, or None when counting takes longer than `budget`
    seconds (None: COUNT_BUDGET; a million events joined to their batches: SQLite is
    interrupted)."""
    deadline = clock() + (COUNT_BUDGET if budget is None else budget)
    store.conn.set_progress_handler(lambda: clock() > deadline, 1000)
    try:
        return store.conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        return None
    finally:
        store.conn.set_progress_handler(None, 0)


def _page(rows: list, limit: int, key) -> tuple[list, tuple | None]:
    """`rows` fetched with limit + 1: the page, and the key to continue after it (None: it
    was the last page)."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, key(rows[-1])


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# a prefix with more index entries than this is looked for by reading the log newest first
# (with that many matches a page is close by); fewer are read from the index and sorted
PREFIX_SORT_MAX = 20_000


def recipient_search(text: str) -> tuple[str, str]:
    """How the logs' recipient filter reads `text` (any case): ("domain", "@example.com"): every
    address at that domain; ("address", "alice@example.com"): that address; ("prefix", "alice"):
    addresses that start with it (`alice` finds alice@... and alice.smith@...); ("pattern",
    "*smith*"): `*` matches any characters, the rest literally, over the whole address. The
    first three read an index of the inbound log (statedb `_schema_v4`); a pattern reads the
    log newest first (docs/api.md: slower)."""
    text = text.strip().translate(_ASCII_LOWER)
    if "*" in text:
        return "pattern", text
    if text.startswith("@"):
        return "domain", text
    local, at, domain = text.partition("@")
    if local and at and domain:
        return "address", text
    return "prefix", text


def _recipient_like(column: str, search: tuple[str, str], joined: bool = False) -> tuple[str, tuple]:
    """`search` as a LIKE over `column` (ASCII letters in any case, as the index keys are);
    `joined`: the column holds the addresses joined with ", " (inbound_log.rcpt_to)."""
    kind, text = search
    body = "%".join(_like_escaped(part) for part in text.split("*")) if kind == "pattern" \
        else _like_escaped(text)
    body = {"domain": "%" + body, "prefix": body + "%"}.get(kind, body)
    if joined and not (kind == "pattern" and text.startswith("*") and text.endswith("*")):
        # each address between ", " (or the start) and "," (or the end)
        return f"(', ' || {column} || ',') LIKE ? ESCAPE '\\'", (f"%, {body},%",)
    return f"{column} LIKE ? ESCAPE '\\'", (body,)


# inbound ------------------------------------------------------------------------------------
_LOG_COLUMNS = ("id", "received", "status", "header_from", "rcpt_to", "host_name", "message_id",
                "filter_name", "reason", "mail_from", "client_addr", "queue_id", "recipients",
                "subject", "kind", "record_id")
_LOG_SELECT = f"SELECT {', '.join(_LOG_COLUMNS)} FROM inbound_log"
# a page by recipient: rows of the recipient index (as r: received, log_id) joined to their log rows
_LOG_BY_KEY = (f"SELECT {', '.join('l.' + c for c in _LOG_COLUMNS)}"
               " FROM {keys} CROSS JOIN inbound_log l ON l.id = r.log_id")


def _log_row(row) -> dict:
    return dict(zip(LOG_KEYS, row[:9]))


def inbound_log(store: StateStore, status: str | None = None, since=None, until=None, limit: int | None = 100) -> list[dict]:
    """Log rows newest first; `since` (inclusive) and `until` (exclusive) filter on the
    received time and are ISO 8601 text, datetimes or epoch seconds (naive = UTC)."""
    sql, params = _log_query(_LOG_SELECT, status, LOG_STATUSES, "status", "received",
                             since, until, "received DESC, id DESC", limit)
    return [_log_row(row) for row in store.conn.execute(sql, params)]


def inbound_page(store: StateStore, *, status: str | None = None, since=None, until=None,
                 rule: str | None = None, recipient: str | None = None,
                 after: tuple[str, str] | None = None, limit: int = 100,
                 offset: int = 0) -> tuple[list[dict], tuple | None]:
    """One page of inbound_log's order (newest first): rows after the key `after` (None: from
    the newest), `offset` more skipped, filtered as inbound_log and by `rule` (the filter name:
    a rule's, or the heuristic that denied) and `recipient` (recipient_search); returns (rows,
    the key of the next page or None)."""
    query = _inbound_query(store, status, since, until, rule, recipient, after, limit + 1, offset)
    if query is None:
        return [], None
    rows, key = _page(store.conn.execute(*query).fetchall(), limit, lambda r: (r[1], r[0]))
    return [_log_row(row) for row in rows], key


def inbound_count(store: StateStore, *, status: str | None = None, since=None, until=None,
                  rule: str | None = None, recipient: str | None = None,
                  after: tuple[str, str] | None = None, budget: float | None = None) -> int | None:
    """How many rows inbound_page's filters match after `after`; None: counting them would take
    longer than `budget` seconds."""
    query = _inbound_query(store, status, since, until, rule, recipient, after, None, 0)
    return 0 if query is None else bounded_count(store, *query, budget=budget)


def _inbound_query(store: StateStore, status, since, until, rule, recipient, after,
                   limit: int | None, offset: int) -> tuple[str, list] | None:
    """The SQL of inbound_page (`limit` None: unordered and unlimited, to count); None: no row
    can match."""
    search = recipient_search(recipient) if recipient is not None else None
    narrowed = rule is not None or status is not None
    plan, key = _recipient_plan(store, search, narrowed) if search is not None else ("log", "")
    if plan == "none":
        return None
    if plan in ("log", "filter"):
        select, prefix, params = _LOG_SELECT, "", []
    else:
        prefix = "l."
        if plan == "key":  # one key: its index rows are in the page's order already
            select, params = _LOG_BY_KEY.format(keys="inbound_recipients r"), []
        else:  # a few keys: their rows, each log row once, sorted
            select = _LOG_BY_KEY.format(keys="(SELECT DISTINCT received, log_id FROM inbound_recipients"
                                             " WHERE key >= ? AND key < ?) r")
            params = list(_key_range(search[1]))
    filters = []
    if plan == "key":
        filters.append(("r.key = ?", (key,)))
    elif plan == "filter":  # the rule's or status's index leads; each row's key looked up
        filters.append(("EXISTS (SELECT 1 FROM inbound_recipients r WHERE r.key = ?"
                        " AND r.received = inbound_log.received AND r.log_id = inbound_log.id)", (key,)))
    elif search is not None:
        filters.append(_recipient_like("rcpt_to", search, joined=True))
    if rule is not None:
        filters.append((f"{prefix}filter_name = ?", (rule,)))
    at, id_ = ("r.received", "r.log_id") if prefix else ("received", "id")
    if after is not None:
        filters.append((f"({at}, {id_}) < (?, ?)", tuple(after)))
    sql, more = _log_query(select, status, LOG_STATUSES, f"{prefix}status", at, since, until,
                           f"{at} DESC, {id_} DESC" if limit is not None else None, limit,
                           tuple(filters), offset)
    return sql, params + more


def _key_range(prefix: str) -> tuple[str, str]:
    return prefix, prefix + "\U0010ffff"  # every key that starts with `prefix` sorts in between


def _recipient_plan(store: StateStore, search: tuple[str, str], narrowed: bool) -> tuple[str, str]:
    """How to find a recipient's rows: ("key", KEY): walk that index key; ("filter", KEY): walk
    the log by the other filters (`narrowed`: a rule or a status given), looking each row's KEY
    up (a key with more than PREFIX_SORT_MAX rows: the filter is likely the rarer); ("keys",
    ""): read the rows of a prefix's keys and sort them; ("log", ""): read the log newest first,
    matching rcpt_to (a pattern, or a prefix with more than PREFIX_SORT_MAX rows: a page is
    close by); ("none", ""): no row can match."""
    kind, text = search
    if kind == "pattern":
        return "log", ""
    if kind == "prefix":
        low, high = _key_range(text)
        first = store.conn.execute("SELECT min(key) FROM inbound_recipients WHERE key >= ? AND key < ?",
                                   (low, high)).fetchone()[0]
        if first is None:
            return "none", ""
        if store.conn.execute("SELECT 1 FROM inbound_recipients WHERE key > ? AND key < ? LIMIT 1",
                              (first, high)).fetchone() is not None:
            return ("keys", "") if _entries(store, "key >= ? AND key < ?", (low, high)) <= PREFIX_SORT_MAX \
                else ("log", "")
        text = first
    if narrowed and _entries(store, "key = ?", (text,)) > PREFIX_SORT_MAX:
        return "filter", text
    return "key", text


def _entries(store: StateStore, where: str, params: tuple) -> int:
    """Rows of the recipient index matching `where`, counted up to PREFIX_SORT_MAX + 1."""
    return store.conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM inbound_recipients WHERE {where}"
                              " LIMIT ?)", (*params, PREFIX_SORT_MAX + 1)).fetchone()[0]


def inbound_detail(store: StateStore, id: str) -> dict | None:  # noqa: A002 - the API's name
    """One log row with envelope details and its attempts (oldest first). `id` is a
    delivery id or a denied record's id; a bare inbound record id finds its first
    delivery."""
    row = store.conn.execute(_LOG_SELECT + " WHERE id = ?", (id,)).fetchone()
    if row is None:
        row = store.conn.execute(
            _LOG_SELECT + " WHERE record_id = ? ORDER BY id LIMIT 1", (id,)
        ).fetchone()
    if row is None:
        return None
    detail = _log_row(row)
    detail.update(
        mail_from=row[9], client_addr=row[10], queue_id=row[11],
        recipients=json.loads(row[12]) if row[12] else [], subject=row[13], kind=row[14],
        record_id=row[15],
    )
    attempts = store.conn.execute(
        "SELECT at, status_code, error, duration_ms, outcome FROM attempts"
        " WHERE delivery_id = ? ORDER BY at, id", (detail["id"],),
    ).fetchall()
    detail["attempts"] = [
        {"at": a[0], "status_code": a[1], "error": a[2], "duration_ms": a[3], "outcome": a[4]}
        for a in attempts
    ]
    drow = store.conn.execute(
        "SELECT attempts, next_attempt_at, first_attempt_at, rule_id FROM deliveries WHERE id = ?",
        (detail["id"],),
    ).fetchone()
    if drow is not None:
        detail.update(attempt_count=drow[0], next_attempt_at=drow[1], first_attempt_at=drow[2], rule_id=drow[3])
    return detail


def delivery(store: StateStore, id: str) -> dict | None:  # noqa: A002
    """A deliveries row as a dict (target and recipients decoded), for tools and tests."""
    rows = list(store.db.query("SELECT * FROM deliveries WHERE id = ?", [id]))
    if not rows:
        return None
    row = rows[0]
    row["target"] = json.loads(row["target"])
    row["recipients"] = json.loads(row["recipients"])
    return row


def message_body(store: StateStore, message_id: str) -> bytes | None:
    """A stored message's bytes as they came; None when it is not stored (pruned, or its body
    dropped after delivery)."""
    row = store.conn.execute("SELECT raw FROM messages WHERE id = ?", (message_id,)).fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else None


def counts(store: StateStore) -> dict:
    """Totals for tools and tests (`mxhook status` uses status_summary): deliveries by
    status, denied log rows, messages (and how many still hold their raw bytes), events, and
    when the next pending delivery is due."""
    conn = store.conn
    by_status = dict.fromkeys(DELIVERY_STATUSES, 0)
    for status, n in conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status"):
        by_status[status] = n
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "deliveries": by_status,
        "denied": one("SELECT count(*) FROM inbound_log WHERE status = 'denied'"),
        "messages": one("SELECT count(*) FROM messages"),
        "messages_with_raw": one("SELECT count(*) FROM messages WHERE raw IS NOT NULL"),
        "raw_bytes": one("SELECT coalesce(sum(length(raw)), 0) FROM messages"),
        "events": one("SELECT count(*) FROM events"),
        "next_due_at": store.next_due_at(),
    }


# events ---------------------------------------------------------------------------------------
_EVENT_COLUMNS = (
    "SELECT e.id, e.received, COALESCE(b.status, 'queued'), e.meta, d.endpoint_id,"
    " COALESCE(b.url, ep.url), b.last_error, d.batch_id, e.type, e.recipient, d.seq"
)
_EVENT_JOINS = (
    " LEFT JOIN event_batches b ON b.id = d.batch_id"
    " LEFT JOIN event_endpoints ep ON ep.id = d.endpoint_id"
)
_EVENT_LOG_SELECT = _EVENT_COLUMNS + " FROM event_deliveries d JOIN events e ON e.id = d.event_id" + _EVENT_JOINS
# Listings walk events newest first through their time index and join each one's deliveries
# (CROSS JOIN fixes that order): left to itself, SQLite scanned every event delivery and
# sorted them all, 0.8 s for a page of 300,000 events (bench/api.py).
_EVENT_LIST_SELECT = _EVENT_COLUMNS + " FROM events e CROSS JOIN event_deliveries d ON d.event_id = e.id" + _EVENT_JOINS


def _event_log_row(row, meta: dict | None = None) -> dict:
    meta = _load_event(row[3]) if meta is None else meta
    return {
        "id": row[0], "received": row[1], "status": row[2], "hostName": event_host(meta),
        "endpointUrl": row[5], "reason": row[6], "type": row[8], "recipient": row[9],
        "endpointId": row[4], "batchId": row[7], "messageId": meta.get("message_id"),
    }


def event_log(store: StateStore, status: str | None = None, since=None, until=None,
              limit: int | None = 100) -> list[dict]:
    """One row per (event, endpoint) delivery, newest event first, with the keys of
    EVENT_LOG_KEYS plus id (the event id), type, recipient, endpointId, batchId, messageId.
    `status` is the delivery's: queued (pending or in a batch not yet tried), deferred,
    succeeded, failed. `since` (inclusive) / `until` (exclusive) filter on the event time."""
    sql, params = _log_query(_EVENT_LIST_SELECT, status, DELIVERY_STATUSES,
                             "COALESCE(b.status, 'queued')", "e.received", since, until,
                             "e.received DESC, d.seq DESC", limit)
    rows = store.conn.execute(sql, params).fetchall()
    metas = store.enrich([_load_event(row[3]) for row in rows])
    return [_event_log_row(row, meta) for row, meta in zip(rows, metas)]


def event_page(store: StateStore, *, status: str | None = None, since=None, until=None,
               endpoint: int | None = None, recipient: str | None = None,
               after: tuple[str, int] | None = None, limit: int = 100,
               offset: int = 0) -> tuple[list[dict], tuple | None]:
    """One page of event_log's order: rows after the key `after`, `offset` more skipped,
    filtered as event_log and by `endpoint` (its id) and `recipient` (recipient_search: an
    address or a domain reads an index, a prefix or a pattern scans the events newest first);
    returns (rows, the key of the next page or None)."""
    sql, params = _event_query(status, since, until, endpoint, recipient, after, limit + 1, offset)
    rows, key = _page(store.conn.execute(sql, params).fetchall(), limit, lambda r: (r[1], r[10]))
    metas = store.enrich([_load_event(row[3]) for row in rows])
    return [_event_log_row(row, meta) for row, meta in zip(rows, metas)], key


def event_count(store: StateStore, *, status: str | None = None, since=None, until=None,
                endpoint: int | None = None, recipient: str | None = None,
                after: tuple[str, int] | None = None, budget: float | None = None) -> int | None:
    """How many rows event_page's filters match after `after`; None: counting them would take
    longer than `budget` seconds."""
    if (status, since, until, endpoint, recipient, after) == (None,) * 6:
        # the whole log: its deliveries, counted from their table's b-tree without a join
        return store.conn.execute("SELECT count(*) FROM event_deliveries").fetchone()[0]
    return bounded_count(store, *_event_query(status, since, until, endpoint, recipient, after, None, 0),
                         budget=budget)


def _event_query(status, since, until, endpoint, recipient, after, limit: int | None,
                 offset: int) -> tuple[str, list]:
    """The SQL of event_page (`limit` None: unordered and unlimited, to count)."""
    filters = []
    if endpoint is not None:
        filters.append(("d.endpoint_id = ?", (int(endpoint),)))
    if recipient is not None:
        kind, text = recipient_search(recipient)
        if kind in ("address", "domain"):  # an index of its own (statedb _schema_v4)
            expression = EVENT_RECIPIENT if kind == "address" else EVENT_DOMAIN
            filters.append((expression.replace("recipient", "e.recipient") + " = ?", (text,)))
        else:
            filters.append(_recipient_like("e.recipient", (kind, text)))
    if after is not None:
        filters.append(("(e.received, d.seq) < (?, ?)", tuple(after)))
    return _log_query(_EVENT_LIST_SELECT, status, DELIVERY_STATUSES, "COALESCE(b.status, 'queued')",
                      "e.received", since, until, "e.received DESC, d.seq DESC" if limit is not None else None,
                      limit, tuple(filters), offset)


def event_detail(store: StateStore, event_id: str) -> dict | None:
    """An event (enriched) with its deliveries, each with its batch's attempts."""
    row = store.conn.execute(
        "SELECT id, received, meta, ingested FROM events WHERE id = ?", (event_id,)
    ).fetchone()
    if row is None:
        return None
    event = _load_event(row[2])
    event["id"] = row[0]
    store.enrich([event])
    deliveries = []
    for r in store.conn.execute(_EVENT_LOG_SELECT + " WHERE d.event_id = ? ORDER BY d.seq",
                               (event_id,)):
        entry = _event_log_row(r)
        batch = store.batch(entry["batchId"]) if entry["batchId"] else None
        entry["attempts"] = [
            {"at": a[0], "outcome": a[1], "status_code": a[2], "error": a[3], "duration_ms": a[4]}
            for a in store.conn.execute(
                "SELECT at, outcome, status_code, error, duration_ms FROM event_attempts"
                " WHERE batch_id = ? ORDER BY at, id", (entry["batchId"],),
            )
        ] if batch else []
        entry["batchSize"] = batch.size if batch else None
        entry["seq"] = r[10]
        entry["nextAttemptAt"] = batch.next_attempt_at if batch else None
        deliveries.append(entry)
    return {"id": row[0], "received": row[1], "ingested": row[3], "event": event,
            "hostName": event_host(event), "deliveries": deliveries}


def event_counts(store: StateStore) -> dict:
    """Pending (not yet batched) event deliveries and batches by status."""
    by_status = dict.fromkeys(DELIVERY_STATUSES, 0)
    for status, n in store.conn.execute("SELECT status, count(*) FROM event_batches GROUP BY status"):
        by_status[status] = n
    pending = store.conn.execute(
        "SELECT count(*) FROM event_deliveries WHERE batch_id IS NULL").fetchone()[0]
    return {"pending": pending, "batches": by_status}


# unknown-domain denials kept out of the inbound log ------------------------------------------
def unlogged_denials(store: StateStore, since) -> dict:
    """Denials of recipients in domains that are not permitted that ingest counted instead of
    logging (`[spooler] log_unknown_domains = no`): `since` that time (to the minute), in
    total, and the oldest minute counted (`first`)."""
    recent, total, first = store.conn.execute(
        "SELECT coalesce(sum(CASE WHEN minute >= ? THEN count END), 0), coalesce(sum(count), 0),"
        " min(minute) FROM unlogged_denials", (iso(since)[:16],)).fetchone()
    return {"since": recent, "total": total, "first": first}


# retention -----------------------------------------------------------------------------------
# rows of a time index looked at per transaction: on a 300,000-message state.db a batch of
# 200 messages took 6 ms (median; p99 22 ms), one of 500 27 ms (p99 68 ms): bench/retention.py
PRUNE_BATCH = 200
PRUNE_BUDGET = 0.05  # seconds of pruning per pass of the spooler's loop, at most (and one batch)
PRUNE_INTERVAL = 600.0  # seconds from the end of one background pass to the start of the next
_PENDING = "('queued', 'deferred')"
DAY = 86400.0


@dataclass
class Pruned:
    """Rows deleted (or, in a dry run, that would be) by table; `denied` are inbound_log rows
    of denied mail, `inbound_log` those of deliveries."""

    messages: int = 0
    deliveries: int = 0
    attempts: int = 0
    inbound_log: int = 0
    denied: int = 0
    unlogged_denials: int = 0
    events: int = 0
    event_deliveries: int = 0
    event_batches: int = 0
    event_attempts: int = 0

    def add(self, other: "Pruned") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def total(self) -> int:
        return sum(asdict(self).values())

    def as_dict(self) -> dict:
        return asdict(self)


def cutoff(days: float, now) -> str | None:
    """The stored time before which rows are older than `days` at `now`; None: keep forever
    (days 0)."""
    return iso(to_datetime(now).timestamp() - days * DAY) if days > 0 else None


def _marks(items) -> str:
    return ", ".join("?" * len(items))


class Retention:
    """Deletes what is older than the logs' retention, a bounded batch per transaction, so the
    writer it shares state.db with (the spooler's loop) is never held up for long.

    Units: a denied inbound_log row; a message (by `messages.received`) with its deliveries,
    their attempts and inbound_log rows, once none of its deliveries is queued or deferred
    (failed ones go: the dead letter is replayable for as long as it is kept); an event with
    its event_deliveries rows, once none of them waits for a batch or is in a queued or
    deferred batch and it is not a hard bounce still owed to the block list; a batch with its
    attempts once its last event went. A pass walks the time indexes from the oldest row up to
    the cutoff (fixed when the pass starts) with a cursor, so rows it keeps are looked at once
    per pass. `dry_run`: the same walk, counting instead of deleting."""

    PHASES = ("denied", "counts", "messages", "events")

    def __init__(self, store: StateStore, inbound_days: float, event_days: float, *,
                 batch: int = PRUNE_BATCH, dry_run: bool = False):
        self.store = store
        self.inbound_days = inbound_days
        self.event_days = event_days
        self.batch = batch
        self.dry_run = dry_run
        self._pass: list[str] | None = None  # phases left in the pass under way
        self._cutoffs: dict[str, str | None] = {}
        self._cursor: tuple[str, int] = ("", 0)
        self._seen_batches: set[str] = set()  # dry run: batches counted already
        self.pruned = Pruned()  # of the pass under way (or the last one)
        self._last_pass_end: float | None = None

    @property
    def enabled(self) -> bool:
        return self.inbound_days > 0 or self.event_days > 0

    def start(self, now) -> None:
        """Begin a pass with the cutoffs of `now` (epoch seconds, datetime or ISO text)."""
        inbound, events = cutoff(self.inbound_days, now), cutoff(self.event_days, now)
        self._cutoffs = {"denied": inbound, "counts": inbound, "messages": inbound, "events": events}
        self._pass = [p for p in self.PHASES if self._cutoffs[p] is not None]
        self._cursor = ("", 0)
        self._seen_batches.clear()
        self.pruned = Pruned()

    @property
    def running(self) -> bool:
        return bool(self._pass)

    @property
    def phase(self) -> str | None:
        """What the next `step` looks at (one of PHASES), None between passes."""
        return self._pass[0] if self._pass else None

    def step(self) -> Pruned:
        """One batch of the pass under way, in its own transaction; what it deleted."""
        if not self._pass:
            return Pruned()
        phase = self.phase
        found = Pruned()
        with transaction(self.store.conn, write=not self.dry_run) as conn:
            done = getattr(self, "_" + phase)(conn, self._cutoffs[phase], found)
        if done:
            self._pass.pop(0)
            self._cursor = ("", 0)
        self.pruned.add(found)
        return found

    def run(self, now) -> Pruned:
        """A whole pass at `now` (`mxhook log prune`, tests); what it deleted."""
        self.start(now)
        while self.running:
            self.step()
        return self.pruned

    def background(self, now: float, monotonic: Callable[[], float] = time.monotonic,
                   *, budget: float = PRUNE_BUDGET, interval: float = PRUNE_INTERVAL) -> Pruned:
        """For a daemon's loop: a pass every `interval` seconds (the first at once), run as
        batches for up to `budget` seconds per call; logs what a pass deleted."""
        if not self.enabled:
            return Pruned()
        t0 = monotonic()
        if not self.running:
            if self._last_pass_end is not None and t0 - self._last_pass_end < interval:
                return Pruned()
            self.start(now)
        found = Pruned()
        while self.running:
            found.add(self.step())
            if monotonic() - t0 >= budget:
                break
        if not self.running:
            self._last_pass_end = monotonic()
            if self.pruned.total():
                log.info("log retention: deleted %s", ", ".join(
                    f"{n} {name.replace('_', ' ')}" for name, n in self.pruned.as_dict().items() if n))
        return found

    # the phases: each looks at up to `batch` rows past the cursor; True when it reached the cutoff
    def _window(self, conn, sql: str, params: list) -> list[tuple]:
        """Rows (received, rowid, ...) of `sql` (a SELECT over a time index, WHERE ending in
        AND) past the cursor, in (received, rowid) order; the cursor moves past them."""
        rows = conn.execute(
            sql + " (received, rowid) > (?, ?) ORDER BY received, rowid LIMIT ?",
            [*params, *self._cursor, self.batch]).fetchall()
        if rows:
            self._cursor = (rows[-1][0], rows[-1][1])
        return rows

    def _denied(self, conn, before: str, found: Pruned) -> bool:
        rows = self._window(conn, "SELECT received, rowid FROM inbound_log"
                                  " WHERE status = 'denied' AND received < ? AND", [before])
        found.denied = len(rows)
        if rows and not self.dry_run:
            conn.execute(f"DELETE FROM inbound_log WHERE rowid IN ({_marks(rows)})", [r[1] for r in rows])
        return len(rows) < self.batch

    def _counts(self, conn, before: str, found: Pruned) -> bool:
        minutes = [r[0] for r in conn.execute(
            "SELECT minute FROM unlogged_denials WHERE minute < ? AND minute > ? ORDER BY minute LIMIT ?",
            (before[:16], self._cursor[0], self.batch))]
        found.unlogged_denials = len(minutes)
        if minutes:
            self._cursor = (minutes[-1], 0)
            if not self.dry_run:
                conn.execute(f"DELETE FROM unlogged_denials WHERE minute IN ({_marks(minutes)})", minutes)
        return len(minutes) < self.batch

    def _messages(self, conn, before: str, found: Pruned) -> bool:
        rows = self._window(conn, "SELECT received, rowid, id FROM messages WHERE received < ? AND", [before])
        ids = [r[2] for r in rows]
        if ids:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM messages m WHERE id IN ({_marks(ids)}) AND NOT EXISTS (SELECT 1"
                f" FROM deliveries d WHERE d.message_id = m.id AND d.status IN {_PENDING})", ids)]
        if ids:
            deliveries = [r[0] for r in conn.execute(
                f"SELECT id FROM deliveries WHERE message_id IN ({_marks(ids)})", ids)]
            found.messages, found.deliveries = len(ids), len(deliveries)
            in_d = f"IN ({_marks(deliveries)})"
            if self.dry_run:
                found.attempts = conn.execute(
                    f"SELECT count(*) FROM attempts WHERE delivery_id {in_d}", deliveries).fetchone()[0]
                found.inbound_log = conn.execute(
                    f"SELECT count(*) FROM inbound_log WHERE id {in_d}", deliveries).fetchone()[0]
            else:
                found.attempts = conn.execute(f"DELETE FROM attempts WHERE delivery_id {in_d}", deliveries).rowcount
                found.inbound_log = conn.execute(f"DELETE FROM inbound_log WHERE id {in_d}", deliveries).rowcount
                conn.execute(f"DELETE FROM deliveries WHERE id {in_d}", deliveries)
                conn.execute(f"DELETE FROM messages WHERE id IN ({_marks(ids)})", ids)
        return len(rows) < self.batch

    # an event delivery still to be posted: not in a batch yet, or in an open one
    _EVENT_PENDING = ("SELECT 1 FROM event_deliveries d LEFT JOIN event_batches b ON b.id = d.batch_id"
                      f" WHERE d.event_id = e.id AND (d.batch_id IS NULL OR b.status IN {_PENDING})")
    _EVENT_KEPT = f"(e.block_state IS 'pending' OR EXISTS ({_EVENT_PENDING}))"

    def _events(self, conn, before: str, found: Pruned) -> bool:
        rows = self._window(conn, "SELECT received, rowid, id FROM events WHERE received < ? AND", [before])
        ids = [r[2] for r in rows]
        if ids:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM events e WHERE id IN ({_marks(ids)}) AND NOT {self._EVENT_KEPT}", ids)]
        if ids:
            in_e = f"IN ({_marks(ids)})"
            batches = conn.execute(f"SELECT DISTINCT endpoint_id, batch_id FROM event_deliveries"
                                   f" WHERE event_id {in_e} AND batch_id IS NOT NULL", ids).fetchall()
            found.events = len(ids)
            if self.dry_run:
                found.event_deliveries = conn.execute(
                    f"SELECT count(*) FROM event_deliveries WHERE event_id {in_e}", ids).fetchone()[0]
                # a batch goes with its last event: when every one of them is old and done
                gone = [b for endpoint, b in batches if b not in self._seen_batches and not conn.execute(
                    "SELECT 1 FROM event_deliveries d JOIN events e ON e.id = d.event_id WHERE"
                    f" d.endpoint_id = ? AND d.batch_id = ? AND (e.received >= ? OR {self._EVENT_KEPT})",
                    (endpoint, b, before)).fetchone()]
                self._seen_batches.update(gone)
            else:
                found.event_deliveries = conn.execute(
                    f"DELETE FROM event_deliveries WHERE event_id {in_e}", ids).rowcount
                conn.execute(f"DELETE FROM events WHERE id {in_e}", ids)
                gone = [b for endpoint, b in batches if not conn.execute(
                    "SELECT 1 FROM event_deliveries WHERE endpoint_id = ? AND batch_id = ?",
                    (endpoint, b)).fetchone()]
            if gone:
                in_b = f"IN ({_marks(gone)})"
                if self.dry_run:
                    found.event_attempts = conn.execute(
                        f"SELECT count(*) FROM event_attempts WHERE batch_id {in_b}", gone).fetchone()[0]
                    found.event_batches = len(gone)
                else:
                    found.event_attempts = conn.execute(
                        f"DELETE FROM event_attempts WHERE batch_id {in_b}", gone).rowcount
                    found.event_batches = conn.execute(
                        f"DELETE FROM event_batches WHERE id {in_b}", gone).rowcount
        return len(rows) < self.batch
