"""The log pages' queries on state.db schema 3 (bench/api.py has the figures): a schema 2 file
gets the rule index; a page by rule reads its index; an event listing walks events by time; the
recipient filter is a case-insensitive substring match, also for LIKE's own characters."""
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
        assert migrations.user_version(st.conn) == 3 == statedb.SCHEMA_VERSION
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


def test_the_recipient_filter_is_a_substring_in_any_case_with_like_characters_literal(tmp_path):
    rcpts = ["Big_Boss@ours.example", "bigxboss@ours.example", "100%@ours.example",
             "one@ours.example", "back\\slash@ours.example"]
    with StateStore(str(tmp_path / "state.db")) as st:
        ingest.records(st, [denied(i, r, "no_rule") for i, r in enumerate(rcpts)])

        def found(text):
            rows, _ = logs.inbound_page(st, recipient=text, limit=10)
            return sorted(r["to"] for r in rows)

        assert found("big_boss") == ["Big_Boss@ours.example"]  # _ is no wildcard
        assert found("BIG") == ["Big_Boss@ours.example", "bigxboss@ours.example"]
        assert found("0%@") == ["100%@ours.example"]
        assert found("%") == ["100%@ours.example"]
        assert found("k\\s") == ["back\\slash@ours.example"]
        assert found("ONE@OURS") == ["one@ours.example"]
        assert found("nobody") == []
