"""What each index of state.db's `events` table costs the ingest: CPU µs and WAL KiB per
inserted row, with every index (as shipped), with each secondary index dropped alone, and with
none (the table and its primary key: the baseline, measured in the same run).

    python3 bench/event_indexes.py [--rows 100000] [--txn 1000] [--recipients bench|random]
                                   [--domains 97] [--rounds 2] [--cache-kib N]

Rows are bench/events.py's events (a `queued` and a `succeeded` per message), inserted the way
store.ingest inserts them (multi-row INSERT statements, one transaction of --txn rows), into a
state.db made by StateStore (the real schema, WAL, synchronous=FULL, the page cache of the
spooler's connection, statedb.WRITER_CACHE_KIB, unless --cache-kib). The first half of the rows
is inserted and checkpointed first, so the measured half goes into indexes that already hold
rows. WAL bytes: the -wal file's growth with automatic checkpoints off (each commit appends
every page it changed, whole: an index whose new entries land on many pages writes many).

--recipients bench: the addresses bench/events.py makes (user<N>@customer<N % 97>.example,
numbered in sending order: an address index grows almost in order); random: addresses drawn at
random from 50,000 users in --domains domains, as real mail to many people is. Prints figures
and ratios; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

import events as events_bench  # noqa: E402
from mxhook.store import ingest  # noqa: E402
from mxhook.store import statedb  # noqa: E402
from mxhook.store.statedb import StateStore  # noqa: E402

INSERT = ("INSERT INTO events (id, received, meta, payload, ingested, type, queue_id, recipient,"
          " block_state, message_id)")


def make_rows(n: int, recipients: str, domains: int) -> list[tuple]:
    rng = random.Random(16)
    rows = []
    address = None
    for event in events_bench.make_events(n):
        if recipients == "random" and event.type == "queued":  # a message's events share it
            address = f"u{rng.randrange(50000)}@d{rng.randrange(domains)}.example"
        if recipients == "random":
            event.recipient = address
        meta = event.to_meta()
        rows.append((event.id, event.at, json.dumps(meta, ensure_ascii=False), b"",
                     "2026-12-04T00:00:00.000000Z", event.type, event.queue_id, event.recipient,
                     None, event.message_id))
    return rows


def secondary_indexes() -> list[str]:
    base = tempfile.mkdtemp(prefix="mxhook-bench-idx-")
    try:
        with StateStore(os.path.join(base, "state.db")) as store:
            return [r[0] for r in store.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
                " AND sql IS NOT NULL ORDER BY name")]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def measure(rows: list[tuple], txn: int, drop: list[str], cache_kib: int) -> tuple[float, float]:
    """(CPU µs per row, WAL KiB per row) of inserting the second half of `rows`."""
    base = tempfile.mkdtemp(prefix="mxhook-bench-idx-")
    try:
        with StateStore(os.path.join(base, "state.db"), cache_kib=cache_kib) as store:
            conn = store.conn
            for name in drop:
                conn.execute(f"DROP INDEX {name}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            half = len(rows) // 2

            def insert(start: int, stop: int) -> None:
                for at in range(start, stop, txn):
                    conn.execute("BEGIN")
                    ingest._insert_rows(conn, INSERT, rows[at:min(at + txn, stop)])
                    conn.execute("COMMIT")

            insert(0, half)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            wal = os.path.join(base, "state.db-wal")
            wal0 = os.path.getsize(wal)
            cpu0 = time.process_time()
            insert(half, len(rows))
            cpu = time.process_time() - cpu0
            grown = os.path.getsize(wal) - wal0
        measured = len(rows) - half
        return cpu / measured * 1e6, grown / measured / 1024
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--txn", type=int, default=1000, help="rows per transaction")
    parser.add_argument("--recipients", choices=("bench", "random"), default="bench")
    parser.add_argument("--domains", type=int, default=97, help="with --recipients random")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-kib", type=int, default=statedb.WRITER_CACHE_KIB,
                        help="the connection's page cache (default: the spooler's; SQLite's own: 2000)")
    args = parser.parse_args()

    rows = make_rows(args.rows, args.recipients, args.domains)
    indexes = secondary_indexes()
    variants = [("every index (as shipped)", [])] + [(f"without {name}", [name]) for name in indexes]
    variants.append(("none (table + primary key)", indexes))
    print(f"{args.rows} rows ({sum(len(r[2]) for r in rows) // len(rows)} bytes of meta each), "
          f"{args.txn} per transaction, recipients: {args.recipients}"
          f"{f' in {args.domains} domains' if args.recipients == 'random' else ''}, "
          f"page cache {args.cache_kib} KiB; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in variants}
    for _ in range(args.rounds):  # round after round: the machine's drift hits every variant
        for label, drop in variants:
            results[label].append(measure(rows, args.txn, drop, args.cache_kib))
    base_cpu = statistics.median(c for c, _ in results[variants[-1][0]])
    base_wal = statistics.median(w for _, w in results[variants[-1][0]])
    print(f"\n{'':40s} {'µs CPU/row':>11s} {'/ none':>7s} {'WAL KiB/row':>12s} {'/ none':>7s}")
    for label, _ in variants:
        cpu = statistics.median(c for c, _ in results[label])
        wal = statistics.median(w for _, w in results[label])
        print(f"{label:40s} {cpu:11.1f} {cpu / base_cpu:7.2f} {wal:12.2f} {wal / base_wal:7.2f}")
    print(f"\nmedians of {args.rounds} round(s); load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
