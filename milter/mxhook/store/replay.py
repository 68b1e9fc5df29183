"""state.db for the admin: what ids name (`replay_items`, `event_items`), the failed deliveries
and batches of a rule or endpoint (`failed_items`), putting them back into the queue (`requeue`,
and `requeue_event` for one event of a batch: the `mxhook replay` writes, from another process
than the spooler, which notices through PRAGMA data_version or reads its open batches each
turn), and the numbers of `mxhook status` (`status_summary`). Functions over a StateStore's
connection."""
from __future__ import annotations

import json
import time
from typing import Iterable

from mxhook import spool
from mxhook.model.records import iso, to_datetime
from mxhook.model.targets import Target
from mxhook.store.logs import time_window
from mxhook.store.migrations import transaction
from mxhook.store.statedb import (BATCH_PREFIX, DELIVERY_STATUSES, LOG_STATUSES, StateStore,
                                  rule_ref)


REPLAYED = "replayed"  # reason shown while a replayed delivery/batch waits for its attempt

_ITEM_DELIVERY = (
    "SELECT d.id, d.status, d.rule_id, d.rule_name, d.target, l.received, d.last_error,"
    " d.last_status_code, d.attempts, m.raw IS NOT NULL"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    " LEFT JOIN inbound_log l ON l.id = d.id"
)
_ITEM_BATCH = (
    "SELECT b.id, b.status, b.endpoint_id, COALESCE(b.url, ep.url), b.created, b.last_error,"
    " b.last_status_code, b.attempts, b.size"
    " FROM event_batches b LEFT JOIN event_endpoints ep ON ep.id = b.endpoint_id"
)


# an event's deliveries, one per endpoint (and one more for each replay of it alone), newest last
_ITEM_EVENT = (
    "SELECT e.id, COALESCE(b.status, 'queued'), d.endpoint_id, COALESCE(ep.url, b.url), e.received,"
    " b.last_error, b.last_status_code, b.attempts, b.size, d.batch_id, d.seq"
    " FROM events e JOIN event_deliveries d ON d.event_id = e.id"
    " LEFT JOIN event_batches b ON b.id = d.batch_id"
    " LEFT JOIN event_endpoints ep ON ep.id = d.endpoint_id"
)


def _delivery_item(row) -> dict:
    target = json.loads(row[4])
    return {"id": row[0], "kind": "delivery", "status": row[1], "rule": row[3],
            "rule_id": row[2], "url": Target.from_record(target).url, "received": row[5],
            "last_error": row[6], "last_status_code": row[7], "attempts": row[8],
            "body_stored": bool(row[9]), "target": target}


def _batch_item(row) -> dict:
    return {"id": row[0], "kind": "batch", "status": row[1], "endpoint_id": row[2],
            "url": row[3], "received": row[4], "last_error": row[5],
            "last_status_code": row[6], "attempts": row[7], "size": row[8]}


def _event_item(row) -> dict:
    return {"id": row[0], "kind": "event", "status": row[1], "endpoint_id": row[2], "url": row[3],
            "received": row[4], "last_error": row[5], "last_status_code": row[6],
            "attempts": row[7], "size": 1, "batch_id": row[9], "batch_size": row[8], "seq": row[10]}


def event_items(store: StateStore, event_id: str) -> list[dict] | None:
    """The latest delivery of event `event_id` to each endpoint that took it, as items of kind
    `event` (id: the event id; status: its batch's, `queued` before it is in one; batch_id,
    batch_size: that batch; seq: the delivery row), by endpoint; None: no such event."""
    if store.conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
        return None
    latest: dict[int, dict] = {}
    for row in store.conn.execute(_ITEM_EVENT + " WHERE e.id = ? ORDER BY d.endpoint_id, d.seq",
                                  (event_id,)):
        latest[row[2]] = _event_item(row)
    return list(latest.values())


def item_key(item: dict) -> tuple:
    """What tells replay items apart: an event's delivery to each endpoint is one."""
    return item["kind"], item["id"], item.get("endpoint_id")


def replay_items(store: StateStore, ids: Iterable[str]) -> tuple[list[dict], list[str]]:
    """What the given ids name, in any status: (items, ids that name nothing). An id is a
    delivery id, an event batch id (`evb_...`), an inbound record id (its deliveries), or an
    event id (its latest delivery to each endpoint: `event_items`). Items are dicts with `kind`
    `delivery`, `batch` (see `failed_items`) or `event`."""
    items, unknown, seen = [], [], set()
    for key in ids:
        if key.startswith(BATCH_PREFIX):
            rows = [_batch_item(r) for r in store.conn.execute(
                _ITEM_BATCH + " WHERE b.id = ?", (key,))]
        else:
            rows = [_delivery_item(r) for r in store.conn.execute(
                _ITEM_DELIVERY + " WHERE d.id = ?", (key,))] or [
                _delivery_item(r) for r in store.conn.execute(
                    _ITEM_DELIVERY + " WHERE d.message_id = ? ORDER BY d.id", (key,))] or (
                event_items(store, key) or [])
        if not rows:
            unknown.append(key)
        for item in rows:
            if item_key(item) not in seen:
                seen.add(item_key(item))
                items.append(item)
    return items, unknown


def failed_items(store: StateStore, *, rule_id: int | None = None, rule_name: str | None = None,
                 endpoint_id: int | None = None, since=None, until=None) -> list[dict]:
    """Failed inbound deliveries of a rule (by id, or by the name they were accepted
    under), or failed event batches of an endpoint, oldest first; `since` (inclusive) /
    `until` (exclusive) on the message's received time (as `log inbound`) or the batch's
    creation time. Each item: id, kind, status, received, last_error, last_status_code,
    attempts, endpoint (URL), and rule, rule_id, body_stored, target (deliveries) or
    endpoint_id, size (batches)."""
    where, params = [], []
    if endpoint_id is not None:
        sql, col = _ITEM_BATCH + " WHERE b.status = 'failed' AND b.endpoint_id = ?", "b.created"
        params.append(int(endpoint_id))
    else:
        who = []
        if rule_id is not None:
            who.append("d.rule_id = ?")
            params.append(int(rule_id))
        if rule_name is not None:
            who.append("d.rule_name = ?")
            params.append(rule_name)
        if not who:
            raise ValueError("failed_items needs a rule or an endpoint")
        sql, col = _ITEM_DELIVERY + f" WHERE d.status = 'failed' AND ({' OR '.join(who)})", "l.received"
    time_window(where, params, col, since, until)
    sql += "".join(" AND " + w for w in where) + f" ORDER BY {col}, 1"
    convert = _batch_item if endpoint_id is not None else _delivery_item
    return [convert(r) for r in store.conn.execute(sql, params)]


def requeue(store: StateStore, ids: Iterable[str], *, now=None, targets: dict[str, dict] | None = None) -> list[str]:
    """Put failed deliveries and event batches back in the queue, due now, with a fresh
    retry period (first_attempt_at cleared; attempts and their history kept) and the same
    id, which is the `webhook-id`. `targets`: delivery id -> the rule's current delivery
    target, replacing the one it was accepted under. Only `failed` items whose message body
    is still stored (deliveries) or that have events (batches) are touched, in one
    transaction; returns the ids requeued. The failure streak of their rules/endpoints
    (target_health.failing_since) starts afresh too: a replay is the admin saying the
    receiver works again, and its first failure must not count the days before it."""
    at = iso(now)
    targets = targets or {}
    done = []
    with transaction(store.conn) as conn:
        for key in ids:
            if key.startswith(BATCH_PREFIX):
                n = conn.execute(
                    "UPDATE event_batches SET status = 'queued', first_attempt_at = NULL,"
                    " next_attempt_at = ?, last_error = ?, updated = ?"
                    " WHERE id = ? AND status = 'failed' AND size > 0",
                    (at, REPLAYED, at, key)).rowcount
                refs = conn.execute("SELECT 'endpoint', CAST(endpoint_id AS TEXT) FROM event_batches"
                                    " WHERE id = ?", (key,)).fetchall() if n else []
            else:
                target = targets.get(key)
                n = conn.execute(
                    "UPDATE deliveries SET status = 'queued', first_attempt_at = NULL,"
                    " next_attempt_at = ?, updated = ?, target = COALESCE(?, target)"
                    " WHERE id = ? AND status = 'failed' AND EXISTS (SELECT 1 FROM messages m"
                    " WHERE m.id = deliveries.message_id AND m.raw IS NOT NULL)",
                    (at, at, json.dumps(target) if target is not None else None, key)).rowcount
                refs = []
                if n:
                    conn.execute("UPDATE inbound_log SET status = 'queued', reason = ? WHERE id = ?",
                                 (REPLAYED, key))
                    refs = [("rule", rule_ref(*r)) for r in conn.execute(
                        "SELECT rule_id, rule_name FROM deliveries WHERE id = ?", (key,))]
            for kind, ref in refs:
                _fresh_streak(conn, kind, ref, at)
            if n:
                done.append(key)
    return done


def _fresh_streak(conn, kind: str, ref: str, at: str) -> None:
    conn.execute("UPDATE target_health SET failing_since = NULL, updated = ? WHERE kind = ? AND ref = ?",
                 (at, kind, ref))


def requeue_event(store: StateStore, item: dict, *, url: str | None = None, now=None) -> str | None:
    """A new delivery of one event (an item of `event_items`) to its endpoint, alone: a new
    batch of just that event, queued and due now, with a new id (its `webhook-id`: the
    failed batch it was in carried other events too, and keeps its own id, status and
    history, so it can still be replayed whole). Only while that delivery is still failed and
    still the event's latest to the endpoint; returns the new batch's id, or None. `url`: the
    endpoint's current URL, for the log. The endpoint's failure streak starts afresh, as for
    `requeue`."""
    at = iso(now)
    with transaction(store.conn) as conn:
        current = conn.execute(
            "SELECT b.status FROM event_deliveries d JOIN event_batches b ON b.id = d.batch_id"
            " WHERE d.seq = ? AND NOT EXISTS (SELECT 1 FROM event_deliveries x WHERE"
            " x.event_id = d.event_id AND x.endpoint_id = d.endpoint_id AND x.seq > d.seq)",
            (item["seq"],)).fetchone()
        if current is None or current[0] != "failed":
            return None
        batch_id = BATCH_PREFIX + spool.new_id()
        conn.execute(
            "INSERT INTO event_batches (id, endpoint_id, url, created, size, status, attempts,"
            " next_attempt_at, last_error, updated) VALUES (?, ?, ?, ?, 1, 'queued', 0, ?, ?, ?)",
            (batch_id, item["endpoint_id"], url, at, at, REPLAYED, at))
        conn.execute("INSERT INTO event_deliveries (endpoint_id, event_id, added, batch_id)"
                     " VALUES (?, ?, ?, ?)",
                     (item["endpoint_id"], item["id"], to_datetime(at).timestamp(), batch_id))
        _fresh_streak(conn, "endpoint", str(item["endpoint_id"]), at)
    return batch_id


# status ---------------------------------------------------------------------------------------
def status_summary(store: StateStore, now=None, window: float = 3600.0) -> dict:
    """Numbers for `mxhook status`:

    - pending: inbound deliveries queued or deferred (and the oldest one's received time),
      events waiting for an endpoint, in a batch or not yet (and since when the oldest
      waits), open batches;
    - last_hour: inbound log rows and event deliveries by status, for mail/events of the
      last `window` seconds (`since`);
    - rules: rule_ref -> {pending, deferred, failed, oldest_pending};
    - endpoints: endpoint id -> {pending, deferred, failed_batches, oldest_pending}.
    """
    now_dt = to_datetime(time.time() if now is None else now)
    since = iso(now_dt.timestamp() - window)
    conn = store.conn
    rules: dict[str, dict] = {}
    inbound_pending, inbound_oldest = 0, None
    for rule_id, rule_name, status, n, oldest in conn.execute(
        "SELECT d.rule_id, d.rule_name, d.status, count(*), min(l.received) FROM deliveries d"
        " LEFT JOIN inbound_log l ON l.id = d.id WHERE d.status IN ('queued', 'deferred', 'failed')"
        " GROUP BY d.rule_id, d.rule_name, d.status"
    ):
        entry = rules.setdefault(rule_ref(rule_id, rule_name), {
            "pending": 0, "deferred": 0, "failed": 0, "oldest_pending": None})
        if status == "failed":
            entry["failed"] += n
            continue
        entry["pending"] += n
        if status == "deferred":
            entry["deferred"] += n
        entry["oldest_pending"] = _min_time(entry["oldest_pending"], oldest)
        inbound_pending += n
        inbound_oldest = _min_time(inbound_oldest, oldest)
    endpoints: dict[int, dict] = {}

    def ep(endpoint_id: int) -> dict:
        return endpoints.setdefault(endpoint_id, {
            "pending": 0, "deferred": 0, "failed_batches": 0, "oldest_pending": None})

    events_pending, events_oldest = 0, None
    for endpoint_id, n, added in conn.execute(
        "SELECT endpoint_id, count(*), min(added) FROM event_deliveries WHERE batch_id IS NULL"
        " GROUP BY endpoint_id"
    ):
        e = ep(endpoint_id)
        e["pending"] += n
        e["oldest_pending"] = _min_time(e["oldest_pending"], iso(added))
        events_pending += n
        events_oldest = _min_time(events_oldest, iso(added))
    open_batches = 0
    for endpoint_id, status, n, size, created in conn.execute(
        "SELECT endpoint_id, status, count(*), sum(size), min(created) FROM event_batches"
        " WHERE status IN ('queued', 'deferred', 'failed') GROUP BY endpoint_id, status"
    ):
        e = ep(endpoint_id)
        if status == "failed":
            e["failed_batches"] += n
            continue
        open_batches += n
        e["pending"] += size
        if status == "deferred":
            e["deferred"] += size
        e["oldest_pending"] = _min_time(e["oldest_pending"], created)
        events_pending += size
        events_oldest = _min_time(events_oldest, created)
    # a range of the (status, received) index per status: a GROUP BY status scanned all of it
    inbound_hour = {status: conn.execute(
        "SELECT count(*) FROM inbound_log WHERE status = ? AND received >= ?", (status, since)
    ).fetchone()[0] for status in LOG_STATUSES}
    events_hour = dict.fromkeys(DELIVERY_STATUSES, 0)
    for status, n in conn.execute(
        "SELECT COALESCE(b.status, 'queued'), count(*) FROM events e"
        " CROSS JOIN event_deliveries d ON d.event_id = e.id"  # the hour's events first
        " LEFT JOIN event_batches b ON b.id = d.batch_id WHERE e.received >= ? GROUP BY 1", (since,)
    ):
        events_hour[status] = n
    return {
        "pending": {"inbound": inbound_pending, "inbound_oldest": inbound_oldest,
                    "events": events_pending, "events_oldest": events_oldest,
                    "open_batches": open_batches},
        "last_hour": {"since": since, "inbound": inbound_hour, "events": events_hour},
        "rules": rules,
        "endpoints": endpoints,
    }


def _min_time(a: str | None, b: str | None) -> str | None:
    """The earlier of two stored times (None = unknown)."""
    return b if a is None else a if b is None else min(a, b)
