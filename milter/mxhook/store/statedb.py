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
below the cost of the HTTP requests themselves. The spooler's checkpoints (copying the WAL
into the database file) run on a thread of their own (`checkpoint_in_background`).

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
- `events(id PK, received, meta JSON, payload BLOB, ingested, type, queue_id, recipient,
  block_state, message_id)`: one row per event record (id = event id; `received` = the event's
  time `at`; `meta` = the event as `events.Event.to_dict()` wrote it). `block_state` is
  `pending` for a hard bounce the spooler has still to put on the block list, `done` after.
  `message_id` is the join key of DSN events (indexed for `queued` events); a DSN event is
  stored only when it names a recipient of a message we sent (`_unsent_report`). A recipient-less
  `failed` (expiry) is stored as it came and expanded into one `failed` per open recipient.
- `event_deliveries(seq INTEGER PK, endpoint_id, event_id, added, batch_id)`: the fan-out,
  one row per (event, endpoint whose categories include the event's type), `seq` = arrival
  order, `added` = epoch seconds when it became pending. `batch_id` NULL = pending, not yet in a
  batch.
- `event_batches(id PK = "evb_<...>", endpoint_id, url, created, size, status, attempts,
  first_attempt_at, next_attempt_at, last_error, last_status_code, updated)`: a batch is one
  POST; its membership (the event_deliveries rows pointing to it) is fixed when it is created,
  its id is the `webhook-id`, stable across retries and restarts. Status queued / deferred /
  succeeded / failed, as for inbound deliveries. At most one open (queued or deferred) batch per
  endpoint, so batches go out in order.
- `event_attempts(id PK, batch_id, at, outcome, status_code, error, duration_ms,
  response_excerpt)`.
- `event_endpoints(id PK, url, updated)`: the endpoints' URLs as last seen by the spooler, so the
  event log can name the endpoint of old deliveries (rules.db belongs to the admin).
- `target_health(kind, ref, name, failing_since, last_success, last_failure, last_error,
  last_status_code, disabled_at, disabled_reason, updated; PK (kind, ref))`: per rule (`kind`
  rule, `ref` = `rule_ref`: the rule id) and per event endpoint (`endpoint`, its id): since when
  its attempts fail without a success in between (`[spooler] disable_after_days`), and when
  and why the spooler disabled it (410 Gone, continuous failure). Written with the attempts,
  in their transaction; read by `mxhook status`.

Replay: `requeue(ids)` puts failed deliveries/batches back to `queued` with the same id (the
`webhook-id`) and a fresh retry period; the CLI (`mxhook replay`, another process) writes
through it, and the spooler notices through `PRAGMA data_version`.
"""
from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import sqlite_utils

from mxhook.model import events as events_mod
from mxhook import spool
from mxhook.store.rulesdb import _create_file as create_private_file
from mxhook.model.headers import normalize_address
from mxhook.model.targets import Target
from mxhook.payloads import events as event_payloads

DELIVERY_STATUSES = ("queued", "deferred", "succeeded", "failed")
LOG_STATUSES = DELIVERY_STATUSES + ("denied",)
OUTCOMES = ("succeeded", "deferred", "failed")
LOG_KEYS = ("id", "received", "status", "from", "to", "hostName", "messageId", "filterName", "reason")
EVENT_LOG_KEYS = ("received", "status", "hostName", "endpointUrl", "reason")
# Fields a log-derived event takes from the `queued` event of its message when it lacks them.
ENRICH_FIELDS = ("sender", "header_from", "message_id", "subject", "client_addr", "auth_user")
BATCH_PREFIX = "evb_"
REPLAYED = "replayed"  # reason shown while a replayed delivery/batch waits for its attempt
_IN_CHUNK = 500  # host parameters per IN (...) query
# Decoded events kept after ingest, so a batch made soon after does not parse them again from
# state.db (the hot path); older ones are read back. Bounded: memory does not grow with a backlog.
RECENT_EVENTS = 10_000
IGNORED_NAMED = 5  # addresses named in the log line of an ignored delivery-status report

_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Background checkpoints (StateStore.checkpoint_in_background): how often, and the WAL size in
# pages at which the writer checkpoints itself after all (the checkpoint thread is stuck or
# behind), so the WAL stays bounded (~40 MB) whatever happens to that thread.
CHECKPOINT_INTERVAL = 0.5
WRITER_CHECKPOINT_PAGES = 10_000

log = logging.getLogger(__name__)


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


_STORED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _check_time(value) -> None:
    """ValueError/TypeError unless `value` is a time to_datetime understands (the stored form,
    which every mxhook writer uses, is recognized without parsing). A number too large for a
    datetime (datetime raises OverflowError or OSError EOVERFLOW for those) is a ValueError too,
    so that callers need to catch only ValueError/TypeError."""
    if isinstance(value, str) and _STORED_TIME.fullmatch(value):
        return
    try:
        to_datetime(value)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"time out of range: {value!r} ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Records -> rows

def check_record(record: spool.Record) -> None:
    """Raise RecordError when a decoded record's metadata cannot be ingested, so the spooler
    can move that one record to bad/ instead of failing the whole batch."""
    meta = record.meta
    if not record.id or not isinstance(record.id, str):
        raise RecordError("record id is empty or not a string")
    if "received" in meta:
        try:
            _check_time(meta["received"])
        except (ValueError, TypeError) as exc:
            raise RecordError(f"bad 'received': {exc}") from None
    if record.kind in ("inbound", "denied"):
        _check_text(meta, _LOGGED_TEXT, f"{record.kind} record")
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
            for key in ("name", "endpoint"):
                if not isinstance(target[key], str):
                    raise RecordError(f"deliveries[{i}].rule.{key} is not a string: "
                                      f"{type(target[key]).__name__}")
            rule_id = target.get("id")
            if rule_id is not None and (not isinstance(rule_id, int) or isinstance(rule_id, bool)):
                raise RecordError(f"deliveries[{i}].rule.id is not an integer: {type(rule_id).__name__}")
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
    elif record.kind == "event":
        etype = meta.get("type")
        if etype not in events_mod.TYPES:
            raise RecordError(f"event record of unknown type {etype!r} "
                              f"(known: {', '.join(events_mod.TYPES)})")
        at = meta.get("at")
        if at is not None and at != meta.get("received"):  # `received` was checked above
            try:
                _check_time(at)
            except (ValueError, TypeError) as exc:
                raise RecordError(f"bad 'at': {exc}") from None
        _check_text(meta, ("recipient", "orig_recipient", "queue_id") + ENRICH_FIELDS, "event")
        if meta.get("custom_headers") is not None and not isinstance(meta["custom_headers"], dict):
            raise RecordError("event 'custom_headers' is not an object")


# Metadata of inbound and denied records that goes into inbound_log columns as it is.
_LOGGED_TEXT = ("queue_id", "mail_from", "client_addr", "client_name", "header_from", "subject",
                "message_id", "filter", "reason")


def _check_text(meta: dict, keys: tuple[str, ...], what: str) -> None:
    """These fields are text or absent: anything else (an object, a list) would fail the batch
    when bound to a column, or the payload when rendered."""
    for key in keys:
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{what} {key!r} is not a string: {type(value).__name__}")


def delivery_id(record_id: str, rule_name: str) -> str:
    return f"{record_id}-{rule_name}"


def rule_ref(rule_id, rule_name: str | None) -> str:
    """How target_health names a rule: its rules.db id (stable across renames), or
    `name:<name>` for a delivery target without an id (rule names cannot hold a colon)."""
    return str(rule_id) if rule_id is not None else f"name:{rule_name}"


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
    target: Target  # the one it was accepted under (or given by a replay)
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

    delivery_id: str  # of a delivery, or of an event batch (BATCH_PREFIX)
    at: str
    outcome: str
    status: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    response_excerpt: str | None = None
    next_attempt_at: str | None = None
    reason: str | None = field(default=None)


@dataclass
class EventBatch:
    """An event batch (one POST to one endpoint); `events` is filled by `batch_events`."""

    id: str
    endpoint_id: int
    status: str
    attempts: int
    first_attempt_at: str | None
    next_attempt_at: str | None
    size: int
    created: str
    events: list[dict] = field(default_factory=list)


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


def enrich_event(event: dict, queued: dict | None) -> dict:
    """Fill the message fields an event lacks from its message's `queued` event (in place);
    an event joined by Message-ID (a DSN report's) also gets the queue id."""
    if queued is None:
        return event
    for key in ENRICH_FIELDS:
        if not event.get(key) and queued.get(key):
            event[key] = queued[key]
    if not event.get("custom_headers") and queued.get("custom_headers"):
        event["custom_headers"] = dict(queued["custom_headers"])
    if not event.get("queue_id") and queued.get("queue_id"):
        event["queue_id"] = queued["queue_id"]
    return event


def _needs_enrichment(event: dict) -> bool:
    """A non-`queued` event with a join key (queue id, else Message-ID) that lacks a message
    field."""
    if event.get("type") == "queued":
        return False
    if event.get("queue_id"):
        return not event.get("custom_headers") or any(not event.get(k) for k in ENRICH_FIELDS)
    return bool(event.get("message_id"))  # no queue id of ours (DSN report): join by Message-ID


def _pick_queued(candidates: list[tuple[str, dict]], at: str | None) -> dict | None:
    """The `queued` event an event belongs to, among those with its queue id (short queue ids
    are reused): the latest one not after the event, else the earliest."""
    if not candidates:
        return None
    before = [c for c in candidates if at is None or c[0] <= at]
    return (max(before, key=lambda c: c[0]) if before else min(candidates, key=lambda c: c[0]))[1]


def _address(value) -> str:
    return normalize_address(value) if isinstance(value, str) else ""


def _pick_by_message_id(candidates: list[tuple[str, dict]], event: dict) -> dict | None:
    """The `queued` event of an event joined by Message-ID: a message has one queued event per
    recipient, so the one of the event's recipient when there is one; else as _pick_queued."""
    wanted = {_address(event.get("recipient")), _address(event.get("orig_recipient"))} - {""}
    same = [c for c in candidates if _address(c[1].get("recipient")) in wanted]
    return _pick_queued(same or candidates, event.get("at"))


class _RecentQueued:
    """The `queued` events stored most recently (at most `size`, oldest dropped first), by
    queue id and by Message-ID: the log-derived events of a message usually come soon after
    its queued event, and find it here instead of parsing it again from state.db."""

    COLUMNS = ("queue_id", "message_id")

    def __init__(self, size: int):
        self.size = size
        self._order: collections.deque = collections.deque()
        self._index: dict[str, dict[str, list[tuple[str, dict]]]] = {c: {} for c in self.COLUMNS}

    def add(self, received: str, event: dict) -> None:
        entry = (received, event)
        self._order.append(entry)
        for column, index in self._index.items():
            key = event.get(column)
            if key:
                index.setdefault(key, []).append(entry)
        while len(self._order) > self.size:
            self._drop(self._order.popleft())

    def _drop(self, entry: tuple[str, dict]) -> None:
        for column, index in self._index.items():
            key = entry[1].get(column)
            found = index.get(key) if key else None
            if found:
                if found[0] is entry:  # the oldest of its key, as a rule
                    del found[0]
                else:
                    found[:] = [e for e in found if e is not entry]
                if not found:
                    del index[key]

    def get(self, column: str, key: str, at: str | None) -> list[tuple[str, dict]] | None:
        """The candidates for an event at `at`, if one of them is not after it (else the event
        may belong to an older queued event of a reused queue id: ask state.db)."""
        found = self._index[column].get(key)
        if found and any(at is None or c[0] <= at for c in found):
            return found
        return None


def _takes_v1_utc(endpoints: list) -> bool:
    """Whether an enabled endpoint takes version-1 bodies in UTC: the form events are rendered
    in at ingest (for other zones or versions that would be work done twice)."""
    return any(getattr(ep, "enabled", True) and getattr(ep, "version", None) in (None, 1)
               and event_payloads.zone(getattr(ep, "timezone", "UTC")) is timezone.utc
               for ep in endpoints)


def _load_event(text: str) -> dict:
    """A stored event. Events are stored with the spool file's metadata line as it was written,
    which also carries the record's `kind` and `payload_size`: those are left out."""
    event = json.loads(text)
    event.pop("kind", None)
    event.pop("payload_size", None)
    return event


ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=16)
def _values_sql(head: str, width: int, count: int) -> str:
    return head + " VALUES " + ", ".join(["(" + ", ".join("?" * width) + ")"] * count)


def _insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple]) -> None:
    """`head` ("INSERT INTO t (columns)") for every row, ROWS_PER_INSERT rows per statement.
    executemany runs a statement per row and lets go of the GIL for each: with another thread
    busy in Python, waiting to get it back made the event flow's inserts take twice as long as
    their CPU time. Multi-row statements also cost a quarter less CPU (a microbenchmark of
    1,000-event transactions: 10.8 against 14.3 µs a row)."""
    if not rows:
        return
    width = len(rows[0])
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    if full:
        sql = _values_sql(head, width, ROWS_PER_INSERT)
        for start in range(0, full, ROWS_PER_INSERT):
            conn.execute(sql, list(itertools.chain.from_iterable(rows[start:start + ROWS_PER_INSERT])))
    if full < len(rows):
        conn.executemany(_values_sql(head, width, 1), rows[full:])


def _chunks(items: list, size: int = _IN_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---------------------------------------------------------------------------------------------

def _time_window(where: list[str], params: list, col: str, since, until) -> None:
    """Add `since <= col < until` (either end optional) to a WHERE clause being built."""
    if since is not None:
        where.append(f"{col} >= ?")
        params.append(iso(since))
    if until is not None:
        where.append(f"{col} < ?")
        params.append(iso(until))


def _log_query(select: str, status: str | None, statuses: tuple[str, ...], status_expr: str,
               time_col: str, since, until, order: str, limit: int | None) -> tuple[str, list]:
    """A log listing: `select` filtered by status and a [since, until) time window, ordered,
    limited. Times are ISO 8601 text, datetimes or epoch seconds (naive = UTC)."""
    where, params = [], []
    if status is not None:
        if status not in statuses:
            raise ValueError(f"status must be one of {', '.join(statuses)}")
        where.append(f"{status_expr} = ?")
        params.append(status)
    _time_window(where, params, time_col, since, until)
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


class _Checkpointer:
    """A thread that runs PASSIVE checkpoints on its own connection: they never block the
    writer or readers, and copy whatever is committed when they start."""

    def __init__(self, path: str, interval: float):
        self.interval = interval
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL, then the database
        self._stopped = threading.Event()
        self._last_error = ""
        self.error: sqlite3.Error | None = None  # the last checkpoint's, for the owner to judge
        self._thread = threading.Thread(target=self._run, name="mxhook-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._last_error = ""
                self.error = None
            except sqlite3.Error as exc:  # the writer checkpoints itself meanwhile
                self.error = exc
                if str(exc) != self._last_error:
                    log.warning("background checkpoint of state.db failed: %s", exc)
                self._last_error = str(exc)
        self._conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class StateStore:
    def __init__(self, path: str):
        self.path = path
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE explicitly
        # (see _write), so a transaction is exactly what the code says it is.
        # check_same_thread=False: a store may be opened on one thread and used on another
        # (the spooler builds it before its loop runs); it is still used by one thread at a time.
        # It holds message bodies and delivery credentials: created 0640 like rules.db (SQLite
        # gives the -wal/-shm files the database file's mode), whatever the umask.
        create_private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA busy_timeout = 30000")
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous = FULL")  # see the module docstring
        conn.execute("PRAGMA foreign_keys = ON")
        self._recent: dict[str, dict] = {}  # event id -> event dict, oldest first
        self._recent_queued = _RecentQueued(RECENT_EVENTS)
        self._pending_queued: list[tuple[str, dict]] = []
        # (Message-ID, why) -> addresses of delivery-status report events refused at ingest
        self._ignored_reports: dict[tuple[str, str], list[str]] = {}
        # hard bounces marked for the block list by this store (the spooler looks for pending
        # ones only when this moved, and once at start)
        self.hard_bounces_ingested = 0
        self._checkpointer: _Checkpointer | None = None
        self._create()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.conn.close()

    @property
    def checkpoint_error(self) -> sqlite3.Error | None:
        """What the background checkpoint last failed with (None: it succeeded, or none runs).
        That thread only logs it: a damaged file is for the owner of this store to act on."""
        return self._checkpointer.error if self._checkpointer is not None else None

    def checkpoint_in_background(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Copy the WAL back into state.db from a thread of its own (own connection) every
        `interval` seconds instead of in the commit that crosses SQLite's 1,000 pages. The
        copying and its fsync then overlap with this connection's work instead of stalling it
        (the spooler's ingest: ~4 % of the event flow). This connection still checkpoints at
        WRITER_CHECKPOINT_PAGES, should that thread fall behind."""
        if self._checkpointer is None:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
            self._checkpointer = _Checkpointer(self.path, interval)

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
            {"id": str, "received": str, "meta": str, "payload": bytes, "ingested": str,
             "type": str, "queue_id": str, "recipient": str, "block_state": str,
             "message_id": str},
            pk="id", not_null={"meta", "ingested"}, if_not_exists=True,
        )
        self._upgrade_events()
        db["event_deliveries"].create(
            {"seq": int, "endpoint_id": int, "event_id": str, "added": float, "batch_id": str},
            pk="seq", not_null={"endpoint_id", "event_id", "added"}, if_not_exists=True,
        )
        db["event_batches"].create(
            {
                "id": str, "endpoint_id": int, "url": str, "created": str, "size": int,
                "status": str, "attempts": int, "first_attempt_at": str, "next_attempt_at": str,
                "last_error": str, "last_status_code": int, "updated": str,
            },
            pk="id", not_null={"endpoint_id", "created", "size", "status", "attempts", "updated"},
            if_not_exists=True,
        )
        db["event_attempts"].create(
            {
                "id": int, "batch_id": str, "at": str, "outcome": str, "status_code": int,
                "error": str, "duration_ms": int, "response_excerpt": str,
            },
            pk="id", not_null={"batch_id", "at", "outcome"}, if_not_exists=True,
        )
        db["event_endpoints"].create(
            {"id": int, "url": str, "updated": str}, pk="id", if_not_exists=True,
        )
        db["target_health"].create(
            {"kind": str, "ref": str, "name": str, "failing_since": str, "last_success": str,
             "last_failure": str, "last_error": str, "last_status_code": int, "disabled_at": str,
             "disabled_reason": str, "updated": str},
            pk=("kind", "ref"), not_null={"kind", "ref", "updated"}, if_not_exists=True,
        )
        # due-delivery lookup: WHERE status IN (queued, deferred) AND next_attempt_at <= now
        db["deliveries"].create_index(["status", "next_attempt_at"], if_not_exists=True)
        db["deliveries"].create_index(["message_id"], if_not_exists=True)
        db["attempts"].create_index(["delivery_id", "at"], if_not_exists=True)
        # log queries: newest first, optionally by status
        db["inbound_log"].create_index(["received"], if_not_exists=True)
        db["inbound_log"].create_index(["status", "received"], if_not_exists=True)
        # events: enrichment (queued event by queue id), the log (newest first), hard bounces
        # still to be block-listed
        db["events"].create_index(["queue_id", "type"], if_not_exists=True)
        db.execute("CREATE INDEX IF NOT EXISTS events_queued_message_id ON events(message_id)"
                   " WHERE type = 'queued'")
        db["events"].create_index(["received"], if_not_exists=True)
        db.execute("CREATE INDEX IF NOT EXISTS events_block_pending ON events(block_state)"
                   " WHERE block_state = 'pending'")
        # pending per endpoint in arrival order (batch_id IS NULL), and a batch's members
        db["event_deliveries"].create_index(["endpoint_id", "batch_id", "seq"], if_not_exists=True)
        db["event_deliveries"].create_index(["event_id"], if_not_exists=True)
        db["event_batches"].create_index(["status", "endpoint_id"], if_not_exists=True)
        db["event_attempts"].create_index(["batch_id", "at"], if_not_exists=True)

    def _upgrade_events(self) -> None:
        """state.db files from before the event side stored event records raw: add the event
        columns and fill them from the stored JSON (such old events are history: not fanned
        out)."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(events)")}
        missing = [c for c in ("type", "queue_id", "recipient", "block_state", "message_id")
                   if c not in have]
        if not missing:
            return
        with self._write() as conn:
            for column in missing:
                conn.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
            conn.execute(
                "UPDATE events SET type = json_extract(meta, '$.type'),"
                " queue_id = json_extract(meta, '$.queue_id'),"
                " recipient = json_extract(meta, '$.recipient') WHERE type IS NULL"
            )
            if "message_id" in missing:  # the join key of DSN events (only queued ones matter)
                conn.execute("UPDATE events SET message_id = json_extract(meta, '$.message_id')"
                             " WHERE type = 'queued'")

    # ingest -----------------------------------------------------------------------------
    def ingest(self, records: list[spool.Record], *, now=None, endpoints: Iterable = (),
               block_hard_bounces: bool = False, checked: bool = False,
               raw_meta: dict[str, str] | None = None) -> int:
        """Insert spool records in one transaction; returns how many were new. Re-ingesting a
        record is harmless (INSERT OR IGNORE on its id). Raises RecordError (and writes nothing)
        when a record fails `check_record`.

        `event` records are fanned out to `endpoints` (endpoints.Endpoint objects; disabled
        ones are skipped): one event_deliveries row per endpoint whose categories include the
        event's type. With `block_hard_bounces`, a hard `bounced` event is marked for the
        block list (`pending_blocks`). `checked`: the caller ran check_record on each record
        already (the spooler does, file by file, to quarantine bad ones). `raw_meta`: record id
        -> the record's metadata as JSON text (the spool file's line), stored as it is instead of
        serializing `meta` again."""
        if not checked:
            for record in records:
                check_record(record)
        at = iso(now)
        added = time.time() if now is None else to_datetime(now).timestamp()
        endpoints = list(endpoints)
        fanout = self._fanout(endpoints)
        new = 0
        self._pending_recent, self._pending_queued = {}, []
        self._ignored_reports = {}
        with self._write() as conn:
            events = []
            for record in records:
                if record.kind == "inbound":
                    new += self._ingest_inbound(conn, record, at)
                elif record.kind == "denied":
                    new += self._ingest_denied(conn, record)
                elif record.kind == "event":
                    text = raw_meta.get(record.id) if raw_meta else None
                    events.append((record.id, record.meta, record.payload, text))
            if events:
                new += self._insert_events(conn, events, at, added, fanout, block_hard_bounces,
                                           verify_reports=True)
        self._remember(render=_takes_v1_utc(endpoints))
        for (message_id, why), addresses in self._ignored_reports.items():
            named = ", ".join(map(ascii, addresses[:IGNORED_NAMED]))
            if len(addresses) > IGNORED_NAMED:  # a report may name thousands: one line stays short
                named += f" and {len(addresses) - IGNORED_NAMED} more"
            log.warning("ignored a delivery-status report for Message-ID %s naming %s: %s;"
                        " no event, no block-list entry", ascii(message_id) if message_id else "(none)",
                        named, why)
        return new

    @staticmethod
    def _fanout(endpoints: Iterable) -> list[tuple[int, frozenset]]:
        return [(ep.id, ep.types) for ep in endpoints if getattr(ep, "enabled", True)]

    def _insert_events(self, conn: sqlite3.Connection, events: list[tuple], at: str,
                       added: float, fanout: list[tuple[int, frozenset]], block: bool,
                       *, verify_reports: bool = False) -> int:
        """Insert (id, meta, payload, meta as JSON text or None) events; fan the new ones out.
        Returns how many were new.

        With `verify_reports` (spool records), an event of a delivery-status report that is
        not about a recipient of a message we sent is left out (`_unsent_report`) and noted in
        `_ignored_reports`.

        A `failed` event without a recipient (an expiry the log follower saw without the
        recipients) is stored as it came, and applied to every recipient of its queue id that
        has no final event yet: one `failed` event per such recipient is stored and fanned out
        instead (`_expand_expiry`). Only when no `queued` event of that queue id is known is the
        recipient-less event itself fanned out."""
        # Which are new: one query per chunk, then multi-row inserts (per-row execute calls
        # cost more than the inserts themselves).
        known: set[str] = set()
        ids = [e[0] for e in events]
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            known.update(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk))
        rows: list[tuple] = []
        deliveries = []
        recent = self._pending_recent
        inserted = 0

        def flush() -> None:
            nonlocal inserted
            if rows:
                _insert_rows(conn, "INSERT INTO events (id, received, meta, payload, ingested, type,"
                             " queue_id, recipient, block_state, message_id)", rows)
                inserted += len(rows)
                rows.clear()

        def add(event_id: str, meta: dict, payload, text: str | None, fan: bool = True) -> str:
            etype = meta.get("type")
            when = meta.get("at") or meta.get("received")
            # events.Event times are already in the stored form; others are normalized
            received = when if events_mod.is_stored_time(when) else iso(when or at)
            # the block list takes the address the application used (orig_to, else to)
            pending = "pending" if (block and etype == "bounced" and meta.get("bounce_type") == "hard"
                                    and (meta.get("orig_recipient") or meta.get("recipient"))) else None
            rows.append((event_id, received, text or json.dumps(meta, ensure_ascii=False), payload,
                         at, etype, meta.get("queue_id"), meta.get("recipient"), pending,
                         meta.get("message_id")))
            if pending:
                self.hard_bounces_ingested += 1
            if etype == "queued":
                self._pending_queued.append((received, meta))
            wanted = False
            for endpoint_id, types in fanout if fan else ():
                if etype in types:
                    deliveries.append((endpoint_id, event_id, added))
                    wanted = True
            if wanted:
                recent[event_id] = meta
            return received

        for event_id, meta, payload, text in events:
            if event_id in known:
                continue
            known.add(event_id)  # the same id twice in one call: stored once
            if verify_reports and meta.get("source") == "dsn":
                flush()  # the queued events before it in this call count as sent
                why = self._unsent_report(conn, meta)
                if why:
                    address = meta.get("orig_recipient") or meta.get("recipient") or ""
                    self._ignored_reports.setdefault((meta.get("message_id") or "", why), []).append(address)
                    continue
            if meta.get("type") == "failed" and not meta.get("recipient") and meta.get("queue_id"):
                flush()  # the events before it in this call count as known
                received = add(event_id, meta, payload, text, fan=False)
                expanded = self._expand_expiry(conn, event_id, meta, received)
                if expanded is None:
                    rows.pop()
                    add(event_id, meta, payload, text)
                    continue
                for xid, xmeta in expanded:
                    if xid not in known:
                        known.add(xid)
                        add(xid, xmeta, b"", None)
                continue
            add(event_id, meta, payload, text)
        flush()
        if deliveries:
            _insert_rows(conn, "INSERT INTO event_deliveries (endpoint_id, event_id, added)", deliveries)
        return inserted

    @staticmethod
    def _unsent_report(conn: sqlite3.Connection, meta: dict) -> str | None:
        """Why an event of a delivery-status report (source `dsn`) must be ignored, or None
        when it is about mail we sent: its Message-ID must be that of a `queued` event (the
        milter writes those only for outbound mail) and the address it names (the one the
        block list would take) a recipient of that message. Anyone can send us a report, with
        any Message-ID and any address in it."""
        message_id = meta.get("message_id")
        if not message_id:
            return "the report names no Message-ID of the returned message"
        recipients = {_address(r) for (r,) in conn.execute(
            "SELECT recipient FROM events WHERE type = 'queued' AND message_id = ?", (message_id,))}
        if not recipients:
            return "no message with that Message-ID was sent from here"
        if _address(meta.get("orig_recipient") or meta.get("recipient")) not in recipients - {""}:
            return "not a recipient of the message with that Message-ID"
        return None

    # How far before the latest `queued` event of a queue id the queued events of the same
    # message may lie (the milter writes them all at end of message, microseconds apart).
    _MESSAGE_WINDOW_S = 60.0

    def _expand_expiry(self, conn: sqlite3.Connection, event_id: str, meta: dict,
                       received: str) -> list[tuple[str, dict]] | None:
        """The per-recipient `failed` events a recipient-less expiry stands for: one per
        recipient of the message (its `queued` events: the latest ones of that queue id not
        after the expiry, short queue ids being reused) that has no final event (succeeded,
        bounced, failed) yet. None when no queued event of the queue id is known."""
        qid = meta["queue_id"]
        queued = conn.execute(
            "SELECT received, recipient FROM events WHERE queue_id = ? AND type = 'queued'"
            " AND received <= ? ORDER BY received, id", (qid, received),
        ).fetchall()
        if not queued:
            return None
        start = iso(to_datetime(queued[-1][0]).timestamp() - self._MESSAGE_WINDOW_S)
        recipients = list(dict.fromkeys(r for t, r in queued if t >= start and r))
        final = set()
        for rcpt, orig in conn.execute(
            "SELECT recipient, json_extract(meta, '$.orig_recipient') FROM events"
            " WHERE queue_id = ? AND type IN ('succeeded', 'bounced', 'failed')"
            " AND received >= ? AND received <= ? AND recipient IS NOT NULL",
            (qid, start, received),
        ):
            final.update({_address(rcpt), _address(orig)})
        try:
            at_us = int(event_id[:16], 16) // 1000
        except ValueError:
            at_us = events_mod.us_from_iso(received)
        out = []
        for rcpt in recipients:
            if _address(rcpt) in final:
                continue
            xmeta = {**meta, "recipient": rcpt, "orig_recipient": None}
            xid = events_mod.event_id(at_us, "expired", event_id, rcpt)
            xmeta["id"] = xid
            out.append((xid, xmeta))
        return out

    def _remember(self, *, render: bool) -> None:
        """Keep freshly stored events for batch_events and enrich (after their transaction
        committed). With `render` (an endpoint takes version 1 in UTC), a fanned-out event
        whose message fields are at hand is kept rendered (payloads.events.V1Text, a third of
        the memory of the dict): batches are then made without parsing or rendering it again."""
        for received, event in self._pending_queued:
            self._recent_queued.add(received, event)
        cache = self._recent
        for event_id, event in self._pending_recent.items():
            event.setdefault("id", event_id)
            if not render or (_needs_enrichment(event) and not self._enrich_from_recent(event)):
                cache[event_id] = event  # enriched and rendered when its batch is made
                continue
            cache[event_id] = event_payloads.v1_text(event)
        excess = len(cache) - RECENT_EVENTS
        if excess > 0:
            for key in list(itertools.islice(cache, excess)):
                del cache[key]

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
    @staticmethod
    def _skip_rules(skip_rules: Iterable[int]) -> tuple[str, list]:
        """SQL (and parameters) leaving out deliveries of the rules with these ids."""
        skip = sorted({int(r) for r in skip_rules})
        if not skip:
            return "", []
        return f" AND (d.rule_id IS NULL OR d.rule_id NOT IN ({', '.join('?' * len(skip))}))", skip

    def due(self, now=None, limit: int = 100, *, exclude: Iterable[str] = (),
            skip_rules: Iterable[int] = ()) -> list[DueDelivery]:
        """Deliveries (queued or deferred) whose next attempt time has come, earliest first,
        leaving out the ids in `exclude` (those already in flight) and the deliveries of the
        rules whose ids are in `skip_rules` (disabled rules: their deliveries wait)."""
        exclude = set(exclude)
        if limit <= 0:
            return []
        skip_sql, skip_params = self._skip_rules(skip_rules)
        rows = self.conn.execute(
            "SELECT d.id, d.message_id, d.rule_name, d.target, d.recipients, d.attempts,"
            " d.first_attempt_at, d.status, m.received, m.meta, m.raw"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            " WHERE d.status IN ('queued', 'deferred') AND d.next_attempt_at <= ?" + skip_sql +
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            [iso(now), *skip_params, limit + len(exclude)],
        ).fetchall()
        out = []
        for row in rows:
            if row[0] in exclude:
                continue
            out.append(DueDelivery(
                id=row[0], message_id=row[1], rule_name=row[2],
                target=Target.from_record(json.loads(row[3])),
                recipients=json.loads(row[4]), attempts=row[5], first_attempt_at=row[6],
                status=row[7], received=row[8], meta=json.loads(row[9]), raw=row[10],
            ))
            if len(out) >= limit:
                break
        return out

    def next_due_at(self, *, skip_rules: Iterable[int] = ()) -> str | None:
        """When the earliest pending delivery is due (None when nothing is pending), leaving
        out the deliveries of the rules in `skip_rules`."""
        skip_sql, skip_params = self._skip_rules(skip_rules)
        row = self.conn.execute(
            "SELECT min(d.next_attempt_at) FROM deliveries d WHERE d.status IN ('queued', 'deferred')"
            + skip_sql, skip_params,
        ).fetchone()
        return row[0]

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: moves when another connection (the CLI's `replay`)
        committed a change, so the spooler knows to look at the queue again."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def record_attempt(self, delivery_id: str, **fields) -> None:
        """Record one attempt (fields as in AttemptRecord) in its own transaction."""
        self.record_attempts([AttemptRecord(delivery_id=delivery_id, **fields)])

    def record_attempts(self, results: Iterable[AttemptRecord]) -> None:
        """Record finished attempts of deliveries and event batches (told apart by their id:
        a batch id starts with BATCH_PREFIX) in one transaction: the attempt row, the new
        status of the delivery or batch, and its rule's or endpoint's health. For a delivery
        also its inbound_log row (same status), and the message's raw bytes are dropped once
        all of its deliveries succeeded."""
        results = list(results)
        if not results:
            return
        for r in results:
            if r.outcome not in OUTCOMES or r.status not in DELIVERY_STATUSES:
                raise ValueError(f"bad attempt result for {r.delivery_id}: {r.outcome}/{r.status}")
        with self._write() as conn:
            for r in results:
                if r.delivery_id.startswith(BATCH_PREFIX):
                    self._record_batch_attempt(conn, r)
                else:
                    self._record_delivery_attempt(conn, r)

    def _record_delivery_attempt(self, conn: sqlite3.Connection, r: AttemptRecord) -> None:
        row = conn.execute("SELECT message_id, rule_id, rule_name FROM deliveries WHERE id = ?",
                           (r.delivery_id,)).fetchone()
        if row is None:
            return  # removed meanwhile (e.g. by retention); nothing to record against
        message_id = row[0]
        self._note_health(conn, "rule", rule_ref(row[1], row[2]), row[2], r)
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

    def _record_batch_attempt(self, conn: sqlite3.Connection, r: AttemptRecord) -> None:
        row = conn.execute("SELECT b.endpoint_id, COALESCE(ep.url, b.url) FROM event_batches b"
                           " LEFT JOIN event_endpoints ep ON ep.id = b.endpoint_id"
                           " WHERE b.id = ?", (r.delivery_id,)).fetchone()
        if row is not None:
            self._note_health(conn, "endpoint", str(row[0]), row[1], r)
        conn.execute(
            "INSERT INTO event_attempts (batch_id, at, outcome, status_code, error,"
            " duration_ms, response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (r.delivery_id, r.at, r.outcome, r.status_code, r.error, r.duration_ms,
             r.response_excerpt),
        )
        conn.execute(
            "UPDATE event_batches SET status = ?, attempts = attempts + 1,"
            " first_attempt_at = COALESCE(first_attempt_at, ?), next_attempt_at = ?,"
            " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
            (r.status, r.at, r.next_attempt_at if r.status == "deferred" else None,
             r.reason if r.reason is not None else r.error, r.status_code, r.at,
             r.delivery_id),
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
        sql, params = _log_query(self._LOG_SELECT, status, LOG_STATUSES, "status", "received",
                                 since, until, "received DESC, id DESC", limit)
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
        """Totals for tools and tests (`mxhook status` uses status_summary): deliveries by
        status, denied log rows, messages (and how many still hold their raw bytes), events, and
        when the next pending delivery is due."""
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

    # events: enrichment ------------------------------------------------------------------
    def enrich(self, events: list[dict]) -> list[dict]:
        """Fill the message fields (Message-ID, Subject, sender, custom headers, ...) of
        log-derived events from the `queued` event with the same queue id, in place; events
        without a queue id of ours (from a returned DSN report) are joined by Message-ID and
        also get the queue id. Whichever of the two arrived first, this runs when a batch is
        rendered and when an event is shown, so both orders give the same result."""
        wanting = [e for e in events if _needs_enrichment(e)]
        if not wanting:
            return events
        # The queued event is usually in the same batch, just before: look there first.
        local: dict[str, list[tuple[str, dict]]] = {}
        local_mid: dict[str, list[tuple[str, dict]]] = {}
        for e in events:
            if e.get("type") == "queued":
                if e.get("queue_id"):
                    local.setdefault(e["queue_id"], []).append((e.get("at") or "", e))
                if e.get("message_id"):
                    local_mid.setdefault(e["message_id"], []).append((e.get("at") or "", e))
        rest, rest_mid = [], []
        for e in wanting:
            at = e.get("at")
            if e.get("queue_id"):
                found = local.get(e["queue_id"])
                if found and any(at is None or c[0] <= at for c in found):
                    enrich_event(e, _pick_queued(found, at))
                else:
                    rest.append(e)
            else:
                found = local_mid.get(e["message_id"])
                if found and any(at is None or c[0] <= at for c in found):
                    enrich_event(e, _pick_by_message_id(found, e))
                else:
                    rest_mid.append(e)
        # Then among the queued events stored lately, then in state.db.
        stored = [e for e in rest if not self._enrich_from_recent(e)]
        stored_mid = [e for e in rest_mid if not self._enrich_from_recent(e)]
        queued = self._queued_events("queue_id", sorted({e["queue_id"] for e in stored}))
        for e in stored:
            enrich_event(e, _pick_queued(queued.get(e["queue_id"], []), e.get("at")))
        by_mid = self._queued_events("message_id", sorted({e["message_id"] for e in stored_mid}))
        for e in stored_mid:
            enrich_event(e, _pick_by_message_id(by_mid.get(e["message_id"], []), e))
        return events

    def _enrich_from_recent(self, event: dict) -> bool:
        """Enrich an event (that needs it) from its queued event in the recent index (by queue
        id, else by Message-ID); False when the index has no candidate for it."""
        qid, at = event.get("queue_id"), event.get("at")
        if qid:
            found = self._recent_queued.get("queue_id", qid, at)
            if found:
                enrich_event(event, _pick_queued(found, at))
        else:
            found = self._recent_queued.get("message_id", event["message_id"], at)
            if found:
                enrich_event(event, _pick_by_message_id(found, event))
        return bool(found)

    def _queued_events(self, column: str, keys: list[str]) -> dict[str, list[tuple[str, dict]]]:
        """`queued` events whose `column` (queue_id or message_id) is one of `keys`:
        key -> [(received, event)]."""
        assert column in ("queue_id", "message_id")
        out: dict[str, list[tuple[str, dict]]] = {}
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            for key, received, meta in self.conn.execute(
                f"SELECT {column}, received, meta FROM events WHERE {column} IN ({marks})"
                " AND type = 'queued'", chunk,
            ):
                out.setdefault(key, []).append((received, _load_event(meta)))
        return out

    # events: batches ---------------------------------------------------------------------
    _BATCH_COLUMNS = "id, endpoint_id, status, attempts, first_attempt_at, next_attempt_at, size, created"

    def open_batches(self) -> dict[int, EventBatch]:
        """endpoint id -> its open (queued or deferred) batch."""
        out = {}
        for row in self.conn.execute(
            f"SELECT {self._BATCH_COLUMNS} FROM event_batches"
            " WHERE status IN ('queued', 'deferred') ORDER BY created, id"
        ):
            out.setdefault(row[1], EventBatch(*row))
        return out

    def batch(self, batch_id: str) -> EventBatch | None:
        row = self.conn.execute(
            f"SELECT {self._BATCH_COLUMNS} FROM event_batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return EventBatch(*row) if row else None

    def pending_stats(self, endpoint_id: int, cap: int) -> tuple[int, float | None]:
        """(number of pending events not yet in a batch, counted up to `cap`; when the oldest
        of them became pending, epoch seconds, or None)."""
        return self.conn.execute(
            "SELECT count(*), min(added) FROM (SELECT added FROM event_deliveries"
            " WHERE endpoint_id = ? AND batch_id IS NULL ORDER BY seq LIMIT ?)",
            (endpoint_id, int(cap)),
        ).fetchone()

    def create_batch(self, endpoint_id: int, max_events: int, now=None, *, url: str | None = None,
                     batch_id: str | None = None) -> EventBatch | None:
        """Freeze the oldest pending events of an endpoint (at most `max_events`, in arrival
        order) into a new queued batch, due now. None when nothing is pending."""
        at = iso(now)
        batch_id = batch_id or BATCH_PREFIX + spool.new_id()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO event_batches (id, endpoint_id, url, created, size, status, attempts,"
                " next_attempt_at, updated) VALUES (?, ?, ?, ?, 0, 'queued', 0, ?, ?)",
                (batch_id, endpoint_id, url, at, at, at),
            )
            size = conn.execute(
                "UPDATE event_deliveries SET batch_id = ? WHERE seq IN (SELECT seq FROM"
                " event_deliveries WHERE endpoint_id = ? AND batch_id IS NULL ORDER BY seq LIMIT ?)",
                (batch_id, endpoint_id, int(max_events)),
            ).rowcount
            if size == 0:
                conn.execute("DELETE FROM event_batches WHERE id = ?", (batch_id,))
                return None
            conn.execute("UPDATE event_batches SET size = ? WHERE id = ?", (size, batch_id))
        return self.batch(batch_id)

    def batch_events(self, batch: EventBatch, *, rendered: bool = False) -> list[dict]:
        """The events of a batch in arrival order, as stored, enriched (see `enrich`). With
        `rendered`, events rendered at ingest come as payloads.events.V1Text (for
        render_events), the others as dicts."""
        ids = [r[0] for r in self.conn.execute(
            "SELECT event_id FROM event_deliveries WHERE endpoint_id = ? AND batch_id = ? ORDER BY seq",
            (batch.endpoint_id, batch.id),
        )]
        recent = self._recent
        if not rendered:
            recent = {i: recent[i] for i in ids if i in recent and not isinstance(recent[i], str)}
        missing = [i for i in ids if i not in recent]
        loaded: dict[str, dict] = {}
        for chunk in _chunks(missing):
            marks = ", ".join("?" * len(chunk))
            for event_id, meta in self.conn.execute(
                f"SELECT id, meta FROM events WHERE id IN ({marks})", chunk
            ):
                loaded[event_id] = _load_event(meta)
        events = []
        for event_id in ids:
            event = recent.get(event_id) or loaded.get(event_id)
            if event is None:  # removed meanwhile (retention): nothing to send
                continue
            if not isinstance(event, str):
                event.setdefault("id", event_id)
            events.append(event)
        self.enrich([e for e in events if not isinstance(e, str)])
        return events

    def sync_endpoints(self, endpoints: Iterable, now=None) -> None:
        """Remember the endpoints' URLs (for the event log)."""
        at = iso(now)
        rows = [(ep.id, ep.url, at) for ep in endpoints]
        with self._write() as conn:
            for endpoint_id, url, at in rows:
                conn.execute(
                    "INSERT INTO event_endpoints (id, url, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET url = excluded.url, updated = excluded.updated"
                    " WHERE url IS NOT excluded.url",
                    (endpoint_id, url, at),
                )

    def fail_removed_endpoints(self, existing: Iterable[int], now=None) -> int:
        """Events still pending (or in an open batch) for endpoints that no longer exist are
        marked failed; returns how many events that concerned."""
        existing = set(existing)
        at = iso(now)
        # candidates: endpoints with an open batch, and every endpoint the spooler has known
        # (sync_endpoints runs before anything is fanned out to a new one)
        gone = {r[0] for r in self.conn.execute(
            "SELECT DISTINCT endpoint_id FROM event_batches WHERE status IN ('queued', 'deferred')")}
        for (endpoint_id,) in self.conn.execute("SELECT id FROM event_endpoints"):
            if endpoint_id not in existing and self.conn.execute(
                "SELECT 1 FROM event_deliveries WHERE endpoint_id = ? AND batch_id IS NULL LIMIT 1",
                (endpoint_id,),
            ).fetchone():
                gone.add(endpoint_id)
        gone -= existing
        reason = "endpoint removed"
        count = 0
        with self._write() as conn:
            for endpoint_id in sorted(gone):
                count += conn.execute(
                    "SELECT count(*) FROM event_deliveries d JOIN event_batches b ON b.id = d.batch_id"
                    " WHERE d.endpoint_id = ? AND b.status IN ('queued', 'deferred')", (endpoint_id,),
                ).fetchone()[0]
                conn.execute(
                    "UPDATE event_batches SET status = 'failed', next_attempt_at = NULL,"
                    " last_error = ?, updated = ? WHERE endpoint_id = ? AND status IN ('queued', 'deferred')",
                    (reason, at, endpoint_id),
                )
                batch_id = BATCH_PREFIX + spool.new_id()
                conn.execute(
                    "INSERT INTO event_batches (id, endpoint_id, created, size, status, attempts,"
                    " last_error, updated) VALUES (?, ?, ?, 0, 'failed', 0, ?, ?)",
                    (batch_id, endpoint_id, at, reason, at),
                )
                size = conn.execute(
                    "UPDATE event_deliveries SET batch_id = ? WHERE endpoint_id = ? AND batch_id IS NULL",
                    (batch_id, endpoint_id),
                ).rowcount
                if size:
                    conn.execute("UPDATE event_batches SET size = ? WHERE id = ?", (size, batch_id))
                else:
                    conn.execute("DELETE FROM event_batches WHERE id = ?", (batch_id,))
                count += size
        return count

    # events: hard bounces -> block list ----------------------------------------------------
    def pending_blocks(self, limit: int = 500) -> list[dict]:
        """Hard-bounce events not yet put on the block list (oldest first), enriched."""
        events = []
        for event_id, meta in self.conn.execute(
            "SELECT id, meta FROM events WHERE block_state = 'pending' ORDER BY received, id LIMIT ?",
            (int(limit),),
        ):
            event = _load_event(meta)
            event["id"] = event_id
            events.append(event)
        return self.enrich(events)

    def finish_blocks(self, done: list[tuple[str, dict | None]], *, now=None,
                      endpoints: Iterable = ()) -> int:
        """Mark hard bounces as handled; each may bring its `registered` event (an event dict
        with an `id`), which is stored and fanned out like an ingested one, in the same
        transaction. Returns how many registered events were new."""
        at = iso(now)
        added = time.time() if now is None else to_datetime(now).timestamp()
        endpoints = list(endpoints)
        fanout = self._fanout(endpoints)
        events = [(e["id"], e, b"", None) for _, e in done if e is not None]
        self._pending_recent, self._pending_queued = {}, []
        with self._write() as conn:
            new = self._insert_events(conn, events, at, added, fanout, False) if events else 0
            conn.executemany("UPDATE events SET block_state = 'done' WHERE id = ?",
                             [(event_id,) for event_id, _ in done])
        self._remember(render=_takes_v1_utc(endpoints))
        return new

    # events: log ---------------------------------------------------------------------------
    _EVENT_LOG_SELECT = (
        "SELECT e.id, e.received, COALESCE(b.status, 'queued'), e.meta, d.endpoint_id,"
        " COALESCE(b.url, ep.url), b.last_error, d.batch_id, e.type, e.recipient"
        " FROM event_deliveries d JOIN events e ON e.id = d.event_id"
        " LEFT JOIN event_batches b ON b.id = d.batch_id"
        " LEFT JOIN event_endpoints ep ON ep.id = d.endpoint_id"
    )

    @staticmethod
    def _event_log_row(row, meta: dict | None = None) -> dict:
        meta = _load_event(row[3]) if meta is None else meta
        return {
            "id": row[0], "received": row[1], "status": row[2], "hostName": event_host(meta),
            "endpointUrl": row[5], "reason": row[6], "type": row[8], "recipient": row[9],
            "endpointId": row[4], "batchId": row[7], "messageId": meta.get("message_id"),
        }

    def event_log(self, status: str | None = None, since=None, until=None,
                  limit: int | None = 100) -> list[dict]:
        """One row per (event, endpoint) delivery, newest event first, with the keys of
        EVENT_LOG_KEYS plus id (the event id), type, recipient, endpointId, batchId, messageId.
        `status` is the delivery's: queued (pending or in a batch not yet tried), deferred,
        succeeded, failed. `since` (inclusive) / `until` (exclusive) filter on the event time."""
        sql, params = _log_query(self._EVENT_LOG_SELECT, status, DELIVERY_STATUSES,
                                 "COALESCE(b.status, 'queued')", "e.received", since, until,
                                 "e.received DESC, d.seq DESC", limit)
        rows = self.conn.execute(sql, params).fetchall()
        metas = self.enrich([_load_event(row[3]) for row in rows])
        return [self._event_log_row(row, meta) for row, meta in zip(rows, metas)]

    def event_detail(self, event_id: str) -> dict | None:
        """An event (enriched) with its deliveries, each with its batch's attempts."""
        row = self.conn.execute(
            "SELECT id, received, meta, ingested FROM events WHERE id = ?", (event_id,)
        ).fetchone()
        if row is None:
            return None
        event = _load_event(row[2])
        event["id"] = row[0]
        self.enrich([event])
        deliveries = []
        for r in self.conn.execute(self._EVENT_LOG_SELECT + " WHERE d.event_id = ? ORDER BY d.seq",
                                   (event_id,)):
            entry = self._event_log_row(r)
            batch = self.batch(entry["batchId"]) if entry["batchId"] else None
            entry["attempts"] = [
                {"at": a[0], "outcome": a[1], "status_code": a[2], "error": a[3], "duration_ms": a[4]}
                for a in self.conn.execute(
                    "SELECT at, outcome, status_code, error, duration_ms FROM event_attempts"
                    " WHERE batch_id = ? ORDER BY at, id", (entry["batchId"],),
                )
            ] if batch else []
            entry["batchSize"] = batch.size if batch else None
            entry["nextAttemptAt"] = batch.next_attempt_at if batch else None
            deliveries.append(entry)
        return {"id": row[0], "received": row[1], "ingested": row[3], "event": event,
                "hostName": event_host(event), "deliveries": deliveries}

    def event_counts(self) -> dict:
        """Pending (not yet batched) event deliveries and batches by status."""
        by_status = dict.fromkeys(DELIVERY_STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, count(*) FROM event_batches GROUP BY status"):
            by_status[status] = n
        pending = self.conn.execute(
            "SELECT count(*) FROM event_deliveries WHERE batch_id IS NULL").fetchone()[0]
        return {"pending": pending, "batches": by_status}

    # health: per rule and endpoint, failing since when, disabled by whom ---------------------
    _HEALTH_KEYS = ("kind", "ref", "name", "failing_since", "last_success", "last_failure",
                    "last_error", "last_status_code", "disabled_at", "disabled_reason", "updated")

    @staticmethod
    def _note_health(conn: sqlite3.Connection, kind: str, ref: str, name: str | None,
                     r: AttemptRecord) -> None:
        """Fold one attempt into its rule's or endpoint's health row (in the caller's
        transaction): a success ends a failure streak; a failure starts one unless a later
        success is already recorded (results of one round may come in any order)."""
        row = conn.execute("SELECT failing_since, last_success, last_failure FROM target_health"
                           " WHERE kind = ? AND ref = ?", (kind, ref)).fetchone()
        failing, success, failure = row or (None, None, None)
        if r.outcome == "succeeded":
            success = max(success or "", r.at)
            if failing is not None and failing <= r.at:
                failing = None
            error_sql, params = "", []
        else:
            if failing is None and (success is None or r.at >= success):
                failing = r.at
            failure = max(failure or "", r.at)
            error_sql = ", last_error = ?, last_status_code = ?"
            params = [r.error or r.reason, r.status_code]
        conn.execute("INSERT OR IGNORE INTO target_health (kind, ref, updated) VALUES (?, ?, ?)",
                     (kind, ref, r.at))
        conn.execute(
            "UPDATE target_health SET name = COALESCE(?, name), failing_since = ?, last_success = ?,"
            f" last_failure = ?, updated = ?{error_sql} WHERE kind = ? AND ref = ?",
            [name, failing, success or None, failure or None, r.at, *params, kind, ref],
        )

    def health(self) -> dict[tuple[str, str], dict]:
        """(kind, ref) -> the health row: kind `rule` (ref: rule_ref) or `endpoint` (ref: the
        endpoint id as text); `failing_since` is the first failed attempt after the last
        success (None: not failing), `disabled_at`/`disabled_reason` say when and why the
        spooler disabled it (None when it did not)."""
        return {(row[0], row[1]): dict(zip(self._HEALTH_KEYS, row)) for row in self.conn.execute(
            f"SELECT {', '.join(self._HEALTH_KEYS)} FROM target_health ORDER BY kind, ref")}

    def failing_targets(self, since_before) -> list[dict]:
        """Health rows failing since `since_before` or earlier and not disabled by the spooler
        yet (candidates for `[spooler] disable_after_days`)."""
        return [dict(zip(self._HEALTH_KEYS, row)) for row in self.conn.execute(
            f"SELECT {', '.join(self._HEALTH_KEYS)} FROM target_health"
            " WHERE failing_since <= ? AND disabled_at IS NULL ORDER BY failing_since",
            (iso(since_before),))]

    def mark_disabled(self, kind: str, ref: str, name: str | None, reason: str, now=None) -> None:
        """Remember that the spooler disabled this rule/endpoint, when and why."""
        at = iso(now)
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO target_health (kind, ref, updated) VALUES (?, ?, ?)",
                         (kind, ref, at))
            conn.execute("UPDATE target_health SET name = COALESCE(?, name), disabled_at = ?,"
                         " disabled_reason = ?, updated = ? WHERE kind = ? AND ref = ?",
                         (name, at, reason, at, kind, ref))

    def reset_health(self, kind: str, ref: str, now=None) -> None:
        """A rule/endpoint enabled again (or pointed elsewhere) starts afresh: no failure
        streak, not disabled."""
        with self._write() as conn:
            conn.execute("UPDATE target_health SET failing_since = NULL, disabled_at = NULL,"
                         " disabled_reason = NULL, updated = ? WHERE kind = ? AND ref = ?",
                         (iso(now), kind, ref))

    # replay: failed deliveries and batches back into the queue --------------------------------
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

    @staticmethod
    def _delivery_item(row) -> dict:
        target = json.loads(row[4])
        return {"id": row[0], "kind": "delivery", "status": row[1], "rule": row[3],
                "rule_id": row[2], "endpoint": target.get("endpoint"), "received": row[5],
                "last_error": row[6], "last_status_code": row[7], "attempts": row[8],
                "body_stored": bool(row[9]), "target": target}

    @staticmethod
    def _batch_item(row) -> dict:
        return {"id": row[0], "kind": "batch", "status": row[1], "endpoint_id": row[2],
                "endpoint": row[3], "received": row[4], "last_error": row[5],
                "last_status_code": row[6], "attempts": row[7], "size": row[8]}

    def replay_items(self, ids: Iterable[str]) -> tuple[list[dict], list[str]]:
        """What the given ids name, in any status: (items, ids that name nothing). An id is a
        delivery id, an event batch id (`evb_...`), or an inbound record id (its deliveries).
        Items are dicts with `kind` `delivery` or `batch` (see `failed_items`)."""
        items, unknown, seen = [], [], set()
        for key in ids:
            if key.startswith(BATCH_PREFIX):
                rows = [self._batch_item(r) for r in self.conn.execute(
                    self._ITEM_BATCH + " WHERE b.id = ?", (key,))]
            else:
                rows = [self._delivery_item(r) for r in self.conn.execute(
                    self._ITEM_DELIVERY + " WHERE d.id = ?", (key,))] or [
                    self._delivery_item(r) for r in self.conn.execute(
                        self._ITEM_DELIVERY + " WHERE d.message_id = ? ORDER BY d.id", (key,))]
            if not rows:
                unknown.append(key)
            for item in rows:
                if item["id"] not in seen:
                    seen.add(item["id"])
                    items.append(item)
        return items, unknown

    def failed_items(self, *, rule_id: int | None = None, rule_name: str | None = None,
                     endpoint_id: int | None = None, since=None, until=None) -> list[dict]:
        """Failed inbound deliveries of a rule (by id, or by the name they were accepted
        under), or failed event batches of an endpoint, oldest first; `since` (inclusive) /
        `until` (exclusive) on the message's received time (as `log inbound`) or the batch's
        creation time. Each item: id, kind, status, received, last_error, last_status_code,
        attempts, endpoint (URL), and rule, rule_id, body_stored, target (deliveries) or
        endpoint_id, size (batches)."""
        where, params = [], []
        if endpoint_id is not None:
            sql, col = self._ITEM_BATCH + " WHERE b.status = 'failed' AND b.endpoint_id = ?", "b.created"
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
            sql, col = self._ITEM_DELIVERY + f" WHERE d.status = 'failed' AND ({' OR '.join(who)})", "l.received"
        _time_window(where, params, col, since, until)
        sql += "".join(" AND " + w for w in where) + f" ORDER BY {col}, 1"
        convert = self._batch_item if endpoint_id is not None else self._delivery_item
        return [convert(r) for r in self.conn.execute(sql, params)]

    def requeue(self, ids: Iterable[str], *, now=None, targets: dict[str, dict] | None = None) -> list[str]:
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
        with self._write() as conn:
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
                    conn.execute("UPDATE target_health SET failing_since = NULL, updated = ?"
                                 " WHERE kind = ? AND ref = ?", (at, kind, ref))
                if n:
                    done.append(key)
        return done

    # status -----------------------------------------------------------------------------------
    def status_summary(self, now=None, window: float = 3600.0) -> dict:
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
        conn = self.conn
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
        inbound_hour = dict.fromkeys(LOG_STATUSES, 0)
        for status, n in conn.execute(
            "SELECT status, count(*) FROM inbound_log WHERE received >= ? GROUP BY status", (since,)
        ):
            inbound_hour[status] = n
        events_hour = dict.fromkeys(DELIVERY_STATUSES, 0)
        for status, n in conn.execute(
            "SELECT COALESCE(b.status, 'queued'), count(*) FROM events e"
            " JOIN event_deliveries d ON d.event_id = e.id"
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
