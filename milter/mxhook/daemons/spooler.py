"""mxhook-spooler: ingest the spool into state.db, then post inbound deliveries and event batches.

    mxhook-spooler [--config PATH] [--once]

The loop, on the main thread (the only thread that touches state.db):

1. ingest (`spool.Reader`: take -> store.ingest -> finish): up to `ingest_batch` files (or
   4 MiB or 1,000 records: files may hold many records) from `new/`, oldest first, none newer
   than the milter's open segment (`spool.ingest_bound`). Each is read and checked record by
   record (`spool.decode_parts`, `store.ingest.check_record`).
   A file with no good record (or unreadable for lack of permission) moves to `bad/` as it
   is, with a `.reason` file and a log line. From a file that also holds good records, each
   bad record (or, where the framing breaks, the rest of the file) is written durably to
   `bad/<name>.<offset>.rec` with its `.reason` and a log line, before any of the file is
   ingested. The good records go into state.db in ONE transaction (synchronous=FULL, see
   statedb), and only after COMMIT are the files unlinked. A crash between commit and unlink
   re-ingests them: harmless, the record id is the primary key, and the bad parts are written
   again under the same names. A damaged state.db is not a bad record (store/integrity.py): the
   spooler logs CRITICAL, writes `<state.db>.fault` and exits 3, leaving the files in new/.
2. dispatch (mxhook.delivery.pipeline): pick what is due — event batches, then inbound
   deliveries (`pick_batches`, `pick_deliveries`) — as `Dispatch`es (an id, a target, a body,
   attempts); `send` them to a pool of `workers` threads, each with its own requests session,
   where a dispatch's body is rendered (mxhook.payloads.registry) and POSTed once
   (mxhook.delivery.webhook). The pool holds up to POOL_DEPTH dispatches per worker, so a
   freed worker takes the next one at once, and beside them up to BULK_DEPTH per worker
   runs of one-per-request endpoints, taken only when nothing else waits (`PostPool`); a
   run's requests are posted by the posting process (mxhook.delivery.poster), on the other
   core. The results that came back are settled on the
   main thread (`collect_finished`) and written after the next posts were handed out
   (`record_results`: all results finished by then in one transaction; in the transaction
   that makes the step's new event batches when it makes any), so the COMMIT's fsync
   overlaps with posting; until written, a dispatch is not picked again. The retry
   policy (mxhook.model.retry) decides the next step: succeeded/failed are final; deferred is
   retried after the retry interval ±10 % jitter (or a longer Retry-After, at most an hour)
   until `retry period` days after the first attempt, then failed.
3. wait up to `poll_interval` seconds (or less, when a post finishes or a file comes into
   `new/`), then again.

Event records (kind `event`: from the milter, the log follower, the CLI) take the same ingest
path. At ingest each new event is fanned out to every enabled endpoint (rules.db, reloaded when
it changes) whose categories include its type and whose payload has a place for it
(payloads.registry.wanted_types: a dialect posts only the types it has a name for). Per
endpoint, a batch is made when the oldest pending event has waited `interval` seconds or
`max_events` are pending (model.batching); it takes at most `max_events` events, in arrival
order, and its membership and id (`evb_...`, the `webhook-id`) are fixed in state.db when it is
made. An endpoint has at most one open batch, posted by the same workers and retried on the
same schedule as inbound deliveries; the next batch is made only when it succeeded or failed,
so events reach an endpoint in order (a receiver that is down holds up that endpoint only). An
endpoint whose dialect posts one event per request gets runs (model.batching.RUN_EVENTS
events, posted a request each: delivery.pipeline), due at once, up to
model.batching.open_limit open at a time (OPEN_PER_WORKER per worker), all the batches of a
step made in one transaction: its events may arrive out of order.
A `kill -9` at any point leaves the batch in state.db: after a restart it is posted again with
the same id and the same events.

Each attempt renders its body on the worker (payloads.registry.inbound_request /
event_request: the target's template, dialect or native format) with the attempt's time and a
fresh nonce (`_nonce`: the randomness lives here, the payloads are pure) and the templates as
rules.db stores them. A body that cannot be made (a template's error, an unknown dialect) is a
`failed` attempt with the reason; rules.db unreadable while a template is read, `deferred`.

Events of delivery-status reports (source `dsn`: anyone can send one) are kept only when they
name a recipient of a message we sent (store/ingest.py, `_unsent_report`); the others are logged
and dropped at ingest, so they never reach an endpoint or the block list.

A hard `bounced` event puts its recipient on the block list in rules.db (when `[milter]
blocklist` is on; the address the application used: `orig_recipient` when Postfix logged one,
else `recipient`) and, if the address was not on it yet, adds a `registered` event (id
`registered-<address>-<bounce event id>`) that is fanned out like any other.

A delivery is only ever re-posted if its result was not committed — after a crash or kill
mid-request — and then with the same `webhook-id` (the delivery id), so receivers can
deduplicate. SIGTERM/SIGINT: stop taking new work, let in-flight posts finish (each bounded by
its rule's timeout), record their results, exit 0.

Disabling (mxhook.delivery.health). A 410 Gone disables the rule (inbound) or the endpoint
(events) in rules.db, with a warning in the log; that delivery/batch is `failed`. A
rule/endpoint whose attempts have all failed for `[spooler] disable_after_days` days (counted
from the first failure after its last success, checked when an attempt fails;
state.db `target_health`) is disabled the same way.
Deliveries of a disabled rule and batches/events of a disabled endpoint are not attempted: they
stay pending (queued/deferred) until it is enabled again (the milter no longer matches a
disabled rule, and a disabled endpoint gets no new events); failed ones stay replayable
(`mxhook replay`). Enabling it again (or pointing it at another URL) starts its failure count
afresh. A 410 from a URL the rule no longer uses (deliveries keep the target they were
accepted under) disables nothing.

`--once`: ingest everything pending, run one dispatch round (every event endpoint gets a batch
of what is pending for it, due or not), wait for its posts, exit (tests, cron-style use).

`[spooler] retry_time_scale` (default 1) multiplies every rule's retry interval and retry
period. It exists so tests and the demo can run the real retry schedule in seconds instead of
minutes and days; production leaves it at 1. Retry-After from a receiver is never scaled.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import queue
import random
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Callable

from mxhook.model.records import iso, to_datetime
from mxhook import config as config_mod
from mxhook.store import rulesdb as db_mod
from mxhook.delivery import webhook
from mxhook.daemons import logsetup, systemd
from mxhook import heartbeat, spool
from mxhook.payloads import events as event_payloads
from mxhook.store import endpointbatches, ingest, logs, statedb
from mxhook.store import integrity
from mxhook.services import attachments, feedback
from mxhook.delivery import pipeline
from mxhook.delivery.health import Health
from mxhook.delivery.pipeline import Dispatch
from mxhook.delivery.poster import PostingProcess
from mxhook.model import batching
from mxhook.model.endpoints import Endpoint
from mxhook.model.events import Event
from mxhook.model.rules import RuleError
from mxhook.model.targets import Target
from mxhook.store.statedb import AttemptRecord, DueDelivery, EventBatch, StateStore

log = logging.getLogger(__name__)

BLOCK_RETRY_AFTER = 30.0  # seconds before retrying the block list after rules.db failed
BLOCK_BATCH = 500  # hard bounces handled per step
HELD_BACK_PAUSE = 0.05  # seconds between looks while files wait for an open segment
# While waiting, new/ is looked at this often: a file renamed into it moves its mtime, so mail
# is ingested within this time rather than after a whole poll_interval (the milter seals its
# segment every 0.2 s; sleeping 0.5 s between seals left the workers idle and the mail waiting).
SPOOL_WATCH = 0.02
SCAN_ERROR_REPEAT = 300.0  # seconds between log lines while the spool dir stays unreadable
# Dispatches handed to the post pool: up to POOL_DEPTH per worker, so a worker that finished a
# post takes the next due one at once instead of idling while the loop commits results and
# ingests (the loop's pass, two fsyncs, took longer than a wave of posts). The price: an
# inbound delivery may wait behind that many posts per worker.
POOL_DEPTH = 8
# Single-event posts of one-per-request endpoints (Dispatch.bulk) have a budget of their own in
# the pool, BULK_DEPTH per worker, and are taken after everything else waiting there (PostPool):
# hundreds in the pool make each loop step carry hundreds of events, and a message does not
# wait behind them. model.batching.OPEN_PER_WORKER is the same figure per endpoint.
BULK_DEPTH = batching.OPEN_PER_WORKER
# Connections (threads) the posting process posts runs over (delivery/poster.py): on 2 cores, 2
# posted as fast as 4 and 8 (bench/events.py, bench/poster.py), with less GIL contention
POSTER_CONNECTIONS = 2
# seconds before writing unrecorded attempt results again: doubling from the first to the last
RECORD_RETRY_FIRST = 1.0
RECORD_RETRY_MAX = 60.0


def registered_event(bounce: dict, at: str) -> dict:
    """The `registered` event for an address a hard bounce put on the block list (its
    bounce_type is null, as of every type but `bounced`: `reason` says why)."""
    fields = {k: bounce.get(k) for k in (
        "recipient", "queue_id", "sender", "header_from", "message_id", "subject", "dsn",
        "remote_host", "relay", "reply", "client_addr", "auth_user", "host_name")}
    fields["custom_headers"] = dict(bounce.get("custom_headers") or {})
    source = bounce.get("source") if bounce.get("source") in ("log", "dsn") else "log"
    return Event(**fields, id=f"registered-{bounce['recipient']}-{bounce['id']}", type="registered",
                 at=at, source=source, reason="hard bounce").to_meta()


def _registry():
    """The payload registry, imported when first needed: MIME parsing only matters once we post."""
    from mxhook.payloads import registry

    return registry


def _payload_name(target: Target, native: str) -> str:
    """How a render error names a target's payload ("cannot render the ... payload"): its
    template's version, its dialect, or `native`."""
    if target.template is not None:
        return f"template v{target.template}"
    return native if target.dialect in (None, "native") else target.dialect


@dataclass(frozen=True)
class SpoolerSettings(config_mod.FromConfig):
    """The keys the spooler reads, typed and checked by the config schema."""

    SECTION = "spooler"
    workers: int
    poll_interval: float
    ingest_batch: int
    max_attachment_size: int
    max_payload_size: int
    max_response_bytes: int
    user_agent: str
    retry_time_scale: float
    disable_after_days: float
    log_unknown_domains: bool
    inbound_log_days: float
    event_log_days: float
    blocklist: bool = config_mod.from_section("milter")
    allow_networks: list = config_mod.from_section("http")


class Spooler:
    def __init__(self, cfg: config_mod.Config, *,
                 session_factory: Callable | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random):
        self.cfg = cfg
        self.spool_dir = cfg.spool_dir
        settings = SpoolerSettings.from_config(cfg)
        self.workers = settings.workers
        self.poll_interval = settings.poll_interval
        self.ingest_batch = settings.ingest_batch
        self.max_attachment_size = settings.max_attachment_size
        self.max_payload_size = settings.max_payload_size
        self.max_response_bytes = settings.max_response_bytes
        self.user_agent = settings.user_agent
        self.scale = settings.retry_time_scale
        # days without a successful attempt after which a rule/endpoint is disabled (0 = never)
        self.disable_after_days = settings.disable_after_days
        # the rules' and endpoints' templates, read by the workers as they render (cached)
        self.templates = db_mod.Templates(cfg.rules_db)
        self.block_hard_bounces = settings.blocklist
        self.feedback = feedback.Handler(cfg.value("tracking", "key_file"))  # mail to mxhook's own addresses
        self.log_unknown_domains = settings.log_unknown_domains
        # every post goes through the SSRF guard, with the admin's allowlist
        self.session_factory = session_factory or (lambda: webhook.make_session(settings.allow_networks))
        # the requests of runs are posted from a process of their own, on the other core (a
        # session given by the caller cannot go there: then they are posted here)
        self.poster = None if session_factory else PostingProcess(
            settings.allow_networks, connections=POSTER_CONNECTIONS)
        # refreshed on the loop before posts are handed out (`send`): a rotation applies to the
        # next attempt; the workers read the cache without a query
        self.signing_keys = db_mod.SigningKeys(cfg.rules_db)
        self.clock = clock
        self.monotonic = monotonic  # pauses and waits (tests drive both clocks)
        self.rand = rand  # jitter of the retry schedule (tests inject a fixed one)

        spool.ensure_dirs(self.spool_dir)
        state_dir = os.path.dirname(os.path.abspath(cfg.state_db))
        os.makedirs(state_dir, exist_ok=True)
        # commits are made durable before the spool files they took in are unlinked, off the
        # loop (statedb's module docstring): `durable=` of the reader below
        self.state = StateStore(cfg.state_db, cache_kib=statedb.WRITER_CACHE_KIB, durable_commits=False)
        if integrity.read_fault(cfg.state_db) is not None:  # stopped for damage before
            found = integrity.quick_check(self.state.conn)
            if found:
                self.state.close()
                raise integrity.StateDamaged("; ".join(found))
            integrity.clear_fault(cfg.state_db)
            log.warning("state.db %s passes SQLite's quick_check again: going on", cfg.state_db)
        self.state.checkpoint_in_background()
        self.retention = logs.Retention(self.state, settings.inbound_log_days, settings.event_log_days)
        # fetch URLs of omitted contents ([web] public_url): the key file is read again when it
        # changes, on the loop (`send`); the workers read the value as it is
        self.attachment_keys = attachments.key_file(cfg)
        self.fetch_urls = attachments.fetch_urls(cfg, self.attachment_keys)
        self._key_file_error: str | None = None
        if self.fetch_urls is not None:  # smaller messages cannot have a content either cap omits
            self.state.keep_bodies_over = min(self.max_attachment_size, self.max_payload_size // 4)
        self.executor = PostPool(self.workers, "mxhook-post")
        self.capacity = self.workers * POOL_DEPTH  # dispatches in the pool, posting or queued
        self.bulk_capacity = self.workers * BULK_DEPTH  # and bulk ones beside them
        self.inflight: dict[Future, Dispatch] = {}
        self._stop = threading.Event()
        self._local = threading.local()
        self.endpoints = db_mod.EndpointsView(cfg.rules_db)
        self.event_headers = tuple(cfg.value("milter", "event_headers"))  # each endpoint adds its own
        self._endpoints_seen = 0  # EndpointsView.generation last synced into state.db
        self._step_endpoints: dict[int, Endpoint] | None = None  # while a step runs (`_step`)
        self._in_step = False
        self._block_retry_at = 0.0
        self._block_error: str | None = None
        self.reader = spool.Reader(self.spool_dir, batch_files=self.ingest_batch,
                                   check=ingest.check_record, durable=self.state.make_durable)
        self.more_waiting = False  # the last batch stopped at spool.BATCH_BYTES or BATCH_RECORDS: more are ready
        self._scan_error: str | None = None  # why the spool dir could not be read, while it cannot
        self._scan_error_logged = 0.0  # monotonic time of that error's last log line
        # Skipping queries that cannot find anything (each costs a GIL round trip while the
        # workers render): when the next inbound delivery is due (reset by inbound ingest and
        # results), and the hard-bounce counter last looked at.
        self._inbound_due_at = 0.0
        self._blocks_checked: int | None = None
        # 410 Gone, continuous failure, rules/endpoints enabled again (delivery.health)
        self.health = Health(self.state, cfg.rules_db, disable_after_days=self.disable_after_days,
                             clock=self.clock, on_state_error=_state_error,
                             on_rules_change=self._wake_deliveries)
        self._state_version = self.state.data_version()  # moves when the CLI requeues
        # Attempt results not yet written to state.db, and the pause before the next try (see
        # record_results).
        self._unrecorded: list[AttemptRecord] = []
        self._failing: dict[tuple[str, str], str | None] = {}  # of those: owner -> URL (Health.check_failing)
        # Targets that answered 410 Gone while other dispatches to them waited in the pool:
        # those are withheld (`_post`) until the loop settled the 410 (disabling the rule).
        self._gone_targets: set[tuple] = set()
        self._gone_lock = threading.Lock()
        self._record_pause = 0.0
        self._record_retry_at = 0.0

    def _wake_deliveries(self) -> None:
        """Deliveries may be due now (a rule was enabled or disabled): look at the queue."""
        self._inbound_due_at = 0.0

    # control ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: no new posts, in-flight ones complete. Safe from signal
        handlers and other threads."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def reload(self, settings: SpoolerSettings) -> None:
        """Take the RELOADABLE keys of `settings` (`systemctl reload`, from the reload thread:
        each is one attribute the loop and the workers read as they go)."""
        self.poll_interval = settings.poll_interval
        self.max_response_bytes = settings.max_response_bytes
        self.user_agent = settings.user_agent
        self.scale = settings.retry_time_scale
        self.disable_after_days = self.health.disable_after_days = settings.disable_after_days
        self.log_unknown_domains = settings.log_unknown_domains

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)  # posts under way finish
        if self.poster is not None:
            self.poster.close()
        self.reader.close()
        self.state.close()
        self.endpoints.close()
        self.signing_keys.close()
        self.templates.close()
        self.health.close()

    # 1. ingest: take -> store.ingest -> finish ----------------------------------------
    def ingest_once(self) -> int:
        """One batch from the spool into state.db; returns how many files were handled
        (ingested or moved to bad/). The reader reads the next batch ahead while this one is
        written, and unlinks this one's files only after the COMMIT."""
        batch = self.reader.take()
        self.more_waiting = False
        if not batch.taken:
            return 0
        try:
            done = self._ingest(batch) if batch.records else []
        except BaseException:
            self.reader.give_back(batch)
            raise
        self.reader.finish(batch, done)
        # more ready, and state.db takes them: no wait (refused, they wait for poll_interval)
        self.more_waiting = batch.cut_short and len(done) == len(set(batch.files))
        return batch.quarantined + len(done)

    def _ingest(self, batch: spool.Batch) -> list[str]:
        """Ingest in one transaction; the files safe to unlink. If the batch fails for a reason
        other than the database itself, ingest one by one so one odd record cannot hold up
        the rest (it goes to bad/)."""
        records, paths, raw_meta = batch.records, batch.files, batch.raw_meta
        endpoints = list(self.current_endpoints().values())
        kw = {"endpoints": endpoints, "block_hard_bounces": self.block_hard_bounces,
              "raw_meta": raw_meta, "prerender": event_payloads.prerenderer(endpoints),
              "wants": _registry().wanted_types, "log_unknown_domains": self.log_unknown_domains,
              "feedback": self.feedback}
        if any(r.kind == "inbound" for r in records):
            self._inbound_due_at = 0.0
        try:
            new = ingest.records(self.state, records, now=self.clock(), **kw)
            log.debug("ingested %d record(s) (%d new)", len(records), new)
            return list(dict.fromkeys(paths))
        except Exception as exc:
            _raise_if_damage(exc)  # not the records' fault: they stay in new/
            if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error, locked
                log.error("cannot ingest %d spool file(s) into state.db now, will retry: %s",
                          len(records), exc)
                return []
            log.warning("batch ingest failed (%s); ingesting one by one", exc)
        # A file is the unit here: a segment's records go in together or the file stays
        # (unlinking a file with one record not ingested would lose it).
        by_file: dict[str, list[spool.Record]] = {}
        for record, path in zip(records, paths):
            by_file.setdefault(path, []).append(record)
        done = []
        for path, in_file in by_file.items():
            try:
                ingest.records(self.state, in_file, now=self.clock(), **kw)
                done.append(path)
            except Exception as exc:
                _raise_if_damage(exc)
                if isinstance(exc, sqlite3.OperationalError):
                    log.error("cannot ingest into state.db now, will retry: %s", exc)
                    break
                # A damaged index can also look like a bad record (a constraint that fails):
                # the file goes to bad/ only if the database itself checks out.
                found = integrity.quick_check(self.state.conn)
                if found:
                    raise integrity.StateDamaged("; ".join(found)) from exc
                self.reader.quarantine(path, f"cannot ingest: {type(exc).__name__}: {exc}")
        return done

    # 2. dispatch: pick due -> send -> record ---------------------------------------------
    def dispatch(self, *, flush_events: bool = False) -> int:
        """Pick due event batches, then due inbound deliveries, and send them to the post pool
        while it has room (`capacity`); returns how many posts were started. None while attempt
        results could not be written (`record_results`: a write failed and waits to be tried
        again). Results collected but not written yet are left out of the picks: a dispatch is
        posted again only after a crash lost its result."""
        if self._record_pause:
            return 0
        # batches are sent before deliveries are picked: both take from the room in the pool
        started = self.send(self.pick_batches(flush=flush_events))
        if self._record_pause:  # writing the results with the new batches failed
            return started
        return started + self.send(self.pick_deliveries())

    def send(self, due: list[Dispatch]) -> int:
        """Hand dispatches to the post pool (`pipeline.attempt`); returns how many."""
        if due:
            try:
                self.signing_keys.refresh()  # the workers sign with the keys as of now
            except sqlite3.Error:
                pass  # logged; nothing ever read: each attempt tries again and is deferred
            self._refresh_fetch_urls()
        for d in due:
            self.inflight[self.executor.submit(pipeline.attempt, d, self._post, self.clock,
                                               send_run=self._post_run, behind=d.bulk)] = d
        return len(due)

    def _room(self) -> tuple[int, int]:
        """(dispatches, bulk dispatches) the pool has room for."""
        bulk = sum(1 for d in self.inflight.values() if d.bulk)
        return self.capacity - (len(self.inflight) - bulk), self.bulk_capacity - bulk

    def _refresh_fetch_urls(self) -> None:
        if self.fetch_urls is None:
            return
        try:
            self.fetch_urls = attachments.fetch_urls(self.cfg, self.attachment_keys)
            self._key_file_error = None
        except (OSError, config_mod.ConfigError) as exc:  # keep signing with the keys read before
            if str(exc) != self._key_file_error:  # once per fault, not on every round
                self._key_file_error = str(exc)
                log.warning("cannot read the fetch URLs' keys (signing with those read before): %s", exc)

    def _busy(self) -> set[str]:
        """Ids of the dispatches in the pool or with a result not written yet: not to be picked."""
        return {d.id for d in self.inflight.values()} | {r.delivery_id for r in self._unrecorded}

    def pick_deliveries(self) -> list[Dispatch]:
        """Inbound deliveries due now, as many as the pool has room for (after `pick_batches`,
        which reloaded what rules.db says)."""
        free = self._room()[0]
        if free <= 0 or self.stopping:
            return []
        # which rules are disabled now: `dispatch` looked at rules.db just before (pick_batches)
        now = self.clock()
        try:
            if now < self._inbound_due_at:  # nothing can be due yet: spare the query...
                version = self.state.data_version()
                if version == self._state_version:
                    return []
                self._state_version = version  # ...unless `mxhook replay` requeued something
        except sqlite3.Error as exc:
            _state_error(exc, "cannot read state.db")
            return []
        busy = self._busy()
        skip = self.health.disabled_rules  # their deliveries wait until the rule is enabled again
        try:
            due = self.state.due(now, free, exclude=busy, skip_rules=skip)
            if len(due) < free:  # everything due now is taken: when is the next one due?
                nxt = self.state.next_due_at(skip_rules=skip)
                self._inbound_due_at = to_datetime(nxt).timestamp() if nxt else float("inf")
        except sqlite3.Error as exc:
            _state_error(exc, "cannot read due deliveries from state.db")
            return []
        return [self._delivery_dispatch(d) for d in due]

    def _delivery_dispatch(self, d: DueDelivery) -> Dispatch:
        def render():
            if d.raw is None:
                raise pipeline.Unsendable("message body is no longer stored")
            return self._rendered(lambda: _registry().inbound_request(
                d.target, delivery_id=d.id, meta=d.meta, raw=d.raw, recipients=d.recipients,
                **self._attempt_context(), max_attachment_size=self.max_attachment_size,
                max_payload_size=self.max_payload_size, message_id=d.message_id,
                fetch_urls=self.fetch_urls))
        return Dispatch(
            id=d.id, target=d.target, attempts=d.attempts, first_attempt_at=d.first_attempt_at,
            owner=("rule", statedb.rule_ref(d.target.id, d.rule_name)),
            label=logsetup.label(f"delivery {d.id} rule={d.rule_name}",
                                 [q] if (q := d.meta.get("queue_id")) else []),
            payload=_payload_name(d.target, d.target.format), render=render,
        )

    def _attempt_context(self) -> dict:
        """(worker thread) What an attempt's body is rendered with besides its content: the
        time, a fresh nonce (signatures: the randomness lives here, the payloads are pure), the
        stored templates, the clock that bounds a template's render."""
        return {"now": self.clock(), "nonce": _nonce(),
                "templates_loader": self.templates.get, "clock": self.monotonic}

    @staticmethod
    def _rendered(render: Callable[[], pipeline.Body]) -> pipeline.Body:
        """(worker thread) `render()`; rules.db unreadable while a template is read: the attempt
        is deferred (pipeline.NotNow), not failed: the template is there, just not readable now."""
        try:
            return render()
        except sqlite3.Error as exc:
            raise pipeline.NotNow(f"cannot read the template from rules.db: {exc}") from None

    def pick_batches(self, *, flush: bool = False) -> list[Dispatch]:
        """Make due batches and pick the open ones that are due, as many as the pool has room
        for. A batching endpoint has one open batch at a time (its events in order); a
        one-event-per-request one up to model.batching.open_limit runs.
        `flush`: make batches of whatever is pending, due or not (--once).

        The results not written yet are written in the transaction that makes the new batches
        (one commit a step, not two): a batch whose result closes it (succeeded, failed) has
        room taken by none, and an endpoint's next batch is made after its previous one is
        settled in state.db, in the same COMMIT."""
        free, free_bulk = self._room()
        if self.stopping or (free <= 0 and free_bulk <= 0):
            return []
        taken = self._busy()  # as of now: the results written below do not make them due
        closing = {r.delivery_id for r in self._unrecorded if r.status in ("succeeded", "failed")}
        try:
            eps = self.current_endpoints()
            now = self.clock()
            open_batches: dict[int, list[EventBatch]] = {}
            for batch in self.state.open_batch_list():
                if batch.id not in closing:
                    open_batches.setdefault(batch.endpoint_id, []).append(batch)
            shapes = {i: _batch_shape(ep, self.workers) for i, ep in eps.items() if ep.enabled}
            # batches made before the endpoint's payload changed to fewer events per request
            endpointbatches.split_oversized(self.state, open_batches,
                                            {i: s[0] for i, s in shapes.items()}, self._busy())
            # room for more open batches (one posting, or with its result not written yet, is
            # still open in state.db)
            room = {i: limit - len(open_batches.get(i, ())) for i, (_, limit) in shapes.items()}
            candidates = [i for i, r in room.items() if r > 0]
            pending = {i: self.state.pending_stats(i, shapes[i][0] * room[i]) for i in candidates}
            sizes = {i: shapes[i][0] for i in candidates}
            runs = {i for i in candidates if shapes[i][1] > 1}  # one-per-request: due at once
            wanted = [(i, sizes[i], batching.batches_to_make(pending[i][0], sizes[i], room[i]),
                       eps[i].destination.url)
                      for i in batching.due_batches(pending, eps, now, flush=flush, sizes=sizes,
                                                    at_once=runs)]
            made: list[EventBatch] = []
            if wanted and not self._write_results(
                    lambda results: made.extend(self.state.create_batches(wanted, now, results=results))):
                return []
            for batch in made:
                open_batches.setdefault(batch.endpoint_id, []).append(batch)
                log.debug("event batch %s for endpoint %d: %d event(s)", batch.id, batch.endpoint_id, batch.size)
            return self._due_batches(open_batches, eps, shapes, iso(now), free, free_bulk, taken)
        except sqlite3.Error as exc:
            _state_error(exc, "cannot read event batches from state.db")
            return []

    def _due_batches(self, open_batches: dict[int, list[EventBatch]], eps: dict[int, Endpoint],
                     shapes: dict[int, tuple[int, int]], due_at: str, free: int,
                     free_bulk: int, taken: set[str]) -> list[Dispatch]:
        """The open batches to post now, up to `free` (those of one-per-request endpoints up
        to `free_bulk`: they are bulk dispatches): due, not posting, result written. A
        batching endpoint's first open batch only, and none while it is posting or settling
        (`taken`: the ids posting or settling)."""
        picked = []
        room = {False: free, True: free_bulk}
        for endpoint_id in sorted(open_batches):
            if endpoint_id not in shapes:  # removed or disabled: its batches wait
                continue
            ep, limit = eps[endpoint_id], shapes[endpoint_id][1]
            batches = open_batches[endpoint_id]
            if limit == 1 and any(b.id in taken for b in batches):
                continue  # in order: nothing while one of its batches is posting or settling
            bulk = limit > 1  # one event per request
            for batch in batches[:limit]:
                if batch.id in taken or (batch.next_attempt_at or "") > due_at:
                    continue
                if room[bulk] <= 0:
                    break
                room[bulk] -= 1
                batch.events = self.state.batch_events(batch, rendered=True)
                picked.append(self._batch_dispatch(batch, ep, bulk))
        return picked

    def _batch_dispatch(self, batch: EventBatch, ep: Endpoint, bulk: bool) -> Dispatch:
        """A batch's dispatch: one request, or for a one-per-request endpoint (`bulk`) a run,
        a request per event (pipeline.Part)."""
        target = ep.target

        def render(events, request_id):
            return self._rendered(lambda: _registry().event_request(
                target, events, request_id=request_id, version=ep.version, tz=ep.timezone,
                event_headers=self.event_headers, selected_headers=self.endpoints.selected_headers,
                **self._attempt_context()))
        parts: tuple[pipeline.Part, ...] = ()
        if bulk:
            parts = tuple(
                pipeline.Part(part_id, seq, lambda e=event, i=part_id: render([e], i))
                for seq, event in zip(batch.seqs, batch.events)
                for part_id in (batching.run_part_id(batch.id, seq, batch.size),))
        return Dispatch(
            id=batch.id, target=target, attempts=batch.attempts,
            first_attempt_at=batch.first_attempt_at, owner=("endpoint", str(ep.id)),
            label=logsetup.label(f"event batch {batch.id} endpoint={ep.id} events={batch.size}",
                                 event_payloads.queue_ids(batch.events or (), 10)),
            payload=_payload_name(target, "event"), bulk=bulk, parts=parts,
            render=None if parts else lambda: render(batch.events, batch.id),
        )

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.session_factory()
        return session

    def _post(self, target: Target, body: pipeline.Body, webhook_id: str) -> webhook.Outcome:
        """(worker thread) One POST through this worker's session, signed with the keys active
        now (as of the loop's last `SigningKeys.refresh`). Withheld when its target answered
        410 Gone to a post the loop has not settled yet."""
        return self._post_run(target, [(body, webhook_id)])[0]

    def _post_run(self, target: Target, requests) -> list[webhook.Outcome]:
        """(worker thread) `_post` for each (body, webhook-id) of a run: by the posting process
        (several at once, on the other core), or for a single request or a caller's own
        sessions here, over this worker's session (a kept-alive connection). Withheld as a
        whole, before the first."""
        key = _target_key(target)
        if key in self._gone_targets:
            raise pipeline.Withheld()
        keys = self.signing_keys.active(target.kind, target.id, refresh=False)
        if self.poster is not None and len(requests) > 1:
            outcomes = self.poster.post_many(
                target, [(body.body, body.content_type, webhook_id) for body, webhook_id in requests],
                keys=keys, user_agent=self.user_agent, max_response_bytes=self.max_response_bytes)
        else:
            session = self._session()
            outcomes = [webhook.deliver(session, target, body.body, body.content_type, webhook_id,
                                        user_agent=self.user_agent,
                                        max_response_bytes=self.max_response_bytes, keys=keys)
                        for body, webhook_id in requests]
        if any(o.status_code == pipeline.GONE for o in outcomes):
            with self._gone_lock:
                self._gone_targets.add(key)
        return outcomes

    def current_endpoints(self) -> dict[int, Endpoint]:
        """The endpoints as rules.db has them now. When they changed, their URLs are recorded
        in state.db (for the event log) and events pending for removed endpoints are failed.
        Until rules.db could be read once, nothing is failed. Within one step of the loop,
        rules.db is looked at once: a query more on the loop costs a wait for the GIL (the
        post workers and the spool reader hold it), ~1.5 ms under load (bench/events.py)."""
        if self._step_endpoints is not None:
            return self._step_endpoints
        eps = self.endpoints.current()
        if self.endpoints.generation != self._endpoints_seen:
            try:
                self.state.sync_endpoints(eps.values(), now=self.clock())
                failed = self.state.fail_removed_endpoints(eps.keys(), now=self.clock())
                self._endpoints_seen = self.endpoints.generation
                if failed:
                    log.warning("%d event(s) pending for removed endpoints marked failed", failed)
            except sqlite3.Error as exc:
                _state_error(exc, "cannot record endpoint changes in state.db (will retry)")
        if self.endpoints.generation != self.health.seen:
            self.health.refresh(eps, self.endpoints.generation)
        if self._in_step:
            self._step_endpoints = eps
        return eps

    # 2b. hard bounces -> block list -------------------------------------------------------
    def process_blocks(self) -> int:
        """Put the recipients of hard bounces on the block list; returns how many bounces were
        handled. rules.db trouble is logged and retried later (the bounces stay pending)."""
        if not self.block_hard_bounces or self.clock() < self._block_retry_at:
            return 0
        marker = self.state.hard_bounces_ingested
        if marker == self._blocks_checked:  # no hard bounce since the last look
            return 0
        try:
            pending = ingest.pending_blocks(self.state, BLOCK_BATCH)
        except sqlite3.Error as exc:
            _state_error(exc, "cannot read hard bounces from state.db")
            return 0
        if not pending:
            self._blocks_checked = marker
            return 0
        done: list[tuple[str, dict | None]] = []
        try:
            store = self.health.rules_store()
            for bounce in pending:
                if bounce["type"] != "bounced":  # an unsubscribe, resubscribe or complaint
                    done.append(feedback.settle(store, bounce, iso(self.clock())))
                    continue
                # the address the application used: orig_to when Postfix rewrote it, else to
                address = bounce.get("orig_recipient") or bounce.get("recipient") or ""
                try:
                    added = store.block_add(
                        address, reason=f"hard bounce: {bounce.get('reply') or bounce.get('dsn') or 'bounced'}",
                        dsn=bounce.get("dsn"), source="bounce", event_id=bounce["id"],
                    )
                except RuleError as exc:  # not an address: nothing to block
                    logsetup.for_message(log, bounce.get("queue_id")).warning(
                        "hard bounce %s: %s; not block-listed", bounce["id"], exc)
                    done.append((bounce["id"], None))
                    continue
                # Added now, or by this very bounce before a crash kept us from recording it:
                # the registered event is owed (its id makes storing it twice harmless).
                owed = added or (store.block_get(address) or {}).get("event_id") == bounce["id"]
                event = registered_event({**bounce, "recipient": db_mod.normalize_block_address(address)},
                                         iso(self.clock())) if owed else None
                if added:
                    logsetup.for_message(log, bounce.get("queue_id")).info(
                        "block list: added %s after hard bounce %s (dsn %s)", address,
                        bounce["id"], bounce.get("dsn") or "-")
                done.append((bounce["id"], event))
        except (sqlite3.Error, RuleError, OSError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._block_error:
                log.error("cannot update the block list in %s (will retry): %s", self.cfg.rules_db, message)
                self._block_error = message
            self._block_retry_at = self.clock() + BLOCK_RETRY_AFTER
            self.health.close()
        if done:
            self._block_error = None
            try:
                endpoints = list(self.current_endpoints().values())
                ingest.finish_blocks(self.state, done, now=self.clock(), endpoints=endpoints,
                                     prerender=event_payloads.prerenderer(endpoints),
                                     wants=_registry().wanted_types)
            except sqlite3.Error as exc:
                _state_error(exc, "cannot record block list results in state.db (will redo)")
                return 0
            if len(done) == len(pending) < BLOCK_BATCH:
                self._blocks_checked = marker
        return len(done)

    # 2c. record: the results of finished posts ------------------------------------------
    def collect_finished(self, done: set[Future] | None = None) -> int:
        """Settle finished posts (`pipeline.settle`) into the results to write
        (`record_results`); returns how many."""
        if done is None:
            done = {f for f in self.inflight if f.done()}
        results = []
        failing = self._failing
        now = self.clock()
        for fut in done:
            d = self.inflight.pop(fut)
            try:
                finished = fut.result()
            except Exception as exc:  # pipeline.attempt does not raise; belt and braces
                finished = pipeline.Attempt(d, webhook.Outcome("deferred", error=f"internal error: {exc}"), now)
            outcome = finished.outcome
            if d.target.kind == "rule":
                self._inbound_due_at = 0.0
            if outcome is None:  # withheld: still due, as if never picked
                log.debug("%s: withheld (its target answered 410 Gone)", d.label)
                continue
            if any(o.status != "succeeded" and o.status_code != pipeline.GONE
                   for o in (finished.outcomes or (outcome,))):
                failing[d.owner] = d.target.url
            if d.parts:
                results.extend(pipeline.settle_run(finished, now, gone=self._gone, scale=self.scale,
                                                   rand=self.rand))
            else:
                results.append(pipeline.settle(finished, now, gone=self._gone, scale=self.scale,
                                               rand=self.rand))
        self._unrecorded.extend(results)
        if self._gone_targets:  # settled: withhold only from what is still in the pool
            with self._gone_lock:
                self._gone_targets &= {_target_key(d.target) for d in self.inflight.values()}
        return len(results)

    def record_finished(self, done: set[Future] | None = None) -> int:
        """Settle finished posts and write every result not written yet, in one transaction;
        returns how many posts finished."""
        n = self.collect_finished(done)
        self.record_results()
        return n

    def _gone(self, d: Dispatch, outcome: webhook.Outcome) -> str:
        return self.health.gone(d.owner, d.target.url, outcome)

    def record_results(self) -> bool:
        """Write the attempt results not yet in state.db (in one transaction); True when none
        is left.

        A result that cannot be written is kept here and written again later, after a pause
        that doubles from RECORD_RETRY_FIRST up to RECORD_RETRY_MAX seconds; until then
        `dispatch` starts no post at all. State.db still says such a delivery is due, so
        posting on would send it again at once, and again after every failed write: the
        receiver would be flooded. A damaged state.db stops the spooler (`_state_error`)."""
        if not self._unrecorded:
            return True
        return self._write_results(self.state.record_attempts)

    def _write_results(self, write: Callable[[list[AttemptRecord]], object]) -> bool:
        """`write(results)`: the results not written yet, in one transaction with whatever
        else `write` puts in it (`record_results`, whose pause and retry apply); True when it
        was written."""
        if self.monotonic() < self._record_retry_at:
            return False
        try:
            write(self._unrecorded)
            self._unrecorded = []
        except sqlite3.Error as exc:
            self._record_pause = min(max(self._record_pause * 2, RECORD_RETRY_FIRST), RECORD_RETRY_MAX)
            self._record_retry_at = self.monotonic() + self._record_pause
            _state_error(exc, f"cannot record {len(self._unrecorded)} "
                              f"attempt result(s) in state.db; no posts until they are recorded "
                              f"(next try in {self._record_pause:g} s)")
            return False
        if self._record_pause:
            log.warning("attempt results recorded in state.db again: posting resumes")
            self._record_pause = 0.0
        # the failures are in target_health now: disable what has failed long enough
        failing, self._failing = self._failing, {}
        self.health.check_failing(failing, self.clock())
        return True

    def drain(self) -> None:
        """Wait for every in-flight post and record its result. Stopping, the dispatches that
        no worker took yet are not posted: state.db still has them due."""
        while self.inflight:
            if self.stopping:
                for fut in [f for f in self.inflight if f.cancel()]:
                    del self.inflight[fut]
                if not self.inflight:
                    break
            done, _ = wait(list(self.inflight), return_when=FIRST_COMPLETED)
            self.record_finished(done)
        if self._unrecorded:
            self._record_retry_at = 0.0  # stopping: one last try, pause or not
            if not self.record_results():
                log.error("%d attempt result(s) not recorded in state.db: they will be posted again "
                          "after a restart, with the same webhook-id", len(self._unrecorded))

    # 3. the loop ------------------------------------------------------------------------
    def run_once(self, *, flush_events: bool = True) -> None:
        """Ingest everything pending, one dispatch round, wait for its posts. With
        `flush_events` (the default, as for --once), every endpoint's pending events make a
        batch now, due or not."""
        self.reader.tidy()
        while self.ingest_once():
            pass
        self.process_blocks()
        self.dispatch(flush_events=flush_events)
        self.drain()

    def _step(self) -> None:
        """One pass of the loop: ingest -> block list -> settle finished posts -> pick what is
        due and send it -> write the results -> wait.

        The results are written after the next posts started, so the workers post while the
        loop waits for the COMMIT's fsync; what finishes meanwhile goes into the next pass's
        COMMIT. When the pass makes event batches, the results are written with them, in
        one COMMIT (`pick_batches`): an endpoint's next batch is made only once its previous
        one is settled in state.db. A dispatch whose result is not written yet is not picked again (`_busy`): if
        the spooler dies first, it is posted again after the restart, with the same
        webhook-id."""
        background = self.state.checkpoint_error  # the checkpoint thread found damage?
        if background is not None:
            _raise_if_damage(background)
        self.reader.tidy()
        self._in_step, self._step_endpoints = True, None
        try:
            handled = self._ingest_and_dispatch()
        finally:
            self._in_step, self._step_endpoints = False, None
        self.retention.background(self.clock(), self.monotonic)  # a few bounded transactions
        if handled >= self.ingest_batch or self.more_waiting:
            return  # more files waiting: no sleep
        # files held back behind the milter's open segment: it is sealed within 0.2 s
        pause = min(self.poll_interval, HELD_BACK_PAUSE) if self.reader.held_back else self.poll_interval
        self._pause(pause)

    def _ingest_and_dispatch(self) -> int:
        """The step's work on state.db, with the endpoints as of its first look
        (`current_endpoints`); returns how many spool files were handled."""
        try:
            handled = self.ingest_once()
        except OSError as exc:  # the spool dir itself is unreadable
            self._spool_unreadable(exc)
            handled = 0
        else:
            if self._scan_error is not None:
                log.warning("%s can be read again", self.spool_dir)
                self._scan_error = None
        self.process_blocks()
        self.collect_finished()
        self.dispatch()  # writes the results with the batches it makes (pick_batches)
        self.record_results()
        return handled

    def _spool_unreadable(self, exc: OSError) -> None:
        """The spool dir cannot be scanned (removed, wrong permissions, I/O error): logged when
        it starts, when the reason changes and every SCAN_ERROR_REPEAT seconds while it lasts
        (the step runs every poll_interval meanwhile, delivering what state.db holds)."""
        why = f"cannot scan {self.spool_dir}: {exc}"
        now = self.monotonic()
        if why != self._scan_error or now - self._scan_error_logged >= SCAN_ERROR_REPEAT:
            log.error("%s; mail and events spooled there wait until it can be read", why)
            self._scan_error_logged = now
        self._scan_error = why

    def _pause(self, pause: float) -> None:
        """Wait up to `pause` seconds; less when a post finishes or there are files to ingest
        (`spool.Reader.changed`), looked at every SPOOL_WATCH seconds. A finished post is
        collected by the next step with every other one finished by then: one commit for all
        of them (collecting the first alone made a commit per post). An unreadable spool dir
        counts as changed (its next scan says why): not a reason to wake."""
        watch_spool = self._scan_error is None
        deadline = self.monotonic() + pause
        while not self.stopping and not (watch_spool and self.reader.changed()):
            left = deadline - self.monotonic()
            if left <= 0:
                return
            if self.inflight:
                done, _ = wait(list(self.inflight), timeout=min(left, SPOOL_WATCH),
                               return_when=FIRST_COMPLETED)
                if done:
                    return
            else:
                self._stop.wait(min(left, SPOOL_WATCH))

    def run(self) -> None:
        log.info("started: spool %s, state %s, %d worker(s)", self.spool_dir, self.cfg.state_db, self.workers)
        alive = heartbeat.Heartbeat(heartbeat.path_for(self.cfg.state_db, heartbeat.SPOOLER))
        systemd.ready(f"delivering: spool {self.spool_dir}, {self.workers} worker(s)")
        while not self.stopping:
            alive.beat()  # for `mxhook check`: this loop is progressing
            try:
                self._step()
            except integrity.StateDamaged:
                raise
            except Exception as exc:  # a bug must not stop delivery of everything else
                _raise_if_damage(exc)
                log.exception("error in the spooler loop; continuing")
                self._stop.wait(self.poll_interval)
        systemd.stopping(f"stopping: waiting for {len(self.inflight)} post(s) in flight")
        if self.inflight:
            log.info("stopping: waiting for %d post(s) in flight", len(self.inflight))
        self.drain()
        alive.stop()
        log.info("stopped")


class PostPool(Executor):
    """`workers` threads running what is submitted, in order, except that work submitted
    `behind` is taken only when nothing else waits: a one-per-request endpoint's runs never
    hold up an inbound delivery or a batch. (ThreadPoolExecutor's
    queue is one FIFO.) Each submission puts a token in a SimpleQueue, so an idle worker
    waits on C code and wakes for exactly one item, the most urgent one waiting then."""

    def __init__(self, workers: int, name: str):
        self._tokens: "queue.SimpleQueue[bool | None]" = queue.SimpleQueue()
        self._first: deque = deque()
        self._behind: deque = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, behind: bool = False, **kwargs) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        future: Future = Future()
        (self._behind if behind else self._first).append((future, fn, args, kwargs))
        self._tokens.put(True)
        return future

    def _work(self) -> None:
        while self._tokens.get() is not None:
            with self._lock:  # a token is an item waiting in one lane or the other
                lane = self._first or self._behind
                if not lane:  # cancelled by shutdown
                    continue
                future, fn, args, kwargs = lane.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with `cancel_futures` what no worker took yet is cancelled,
        else it is run first; `wait` for the workers to finish."""
        self._closed = True
        if cancel_futures:
            with self._lock:
                cancelled = [*self._first, *self._behind]
                self._first.clear()
                self._behind.clear()
            for future, *_ in cancelled:
                future.cancel()
        for _ in self._threads:
            self._tokens.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


NONCE_BYTES = 16
_random = threading.local()  # each worker's unused bytes of its last os.urandom call


def _nonce() -> str:
    """(worker thread) NONCE_BYTES fresh bytes of os.urandom as hex, as secrets.token_hex
    gives, drawn from a buffer read 4 KiB at a time: one system call (and a GIL hand-off to
    the other workers) for 256 posts instead of one each. Every byte is used once."""
    buf, at = getattr(_random, "buf", b""), getattr(_random, "at", 0)
    if at + NONCE_BYTES > len(buf):
        buf = _random.buf = os.urandom(4096)
        at = 0
    _random.at = at + NONCE_BYTES
    return buf[at:at + NONCE_BYTES].hex()


def _batch_shape(ep: Endpoint, workers: int) -> tuple[int, int]:
    """(events per batch, open batches allowed) for an endpoint's payload with `workers`
    posting (model.batching)."""
    per_request = _registry().events_per_request(ep.target)
    return batching.batch_size(ep.max_events, per_request), batching.open_limit(per_request, workers)


def _target_key(target: Target) -> tuple:
    return (target.kind, target.id, target.name, target.url)


def _raise_if_damage(exc: BaseException) -> None:
    if integrity.is_damage(exc):
        raise integrity.StateDamaged(f"{type(exc).__name__}: {exc}") from exc


def _state_error(exc: sqlite3.Error, what: str) -> None:
    """A state.db access failed. Damage stops the spooler wherever it is found (StateDamaged,
    as at ingest: CRITICAL, the fault file, exit 3); anything else (busy, disk full, an I/O
    error) is logged and the step is tried again later."""
    _raise_if_damage(exc)
    log.error("%s: %s", what, exc)


def _stop_for_damage(state_db: str, exc: integrity.StateDamaged) -> int:
    """A damaged state.db stops the spooler: said loudly (CRITICAL, the fault file that
    `mxhook status` and `mxhook check` show, a non-zero exit for systemd). Spool files stay
    in new/: they are not what is wrong."""
    log.critical("state.db %s is damaged (%s): stopping; spool files stay in new/ until it is "
                 "restored from a backup (`mxhook check` runs SQLite's integrity check)", state_db, exc)
    integrity.record_fault(state_db, str(exc))
    return integrity.EXIT_DAMAGED


def tune_gc() -> None:
    """Collect less often, and never walk what start-up built. Every event allocates dicts
    that live until its batch is sent; at the default thresholds (700, 10, 10) the collector
    ran every few events and its older passes walked the recent-event cache again and again:
    4-5 % of the flow's CPU (bench/events.py). Cycles are rare here and still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)


# The [spooler] keys `systemctl reload` applies (Spooler.reload); the others need a restart.
RELOADABLE = frozenset(("spooler", k) for k in (
    "poll_interval", "max_response_bytes", "user_agent", "retry_time_scale", "disable_after_days",
    "log_unknown_domains"))


def main(argv: list[str] | None = None) -> int:
    with systemd.SignalThread(signal.SIGHUP) as reload:  # before any other thread starts
        return _run(argv, reload)


def _run(argv: list[str] | None, reload: systemd.SignalThread) -> int:
    parser = argparse.ArgumentParser(prog="mxhook-spooler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"config file (default: $MXHOOK_CONFIG or {config_mod.DEFAULT_PATH})")
    parser.add_argument("--once", action="store_true",
                        help="ingest what is pending, run one dispatch round, wait for it, exit")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        logsetup.setup("mxhook-spooler", cfg.get("spooler", "log"), cfg.get("spooler", "log_level"))
        # urllib3's debug lines carry request URLs, whose query strings may hold tokens
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        systemd.status(f"opening {cfg.state_db} (and migrating it after an upgrade)")
        spooler = Spooler(cfg)
    except integrity.StateDamaged as exc:
        return _stop_for_damage(cfg.state_db, exc)
    except (config_mod.ConfigError, OSError, sqlite3.Error) as exc:
        if integrity.is_damage(exc):
            return _stop_for_damage(cfg.state_db, integrity.StateDamaged(f"{type(exc).__name__}: {exc}"))
        print(f"mxhook-spooler: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, config_mod.ConfigError) else 1
    tune_gc()
    try:
        if args.once:
            spooler.run_once()
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: spooler.stop())
            reload.action = systemd.Reload(
                "mxhook-spooler", "spooler", cfg, (SpoolerSettings,), RELOADABLE,
                lambda merged: spooler.reload(SpoolerSettings.from_config(merged)), path=args.config,
                also_reads=(("paths", "state_db"), ("paths", "spool_dir"), ("paths", "rules_db"),
                            ("milter", "event_headers"), ("tracking", "key_file")))
            spooler.run()
    except integrity.StateDamaged as exc:
        return _stop_for_damage(cfg.state_db, exc)
    finally:
        spooler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
