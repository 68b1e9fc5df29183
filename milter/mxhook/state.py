"""state.db: what the spooler owns — ingested messages, the delivery queue, attempts, logs.

Only the spooler writes (from one thread); the CLI reads. WAL mode lets readers run while the
spooler writes.

Durability. The spooler unlinks a spool file right after the transaction that ingested it
commits, so that commit is the only copy of an accepted message from then on. In WAL mode
`synchronous=NORMAL` does not fsync the WAL at commit (only at checkpoints): after a power
loss or kernel crash the last commits may be gone while the unlink (a journaled metadata
change) survived — accepted mail lost. So the connection runs with `synchronous=FULL`, which
fsyncs the WAL on every commit. The cost is one fsync per transaction: ingest is batched (up to
`ingest_batch` files per transaction) and attempt results of a dispatch round are written in
one transaction too (`record_attempts`), so this is a handful of fsyncs per second at most, far
below the cost of the HTTP requests themselves.

Times are stored as fixed-width ISO 8601 UTC text with microseconds and a `Z`
(`2026-11-22T12:00:00.123456Z`), so they are readable in `sqlite3` and compare correctly as
text (indexes on them work for range queries).

Schema
------
- `messages(id PK, received, meta JSON, raw BLOB, raw_size, ingested)`: one row per inbound
  record; `raw` is set to NULL once every delivery of the message succeeded (a failed delivery
  keeps it, so the dead letter can be replayed).
- `deliveries(id PK = "<record id>-<rule name>", message_id, rule_id, rule_name, target JSON,
  recipients JSON, status, attempts, first_attempt_at, next_attempt_at, last_error,
  last_status_code, updated)`; status is queued / deferred / succeeded / failed. The id is also
  the `webhook-id` header, stable across retries and restarts.
- `attempts(id PK, delivery_id, at, outcome, status_code, error, duration_ms, response_excerpt)`.
- `inbound_log(id PK, kind, record_id, received, status, header_from, rcpt_to, host_name,
  message_id, filter_name, reason, mail_from, client_addr, queue_id, recipients JSON, subject)`:
  one row per delivery (id = delivery id, kind "delivery", status kept equal to
  deliveries.status in the same transaction) and one per denied record (id = record id,
  kind "denied", status "denied").
- `events(id PK, received, meta JSON, payload BLOB, ingested)`: event records, stored raw for a
  later issue.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import sqlite_utils

from . import spool

DELIVERY_STATUSES = ("queued", "deferred", "succeeded", "failed")
LOG_STATUSES = DELIVERY_STATUSES + ("denied",)
OUTCOMES = ("succeeded", "deferred", "failed")
LOG_KEYS = ("id", "received", "status", "from", "to", "hostName", "messageId", "filterName", "reason")

_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class RecordError(ValueError):
    """A spool record that decoded but whose metadata cannot be ingested; says why."""


# ---------------------------------------------------------------------------------------------
# Time helpers

def to_datetime(value) -> datetime:
    """datetime (naive = UTC), epoch seconds, or ISO 8601 text (`Z` or offset; naive = UTC;
    a bare date means its midnight) -> aware UTC datetime."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    else:
        raise TypeError(f"not a time: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iso(value=None) -> str:
    """The stored form of a time (default: now)."""
    dt = datetime.now(timezone.utc) if value is None else to_datetime(value)
    return dt.strftime(_ISO_FORMAT)


# ---------------------------------------------------------------------------------------------
# Records -> rows

def check_record(record: spool.Record) -> None:
    """Raise RecordError when a decoded record's metadata cannot be ingested, so the spooler
    can move that one file to bad/ instead of failing the whole batch."""
    meta = record.meta
    if not record.id or not isinstance(record.id, str):
        raise RecordError("record id is empty or not a string")
    if "received" in meta:
        try:
            to_datetime(meta["received"])
        except (ValueError, TypeError) as exc:
            raise RecordError(f"bad 'received': {exc}") from None
    if record.kind == "inbound":
        deliveries = meta.get("deliveries")
        if not isinstance(deliveries, list) or not deliveries:
            raise RecordError("inbound record without a 'deliveries' list")
        names = set()
        for i, entry in enumerate(deliveries):
            if not isinstance(entry, dict):
                raise RecordError(f"deliveries[{i}] is not an object")
            target = entry.get("rule")
            if not isinstance(target, dict) or not target.get("name") or not target.get("endpoint"):
                raise RecordError(f"deliveries[{i}] has no rule with a name and an endpoint")
            recipients = entry.get("recipients")
            if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
                raise RecordError(f"deliveries[{i}].recipients is not a list of addresses")
            if target["name"] in names:
                raise RecordError(f"rule {target['name']!r} appears twice in deliveries")
            names.add(target["name"])
    elif record.kind == "denied":
        recipients = meta.get("recipients", [])
        if not isinstance(recipients, list):
            raise RecordError("denied record: 'recipients' is not a list")


def delivery_id(record_id: str, rule_name: str) -> str:
    return f"{record_id}-{rule_name}"


def _from(meta: dict) -> str:
    return meta.get("header_from") or meta.get("mail_from") or ""


# ---------------------------------------------------------------------------------------------
# What the spooler gets and gives back

@dataclass
class DueDelivery:
    """A delivery due for an attempt, with everything needed to render and post it."""

    id: str
    message_id: str
    rule_name: str
    target: dict
    recipients: list[str]
    attempts: int
    first_attempt_at: str | None
    status: str
    received: str
    meta: dict
    raw: bytes | None


@dataclass
class AttemptRecord:
    """One finished attempt, and the delivery state it leads to.

    `outcome` is what the attempt itself came to (http.Outcome.status); `status` is the
    delivery's new status (a deferred outcome after the retry period becomes `failed`);
    `next_attempt_at` is set for status `deferred`. `reason` (default: `error`) is what the
    inbound log shows."""

    delivery_id: str
    at: str
    outcome: str
    status: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    response_excerpt: str | None = None
    next_attempt_at: str | None = None
    reason: str | None = field(default=None)


# ---------------------------------------------------------------------------------------------

class StateStore:
    def __init__(self, path: str):
        self.path = path
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE explicitly
        # (see _write), so a transaction is exactly what the code says it is.
        # check_same_thread=False: a store may be opened on one thread and used on another
        # (the spooler builds it before its loop runs); it is still used by one thread at a time.
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA busy_timeout = 30000")
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous = FULL")  # see the module docstring
        conn.execute("PRAGMA foreign_keys = ON")
        self._create()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # schema -----------------------------------------------------------------------------
    def _create(self) -> None:
        db = self.db
        db["messages"].create(
            {"id": str, "received": str, "meta": str, "raw": bytes, "raw_size": int, "ingested": str},
            pk="id", not_null={"received", "meta", "ingested"}, if_not_exists=True,
        )
        db["deliveries"].create(
            {
                "id": str, "message_id": str, "rule_id": int, "rule_name": str, "target": str,
                "recipients": str, "status": str, "attempts": int, "first_attempt_at": str,
                "next_attempt_at": str, "last_error": str, "last_status_code": int, "updated": str,
            },
            pk="id", not_null={"message_id", "rule_name", "target", "recipients", "status", "attempts", "updated"},
            defaults={"attempts": 0}, foreign_keys=[("message_id", "messages", "id")], if_not_exists=True,
        )
        db["attempts"].create(
            {
                "id": int, "delivery_id": str, "at": str, "outcome": str, "status_code": int,
                "error": str, "duration_ms": int, "response_excerpt": str,
            },
            pk="id", not_null={"delivery_id", "at", "outcome"},
            foreign_keys=[("delivery_id", "deliveries", "id")], if_not_exists=True,
        )
        db["inbound_log"].create(
            {
                "id": str, "kind": str, "record_id": str, "received": str, "status": str,
                "header_from": str, "rcpt_to": str, "host_name": str, "message_id": str,
                "filter_name": str, "reason": str, "mail_from": str, "client_addr": str,
                "queue_id": str, "recipients": str, "subject": str,
            },
            pk="id", not_null={"kind", "record_id", "received", "status"}, if_not_exists=True,
        )
        db["events"].create(
            {"id": str, "received": str, "meta": str, "payload": bytes, "ingested": str},
            pk="id", not_null={"meta", "ingested"}, if_not_exists=True,
        )
        # due-delivery lookup: WHERE status IN (queued, deferred) AND next_attempt_at <= now
        db["deliveries"].create_index(["status", "next_attempt_at"], if_not_exists=True)
        db["deliveries"].create_index(["message_id"], if_not_exists=True)
        db["attempts"].create_index(["delivery_id", "at"], if_not_exists=True)
        # log queries: newest first, optionally by status
        db["inbound_log"].create_index(["received"], if_not_exists=True)
        db["inbound_log"].create_index(["status", "received"], if_not_exists=True)

    # ingest -----------------------------------------------------------------------------
    def ingest(self, records: list[spool.Record], *, now=None) -> int:
        """Insert spool records in one transaction; returns how many were new. Re-ingesting a
        record is harmless (INSERT OR IGNORE on its id). Raises RecordError (and writes nothing)
        when a record fails `check_record`; `event` records are stored raw."""
        for record in records:
            check_record(record)
        at = iso(now)
        new = 0
        with self._write() as conn:
            for record in records:
                if record.kind == "inbound":
                    new += self._ingest_inbound(conn, record, at)
                elif record.kind == "denied":
                    new += self._ingest_denied(conn, record)
                elif record.kind == "event":
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO events (id, received, meta, payload, ingested)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (record.id, iso(record.meta["received"]) if "received" in record.meta else None,
                         json.dumps(record.meta), record.payload, at),
                    )
                    new += cur.rowcount
        return new

    def _ingest_inbound(self, conn: sqlite3.Connection, record: spool.Record, at: str) -> int:
        meta = record.meta
        received = iso(meta.get("received") or at)
        cur = conn.execute(
            "INSERT OR IGNORE INTO messages (id, received, meta, raw, raw_size, ingested)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, received, json.dumps(meta), record.payload, len(record.payload), at),
        )
        if cur.rowcount == 0:
            return 0
        for entry in meta["deliveries"]:
            target = entry["rule"]
            recipients = entry["recipients"]
            did = delivery_id(record.id, target["name"])
            conn.execute(
                "INSERT OR IGNORE INTO deliveries (id, message_id, rule_id, rule_name, target,"
                " recipients, status, attempts, next_attempt_at, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
                (did, record.id, target.get("id"), target["name"], json.dumps(target),
                 json.dumps(recipients), at, at),
            )
            conn.execute(
                "INSERT OR IGNORE INTO inbound_log (id, kind, record_id, received, status,"
                " header_from, rcpt_to, host_name, message_id, filter_name, reason, mail_from,"
                " client_addr, queue_id, recipients, subject)"
                " VALUES (?, 'delivery', ?, ?, 'queued', ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (did, record.id, received, _from(meta), ", ".join(recipients),
                 meta.get("client_name"), meta.get("message_id"), target["name"],
                 meta.get("mail_from"), meta.get("client_addr"), meta.get("queue_id"),
                 json.dumps(recipients), meta.get("subject")),
            )
        return 1

    def _ingest_denied(self, conn: sqlite3.Connection, record: spool.Record) -> int:
        meta = record.meta
        recipients = [str(r) for r in meta.get("recipients") or []]
        cur = conn.execute(
            "INSERT OR IGNORE INTO inbound_log (id, kind, record_id, received, status,"
            " header_from, rcpt_to, host_name, message_id, filter_name, reason, mail_from,"
            " client_addr, queue_id, recipients, subject)"
            " VALUES (?, 'denied', ?, ?, 'denied', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.id, iso(meta.get("received")), _from(meta), ", ".join(recipients),
             meta.get("client_name"), meta.get("message_id"), meta.get("filter"), meta.get("reason"),
             meta.get("mail_from"), meta.get("client_addr"), meta.get("queue_id"),
             json.dumps(recipients), meta.get("subject")),
        )
        return cur.rowcount

    # delivery queue ---------------------------------------------------------------------
    def due(self, now=None, limit: int = 100, *, exclude: Iterable[str] = ()) -> list[DueDelivery]:
        """Deliveries (queued or deferred) whose next attempt time has come, earliest first,
        leaving out the ids in `exclude` (those already in flight)."""
        exclude = set(exclude)
        if limit <= 0:
            return []
        rows = self.conn.execute(
            "SELECT d.id, d.message_id, d.rule_name, d.target, d.recipients, d.attempts,"
            " d.first_attempt_at, d.status, m.received, m.meta, m.raw"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            " WHERE d.status IN ('queued', 'deferred') AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (iso(now), limit + len(exclude)),
        ).fetchall()
        out = []
        for row in rows:
            if row[0] in exclude:
                continue
            out.append(DueDelivery(
                id=row[0], message_id=row[1], rule_name=row[2], target=json.loads(row[3]),
                recipients=json.loads(row[4]), attempts=row[5], first_attempt_at=row[6],
                status=row[7], received=row[8], meta=json.loads(row[9]), raw=row[10],
            ))
            if len(out) >= limit:
                break
        return out

    def next_due_at(self) -> str | None:
        """When the earliest pending delivery is due (None when nothing is pending)."""
        row = self.conn.execute(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status IN ('queued', 'deferred')"
        ).fetchone()
        return row[0]

    def record_attempt(self, delivery_id: str, **fields) -> None:
        """Record one attempt (fields as in AttemptRecord) in its own transaction."""
        self.record_attempts([AttemptRecord(delivery_id=delivery_id, **fields)])

    def record_attempts(self, results: Iterable[AttemptRecord]) -> None:
        """Record finished attempts in one transaction: the attempt row, the delivery's new
        status, its inbound_log row (same status), and drop the message's raw bytes once all of
        its deliveries succeeded."""
        results = list(results)
        if not results:
            return
        for r in results:
            if r.outcome not in OUTCOMES or r.status not in DELIVERY_STATUSES:
                raise ValueError(f"bad attempt result for {r.delivery_id}: {r.outcome}/{r.status}")
        with self._write() as conn:
            for r in results:
                row = conn.execute("SELECT message_id FROM deliveries WHERE id = ?", (r.delivery_id,)).fetchone()
                if row is None:
                    continue  # removed meanwhile (e.g. by retention); nothing to record against
                message_id = row[0]
                conn.execute(
                    "INSERT INTO attempts (delivery_id, at, outcome, status_code, error, duration_ms,"
                    " response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r.delivery_id, r.at, r.outcome, r.status_code, r.error, r.duration_ms, r.response_excerpt),
                )
                conn.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                    " first_attempt_at = COALESCE(first_attempt_at, ?), next_attempt_at = ?,"
                    " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
                    (r.status, r.at, r.next_attempt_at if r.status == "deferred" else None,
                     r.error, r.status_code, r.at, r.delivery_id),
                )
                conn.execute(
                    "UPDATE inbound_log SET status = ?, reason = ? WHERE id = ?",
                    (r.status, r.reason if r.reason is not None else r.error, r.delivery_id),
                )
                if r.status == "succeeded":
                    conn.execute(
                        "UPDATE messages SET raw = NULL WHERE id = ? AND raw IS NOT NULL AND NOT EXISTS"
                        " (SELECT 1 FROM deliveries WHERE message_id = ? AND status != 'succeeded')",
                        (message_id, message_id),
                    )

    # queries ----------------------------------------------------------------------------
    _LOG_SELECT = (
        "SELECT id, received, status, header_from, rcpt_to, host_name, message_id, filter_name,"
        " reason, mail_from, client_addr, queue_id, recipients, subject, kind, record_id"
        " FROM inbound_log"
    )

    @staticmethod
    def _log_row(row) -> dict:
        return dict(zip(LOG_KEYS, row[:9]))

    def inbound_log(self, status: str | None = None, since=None, until=None, limit: int | None = 100) -> list[dict]:
        """Log rows newest first; `since` (inclusive) and `until` (exclusive) filter on the
        received time and are ISO 8601 text, datetimes or epoch seconds (naive = UTC)."""
        where, params = [], []
        if status is not None:
            if status not in LOG_STATUSES:
                raise ValueError(f"status must be one of {', '.join(LOG_STATUSES)}")
            where.append("status = ?")
            params.append(status)
        if since is not None:
            where.append("received >= ?")
            params.append(iso(since))
        if until is not None:
            where.append("received < ?")
            params.append(iso(until))
        sql = self._LOG_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._log_row(row) for row in self.conn.execute(sql, params)]

    def inbound_detail(self, id: str) -> dict | None:  # noqa: A002 - the API's name
        """One log row with envelope details and its attempts (oldest first). `id` is a
        delivery id or a denied record's id; a bare inbound record id finds its first
        delivery."""
        row = self.conn.execute(self._LOG_SELECT + " WHERE id = ?", (id,)).fetchone()
        if row is None:
            row = self.conn.execute(
                self._LOG_SELECT + " WHERE record_id = ? ORDER BY id LIMIT 1", (id,)
            ).fetchone()
        if row is None:
            return None
        detail = self._log_row(row)
        detail.update(
            mail_from=row[9], client_addr=row[10], queue_id=row[11],
            recipients=json.loads(row[12]) if row[12] else [], subject=row[13], kind=row[14],
            record_id=row[15],
        )
        attempts = self.conn.execute(
            "SELECT at, status_code, error, duration_ms, outcome FROM attempts"
            " WHERE delivery_id = ? ORDER BY at, id", (detail["id"],),
        ).fetchall()
        detail["attempts"] = [
            {"at": a[0], "status_code": a[1], "error": a[2], "duration_ms": a[3], "outcome": a[4]}
            for a in attempts
        ]
        drow = self.conn.execute(
            "SELECT attempts, next_attempt_at, first_attempt_at, rule_id FROM deliveries WHERE id = ?",
            (detail["id"],),
        ).fetchone()
        if drow is not None:
            detail.update(attempt_count=drow[0], next_attempt_at=drow[1], first_attempt_at=drow[2], rule_id=drow[3])
        return detail

    def delivery(self, id: str) -> dict | None:  # noqa: A002
        """A deliveries row as a dict (target and recipients decoded), for tools and tests."""
        rows = list(self.db.query("SELECT * FROM deliveries WHERE id = ?", [id]))
        if not rows:
            return None
        row = rows[0]
        row["target"] = json.loads(row["target"])
        row["recipients"] = json.loads(row["recipients"])
        return row

    def counts(self) -> dict:
        """Numbers for `mxhook status`: deliveries by status, denied log rows, messages (and how
        many still hold their raw bytes), events, and when the next pending delivery is due."""
        conn = self.conn
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
            "next_due_at": self.next_due_at(),
        }
