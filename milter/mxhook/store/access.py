"""access.db: who may use the HTTP API and the console, and what they changed.

Its own file, apart from rules.db (the admin's mail data, read by the milter) and state.db (the
spooler's): the milter and the spooler never read it, and mxhook-web writes only here and
through the services. Created 0640 like the other databases (it holds token and password
hashes, never a token or a password). Schema versions: `_MIGRATIONS` (store/migrations.py).

- `tokens(id PK, name UNIQUE, hash UNIQUE, read_only, created, last_used)`: API tokens;
  `hash` is the SHA-256 of the token (hex). The token itself is shown once and never stored.
- `users(id PK, name UNIQUE, password, created, updated, read_only)`: console logins;
  `password` is the scrypt record that services/access.py makes and checks; a `read_only` user
  sees everything and changes nothing.
- `audit(id PK, at, actor, action, target, detail JSON, remote_addr)`: every change made
  through the API or the console (and the token and user changes of the CLI), oldest first.
"""
from __future__ import annotations

import json
import sqlite3

import sqlite_utils

from mxhook.model.records import iso
from mxhook.store import migrations
from mxhook.store.rulesdb import _connect_ro as connect_readonly
from mxhook.store.rulesdb import _create_file as create_private_file

BUSY_TIMEOUT_MS = 10000


class Missing(LookupError):
    """The token or user named does not exist."""


class Exists(ValueError):
    """A token or user of that name exists already."""


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.create_table("tokens", {"id": int, "name": str, "hash": str, "read_only": int,
                               "created": str, "last_used": str},
                    pk="id", not_null={"name", "hash", "read_only", "created"})
    db.execute("CREATE UNIQUE INDEX tokens_name ON tokens(name)")
    db.execute("CREATE UNIQUE INDEX tokens_hash ON tokens(hash)")
    db.create_table("users", {"id": int, "name": str, "password": str, "created": str,
                              "updated": str},
                    pk="id", not_null={"name", "password", "created", "updated"})
    db.execute("CREATE UNIQUE INDEX users_name ON users(name)")
    db.create_table("audit", {"id": int, "at": str, "actor": str, "action": str, "target": str,
                              "detail": str, "remote_addr": str},
                    pk="id", not_null={"at", "actor", "action"})
    db.execute("CREATE INDEX audit_at ON audit(at)")


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Read-only console users (`mxhook user add --read-only`)."""
    db.execute("ALTER TABLE users ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0")


_MIGRATIONS = ((1, _schema_v1), (2, _schema_v2))
SCHEMA_VERSION = migrations.latest(_MIGRATIONS)


class AccessStore:
    """Tokens, users and the audit log. Opening it for writing creates the file (0640) and
    brings its schema up to date; `readonly` reads it as it is."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = str(path)
        if readonly:
            self.conn = connect_readonly(self.path)
        else:
            create_private_file(self.path)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db = sqlite_utils.Database(self.conn)
        try:
            if readonly:
                migrations.check_readable(self.conn, self.path, _MIGRATIONS,
                                          name=f"access database {self.path}",
                                          upgrade="`mxhook token list`, run by its owner, upgrades it")
            else:
                migrations.migrate(self.db, _MIGRATIONS, name="access database")
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "AccessStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self):
        return migrations.transaction(self.conn)

    # -- tokens -----------------------------------------------------------------------------
    def add_token(self, name: str, token_hash: str, read_only: bool) -> dict:
        now = iso()
        with self._write():
            if self.conn.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                raise Exists(f"a token named {name!r} exists already")
            self.conn.execute("INSERT INTO tokens (name, hash, read_only, created) VALUES (?, ?, ?, ?)",
                              (name, token_hash, int(read_only), now))
        return {"name": name, "read_only": read_only, "created": now, "last_used": None}

    def list_tokens(self) -> list[dict]:
        return [{"name": r[0], "read_only": bool(r[1]), "created": r[2], "last_used": r[3]}
                for r in self.conn.execute(
                    "SELECT name, read_only, created, last_used FROM tokens ORDER BY name")]

    def token_by_hash(self, token_hash: str) -> dict | None:
        row = self.conn.execute("SELECT name, read_only, created, last_used FROM tokens"
                                " WHERE hash = ?", (token_hash,)).fetchone()
        if row is None:
            return None
        return {"name": row[0], "read_only": bool(row[1]), "created": row[2], "last_used": row[3]}

    def touch_token(self, name: str, at: str) -> None:
        with self._write():
            self.conn.execute("UPDATE tokens SET last_used = ? WHERE name = ?", (at, name))

    def remove_token(self, name: str) -> None:
        with self._write():
            if self.conn.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                raise Missing(f"no token named {name!r}")

    # -- users ------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, read_only: bool = False) -> dict:
        now = iso()
        with self._write():
            if self.conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Exists(f"a user named {name!r} exists already")
            self.conn.execute("INSERT INTO users (name, password, created, updated, read_only)"
                              " VALUES (?, ?, ?, ?, ?)", (name, password, now, now, int(read_only)))
        return {"name": name, "read_only": read_only, "created": now, "updated": now}

    def list_users(self) -> list[dict]:
        return [{"name": r[0], "read_only": bool(r[1]), "created": r[2], "updated": r[3]}
                for r in self.conn.execute(
                    "SELECT name, read_only, created, updated FROM users ORDER BY name")]

    def user_password(self, name: str) -> str | None:
        row = self.conn.execute("SELECT password FROM users WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_password(self, name: str, password: str) -> None:
        with self._write():
            if self.conn.execute("UPDATE users SET password = ?, updated = ? WHERE name = ?",
                                 (password, iso(), name)).rowcount == 0:
                raise Missing(f"no user named {name!r}")

    def remove_user(self, name: str) -> None:
        with self._write():
            if self.conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise Missing(f"no user named {name!r}")

    # -- audit ------------------------------------------------------------------------------
    def add_audit(self, actor: str, action: str, target: str | None, detail: dict | None,
                  remote_addr: str | None) -> dict:
        entry = {"at": iso(), "actor": actor, "action": action, "target": target,
                 "detail": detail, "remote_addr": remote_addr}
        with self._write():
            cur = self.conn.execute(
                "INSERT INTO audit (at, actor, action, target, detail, remote_addr)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry["at"], actor, action, target,
                 json.dumps(detail, sort_keys=True) if detail is not None else None, remote_addr))
        return {"id": cur.lastrowid, **entry}

    def audit(self, limit: int | None = 100) -> list[dict]:
        """The newest `limit` entries, newest first."""
        sql = "SELECT id, at, actor, action, target, detail, remote_addr FROM audit ORDER BY id DESC"
        params: list = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [{"id": r[0], "at": r[1], "actor": r[2], "action": r[3], "target": r[4],
                 "detail": json.loads(r[5]) if r[5] else None, "remote_addr": r[6]}
                for r in self.conn.execute(sql, params)]
