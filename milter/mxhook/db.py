"""rules.db: permitted domains, inbound rules and their conditions (sqlite-utils, WAL).

Written by the `mxhook` CLI through `RulesStore`; read by the milter as an immutable compiled
`Snapshot` that a `SnapshotWatcher` swaps in when the database changes (`PRAGMA data_version`,
polled at most once per interval), so the milter's hot path never takes a lock.

Every write validates first (`rules.validate`, domain syntax) and raises `rules.RuleError`
with a message meant for the admin; a rule and its conditions are written in one transaction,
so nothing is written on error. The file holds endpoint secrets: it is created mode 0640.

Permissions: SQLite readers of a WAL database need write access to the -shm file (and to the
directory, to create it), so the milter must run as the owner of the database's directory.
The CLI run as root therefore gives a new rules.db the owner and group of its directory.

Schema versions live in `PRAGMA user_version` (0 = empty file); `_migrate` brings a database
up to `SCHEMA_VERSION` and refuses one written by a newer mxhook.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import sqlite_utils

from . import rules as rules_mod
from .rules import Condition, Rule, RuleError, RuleSet

log = logging.getLogger("mxhook.db")

SCHEMA_VERSION = 1
FILE_MODE = 0o640
BUSY_TIMEOUT_MS = 5000

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Columns of `rules` that map one-to-one onto Rule fields.
_RULE_COLUMNS = (
    "name", "priority", "enabled", "endpoint", "format", "basic_auth", "bearer", "api_key",
    "retry_interval", "retry_period", "timeout", "discard", "allow_http",
)
_BOOL_COLUMNS = ("enabled", "discard", "allow_http")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_domain(name: str) -> str:
    """A permitted-domain name in the form recipients are compared against: lower-case ASCII
    (internationalized names become their IDNA A-label form), no trailing dot. RuleError on
    anything that is not host-name syntax."""
    raw = (name or "").strip()
    if "@" in raw:
        raise RuleError(f"{raw!r} is an address; give the domain only (the part after '@')")
    text = raw.rstrip(".").lower()
    if not text:
        raise RuleError("domain name is empty")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise RuleError(f"domain {raw!r} is not a valid internationalized name: {exc}") from None
    if len(text) > 253:
        raise RuleError(f"domain {raw!r} is longer than 253 characters")
    labels = text.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise RuleError(
                f"domain {raw!r} is not a valid host name: each dot-separated label must be "
                "1-63 letters, digits or '-', not starting or ending with '-'"
            )
    if labels[-1].isdigit():
        raise RuleError(f"domain {raw!r} looks like an IP address; give a domain name")
    return text


@dataclass(frozen=True)
class Snapshot:
    """What the milter decides with: compiled rules, permitted domains, and the domains whose
    denied mail is logged."""

    ruleset: RuleSet
    domains: frozenset[str]
    log_denied: frozenset[str]


def empty_snapshot(regex_timeout: float = 0.05) -> Snapshot:
    return Snapshot(RuleSet([], regex_timeout=regex_timeout), frozenset(), frozenset())


# ---------------------------------------------------------------------------------------------
# Connections and schema

def _connect(path: str, *, create: bool) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit: BEGIN IMMEDIATE ... COMMIT), because
    sqlite-utils' own `with conn:` blocks would otherwise commit half of a rule."""
    if create:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    else:
        uri = "file:" + _uri_path(path) + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _create_file(path: str) -> None:
    """Create the parent directory and an empty db file, mode 0640, when missing.

    Run as root (an admin's `mxhook domain add`), the new file is given the owner and group of
    its directory (e.g. /var/lib/mxhook owned by the daemons' user), so the milter can still
    read it; SQLite itself gives the -wal/-shm files the owner of the database file.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken group read away
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            st = os.stat(parent)
            os.fchown(fd, st.st_uid, st.st_gid)
    finally:
        os.close(fd)


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _migrate(db: sqlite_utils.Database) -> None:
    version = _user_version(db.conn)
    if version > SCHEMA_VERSION:
        raise RuleError(
            f"rules database schema version {version} is newer than this mxhook "
            f"understands ({SCHEMA_VERSION}); upgrade mxhook"
        )
    if version == SCHEMA_VERSION:
        return
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.enable_wal()
    # Version 0 -> 1. `if_not_exists` makes a half-finished run (or a concurrent one) harmless;
    # user_version is set last.
    db["domains"].create(
        {"name": str, "log_denied": int, "created": str},
        pk="name", not_null={"name", "log_denied"}, if_not_exists=True,
    )
    db["rules"].create(
        {
            "id": int, "name": str, "priority": int, "enabled": int, "endpoint": str,
            "format": str, "basic_auth": str, "bearer": str, "api_key": str,
            "retry_interval": int, "retry_period": int, "timeout": int, "discard": int,
            "allow_http": int, "created": str, "updated": str,
        },
        pk="id",
        not_null={"name", "priority", "enabled", "endpoint", "format", "retry_interval",
                  "retry_period", "timeout", "discard", "allow_http"},
        if_not_exists=True,
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS rules_name ON rules(name)")
    db["conditions"].create(
        {"id": int, "rule_id": int, "position": int, "header": str, "pattern": str, "negate": int},
        pk="id", not_null={"rule_id", "position", "header", "pattern", "negate"},
        foreign_keys=[("rule_id", "rules", "id")], if_not_exists=True,
    )
    db.execute("CREATE INDEX IF NOT EXISTS conditions_rule ON conditions(rule_id, position)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, *, write: bool = True):
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _row_to_rule(row: dict, conditions: list[Condition]) -> Rule:
    fields = {k: row[k] for k in _RULE_COLUMNS}
    for k in _BOOL_COLUMNS:
        fields[k] = bool(fields[k])
    return Rule(id=row["id"], conditions=tuple(conditions), **fields)


def _read_rules(conn: sqlite3.Connection) -> list[Rule]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    conds: dict[int, list[Condition]] = {}
    for c in cur.execute(
        "SELECT rule_id, header, pattern, negate FROM conditions ORDER BY rule_id, position"
    ):
        conds.setdefault(c["rule_id"], []).append(
            Condition(header=c["header"], pattern=c["pattern"], negate=bool(c["negate"]))
        )
    rows = cur.execute("SELECT * FROM rules ORDER BY priority, id, name").fetchall()
    return [_row_to_rule(dict(r), conds.get(r["id"], [])) for r in rows]


def _read_domains(conn: sqlite3.Connection) -> list[dict]:
    return [
        {"name": name, "log_denied": bool(log_denied), "created": created}
        for name, log_denied, created in conn.execute(
            "SELECT name, log_denied, created FROM domains ORDER BY name"
        )
    ]


def _load_snapshot(conn: sqlite3.Connection, regex_timeout: float) -> Snapshot:
    """One consistent read (a single read transaction) compiled into a Snapshot."""
    with _transaction(conn, write=False):
        version = _user_version(conn)
        if version == 0:
            return empty_snapshot(regex_timeout)
        if version > SCHEMA_VERSION:
            raise RuleError(f"rules database schema version {version} is newer than this mxhook")
        rules = _read_rules(conn)
        domains = _read_domains(conn)
    return Snapshot(
        ruleset=RuleSet(rules, regex_timeout=regex_timeout),
        domains=frozenset(d["name"] for d in domains),
        log_denied=frozenset(d["name"] for d in domains if d["log_denied"]),
    )


# ---------------------------------------------------------------------------------------------
# The store

class RulesStore:
    """CRUD on rules.db. Opening it creates the file (and its directory) when missing and
    brings the schema up to date."""

    def __init__(self, path: str):
        self.path = str(path)
        _create_file(self.path)
        self.conn = _connect(self.path, create=True)
        self.db = sqlite_utils.Database(self.conn)
        _migrate(self.db)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RulesStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- domains ------------------------------------------------------------------------------

    def add_domain(self, name: str, log_denied: bool = True) -> dict:
        domain = normalize_domain(name)
        with _transaction(self.conn):
            if self.conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise RuleError(f"domain {domain} is already permitted")
            created = _now()
            self.conn.execute(
                "INSERT INTO domains (name, log_denied, created) VALUES (?, ?, ?)",
                (domain, int(bool(log_denied)), created),
            )
        return {"name": domain, "log_denied": bool(log_denied), "created": created}

    def set_domain(self, name: str, log_denied: bool) -> dict:
        domain = normalize_domain(name)
        with _transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE domains SET log_denied = ? WHERE name = ?", (int(bool(log_denied)), domain)
            )
            if cur.rowcount == 0:
                raise RuleError(f"domain {domain} is not in the permitted domains")
        return self.get_domain(domain)

    def get_domain(self, name: str) -> dict | None:
        domain = normalize_domain(name)
        for d in self.list_domains():
            if d["name"] == domain:
                return d
        return None

    def remove_domain(self, name: str) -> None:
        domain = normalize_domain(name)
        with _transaction(self.conn):
            cur = self.conn.execute("DELETE FROM domains WHERE name = ?", (domain,))
            if cur.rowcount == 0:
                raise RuleError(f"domain {domain} is not in the permitted domains")

    def list_domains(self) -> list[dict]:
        """[{name, log_denied, created}] sorted by name."""
        return _read_domains(self.conn)

    # -- rules --------------------------------------------------------------------------------

    def _rule_id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM rules WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _write_conditions(self, rule_id: int, conditions) -> None:
        self.conn.execute("DELETE FROM conditions WHERE rule_id = ?", (rule_id,))
        self.conn.executemany(
            "INSERT INTO conditions (rule_id, position, header, pattern, negate) "
            "VALUES (?, ?, ?, ?, ?)",
            [(rule_id, i, c.header, c.pattern, int(c.negate)) for i, c in enumerate(conditions)],
        )

    @staticmethod
    def _values(rule: Rule) -> list:
        out = []
        for col in _RULE_COLUMNS:
            value = getattr(rule, col)
            out.append(int(value) if col in _BOOL_COLUMNS else value)
        return out

    def add_rule(self, rule: Rule) -> Rule:
        """Validate and insert a rule with its conditions; returns it with its id."""
        rules_mod.validate(rule)
        with _transaction(self.conn):
            if self._rule_id(rule.name) is not None:
                raise RuleError(f"a rule named {rule.name!r} already exists (use `rule edit`)")
            now = _now()
            cols = ", ".join(_RULE_COLUMNS)
            marks = ", ".join("?" * (len(_RULE_COLUMNS) + 2))
            cur = self.conn.execute(
                f"INSERT INTO rules ({cols}, created, updated) VALUES ({marks})",
                self._values(rule) + [now, now],
            )
            rule_id = cur.lastrowid
            self._write_conditions(rule_id, rule.conditions)
        return replace(rule, id=rule_id)

    def get_rule(self, name: str) -> Rule | None:
        for rule in self.list_rules():
            if rule.name == name:
                return rule
        return None

    def list_rules(self) -> list[Rule]:
        """All rules in evaluation order (priority, id, name)."""
        with _transaction(self.conn, write=False):
            return _read_rules(self.conn)

    def rule_times(self) -> dict[str, dict]:
        """name -> {created, updated}, for display."""
        return {
            name: {"created": created, "updated": updated}
            for name, created, updated in self.conn.execute(
                "SELECT name, created, updated FROM rules"
            )
        }

    def replace_rule(self, name: str, rule: Rule) -> Rule:
        """Replace the rule called `name` (settings and all conditions) with `rule`, keeping its
        id and creation time; `rule.name` may differ (a rename)."""
        rules_mod.validate(rule)
        with _transaction(self.conn):
            rule_id = self._rule_id(name)
            if rule_id is None:
                raise RuleError(f"no rule named {name!r}")
            if rule.name != name and self._rule_id(rule.name) is not None:
                raise RuleError(f"cannot rename {name!r}: a rule named {rule.name!r} already exists")
            sets = ", ".join(f"{c} = ?" for c in _RULE_COLUMNS)
            self.conn.execute(
                f"UPDATE rules SET {sets}, updated = ? WHERE id = ?",
                self._values(rule) + [_now(), rule_id],
            )
            self._write_conditions(rule_id, rule.conditions)
        return replace(rule, id=rule_id)

    def set_enabled(self, name: str, enabled: bool) -> Rule:
        with _transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE rules SET enabled = ?, updated = ? WHERE name = ?",
                (int(bool(enabled)), _now(), name),
            )
            if cur.rowcount == 0:
                raise RuleError(f"no rule named {name!r}")
        return self.get_rule(name)

    def remove_rule(self, name: str) -> None:
        with _transaction(self.conn):
            rule_id = self._rule_id(name)
            if rule_id is None:
                raise RuleError(f"no rule named {name!r}")
            self.conn.execute("DELETE FROM conditions WHERE rule_id = ?", (rule_id,))
            self.conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,))

    # -- snapshot -----------------------------------------------------------------------------

    def snapshot(self, regex_timeout: float = 0.05) -> Snapshot:
        return _load_snapshot(self.conn, regex_timeout)


# ---------------------------------------------------------------------------------------------
# The milter's view

class SnapshotWatcher:
    """Holds the current Snapshot of rules.db in `.current` and swaps in a new one when the
    database changes.

    The first load happens in the constructor (errors there propagate, except that a missing
    file gives an empty snapshot: no permitted domains, so inbound mail is handled as for unknown
    domains until the admin creates the database). A daemon thread with its own connection then
    polls `PRAGMA data_version` every `interval` seconds; when it moves, the rules are reloaded
    and `.current` is replaced by one attribute assignment, so readers never lock. A failing
    reload keeps the previous snapshot, is logged, and is retried on the next poll.
    """

    def __init__(self, path: str, interval: float = 1.0, regex_timeout: float = 0.05):
        self.path = str(path)
        self.interval = interval
        self.regex_timeout = regex_timeout
        self.reloads = 0  # successful loads after the first, for tests and stats
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # check() may also be called directly (tests, SIGHUP)
        self.current: Snapshot = empty_snapshot(regex_timeout)
        if os.path.exists(self.path):
            try:
                self._open()
                self.current = self._load()
            except sqlite3.Error as exc:
                raise sqlite3.OperationalError(
                    f"cannot read rules database {self.path}: {exc} (a WAL database's readers "
                    "need write access to its -shm file and directory: run as their owner)"
                ) from exc
        else:
            log.warning("rules database %s does not exist yet: no permitted domains", self.path)
        self._thread = threading.Thread(target=self._run, name="mxhook-rules-watcher", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self._conn = _connect(self.path, create=False)

    def _load(self) -> Snapshot:
        # data_version is read before the rules, so a commit that lands in between is seen
        # again on the next poll (a harmless extra reload) rather than missed.
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        snap = _load_snapshot(self._conn, self.regex_timeout)
        self._version = version
        return snap

    def check(self) -> bool:
        """Reload if the database changed; True when a new snapshot was swapped in."""
        with self._lock:
            if self._stop.is_set():
                return False
            return self._check()

    def _check(self) -> bool:
        try:
            if self._conn is None:
                if not os.path.exists(self.path):
                    return False
                self._open()
                self._version = None
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return False
            snap = self._load()
        except Exception as exc:  # keep serving the previous snapshot
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.error("reloading rules from %s failed, keeping the previous rules: %s",
                          self.path, message)
                self._last_error = message
            return False
        if self._last_error is not None:
            log.info("rules from %s load again", self.path)
            self._last_error = None
        self.current = snap
        self.reloads += 1
        log.info("rules reloaded from %s: %d rules, %d domains", self.path,
                 len(snap.ruleset), len(snap.domains))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=max(self.interval * 2, 1.0))
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
