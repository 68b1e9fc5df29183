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
import queue
import re
import sqlite3
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import sqlite_utils

from . import endpoints as endpoints_mod
from . import rules as rules_mod
from .endpoints import Endpoint
from .headers import normalize_address
from .rules import Condition, Rule, RuleError, RuleSet

log = logging.getLogger("mxhook.db")

SCHEMA_VERSION = 2
FILE_MODE = 0o640
BUSY_TIMEOUT_MS = 5000

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Columns of `rules` that map one-to-one onto Rule fields.
_RULE_COLUMNS = (
    "name", "priority", "enabled", "endpoint", "format", "basic_auth", "bearer", "api_key",
    "retry_interval", "retry_period", "timeout", "discard", "allow_http",
)
_BOOL_COLUMNS = ("enabled", "discard", "allow_http")

# Columns of `endpoints` that map one-to-one onto Endpoint fields (categories: comma-joined).
_ENDPOINT_COLUMNS = (
    "url", "categories", "interval", "max_events", "timeout", "version", "timezone", "format",
    "basic_auth", "bearer", "api_key", "retry_interval", "retry_period", "allow_http", "enabled",
)
_ENDPOINT_BOOLS = ("allow_http", "enabled")
BLOCK_SOURCES = ("bounce", "cli", "api")
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f<>]+@[^@\s\x00-\x1f\x7f<>]+$")


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


def normalize_block_address(address: str) -> str:
    """The block list's form of an address (headers.normalize_address: no angle brackets,
    lower case); RuleError when it is not local@domain."""
    addr = normalize_address(address or "")
    if not addr:
        raise RuleError("address is empty")
    if len(addr) > 320 or not _ADDRESS.match(addr) or addr.endswith(".") or "@." in addr:
        raise RuleError(f"{address!r} is not an email address (local@domain)")
    return addr


def _row_to_endpoint(row: dict) -> Endpoint:
    fields = {k: row[k] for k in _ENDPOINT_COLUMNS}
    for k in _ENDPOINT_BOOLS:
        fields[k] = bool(fields[k])
    fields["categories"] = tuple(c for c in (row["categories"] or "").split(",") if c)
    return Endpoint(id=row["id"], created=row["created"], updated=row["updated"], **fields)


def _endpoint_values(ep: Endpoint) -> list:
    out = []
    for col in _ENDPOINT_COLUMNS:
        value = getattr(ep, col)
        if col == "categories":
            value = ",".join(value)
        elif col in _ENDPOINT_BOOLS:
            value = int(bool(value))
        out.append(value)
    return out


def _read_endpoints(conn: sqlite3.Connection) -> list[Endpoint]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    return [_row_to_endpoint(dict(r)) for r in cur.execute("SELECT * FROM endpoints ORDER BY id")]


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


def _schema_v1(db: sqlite_utils.Database) -> None:
    """Permitted domains, inbound rules and their conditions."""
    db.create_table(
        "domains", {"name": str, "log_denied": int, "created": str},
        pk="name", not_null={"name", "log_denied"}, if_not_exists=True,
    )
    db.create_table(
        "rules",
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
    db.create_table(
        "conditions",
        {"id": int, "rule_id": int, "position": int, "header": str, "pattern": str, "negate": int},
        pk="id", not_null={"rule_id", "position", "header", "pattern", "negate"},
        foreign_keys=[("rule_id", "rules", "id")], if_not_exists=True,
    )
    db.execute("CREATE INDEX IF NOT EXISTS conditions_rule ON conditions(rule_id, position)")


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Event endpoints and the block list."""
    # AUTOINCREMENT: the id of a removed endpoint is never given to a new one (state.db keeps
    # events and batches by endpoint id).
    db.execute(
        "CREATE TABLE IF NOT EXISTS endpoints ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, categories TEXT NOT NULL,"
        " interval INTEGER NOT NULL, max_events INTEGER NOT NULL, timeout INTEGER NOT NULL,"
        " version INTEGER NOT NULL, timezone TEXT NOT NULL, format TEXT NOT NULL,"
        " basic_auth TEXT, bearer TEXT, api_key TEXT, retry_interval INTEGER NOT NULL,"
        " retry_period INTEGER NOT NULL, allow_http INTEGER NOT NULL, enabled INTEGER NOT NULL,"
        " created TEXT, updated TEXT)"
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS endpoints_url ON endpoints(url)")
    # `event_id`: the hard bounce that registered the address (source "bounce"), so the
    # spooler can tell after a crash whether the `registered` event is still owed.
    db.create_table(
        "blocklist",
        {"address": str, "reason": str, "dsn": str, "source": str, "event_id": str,
         "created": str},
        pk="address", not_null={"address", "source", "created"}, if_not_exists=True,
    )


# version -> the step that brings a database from version - 1 to it
_MIGRATIONS = {1: _schema_v1, 2: _schema_v2}


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
    # All steps in one write transaction, the version read again under its lock: a concurrent
    # migration (two CLI commands at once) waits and then finds nothing left to do, and a
    # failed step leaves the database as it was.
    with _transaction(db.conn):
        version = _user_version(db.conn)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[step](db)
        if version < SCHEMA_VERSION:
            db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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

    # -- event endpoints ----------------------------------------------------------------------

    def _endpoint_row(self, key) -> dict | None:
        """An endpoint by id (an int, or text of digits) or by URL."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
            row = cur.execute("SELECT * FROM endpoints WHERE id = ?", (int(key),)).fetchone()
        else:
            row = cur.execute("SELECT * FROM endpoints WHERE url = ?", (str(key).strip(),)).fetchone()
        return dict(row) if row else None

    def get_endpoint(self, key) -> Endpoint | None:
        row = self._endpoint_row(key)
        return _row_to_endpoint(row) if row else None

    def list_endpoints(self) -> list[Endpoint]:
        """All endpoints by id."""
        with _transaction(self.conn, write=False):
            return _read_endpoints(self.conn)

    def add_endpoint(self, ep: Endpoint) -> Endpoint:
        """Validate and insert; the payload version is pinned now (the latest when not
        given). Returns the stored endpoint."""
        ep = endpoints_mod.validate(ep)
        with _transaction(self.conn):
            other = self._endpoint_row(ep.url)
            if other is not None:
                raise RuleError(f"an endpoint for {ep.url} already exists (id {other['id']}; "
                                "use `endpoint edit`)")
            now = _now()
            cols = ", ".join(_ENDPOINT_COLUMNS)
            marks = ", ".join("?" * (len(_ENDPOINT_COLUMNS) + 2))
            cur = self.conn.execute(
                f"INSERT INTO endpoints ({cols}, created, updated) VALUES ({marks})",
                _endpoint_values(ep) + [now, now],
            )
            endpoint_id = cur.lastrowid
        return self.get_endpoint(endpoint_id)

    def replace_endpoint(self, key, ep: Endpoint) -> Endpoint:
        """Replace the settings of the endpoint `key` (id or URL) with `ep`, keeping its id and
        creation time; `ep.url` may differ."""
        ep = endpoints_mod.validate(ep)
        with _transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise RuleError(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            other = self._endpoint_row(ep.url)
            if other is not None and other["id"] != row["id"]:
                raise RuleError(f"another endpoint (id {other['id']}) already has the URL {ep.url}")
            sets = ", ".join(f"{c} = ?" for c in _ENDPOINT_COLUMNS)
            self.conn.execute(
                f"UPDATE endpoints SET {sets}, updated = ? WHERE id = ?",
                _endpoint_values(ep) + [_now(), row["id"]],
            )
        return self.get_endpoint(row["id"])

    def set_endpoint_enabled(self, key, enabled: bool) -> Endpoint:
        """Enable or disable the endpoint `key` (id or URL) and nothing else: no validation of
        its other settings, so the spooler can disable an endpoint (410 Gone, continuous
        failure) whose host no longer resolves."""
        with _transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise RuleError(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            self.conn.execute("UPDATE endpoints SET enabled = ?, updated = ? WHERE id = ?",
                              (int(bool(enabled)), _now(), row["id"]))
        return self.get_endpoint(row["id"])

    def remove_endpoint(self, key) -> Endpoint:
        """Remove the endpoint `key` (id or URL); returns what was removed. Events still
        pending for it are marked failed by the spooler."""
        with _transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise RuleError(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            self.conn.execute("DELETE FROM endpoints WHERE id = ?", (row["id"],))
        return _row_to_endpoint(row)

    # -- block list ---------------------------------------------------------------------------

    def block_add(self, address: str, *, reason: str | None, dsn: str | None = None,
                  source: str, event_id: str | None = None) -> bool:
        """Put an address on the block list; True if it was newly added, False if it was
        there already (then nothing changes)."""
        addr = normalize_block_address(address)
        if source not in BLOCK_SOURCES:
            raise RuleError(f"block source must be one of {', '.join(BLOCK_SOURCES)}, got {source!r}")
        with _transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO blocklist (address, reason, dsn, source, event_id, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (addr, reason, dsn, source, event_id, _now()),
            )
        return cur.rowcount == 1

    def block_remove(self, address: str) -> bool:
        """Take an address off the block list; False if it was not on it."""
        addr = normalize_block_address(address)
        with _transaction(self.conn):
            cur = self.conn.execute("DELETE FROM blocklist WHERE address = ?", (addr,))
        return cur.rowcount == 1

    def block_get(self, address: str) -> dict | None:
        addr = normalize_block_address(address)
        rows = self.block_list(address=addr)
        return rows[0] if rows else None

    def block_list(self, *, address: str | None = None) -> list[dict]:
        """[{address, reason, dsn, source, event_id, created}], oldest first."""
        sql = "SELECT address, reason, dsn, source, event_id, created FROM blocklist"
        params: tuple = ()
        if address is not None:
            sql += " WHERE address = ?"
            params = (address,)
        keys = ("address", "reason", "dsn", "source", "event_id", "created")
        return [dict(zip(keys, row))
                for row in self.conn.execute(sql + " ORDER BY created, address", params)]

    def is_blocked(self, address: str) -> bool:
        try:
            addr = normalize_block_address(address)
        except RuleError:
            return False
        return self.conn.execute(
            "SELECT 1 FROM blocklist WHERE address = ?", (addr,)
        ).fetchone() is not None

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


# ---------------------------------------------------------------------------------------------
# Readers for the daemons

def _connect_ro(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect("file:" + _uri_path(path) + "?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class BlocklistReader:
    """`contains(address)` for the milter's RCPT check: one indexed point query on a
    read-only connection (`file:...?mode=ro`).

    Connections are kept in a small pool rather than per thread: libmilter may run every SMTP
    connection in a thread of its own, so thread-local connections would be opened (and the
    schema parsed) once per SMTP session; from the pool a thread takes any idle connection and
    gives it back after the query (each connection is used by one thread at a time).

    Missing database, a database without the block list (schema version 1), or any database
    error: `contains` answers False (the milter fails open: it never refuses mail because the
    list cannot be read), and logs the error once until reads work again.
    """

    def __init__(self, path: str):
        self.path = str(path)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        self._last_error: str | None = None
        self._closed = False

    def _error(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            log.error("cannot read the block list in %s (addresses are not blocked meanwhile): %s",
                      self.path, message)

    def contains(self, address: str) -> bool:
        addr = normalize_address(address or "")
        if not addr:
            return False
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            if not os.path.exists(self.path):
                return False
            try:
                conn = _connect_ro(self.path)
            except sqlite3.Error as exc:
                self._error(str(exc))
                return False
        try:
            row = conn.execute("SELECT 1 FROM blocklist WHERE address = ?", (addr,)).fetchone()
        except sqlite3.Error as exc:
            conn.close()  # a fresh connection next time (the file may have been replaced)
            self._error(str(exc))
            return False
        if self._last_error is not None:
            self._last_error = None
            log.info("the block list in %s is readable again", self.path)
        if self._closed:
            conn.close()
        else:
            self._pool.put(conn)
        return row is not None

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return


class EndpointsView:
    """The spooler's view of the event endpoints: `current()` returns {id: Endpoint},
    reloaded when rules.db changed (`PRAGMA data_version`, one cheap query per call).
    `generation` counts reloads, so callers can tell when the set may have changed. Missing
    database or no endpoints table yet: no endpoints."""

    def __init__(self, path: str):
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._current: dict[int, Endpoint] = {}
        self._last_error: str | None = None
        self.generation = 0

    def current(self) -> dict[int, Endpoint]:
        try:
            if self._conn is None:
                if not os.path.exists(self.path):
                    return self._current
                self._conn = _connect_ro(self.path)
                self._version = None
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                with _transaction(self._conn, write=False):
                    has_table = self._conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'endpoints'"
                    ).fetchone()
                    found = _read_endpoints(self._conn) if has_table else []
                self._current = {ep.id: ep for ep in found}
                self._version = version
                self.generation += 1
            self._last_error = None
        except sqlite3.Error as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.error("cannot read endpoints from %s, keeping the previous ones: %s",
                          self.path, exc)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
        return self._current

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
