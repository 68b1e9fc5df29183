"""state.db for /metrics: the reads a scrape makes besides `mxhook status`'s
(store.replay.status_summary). Each is a range over a time index or over the few rows of a
failing target, so a scrape costs the same on a state.db of a million log rows as on a small
one (bench/api.py measures it)."""
from __future__ import annotations

from mxhook.model.records import iso
from mxhook.store.statedb import StateStore


def accepted_since(store: StateStore, since) -> int:
    """Messages the milter accepted (spooled: `messages`) that were received since `since`;
    its denials are the inbound log's (store.replay.status_summary) and, counted only,
    store.logs.unlogged_denials."""
    return store.conn.execute("SELECT count(*) FROM messages WHERE received >= ?",
                              (iso(since),)).fetchone()[0]


def rule_failures_since(store: StateStore, rule_id: int | None, rule_name: str, since: str) -> int:
    """Attempts at a rule's deliveries since `since`, its health's `failing_since`: all of them
    failed, as a success ends the failing spell (delivery.health)."""
    which, key = ("d.rule_id = ?", rule_id) if rule_id is not None else (
        "d.rule_id IS NULL AND d.rule_name = ?", rule_name)  # as statedb.rule_ref names it
    return store.conn.execute(
        "SELECT count(*) FROM deliveries d JOIN attempts a ON a.delivery_id = d.id"
        f" WHERE d.status IN ('queued', 'deferred', 'failed') AND {which} AND a.at >= ?",
        (key, since)).fetchone()[0]


def endpoint_failures_since(store: StateStore, endpoint_id: int, since: str) -> int:
    """The same for an event endpoint's batches."""
    return store.conn.execute(
        "SELECT count(*) FROM event_batches b JOIN event_attempts a ON a.batch_id = b.id"
        " WHERE b.status IN ('queued', 'deferred', 'failed') AND b.endpoint_id = ? AND a.at >= ?",
        (endpoint_id, since)).fetchone()[0]
