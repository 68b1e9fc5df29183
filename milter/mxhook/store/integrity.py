"""state.db damage: how the spooler tells it from a bad record, and how it says so.

A damaged state.db (a page overwritten, a file that is not a database) is not a fault of the
spool record being ingested: moving records to bad/ for it would quarantine good mail. The
spooler stops instead (exit status EXIT_DAMAGED, which the unit does not restart on: restarting
cannot mend the file) and leaves a *fault file* beside the database, `<state.db>.fault` (one
line: when, and what SQLite said), which `mxhook status` and `mxhook check` show. The spooler
removes it once a start-up `PRAGMA quick_check` passes again (the database was restored or repaired).
"""
from __future__ import annotations

import os
import sqlite3
import time

EXIT_DAMAGED = 3  # mxhook-spooler's exit status when state.db is damaged
# SQLite primary result codes meaning the file itself is bad (not a busy, full or read-only disk)
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class StateDamaged(Exception):
    """state.db is damaged; the message says how (SQLite's words or quick_check's)."""


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says the database file is damaged (not that a record is bad)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    text = str(exc)
    return "malformed" in text or "not a database" in text


def quick_check(conn: sqlite3.Connection, limit: int = 3) -> list[str]:
    """SQLite's `PRAGMA quick_check` findings ([] when it says ok); a check that cannot run
    on a damaged file is a finding too."""
    try:
        found = [row[0] for row in conn.execute(f"PRAGMA quick_check({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        return [f"{type(exc).__name__}: {exc}"]
    return [] if found == ["ok"] else found


def fault_path(state_db: str) -> str:
    return state_db + ".fault"


def record_fault(state_db: str, what: str) -> None:
    """Write the fault file (best effort: the spooler is stopping because of the disk's
    contents, and its log line says the same)."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(what.split())}\n"
    try:
        with open(fault_path(state_db), "w", encoding="utf-8") as fh:
            fh.write(line)
    except OSError:
        pass


def read_fault(state_db: str) -> str | None:
    """The fault file's line ("<when> <what>"), or None when there is none."""
    try:
        with open(fault_path(state_db), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or "state.db damaged (no details)"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {fault_path(state_db)}: {exc.strerror or exc}"


def clear_fault(state_db: str) -> None:
    try:
        os.unlink(fault_path(state_db))
    except FileNotFoundError:
        pass
