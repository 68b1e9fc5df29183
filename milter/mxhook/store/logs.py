"""state.db read for people: the inbound log and the event log (a listing and one entry's
detail with its attempts), and totals. Functions over a StateStore's connection; the CLI's
`log` commands and tests call them, nothing here writes."""
from __future__ import annotations

import json

from mxhook.model.records import iso
from mxhook.store.statedb import DELIVERY_STATUSES, LOG_STATUSES, StateStore, _load_event

LOG_KEYS = ("id", "received", "status", "from", "to", "hostName", "messageId", "filterName", "reason")
EVENT_LOG_KEYS = ("received", "status", "hostName", "endpointUrl", "reason")


def event_host(meta: dict) -> str | None:
    """The event log's `hostName`: the remote host that answered (remote_host, else the host of
    `relay=`), else the submitting client's address (queued / blocked events)."""
    host = meta.get("remote_host")
    if host:
        return host
    relay = meta.get("relay")
    if relay and relay != "none":
        return relay.split("[", 1)[0] or relay
    return meta.get("client_addr")


def time_window(where: list[str], params: list, col: str, since, until) -> None:
    """Add `since <= col < until` (either end optional) to a WHERE clause being built."""
    if since is not None:
        where.append(f"{col} >= ?")
        params.append(iso(since))
    if until is not None:
        where.append(f"{col} < ?")
        params.append(iso(until))


def _log_query(select: str, status: str | None, statuses: tuple[str, ...], status_expr: str,
               time_col: str, since, until, order: str, limit: int | None,
               filters: tuple[tuple[str, tuple], ...] = ()) -> tuple[str, list]:
    """A log listing: `select` filtered by status, a [since, until) time window and `filters`
    ((SQL condition, its parameters) each), ordered, limited. Times are ISO 8601 text,
    datetimes or epoch seconds (naive = UTC)."""
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
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


def _page(rows: list, limit: int, key) -> tuple[list, tuple | None]:
    """`rows` fetched with limit + 1: the page, and the key to continue after it (None: it
    was the last page)."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, key(rows[-1])


# inbound ------------------------------------------------------------------------------------
_LOG_SELECT = (
    "SELECT id, received, status, header_from, rcpt_to, host_name, message_id, filter_name,"
    " reason, mail_from, client_addr, queue_id, recipients, subject, kind, record_id"
    " FROM inbound_log"
)


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
                 after: tuple[str, str] | None = None, limit: int = 100) -> tuple[list[dict], tuple | None]:
    """One page of inbound_log's order (newest first): rows after the key `after` (None: from
    the newest), filtered as inbound_log and by `rule` (the filter name: a rule's, or the
    heuristic that denied) and `recipient` (text in an envelope recipient, any case); returns
    (rows, the key of the next page or None)."""
    filters = []
    if rule is not None:
        filters.append(("filter_name = ?", (rule,)))
    if recipient is not None:
        filters.append(("instr(lower(rcpt_to), lower(?)) > 0", (recipient,)))
    if after is not None:
        filters.append(("(received, id) < (?, ?)", tuple(after)))
    sql, params = _log_query(_LOG_SELECT, status, LOG_STATUSES, "status", "received",
                             since, until, "received DESC, id DESC", limit + 1, tuple(filters))
    rows, key = _page(store.conn.execute(sql, params).fetchall(), limit, lambda r: (r[1], r[0]))
    return [_log_row(row) for row in rows], key


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
_EVENT_LOG_SELECT = (
    "SELECT e.id, e.received, COALESCE(b.status, 'queued'), e.meta, d.endpoint_id,"
    " COALESCE(b.url, ep.url), b.last_error, d.batch_id, e.type, e.recipient, d.seq"
    " FROM event_deliveries d JOIN events e ON e.id = d.event_id"
    " LEFT JOIN event_batches b ON b.id = d.batch_id"
    " LEFT JOIN event_endpoints ep ON ep.id = d.endpoint_id"
)


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
    sql, params = _log_query(_EVENT_LOG_SELECT, status, DELIVERY_STATUSES,
                             "COALESCE(b.status, 'queued')", "e.received", since, until,
                             "e.received DESC, d.seq DESC", limit)
    rows = store.conn.execute(sql, params).fetchall()
    metas = store.enrich([_load_event(row[3]) for row in rows])
    return [_event_log_row(row, meta) for row, meta in zip(rows, metas)]


def event_page(store: StateStore, *, status: str | None = None, since=None, until=None,
               endpoint: int | None = None, recipient: str | None = None,
               after: tuple[str, int] | None = None, limit: int = 100) -> tuple[list[dict], tuple | None]:
    """One page of event_log's order: rows after the key `after`, filtered as event_log and by
    `endpoint` (its id) and `recipient` (text in the event's recipient, any case); returns
    (rows, the key of the next page or None)."""
    filters = []
    if endpoint is not None:
        filters.append(("d.endpoint_id = ?", (int(endpoint),)))
    if recipient is not None:
        filters.append(("instr(lower(e.recipient), lower(?)) > 0", (recipient,)))
    if after is not None:
        filters.append(("(e.received, d.seq) < (?, ?)", tuple(after)))
    sql, params = _log_query(_EVENT_LOG_SELECT, status, DELIVERY_STATUSES,
                             "COALESCE(b.status, 'queued')", "e.received", since, until,
                             "e.received DESC, d.seq DESC", limit + 1, tuple(filters))
    rows, key = _page(store.conn.execute(sql, params).fetchall(), limit, lambda r: (r[1], r[10]))
    metas = store.enrich([_load_event(row[3]) for row in rows])
    return [_event_log_row(row, meta) for row, meta in zip(rows, metas)], key


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
