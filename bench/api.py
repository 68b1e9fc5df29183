"""The HTTP API's log queries on a big state.db: pages (first, deep in the cursor walk,
filtered), the CSV export of every row, and a /metrics scrape, each against a baseline measured
in the same run (a bare `SELECT count(*) FROM inbound_log`).

    python3 bench/api.py [--rows 1000000] [--events 300000] [--repeat 5] [--ingest 20000]
                         [--dir DIR] [--keep] [--after-only]

Builds state.db at schema 2 (as an mxhook before the log indexes left it) with ROWS inbound log
rows over 30 days (one in five a delivery of one of 20 rules, with its deliveries and messages
rows: 97 % succeeded, 2 % failed, 1 % deferred; the rest denied by four filters; 5,000
recipients, and one, ceo@ours.example, in ten rows only) and EVENTS events, each fanned out to
endpoint 1 and one in five also to endpoint 2, in batches of 100; rules.db with the 20 rules and
both endpoints, five rules and endpoint 1 failing (for /metrics). Then times each request
through the real Flask application (`web.create_app`: view, service, SQL, JSON; no socket)
with a read-only token, before and after the migrations to schema 3 (the rule index) and 4 (the
recipient index; their time printed too), as the median of REPEAT runs in milliseconds (before:
without the recipient filters that need the index). A page must stay under 100 ms; a recipient
pattern (`*`), and a prefix of events, are scans, documented as slower. First, what the
recipient indexes cost ingest (`ingest_cost`, --ingest RECORDS: 0 skips it).
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
                             "mx.else.example", f"<{i}@else>", rule, None, json.dumps([rcpt])))
        else:
            rid = f"{i:016x}d"
            log_rows.append((rid, "denied", rid, t, "denied", "s@else.example", rcpt,
                             "mx.else.example", f"<{i}@else>", FILTERS[i % 4], "refused",
                             json.dumps([rcpt])))
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
                     " rcpt_to, host_name, message_id, filter_name, reason, recipients)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", log_rows)
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


def requests(rows: int, deep_cursor: str) -> list[tuple[str, str, str]]:
    """(label, path, what: "page" (held to the budget), "scan" (a page the docs call slower:
    a recipient pattern, an event recipient's prefix), "bytes")."""
    return [
        ("first page (100)", "/v1/logs/inbound", "page"),
        ("first page (10, the console's)", "/v1/logs/inbound?limit=10", "page"),
        (f"page deep in the walk (after {rows * 9 // 10:,} rows)", f"/v1/logs/inbound?cursor={deep_cursor}", "page"),
        ("status=failed (0.4 % of rows)", "/v1/logs/inbound?status=failed", "page"),
        ("status=denied (80 %)", "/v1/logs/inbound?status=denied", "page"),
        ("status=succeeded, last 7 days", "/v1/logs/inbound?status=succeeded&since=7d", "page"),
        ("rule=r3 (1 % of rows)", "/v1/logs/inbound?rule=r3", "page"),
        ("rule=r19 (0.02 %)", "/v1/logs/inbound?rule=r19", "page"),
        ("recipient=user42@ours.example (0.02 %)", "/v1/logs/inbound?recipient=user42@ours.example", "page"),
        ("recipient=user42@ours.example&status=failed", "/v1/logs/inbound?recipient=user42@ours.example&status=failed", "page"),
        ("recipient=ceo@ (prefix, one address, 10 rows)", "/v1/logs/inbound?recipient=ceo@", "page"),
        ("recipient=CEO@ours.example, 30 days deep", f"/v1/logs/inbound?recipient=CEO@ours.example&cursor={deep_cursor}", "page"),
        ("recipient=@ours.example (domain, every row)", "/v1/logs/inbound?recipient=@ours.example", "page"),
        ("recipient=@ours.example&rule=r19", "/v1/logs/inbound?recipient=@ours.example&rule=r19", "page"),
        ("recipient=user423 (prefix, 11 addresses, 0.2 %)", "/v1/logs/inbound?recipient=user423", "page"),
        ("recipient=user42 (prefix, 111 addresses, 2.2 %)", "/v1/logs/inbound?recipient=user42", "page"),
        ("recipient=nobody (prefix, no row)", "/v1/logs/inbound?recipient=nobody", "page"),
        ("recipient=*ceo* (pattern: a scan, 10 rows)", "/v1/logs/inbound?recipient=*ceo*", "scan"),
        ("recipient=*r42@* (pattern: a scan, 0.02 %)", "/v1/logs/inbound?recipient=*r42@*", "scan"),
        ("events: first page", "/v1/logs/events", "page"),
        ("events: status=failed", "/v1/logs/events?status=failed", "page"),
        ("events: endpoint=2", "/v1/logs/events?endpoint=2", "page"),
        ("events: recipient=user42@far.example (0.02 %)", "/v1/logs/events?recipient=user42@far.example", "page"),
        ("events: recipient=@far.example&status=failed", "/v1/logs/events?recipient=@far.example&status=failed", "page"),
        ("events: recipient=user4299 (prefix: a scan, 0.02 %)", "/v1/logs/events?recipient=user4299", "scan"),
        ("/metrics scrape", "/metrics", "bytes"),
    ]


def measure(cfg, token: str, rows: int, repeat: int, title: str, *,
            indexed: bool = True) -> list[tuple[str, float, int, str]]:
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
    for label, path, what in requests(rows, deep):
        if not indexed and "recipient=" in path and what == "page":
            continue  # an address, domain or prefix reads the recipient index (schema 4)
        def get(path=path):
            reply = client.get(path, headers=headers)
            assert reply.status_code == 200, (path, reply.status_code, reply.data[:300])
            return reply
        ms, reply = timed(get, repeat)
        n = len(reply.data) if what == "bytes" else len(reply.get_json()["items"])
        flag = {"page": "  ok" if ms < PAGE_BUDGET_MS else "  OVER 100 ms",
                "scan": "  (a scan: documented as slower)"}.get(what, "")
        print(f"  {label:<52} {ms:9.1f} ms  ({n} {'bytes' if what == 'bytes' else 'rows'}){flag}")
        out.append((label, ms, n, what))

    def csv_all():
        reply = client.get("/v1/logs/inbound.csv", headers=headers, buffered=False)
        lines = sum(chunk.count(b"\n") for chunk in reply.response)
        reply.close()
        return lines
    ms, lines = timed(csv_all, 1)
    print(f"  {'CSV export of every row (/v1/logs/inbound.csv)':<52} {ms:9.1f} ms  "
          f"({lines - 1:,} rows, {(lines - 1) / ms * 1000:,.0f} rows/s; {ms / base:,.0f}x the baseline)")
    return out


def ingest_cost(work: str, records: int, rounds: int = 9, batch: int = 500) -> None:
    """What the recipient index (schema 4's triggers) costs ingest: the spooler's ingest
    (store.ingest.records, `batch` records a transaction, synchronous=FULL) of RECORDS records
    (one in five an inbound message of one delivery, one in five an event, the rest denied;
    5,000 recipients) into a
    state.db at schema 3 (the baseline) and one at schema 4, in alternating rounds so both see
    the same machine; the median microseconds a record and the ratio."""
    from mxhook import spool
    from mxhook.store import ingest

    def recs(round_: int) -> list:
        out = []
        for i in range(records):
            n = round_ * records + i
            rid = f"{n:016x}" + "0" * 12
            meta = {"received": iso(NOW - SPAN + n), "queue_id": f"Q{n}", "mail_from": "s@else.example",
                    "header_from": "s@else.example", "client_addr": "192.0.2.1",
                    "client_name": "mx.else.example", "subject": "s", "message_id": f"<{n}@else>",
                    "recipients": [f"user{n % 5000}@ours.example"]}
            if i % 5 == 1:
                eid = f"ev{n:012d}"
                out.append(spool.Record(id=eid, kind="event", meta={
                    "id": eid, "type": "succeeded", "at": meta["received"], "received": meta["received"],
                    "source": "log", "queue_id": f"Q{n}", "recipient": f"user{n % 5000}@far.example",
                    "custom_headers": {}}))
            elif i % 5:
                out.append(spool.Record(id=rid, kind="denied", meta=dict(meta, filter="no_rule",
                                                                         reason="refused")))
            else:
                meta["deliveries"] = [{"recipients": meta.pop("recipients"), "rule": {
                    "id": 1, "name": "r1", "endpoint": "https://h.example/in", "format": "json"}}]
                out.append(spool.Record(id=rid, kind="inbound", payload=b"Subject: s\r\n\r\n" + b"x" * 2000,
                                        meta=meta))
        for r in out:
            ingest.check_record(r)
        return out

    stores = {}
    for version in (3, 4):
        path = os.path.join(work, f"ingest-{version}.db")
        conn = sqlite3.connect(path, isolation_level=None)
        migrations.migrate(sqlite_utils.Database(conn), statedb._MIGRATIONS[:version], name="state database")
        conn.close()
        steps = statedb._MIGRATIONS
        statedb._MIGRATIONS = steps[:version]  # opened as that version, not upgraded
        try:
            stores[version] = statedb.StateStore(path)
        finally:
            statedb._MIGRATIONS = steps
    times = {3: [], 4: []}
    for round_ in range(rounds):
        spooled = recs(round_)
        for version in ((3, 4) if round_ % 2 else (4, 3)):
            start = time.perf_counter()
            for i in range(0, len(spooled), batch):
                ingest.records(stores[version], spooled[i:i + batch])
            times[version].append((time.perf_counter() - start) / len(spooled) * 1e6)
    for store in stores.values():
        store.close()
    base, indexed = statistics.median(times[3]), statistics.median(times[4])
    ratios = sorted(b / a for a, b in zip(times[3], times[4]))  # each round's pair: the same load
    print(f"\ningest ({rounds} rounds of {records:,} records, {batch} a transaction, median):"
          f"\n  schema 3 (baseline)           {base:7.1f} us a record"
          f"\n  schema 4 (recipient index)    {indexed:7.1f} us a record  ({indexed / base:.2f}x the baseline;"
          f" per round {statistics.median(ratios):.2f}x, {ratios[0]:.2f} to {ratios[-1]:.2f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--after-only", action="store_true", help="skip the timings at schema 2")
    ap.add_argument("--ingest", type=int, default=20_000, metavar="RECORDS",
                    help="records a round of the ingest comparison (0: skip it)")
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
        if args.ingest:
            ingest_cost(work, args.ingest)
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
                measure(cfg, token, args.rows, args.repeat, "schema 2 (before the log indexes)",
                        indexed=False)
            finally:
                statedb._MIGRATIONS = steps
        start = time.perf_counter()
        statedb.StateStore(cfg.state_db).close()
        print(f"\nmigration to schema {statedb.SCHEMA_VERSION}: {time.perf_counter() - start:.1f} s")
        results = measure(cfg, token, args.rows, args.repeat, f"schema {statedb.SCHEMA_VERSION}")
        over = [label for label, ms, _, what in results if what == "page" and ms >= PAGE_BUDGET_MS]
        print("\nevery page under 100 ms" if not over else f"\nOVER 100 ms: {', '.join(over)}")
        return 1 if over else 0
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
