"""The HTTP API's log queries on a big state.db: pages (first, deep in the cursor walk,
filtered), the CSV export of every row, and a /metrics scrape, each against a baseline measured
in the same run (a bare `SELECT count(*) FROM inbound_log`).

    python3 bench/api.py [--rows 1000000] [--events 300000] [--repeat 5] [--dir DIR] [--keep]

Builds state.db at schema 2 (as an mxhook before the log indexes left it) with ROWS inbound log
rows over 30 days (one in five a delivery of one of 20 rules, with its deliveries and messages
rows: 97 % succeeded, 2 % failed, 1 % deferred; the rest denied by four filters; 5,000
recipients, and one, ceo@ours.example, in ten rows only) and EVENTS events, each fanned out to
endpoint 1 and one in five also to endpoint 2, in batches of 100; rules.db with the 20 rules and
both endpoints, five rules and endpoint 1 failing (for /metrics). Then times each request
through the real Flask application (`web.create_app`: view, service, SQL, JSON; no socket)
with a read-only token, before and after the schema 3 migration (its time printed too), as
the median of REPEAT runs in milliseconds. A page must stay under 100 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

import sqlite_utils  # noqa: E402

from mxhook import config  # noqa: E402
from mxhook.model.records import iso  # noqa: E402
from mxhook.services import access  # noqa: E402
from mxhook.services import logs as logsvc  # noqa: E402
from mxhook.store import migrations, statedb  # noqa: E402

NOW = time.time()
SPAN = 30 * 86400.0
RULES = [f"r{i}" for i in range(20)]
FILTERS = ("no_rule", "unknown_domain", "spoofed_from", "from_equals_to")
PAGE_BUDGET_MS = 100.0


def rule_of(i: int) -> str:
    # r19 is rare (one delivery in a thousand), the others share the rest
    return "r19" if i % 1000 == 5 else RULES[i % 19]


def status_of(i: int) -> str:
    n = i % 100
    return "failed" if n < 2 else "deferred" if n == 2 else "succeeded"


def build(path: str, rows: int, events: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    migrations.migrate(db, statedb._MIGRATIONS[:2], name="state database")  # schema 2
    conn.execute("PRAGMA synchronous = OFF")
    target = json.dumps({"id": 1, "name": "r1", "endpoint": "https://h.example/in"})
    conn.execute("BEGIN")
    log_rows, deliveries, messages, attempts = [], [], [], []
    for i in range(rows):
        t = iso(NOW - SPAN + i * SPAN / rows)
        rcpt = "ceo@ours.example" if i % (rows // 10 or 1) == 7 else f"user{i % 5000}@ours.example"
        if i % 5 == 0:
            rule, status = rule_of(i // 5), status_of(i // 5)
            mid = f"{i:016x}m"
            did = f"{mid}-{rule}"
            messages.append((mid, t, "{}", None, 2048, t))
            deliveries.append((did, mid, RULES.index(rule) + 1, rule, target, json.dumps([rcpt]),
                               status, 1, t))
            if status != "succeeded":
                attempts.append((did, t, "deferred", 503))
            log_rows.append((did, "delivery", mid, t, status, "a@else.example", rcpt,
                             "mx.else.example", f"<{i}@else>", rule, None))
        else:
            rid = f"{i:016x}d"
            log_rows.append((rid, "denied", rid, t, "denied", "s@else.example", rcpt,
                             "mx.else.example", f"<{i}@else>", FILTERS[i % 4], "refused"))
        if len(log_rows) >= 50_000:
            _flush(conn, log_rows, deliveries, messages, attempts)
    _flush(conn, log_rows, deliveries, messages, attempts)
    ev_rows, fan, batches = [], [], []
    for i in range(events):
        t = iso(NOW - SPAN + i * SPAN / events)
        eid = f"ev{i:012d}"
        ev_rows.append((eid, t, json.dumps({"id": eid, "type": "succeeded", "at": t, "recipient":
                                            f"user{i % 5000}@far.example", "queue_id": f"Q{i}"}),
                        t, "succeeded", f"Q{i}", f"user{i % 5000}@far.example"))
        batch = f"evb_{i // 100:010d}"
        fan.append((1, eid, NOW - SPAN + i * SPAN / events, batch))
        if i % 100 == 0:
            batches.append((batch, 1, "https://h.example/ev", t, 100,
                            "failed" if (i // 100) % 50 == 0 else "succeeded", 1, t))
        if i % 5 == 0:
            fan.append((2, eid, NOW - SPAN + i * SPAN / events, None if i > events - 500 else batch))
        if len(ev_rows) >= 50_000:
            _flush_events(conn, ev_rows, fan, batches)
    _flush_events(conn, ev_rows, fan, batches)
    conn.execute("INSERT INTO event_endpoints VALUES (1, 'https://h.example/ev', ?), (2, 'https://h.example/e2', ?)",
                 (iso(NOW), iso(NOW)))
    # five rules and endpoint 1 failing for 20 days: /metrics counts their failed attempts
    conn.executemany("INSERT INTO target_health (kind, ref, name, failing_since, updated) VALUES (?, ?, ?, ?, ?)",
                     [("rule", str(i + 1), RULES[i], iso(NOW - 20 * 86400), iso(NOW)) for i in range(5)]
                     + [("endpoint", "1", None, iso(NOW - 20 * 86400), iso(NOW))])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _flush(conn, log_rows, deliveries, messages, attempts) -> None:
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", messages)
    conn.executemany("INSERT INTO attempts (delivery_id, at, outcome, status_code) VALUES (?, ?, ?, ?)",
                     attempts)
    conn.executemany("INSERT INTO deliveries (id, message_id, rule_id, rule_name, target, recipients,"
                     " status, attempts, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", deliveries)
    conn.executemany("INSERT INTO inbound_log (id, kind, record_id, received, status, header_from,"
                     " rcpt_to, host_name, message_id, filter_name, reason)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", log_rows)
    log_rows.clear(), deliveries.clear(), messages.clear(), attempts.clear()


def _flush_events(conn, ev_rows, fan, batches) -> None:
    conn.executemany("INSERT INTO events (id, received, meta, ingested, type, queue_id, recipient)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", ev_rows)
    conn.executemany("INSERT INTO event_deliveries (endpoint_id, event_id, added, batch_id)"
                     " VALUES (?, ?, ?, ?)", fan)
    conn.executemany("INSERT INTO event_batches (id, endpoint_id, url, created, size, status, attempts,"
                     " updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batches)
    ev_rows.clear(), fan.clear(), batches.clear()


def add_targets(cfg) -> None:
    """rules.db: the 20 rules (ids 1..20, as the deliveries name them) and the two endpoints."""
    from mxhook.model.targets import Destination
    from mxhook.services import endpoints, rules

    for name in RULES:
        rules.add(cfg, name=name, destination=Destination("https://127.0.0.1/in"), when=[f"To~^{name}@"])
    for path in ("ev", "e2"):
        endpoints.add(cfg, destination=Destination(f"https://127.0.0.1/{path}"))


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def requests(rows: int, deep_cursor: str) -> list[tuple[str, str, bool]]:
    """(label, path, is a page: held to the budget)."""
    return [
        ("first page (100)", "/v1/logs/inbound", True),
        ("first page (10, the console's)", "/v1/logs/inbound?limit=10", True),
        (f"page deep in the walk (after {rows * 9 // 10:,} rows)", f"/v1/logs/inbound?cursor={deep_cursor}", True),
        ("status=failed (0.4 % of rows)", "/v1/logs/inbound?status=failed", True),
        ("status=denied (80 %)", "/v1/logs/inbound?status=denied", True),
        ("status=succeeded, last 7 days", "/v1/logs/inbound?status=succeeded&since=7d", True),
        ("rule=r3 (1 % of rows)", "/v1/logs/inbound?rule=r3", True),
        ("rule=r19 (0.02 %)", "/v1/logs/inbound?rule=r19", True),
        ("recipient=user42@ours.example (0.02 %)", "/v1/logs/inbound?recipient=user42@ours.example", True),
        ("recipient=ceo@ (10 rows)", "/v1/logs/inbound?recipient=ceo@", True),
        ("events: first page", "/v1/logs/events", True),
        ("events: status=failed", "/v1/logs/events?status=failed", True),
        ("events: endpoint=2", "/v1/logs/events?endpoint=2", True),
        ("/metrics scrape", "/metrics", False),
    ]


def measure(cfg, token: str, rows: int, repeat: int, title: str) -> list[tuple[str, float, int, bool]]:
    from mxhook.web import create_app

    client = create_app(cfg).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    conn = sqlite3.connect(f"file:{cfg.state_db}?mode=ro", uri=True)
    base, _ = timed(lambda: conn.execute("SELECT count(*) FROM inbound_log").fetchone(), repeat)
    received, rid = conn.execute("SELECT received, id FROM inbound_log ORDER BY received DESC, id DESC"
                                 " LIMIT 1 OFFSET ?", (rows * 9 // 10,)).fetchone()
    conn.close()
    deep = logsvc.encode_cursor((received, rid))
    print(f"\n{title}\n  baseline: SELECT count(*) FROM inbound_log  {base:9.1f} ms")
    out = []
    for label, path, is_page in requests(rows, deep):
        def get(path=path):
            reply = client.get(path, headers=headers)
            assert reply.status_code == 200, (path, reply.status_code, reply.data[:300])
            return reply
        ms, reply = timed(get, repeat)
        n = len(reply.get_json()["items"]) if is_page else len(reply.data)
        flag = "" if not is_page else "  ok" if ms < PAGE_BUDGET_MS else "  OVER 100 ms"
        print(f"  {label:<52} {ms:9.1f} ms  ({n} {'rows' if is_page else 'bytes'}){flag}")
        out.append((label, ms, n, is_page))

    def csv_all():
        reply = client.get("/v1/logs/inbound.csv", headers=headers, buffered=False)
        lines = sum(chunk.count(b"\n") for chunk in reply.response)
        reply.close()
        return lines
    ms, lines = timed(csv_all, 1)
    print(f"  {'CSV export of every row (/v1/logs/inbound.csv)':<52} {ms:9.1f} ms  "
          f"({lines - 1:,} rows, {(lines - 1) / ms * 1000:,.0f} rows/s; {ms / base:,.0f}x the baseline)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--after-only", action="store_true", help="skip the timings at schema 2")
    args = ap.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="mxhook-bench-api-")
    os.makedirs(work, exist_ok=True)
    cfg = config.from_dict({"paths": {"state_db": os.path.join(work, "state.db"),
                                      "rules_db": os.path.join(work, "rules.db"),
                                      "spool_dir": os.path.join(work, "spool")},
                            "web": {"access_db": os.path.join(work, "access.db")},
                            "http": {"allow_networks": "127.0.0.0/8"},
                            "logfollow": {"state_file": os.path.join(work, "logfollow.state")}})
    try:
        start = time.perf_counter()
        build(cfg.state_db, args.rows, args.events)
        size = os.path.getsize(cfg.state_db) / 2**20
        print(f"built {cfg.state_db}: {args.rows:,} inbound log rows, {args.events:,} events, "
              f"{size:,.0f} MiB, schema 2, in {time.perf_counter() - start:.1f} s")
        token, _ = access.add_token(cfg, "bench", read_only=True)
        add_targets(cfg)
        if not args.after_only:
            # a reader refuses a file behind its schema: read schema 2 as schema 2
            steps = statedb._MIGRATIONS
            statedb._MIGRATIONS = steps[:2]
            try:
                measure(cfg, token, args.rows, args.repeat, "schema 2 (before the log indexes)")
            finally:
                statedb._MIGRATIONS = steps
        start = time.perf_counter()
        statedb.StateStore(cfg.state_db).close()
        print(f"\nmigration to schema {statedb.SCHEMA_VERSION}: {time.perf_counter() - start:.1f} s")
        results = measure(cfg, token, args.rows, args.repeat, f"schema {statedb.SCHEMA_VERSION}")
        over = [label for label, ms, _, is_page in results if is_page and ms >= PAGE_BUDGET_MS]
        print("\nevery page under 100 ms" if not over else f"\nOVER 100 ms: {', '.join(over)}")
        return 1 if over else 0
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
