"""rules.db: RulesStore CRUD, transactionality, schema, and the SnapshotWatcher."""
from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time

import pytest

from mxhook.store import migrations, rulesdb
from mxhook.model import headers
from mxhook.model.rules import Condition, Rule, RuleError, parse_condition
from mxhook.model.targets import Destination, DestinationError
from tests.support.destinations import routed


def wait_for(predicate, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def make_rule(name="invoices", url="https://hooks.example.net/in", **kw) -> Rule:
    fields = dict(
        name=name,
        conditions=(parse_condition("Subject~^Invoice"), parse_condition("From~@spam", negate=True)),
    )
    fields.update(kw)
    return Rule(**routed(url, **fields))


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "lib" / "rules.db")


@pytest.fixture
def store(path):
    s = rulesdb.RulesStore(path)
    yield s
    s.close()


def table_counts(path):
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("domains", "rules", "conditions")}
    finally:
        conn.close()


# -- file, schema ---------------------------------------------------------------------------

def test_creates_parent_dir_file_mode_wal_and_schema_version(path, store):
    assert os.path.isdir(os.path.dirname(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"domains", "rules", "conditions"} <= tables
    cols = [r[1] for r in conn.execute("PRAGMA table_info(rules)")]
    assert cols == ["id", "name", "priority", "enabled", "endpoint", "format", "basic_auth",
                    "bearer", "api_key", "retry_interval", "retry_period", "timeout", "discard",
                    "allow_http", "created", "updated", "dialect", "signing_key", "template",
                    "continue_matching", "include_raw", "reject_text", "retry_backoff", "retry_cap"]
    assert [r[1] for r in conn.execute("PRAGMA table_info(conditions)")] == [
        "id", "rule_id", "position", "header", "pattern", "negate"]
    assert [r[1] for r in conn.execute("PRAGMA table_info(domains)")] == [
        "name", "log_denied", "created", "unmatched", "reject_text"]
    conn.close()


def test_mode_kept_despite_umask(tmp_path):
    old = os.umask(0o077)
    try:
        s = rulesdb.RulesStore(str(tmp_path / "r.db"))
        s.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.db").st_mode) == 0o640


def test_reopen_is_idempotent(path, store):
    store.add_domain("example.com")
    again = rulesdb.RulesStore(path)
    assert [d["name"] for d in again.list_domains()] == ["example.com"]
    again.close()


def test_newer_schema_is_refused(path, store):
    store.conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuleError, match="newer"):
        rulesdb.RulesStore(path)


# -- domains --------------------------------------------------------------------------------

def test_domain_crud(store):
    d = store.add_domain("Example.COM.")
    assert d["name"] == "example.com" and d["log_denied"] is True
    store.add_domain("other.example", log_denied=False)
    assert [(d["name"], d["log_denied"]) for d in store.list_domains()] == [
        ("example.com", True), ("other.example", False)]
    assert store.list_domains()[0]["created"].endswith("Z")
    assert store.set_domain("EXAMPLE.com", log_denied=False)["log_denied"] is False
    store.remove_domain("example.com")
    assert [d["name"] for d in store.list_domains()] == ["other.example"]


def test_domain_idn_stored_as_a_label(store):
    assert store.add_domain("Bücher.example")["name"] == "xn--bcher-kva.example"


@pytest.mark.parametrize("bad", [
    "", "user@example.com", "-bad.example", "bad-.example", "a..b", "exa mple.com",
    "x" * 64 + ".com", "192.0.2.1", "under_score.example", ("a" * 60 + ".") * 5 + "com",
])
def test_domain_syntax_rejected(store, bad):
    with pytest.raises(RuleError):
        store.add_domain(bad)
    assert store.list_domains() == []


def test_domain_duplicate_and_unknown(store):
    store.add_domain("example.com")
    with pytest.raises(RuleError, match="already"):
        store.add_domain("EXAMPLE.com")
    with pytest.raises(RuleError, match="not in the permitted"):
        store.remove_domain("nope.example")
    with pytest.raises(RuleError, match="not in the permitted"):
        store.set_domain("nope.example", log_denied=False)
    assert len(store.list_domains()) == 1


# -- rules ----------------------------------------------------------------------------------

def test_rule_round_trip(store):
    rule = make_rule(priority=5, format="multipart", basic_auth="u:p", api_key="k" * 20,
                     retry_interval=30, retry_period=2, timeout=9, discard=True,
                     allow_http=True, url="http://hooks.example.net/in", enabled=False)
    added = store.add_rule(rule)
    assert added.id is not None
    got = store.get_rule("invoices")
    assert got == added
    assert got.conditions == (Condition("subject", "^Invoice"), Condition("from", "@spam", True))
    assert store.get_rule("nope") is None
    times = store.rule_times()["invoices"]
    assert times["created"] == times["updated"]


def test_list_rules_in_evaluation_order(store):
    store.add_rule(make_rule("c", priority=10))
    store.add_rule(make_rule("a", priority=10))
    store.add_rule(make_rule("b", priority=-1))
    assert [r.name for r in store.list_rules()] == ["b", "c", "a"]


def test_add_rule_validates(store):
    with pytest.raises(DestinationError, match="HTTPS"):
        store.add_rule(make_rule(url="http://x.example/"))
    with pytest.raises(DestinationError, match="retry interval"):
        store.add_rule(make_rule(retry_interval=5))
    with pytest.raises(RuleError, match="condition"):
        store.add_rule(make_rule(conditions=()))
    with pytest.raises(RuleError, match="regex"):
        store.add_rule(make_rule(conditions=(Condition("subject", "("),)))
    assert store.list_rules() == []


def test_duplicate_rule_name(path, store):
    store.add_rule(make_rule())
    with pytest.raises(RuleError, match="already exists"):
        store.add_rule(make_rule(url="https://other.example/"))
    assert table_counts(path) == {"domains": 0, "rules": 1, "conditions": 2}


def test_rule_names_differing_only_in_case_are_duplicates(path, store):
    first = store.add_rule(make_rule("invoices"))
    with pytest.raises(RuleError, match="'invoices' already exists .*compared without case"):
        store.add_rule(make_rule("INVOICES"))
    store.add_rule(make_rule("bills"))
    with pytest.raises(RuleError, match="cannot rename 'bills': a rule named 'invoices'"):
        store.replace_rule("bills", make_rule("Invoices"))
    assert store.replace_rule("invoices", make_rule("Invoices")).id == first.id  # its own name
    assert [r.name for r in store.list_rules()] == ["Invoices", "bills"]
    # a database from before the check may hold both: each stays editable under its own name
    store.conn.execute("UPDATE rules SET name = 'INVOICES' WHERE name = 'bills'")
    assert store.replace_rule("INVOICES", make_rule("INVOICES", priority=5)).priority == 5


def test_failing_add_writes_nothing(path, store, monkeypatch):
    """A rule and its conditions go in one transaction: a failure writing the conditions
    leaves no rule row behind."""
    def boom(rule_id, conditions):
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(store, "_write_conditions", boom)
    with pytest.raises(sqlite3.OperationalError):
        store.add_rule(make_rule())
    assert table_counts(path) == {"domains": 0, "rules": 0, "conditions": 0}
    monkeypatch.undo()
    store.add_rule(make_rule())  # the connection is usable afterwards
    assert table_counts(path)["rules"] == 1


def test_failing_replace_keeps_old(path, store, monkeypatch):
    store.add_rule(make_rule())
    monkeypatch.setattr(store, "_write_conditions",
                        lambda *a: (_ for _ in ()).throw(sqlite3.OperationalError("simulated")))
    with pytest.raises(sqlite3.OperationalError):
        store.replace_rule("invoices", make_rule("renamed", priority=3))
    monkeypatch.undo()
    assert store.get_rule("invoices").priority == 0
    assert store.get_rule("renamed") is None
    assert table_counts(path)["conditions"] == 2


def test_replace_rule_renames_and_replaces_conditions(path, store):
    old = store.add_rule(make_rule())
    new = store.replace_rule("invoices", make_rule("bills", conditions=(parse_condition("to~^b@"),)))
    assert new.id == old.id
    assert store.get_rule("invoices") is None
    assert store.get_rule("bills").conditions == (Condition("to", "^b@"),)
    assert table_counts(path)["conditions"] == 1


def test_replace_rule_errors(store):
    store.add_rule(make_rule("a"))
    store.add_rule(make_rule("b"))
    with pytest.raises(RuleError, match="no rule named 'zz'"):
        store.replace_rule("zz", make_rule("zz"))
    with pytest.raises(RuleError, match="already exists"):
        store.replace_rule("a", make_rule("b"))
    with pytest.raises(DestinationError, match="timeout"):
        store.replace_rule("a", make_rule("a", timeout=0))
    assert [r.name for r in store.list_rules()] == ["a", "b"]


def test_enable_disable_remove(path, store):
    store.add_rule(make_rule())
    assert store.set_enabled("invoices", False).enabled is False
    assert store.get_rule("invoices").enabled is False
    assert store.set_enabled("invoices", True).enabled is True
    with pytest.raises(RuleError, match="no rule"):
        store.set_enabled("nope", True)
    store.remove_rule("invoices")
    with pytest.raises(RuleError, match="no rule"):
        store.remove_rule("invoices")
    assert table_counts(path) == {"domains": 0, "rules": 0, "conditions": 0}


def test_snapshot(store):
    store.add_domain("example.com")
    store.add_domain("quiet.example", log_denied=False)
    store.add_rule(make_rule("second", priority=2))
    store.add_rule(make_rule("first", priority=1, conditions=(parse_condition("to~^in@"),)))
    snap = store.snapshot(regex_timeout=0.2)
    assert snap.domains == frozenset({"example.com", "quiet.example"})
    assert snap.log_denied == frozenset({"example.com"})
    assert [r.name for r in snap.ruleset.rules] == ["first", "second"]
    assert snap.ruleset.regex_timeout == 0.2
    assert snap.ruleset.match("in@example.com", {}).rule.name == "first"


# -- watcher --------------------------------------------------------------------------------

def test_watcher_picks_up_changes_from_another_connection(path, store):
    store.add_domain("example.com")
    w = rulesdb.SnapshotWatcher(path, interval=0.05)
    try:
        assert w.current.domains == {"example.com"} and len(w.current.ruleset) == 0
        other = rulesdb.RulesStore(path)
        t0 = time.monotonic()
        other.add_rule(make_rule())
        assert wait_for(lambda: len(w.current.ruleset) == 1, timeout=5)
        # well within a few intervals (generous bound for a loaded CI box)
        assert time.monotonic() - t0 < 2.0
        other.remove_domain("example.com")
        assert wait_for(lambda: w.current.domains == frozenset())
        other.close()
    finally:
        w.stop()
    assert not w._thread.is_alive()


def test_watcher_does_not_reload_without_change(path, store):
    w = rulesdb.SnapshotWatcher(path, interval=0.02)
    try:
        first = w.current
        time.sleep(0.1)
        assert w.check() is False
        assert w.current is first and w.reloads == 0
    finally:
        w.stop()


def test_watcher_missing_file_then_created(tmp_path):
    path = str(tmp_path / "later" / "rules.db")
    w = rulesdb.SnapshotWatcher(path, interval=0.02)
    try:
        assert w.current.domains == frozenset() and len(w.current.ruleset) == 0
        assert not os.path.exists(path)  # the watcher never creates the database
        s = rulesdb.RulesStore(path)
        s.add_domain("example.com")
        assert wait_for(lambda: w.current.domains == {"example.com"})
        s.close()
    finally:
        w.stop()


def test_watcher_skips_only_the_rule_whose_pattern_does_not_compile(path, store, caplog):
    store.add_domain("example.com")
    store.add_rule(make_rule())
    w = rulesdb.SnapshotWatcher(path, interval=3600)  # polled by hand below
    try:
        # Corrupt a pattern behind the store's back: that rule is skipped, and later changes
        # to the others (and domains) still reach the milter.
        raw = sqlite3.connect(path)
        raw.execute("UPDATE conditions SET pattern = '(' WHERE position = 0")
        raw.commit()
        with caplog.at_level(logging.ERROR, logger="mxhook.store.rulesdb"):
            assert w.check() is True
        assert [r.name for r, _ in w.current.ruleset.broken] == [make_rule().name]
        assert "is skipped" in caplog.text and "invalid regex" in caplog.text
        store.add_domain("example.org")
        assert w.check() is True
        assert "example.org" in w.current.domains
        # Fixed: the rule is back.
        raw.execute("UPDATE conditions SET pattern = '^Bill' WHERE position = 0")
        raw.commit()
        raw.close()
        assert w.check() is True
        assert w.current.ruleset.broken == []
        assert w.current.ruleset.rules[0].conditions[0].pattern == "^Bill"
    finally:
        w.stop()


def test_watcher_retries_failed_reload_without_new_change(path, store, monkeypatch):
    store.add_rule(make_rule())
    w = rulesdb.SnapshotWatcher(path, interval=3600)
    try:
        store.add_domain("example.com")
        real = rulesdb._load_snapshot
        monkeypatch.setattr(rulesdb, "_load_snapshot", lambda *a: (_ for _ in ()).throw(OSError("x")))
        assert w.check() is False
        monkeypatch.setattr(rulesdb, "_load_snapshot", real)
        assert w.check() is True  # retried although nothing changed since
        assert w.current.domains == {"example.com"}
    finally:
        w.stop()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_creates_file_owned_like_its_directory(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.chown(lib, 65534, 65534)
    s = rulesdb.RulesStore(str(lib / "rules.db"))
    s.add_domain("example.com")
    s.close()
    for name in ("rules.db", "rules.db-wal", "rules.db-shm"):
        if (lib / name).exists():
            st = os.stat(lib / name)
            assert (st.st_uid, st.st_gid) == (65534, 65534), name


# -- schema version 2: migration ------------------------------------------------------------

def make_v1_db(path):
    """A rules.db as mxhook with schema version 1 wrote it, with a domain and a rule."""
    import sqlite_utils

    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    database = sqlite_utils.Database(conn)
    rulesdb._schema_v1(database)
    conn.execute("INSERT INTO domains VALUES ('ours.example', 1, '2026-01-01T00:00:00.000000Z')")
    conn.execute(
        "INSERT INTO rules (name, priority, enabled, endpoint, format, retry_interval, retry_period,"
        " timeout, discard, allow_http) VALUES ('r1', 0, 1, 'https://h.example/in', 'json', 60, 3, 30, 0, 0)")
    conn.execute("INSERT INTO conditions (rule_id, position, header, pattern, negate) VALUES (1, 0, 'to', '.', 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_migration_from_version_1_keeps_rules(path):
    make_v1_db(path)
    # the milter's reader works on a version-1 file before and after the migration
    reader = rulesdb.BlocklistReader(path)
    assert reader.find("x@y.example") is None  # no block list table yet: fail open
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        assert [r.name for r in store.list_rules()] == ["r1"]
        assert [d["name"] for d in store.list_domains()] == ["ours.example"]
        assert store.list_endpoints() == [] and store.block_list() == []
        store.block_add("x@y.example", reason="t", source="cli")
    assert reader.find("x@y.example") is not None
    with rulesdb.RulesStore(path) as store:  # reopening a migrated file changes nothing
        assert len(store.list_rules()) == 1


CHEROKEE = "\u13e3\u13b3\u13a9"  # IDNA 2003 case-folded it to other letters than UTS #46 maps it to


def test_migration_to_version_5_stores_idna_2008_forms(path):
    # What schema 4 stored for CHEROKEE: the stdlib's IDNA 2003 on Debian 12. Written out, as
    # the stdlib's answer depends on the Unicode tables of the Python it runs on.
    idna2003 = "xn--tz9ata7l"
    with rulesdb.RulesStore(path) as store:
        store.conn.execute("INSERT INTO domains (name, log_denied, created) VALUES (?, 1, 'then')", [f"{idna2003}.example"])
        store.conn.execute("INSERT INTO domains (name, log_denied, created) VALUES ('xn--f9dt7l.other', 0, 'then')")
        store.conn.execute("INSERT INTO domains (name, log_denied, created) VALUES (?, 1, 'then')", [f"{idna2003}.other"])
        store.conn.execute("INSERT INTO domains (name, log_denied, created) VALUES ('xn--n3h.example', 0, 'then')")  # IDNA 2008 refuses it
        store.conn.execute("INSERT INTO domains (name, log_denied, created) VALUES ('fass.example', 0, 'then')")
        for address in (f"x@{idna2003}.example", "y@xn--f9dt7l.example", f"y@{idna2003}.example",
                        "z@xn--n3h.example", f"w@{'a' * 70}\u00fc.example"):
            store.conn.execute("INSERT INTO blocklist (address, source, created) VALUES (?, 'cli', 'then')",
                               [address])
        store.conn.execute("PRAGMA user_version = 4")
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        domains = {d["name"]: d["log_denied"] for d in store.list_domains()}
        assert domains == {"xn--f9dt7l.example": True, "xn--f9dt7l.other": True,
                           "xn--n3h.example": False, "fass.example": False}
        assert sorted(e["address"] for e in store.block_list()) == sorted([
            "x@xn--f9dt7l.example", "y@xn--f9dt7l.example", "z@xn--n3h.example",
            # a label too long for any domain: the form mail to it compares as now
            headers.normalize_address(f"w@{'a' * 70}\u00fc.example")])
        # mail to the name as written is for the permitted domain
        assert headers.address_domain(f"someone@{CHEROKEE}.example") in store.snapshot().domains


def test_migration_is_one_transaction(path, monkeypatch):
    make_v1_db(path)

    def broken(database):
        database.execute("CREATE TABLE endpoints (id INTEGER PRIMARY KEY)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rulesdb, "_MIGRATIONS", tuple((v, broken if v == 2 else step)
                                                      for v, step in rulesdb._MIGRATIONS))
    with pytest.raises(sqlite3.OperationalError):
        rulesdb.RulesStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'endpoints'").fetchone()[0] == 0
    conn.close()


# -- endpoints ------------------------------------------------------------------------------

from mxhook.model.endpoints import Endpoint  # noqa: E402


def test_endpoint_crud(store):
    ep = store.add_endpoint(Endpoint(Destination("https://h.example/ev", bearer="tok"),
                                     categories=("blocks", "bounces"), timezone="Europe/Berlin"))
    assert ep.id == 1 and ep.version == 1 and ep.categories == ("bounces", "blocks")
    assert ep.created and ep.created == ep.updated
    assert store.get_endpoint(1) == ep == store.get_endpoint("1") == store.get_endpoint("https://h.example/ev")
    assert store.get_endpoint(2) is None and store.get_endpoint("https://nope.example/") is None
    from dataclasses import replace

    moved = replace(ep, destination=replace(ep.destination, url="https://h.example/v2"), interval=60)
    new = store.replace_endpoint("https://h.example/ev", moved)
    assert (new.id, new.destination.url, new.interval, new.created) == (
        1, "https://h.example/v2", 60, ep.created)
    assert new.destination.bearer == "tok"
    assert store.list_endpoints() == [new]
    assert store.remove_endpoint(1).destination.url == "https://h.example/v2"
    assert store.list_endpoints() == []


def test_endpoint_errors_write_nothing(path, store):
    store.add_endpoint(Endpoint(Destination("https://h.example/a")))
    b = store.add_endpoint(Endpoint(Destination("https://h.example/b")))
    before = sqlite3.connect(path).execute("SELECT * FROM endpoints ORDER BY id").fetchall()
    with pytest.raises(RuleError, match="already exists"):
        store.add_endpoint(Endpoint(Destination("https://h.example/a")))
    with pytest.raises(RuleError, match="interval"):
        store.add_endpoint(Endpoint(Destination("https://h.example/c"), interval=0))
    from dataclasses import replace

    with pytest.raises(RuleError, match="another endpoint"):
        store.replace_endpoint(b.id, replace(b, destination=Destination("https://h.example/a")))
    with pytest.raises(RuleError, match="time zone"):
        store.replace_endpoint(b.id, replace(b, timezone="Nowhere/Land"))
    with pytest.raises(RuleError, match="no endpoint"):
        store.remove_endpoint(99)
    assert sqlite3.connect(path).execute("SELECT * FROM endpoints ORDER BY id").fetchall() == before


def test_endpoint_ids_are_never_reused(store):
    a = store.add_endpoint(Endpoint(Destination("https://h.example/a")))
    store.remove_endpoint(a.id)
    assert store.add_endpoint(Endpoint(Destination("https://h.example/a"))).id == a.id + 1


def test_endpoint_version_is_pinned_when_stored(store, monkeypatch):
    from mxhook.model import endpoints

    old = store.add_endpoint(Endpoint(Destination("https://h.example/old")))
    monkeypatch.setattr(endpoints, "VERSIONS", (1, 2))
    new = store.add_endpoint(Endpoint(Destination("https://h.example/new")))
    assert (store.get_endpoint(old.id).version, new.version) == (1, 2)
    from dataclasses import replace

    assert store.replace_endpoint(old.id, replace(old, interval=5)).version == 1


def test_endpoints_view_reloads_on_change(path, store):
    view = rulesdb.EndpointsView(path)
    assert view.current() == {} and view.generation == 1
    assert view.current() == {} and view.generation == 1  # no change, no reload
    ep = store.add_endpoint(Endpoint(Destination("https://h.example/a")))
    assert view.current() == {ep.id: ep} and view.generation == 2
    view.close()


def test_endpoints_view_missing_file_then_created(tmp_path):
    path = str(tmp_path / "rules.db")
    view = rulesdb.EndpointsView(path)
    assert view.current() == {} and view.generation == 0
    with rulesdb.RulesStore(path) as store:
        store.add_endpoint(Endpoint(Destination("https://h.example/a")))
    assert list(view.current()) == [1] and view.generation == 1


# -- block list -----------------------------------------------------------------------------

def test_block_list(store):
    assert store.block_add("<Gone@Else.Example>", reason="5.1.1 user unknown", dsn="5.1.1",
                           source="bounce", event_id="ev1") is True
    assert store.block_add("gone@else.example", reason="again", source="cli") is False
    (row,) = store.block_list()
    assert {k: row[k] for k in ("address", "reason", "dsn", "source", "event_id")} == {
        "address": "gone@else.example", "reason": "5.1.1 user unknown", "dsn": "5.1.1",
        "source": "bounce", "event_id": "ev1"}
    assert store.is_blocked("GONE@else.example") and not store.is_blocked("other@else.example")
    assert store.block_get("gone@else.example")["source"] == "bounce"
    assert store.block_remove("gone@ELSE.example") == 1
    assert store.block_remove("gone@else.example") == 0
    assert store.block_list() == [] and not store.is_blocked("gone@else.example")


@pytest.mark.parametrize("bad", ["", "nobody", "a@b@c", "a b@c.example", "a@", "@c.example", "a@.", "a@.c.example"])
def test_block_add_rejects_non_addresses(store, bad):
    with pytest.raises(RuleError):
        store.block_add(bad, reason=None, source="cli")
    assert store.block_list() == []


def test_block_list_addresses_are_stored_as_they_are_compared(store):
    store.block_add("<Gone@B\u00fccher.Example.>", reason=None, source="cli")
    assert [b["address"] for b in store.block_list()] == ["gone@xn--bcher-kva.example"]
    assert store.is_blocked("gone@b\u00fccher.example") and store.is_blocked("GONE@xn--bcher-kva.example.")


def test_block_source_checked(store):
    with pytest.raises(RuleError, match="source"):
        store.block_add("a@b.example", reason=None, source="magic")


def test_blocklist_reader(path, tmp_path):
    reader = rulesdb.BlocklistReader(path)
    assert reader.find("a@b.example") is None  # no database yet
    with rulesdb.RulesStore(path) as store:
        store.block_add("a@b.example", reason=None, source="cli")
        assert reader.find("<A@B.Example>") is not None
        assert reader.find("c@b.example") is None
        assert reader.find("") is None
        store.block_remove("a@b.example")
        assert reader.find("a@b.example") is None  # a pooled connection sees new commits
    # read-only: the reader cannot write
    conn = reader._pool.get_nowait()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO blocklist (address, source, created) VALUES ('x@y', 'cli', 'now')")
    reader._pool.put(conn)
    reader.close()


def test_blocklist_reader_threads_share_a_small_pool(path):
    import threading

    with rulesdb.RulesStore(path) as store:
        for i in range(50):
            store.block_add(f"u{i}@b.example", reason=None, source="cli")
    reader = rulesdb.BlocklistReader(path)
    errors = []

    def work(n):
        try:
            for i in range(200):
                assert (reader.find(f"u{(i + n) % 100}@b.example") is not None) is ((i + n) % 100 < 50)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 1 <= reader._pool.qsize() <= 8
    reader.close()


def test_blocklist_reader_fails_open_on_a_broken_file(tmp_path, caplog):
    path = tmp_path / "rules.db"
    path.write_bytes(b"this is not a database" * 100)
    reader = rulesdb.BlocklistReader(str(path))
    with caplog.at_level(logging.ERROR, logger="mxhook.store.rulesdb"):
        assert reader.find("a@b.example") is None
        assert reader.find("a@b.example") is None
    assert len([r for r in caplog.records if "block list" in r.getMessage()]) == 1  # logged once


def test_blocklist_reader_is_fast(path):
    with rulesdb.RulesStore(path) as store:
        with migrations.transaction(store.conn):
            store.conn.executemany(
                "INSERT INTO blocklist (address, source, created) VALUES (?, 'cli', 'x')",
                [(f"user{i}@example.com",) for i in range(100_000)])
    reader = rulesdb.BlocklistReader(path)
    reader.find("warm@up.example")
    start = time.perf_counter()
    for i in range(2000):
        reader.find(f"user{i * 37}@example.com")
    per_call = (time.perf_counter() - start) / 2000
    assert per_call < 0.0005, f"{per_call * 1e6:.0f} µs per lookup"


# -- signing keys (schema 3) -------------------------------------------------------------------

from mxhook.delivery import signing  # noqa: E402


def make_v2_db(path):
    """A rules.db as mxhook with schema version 2 wrote it: two rules (one removed, so the
    highest id is free), an endpoint."""
    import sqlite_utils

    make_v1_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    database = sqlite_utils.Database(conn)
    rulesdb._schema_v2(database)
    conn.execute(
        "INSERT INTO rules (name, priority, enabled, endpoint, format, retry_interval, retry_period,"
        " timeout, discard, allow_http) VALUES ('r2', 0, 1, 'https://h.example/in2', 'json', 60, 3, 30, 0, 0)")
    conn.execute(
        "INSERT INTO endpoints (url, categories, interval, max_events, timeout, version, timezone,"
        " format, retry_interval, retry_period, allow_http, enabled)"
        " VALUES ('https://h.example/ev', 'bounces', 10, 1000, 30, 1, 'UTC', 'json', 60, 3, 0, 1)")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_migration_to_version_4_puts_block_list_addresses_in_their_compared_form(path):
    make_v2_db(path)
    with rulesdb.RulesStore(path) as store:  # to version 3, then back to its label
        store.conn.execute("PRAGMA user_version = 3")
        for address in ("kunde@b\u00fccher.example", "a@x.example.", "a@x.example", "plain@x.example"):
            store.conn.execute("INSERT INTO blocklist (address, source, created) VALUES (?, 'cli', ?)",
                               (address, "2026-11-01T00:00:00.000000Z"))
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        assert sorted(b["address"] for b in store.block_list()) == [
            "a@x.example", "kunde@xn--bcher-kva.example", "plain@x.example"]
        assert store.block_remove("Kunde@B\u00fccher.example")  # found in its new form
    assert rulesdb.BlocklistReader(path).find("a@x.example.")


def test_migration_from_version_2_gives_every_rule_and_endpoint_a_secret(path):
    make_v2_db(path)
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        for kind, owner in (("rule", 1), ("rule", 2), ("endpoint", 1)):
            (key,) = store.signing_keys(kind, owner)
            assert key.scheme == "v1" and key.current and key.public_key is None
            assert signing.decode_secret(key.secret)  # a valid whsec_ secret
        secrets = {k.secret for kind, o in (("rule", 1), ("rule", 2), ("endpoint", 1))
                   for k in store.signing_keys(kind, o)}
        assert len(secrets) == 3
        store.remove_rule("r2")
        assert store.add_rule(make_rule("r3")).id == 3  # never 2 again
    with rulesdb.RulesStore(path) as store:  # reopening changes nothing
        assert len(store.conn.execute("SELECT * FROM signing_keys").fetchall()) == 4


def test_migration_to_3_is_one_transaction(path, monkeypatch):
    make_v2_db(path)
    real = rulesdb._insert_key
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args)

    monkeypatch.setattr(rulesdb, "_insert_key", failing)
    with pytest.raises(sqlite3.OperationalError):
        rulesdb.RulesStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'signing_keys'").fetchone()[0] == 0
    conn.close()


def test_new_rules_and_endpoints_get_keys(store):
    rule = store.add_rule(make_rule("a"))
    (key,) = store.signing_keys("rule", rule.id)
    assert key.secret.startswith("whsec_") and key.kind == "rule" and key.owner_id == rule.id
    assert key.secret not in repr(key) and key.masked_secret == "whsec_****" + key.secret[-4:]
    both = store.add_rule(make_rule("b"), ed25519=True)
    v1, v1a = store.signing_keys("rule", both.id)
    assert (v1.scheme, v1a.scheme) == ("v1", "v1a")
    assert v1a.secret.startswith("whsk_") and signing.public_key_for(v1a.secret) == v1a.public_key
    assert v1a.masked_secret == "whsk_****"
    assert v1a.to_public_dict() == {"scheme": "v1a", "secret": "whsk_****", "public_key": v1a.public_key,
                                    "created": v1a.created, "expires": None}
    ep = store.add_endpoint(Endpoint(Destination("https://h.example/ev")), ed25519=True)
    assert [k.scheme for k in store.signing_keys("endpoint", ep.id)] == ["v1", "v1a"]
    store.remove_endpoint(ep.id)
    assert store.signing_keys("endpoint", ep.id, include_expired=True) == []


def test_failed_add_writes_no_key(path, store):
    store.add_rule(make_rule("a"))
    with pytest.raises(RuleError):
        store.add_rule(make_rule("a"))
    with pytest.raises(RuleError):
        store.add_endpoint(Endpoint(Destination("https://h.example/ev"), interval=0))
    assert sqlite3.connect(path).execute("SELECT count(*) FROM signing_keys").fetchone()[0] == 1


def test_rotation_overlap_then_one(store):
    rule = store.add_rule(make_rule("a"))
    (old,) = store.signing_keys("rule", rule.id)
    new = store.rotate_key("rule", rule.id, overlap=3600)
    keys = store.signing_keys("rule", rule.id)
    assert [k.secret for k in keys] == [old.secret, new.secret]
    assert keys[0].expires is not None and new.current
    assert 3590 < keys[0].expires_epoch - time.time() <= 3600
    # the reader: both sign now, only the new one after the overlap
    reader = rulesdb.SigningKeys(store.path)
    try:
        assert reader.active("rule", rule.id).secrets == (old.secret, new.secret)
        assert reader.active("rule", rule.id, now=time.time() + 3601).secrets == (new.secret,)
        # rotating again at once: the old one keeps its earlier expiry, the middle one overlaps
        newest = store.rotate_key("rule", rule.id, overlap=7200)
        assert reader.active("rule", rule.id).secrets == (old.secret, new.secret, newest.secret)
        assert reader.active("rule", rule.id, now=time.time() + 3700).secrets == (new.secret, newest.secret)
        # overlap 0: only the new one, at once; expired keys are purged
        last = store.rotate_key("rule", rule.id, overlap=0)
        assert reader.active("rule", rule.id).secrets == (last.secret,)
        assert [k.secret for k in store.signing_keys("rule", rule.id, include_expired=True)] == [last.secret]
    finally:
        reader.close()


def test_rotation_of_ed25519_leaves_the_secret(store):
    ep = store.add_endpoint(Endpoint(Destination("https://h.example/ev")))
    (v1,) = store.signing_keys("endpoint", ep.id)
    pair = store.rotate_key("endpoint", ep.id, overlap=60, scheme="v1a")  # the first pair
    assert pair.scheme == "v1a" and pair.public_key.startswith("whpk_")
    with _reader(store.path) as reader:
        ks = reader.active("endpoint", ep.id)
        assert ks.secrets == (v1.secret,) and ks.ed25519_keys == (pair.secret,)


class _reader:
    def __init__(self, path):
        self.r = rulesdb.SigningKeys(path)

    def __enter__(self):
        return self.r

    def __exit__(self, *exc):
        self.r.close()


def test_rotation_errors(store):
    rule = store.add_rule(make_rule("a"))
    with pytest.raises(RuleError, match="no rule with id 99"):
        store.rotate_key("rule", 99, overlap=60)
    with pytest.raises(RuleError, match="between 0 and 30 days"):
        store.rotate_key("rule", rule.id, overlap=31 * 86400)
    with pytest.raises(RuleError, match="scheme"):
        store.rotate_key("rule", rule.id, overlap=60, scheme="v2")
    assert len(store.signing_keys("rule", rule.id)) == 1


def test_removed_rule_keys_keep_signing_its_retries(store):
    rule = store.add_rule(make_rule("a"))
    (key,) = store.signing_keys("rule", rule.id)
    store.remove_rule("a")
    with _reader(store.path) as reader:
        assert reader.active("rule", rule.id).secrets == (key.secret,)
        later = time.time() + rulesdb.REMOVED_RULE_KEYS_DAYS * 86400 + 60
        assert reader.active("rule", rule.id, now=later).secrets == ()
    again = store.add_rule(make_rule("a"))
    assert again.id == rule.id + 1
    assert store.signing_keys("rule", again.id)[0].secret != key.secret


def test_signing_keys_reader_sees_changes_and_is_thread_safe(path, store):
    import threading

    rule = store.add_rule(make_rule("a"))
    with _reader(path) as reader:
        first = reader.active("rule", rule.id)
        assert len(first.secrets) == 1 and reader.active("rule", None) == signing.KeySet()
        assert reader.active("endpoint", 42) == signing.KeySet()
        errors = []

        def hammer():
            try:
                for _ in range(200):
                    assert reader.active("rule", rule.id).secrets
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        new = store.rotate_key("rule", rule.id, overlap=0)
        for t in threads:
            t.join()
        assert errors == []
        assert reader.active("rule", rule.id).secrets == (new.secret,)


def test_signing_keys_reader_missing_file_and_old_schema(tmp_path):
    p = str(tmp_path / "none.db")
    with _reader(p) as reader:
        assert reader.active("rule", 1) == signing.KeySet()
    old = str(tmp_path / "lib" / "v1.db")
    make_v1_db(old)
    with _reader(old) as reader:
        assert reader.active("rule", 1) == signing.KeySet()  # not migrated yet: unsigned
        with rulesdb.RulesStore(old):
            pass
        assert len(reader.active("rule", 1).secrets) == 1  # migrated: seen at once


# -- dialects and templates (schema 6) ----------------------------------------------------------

from dataclasses import replace  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402


def make_endpoint() -> Endpoint:
    return Endpoint(Destination("https://h.example/ev"), categories=("bounces",))

def make_v5_db(path):
    """A rules.db as mxhook with schema version 5 wrote it: the schema-2 file's rules and
    endpoint, brought to 5 by its own steps."""
    import sqlite_utils

    make_v2_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    database = sqlite_utils.Database(conn)
    for step in (rulesdb._schema_v3, rulesdb._schema_v4, rulesdb._schema_v5):
        step(database)
    conn.execute("PRAGMA user_version = 5")
    conn.close()


def test_migration_from_version_5_keeps_every_destination_native(path):
    make_v5_db(path)
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        dests = [r.destination for r in store.list_rules()] + [e.destination for e in store.list_endpoints()]
        assert len(dests) == 3
        assert {(d.dialect, d.signing_key, d.template) for d in dests} == {("native", None, None)}
        assert store.conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 0
        assert store.template_versions("rule", 1) == []
        # an old rule takes a template after the upgrade
        old = store.get_rule("r1")
        new = rulesdb.NewTemplate("application/json", '{"a": 1}', "d1")
        assert store.replace_rule("r1", old, template=new).destination.template == 1


def test_template_versions_are_written_with_their_owner(store):
    first = rulesdb.NewTemplate("application/json", '{"v": 1}', "d1")
    second = rulesdb.NewTemplate("text/plain", "v2", "d2")
    rule = store.add_rule(make_rule(), template=first)
    assert rule.destination.template == 1 and store.get_rule("invoices").destination.template == 1
    assert store.replace_rule("invoices", rule, template=second).destination.template == 2
    assert store.replace_rule("invoices", rule, template=second).destination.template == 2  # same text
    assert [(t.version, t.content_type, t.source, t.digest) for t in store.template_versions("rule", rule.id)] == [
        (1, "application/json", '{"v": 1}', "d1"), (2, "text/plain", "v2", "d2")]
    assert rulesdb.template(store.conn, "rule", rule.id, 1) == ("application/json", '{"v": 1}')
    assert rulesdb.template(store.conn, "rule", rule.id, 3) is None
    assert store.stored_template("rule", rule.id, 2).source == "v2"
    # a destination naming a version that is not stored is refused, and nothing is written
    stale = replace(rule, destination=replace(rule.destination, template=7))
    with pytest.raises(RuleError, match="no template version 7"):
        store.replace_rule("invoices", stale)
    assert store.get_rule("invoices").destination.template == 2
    with pytest.raises(RuleError, match="no template version 7"):
        store.add_rule(replace(stale, name="other"))
    assert store.get_rule("other") is None

    ep = store.add_endpoint(make_endpoint(), template=first)
    assert ep.destination.template == 1
    assert store.template_versions("endpoint", ep.id)[0].source == '{"v": 1}'
    assert store.template_versions("rule", ep.id)[0].source == '{"v": 1}'  # owners apart by kind
    store.remove_endpoint(ep.id)
    assert store.template_versions("endpoint", ep.id) == []


def test_a_removed_rule_keeps_its_templates_as_long_as_its_keys(store, monkeypatch):
    rule = store.add_rule(make_rule(), template=rulesdb.NewTemplate("text/plain", "x", "d"))
    store.remove_rule("invoices")
    assert len(store.template_versions("rule", rule.id)) == 1  # its mail may still be retried
    later = datetime.now(timezone.utc) + timedelta(days=rulesdb.REMOVED_RULE_KEYS_DAYS + 1)
    monkeypatch.setattr(rulesdb, "_now", lambda: rulesdb._iso(later))
    store.add_rule(make_rule("other"))
    store.remove_rule("other")  # purges what has expired meanwhile
    assert store.template_versions("rule", rule.id) == []


def test_the_spoolers_template_reader(path, store):
    reader = rulesdb.Templates(path + ".missing")
    assert reader.get("rule", 1, 1) is None
    rule = store.add_rule(make_rule(), template=rulesdb.NewTemplate("text/plain", "x", "d"))
    reader = rulesdb.Templates(path)
    try:
        assert reader.get("rule", rule.id, 1) == ("text/plain", "x")
        assert reader.get("rule", rule.id, 2) is None and reader.get("rule", rule.id, None) is None
        store.replace_rule("invoices", rule, template=rulesdb.NewTemplate("text/plain", "y", "e"))
        assert reader.get("rule", rule.id, 2) == ("text/plain", "y")  # a new version: seen at once
    finally:
        reader.close()


# -- custom headers (schema 8) -------------------------------------------------------------------

def test_custom_headers_are_stored_and_the_snapshot_has_the_enabled_ones(store):
    a = store.add_endpoint(Endpoint(Destination("https://h.example/a"),
                                    custom_headers=("X-Campaign", " X-Order-Id ")))
    assert a.custom_headers == ("X-Campaign", "X-Order-Id") == store.get_endpoint(a.id).custom_headers
    assert a.target.custom_headers == ("X-Campaign", "X-Order-Id")
    b = store.add_endpoint(Endpoint(Destination("https://h.example/b"), custom_headers=("x-campaign", "X-Tag")))
    store.add_endpoint(Endpoint(Destination("https://h.example/c"), custom_headers=("X-Off",), enabled=False))
    assert store.snapshot().event_headers == ("x-campaign", "x-order-id", "x-tag")
    store.replace_endpoint(b.id, replace(b, custom_headers=()))
    assert store.get_endpoint(b.id).custom_headers == ()
    assert store.snapshot().event_headers == ("x-campaign", "x-order-id")


@pytest.mark.parametrize("names, error", [
    (("X-A", "x-a"), "given twice"), (("Bad Name",), "not a header field name"),
    (("X:Colon",), "not a header field name"), (("",), "not a header field name"),
    (tuple(f"X-{n}" for n in range(51)), "at most 50")])
def test_custom_headers_are_checked(store, names, error):
    with pytest.raises(RuleError, match=error):
        store.add_endpoint(Endpoint(Destination("https://h.example/a"), custom_headers=names))
    assert store.list_endpoints() == []


def test_migration_to_version_8_gives_every_endpoint_no_custom_headers(path):
    make_v5_db(path)
    with rulesdb.RulesStore(path) as store:
        (ep,) = store.list_endpoints()
        assert ep.custom_headers == () and store.snapshot().event_headers == ()


def test_the_spoolers_view_has_the_headers_enabled_endpoints_select(tmp_path):
    path = str(tmp_path / "rules.db")
    with rulesdb.RulesStore(path) as store:
        store.add_endpoint(Endpoint(Destination("https://h.example/a"), custom_headers=("X-Campaign",)))
        store.add_endpoint(Endpoint(Destination("https://h.example/b"), custom_headers=("X-Off",), enabled=False))
    view = rulesdb.EndpointsView(path)
    try:
        assert len(view.current()) == 2 and view.selected_headers == {"x-campaign"}
    finally:
        view.close()


from mxhook.model.retry import RetryPolicy  # noqa: E402


def make_v10_db(path):
    """A rules.db as mxhook with schema version 10 wrote it: the schema-5 file brought to 10 by
    its own steps, with a rule's retry settings changed as `rule edit` wrote them."""
    import sqlite_utils

    make_v5_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    database = sqlite_utils.Database(conn)
    for step in (rulesdb._schema_v6, rulesdb._schema_v7, rulesdb._schema_v8, rulesdb._schema_v9,
                 rulesdb._schema_v10):
        step(database)
    conn.execute("UPDATE rules SET retry_interval = 600, retry_period = 10 WHERE name = 'r1'")
    conn.execute("PRAGMA user_version = 10")
    conn.close()


def test_migration_to_version_11_keeps_every_fixed_interval(path):
    make_v10_db(path)
    with pytest.raises(migrations.NotReadable, match="schema version 10"):
        rulesdb.RulesStore(path, readonly=True)  # a reader waits for the upgrade
    with rulesdb.RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION == 11
        rules = {r.name: r.destination for r in store.list_rules()}
        (ep,) = store.list_endpoints()
        assert {(d.retry_backoff, d.retry_cap) for d in [*rules.values(), ep.destination]} == {("fixed", 3600)}
        assert (rules["r1"].retry_interval, rules["r1"].retry_period) == (600, 10)
        assert rules["r1"].retry == RetryPolicy(600, 10, "fixed", 3600)
        # and an old rule takes an exponential backoff after the upgrade
        old = store.get_rule("r1")
        dest = replace(old.destination, retry_backoff="exponential", retry_cap=7200)
        store.replace_rule("r1", replace(old, destination=dest))
        assert store.get_rule("r1").destination.retry == RetryPolicy(600, 10, "exponential", 7200)
    with rulesdb.RulesStore(path, readonly=True) as store:
        assert store.get_rule("r1").target.retry.backoff == "exponential"


def test_backoff_is_stored_for_rules_and_endpoints(store):
    rule = store.add_rule(make_rule(url="https://h.example/a", retry_backoff="exponential", retry_cap=900))
    ep = store.add_endpoint(Endpoint(rule.destination))
    assert store.get_rule(rule.name).destination == rule.destination
    assert store.get_endpoint(ep.id).destination.retry == RetryPolicy(60, 3, "exponential", 900)
    assert store.snapshot().ruleset.rules[0].target.retry.backoff == "exponential"
