"""The logs' retention on a big state.db: how long one prune batch (one transaction) holds the
writer, and the migration that adds the time index.

    python3 bench/retention.py [--messages 300000] [--events 300000] [--batch 500] [--dir DIR]

Builds a state.db with MESSAGES inbound messages (one delivery, two attempts, a log row each,
a 2 KB body on the pending ones) and as many denied rows, and EVENTS events fanned out to one
endpoint in batches of 100 with an attempt each; two thirds of everything are 60 days old, and
one old message and event in 20 are still pending (kept). The schema is written at version 1
and upgraded, timing the upgrade (the index on messages.received). Then one pass of
store.logs.Retention (30 days) with each batch (`step`: one write transaction with
synchronous=FULL, as the spooler runs it) timed; prints per phase the batches, rows deleted,
median / p99 / max milliseconds per batch, and the pass's total.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

import sqlite_utils  # noqa: E402

from mxhook.model.records import iso  # noqa: E402
from mxhook.store import logs, migrations, statedb  # noqa: E402

NOW = 1_800_000_000.0
OLD, YOUNG = NOW - 60 * 86400, NOW - 86400


def build(path: str, messages: int, events: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    migrations.migrate(db, statedb._MIGRATIONS[:1], name="state database")  # as schema 1 left it
    target = json.dumps({"id": 1, "name": "r1", "endpoint": "https://h.example/in"})
    conn.execute("BEGIN")
    for i in range(messages):
        t = iso((OLD if i % 3 else YOUNG) + i * 0.001)
        pending = i % 20 == 0
        mid, did = f"{i:016x}m", f"{i:016x}m-r1"
        conn.execute("INSERT INTO messages VALUES (?, ?, '{}', ?, 2048, ?)",
                     (mid, t, b"x" * 2048 if pending else None, t))
        status = "deferred" if pending else "succeeded"
        conn.execute("INSERT INTO deliveries (id, message_id, rule_id, rule_name, target, recipients,"
                     " status, attempts, updated) VALUES (?, ?, 1, 'r1', ?, '[]', ?, 2, ?)",
                     (did, mid, target, status, t))
        conn.executemany("INSERT INTO attempts (delivery_id, at, outcome, status_code) VALUES (?, ?, ?, ?)",
                         [(did, t, "deferred", 503), (did, t, status, 200)])
        conn.execute("INSERT INTO inbound_log (id, kind, record_id, received, status, rcpt_to)"
                     " VALUES (?, 'delivery', ?, ?, ?, 'in@ours.example')", (did, mid, t, status))
        conn.execute("INSERT INTO inbound_log (id, kind, record_id, received, status, rcpt_to, filter_name)"
                     " VALUES (?, 'denied', ?, ?, 'denied', 'x@ours.example', 'no_rule')",
                     (f"{i:016x}d", f"{i:016x}d", t))
    for b in range(0, events, 100):
        t = iso((OLD if (b // 100) % 3 else YOUNG) + b * 0.001)
        batch = f"evb_{b:016x}"
        status = "deferred" if (b // 100) % 20 == 0 else "succeeded"
        conn.execute("INSERT INTO event_batches (id, endpoint_id, created, size, status, attempts, updated)"
                     " VALUES (?, 1, ?, 100, ?, 1, ?)", (batch, t, status, t))
        conn.execute("INSERT INTO event_attempts (batch_id, at, outcome) VALUES (?, ?, ?)", (batch, t, status))
        for i in range(b, min(b + 100, events)):
            eid = f"{i:016x}e"
            conn.execute("INSERT INTO events (id, received, meta, ingested, type) VALUES (?, ?, '{}', ?, 'succeeded')",
                         (eid, t, t))
            conn.execute("INSERT INTO event_deliveries (endpoint_id, event_id, added, batch_id) VALUES (1, ?, 0, ?)",
                         (eid, batch))
    conn.execute("COMMIT")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=logs.PRUNE_BATCH)
    parser.add_argument("--dir", help="where to build state.db (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "state.db")
        t0 = time.perf_counter()
        build(path, args.messages, args.events)
        print(f"built {args.messages} messages, {args.messages} denied rows, {args.events} events "
              f"in {time.perf_counter() - t0:.1f} s ({os.path.getsize(path) / 1e6:.0f} MB)")
        t0 = time.perf_counter()
        store = statedb.StateStore(path)  # upgrades schema 1 -> 2
        print(f"upgrade to schema {statedb.SCHEMA_VERSION} (index on messages.received): "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        retention = logs.Retention(store, 30, 30, batch=args.batch)
        retention.start(NOW)
        per_phase: dict[str, list[float]] = {}
        t_pass = time.perf_counter()
        while retention.running:
            phase = retention.phase
            t0 = time.perf_counter()
            retention.step()
            per_phase.setdefault(phase, []).append((time.perf_counter() - t0) * 1000)
        total = time.perf_counter() - t_pass
        print(f"batch {args.batch} rows; per batch (one transaction, synchronous=FULL), ms:")
        for phase, times in per_phase.items():
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"  {phase:9} {len(times):5} batches  median {statistics.median(times):6.2f}"
                  f"  p99 {p99:6.2f}  max {times[-1]:6.2f}")
        print(f"pass: {total:.1f} s; deleted {retention.pruned.as_dict()}")
        store.close()


if __name__ == "__main__":
    main()
