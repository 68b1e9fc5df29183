"""state.db: what the spooler owns — ingested messages, the delivery queue, attempts, logs.

The spooler writes (from one thread); the CLI reads, and writes only to requeue (`mxhook
replay`). WAL mode lets readers run while the spooler writes.

`StateStore` is the connection (and its checkpoint thread), the schema, the in-memory view of
freshly stored events (`remember`, `enrich`) and the dispatch queue. The other concerns are
functions over a StateStore: store.ingest (spool records in, hard bounces to the block list),
store.logs (the inbound and event logs, totals), store.replay (replay and `mxhook status`).

Durability. The spooler unlinks a spool file once the transaction that ingested it has
committed, so that commit is the only copy of an accepted message from then on. In WAL mode
`synchronous=NORMAL` does not fsync the WAL at commit (only at checkpoints): after a power
loss or kernel crash the last commits may be gone while the unlink (a journaled metadata
change) survived — accepted mail lost. Connections therefore run with `synchronous=FULL`
(an fsync of the WAL at every commit), except the spooler's (`durable_commits=False`): its
commits are not fsynced, and the spool reader makes them durable (`make_durable`, one fsync of
the WAL, on its unlink threads) before it unlinks the files a commit took in. Its other
commits (attempt results, batches, retention) may be lost in a power loss and are then
redone: a post goes out again, with the same webhook-id. The fsync of every commit on the
loop cost ~10 % of the event flow (bench/events.py on disk against /dev/shm). The spooler's
checkpoints (copying the WAL into the database file; SQLite syncs the WAL before and the
database file after) run on a thread of their own (`checkpoint_in_background`).

Times are stored as fixed-width ISO 8601 UTC text with microseconds and a `Z`
(`2026-11-22T12:00:00.123456Z`), so they are readable in `sqlite3` and compare correctly as
text (indexes on them work for range queries).

Schema
------
Versions: `_MIGRATIONS`, applied by store.migrations on open (`PRAGMA user_version`).

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
- `inbound_recipients(key, received, log_id; PK all three) WITHOUT ROWID`: the inbound log's
  recipient index (the log filter `recipient`): each recipient of a row lower-cased and each
  of its domains as `@domain`; kept by triggers on inbound_log (`_schema_v4`).
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
  endpoint, so batches go out in order. An endpoint that posts one event per request has runs
  (model.batching): several open batches, each posted as a request per event under
  `<id>.<seq>`; an event whose request came to something else than the rest of its run is
  moved into a batch of its own with that id (`AttemptRecord.split_from`), the run's size
  going down by one.
- `event_attempts(id PK, batch_id, at, outcome, status_code, error, duration_ms,
  response_excerpt)`.
- `event_endpoints(id PK, url, updated)`: the endpoints' URLs as last seen by the spooler, so the
  event log can name the endpoint of old deliveries (rules.db belongs to the admin).
- `unlogged_denials(minute PK, count)`: denials of recipients in domains that are not
  permitted, kept out of `inbound_log` (`[spooler] log_unknown_domains = no`), counted per
  minute of their time (`2026-11-22T12:00`) for `mxhook status`; pruned with the inbound log.
- `target_health(kind, ref, name, failing_since, last_success, last_failure, last_error,
  last_status_code, disabled_at, disabled_reason, updated; PK (kind, ref))`: per rule (`kind`
  rule, `ref` = `rule_ref`: the rule id) and per event endpoint (`endpoint`, its id): since when
  its attempts fail without a success in between (`[spooler] disable_after_days`), and when
  and why the spooler disabled it (410 Gone, continuous failure). Written with the attempts,
  in their transaction; read by `mxhook status`.

Retention: store.logs `Retention` deletes what is older than `[spooler] inbound_log_days` /
`event_log_days` in small transactions (a message with its deliveries, attempts and log rows
once none of its deliveries is pending; an event with its fan-out rows once none is pending,
and a batch with its attempts once its last event is gone).

Replay: store.replay `requeue(ids)` puts failed deliveries/batches back to `queued` with the
same id (the `webhook-id`) and a fresh retry period; `mxhook replay` (services.replay, another
process) writes through it, and the spooler notices through `PRAGMA data_version`.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable

import sqlite_utils

from mxhook import spool
from mxhook.model.records import iso
from mxhook.store import migrations
from mxhook.store.rulesdb import _connect_ro as connect_readonly
from mxhook.store.rulesdb import _create_file as create_private_file
from mxhook.model.headers import normalize_address
from mxhook.model.events import ENRICH_FIELDS
from mxhook.model.targets import Target

DELIVERY_STATUSES = ("queued", "deferred", "succeeded", "failed")
LOG_STATUSES = DELIVERY_STATUSES + ("denied",)
OUTCOMES = ("succeeded", "deferred", "failed")
# Fields a log-derived event takes from the `queued` event of its message when it lacks them.
BATCH_PREFIX = "evb_"
_IN_CHUNK = 500  # host parameters per IN (...) query
# Decoded events kept after ingest, so a batch made soon after does not parse them again from
# state.db (the hot path); older ones are read back. Bounded: memory does not grow with a backlog.
RECENT_EVENTS = 10_000

# Background checkpoints (StateStore.checkpoint_in_background): how often, and the WAL size in
# pages at which the writer checkpoints itself after all (the checkpoint thread is stuck or
# behind), so the WAL stays bounded (~40 MB) whatever happens to that thread.
CHECKPOINT_INTERVAL = 0.5
WRITER_CHECKPOINT_PAGES = 10_000
# The writer's page cache (KiB; SQLite's default is 2,000). An event lands on a page of each
# of the events table's indexes, the recipient ones at random: with the default cache even
# their inner pages were read again for each insert once the table outgrew it (400,000 events
# with random recipients, bench/event_indexes.py: 46.6 µs CPU an insert, 29.1 µs with 16 MiB).
# Filled only as pages are used.
WRITER_CACHE_KIB = 16_384

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Time helpers

def rule_ref(rule_id, rule_name: str | None) -> str:
    """How target_health names a rule: its rules.db id (stable across renames), or
    `name:<name>` for a delivery target without an id (rule names cannot hold a colon)."""
    return str(rule_id) if rule_id is not None else f"name:{rule_name}"


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

    `outcome` is what the attempt itself came to (webhook.Outcome.status); `status` is the
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
    # an event of a run (delivery.pipeline.settle_run) split off from batch `split_from` into a
    # batch of its own, `delivery_id`; `seq` is its event_deliveries row
    split_from: str | None = None
    seq: int | None = None


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
    # its members' event ids in order, when known without a query (`create_batches` sets them)
    event_ids: list[str] | None = field(default=None, compare=False)
    # their event_deliveries seqs, in the same order (set with event_ids; `batch_events` makes
    # them match `events`)
    seqs: list[int] | None = field(default=None, compare=False)


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


# What enrich_event and _pick_by_message_id read of a `queued` event
_ENRICHING = ENRICH_FIELDS + ("custom_headers", "queue_id", "recipient")


class _RecentQueued:
    """The `queued` events stored most recently (at most `size`, oldest dropped first), by
    queue id and by Message-ID: the log-derived events of a message usually come soon after
    its queued event, and find it here instead of parsing it again from state.db. Each is kept
    as the fields enrichment reads (_ENRICHING): the whole event was twice the memory, and ten
    thousand of them a fifth of the spooler's (bench/events.py's backlog)."""

    COLUMNS = ("queue_id", "message_id")

    def __init__(self, size: int):
        self.size = size
        self._order: collections.deque = collections.deque()
        self._index: dict[str, dict[str, list[tuple[str, dict]]]] = {c: {} for c in self.COLUMNS}

    def add(self, received: str, event: dict) -> None:
        entry = (received, {k: event[k] for k in _ENRICHING if event.get(k)})
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


def _load_event(text: str) -> dict:
    """A stored event. Events are stored with the spool file's metadata line as it was written,
    which also carries the record's `kind` and `payload_size`: those are left out."""
    event = json.loads(text)
    event.pop("kind", None)
    event.pop("payload_size", None)
    return event


def _chunks(items: list, size: int = _IN_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---------------------------------------------------------------------------------------------
# Schema

def _checked(results: Iterable[AttemptRecord]) -> list[AttemptRecord]:
    results = list(results)
    for r in results:
        if r.outcome not in OUTCOMES or r.status not in DELIVERY_STATUSES:
            raise ValueError(f"bad attempt result for {r.delivery_id}: {r.outcome}/{r.status}")
    return results


def _schema_v1(db: sqlite_utils.Database) -> None:
    """The schema as the spooler created it before state.db had a version: created where
    missing; files whose events table predates its columns get them (such a file has no
    version to tell its shape by, so the table is looked at)."""
    db.create_table(
        "messages",
        {"id": str, "received": str, "meta": str, "raw": bytes, "raw_size": int, "ingested": str},
        pk="id", not_null={"received", "meta", "ingested"}, if_not_exists=True,
    )
    db.create_table(
        "deliveries",
        {
            "id": str, "message_id": str, "rule_id": int, "rule_name": str, "target": str,
            "recipients": str, "status": str, "attempts": int, "first_attempt_at": str,
            "next_attempt_at": str, "last_error": str, "last_status_code": int, "updated": str,
        },
        pk="id", not_null={"message_id", "rule_name", "target", "recipients", "status", "attempts", "updated"},
        defaults={"attempts": 0}, foreign_keys=[("message_id", "messages", "id")], if_not_exists=True,
    )
    db.create_table(
        "attempts",
        {
            "id": int, "delivery_id": str, "at": str, "outcome": str, "status_code": int,
            "error": str, "duration_ms": int, "response_excerpt": str,
        },
        pk="id", not_null={"delivery_id", "at", "outcome"},
        foreign_keys=[("delivery_id", "deliveries", "id")], if_not_exists=True,
    )
    db.create_table(
        "inbound_log",
        {
            "id": str, "kind": str, "record_id": str, "received": str, "status": str,
            "header_from": str, "rcpt_to": str, "host_name": str, "message_id": str,
            "filter_name": str, "reason": str, "mail_from": str, "client_addr": str,
            "queue_id": str, "recipients": str, "subject": str,
        },
        pk="id", not_null={"kind", "record_id", "received", "status"}, if_not_exists=True,
    )
    db.create_table(
        "events",
        {"id": str, "received": str, "meta": str, "payload": bytes, "ingested": str,
         "type": str, "queue_id": str, "recipient": str, "block_state": str,
         "message_id": str},
        pk="id", not_null={"meta", "ingested"}, if_not_exists=True,
    )
    _add_event_columns(db.conn)
    db.create_table(
        "event_deliveries",
        {"seq": int, "endpoint_id": int, "event_id": str, "added": float, "batch_id": str},
        pk="seq", not_null={"endpoint_id", "event_id", "added"}, if_not_exists=True,
    )
    db.create_table(
        "event_batches",
        {
            "id": str, "endpoint_id": int, "url": str, "created": str, "size": int,
            "status": str, "attempts": int, "first_attempt_at": str, "next_attempt_at": str,
            "last_error": str, "last_status_code": int, "updated": str,
        },
        pk="id", not_null={"endpoint_id", "created", "size", "status", "attempts", "updated"},
        if_not_exists=True,
    )
    db.create_table(
        "event_attempts",
        {
            "id": int, "batch_id": str, "at": str, "outcome": str, "status_code": int,
            "error": str, "duration_ms": int, "response_excerpt": str,
        },
        pk="id", not_null={"batch_id", "at", "outcome"}, if_not_exists=True,
    )
    db.create_table(
        "event_endpoints",
        {"id": int, "url": str, "updated": str}, pk="id", if_not_exists=True,
    )
    db.create_table(
        "target_health",
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


def _add_event_columns(conn: sqlite3.Connection) -> None:
    """state.db files from before the event side stored event records raw: add the event
    columns and fill them from the stored JSON (such old events are history: not fanned
    out)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    missing = [c for c in ("type", "queue_id", "recipient", "block_state", "message_id")
               if c not in have]
    if not missing:
        return
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


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Log retention (store.logs.Retention) walks messages in time order; unknown-domain
    denials kept out of the inbound log (`[spooler] log_unknown_domains`) are counted per
    minute."""
    db["messages"].create_index(["received"], if_not_exists=True)
    db.create_table("unlogged_denials", {"minute": str, "count": int}, pk="minute",
                    not_null={"count"}, if_not_exists=True)


def _schema_v3(db: sqlite_utils.Database) -> None:
    """The inbound log's pages by rule (`filter_name`: the API's and the console's `rule`
    filter), newest first, read from an index instead of a scan of the log (bench/api.py)."""
    db.execute("CREATE INDEX IF NOT EXISTS inbound_log_filter_time"
               " ON inbound_log(filter_name, received, id)")


def _recipient_keys(row: str, source: str = "") -> str:
    """SELECT (key, received, id) of an inbound_log row `row` (`NEW`, `OLD`, or the alias of
    `source`, a table joined first): each recipient lower-cased (ASCII, as SQLite's lower() and
    LIKE fold) and its domain as `@domain`; possibly repeated (the callers ignore repeats)."""
    addresses = (f"{source}json_each(CASE WHEN json_valid({row}.recipients) THEN {row}.recipients"
                 f" ELSE json_array({row}.rcpt_to) END) j")
    rest = f"{row}.received, {row}.id FROM {addresses}"
    return (f"SELECT lower(j.value) AS k, {rest} WHERE j.value IS NOT NULL UNION ALL"
            f" SELECT lower(substr(j.value, instr(j.value, '@'))), {rest} WHERE instr(j.value, '@') > 0")


# the event log's recipient keys, as _recipient_keys makes them (indexed expressions: a query
# uses an index only when it names the same expression)
EVENT_RECIPIENT = "lower(recipient)"
EVENT_DOMAIN = "lower(substr(recipient, instr(recipient, '@')))"


def _schema_v4(db: sqlite_utils.Database) -> None:
    """The log's recipient filter (an address, `@domain`, the start of an address: the API's
    and the console's `recipient`) reads an index instead of a scan of the log (bench/api.py):
    `inbound_recipients(key, received, log_id)`, a row per recipient and per domain of an
    inbound_log row (_recipient_keys), kept by triggers, so every writer of inbound_log
    (ingest, retention) keeps it without knowing of it. Existing rows are indexed here, in key
    order (one sorted pass). Events (one recipient each) get indexes on their recipient's
    address and domain keys."""
    db.execute("CREATE TABLE IF NOT EXISTS inbound_recipients (key TEXT NOT NULL, received TEXT NOT NULL,"
               " log_id TEXT NOT NULL, PRIMARY KEY (key, received, log_id)) WITHOUT ROWID")
    db.execute("CREATE TRIGGER IF NOT EXISTS inbound_recipients_add AFTER INSERT ON inbound_log BEGIN"
               f" INSERT OR IGNORE INTO inbound_recipients (key, received, log_id) {_recipient_keys('NEW')}; END")
    db.execute("CREATE TRIGGER IF NOT EXISTS inbound_recipients_drop AFTER DELETE ON inbound_log BEGIN"
               " DELETE FROM inbound_recipients WHERE received = OLD.received AND log_id = OLD.id"
               f" AND key IN (SELECT k FROM ({_recipient_keys('OLD')})); END")
    db.execute("INSERT OR IGNORE INTO inbound_recipients (key, received, log_id)"
               f" SELECT * FROM ({_recipient_keys('l', 'inbound_log l, ')}) ORDER BY 1, 2, 3")
    # events have one recipient each: indexes on its expressions (store.logs event_page)
    db.execute(f"CREATE INDEX IF NOT EXISTS events_recipient ON events({EVENT_RECIPIENT}, received)")
    db.execute(f"CREATE INDEX IF NOT EXISTS events_recipient_domain ON events({EVENT_DOMAIN}, received)")


# The step that brings state.db from the version before to each version (store.migrations).
_MIGRATIONS = ((1, _schema_v1), (2, _schema_v2), (3, _schema_v3), (4, _schema_v4))
SCHEMA_VERSION = migrations.latest(_MIGRATIONS)


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
    def __init__(self, path: str, *, readonly: bool = False, cache_kib: int | None = None,
                 durable_commits: bool = True):
        """`readonly`: open the file as it is (`mode=ro`), for readers that may not write it
        (`mxhook log`, `mxhook status`): nothing is created or migrated, and a file an older
        mxhook wrote is refused (migrations.NotReadable) until mxhook-spooler upgrades it.
        `cache_kib`: the connection's page cache (default SQLite's; the spooler's is
        WRITER_CACHE_KIB). `durable_commits`: every COMMIT fsyncs the WAL; without, the owner
        calls `make_durable` where it must (see the module docstring)."""
        self.path = path
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE explicitly
        # (see _write), so a transaction is exactly what the code says it is.
        # check_same_thread=False: a store may be opened on one thread and used on another
        # (the spooler builds it before its loop runs); it is still used by one thread at a time.
        # It holds message bodies and delivery credentials: created 0640 like rules.db (SQLite
        # gives the -wal/-shm files the database file's mode), whatever the umask.
        if readonly:
            conn = connect_readonly(path)
        else:
            create_private_file(path)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA busy_timeout = 30000")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size = {-int(cache_kib)}")
        if not readonly:
            self.db.enable_wal()
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable_commits else 'NORMAL'}")  # module docstring
            conn.execute("PRAGMA foreign_keys = ON")
        self._recent: dict[str, dict | str] = {}  # event id -> event (see remember), oldest first
        self._recent_queued = _RecentQueued(RECENT_EVENTS)
        # hard bounces marked for the block list by this store (the spooler looks for pending
        # ones only when this moved, and once at start)
        self.hard_bounces_ingested = 0
        # messages larger than this keep their body once delivered, until retention prunes
        # them: fetch URLs of the contents their payloads omitted read it (None: dropped)
        self.keep_bodies_over: int | None = None
        self._checkpointer: _Checkpointer | None = None
        try:
            if readonly:
                migrations.check_readable(conn, path, _MIGRATIONS, name=f"state database {path}",
                                          upgrade="start mxhook-spooler once to upgrade it")
            else:
                migrations.migrate(self.db, _MIGRATIONS, name="state database")
        except BaseException:
            conn.close()
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.conn.close()

    def make_durable(self) -> None:
        """fsync what every commit so far wrote: the WAL (what a checkpoint moved into the
        database file, SQLite synced there). From any thread; raises OSError."""
        for name in (self.path + "-wal", self.path):  # no WAL (yet): the database file
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        raise FileNotFoundError(f"{self.path} is gone")

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

    def _write(self) -> ContextManager[sqlite3.Connection]:
        return migrations.transaction(self.conn)

    def remember(self, recent: dict[str, dict], queued: list[tuple[str, dict]],
                 prerender: Callable[[dict], str] | None) -> None:
        """Keep freshly stored events for batch_events and enrich, once their transaction
        committed: `recent` the fanned-out ones by id, `queued` the (received, event) of the
        `queued` ones. With `prerender` (given by the payload layer: the text its batches are
        made of, e.g. payloads.events.prerenderer), a fanned-out event whose message fields are
        at hand is kept as that text instead of the dict (less memory; batch_events(rendered=
        True) hands it out, so batches are made without parsing or rendering it again)."""
        for received, event in queued:
            self._recent_queued.add(received, event)
        cache = self._recent
        for event_id, event in recent.items():
            event.setdefault("id", event_id)
            if prerender is None or (_needs_enrichment(event) and not self._enrich_from_recent(event)):
                cache[event_id] = event  # enriched and rendered when its batch is made
                continue
            cache[event_id] = prerender(event)
        excess = len(cache) - RECENT_EVENTS
        if excess > 0:
            for key in list(itertools.islice(cache, excess)):
                del cache[key]

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
        results = _checked(results)
        if not results:
            return
        with self._write() as conn:
            self._record_attempts(conn, results)

    def _record_attempts(self, conn: sqlite3.Connection, results: list[AttemptRecord]) -> None:
        batches = [r for r in results if r.delivery_id.startswith(BATCH_PREFIX)]
        for r in results:
            if not r.delivery_id.startswith(BATCH_PREFIX):
                self._record_delivery_attempt(conn, r)
        if batches:
            self._record_batch_attempts(conn, batches)

    def _record_delivery_attempt(self, conn: sqlite3.Connection, r: AttemptRecord) -> None:
        row = conn.execute("SELECT message_id, rule_id, rule_name FROM deliveries WHERE id = ?",
                           (r.delivery_id,)).fetchone()
        if row is None:
            return  # removed meanwhile (e.g. by retention); nothing to record against
        message_id = row[0]
        self._note_health(conn, "rule", rule_ref(row[1], row[2]), [(row[2], r)])
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
                "UPDATE messages SET raw = NULL WHERE id = ? AND raw IS NOT NULL"
                " AND (? IS NULL OR length(raw) <= ?) AND NOT EXISTS"
                " (SELECT 1 FROM deliveries WHERE message_id = ? AND status != 'succeeded')",
                (message_id, self.keep_bodies_over, self.keep_bodies_over, message_id),
            )

    def _record_batch_attempts(self, conn: sqlite3.Connection, results: list[AttemptRecord]) -> None:
        """The results of event batches: a statement for all of them where one does (a
        one-event-per-request endpoint settles a batch per event), the health row of each
        endpoint once. An event split off from its run gets its batch first: the run's
        attempts and retry clock so far, its own result below."""
        split = [(r.delivery_id, r.split_from, r.seq) for r in results if r.split_from is not None]
        if split:
            conn.executemany(
                "INSERT INTO event_batches (id, endpoint_id, url, created, size, status, attempts,"
                " first_attempt_at, next_attempt_at, updated) SELECT ?, endpoint_id, url, created, 1,"
                " status, attempts, first_attempt_at, next_attempt_at, updated FROM event_batches"
                " WHERE id = ?", [(new, old) for new, old, _ in split])
            conn.executemany("UPDATE event_deliveries SET batch_id = ? WHERE seq = ? AND batch_id = ?",
                             [(new, seq, old) for new, old, seq in split])
            conn.executemany("UPDATE event_batches SET size = size - 1 WHERE id = ?",
                             [(old,) for _, old, _ in split])
        owners: dict[str, tuple[str, str | None]] = {}
        for chunk in _chunks([r.delivery_id for r in results]):
            for batch_id, endpoint_id, url in conn.execute(
                "SELECT b.id, b.endpoint_id, COALESCE(ep.url, b.url) FROM event_batches b"
                " LEFT JOIN event_endpoints ep ON ep.id = b.endpoint_id"
                f" WHERE b.id IN ({', '.join('?' * len(chunk))})", chunk,
            ):
                owners[batch_id] = (str(endpoint_id), url)
        by_endpoint: dict[str, list[tuple[str | None, AttemptRecord]]] = {}
        for r in results:
            if r.delivery_id in owners:
                ref, url = owners[r.delivery_id]
                by_endpoint.setdefault(ref, []).append((url, r))
        for ref, noted in by_endpoint.items():
            self._note_health(conn, "endpoint", ref, noted)
        conn.executemany(
            "INSERT INTO event_attempts (batch_id, at, outcome, status_code, error,"
            " duration_ms, response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.delivery_id, r.at, r.outcome, r.status_code, r.error, r.duration_ms,
              r.response_excerpt) for r in results],
        )
        conn.executemany(
            "UPDATE event_batches SET status = ?, attempts = attempts + 1,"
            " first_attempt_at = COALESCE(first_attempt_at, ?), next_attempt_at = ?,"
            " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
            [(r.status, r.at, r.next_attempt_at if r.status == "deferred" else None,
              r.reason if r.reason is not None else r.error, r.status_code, r.at,
              r.delivery_id) for r in results],
        )

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

    def open_batch_list(self) -> list[EventBatch]:
        """Every open (queued or deferred) batch, oldest first (an endpoint may have several:
        model.batching.open_limit)."""
        return [EventBatch(*row) for row in self.conn.execute(
            f"SELECT {self._BATCH_COLUMNS} FROM event_batches"
            " WHERE status IN ('queued', 'deferred') ORDER BY created, id")]

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

    def create_batch(self, endpoint_id: int, max_events: int, now=None, *,
                     url: str | None = None) -> EventBatch | None:
        """One batch of an endpoint (`create_batches`); None when nothing is pending."""
        made = self.create_batches([(endpoint_id, max_events, 1, url)], now)
        return made[0] if made else None

    def create_batches(self, wanted: Iterable[tuple[int, int, int, str | None]],
                       now=None, *, results: Iterable[AttemptRecord] = ()) -> list[EventBatch]:
        """Freeze the oldest pending events of endpoints into new queued batches, due now, all
        in ONE transaction (one fsync however many batches a spooler step makes: a
        one-event-per-request endpoint makes a batch per event). `wanted`: (endpoint id,
        events per batch, batches, the endpoint's URL) each; an endpoint gets fewer batches
        when fewer events are pending. Each batch takes its events in arrival order, the
        first batch the oldest. Returns the batches made, per endpoint in that order.
        `results`: attempt results recorded first, in the same transaction (`record_attempts`:
        the spooler's step writes both with one commit)."""
        at = iso(now)
        results = _checked(results)
        made: list[EventBatch] = []
        # a statement per endpoint, not per batch: each is a GIL hand-off to the post workers
        with self._write() as conn:
            if results:
                self._record_attempts(conn, results)
            rows, members = [], []
            for endpoint_id, size, count, url in wanted:
                size, count = int(size), int(count)
                pending = conn.execute(
                    "SELECT seq, event_id FROM event_deliveries WHERE endpoint_id = ? AND batch_id IS NULL"
                    " ORDER BY seq LIMIT ?", (endpoint_id, size * count)).fetchall()
                for start in range(0, len(pending), size):
                    chunk = pending[start:start + size]
                    batch = EventBatch(BATCH_PREFIX + spool.new_id(), endpoint_id, "queued", 0,
                                       None, at, len(chunk), at, event_ids=[e for _, e in chunk],
                                       seqs=[q for q, _ in chunk])
                    made.append(batch)
                    # a batch is a run of consecutive pending seqs (read in this transaction):
                    # one statement per batch, not one per event (executemany steps once per
                    # row, and each step is a GIL hand-off to the threads busy in Python)
                    members.append((batch.id, endpoint_id, chunk[0][0], chunk[-1][0]))
                    rows.append((batch.id, endpoint_id, url, at, batch.size, at, at))
            conn.executemany(
                "INSERT INTO event_batches (id, endpoint_id, url, created, size, status,"
                " attempts, next_attempt_at, updated) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)", rows)
            conn.executemany("UPDATE event_deliveries SET batch_id = ? WHERE endpoint_id = ?"
                             " AND batch_id IS NULL AND seq BETWEEN ? AND ?", members)
        return made

    def batch_events(self, batch: EventBatch, *, rendered: bool = False) -> list[dict]:
        """The events of a batch in arrival order, as stored, enriched (see `enrich`). With
        `rendered`, events rendered at ingest come as payloads.events.V1Text (for
        render_events), the others as dicts."""
        ids, seqs = batch.event_ids, batch.seqs
        if ids is None or seqs is None:
            rows = self.conn.execute(
                "SELECT seq, event_id FROM event_deliveries WHERE endpoint_id = ? AND batch_id = ? ORDER BY seq",
                (batch.endpoint_id, batch.id),
            ).fetchall()
            ids, seqs = [r[1] for r in rows], [r[0] for r in rows]
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
        events, found, found_ids = [], [], []
        for event_id, seq in zip(ids, seqs):
            event = recent.get(event_id) or loaded.get(event_id)
            if event is None:  # removed meanwhile (retention): nothing to send
                continue
            if not isinstance(event, str):
                event.setdefault("id", event_id)
            events.append(event)
            found.append(seq)
            found_ids.append(event_id)
        batch.seqs, batch.event_ids = found, found_ids
        self.enrich([e for e in events if not isinstance(e, str)])
        return events

    def sync_endpoints(self, endpoints: Iterable, now=None) -> None:
        """Remember the endpoints' URLs (for the event log)."""
        at = iso(now)
        rows = [(ep.id, ep.destination.url, at) for ep in endpoints]
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

    # health: per rule and endpoint, failing since when, disabled by whom ---------------------
    _HEALTH_KEYS = ("kind", "ref", "name", "failing_since", "last_success", "last_failure",
                    "last_error", "last_status_code", "disabled_at", "disabled_reason", "updated")

    @staticmethod
    def _note_health(conn: sqlite3.Connection, kind: str, ref: str,
                     noted: list[tuple[str | None, AttemptRecord]]) -> None:
        """Fold attempts, in order, into their rule's or endpoint's health row (in the caller's
        transaction), each with the name it goes by (None: keep the one stored): a success
        ends a failure streak; a failure starts one unless a later success is already
        recorded (results of one round may come in any order)."""
        row = conn.execute("SELECT failing_since, last_success, last_failure FROM target_health"
                           " WHERE kind = ? AND ref = ?", (kind, ref)).fetchone()
        failing, success, failure = row or (None, None, None)
        name, error_sql, params = None, "", []
        for named, r in noted:
            name = named if named is not None else name
            if r.outcome == "succeeded":
                success = max(success or "", r.at)
                if failing is not None and failing <= r.at:
                    failing = None
            else:
                if failing is None and (success is None or r.at >= success):
                    failing = r.at
                failure = max(failure or "", r.at)
                error_sql = ", last_error = ?, last_status_code = ?"
                params = [r.error or r.reason, r.status_code]
        last = noted[-1][1].at
        conn.execute("INSERT OR IGNORE INTO target_health (kind, ref, updated) VALUES (?, ?, ?)",
                     (kind, ref, last))
        conn.execute(
            "UPDATE target_health SET name = COALESCE(?, name), failing_since = ?, last_success = ?,"
            f" last_failure = ?, updated = ?{error_sql} WHERE kind = ? AND ref = ?",
            [name, failing, success or None, failure or None, last, *params, kind, ref],
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
