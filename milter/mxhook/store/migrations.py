"""Schema versions of mxhook's SQLite files (rules.db, state.db), one style for both.

A database's version is its `PRAGMA user_version` (0: a new file). Each store lists its steps
as `((1, step), (2, step), ...)`: step N brings a database from version N - 1 to N. `migrate`
runs the steps a file lacks in one write transaction and sets the version in it, so a failed
step leaves the file as it was and a concurrent opener (the CLI while the daemon starts) waits
on the lock, reads the version again and finds nothing left to do. A file written by a newer
mxhook is refused rather than guessed at.
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import Callable, Iterator, Sequence

import sqlite_utils

Step = Callable[[sqlite_utils.Database], None]


class SchemaTooNew(RuntimeError):
    """The file was written by a newer mxhook."""


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def latest(steps: Sequence[tuple[int, Step]]) -> int:
    return steps[-1][0] if steps else 0


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """An explicit transaction on a connection opened with isolation_level=None; a write one
    takes the write lock at BEGIN, so what it read stays true until COMMIT."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (e.g. on SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(db: sqlite_utils.Database, steps: Sequence[tuple[int, Step]], *, name: str,
            newer: type[Exception] = SchemaTooNew) -> int:
    """Bring `db` up to the last version of `steps`; returns the version it had. Raises
    `newer` when the file's version is beyond the last step (`name` says which file)."""
    versions = [v for v, _ in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"{name} migration steps must be numbered 1..n in order: {versions}")
    target = latest(steps)

    def check(version: int) -> None:
        if version > target:
            raise newer(f"{name} schema version {version} is newer than this mxhook "
                        f"understands ({target}); upgrade mxhook")

    version = user_version(db.conn)
    check(version)
    if version == target:
        return version
    # The journal mode cannot change inside a transaction; WAL before the first write.
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.enable_wal()
    with transaction(db.conn):
        version = user_version(db.conn)
        check(version)
        for number, step in steps[version:]:
            step(db)
            if not db.conn.in_transaction:  # e.g. sqlite-utils' Table.create commits
                raise RuntimeError(f"{name} migration step {number} ended the migration's transaction")
        if version < target:
            db.conn.execute(f"PRAGMA user_version = {target}")
    return version
