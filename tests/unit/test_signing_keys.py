"""store/rulesdb.py SigningKeys: the spooler's cache of the signing keys. The loop refreshes
it (one `PRAGMA data_version` query) before it hands posts out; the workers read the cache
with `refresh=False`, without the lock or a query. A rotation is seen at the next refresh."""
from __future__ import annotations

import contextlib
import sqlite3

import pytest

from mxhook.delivery import signing
from mxhook.model.rules import Rule, parse_condition
from mxhook.model.targets import Destination
from mxhook.store import rulesdb


@pytest.fixture
def store(tmp_path):
    s = rulesdb.RulesStore(str(tmp_path / "rules.db"))
    yield s
    s.close()


@contextlib.contextmanager
def reader(path):
    keys = rulesdb.SigningKeys(path)
    try:
        yield keys
    finally:
        keys.close()


def add_rule(store, name="r1") -> Rule:
    return store.add_rule(Rule(name=name, destination=Destination("https://hooks.example.net/in"),
                               conditions=(parse_condition("To~@ours\\.example$"),)))


def test_without_refresh_the_cache_is_served_until_the_next_refresh(store):
    rule = add_rule(store)
    with reader(store.path) as keys:
        (old,) = keys.active("rule", rule.id, refresh=False).secrets  # first use: read now
        new = store.rotate_key("rule", rule.id, overlap=0)
        assert keys.active("rule", rule.id, refresh=False).secrets == (old,)
        keys.refresh()
        assert keys.active("rule", rule.id, refresh=False).secrets == (new.secret,)
        newer = store.rotate_key("rule", rule.id, overlap=0)
        assert keys.active("rule", rule.id).secrets == (newer.secret,)  # refresh=True: at once


def test_refresh_reads_the_table_only_when_rules_db_changed(store, monkeypatch):
    rule = add_rule(store)
    with reader(store.path) as keys:
        keys.refresh()
        reads = []
        monkeypatch.setattr(rulesdb, "_key_from_row", lambda row, f=rulesdb._key_from_row: (reads.append(1), f(row))[1])
        keys.refresh()
        keys.refresh()
        assert reads == []
        store.rotate_key("rule", rule.id, overlap=60)
        keys.refresh()
        assert reads  # read again
        assert len(keys.active("rule", rule.id, refresh=False).secrets) == 2


def test_a_read_error_keeps_the_previous_keys(store, caplog):
    rule = add_rule(store)
    with reader(store.path) as keys:
        before = keys.active("rule", rule.id)

        class Broken:
            def execute(self, *a):
                raise sqlite3.OperationalError("disk I/O error (injected)")

            def close(self):
                pass

        keys._conn = Broken()
        keys.refresh()  # logged, not raised
        assert keys.active("rule", rule.id, refresh=False) == before
        assert "cannot read signing keys" in caplog.text


def test_nothing_ever_read_raises_so_the_attempt_is_deferred(tmp_path):
    path = tmp_path / "rules.db"
    path.write_bytes(b"not a database" * 100)
    with reader(str(path)) as keys:
        with pytest.raises(sqlite3.DatabaseError):
            keys.refresh()
        with pytest.raises(sqlite3.DatabaseError):
            keys.active("rule", 1, refresh=False)


def test_no_rules_db_signs_nothing(tmp_path):
    with reader(str(tmp_path / "none.db")) as keys:
        assert keys.active("rule", 1, refresh=False) == signing.KeySet()
