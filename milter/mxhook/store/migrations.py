"""Schema versions of mxhook's SQLite files (rules.db, state.db), one style for both.

A database's version is its `PRAGMA user_version` (0: a new file). Each store lists its steps
as `((1, step), (2, step), ...)`: step N brings a database from version N - 1 to N. `migrate`
runs the steps a file lacks in one write transaction and sets the version in it, so a failed
step leaves the file as it was and a concurrent opener (the CLI while the daemon starts) waits
on the lock, reads the version again and finds nothing left to do. A file written by a newer
mxhook is refused rather than guessed at.

Read-only opens (`check_readable`: `mxhook log`, `mxhook status`, a user who may read the file
but not write it) never migrate. They read a file at this mxhook's version; one behind it is
refused with `NotReadable`, whose message says which process upgrades it, rather than read
through a schema that may lack tables and columns the reader expects.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Callable, Iterator, Sequence

import sqlite_utils

Step = Callable[[sqlite_utils.Database], None]


class SchemaTooNew(RuntimeError):
    """The file was written by a newer mxhook."""


class NotReadable(RuntimeError):
    """A read-only open cannot read the file as it is: an older mxhook wrote it (only a writer
    migrates it), or it is in WAL mode and SQLite would have to create its -shm file in a
    directory this user may not write. The message says what to do."""


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def latest(steps: Sequence[tuple[int, Step]]) -> int:
    return steps[-1][0] if steps else 0


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """An explicit transaction on a connection opened with isolation_level=None; a write one
    takes the write lock at BEGIN, so what it read stays true until COMMIT. Inside a caller's
    transaction it is a savepoint of it (`mxhook config import` applies many writes as one)."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO nested")
                conn.execute("RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (e.g. on SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _refuse_newer(version: int, target: int, name: str, newer: type[Exception]) -> None:
    if version > target:
        raise newer(f"{name} schema version {version} is newer than this mxhook "
                    f"understands ({target}); upgrade mxhook")


def check_readable(conn: sqlite3.Connection, path: str, steps: Sequence[tuple[int, Step]], *,
                   name: str, upgrade: str, newer: type[Exception] = SchemaTooNew) -> int:
    """For a read-only connection to `path`: the file's version, when it is the last of
    `steps`. Raises `newer` beyond it, and NotReadable (saying `upgrade`: what migrates it)
    before it; writes nothing either way."""
    target = latest(steps)
    try:
        version = user_version(conn)
    except sqlite3.OperationalError as exc:
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path + "-shm") or os.access(directory, os.W_OK):
            raise
        # WAL: a reader needs the -shm file, which the first connection creates and the last
        # removes; without write access to the directory it can read only while a daemon has
        # the file open.
        raise NotReadable(f"{name} cannot be read by this user now: {exc} (SQLite would have to "
                          f"create {path}-shm, and {directory} is not writable for this user); "
                          "run this as the daemons' user, or while they run") from exc
    _refuse_newer(version, target, name, newer)
    if version < target:
        raise NotReadable(f"{name} is at schema version {version}, older than this mxhook's "
                           f"{target}: {upgrade}")
    return version


def migrate(db: sqlite_utils.Database, steps: Sequence[tuple[int, Step]], *, name: str,
            newer: type[Exception] = SchemaTooNew) -> int:
    """Bring `db` up to the last version of `steps`; returns the version it had. Raises
    `newer` when the file's version is beyond the last step (`name` says which file)."""
    versions = [v for v, _ in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"{name} migration steps must be numbered 1..n in order: {versions}")
    target = latest(steps)

    def check(version: int) -> None:
        _refuse_newer(version, target, name, newer)

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
