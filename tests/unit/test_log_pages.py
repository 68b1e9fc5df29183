"""The log pages' queries on state.db (bench/api.py has the figures): a schema 2 file
gets the rule index; a page by rule reads its index; an event listing walks events by time; the
recipient filter (an address, a domain, a prefix: read from the recipient index of schema 4; a
pattern) in any case, also for LIKE's own characters."""
from __future__ import annotations

import sqlite3

import sqlite_utils

from mxhook import spool
from mxhook.model.records import iso
from mxhook.store import ingest, logs, migrations, statedb
from mxhook.store.statedb import StateStore

BASE = 1_790_000_000.0


def plan(conn, sql, params) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def denied(i: int, rcpt: str, filter_name: str) -> spool.Record:
    return spool.Record(id=f"{i:016x}" + "0" * 12, kind="denied", meta={
        "received": iso(BASE + i), "queue_id": f"Q{i}", "mail_from": "s@else.example",
        "header_from": "s@else.example", "client_addr": "192.0.2.1", "recipients": [rcpt],
        "filter": filter_name, "reason": "refused"})


def test_a_schema_2_state_db_gets_the_rule_index(tmp_path):
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(sqlite_utils.Database(conn), statedb._MIGRATIONS[:2], name="state database")
    conn.close()
    with StateStore(path) as st:
        names = {r[0] for r in st.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "inbound_log_filter_time" in names
        sql = ("SELECT id FROM inbound_log WHERE filter_name = ? ORDER BY received DESC, id DESC LIMIT 11")
        assert "USING COVERING INDEX inbound_log_filter_time (filter_name=?)" in plan(st.conn, sql, ("r",))
        assert "TEMP B-TREE" not in plan(st.conn, sql, ("r",))


def test_event_listings_walk_events_by_time(tmp_path):
    with StateStore(str(tmp_path / "state.db")) as st:
        sql, params = logs._log_query(logs._EVENT_LIST_SELECT, None, (), "", "e.received", None, None,
                                      "e.received DESC, d.seq DESC", 11)
        found = plan(st.conn, sql, params)
        assert found.startswith("SCAN e USING INDEX idx_events_received"), found
        # only the tie-break is sorted, within each time: SQLite 3.40 (Debian 12) says "RIGHT PART
        # OF ORDER BY", 3.46 (Debian 13) "LAST TERM OF ORDER BY"; never a sort of the whole listing
        assert "RIGHT PART OF ORDER BY" in found or "LAST TERM OF ORDER BY" in found, found
        assert "USE TEMP B-TREE FOR ORDER BY" not in found, found


def test_the_recipient_filter_finds_an_address_a_domain_a_prefix_and_a_pattern_in_any_case(tmp_path):
    rcpts = ["Big_Boss@ours.example", "bigxboss@ours.example", "100%@ours.example",
             "one@ours.example", "back\\slash@ours.example", "one@Other.example"]
    with StateStore(str(tmp_path / "state.db")) as st:
        ingest.records(st, [denied(i, r, "no_rule") for i, r in enumerate(rcpts)])
        ingest.records(st, [spool.Record(id="f" * 16 + "0" * 12, kind="denied", meta={
            "received": iso(BASE + 99), "recipients": ["two@ours.example", "TWO@far.example"],
            "filter": "no_rule", "reason": "refused"})])

        def found(text):
            rows, _ = logs.inbound_page(st, recipient=text, limit=10)
            return sorted(r["to"] for r in rows)

        assert found("ONE@OURS.EXAMPLE") == ["one@ours.example"]  # an address
        assert found("one@ours") == []  # an address is whole
        assert found("@other.example") == ["one@Other.example"]  # a domain
        assert found("@ours") == []
        assert found("big_") == ["Big_Boss@ours.example"]  # a prefix; _ is no wildcard
        assert found("BIG") == ["Big_Boss@ours.example", "bigxboss@ours.example"]
        assert found("one@") == ["one@Other.example", "one@ours.example"]
        assert found("100%") == ["100%@ours.example"]
        assert found("*oss@*") == ["Big_Boss@ours.example", "bigxboss@ours.example"]  # a pattern
        assert found("*%*") == ["100%@ours.example"]
        assert found("*k\\s*") == ["back\\slash@ours.example"]
        assert found("*@ours.example") == sorted(rcpts[:5] + ["two@ours.example, TWO@far.example"])
        assert found("*one") == []  # a pattern is of the whole address
        assert found("nobody") == [] and found("*nobody*") == []
        # a row with two recipients of one domain (or prefix) is found once
        assert found("two") == found("@ours.example")[-1:] == ["two@ours.example, TWO@far.example"]
        assert found("@far.example") == ["two@ours.example, TWO@far.example"]


def test_recipient_pages_read_the_recipient_index_in_order(tmp_path, monkeypatch):
    with StateStore(str(tmp_path / "state.db")) as st:
        ingest.records(st, [denied(i, f"user{i % 3}@ours.example", "r" if i % 2 else "s")
                            for i in range(60)])
        plan_of = lambda *search, narrowed=False: logs._recipient_plan(st, search, narrowed)  # noqa: E731
        assert plan_of("address", "user1@ours.example") == ("key", "user1@ours.example")
        assert plan_of("prefix", "user2") == ("key", "user2@ours.example")
        assert plan_of("prefix", "user") == ("keys", "")
        assert plan_of("prefix", "nobody") == ("none", "")
        assert plan_of("pattern", "*user*") == ("log", "")
        assert plan_of("domain", "@ours.example", narrowed=True) == ("key", "@ours.example")
        monkeypatch.setattr(logs, "PREFIX_SORT_MAX", 10)  # as if these were many rows
        assert plan_of("prefix", "user") == ("log", "")
        assert plan_of("domain", "@ours.example", narrowed=True) == ("filter", "@ours.example")
        assert plan_of("domain", "@ours.example") == ("key", "@ours.example")
        by_filter = [r["id"] for r in logs.inbound_page(st, recipient="@ours.example", rule="r", limit=100)[0]]
        assert by_filter == [f"{i:016x}" + "0" * 12 for i in reversed(range(60)) if i % 2]
        assert len(logs.inbound_page(st, recipient="user", status="denied", limit=100)[0]) == 60
        monkeypatch.undo()
        # a walk by address, rule and status over pages: each row once, newest first
        seen, after = [], None
        while True:
            rows, after = logs.inbound_page(st, recipient="@ours.example", rule="r", after=after, limit=7)
            seen += rows
            if after is None:
                break
        assert [r["id"] for r in seen] == [f"{i:016x}" + "0" * 12 for i in reversed(range(60)) if i % 2]
        prefix = [r["id"] for r in logs.inbound_page(st, recipient="user", limit=100)[0]]
        assert prefix == [f"{i:016x}" + "0" * 12 for i in reversed(range(60))]
        pattern = [r["id"] for r in logs.inbound_page(st, recipient="user*", limit=100)[0]]
        assert pattern == prefix
        sql = ("SELECT l.id FROM inbound_recipients r CROSS JOIN inbound_log l ON l.id = r.log_id"
               " WHERE r.key = ? ORDER BY r.received DESC, r.log_id DESC LIMIT 11")
        found = plan(st.conn, sql, ("@ours.example",))
        assert "USING PRIMARY KEY (key=?)" in found and "TEMP B-TREE" not in found, found


def test_a_schema_3_state_db_gets_the_recipient_index_and_retention_keeps_it(tmp_path):
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(sqlite_utils.Database(conn), statedb._MIGRATIONS[:3], name="state database")
    conn.execute("INSERT INTO inbound_log (id, kind, record_id, received, status, rcpt_to, recipients)"
                 " VALUES ('a', 'denied', 'a', ?, 'denied', 'X@Y.example', '[\"X@Y.example\"]')",
                 (iso(BASE),))
    conn.execute("INSERT INTO inbound_log (id, kind, record_id, received, status, rcpt_to)"
                 " VALUES ('b', 'denied', 'b', ?, 'denied', 'old@y.example')", (iso(BASE + 1),))
    conn.close()
    with StateStore(path) as st:
        assert migrations.user_version(st.conn) == 4 == statedb.SCHEMA_VERSION
        keys = lambda: sorted(r[0] for r in st.conn.execute("SELECT key FROM inbound_recipients"))  # noqa: E731
        assert keys() == ["@y.example", "@y.example", "old@y.example", "x@y.example"]
        pruned = logs.Retention(st, 1, 0).run(BASE + 0.5 + 86400)
        assert pruned.denied == 1 and keys() == ["@y.example", "old@y.example"]


def test_event_pages_by_address_and_domain_read_their_indexes(tmp_path):
    from mxhook.model.endpoints import Endpoint
    from mxhook.model.targets import Destination

    events = [spool.Record(id=f"ev{i:04d}", kind="event", meta={
        "id": f"ev{i:04d}", "type": "succeeded", "at": iso(BASE + i), "received": iso(BASE + i),
        "source": "log", "queue_id": f"Q{i}", "recipient": ["Ann@Far.example", "bob@far.example",
                                                             "ann@near.example"][i % 3],
        "custom_headers": {}}) for i in range(30)]
    with StateStore(str(tmp_path / "state.db")) as st:
        ingest.records(st, events, endpoints=[Endpoint(Destination("https://127.0.0.1:9/e"), id=1)])

        def found(text, **kw):
            return [r["id"] for r in logs.event_page(st, recipient=text, limit=100, **kw)[0]]

        newest_first = [f"ev{i:04d}" for i in reversed(range(30))]
        assert found("ANN@far.example") == [e for e in newest_first if int(e[2:]) % 3 == 0]
        assert found("@FAR.example") == [e for e in newest_first if int(e[2:]) % 3 < 2]
        assert found("ann") == [e for e in newest_first if int(e[2:]) % 3 != 1]  # a prefix
        assert found("*@near.*") == [e for e in newest_first if int(e[2:]) % 3 == 2]  # a pattern
        page, after = logs.event_page(st, recipient="@far.example", limit=7)
        rest, _ = logs.event_page(st, recipient="@far.example", after=after, limit=100)
        assert [r["id"] for r in page + rest] == found("@far.example")
        sql, params = logs._log_query(logs._EVENT_LIST_SELECT, None, (), "", "e.received", None, None,
                                      "e.received DESC, d.seq DESC", 11,
                                      ((f"{statedb.EVENT_DOMAIN.replace('recipient', 'e.recipient')} = ?",
                                        ("@far.example",)),))
        assert "USING INDEX events_recipient_domain" in plan(st.conn, sql, params)
