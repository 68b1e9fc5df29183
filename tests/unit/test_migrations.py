"""mxhook.store.migrations: numbered steps, one transaction, the version in user_version."""
from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from mxhook.store import migrations


def table(name):
    return lambda db: db.execute(f"CREATE TABLE {name} (x)")


@pytest.fixture()
def db(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "t.db"), isolation_level=None)
    yield sqlite_utils.Database(conn)
    conn.close()


def names(db):
    return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def test_steps_run_once_in_order(db):
    steps = ((1, table("a")), (2, table("b")))
    assert migrations.migrate(db, steps, name="t") == 0
    assert migrations.user_version(db.conn) == 2 and names(db) == ["a", "b"]
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrations.migrate(db, steps, name="t") == 2  # nothing left to do
    assert migrations.migrate(db, steps + ((3, table("c")),), name="t") == 2
    assert names(db) == ["a", "b", "c"] and migrations.user_version(db.conn) == 3


def test_a_failing_step_leaves_the_file_as_it_was(db):
    def broken(database):
        database.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        migrations.migrate(db, ((1, table("a")), (2, broken)), name="t")
    assert migrations.user_version(db.conn) == 0 and names(db) == []


def test_a_step_that_commits_is_caught(db):
    def commits(database):
        database.execute("CREATE TABLE a (x)")
        database.conn.execute("COMMIT")

    with pytest.raises(RuntimeError, match="step 1 ended"):
        migrations.migrate(db, ((1, commits),), name="t")


def test_newer_file_is_refused(db):
    db.conn.execute("PRAGMA user_version = 3")

    class Refused(Exception):
        pass

    with pytest.raises(Refused, match=r"t schema version 3 is newer than this mxhook understands \(2\)"):
        migrations.migrate(db, ((1, table("a")), (2, table("b"))), name="t", newer=Refused)
    assert names(db) == []


def test_steps_are_numbered_from_one(db):
    with pytest.raises(ValueError, match="1..n"):
        migrations.migrate(db, ((2, table("a")),), name="t")
