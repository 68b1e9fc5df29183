"""rules.db: permitted domains, inbound rules and their conditions, event endpoints, the block
list and signing keys (sqlite-utils, WAL).

Written by the `mxhook` CLI (mxhook.services) through `RulesStore`; read by the milter as an immutable compiled
`Snapshot` that a `SnapshotWatcher` swaps in when the database changes (`PRAGMA data_version`,
polled at most once per interval), so the milter's hot path never takes a lock.

Every write validates first (`rules.validate`, `endpoints.validate`, domain syntax) and raises
`rules.RuleError` (`targets.DestinationError` for a destination) with a message meant for the
admin; a rule and its conditions are written in one transaction,
so nothing is written on error. The file holds endpoint secrets: it is created mode 0640.

Permissions: SQLite readers of a WAL database need write access to the -shm file (and to the
directory, to create it), so the milter must run as the owner of the database's directory.
The CLI run as root therefore gives a new rules.db the owner and group of its directory.

Schema versions: `_MIGRATIONS`, applied by store.migrations (`PRAGMA user_version`, one
transaction; a file written by a newer mxhook is refused).

Signing keys (schema 3, `signing_keys`): every rule and event endpoint has a Standard Webhooks
secret (`v1`, ``whsec_``), generated in the transaction that creates it, and optionally an
ed25519 key pair (`v1a`, ``whsk_`` private + ``whpk_`` public). A key without `expires` is
current; rotation gives the current key of that scheme an `expires` time (now + overlap) and adds
a new current one, so both sign until then. Keys that existed before schema 3 got a secret on
migration (never shown: `rotate-secret` issues one to hand out). Rule ids are never reused
(`id_sequence`), so a removed rule's keys -- kept for REMOVED_RULE_KEYS_DAYS, as its accepted
mail may still be retried -- can never sign for a newer rule; endpoint ids never are either
(AUTOINCREMENT), and a removed endpoint's keys go with it (its pending events are failed).
The spooler reads keys through `SigningKeys` at attempt time, so a rotation applies to retries.

Tracking settings (schema 8, `tracking`): per sending domain (the envelope sender's domain of
outbound mail) which of open tracking, click tracking (and of the text part's links), one-click
unsubscribe headers and a honeypot link the milter applies; the snapshot carries them.

Suppressions (schema 9): a block-list entry has a `scope`, one sending domain or `*` (all),
keyed (address, scope), and a source (a hard bounce, the CLI/API, an unsubscribe, a complaint);
`BlocklistReader.find(address, sending_domain)` is what the milter asks at RCPT.

Templates (schema 6, `templates`): each `--template` given to a rule or endpoint is stored as
the next version of its owner's template (`add_template_version`, in the transaction that
writes the owner) and the owner's `template` column names the version its new deliveries
render with. Versions are never changed or deleted while the owner exists (a delivery accepted
under version N renders with N after an edit or `--no-template`); a removed endpoint's go with
it, a removed rule's stay as long as its signing keys (REMOVED_RULE_KEYS_DAYS: its accepted mail
may still be retried). The spooler reads them through `Templates`.

Custom headers (schema 10, `endpoints.custom_headers`, a JSON array of names as the admin wrote
them): the headers an endpoint's bodies carry besides `[milter] event_headers`. The milter's
`Snapshot` has those of every enabled endpoint (`event_headers`), which it captures too.

Retry backoff (schema 11, `retry_backoff` and `retry_cap` of `rules` and `endpoints`): fixed or
exponential (model/retry.py), destination columns like the retry interval.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import sqlite_utils

from mxhook.model import endpoints as endpoints_mod
from mxhook.model import rules as rules_mod
from mxhook.delivery import signing
from mxhook.model.endpoints import Endpoint
from mxhook.model.headers import MAX_LABEL_LENGTH, domain_a_label, normalize_address
from mxhook.model.retry import DEFAULT_RETRY_CAP, FIXED
from mxhook.model.rules import Condition, Rule, RuleError, RuleSet
from mxhook.model.targets import Destination
from mxhook.store import migrations
from mxhook.store.migrations import transaction

log = logging.getLogger(__name__)

FILE_MODE = 0o640
BUSY_TIMEOUT_MS = 5000

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Columns of `rules` and `endpoints` that map one-to-one onto Rule and Endpoint fields, besides
# those of their destination (`_destination_columns`); categories are comma-joined.
_RULE_COLUMNS = ("name", "priority", "enabled", "discard", "continue_matching", "include_raw",
                 "reject_text")
_ENDPOINT_COLUMNS = ("categories", "interval", "max_events", "version", "timezone", "enabled",
                     "custom_headers")
_BOOL_COLUMNS = ("enabled", "discard", "allow_http", "continue_matching", "include_raw")
UNMATCHED = ("reject", "pass")  # what a permitted domain does with recipients no rule takes


def _destination_columns(url_column: str) -> tuple[str, ...]:
    """The columns of a table that hold a Destination, in field order: the same names but the
    URL's, which is `endpoint` in `rules` and `url` in `endpoints`."""
    return tuple(url_column if f.name == "url" else f.name for f in dataclasses.fields(Destination))


_RULE_DESTINATION = _destination_columns("endpoint")
_ENDPOINT_DESTINATION = _destination_columns("url")


def _destination_from_row(row: dict, columns: tuple[str, ...]) -> Destination:
    """The destination a `rules` or `endpoints` row holds in `columns` (`_destination_columns`)."""
    values = [bool(row[c]) if c in _BOOL_COLUMNS else row[c] for c in columns]
    return Destination(*values)


def _row_values(obj, columns: tuple[str, ...]) -> list:
    """The values of `columns` (Rule or Endpoint fields), then of its destination's columns,
    as stored."""
    pairs = [(c, getattr(obj, c)) for c in columns] + [
        (f.name, getattr(obj.destination, f.name)) for f in dataclasses.fields(Destination)]
    return [",".join(v) if c == "categories" else json.dumps(list(v)) if c == "custom_headers"
            else int(bool(v)) if c in _BOOL_COLUMNS else v for c, v in pairs]


# bounce: a hard bounce; cli, api: the admin (manual); unsubscribe, complaint: the recipient
# asked (engagement events), for the sending domain only
BLOCK_SOURCES = ("bounce", "cli", "api", "unsubscribe", "complaint")
SCOPE_ALL = "*"  # a block-list entry's scope: every sending domain, else one sending domain
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f<>]+@[^@\s\x00-\x1f\x7f<>]+$")
KEY_KINDS = ("rule", "endpoint")
KEY_SCHEMES = ("v1", "v1a")  # HMAC-SHA256 secret, ed25519 key pair
REMOVED_RULE_KEYS_DAYS = 11  # longer than the longest retry period (10 days)
MAX_OVERLAP = 30 * 86400.0  # seconds


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Missing(RuleError):
    """What an operation names is not stored (a rule, endpoint, domain, key owner)."""


class Exists(RuleError):
    """What an operation would store is there already (a name, a URL, a domain)."""


@dataclass(frozen=True)
class SigningKey:
    """One signing key of a rule or endpoint. `secret` is the ``whsec_`` HMAC secret (scheme
    v1) or the ``whsk_`` ed25519 private key (v1a); `public_key` the ``whpk_`` key (v1a).
    `expires` None: current; else it signs until then (rotation overlap). The repr never
    shows the secret."""

    id: int
    kind: str
    owner_id: int
    scheme: str
    secret: str
    public_key: str | None
    created: str
    expires: str | None = None

    def __repr__(self) -> str:
        return (f"SigningKey(id={self.id}, kind={self.kind!r}, owner_id={self.owner_id}, "
                f"scheme={self.scheme!r}, secret={self.masked_secret!r}, expires={self.expires!r})")

    @property
    def current(self) -> bool:
        return self.expires is None

    @property
    def expires_epoch(self) -> float | None:
        return None if self.expires is None else _epoch(self.expires)

    def active(self, now: float | None = None) -> bool:
        exp = self.expires_epoch
        return exp is None or exp > (time.time() if now is None else now)

    @property
    def masked_secret(self) -> str:
        """The secret's prefix and, for an HMAC secret, its last 4 characters (to tell keys
        apart); an ed25519 private key shows nothing of itself."""
        if self.scheme == "v1":
            return signing.SECRET_PREFIX + "****" + self.secret[-4:]
        return signing.PRIVATE_KEY_PREFIX + "****"

    def to_public_dict(self) -> dict:
        """For `show --json`: everything but the secret, which is masked."""
        return {"scheme": self.scheme, "secret": self.masked_secret, "public_key": self.public_key,
                "created": self.created, "expires": self.expires}


def _new_key_row(scheme: str) -> tuple[str, str | None]:
    """(secret, public key) for a new key of `scheme`."""
    if scheme == "v1":
        return signing.generate_secret(), None
    if scheme == "v1a":
        private, public = signing.generate_ed25519_keypair()
        return private, public
    raise RuleError(f"unknown signing scheme {scheme!r} (known: {', '.join(KEY_SCHEMES)})")


def _insert_key(conn: sqlite3.Connection, kind: str, owner_id: int, scheme: str, now: str) -> int:
    secret, public = _new_key_row(scheme)
    cur = conn.execute(
        "INSERT INTO signing_keys (kind, owner_id, scheme, secret, public_key, created, expires)"
        " VALUES (?, ?, ?, ?, ?, ?, NULL)", (kind, owner_id, scheme, secret, public, now))
    return cur.lastrowid


def _key_from_row(row) -> SigningKey:
    return SigningKey(id=row[0], kind=row[1], owner_id=row[2], scheme=row[3], secret=row[4],
                      public_key=row[5], created=row[6], expires=row[7])


_KEY_SELECT = ("SELECT id, kind, owner_id, scheme, secret, public_key, created, expires "
               "FROM signing_keys")


@dataclass(frozen=True)
class NewTemplate:
    """A template to store as its owner's next version: its text, declared content type and
    digest (payloads.templates.template_version), checked by the caller."""

    content_type: str
    source: str
    digest: str


@dataclass(frozen=True)
class StoredTemplate:
    version: int
    content_type: str
    source: str
    digest: str
    created: str

    def to_public_dict(self, *, source: bool = False) -> dict:
        """For `show --json`: the source only when asked for."""
        d = {"version": self.version, "content_type": self.content_type, "digest": self.digest,
             "created": self.created}
        if source:
            d["source"] = self.source
        return d


_TEMPLATE_SELECT = "SELECT version, content_type, source, digest, created FROM templates"


def add_template_version(conn: sqlite3.Connection, kind: str, owner_id: int, new: NewTemplate,
                         now: str) -> int:
    """Store `new` as the next version of the owner's template, in the caller's write
    transaction; return its version. A template equal to the latest version is that version
    (an edit giving the same file again stores nothing)."""
    row = conn.execute(_TEMPLATE_SELECT + " WHERE owner_kind = ? AND owner_id = ?"
                       " ORDER BY version DESC LIMIT 1", (kind, owner_id)).fetchone()
    if row is not None and (row[1], row[2]) == (new.content_type, new.source):
        return row[0]
    version = 1 if row is None else row[0] + 1
    conn.execute("INSERT INTO templates (owner_kind, owner_id, version, content_type, source,"
                 " digest, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (kind, owner_id, version, new.content_type, new.source, new.digest, now))
    return version


def template(conn: sqlite3.Connection, kind: str, owner_id: int | None,
             version: int | None) -> tuple[str, str] | None:
    """(content_type, source) of version `version` of the owner's template, or None."""
    if owner_id is None or version is None:
        return None
    return conn.execute("SELECT content_type, source FROM templates WHERE owner_kind = ? AND"
                        " owner_id = ? AND version = ?", (kind, owner_id, version)).fetchone()


def template_versions(conn: sqlite3.Connection, kind: str, owner_id: int) -> list[StoredTemplate]:
    """Every stored version of the owner's template, oldest first."""
    rows = conn.execute(_TEMPLATE_SELECT + " WHERE owner_kind = ? AND owner_id = ? ORDER BY version",
                        (kind, owner_id)).fetchall()
    return [StoredTemplate(*row) for row in rows]


def _check_unmatched(value: str) -> str:
    if value not in UNMATCHED:
        raise RuleError(f"unmatched must be one of {', '.join(UNMATCHED)}, not {value!r}")
    return value


def normalize_domain(name: str) -> str:
    """A permitted-domain name in the form recipients are compared against: lower-case ASCII
    (internationalized names become their IDNA 2008 A-label form, `headers.domain_a_label`), no
    trailing dot. RuleError on anything that is not host-name syntax."""
    raw = (name or "").strip()
    if "@" in raw:
        raise RuleError(f"{raw!r} is an address; give the domain only (the part after '@')")
    if not raw.rstrip("."):
        raise RuleError("domain name is empty")
    try:
        text = domain_a_label(raw)
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
    if len(addr) > 320 or not _ADDRESS.match(addr) or "@." in addr:
        raise RuleError(f"{address!r} is not an email address (local@domain)")
    return addr


def _row_to_endpoint(row: dict) -> Endpoint:
    fields = {k: row.get(k) for k in _ENDPOINT_COLUMNS}
    fields["enabled"] = bool(fields["enabled"])
    fields["categories"] = tuple(c for c in (row["categories"] or "").split(",") if c)
    fields["custom_headers"] = _custom_headers(fields["custom_headers"])
    return Endpoint(destination=_destination_from_row(row, _ENDPOINT_DESTINATION), id=row["id"],
                    created=row["created"], updated=row["updated"], **fields)


def _custom_headers(stored: str | None) -> tuple[str, ...]:
    """An endpoints row's custom_headers (a JSON array of names; NULL before schema 10; what is
    not an array of names, e.g. edited by hand, counts as none)."""
    try:
        names = json.loads(stored) if stored else []
    except ValueError:
        return ()
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def _selected_headers(conn: sqlite3.Connection) -> tuple[str, ...]:
    """The custom headers of every enabled endpoint, lower case, each once (for the milter)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(endpoints)")}
    if "custom_headers" not in have:
        return ()
    names: dict[str, None] = {}
    for (stored,) in conn.execute("SELECT custom_headers FROM endpoints WHERE enabled ORDER BY id"):
        names.update((n.lower(), None) for n in _custom_headers(stored))
    return tuple(names)


def _read_endpoints(conn: sqlite3.Connection) -> list[Endpoint]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    return [_row_to_endpoint(dict(r)) for r in cur.execute("SELECT * FROM endpoints ORDER BY id")]


@dataclass(frozen=True)
class Snapshot:
    """What the milter decides with: compiled rules, permitted domains, the domains whose
    denied mail is logged, those that pass recipients no rule takes on to Postfix
    (`unmatched = pass`), the domains' custom reject texts, and the headers endpoints select."""

    ruleset: RuleSet
    domains: frozenset[str]
    log_denied: frozenset[str]
    pass_unmatched: frozenset[str] = frozenset()
    reject_texts: dict = dataclasses.field(default_factory=dict)  # domain -> text
    tracking: dict = dataclasses.field(default_factory=dict)  # sending domain -> TrackingSettings
    # the custom headers enabled endpoints select (lower case), captured besides [milter]
    # event_headers
    event_headers: tuple[str, ...] = ()


TRACKING_FEATURES = ("opens", "clicks", "text_links", "unsubscribe", "honeypot")


@dataclass(frozen=True)
class TrackingSettings:
    """What outbound mail of one sending domain gets (`TRACKING_FEATURES`)."""

    domain: str
    opens: bool = True
    clicks: bool = True
    text_links: bool = False
    unsubscribe: bool = False
    honeypot: bool = False
    created: str | None = None
    updated: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def empty_snapshot(regex_timeout: float = 0.05, recipient_delimiter: str = "+") -> Snapshot:
    return Snapshot(RuleSet([], regex_timeout=regex_timeout, recipient_delimiter=recipient_delimiter),
                    frozenset(), frozenset())


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


def _schema_v3(db: sqlite_utils.Database) -> None:
    """Signing keys of rules and endpoints (every existing one gets a v1 secret), and the rule
    id high-water mark (rule ids are never reused: a removed rule's keys may still sign its
    retries)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS signing_keys ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " kind TEXT NOT NULL CHECK (kind IN ('rule', 'endpoint')),"
        " owner_id INTEGER NOT NULL,"
        " scheme TEXT NOT NULL CHECK (scheme IN ('v1', 'v1a')),"
        " secret TEXT NOT NULL, public_key TEXT, created TEXT NOT NULL, expires TEXT)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS signing_keys_owner ON signing_keys(kind, owner_id)")
    db.execute("CREATE TABLE IF NOT EXISTS id_sequence (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL)")
    db.execute("INSERT OR IGNORE INTO id_sequence (name, last_id) "
               "SELECT 'rules', COALESCE(MAX(id), 0) FROM rules")
    now = _now()
    for kind, table in (("rule", "rules"), ("endpoint", "endpoints")):
        for (owner_id,) in db.execute(
                f"SELECT id FROM {table} WHERE id NOT IN "
                "(SELECT owner_id FROM signing_keys WHERE kind = ? AND scheme = 'v1')", [kind]).fetchall():
            _insert_key(db.conn, kind, owner_id, "v1", now)


def _schema_v4(db: sqlite_utils.Database) -> None:
    """Block-list addresses in the form they are compared in since then (normalize_address:
    the domain as IDNA A-label, without a trailing dot); where two rows become one address,
    the one already in that form stays."""
    _rewrite_blocklist(db, normalize_address)


def _rewrite_blocklist(db: sqlite_utils.Database, rewrite) -> None:
    """Each block-list address as `rewrite` gives it; where two rows become one address, the one
    already in that form stays."""
    for (address,) in db.execute("SELECT address FROM blocklist").fetchall():
        normalized = rewrite(address)
        if normalized == address:
            continue
        if db.execute("SELECT 1 FROM blocklist WHERE address = ?", [normalized]).fetchone():
            db.execute("DELETE FROM blocklist WHERE address = ?", [address])
        else:
            db.execute("UPDATE blocklist SET address = ? WHERE address = ?", [normalized, address])


def _schema_v5(db: sqlite_utils.Database) -> None:
    """Permitted domains and block-list addresses in their IDNA 2008 form (UTS #46, was IDNA
    2003): each stored A-label is read back as the name it encodes and normalized again, so a
    name IDNA 2003 mapped differently (Cherokee: `xn--tz9ata7l` -> `xn--f9dt7l`) is stored as
    mail to it now compares. A name IDNA 2008 refuses keeps its stored form; what IDNA 2003
    mapped away (`faß` stored as `fass`) cannot be told from the stored form and stays. Where
    two rows become one, the one already in the new form stays."""
    for (name,) in db.execute("SELECT name FROM domains").fetchall():
        try:
            new = normalize_domain(_u_labels(name))
        except RuleError:
            continue
        if new == name:
            continue
        if db.execute("SELECT 1 FROM domains WHERE name = ?", [new]).fetchone():
            db.execute("UPDATE domains SET log_denied = MAX(log_denied, (SELECT log_denied FROM domains"
                       " WHERE name = ?)) WHERE name = ?", [name, new])
            db.execute("DELETE FROM domains WHERE name = ?", [name])
        else:
            db.execute("UPDATE domains SET name = ? WHERE name = ?", [new, name])
    _rewrite_blocklist(db, _renormalized_address)


def _schema_v6(db: sqlite_utils.Database) -> None:
    """Payload dialects and templates: each destination names its dialect (`native`: mxhook's
    own bodies, what every existing rule and endpoint keeps), a dialect's signing key, and the
    version of its jinja2 template; `templates` keeps every version of every owner's template
    (a delivery accepted under version N renders with N after an edit)."""
    for table in ("rules", "endpoints"):
        have = {c.name for c in db[table].columns}
        for column, decl in (("dialect", "TEXT NOT NULL DEFAULT 'native'"),
                             ("signing_key", "TEXT"), ("template", "INTEGER")):
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute("""
        CREATE TABLE IF NOT EXISTS templates (
            owner_kind TEXT NOT NULL,   -- rule | endpoint
            owner_id INTEGER NOT NULL,
            version INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            source TEXT NOT NULL,
            digest TEXT NOT NULL,       -- payloads.templates.template_version
            created TEXT NOT NULL,
            PRIMARY KEY (owner_kind, owner_id, version)
        )""")


def _schema_v7(db: sqlite_utils.Database) -> None:
    """Routing: a rule may let the rules after it take a message too (`continue_matching`),
    carry the raw message in its payload (`include_raw`) and have its own reject text; a
    domain says what happens to recipients no rule takes (`unmatched`: reject, as every
    existing domain keeps, or pass) and may have its own reject text."""
    for table, columns in (
            ("rules", (("continue_matching", "INTEGER NOT NULL DEFAULT 0"),
                       ("include_raw", "INTEGER NOT NULL DEFAULT 0"), ("reject_text", "TEXT"))),
            ("domains", (("unmatched", "TEXT NOT NULL DEFAULT 'reject'"), ("reject_text", "TEXT")))):
        have = {c.name for c in db[table].columns}
        for column, decl in columns:
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _schema_v8(db: sqlite_utils.Database) -> None:
    """Tracking settings per sending domain (none: outbound mail is not tracked)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS tracking ("
        " domain TEXT PRIMARY KEY, opens INTEGER NOT NULL, clicks INTEGER NOT NULL,"
        " text_links INTEGER NOT NULL, unsubscribe INTEGER NOT NULL, honeypot INTEGER NOT NULL,"
        " created TEXT NOT NULL, updated TEXT NOT NULL)")


def _renormalized_address(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return normalize_address(f"{local}{at}{_u_labels(domain)}")


def _u_labels(domain: str) -> str:
    """`domain` with each A-label decoded (as written where it does not decode, or decodes to
    a label too long for any domain: mail names it by the A-label, which compares as is)."""
    labels = []
    for label in domain.split("."):
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except ValueError:  # UnicodeError: not ASCII, or no punycode
                decoded = label
            if len(decoded) <= MAX_LABEL_LENGTH:
                label = decoded
        labels.append(label)
    return ".".join(labels)


def _schema_v9(db: sqlite_utils.Database) -> None:
    """Suppressions: a block-list entry has a `scope`, the sending domain (envelope sender's
    domain) it applies to, or `*` (every one: what existing entries keep), so an address can
    be unsubscribed from one sender and hard-bounced for all; the key is (address, scope)."""
    db.execute(
        "CREATE TABLE blocklist_new (address TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '*',"
        " reason TEXT, dsn TEXT, source TEXT NOT NULL, event_id TEXT, created TEXT NOT NULL,"
        " PRIMARY KEY (address, scope))")
    db.execute("INSERT INTO blocklist_new (address, scope, reason, dsn, source, event_id, created)"
               " SELECT address, '*', reason, dsn, source, event_id, created FROM blocklist")
    db.execute("DROP TABLE blocklist")
    db.execute("ALTER TABLE blocklist_new RENAME TO blocklist")


def _schema_v10(db: sqlite_utils.Database) -> None:
    """An endpoint's custom headers (SMTP2GO's admin-selected headers): none for every existing
    endpoint, whose bodies stay as they were."""
    if "custom_headers" not in {c.name for c in db["endpoints"].columns}:
        db.execute("ALTER TABLE endpoints ADD COLUMN custom_headers TEXT NOT NULL DEFAULT '[]'")


def _schema_v11(db: sqlite_utils.Database) -> None:
    """The retry backoff of rules and endpoints (model/retry.py): every existing one keeps the
    fixed interval, with the default cap for when it is switched to exponential."""
    for table in ("rules", "endpoints"):
        have = {c.name for c in db[table].columns}
        for column, decl in (("retry_backoff", f"TEXT NOT NULL DEFAULT '{FIXED}'"),
                             ("retry_cap", f"INTEGER NOT NULL DEFAULT {DEFAULT_RETRY_CAP}")):
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


# The step that brings a database from the version before to each version (store.migrations).
_MIGRATIONS = ((1, _schema_v1), (2, _schema_v2), (3, _schema_v3), (4, _schema_v4), (5, _schema_v5),
               (6, _schema_v6), (7, _schema_v7), (8, _schema_v8), (9, _schema_v9),
               (10, _schema_v10), (11, _schema_v11))
SCHEMA_VERSION = migrations.latest(_MIGRATIONS)


def _row_to_rule(row: dict, conditions: list[Condition]) -> Rule:
    fields = {k: bool(row[k]) if k in _BOOL_COLUMNS else row[k] for k in _RULE_COLUMNS}
    return Rule(destination=_destination_from_row(row, _RULE_DESTINATION), id=row["id"],
                conditions=tuple(conditions), **fields)


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
        {"name": name, "log_denied": bool(log_denied), "unmatched": unmatched,
         "reject_text": reject_text, "created": created}
        for name, log_denied, unmatched, reject_text, created in conn.execute(
            "SELECT name, log_denied, unmatched, reject_text, created FROM domains ORDER BY name"
        )
    ]


_TRACKING_SELECT = ("SELECT domain, " + ", ".join(TRACKING_FEATURES) + ", created, updated"
                    " FROM tracking")


def _row_to_tracking(row) -> TrackingSettings:
    domain, *flags, created, updated = row
    return TrackingSettings(domain, *(bool(f) for f in flags), created=created, updated=updated)


def _read_tracking(conn: sqlite3.Connection) -> list[TrackingSettings]:
    return [_row_to_tracking(r) for r in conn.execute(_TRACKING_SELECT + " ORDER BY domain")]


def _load_snapshot(conn: sqlite3.Connection, regex_timeout: float,
                   recipient_delimiter: str = "+") -> Snapshot:
    """One consistent read (a single read transaction) compiled into a Snapshot."""
    with transaction(conn, write=False):
        version = migrations.user_version(conn)
        if version == 0:
            return empty_snapshot(regex_timeout, recipient_delimiter)
        if version > SCHEMA_VERSION:
            raise RuleError(f"rules database schema version {version} is newer than this mxhook")
        rules = _read_rules(conn)
        domains = _read_domains(conn)
        tracking = _read_tracking(conn) if version >= 8 else []
        event_headers = _selected_headers(conn)
    ruleset = RuleSet(rules, regex_timeout=regex_timeout, recipient_delimiter=recipient_delimiter)
    for rule, reason in ruleset.broken:
        log.error("rule %s is skipped (matches nothing) until it is fixed: %s", rule.name, reason)
    return Snapshot(
        ruleset=ruleset,
        domains=frozenset(d["name"] for d in domains),
        log_denied=frozenset(d["name"] for d in domains if d["log_denied"]),
        pass_unmatched=frozenset(d["name"] for d in domains if d["unmatched"] == "pass"),
        reject_texts={d["name"]: d["reject_text"] for d in domains if d["reject_text"]},
        tracking={t.domain: t for t in tracking},
        event_headers=event_headers,
    )


# ---------------------------------------------------------------------------------------------
# The store

class RulesStore:
    """CRUD on rules.db. Opening it creates the file (and its directory) when missing and
    brings the schema up to date; `readonly` opens the file as it is (`mode=ro`: for readers
    that may not write it), creates and migrates nothing, and refuses a file an older mxhook
    wrote (migrations.NotReadable)."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = str(path)
        if readonly:
            self.conn = _connect_ro(self.path)
        else:
            _create_file(self.path)
            self.conn = _connect(self.path, create=True)
        self.db = sqlite_utils.Database(self.conn)
        try:
            if readonly:
                migrations.check_readable(
                    self.conn, self.path, _MIGRATIONS, name=f"rules database {self.path}", newer=RuleError,
                    upgrade="`mxhook domain list`, run by its owner, upgrades it")
            else:
                migrations.migrate(self.db, _MIGRATIONS, name="rules database", newer=RuleError)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RulesStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- domains ------------------------------------------------------------------------------

    def add_domain(self, name: str, log_denied: bool = True, unmatched: str = "reject",
                   reject_text: str | None = None) -> dict:
        domain = normalize_domain(name)
        _check_unmatched(unmatched)
        reject_text = rules_mod.check_reject_text(reject_text)
        with transaction(self.conn):
            if self.conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise Exists(f"domain {domain} is already permitted")
            created = _now()
            self.conn.execute(
                "INSERT INTO domains (name, log_denied, unmatched, reject_text, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (domain, int(bool(log_denied)), unmatched, reject_text, created),
            )
        return self.get_domain(domain)

    def set_domain(self, name: str, *, log_denied: bool | None = None, unmatched: str | None = None,
                   reject_text: str | None = None) -> dict:
        """Change a domain's settings; None keeps a value, a reject text '' removes it."""
        domain = normalize_domain(name)
        changes = {}
        if log_denied is not None:
            changes["log_denied"] = int(bool(log_denied))
        if unmatched is not None:
            changes["unmatched"] = _check_unmatched(unmatched)
        if reject_text is not None:
            changes["reject_text"] = rules_mod.check_reject_text(reject_text)
        with transaction(self.conn):
            if not self.conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise Missing(f"domain {domain} is not in the permitted domains")
            if changes:
                self.conn.execute(f"UPDATE domains SET {', '.join(f'{c} = ?' for c in changes)}"
                                  " WHERE name = ?", [*changes.values(), domain])
        return self.get_domain(domain)

    def get_domain(self, name: str) -> dict | None:
        domain = normalize_domain(name)
        for d in self.list_domains():
            if d["name"] == domain:
                return d
        return None

    def remove_domain(self, name: str) -> None:
        domain = normalize_domain(name)
        with transaction(self.conn):
            cur = self.conn.execute("DELETE FROM domains WHERE name = ?", (domain,))
            if cur.rowcount == 0:
                raise Missing(f"domain {domain} is not in the permitted domains")

    def list_domains(self) -> list[dict]:
        """[{name, log_denied, unmatched, reject_text, created}] sorted by name."""
        return _read_domains(self.conn)

    # -- rules --------------------------------------------------------------------------------

    def _rule_id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM rules WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _name_taken(self, name: str, *, but: int | None = None) -> str | None:
        """The name of another rule that `name` equals but for case: `Invoices` and `invoices`
        side by side would be told apart only by a receiver that compares the case."""
        row = self.conn.execute("SELECT name FROM rules WHERE name = ? COLLATE NOCASE AND id IS NOT ?",
                                (name, but)).fetchone()
        return row[0] if row else None

    def _write_conditions(self, rule_id: int, conditions) -> None:
        self.conn.execute("DELETE FROM conditions WHERE rule_id = ?", (rule_id,))
        self.conn.executemany(
            "INSERT INTO conditions (rule_id, position, header, pattern, negate) "
            "VALUES (?, ?, ?, ?, ?)",
            [(rule_id, i, c.header, c.pattern, int(c.negate)) for i, c in enumerate(conditions)],
        )

    def add_rule(self, rule: Rule, *, ed25519: bool = False, template: NewTemplate | None = None) -> Rule:
        """Validate and insert a rule with its conditions and a new signing secret (and an
        ed25519 key pair with `ed25519`), and `template` as its template's first version;
        returns it with its id (`signing_keys` gives the keys). Rule ids are never reused."""
        rules_mod.validate(rule)
        with transaction(self.conn):
            taken = self._name_taken(rule.name)
            if taken is not None:
                raise Exists(f"a rule named {taken!r} already exists (use `rule edit`)"
                                + ("; names are compared without case" if taken != rule.name else ""))
            now = _now()
            (last,) = self.conn.execute(
                "SELECT MAX(COALESCE((SELECT last_id FROM id_sequence WHERE name = 'rules'), 0),"
                " COALESCE((SELECT MAX(id) FROM rules), 0))").fetchone()
            rule_id = last + 1
            rule = replace(rule, destination=self._with_template(
                "rule", rule_id, rule.destination, template, now))
            cols = ", ".join(_RULE_COLUMNS + _RULE_DESTINATION)
            marks = ", ".join("?" * (len(_RULE_COLUMNS) + len(_RULE_DESTINATION) + 3))
            self.conn.execute(
                f"INSERT INTO rules (id, {cols}, created, updated) VALUES ({marks})",
                [rule_id] + _row_values(rule, _RULE_COLUMNS) + [now, now],
            )
            self.conn.execute("INSERT OR REPLACE INTO id_sequence (name, last_id) VALUES ('rules', ?)",
                              (rule_id,))
            self._write_conditions(rule_id, rule.conditions)
            self._add_keys("rule", rule_id, ed25519, now)
        return replace(rule, id=rule_id)

    def get_rule(self, name: str) -> Rule | None:
        for rule in self.list_rules():
            if rule.name == name:
                return rule
        return None

    def list_rules(self) -> list[Rule]:
        """All rules in evaluation order (priority, id, name)."""
        with transaction(self.conn, write=False):
            return _read_rules(self.conn)

    def rule_times(self) -> dict[str, dict]:
        """name -> {created, updated}, for display."""
        return {
            name: {"created": created, "updated": updated}
            for name, created, updated in self.conn.execute(
                "SELECT name, created, updated FROM rules"
            )
        }

    def replace_rule(self, name: str, rule: Rule, *, template: NewTemplate | None = None) -> Rule:
        """Replace the rule called `name` (settings and all conditions) with `rule`, keeping its
        id and creation time; `rule.name` may differ (a rename). `template`: stored as the next
        version of the rule's template, which the rule then renders with."""
        rules_mod.validate(rule)
        with transaction(self.conn):
            rule_id = self._rule_id(name)
            if rule_id is None:
                raise Missing(f"no rule named {name!r}")
            # A rule keeping its name is not checked: an old database may hold names that
            # differ only in case, and such a rule must stay editable.
            taken = self._name_taken(rule.name, but=rule_id) if rule.name != name else None
            if taken is not None:
                raise Exists(f"cannot rename {name!r}: a rule named {taken!r} already exists"
                                + (" (names are compared without case)" if taken != rule.name else ""))
            now = _now()
            rule = replace(rule, destination=self._with_template(
                "rule", rule_id, rule.destination, template, now))
            sets = ", ".join(f"{c} = ?" for c in _RULE_COLUMNS + _RULE_DESTINATION)
            self.conn.execute(
                f"UPDATE rules SET {sets}, updated = ? WHERE id = ?",
                _row_values(rule, _RULE_COLUMNS) + [now, rule_id],
            )
            self._write_conditions(rule_id, rule.conditions)
        return replace(rule, id=rule_id)

    def set_enabled(self, name: str, enabled: bool) -> Rule:
        with transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE rules SET enabled = ?, updated = ? WHERE name = ?",
                (int(bool(enabled)), _now(), name),
            )
            if cur.rowcount == 0:
                raise Missing(f"no rule named {name!r}")
        return self.get_rule(name)

    def remove_rule(self, name: str) -> None:
        with transaction(self.conn):
            rule_id = self._rule_id(name)
            if rule_id is None:
                raise Missing(f"no rule named {name!r}")
            self.conn.execute("DELETE FROM conditions WHERE rule_id = ?", (rule_id,))
            self.conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,))
            # mail the rule accepted may still be retried (or replayed) for up to its retry
            # period: its keys keep signing that long, then they go
            until = _iso(datetime.now(timezone.utc) + timedelta(days=REMOVED_RULE_KEYS_DAYS))
            self.conn.execute(
                "UPDATE signing_keys SET expires = ? WHERE kind = 'rule' AND owner_id = ? "
                "AND (expires IS NULL OR expires > ?)", (until, rule_id, until))
            self._purge_expired_keys()

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
        with transaction(self.conn, write=False):
            return _read_endpoints(self.conn)

    def add_endpoint(self, ep: Endpoint, *, ed25519: bool = False,
                     template: NewTemplate | None = None) -> Endpoint:
        """Validate and insert with a new signing secret (and an ed25519 key pair with
        `ed25519`), and `template` as its template's first version; the payload version is
        pinned now (the latest when not given). Returns the stored endpoint (`signing_keys`
        gives its keys)."""
        ep = endpoints_mod.validate(ep)
        with transaction(self.conn):
            other = self._endpoint_row(ep.destination.url)
            if other is not None:
                raise Exists(f"an endpoint for {ep.destination.url} already exists (id {other['id']}; "
                                "use `endpoint edit`)")
            now = _now()
            cols = ", ".join(_ENDPOINT_COLUMNS + _ENDPOINT_DESTINATION)
            marks = ", ".join("?" * (len(_ENDPOINT_COLUMNS) + len(_ENDPOINT_DESTINATION) + 2))
            cur = self.conn.execute(
                f"INSERT INTO endpoints ({cols}, created, updated) VALUES ({marks})",
                _row_values(ep, _ENDPOINT_COLUMNS) + [now, now],
            )
            endpoint_id = cur.lastrowid
            version = self._with_template("endpoint", endpoint_id, ep.destination, template, now).template
            self.conn.execute("UPDATE endpoints SET template = ? WHERE id = ?", (version, endpoint_id))
            self._add_keys("endpoint", endpoint_id, ed25519, now)
        return self.get_endpoint(endpoint_id)

    def replace_endpoint(self, key, ep: Endpoint, *, template: NewTemplate | None = None) -> Endpoint:
        """Replace the settings of the endpoint `key` (id or URL) with `ep`, keeping its id and
        creation time; its URL may differ. `template`: stored as the next version of the
        endpoint's template, which it then renders with."""
        ep = endpoints_mod.validate(ep)
        with transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise Missing(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            other = self._endpoint_row(ep.destination.url)
            if other is not None and other["id"] != row["id"]:
                raise Exists(f"another endpoint (id {other['id']}) already has the URL {ep.destination.url}")
            now = _now()
            ep = replace(ep, destination=self._with_template(
                "endpoint", row["id"], ep.destination, template, now))
            sets = ", ".join(f"{c} = ?" for c in _ENDPOINT_COLUMNS + _ENDPOINT_DESTINATION)
            self.conn.execute(
                f"UPDATE endpoints SET {sets}, updated = ? WHERE id = ?",
                _row_values(ep, _ENDPOINT_COLUMNS) + [now, row["id"]],
            )
        return self.get_endpoint(row["id"])

    def set_endpoint_enabled(self, key, enabled: bool) -> Endpoint:
        """Enable or disable the endpoint `key` (id or URL) and nothing else: no validation of
        its other settings, so the spooler can disable an endpoint (410 Gone, continuous
        failure) whose host no longer resolves."""
        with transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise Missing(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            self.conn.execute("UPDATE endpoints SET enabled = ?, updated = ? WHERE id = ?",
                              (int(bool(enabled)), _now(), row["id"]))
        return self.get_endpoint(row["id"])

    def remove_endpoint(self, key) -> Endpoint:
        """Remove the endpoint `key` (id or URL); returns what was removed. Events still
        pending for it are marked failed by the spooler."""
        with transaction(self.conn):
            row = self._endpoint_row(key)
            if row is None:
                raise Missing(f"no endpoint {key!r} (give its id or URL; see `endpoint list`)")
            self.conn.execute("DELETE FROM endpoints WHERE id = ?", (row["id"],))
            self.conn.execute("DELETE FROM signing_keys WHERE kind = 'endpoint' AND owner_id = ?",
                              (row["id"],))
            self.conn.execute("DELETE FROM templates WHERE owner_kind = 'endpoint' AND owner_id = ?",
                              (row["id"],))
        return _row_to_endpoint(row)

    # -- signing keys -------------------------------------------------------------------------

    def _add_keys(self, kind: str, owner_id: int, ed25519: bool, now: str) -> None:
        _insert_key(self.conn, kind, owner_id, "v1", now)
        if ed25519:
            _insert_key(self.conn, kind, owner_id, "v1a", now)

    def _purge_expired_keys(self) -> None:
        """Expired keys go, and with the last key of a removed rule its template versions (its
        accepted mail is no longer retried then)."""
        self.conn.execute("DELETE FROM signing_keys WHERE expires IS NOT NULL AND expires <= ?",
                          (_now(),))
        self.conn.execute(
            "DELETE FROM templates WHERE owner_kind = 'rule' AND owner_id NOT IN (SELECT id FROM rules)"
            " AND owner_id NOT IN (SELECT owner_id FROM signing_keys WHERE kind = 'rule')")

    # -- templates ----------------------------------------------------------------------------

    def _with_template(self, kind: str, owner_id: int, dest: Destination, new: NewTemplate | None,
                       now: str) -> Destination:
        """`dest` naming the template version its deliveries render with: `new` stored as the
        owner's next version, else the version `dest` names, which must be stored."""
        if new is not None:
            return replace(dest, template=add_template_version(self.conn, kind, owner_id, new, now))
        if dest.template is not None and template(self.conn, kind, owner_id, dest.template) is None:
            raise RuleError(f"the {kind} has no template version {dest.template}")
        return dest

    def stored_template(self, kind: str, owner_id: int, version: int | None) -> StoredTemplate | None:
        """Version `version` of the owner's template (None: no such version, or None given)."""
        return next((t for t in self.template_versions(kind, owner_id) if t.version == version), None)

    def template_versions(self, kind: str, owner_id: int) -> list[StoredTemplate]:
        """Every stored version of the owner's template, oldest first."""
        return template_versions(self.conn, kind, owner_id)

    def _owner_exists(self, kind: str, owner_id: int) -> bool:
        if kind not in KEY_KINDS:
            raise RuleError(f"signing keys belong to a rule or an endpoint, not {kind!r}")
        table = "rules" if kind == "rule" else "endpoints"
        return self.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (owner_id,)).fetchone() is not None

    def signing_keys(self, kind: str, owner_id: int, *, include_expired: bool = False) -> list[SigningKey]:
        """The keys of a rule or endpoint, oldest first, secrets in full (the CLI prints a new
        one once, masks the rest). Expired ones only with `include_expired`."""
        rows = self.conn.execute(_KEY_SELECT + " WHERE kind = ? AND owner_id = ? ORDER BY id",
                                 (kind, owner_id)).fetchall()
        keys = [_key_from_row(r) for r in rows]
        return keys if include_expired else [k for k in keys if k.active()]

    def rotate_key(self, kind: str, owner_id: int, *, overlap: float, scheme: str = "v1") -> SigningKey:
        """A new current key of `scheme` for the rule/endpoint; the keys of that scheme that
        sign now keep signing for `overlap` seconds more (0: they stop now), then they go.
        Returns the new key. Rotating v1a on an owner without one adds its first key pair."""
        if scheme not in KEY_SCHEMES:
            raise RuleError(f"unknown signing scheme {scheme!r} (known: {', '.join(KEY_SCHEMES)})")
        if not 0 <= overlap <= MAX_OVERLAP:
            raise RuleError(f"the overlap must be between 0 and {int(MAX_OVERLAP // 86400)} days, "
                            f"got {overlap:g} s")
        with transaction(self.conn):
            if not self._owner_exists(kind, owner_id):
                raise Missing(f"no {kind} with id {owner_id}")
            now_dt = datetime.now(timezone.utc)
            now = _iso(now_dt)
            until = _iso(now_dt + timedelta(seconds=overlap))
            self.conn.execute(
                "UPDATE signing_keys SET expires = ? WHERE kind = ? AND owner_id = ? AND scheme = ? "
                "AND (expires IS NULL OR expires > ?)", (until, kind, owner_id, scheme, until))
            key_id = _insert_key(self.conn, kind, owner_id, scheme, now)
            self._purge_expired_keys()
            row = self.conn.execute(_KEY_SELECT + " WHERE id = ?", (key_id,)).fetchone()
        return _key_from_row(row)

    # -- block list ---------------------------------------------------------------------------

    def block_add(self, address: str, *, reason: str | None, dsn: str | None = None,
                  source: str, event_id: str | None = None, scope: str = SCOPE_ALL) -> bool:
        """Put an address on the block list for `scope` (a sending domain, or SCOPE_ALL); True
        if it was newly added, False if that entry was there already (then nothing changes)."""
        addr = normalize_block_address(address)
        scope = block_scope(scope)
        if source not in BLOCK_SOURCES:
            raise RuleError(f"block source must be one of {', '.join(BLOCK_SOURCES)}, got {source!r}")
        with transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO blocklist (address, scope, reason, dsn, source, event_id,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (addr, scope, reason, dsn, source, event_id, _now()),
            )
        return cur.rowcount == 1

    def block_remove(self, address: str, *, scope: str | None = None,
                     sources: tuple[str, ...] | None = None) -> int:
        """Take an address off the block list: every entry of it, or only the one of `scope`,
        and only entries of `sources` when given; returns how many entries went."""
        addr = normalize_block_address(address)
        sql, params = "DELETE FROM blocklist WHERE address = ?", [addr]
        if scope is not None:
            sql += " AND scope = ?"
            params.append(block_scope(scope))
        if sources is not None:
            sql += f" AND source IN ({', '.join('?' * len(sources))})"
            params += sources
        with transaction(self.conn):
            cur = self.conn.execute(sql, params)
        return cur.rowcount

    def block_get(self, address: str, scope: str = SCOPE_ALL) -> dict | None:
        addr = normalize_block_address(address)
        scope = block_scope(scope)
        return next((r for r in self.block_list(address=addr) if r["scope"] == scope), None)

    def block_list(self, *, address: str | None = None) -> list[dict]:
        """[{address, scope, reason, dsn, source, event_id, created}], oldest first."""
        keys = ("address", "scope", "reason", "dsn", "source", "event_id", "created")
        sql = f"SELECT {', '.join(keys)} FROM blocklist"
        params: tuple = ()
        if address is not None:
            sql += " WHERE address = ?"
            params = (address,)
        return [dict(zip(keys, row))
                for row in self.conn.execute(sql + " ORDER BY created, address, scope", params)]

    def is_blocked(self, address: str, sending_domain: str = "") -> bool:
        """Whether mail from `sending_domain` to `address` is refused (an entry for every
        sending domain, or for that one)."""
        try:
            addr = normalize_block_address(address)
        except RuleError:
            return False
        return self.conn.execute(_BLOCKED_SQL, (addr, sending_domain.lower())).fetchone() is not None

    # -- tracking settings --------------------------------------------------------------------

    def set_tracking(self, domain: str, **changes: bool) -> TrackingSettings:
        """Set features (`TRACKING_FEATURES`) of a sending domain's tracking; a domain without
        settings gets the defaults of `TrackingSettings` for those not given."""
        name = normalize_domain(domain)
        unknown = set(changes) - set(TRACKING_FEATURES)
        if unknown:
            raise RuleError(f"unknown tracking setting {', '.join(sorted(unknown))}")
        now = _now()
        with transaction(self.conn):
            row = self.conn.execute(_TRACKING_SELECT + " WHERE domain = ?", (name,)).fetchone()
            current = _row_to_tracking(row) if row else TrackingSettings(name, created=now)
            new = replace(current, **{k: bool(v) for k, v in changes.items()}, updated=now)
            self.conn.execute(
                "INSERT OR REPLACE INTO tracking (domain, " + ", ".join(TRACKING_FEATURES)
                + ", created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, *(int(getattr(new, f)) for f in TRACKING_FEATURES), new.created, now))
        return new

    def get_tracking(self, domain: str) -> TrackingSettings | None:
        row = self.conn.execute(_TRACKING_SELECT + " WHERE domain = ?",
                                (normalize_domain(domain),)).fetchone()
        return _row_to_tracking(row) if row else None

    def list_tracking(self) -> list[TrackingSettings]:
        return _read_tracking(self.conn)

    def remove_tracking(self, domain: str) -> str:
        name = normalize_domain(domain)
        with transaction(self.conn):
            if self.conn.execute("DELETE FROM tracking WHERE domain = ?", (name,)).rowcount == 0:
                raise Missing(f"sending domain {name} has no tracking settings")
        return name

    # -- snapshot -----------------------------------------------------------------------------

    def snapshot(self, regex_timeout: float = 0.05, recipient_delimiter: str = "+") -> Snapshot:
        return _load_snapshot(self.conn, regex_timeout, recipient_delimiter)


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

    def __init__(self, path: str, interval: float = 1.0, regex_timeout: float = 0.05,
                 recipient_delimiter: str = "+"):
        self.path = str(path)
        self.interval = interval
        self.regex_timeout = regex_timeout
        self.recipient_delimiter = recipient_delimiter
        self.reloads = 0  # successful loads after the first, for tests and stats
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # check() may also be called directly (tests, SIGHUP)
        self.current: Snapshot = empty_snapshot(regex_timeout, recipient_delimiter)
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
        snap = _load_snapshot(self._conn, self.regex_timeout, self.recipient_delimiter)
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


# The entry that refuses mail to an address from a sending domain: one for every domain first
_BLOCKED_SQL = ("SELECT source, reason FROM blocklist WHERE address = ? AND scope IN ('*', ?)"
                " ORDER BY scope = '*' DESC LIMIT 1")


def refusal_reason(source: str, sending_domain: str) -> str:
    """Why RCPT is refused for a block-list entry of `source` (the `blocked` event's reason)."""
    if source == "unsubscribe":
        return f"recipient unsubscribed from mail of {sending_domain}"
    if source == "complaint":
        return f"recipient reported mail of {sending_domain} as spam (complaint)"
    return "address is on the block list after a hard bounce"


def block_scope(scope: str) -> str:
    """A block-list scope as stored: SCOPE_ALL, or a sending domain in its A-label form."""
    scope = (scope or "").strip().lower().rstrip(".")
    if scope in (SCOPE_ALL, "all"):
        return SCOPE_ALL
    try:
        domain = domain_a_label(scope)
    except ValueError:
        domain = ""
    if not domain or not all(_LABEL.match(label) for label in domain.split(".")):
        raise RuleError(f"a block-list scope is a sending domain or {SCOPE_ALL} (all), got {scope!r}")
    return domain


class BlocklistReader:
    """`find(address, sending_domain)` for the milter's RCPT check: one indexed point query on a
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

    def find(self, address: str, sending_domain: str = "") -> tuple[str, str | None] | None:
        """(source, reason) of the entry that refuses mail from `sending_domain` (the envelope
        sender's) to `address`, or None."""
        addr = normalize_address(address or "")
        if not addr:
            return None
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            if not os.path.exists(self.path):
                return None
            try:
                conn = _connect_ro(self.path)
            except sqlite3.Error as exc:
                self._error(str(exc))
                return None
        try:
            row = conn.execute(_BLOCKED_SQL, (addr, (sending_domain or "").lower())).fetchone()
        except sqlite3.Error as exc:
            conn.close()  # a fresh connection next time (the file may have been replaced)
            self._error(str(exc))
            return None
        if self._last_error is not None:
            self._last_error = None
            log.info("the block list in %s is readable again", self.path)
        if self._closed:
            conn.close()
        else:
            self._pool.put(conn)
        return (row[0], row[1]) if row is not None else None

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
    `generation` counts reloads, so callers can tell when the set may have changed;
    `selected_headers`: the custom headers the enabled ones select, lower case (what the milter
    captures besides [milter] event_headers). Missing database or no endpoints table yet: no
    endpoints."""

    def __init__(self, path: str):
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._current: dict[int, Endpoint] = {}
        self._last_error: str | None = None
        self.generation = 0
        self.selected_headers: frozenset[str] = frozenset()

    def current(self) -> dict[int, Endpoint]:
        try:
            if self._conn is None:
                if not os.path.exists(self.path):
                    return self._current
                self._conn = _connect_ro(self.path)
                self._version = None
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                with transaction(self._conn, write=False):
                    has_table = self._conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'endpoints'"
                    ).fetchone()
                    found = _read_endpoints(self._conn) if has_table else []
                self._current = {ep.id: ep for ep in found}
                self.selected_headers = frozenset(name.lower() for ep in found if ep.enabled
                                                  for name in ep.custom_headers)
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


class SigningKeys:
    """The spooler's view of the signing keys: `active(kind, owner_id)` -> the signing.KeySet
    that signs a request now. The whole `signing_keys` table is cached and read again only when
    `PRAGMA data_version` moved (`refresh`, one cheap query), so a rotation or a new rule is
    seen by the next attempt.

    Thread-safe (the delivery workers share it): one read-only connection under a lock for
    `refresh`; the cache is replaced whole, so a lookup with `refresh=False` reads it without
    the lock or a query. The spooler refreshes once on its loop before it hands posts to the
    workers, and the workers look up with `refresh=False`: eight workers taking the lock and
    querying rules.db per post cost 5-7 % of their time (bench/end_to_end.py --profile).

    Missing database or a database without the table (schema < 3, not migrated yet): no keys
    (requests go unsigned, as before signing existed). A read error keeps the previous keys and
    is logged once; if nothing could ever be read, it raises (the caller defers the attempt
    rather than post unsigned)."""

    def __init__(self, path: str):
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._keys: dict[tuple[str, int], tuple[SigningKey, ...]] = {}
        self._loaded = False
        self._last_error: str | None = None

    def _read(self) -> None:
        if self._conn is None:
            if not os.path.exists(self.path):
                self._loaded = True
                return
            self._conn = _connect_ro(self.path)
            self._version = None
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        with transaction(self._conn, write=False):
            has_table = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'signing_keys'").fetchone()
            rows = self._conn.execute(_KEY_SELECT + " ORDER BY id").fetchall() if has_table else []
        found: dict[tuple[str, int], list[SigningKey]] = {}
        for row in rows:
            key = _key_from_row(row)
            found.setdefault((key.kind, key.owner_id), []).append(key)
        self._keys = {k: tuple(v) for k, v in found.items()}
        self._version = version
        self._loaded = True

    def refresh(self) -> None:
        """Read the keys again if rules.db changed since the last look. A read error is logged
        (once) and the previous keys kept; it raises only while nothing could ever be read."""
        with self._lock:
            try:
                self._read()
                if self._last_error is not None:
                    log.info("signing keys in %s are readable again", self.path)
                    self._last_error = None
            except sqlite3.Error as exc:
                if str(exc) != self._last_error:
                    self._last_error = str(exc)
                    log.error("cannot read signing keys from %s%s: %s", self.path,
                              ", keeping the previous ones" if self._loaded else "", exc)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                if not self._loaded:
                    raise

    def keys(self, kind: str, owner_id: int | None, *, refresh: bool = True) -> tuple[SigningKey, ...]:
        """Every stored key of the rule/endpoint (expired ones included), oldest first. With
        `refresh=False`, the keys as of the last `refresh` (read now if never read)."""
        if refresh or not self._loaded:
            self.refresh()
        if owner_id is None:
            return ()
        return self._keys.get((kind, owner_id), ())

    def active(self, kind: str, owner_id: int | None, now: float | None = None, *,
               refresh: bool = True) -> signing.KeySet:
        """What signs a request to this rule/endpoint now: every v1 secret and v1a key that
        has not expired (`signing.active_secrets`), oldest first. `refresh` as for `keys`."""
        keys = self.keys(kind, owner_id, refresh=refresh)
        t = time.time() if now is None else now
        secrets = signing.active_secrets([(k.secret, k.expires_epoch) for k in keys if k.scheme == "v1"], t)
        ed = signing.active_secrets([(k.secret, k.expires_epoch) for k in keys if k.scheme == "v1a"], t)
        return signing.KeySet(tuple(secrets), tuple(ed))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Templates:
    """The spooler's view of the stored templates: `get(kind, owner_id, version)` ->
    (content_type, source) or None. A stored version never changes, so each one found is kept
    for good and read once; thread-safe (one read-only connection under a lock). Missing
    database or a database without the table (schema < 6): None. A read error propagates (the
    caller defers the attempt rather than post another body)."""

    def __init__(self, path: str):
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._found: dict[tuple[str, int, int], tuple[str, str]] = {}

    def get(self, kind: str, owner_id: int | None, version: int | None) -> tuple[str, str] | None:
        if owner_id is None or version is None:
            return None
        key = (kind, owner_id, version)
        with self._lock:
            if key in self._found:
                return self._found[key]
            if self._conn is None:
                if not os.path.exists(self.path):
                    return None
                self._conn = _connect_ro(self.path)
            try:
                has_table = self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'templates'").fetchone()
                found = template(self._conn, kind, owner_id, version) if has_table else None
            except sqlite3.Error:
                self._conn.close()  # a fresh connection next time (the file may have been replaced)
                self._conn = None
                raise
            if found is not None:
                self._found[key] = tuple(found)
            return found

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
