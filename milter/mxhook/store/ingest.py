"""Spool records into state.db: `check_record` (before a record is taken), `records` (one
transaction per batch of records: inbound messages with their deliveries and inbound_log rows,
denied records, events fanned out to the event endpoints), and the hard-bounce hand-over to the
block list (`pending_blocks`, `finish_blocks`), which also takes the suppressions of
unsubscribes and complaints. Functions over a StateStore: the connection
and, once a transaction committed, the store's in-memory view of fresh events
(StateStore.remember). Only the spooler writes here, from one thread.

The inbound log's host_name is the MX that received the message (the record's `host_name`,
Postfix's myhostname; NULL for records written before the milter wrote it), seed 000's
"host name of the server that recorded the log"; the client is client_addr (its name is in an
accepted message's metadata and in the milter's decision line).

Events: a DSN event is stored only when it names a recipient of a message we sent
(`_unsent_report`); a recipient-less `failed` (expiry) is stored as it came and expanded into
one `failed` per open recipient (`_expand_expiry`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mxhook.model.records import iso, to_datetime
from mxhook import spool
from mxhook.model import events as events_mod
from mxhook.model.events import Event
from mxhook.model.headers import address_domain
from mxhook.model.records import DeniedRecord, InboundRecord, RecordError
from mxhook.store.migrations import transaction
from mxhook.store.statedb import StateStore, _address, _chunks, _load_event


# engagement events that add (or, resubscribed, remove) a block-list suppression, handed
# over like hard bounces (`pending_blocks`)
SUPPRESSION_TYPES = ("unsubscribed", "resubscribed", "complained")
UNKNOWN_DOMAIN = "unknown_domain"  # the filter of a denial whose domain is not permitted
IGNORED_NAMED = 5  # addresses named in the log line of an ignored delivery-status report

log = logging.getLogger(__name__)


@dataclass
class _Fresh:
    """What one ingest transaction stored that is kept in memory once it committed."""

    recent: dict[str, dict] = field(default_factory=dict)  # fanned-out events by id
    queued: list[tuple[str, dict]] = field(default_factory=list)  # (received, queued event)
    hard_bounces: int = 0
    # (Message-ID, why) -> addresses of delivery-status report events refused
    ignored_reports: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def keep(self, store: StateStore, prerender: Callable[[dict], str] | None) -> None:
        store.remember(self.recent, self.queued, prerender)
        store.hard_bounces_ingested += self.hard_bounces


# ---------------------------------------------------------------------------------------------
# Records that can be ingested

_SCHEMAS = {"inbound": InboundRecord, "denied": DeniedRecord}


def check_record(record: spool.Record) -> InboundRecord | DeniedRecord | Event:
    """The typed metadata of a decoded record (model/records.py), also kept as `record.typed`
    so that `records` does not read it again; RecordError when it cannot be ingested, so the
    spooler can move that one record to bad/ instead of failing the batch."""
    if not record.id or not isinstance(record.id, str):
        raise RecordError("record id is empty or not a string")
    if record.kind == "event":  # an event's id is its record's
        record.typed = Event.from_meta(record.meta, record.id)
    else:
        record.typed = _SCHEMAS[record.kind].from_meta(record.meta)
    return record.typed


def delivery_id(record_id: str, rule_name: str) -> str:
    return f"{record_id}-{rule_name}"


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


def records(store: StateStore, spooled: list[spool.Record], *, now=None, endpoints: Iterable = (),
            block_hard_bounces: bool = False,
            raw_meta: dict[str, str] | None = None,
            prerender: Callable[[dict], str] | None = None,
            wants: Callable[[object], frozenset[str]] | None = None,
            log_unknown_domains: bool = True, feedback: Callable | None = None) -> int:
    """Insert spool records (`spooled`) in one transaction; returns how many were new.
    Re-ingesting a record is harmless (INSERT OR IGNORE on its id). Raises RecordError (and
    writes nothing) when a record fails `check_record`.

    `event` records are fanned out to `endpoints` (endpoints.Endpoint objects; disabled
    ones are skipped): one event_deliveries row per endpoint that wants the event's type:
    `wants(endpoint)` gives the types (the caller's: its categories' types that its payload
    has a place for, payloads.registry.wanted_types); default: its categories' types. With `block_hard_bounces`, a hard `bounced` event is marked for the
    block list (`pending_blocks`). A record the caller checked already (the spooler's reader
    does, file by file, to quarantine bad ones) has its `typed` metadata and is not checked
    again. `raw_meta`: record id
    -> the record's metadata as JSON text (the spool file's line), stored as it is instead of
    serializing `meta` again. `prerender`: see StateStore.remember. Without
    `log_unknown_domains`, a `denied` record of recipients in domains that are not permitted
    (the spam flood every MX gets) is counted per minute (`unlogged_denials`) instead of
    logged; a crash before its file is unlinked counts it again. `feedback`: the handler of
    mail to mxhook's own addresses (`_ingest_internal`)."""
    for record in spooled:
        if record.typed is None:
            check_record(record)
    at = iso(now)
    added = time.time() if now is None else to_datetime(now).timestamp()
    fanout = _fanout(endpoints, wants)
    new = 0
    fresh = _Fresh()
    unlogged: dict[str, int] = {}  # minute -> unknown-domain denials not logged
    with transaction(store.conn) as conn:
        events = []
        for record in spooled:
            if record.kind == "inbound" and record.typed.internal:
                new += _ingest_internal(conn, record, record.typed, feedback, events)
            elif record.kind == "inbound":
                new += _ingest_inbound(conn, record, record.typed, at)
            elif record.kind == "denied":
                if log_unknown_domains or record.typed.filter != UNKNOWN_DOMAIN:
                    new += _ingest_denied(conn, record.id, record.typed)
                else:
                    minute = iso(record.typed.received)[:16]
                    unlogged[minute] = unlogged.get(minute, 0) + 1
            elif record.kind == "event":
                text = raw_meta.get(record.id) if raw_meta else None
                events.append((record.typed, record.meta, record.payload, text))
        if events:
            new += _insert_events(conn, events, at, added, fanout, block_hard_bounces, fresh,
                                  verify_reports=True)
        if unlogged:
            conn.executemany("INSERT INTO unlogged_denials (minute, count) VALUES (?, ?)"
                             " ON CONFLICT(minute) DO UPDATE SET count = count + excluded.count",
                             sorted(unlogged.items()))
    fresh.keep(store, prerender)
    for (message_id, why), addresses in fresh.ignored_reports.items():
        named = ", ".join(map(ascii, addresses[:IGNORED_NAMED]))
        if len(addresses) > IGNORED_NAMED:  # a report may name thousands: one line stays short
            named += f" and {len(addresses) - IGNORED_NAMED} more"
        log.warning("ignored a delivery-status report for Message-ID %s naming %s: %s;"
                    " no event, no block-list entry", ascii(message_id) if message_id else "(none)",
                    named, why)
    return new


def _fanout(endpoints: Iterable, wants: Callable[[object], frozenset[str]] | None
            ) -> list[tuple[int, frozenset]]:
    return [(ep.id, wants(ep) if wants else ep.types) for ep in endpoints
            if getattr(ep, "enabled", True)]


def _insert_events(conn: sqlite3.Connection, events: list[tuple], at: str, added: float,
                   fanout: list[tuple[int, frozenset]], block: bool, fresh: _Fresh,
                   *, verify_reports: bool = False) -> int:
    """Insert (Event, its record's meta, payload, meta as JSON text or None) events; fan the
    new ones out. Returns how many were new. The meta is what is stored (as the JSON text,
    else serialized) and what StateStore.remember keeps.

    With `verify_reports` (spool records), an event of a delivery-status report that is
    not about a recipient of a message we sent is left out (`_unsent_report`) and noted in
    `fresh.ignored_reports`.

    A `failed` event without a recipient (an expiry the log follower saw without the
    recipients) is stored as it came, and applied to every recipient of its queue id that
    has no final event yet: one `failed` event per such recipient is stored and fanned out
    instead (`_expand_expiry`). Only when no `queued` event of that queue id is known is the
    recipient-less event itself fanned out."""
    # Which are new: one query per chunk, then multi-row inserts (per-row execute calls
    # cost more than the inserts themselves).
    known: set[str] = set()
    ids = [e[0].id for e in events]
    for chunk in _chunks(ids):
        marks = ", ".join("?" * len(chunk))
        known.update(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk))
    if verify_reports:
        events = _after_queued(conn, events, known)
    rows: list[tuple] = []
    deliveries = []
    recent = fresh.recent
    inserted = 0

    def flush() -> None:
        nonlocal inserted
        if rows:
            _insert_rows(conn, "INSERT INTO events (id, received, meta, payload, ingested, type,"
                         " queue_id, recipient, block_state, message_id)", rows)
            inserted += len(rows)
            rows.clear()

    def add(event: Event, meta: dict, payload, text: str | None, fan: bool = True) -> str:
        event_id, etype, when = event.id, event.type, event.at
        # times mxhook writes are already in the stored form; others are normalized
        received = when if events_mod.is_stored_time(when) else iso(when or at)
        # the block list takes the address the application used (orig_to, else to); an
        # unsubscribe, resubscribe or complaint changes a suppression for its sending domain
        pending = "pending" if block and (
            (etype == "bounced" and event.bounce_type == "hard" and (event.orig_recipient or event.recipient))
            or (etype in SUPPRESSION_TYPES and event.recipient
                and (event.engagement or {}).get("sending_domain"))) else None
        rows.append((event_id, received, text or json.dumps(meta, ensure_ascii=False), payload,
                     at, etype, event.queue_id, event.recipient, pending, event.message_id))
        if pending:
            fresh.hard_bounces += 1
        if etype == "queued":
            fresh.queued.append((received, meta))
        wanted = False
        for endpoint_id, types in fanout if fan else ():
            if etype in types:
                deliveries.append((endpoint_id, event_id, added))
                wanted = True
        if wanted:
            recent[event_id] = meta
        return received

    for event, meta, payload, text in events:
        if event.id in known:
            continue
        known.add(event.id)  # the same id twice in one call: stored once
        if verify_reports and event.source == "dsn":
            flush()  # the queued events before it in this call count as sent
            why = _unsent_report(conn, event)
            if why:
                address = event.orig_recipient or event.recipient or ""
                fresh.ignored_reports.setdefault((event.message_id or "", why), []).append(address)
                continue
        if event.type == "failed" and not event.recipient and event.queue_id:
            flush()  # the events before it in this call count as known
            received = add(event, meta, payload, text, fan=False)
            expanded = _expand_expiry(conn, event, meta, received)
            if expanded is None:
                rows.pop()
                add(event, meta, payload, text)
                continue
            for xevent, xmeta in expanded:
                if xevent.id not in known:
                    known.add(xevent.id)
                    add(xevent, xmeta, b"", None)
            continue
        add(event, meta, payload, text)
    flush()
    if deliveries:
        _insert_rows(conn, "INSERT INTO event_deliveries (endpoint_id, event_id, added)", deliveries)
    return inserted


def _after_queued(conn: sqlite3.Connection, events: list[tuple], known: set[str]) -> list[tuple]:
    """Log events whose time stamp has whole seconds (`maillog_file`, traditional syslog) with
    their `at` moved to just after their message's `queued` event when that lies within the
    stamp's second: 12:00:02 says only "in [12:00:02, 12:00:03)", and a `succeeded` at
    12:00:02.000000 would sort before the `queued` of 12:00:02.7 it follows. The event's id
    holds the end of that second (maillog.Parsed.id_us): the queued events of its queue id
    between the two are looked for here (in this call, else in state.db); the latest one
    plus 1 µs becomes its `at` (and `received`), so a message's events keep their order in
    `at` too. Events stamped in microseconds (RFC 3339 syslog, the journal) have no such
    window and stay as they are. A moved event is changed in place (it is this ingest's);
    its meta is a copy, stored serialized again. Times are compared as stored text (one
    second's times differ only in their microseconds)."""
    windows = {}  # index -> the end of its stamp's second, in the stored form
    for index, (event, _meta, _payload, _text) in enumerate(events):
        at = event.at
        # a stamp coarser than microseconds ends in zeros (cheap to tell: most events are not)
        if (event.source != "log" or not event.queue_id or type(at) is not str
                or not at.endswith("000Z") or len(at) != 27 or event.id in known):
            continue
        try:
            end = events_mod.iso_from_us(int(event.id[:16], 16) // 1000)
        except ValueError:  # an id of another form (registered-...)
            continue
        if end > at and end[:20] == at[:20]:
            windows[index] = end
    if not windows:
        return events
    queued: dict[str, list[str]] = {}
    for event, _meta, _payload, _text in events:
        if event.type == "queued" and event.queue_id and events_mod.is_stored_time(event.at):
            queued.setdefault(event.queue_id, []).append(event.at)
    qids = sorted({events[i][0].queue_id for i in windows})
    since = min(events[i][0].at for i in windows)
    for chunk in _chunks(qids):
        marks = ", ".join("?" * len(chunk))
        for qid, received in conn.execute(
            f"SELECT queue_id, received FROM events WHERE queue_id IN ({marks}) AND type = 'queued'"
            " AND received > ?", (*chunk, since),
        ):
            queued.setdefault(qid, []).append(received)
    out = list(events)
    for index, end in windows.items():
        event, meta, payload, _text = events[index]
        start = event.at
        inside = [t for t in queued.get(event.queue_id, ()) if start < t <= end]
        if not inside:
            continue
        latest = max(inside)  # in the same second as `end`, before it or at it
        at = end if latest >= end else f"{latest[:20]}{int(latest[20:26]) + 1:06d}Z"
        event.at = at
        out[index] = (event, {**meta, "at": at, "received": at}, payload, None)
    return out


def _unsent_report(conn: sqlite3.Connection, event: Event) -> str | None:
    """Why an event of a delivery-status report (source `dsn`) must be ignored, or None
    when it is about mail we sent: its Message-ID must be that of a `queued` event (the
    milter writes those only for outbound mail) and the address it names (the one the
    block list would take) a recipient of that message. Anyone can send us a report, with
    any Message-ID and any address in it."""
    message_id = event.message_id
    if not message_id:
        return "the report names no Message-ID of the returned message"
    recipients = {_address(r) for (r,) in conn.execute(
        "SELECT recipient FROM events WHERE type = 'queued' AND message_id = ?", (message_id,))}
    if not recipients:
        return "no message with that Message-ID was sent from here"
    if _address(event.orig_recipient or event.recipient) not in recipients - {""}:
        return "not a recipient of the message with that Message-ID"
    return None


# How far before the latest `queued` event of a queue id the queued events of the same
# message may lie (the milter writes them all at end of message, microseconds apart).
_MESSAGE_WINDOW_S = 60.0


def _expand_expiry(conn: sqlite3.Connection, event: Event, meta: dict,
                   received: str) -> list[tuple[Event, dict]] | None:
    """The per-recipient `failed` events a recipient-less expiry stands for: one per
    recipient of the message (its `queued` events: the latest ones of that queue id not
    after the expiry, short queue ids being reused) that has no final event (succeeded,
    bounced, failed) yet. None when no queued event of the queue id is known."""
    qid, event_id = event.queue_id, event.id
    queued = conn.execute(
        "SELECT received, recipient FROM events WHERE queue_id = ? AND type = 'queued'"
        " AND received <= ? ORDER BY received, id", (qid, received),
    ).fetchall()
    if not queued:
        return None
    start = iso(to_datetime(queued[-1][0]).timestamp() - _MESSAGE_WINDOW_S)
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
        xid = events_mod.event_id(at_us, "expired", event_id, rcpt)
        out.append((dataclasses.replace(event, id=xid, recipient=rcpt, orig_recipient=None),
                    {**meta, "recipient": rcpt, "orig_recipient": None, "id": xid}))
    return out


def _ingest_inbound(conn: sqlite3.Connection, record: spool.Record, message: InboundRecord,
                    at: str) -> int:
    received = iso(message.received or at)
    # the metadata is stored as it came (json.dumps of what was decoded, keys unknown here kept)
    cur = conn.execute(
        "INSERT OR IGNORE INTO messages (id, received, meta, raw, raw_size, ingested)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (record.id, received, json.dumps(record.meta), record.payload, len(record.payload), at),
    )
    if cur.rowcount == 0:
        return 0
    for routed in message.deliveries:
        target = routed.target
        recipients = routed.recipients
        did = delivery_id(record.id, routed.name)
        conn.execute(
            "INSERT OR IGNORE INTO deliveries (id, message_id, rule_id, rule_name, target,"
            " recipients, status, attempts, next_attempt_at, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (did, record.id, target.get("id"), routed.name, json.dumps(target),
             json.dumps(recipients), at, at),
        )
        conn.execute(
            "INSERT OR IGNORE INTO inbound_log (id, kind, record_id, received, status,"
            " header_from, rcpt_to, host_name, message_id, filter_name, reason, mail_from,"
            " client_addr, queue_id, recipients, subject)"
            " VALUES (?, 'delivery', ?, ?, 'queued', ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            (did, record.id, received, message.sender, ", ".join(recipients),
             message.host_name, message.message_id, routed.name, message.mail_from,
             message.client_addr, message.queue_id, json.dumps(recipients), message.subject),
        )
    return 1


def _ingest_internal(conn: sqlite3.Connection, record: spool.Record, message: InboundRecord,
                     handle: Callable | None, events: list) -> int:
    """Mail to one of mxhook's own addresses: `handle` (services.feedback.Handler) makes its
    event, stored with the record (an unverified claim only when it names a recipient of a
    message we sent); one inbound_log row (kind `feedback`) says what came of it: `succeeded`,
    or `denied` with the reason it was not taken."""
    if conn.execute("SELECT 1 FROM inbound_log WHERE id = ?", (record.id,)).fetchone():
        return 0  # ingested before a crash kept its file from being unlinked
    route = message.internal
    if handle is None:
        event, reason = None, f"mail to mxhook's {route} address, but no handler for it here"
    else:
        outcome = handle(route, record.id, message, record.payload)
        event, reason = outcome.event, outcome.reason
        if event is not None and not outcome.verified:
            why = _unsent_report(conn, event)
            if why:
                event, reason = None, f"{reason}; ignored: {why}"
            else:  # the claim's sending domain is the report's word: ours is the sender's
                event.engagement["sending_domain"] = _sender_domain(conn, event)
    if event is not None:
        events.append((event, event.to_meta(), b"", None))
    conn.execute(
        "INSERT INTO inbound_log (id, kind, record_id, received, status, header_from, rcpt_to,"
        " host_name, message_id, filter_name, reason, mail_from, client_addr, queue_id,"
        " recipients, subject) VALUES (?, 'feedback', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.id, record.id, iso(message.received), "succeeded" if event else "denied",
         message.sender, "", message.host_name, message.message_id, route, reason,
         message.mail_from, message.client_addr, message.queue_id, "[]", message.subject))
    if event is None:
        log.warning("%s: mail %s to mxhook's %s address from <%s>: %s",
                    message.queue_id or "NOQUEUE", record.id, route, message.mail_from or "", reason)
    return 1


def _sender_domain(conn: sqlite3.Connection, event: Event) -> str | None:
    """The sending domain of the message a checked claim is about: its queued event's sender's."""
    row = conn.execute("SELECT json_extract(meta, '$.sender') FROM events WHERE type = 'queued'"
                       " AND message_id = ? ORDER BY received DESC LIMIT 1", (event.message_id,)).fetchone()
    return address_domain(row[0]) or None if row and isinstance(row[0], str) else None


def _ingest_denied(conn: sqlite3.Connection, record_id: str, denied: DeniedRecord) -> int:
    recipients = denied.recipients
    cur = conn.execute(
        "INSERT OR IGNORE INTO inbound_log (id, kind, record_id, received, status,"
        " header_from, rcpt_to, host_name, message_id, filter_name, reason, mail_from,"
        " client_addr, queue_id, recipients, subject)"
        " VALUES (?, 'denied', ?, ?, 'denied', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record_id, record_id, iso(denied.received), denied.sender, ", ".join(recipients),
         denied.host_name, denied.message_id, denied.filter, denied.reason,
         denied.mail_from, denied.client_addr, denied.queue_id,
         json.dumps(recipients), denied.subject),
    )
    return cur.rowcount


# hard bounces -> block list ------------------------------------------------------------------
def pending_blocks(store: StateStore, limit: int = 500) -> list[dict]:
    """Hard-bounce events not yet put on the block list (oldest first), enriched."""
    events = []
    for event_id, meta in store.conn.execute(
        "SELECT id, meta FROM events WHERE block_state = 'pending' ORDER BY received, id LIMIT ?",
        (int(limit),),
    ):
        event = _load_event(meta)
        event["id"] = event_id
        events.append(event)
    return store.enrich(events)


def finish_blocks(store: StateStore, done: list[tuple[str, dict | None]], *, now=None,
                  endpoints: Iterable = (), prerender: Callable[[dict], str] | None = None,
                  wants: Callable[[object], frozenset[str]] | None = None) -> int:
    """Mark hard bounces as handled; each may bring its `registered` event (an event dict
    with an `id`), which is stored and fanned out like an ingested one, in the same
    transaction. Returns how many registered events were new. `prerender`: see
    StateStore.remember; `wants`: see `records`."""
    at = iso(now)
    added = time.time() if now is None else to_datetime(now).timestamp()
    fanout = _fanout(endpoints, wants)
    events = [(Event.from_meta(e, e["id"]), e, b"", None) for _, e in done if e is not None]
    fresh = _Fresh()
    with transaction(store.conn) as conn:
        new = _insert_events(conn, events, at, added, fanout, False, fresh) if events else 0
        conn.executemany("UPDATE events SET block_state = 'done' WHERE id = ?",
                         [(event_id,) for event_id, _ in done])
    fresh.keep(store, prerender)
    return new
