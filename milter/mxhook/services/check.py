"""The health check: the config (every setting the daemons read), rules.db and state.db
(readable, known schema, integrity, permissions), the milter socket (mode, group, and a real
connection as Postfix's user when run as root), the spool directories, Postfix's
smtpd_milters (and that no DKIM signer comes before mxhook's milter: `check_dkim_order`),
non_smtpd_milters (`check_local_submission`), whether each daemon is alive (`check_daemons`),
Postfix is running (`check_postfix_running`) and the log follower has a log to read
(`check_log_source`). One result per check and per problem, each saying what to do. A check
that meets a file this user may not read says so and the others go on (`as_this_user`)."""
from __future__ import annotations

import grp
import http.client
import importlib
import json
import os
import pwd
import re
import shlex
import sqlite3
import stat
from urllib.parse import quote

from mxhook import config as configmod
from mxhook import heartbeat
from mxhook.model import keyring
from mxhook.model.rules import AUTHENTICATION_FIELDS
from mxhook.postfix import logsource
from mxhook.postfix import postconf as pc
from mxhook.services.errors import Unavailable
from mxhook.services.postfix import (
    EXTRA_PARAMETERS,
    Postfix,
    PostfixError,
    check_postfix_wiring,
    check_socket,
    milter_negotiate,
    postfix_unreadable,
    result,
    socket_path,
)
from mxhook.services.stores import exists
from mxhook.store import integrity

# Tables state.db's schema has: a file of the current version without them is not ours.
STATE_TABLES = ("messages", "deliveries", "attempts", "inbound_log")


def config_problems(cfg: configmod.Config) -> list[str]:
    """Every key through its type and check in the config schema, and pymilter for the milter."""
    problems = cfg.problems()
    try:
        importlib.import_module("Milter")
    except ImportError as exc:
        problems.append(f"mxhook-milter cannot start: {exc} (is python3-milter installed?)")
    return problems


def _gids(uid: int) -> set[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(pw.pw_name, pw.pw_gid))


def allows(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Do the permission bits give user `uid` (groups `gids`) the access `bits` (an rwx
    octal digit, e.g. 0o3 = write + search)? Root may do anything."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner(st: os.stat_result) -> str:
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{_user(st.st_uid)}:{group} {stat.S_IMODE(st.st_mode):04o}"


def check_database(check: str, label: str, path: str, uids: list[int], *, version: int,
                   tables: tuple[str, ...] = (), missing_hint: str, private: str,
                   missing_ok: bool = False, describe=None,
                   upgrade_hint: str = "`mxhook domain list` upgrades it") -> list[dict]:
    """Open read-only, schema version (or required tables), quick integrity check, and file
    permissions for the daemons' users `uids` (WAL: they must also write -wal/-shm and the
    directory)."""
    if not exists(path, label):
        return [result(check, missing_ok, f"{label} {path} does not exist{' yet' if missing_ok else ''}: "
                                           f"{missing_hint}")]
    open(path, "rb").close()  # PermissionError (as_this_user), not sqlite's "unable to open"
    problems: list[str] = []
    summary = ""
    extra = ""
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=5)
        try:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            quick = integrity.quick_check(conn) or ["ok"]
            if describe is not None and quick == ["ok"]:
                extra = describe(conn, found)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [result(check, False, f"{label} {path} cannot be read: {exc} (not an SQLite "
                                      "database, or damaged: restore it from a backup)")]
    if found > version:
        problems.append(f"{label} {path} has schema version {found}, newer than this mxhook "
                        f"understands ({version}): upgrade mxhook")
    elif found == 0 and not names:
        problems.append(f"{label} {path} is empty (schema version 0): {missing_hint}")
    elif found < version:
        problems.append(f"{label} {path} has schema version {found}, older than {version}: "
                        f"{upgrade_hint}")
    summary = f"schema {found}"
    lacking = [t for t in tables if t not in names] if found >= version else []
    if lacking:
        problems.append(f"{label} {path} lacks the tables {', '.join(lacking)}: {missing_hint}")
    if quick != ["ok"]:
        problems.append(f"{label} {path} fails SQLite's integrity check ({'; '.join(quick[:3])}): "
                        "stop the daemons and restore it from a backup")
    directory = os.path.dirname(os.path.abspath(path))
    for p, what, bits in ((path, "file", 0o6), (path + "-wal", "file", 0o6), (path + "-shm", "file", 0o6),
                          (directory, "directory", 0o3)):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        for uid in uids:
            if not allows(st, uid, _gids(uid), bits):
                user = _user(uid)
                problems.append(f"{label} {what} {p} ({_owner(st)}) is not writable by {user}, who "
                                f"runs the daemons: chown {user}:{_group_of(uid)} {p}")
        if p == path and stat.S_IMODE(st.st_mode) & 0o007:
            problems.append(f"{label} {p} ({_owner(st)}) is open to every user, but holds "
                            f"{private}: chmod o-rwx {p}")
    if problems:
        return [result(check, False, p) for p in problems]
    return [result(check, True, f"{label} {path}: {summary + ', ' if summary else ''}integrity ok, "
                                 f"writable by {_users(uids)}, not open to others{extra}")]


def _describe_rules(conn: sqlite3.Connection, version: int) -> str:
    """'; 1 permitted domain, 2 enabled rules' (what an admin wants to know first)."""
    if version < 1:
        return ""
    domains = conn.execute("SELECT count(*) FROM domains").fetchone()[0]
    rules = conn.execute("SELECT count(*) FROM rules WHERE enabled").fetchone()[0]
    text = (f"; {domains} permitted domain{'s' if domains != 1 else ''}, "
            f"{rules} enabled rule{'s' if rules != 1 else ''}")
    if not domains:
        text += " (inbound mail is refused until `mxhook domain add DOMAIN`)"
    return text


def check_authentication(cfg: configmod.Config) -> list[dict]:
    """Enabled rules with conditions on authentication verdicts while `[authentication] mode =
    off`: they never match (stored while the mode was on; `rule add` refuses them now)."""
    if cfg.value("authentication", "mode") != "off" or not os.path.exists(cfg.rules_db):
        return []
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(cfg.rules_db))}?mode=ro", uri=True, timeout=5)
        try:
            names = [n for (n,) in conn.execute(
                "SELECT DISTINCT r.name FROM rules r JOIN conditions c ON c.rule_id = r.id"
                f" WHERE r.enabled AND lower(c.header) IN ({','.join('?' * len(AUTHENTICATION_FIELDS))})"
                " ORDER BY r.name", sorted(AUTHENTICATION_FIELDS))]
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # the rules_db check reports an unreadable database
    if not names:
        return []
    return [result("authentication", False, f"rule{'s' if len(names) > 1 else ''} {', '.join(names)} "
                   "test authentication verdicts (spf, dkim, dmarc, dmarc_policy, arc) but "
                   "[authentication] mode = off: they never match; set the mode to verify or "
                   "upstream, or change the rules")]


def _group_of(uid: int) -> str:
    try:
        return grp.getgrgid(pwd.getpwuid(uid).pw_gid).gr_name
    except KeyError:
        return str(uid)


def check_spool(spool_dir: str, uids: list[int]) -> list[dict]:
    """tmp/, new/, bad/ exist, are writable by the daemons' users, and private."""
    from mxhook import spool

    try:
        st = os.stat(spool_dir)
    except FileNotFoundError:
        return [result("spool", False, f"spool directory {spool_dir} does not exist: start "
                                        "mxhook-milter or mxhook-spooler (they create it)")]
    if not stat.S_ISDIR(st.st_mode):
        return [result("spool", False, f"spool directory {spool_dir} is not a directory")]
    problems: list[str] = []
    for sub in (spool_dir, *(os.path.join(spool_dir, s) for s in spool.SUBDIRS)):
        try:
            sst = os.stat(sub)
        except FileNotFoundError:
            problems.append(f"spool directory {sub} does not exist: restart mxhook-milter (it "
                            "creates tmp/, new/, bad/)")
            continue
        # The top directory needs search permission; files are made and renamed in the others.
        bits, need = (0o1, "entered") if sub == spool_dir else (0o3, "written")
        for uid in uids:
            if not allows(sst, uid, _gids(uid), bits):
                user = _user(uid)
                problems.append(
                    f"spool directory {sub} ({_owner(sst)}) cannot be {need} by {user}, who runs "
                    f"the daemons: chown {user}:{_group_of(uid)} {sub} && chmod 0750 {sub}")
        if stat.S_IMODE(sst.st_mode) & 0o006:
            problems.append(f"spool directory {sub} ({_owner(sst)}) is open to every user, but "
                            f"spooled mail is private: chmod o-rwx {sub}")
    if problems:
        return [result("spool", False, p) for p in problems]
    counts = {}
    for sub in ("new", "bad"):
        try:
            with os.scandir(os.path.join(spool_dir, sub)) as it:
                counts[sub] = sum(1 for _ in it)
        except OSError:
            counts[sub] = "?"
    return [result("spool", True, f"spool {spool_dir}: {', '.join(spool.SUBDIRS)} writable by "
                                   f"{_users(uids)}, not open to others ({counts['new']} waiting "
                                   f"in new/, {counts['bad']} in bad/)")]


def _users(uids: list[int]) -> str:
    return " and ".join(_user(u) for u in uids)


def daemon_uids(socket_spec: str, spool_dir: str) -> list[int]:
    """Who runs the daemons: the owner of the spool directory and the owner of the socket
    (the milter created it); normally one user (mxhook)."""
    uids: list[int] = []
    for p in (spool_dir, socket_path(socket_spec)):
        if p:
            try:
                uid = os.stat(p).st_uid
            except OSError:
                continue
            if uid not in uids:
                uids.append(uid)
    return uids or [os.geteuid()]


UNREADABLE = "cannot be read by this user (run as root or as a member of group mxhook)"


def as_this_user(check: str, fn, *args, **kwargs) -> list[dict]:
    """The results of one check, or the line saying it met a file this user may not read (a
    non-root `mxhook check` goes on with the others)."""
    try:
        return fn(*args, **kwargs)
    except PermissionError as exc:
        return [result(check, False, f"{exc.filename or 'a file it needs'} {UNREADABLE}",
                       "permission_denied")]
    except Unavailable as exc:  # stores.exists: a directory on the way is not searchable
        return [result(check, False, str(exc), exc.code)]


def check_fault(state_db: str) -> list[dict]:
    """mxhook-spooler's fault file (it stopped on a damaged state.db)."""
    fault_file = integrity.fault_path(state_db)
    try:
        if not exists(fault_file, "state database fault file"):
            return []
    except Unavailable:  # its directory: the state_db line says so
        return []
    open(fault_file, "rb").close()  # PermissionError, not a fault line saying "cannot read"
    fault = integrity.read_fault(state_db)
    if not fault:
        return []
    return [result("state_db", False, f"mxhook-spooler stopped: state database {state_db} is "
                                      f"damaged ({fault}); spooled mail waits in new/: restore "
                                      "state.db from a backup, then restart mxhook-spooler")]


def run_checks(config_path: str | None, postfix_dir: str | None) -> list[dict]:
    """Every check, in order: [{check, ok, message, code (on some problems)}]. The config is
    loaded here (from `config_path`, else $MXHOOK_CONFIG or the default), as a broken one is
    itself a result."""
    path = configmod.config_path(config_path)
    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as exc:
        return [result("config", False, f"{exc}; the other checks need the config")]
    results: list[dict] = []
    problems = config_problems(cfg)
    if problems:
        results += [result("config", False, p) for p in problems]
    else:
        source = cfg.source or f"built-in defaults ({path} does not exist)"
        results.append(result("config", True, f"{source}: every setting the daemons read is valid"))

    socket_spec = cfg.get("milter", "socket")
    uids = daemon_uids(socket_spec, cfg.spool_dir)
    from mxhook.store import rulesdb as dbmod

    results += as_this_user(
        "rules_db", check_database, "rules_db", "rules database", cfg.rules_db, uids, version=dbmod.SCHEMA_VERSION,
        missing_hint="no domain is permitted, so inbound mail is refused; `mxhook domain add "
                     "DOMAIN` creates it", private="endpoint secrets", missing_ok=True,
        describe=_describe_rules)
    results += as_this_user("authentication", check_authentication, cfg)
    from mxhook.store import statedb

    results += as_this_user(
        "state_db", check_database, "state_db", "state database", cfg.state_db, uids, version=statedb.SCHEMA_VERSION,
        tables=STATE_TABLES, missing_hint="start mxhook-spooler (it creates it)",
        private="mail and delivery logs", upgrade_hint="restarting mxhook-spooler upgrades it")
    results += as_this_user("state_db", check_fault, cfg.state_db)
    results += as_this_user("spool", check_spool, cfg.spool_dir, uids)
    results += as_this_user("daemons", check_daemons, cfg)

    postfix = Postfix(postfix_dir)
    try:
        values = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
    except PostfixError as exc:  # not installed, not configured: the one thing to fix first
        results += check_socket(socket_spec, "postfix")
        results.append(result("postfix", False, postfix_unreadable(exc), exc.code))
        return results
    results += check_postfix_running(postfix)
    results += as_this_user("logfollow_source", check_log_source, cfg, postfix)
    results += check_socket(socket_spec, values.get("mail_owner") or "postfix")
    try:
        results += check_postfix_wiring(postfix, values, socket_spec)
    except PostfixError as exc:
        results.append(result("postfix", False, f"cannot read Postfix's master.cf: {exc}", exc.code))
    try:
        results += check_local_submission(postfix, values, socket_spec)
        results += check_dkim_order(cfg, postfix, values)
    except PostfixError as exc:
        results.append(result("dkim_order", False, f"cannot read Postfix's milter lists: {exc}", exc.code))
    return results


def check_postfix_running(postfix: Postfix) -> list[dict]:
    """`postfix status`: a stopped Postfix receives no mail at all, whatever mxhook does."""
    if postfix.running():
        return [result("postfix_running", True, f"Postfix is running (`{postfix.command('status')}`)")]
    return [result("postfix_running", False, f"Postfix is not running (`{postfix.command('status')}` "
                                             "says so): no mail comes in or goes out; `systemctl "
                                             "start postfix` (its log says why it stopped)",
                   "postfix_stopped")]


def check_log_source(cfg: configmod.Config, postfix: Postfix) -> list[dict]:
    """What mxhook-logfollow reads ([logfollow] source, `auto` resolved as the daemon does):
    a log file that does not exist gives no delivery events, without an error anywhere."""
    state_file = cfg.get("logfollow", "state_file")
    state = logsource.load_state(state_file) if exists(state_file, "log follower's position file") else None

    def maillog_file() -> str:
        try:
            return logsource.own_log_file(postfix.get("maillog_file"))
        except PostfixError:
            return ""

    chosen = logsource.choose_source(cfg.get("logfollow", "source"), cfg.get("logfollow", "path"),
                                     state, maillog_file=maillog_file)
    if chosen.missing:
        return [result("logfollow_source", False, f"mxhook-logfollow reads {logsource.describe(chosen)}",
                       "log_source_missing")]
    return [result("logfollow_source", True, f"mxhook-logfollow reads {logsource.describe(chosen)}")]


def check_local_submission(postfix: Postfix, values: dict[str, str], socket_spec: str) -> list[dict]:
    """non_smtpd_milters as cleanup reads it (`postconf -x`: `$smtpd_milters` expanded, the
    common opendkim recipe). Naming mxhook there makes mail given to sendmail(1) outbound mail
    (queued events); its milter never refuses a recipient there (Postfix would defer the whole
    message as a configuration error), so this is a note either way, and a problem only when
    the entry would accept mail unspooled while mxhook is down."""
    queue_dir = values.get("queue_directory", "/var/spool/postfix")
    milters = postfix.expanded("non_smtpd_milters")
    entry = pc.find_entry(milters, socket_spec, queue_dir)
    if entry is None:
        return [result("local_submission", True, "non_smtpd_milters does not name mxhook: mail "
                                                 "given to sendmail(1) (PHP mail(), cron) makes no "
                                                 "queued events (postfix/README.md: local submissions)")]
    via = "" if "$" not in values.get("non_smtpd_milters", "") else f" (through {values['non_smtpd_milters']})"
    action = pc.entry_options(entry).get("default_action", values.get("milter_default_action", "tempfail"))
    if action != "tempfail":
        return [result("local_submission", False, f"non_smtpd_milters{via} names mxhook's milter with "
                                                  f"default_action {action}: while mxhook is down, "
                                                  "locally submitted mail goes out without its queued "
                                                  "events; set default_action=tempfail (it then waits "
                                                  "in Postfix's maildrop)", "postfix_not_wired")]
    return [result("local_submission", True, f"non_smtpd_milters{via} names mxhook's milter: mail "
                                             "given to sendmail(1) is outbound (queued events; "
                                             "block-listed recipients are removed, never refused)")]


# ---------------------------------------------------------------------------------------------
# Milter order: tracking changes the body, so a DKIM signature must be made after it

# Where DKIM signers say which socket they listen on (`Socket inet:8891@localhost`,
# `bind_socket = "localhost:11332";`); replaced in tests.
SIGNER_CONFIGS = (
    ("opendkim", "/etc/opendkim.conf", r"^\s*Socket\s+(\S+)"),
    ("dkimpy-milter", "/etc/dkimpy-milter/dkimpy-milter.conf", r"^\s*Socket\s+(\S+)"),
    ("rspamd", "/etc/rspamd/local.d/worker-proxy.inc", r'^\s*bind_socket\s*=\s*"([^"\s]+)'),
    ("rspamd", "/etc/rspamd/override.d/worker-proxy.inc", r'^\s*bind_socket\s*=\s*"([^"\s]+)'),
)
# Names and the ports their documentation gives, for signers whose configuration is elsewhere.
SIGNER_NAME = re.compile(r"opendkim|dkimpy|dkim|rspamd", re.IGNORECASE)
SIGNER_PORTS = {"8891": "opendkim", "11332": "rspamd"}
MILTER_LISTS = ("smtpd_milters", "non_smtpd_milters")


def _endpoint(spec: str, queue_dir: str) -> tuple[str, str] | None:
    """("inet", port) or ("unix", absolute path) of a milter socket as Postfix names it
    (inet:host:port, unix:path relative to queue_directory) or a signer's configuration does
    (inet:port@host, local:/path, host:port, /path)."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec.startswith("/"):
        return "unix", os.path.normpath(spec)
    if kind in ("unix", "local") and sep:
        path = rest if rest.startswith("/") else os.path.join(queue_dir, rest)
        return "unix", os.path.normpath(path)
    if kind in ("inet", "inet6") and sep:
        port = rest.partition("@")[0] if "@" in rest else rest.rpartition(":")[2]
        return ("inet", port) if port.isdigit() else None
    port = spec.rpartition(":")[2]  # rspamd's host:port
    return ("inet", port) if sep and port.isdigit() else None


def configured_signers(queue_dir: str) -> dict[tuple[str, str], str]:
    """The sockets DKIM signers installed here listen on -> their names."""
    found = {}
    for name, path, pattern in SIGNER_CONFIGS:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for m in re.finditer(pattern, text, re.MULTILINE):
            endpoint = _endpoint(m.group(1), queue_dir)
            if endpoint is not None:
                found[endpoint] = name
                if endpoint[0] == "unix":  # as chrooted smtpd names it: under queue_directory
                    found["unix", os.path.normpath(queue_dir + endpoint[1])] = name
    return found


def dkim_signer(entry: str, queue_dir: str, known: dict[tuple[str, str], str]) -> str | None:
    """The DKIM signer a milter list entry looks like (by socket, name or port), or None."""
    socket = pc.entry_socket(entry)
    endpoint = _endpoint(socket, queue_dir)
    if endpoint in known:
        return known[endpoint]
    m = SIGNER_NAME.search(socket)
    if m:
        return m.group(0).lower()
    return SIGNER_PORTS.get(endpoint[1]) if endpoint and endpoint[0] == "inet" else None


def signers_before_mxhook(milters: str, socket_spec: str, queue_dir: str,
                          known: dict[tuple[str, str], str]) -> tuple[list[str], str] | None:
    """(the signers listed before mxhook's milter, the list with mxhook moved in front of the
    first of them), or None when there are none (or mxhook is not in the list)."""
    entries = pc.split_milters(milters)
    ours = pc.postfix_socket(socket_spec, queue_dir)
    index = next((i for i, e in enumerate(entries) if pc.same_socket(pc.entry_socket(e), ours, queue_dir)), None)
    if index is None:
        return None
    before = [(i, dkim_signer(e, queue_dir, known)) for i, e in enumerate(entries[:index])]
    before = [(i, name) for i, name in before if name]
    if not before:
        return None
    first = before[0][0]
    fixed = entries[:first] + [entries[index]] + entries[first:index] + entries[index + 1:]
    return [f"{name} ({pc.entry_socket(entries[i])})" for i, name in before], ", ".join(fixed)


def _expand(postfix: Postfix, value: str, depth: int = 0) -> str:
    """A milter list with its $parameter references replaced by their values (as smtpd reads it)."""
    if depth > 5 or "$" not in value:
        return value
    return _expand(postfix, re.sub(r"\$\{?(\w+)\}?", lambda m: postfix.get(m.group(1)), value), depth + 1)


def check_dkim_order(cfg: configmod.Config, postfix: Postfix, values: dict[str, str]) -> list[dict]:
    """A DKIM signer listed before mxhook's milter signs the body before tracking changes it,
    so receivers see a broken signature: a problem while [tracking] public_url is set, a note
    otherwise. Looks at smtpd_milters and non_smtpd_milters of main.cf and master.cf -o."""
    socket_spec = cfg.get("milter", "socket")
    queue_dir = values.get("queue_directory", "/var/spool/postfix")
    known = configured_signers(queue_dir)
    lists = [(f"main.cf {name}", _expand(postfix, postfix.get(name))) for name in MILTER_LISTS]
    for svc, params in sorted(postfix.master_overrides().items()):
        lists += [(f"master.cf {svc} -o {name}", _expand(postfix, params[name]))
                  for name in MILTER_LISTS if name in params]
    tracking = bool(cfg.value("tracking", "public_url"))
    found = []
    for where, milters in lists:
        wrong = signers_before_mxhook(milters, socket_spec, queue_dir, known)
        if wrong is None:
            continue
        signers, fixed = wrong
        name = where.rpartition(" ")[2]
        fix = (f"`postconf -e {shlex.quote(f'{name} = {fixed}')}`" if where.startswith("main.cf")
               else f"in master.cf: -o {{ {name} = {fixed} }}")
        found.append(result(
            "dkim_order", not tracking,
            f"{where}: the DKIM signer {', '.join(signers)} comes before mxhook's milter, so it "
            f"signs the body before tracking rewrites it and receivers see a broken signature"
            f"{'' if tracking else ' (harmless while [tracking] public_url is empty)'}: put "
            f"mxhook's milter first: {fix}, then `postfix reload`",
            None if not tracking else "dkim_before_mxhook"))
    return found


# ---------------------------------------------------------------------------------------------
# Are the daemons alive? (the outside world: `probe_milter`, `probe_web` and `probe_track`,
# replaced in tests)

def probe_milter(path: str) -> str | None:
    """A milter option negotiation on the socket as this user; None when a milter answered."""
    return milter_negotiate(path, 3.0)


def _get(listen: str, path: str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of `GET path` from a daemon at `listen` (a wildcard address is asked on
    loopback); OSError when it cannot be asked."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read(4096)
    finally:
        conn.close()


def probe_web(listen: str, timeout: float = 3.0) -> str | None:
    """GET /v1 without a token from mxhook-web at `listen`: None when it answers as mxhook-web
    does (401 with its JSON error), else why not."""
    try:
        status, body = _get(listen, "/v1", timeout)
    except OSError as exc:
        return f"http://{listen}/: {exc.strerror or exc}"
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if status == 401 and code == "unauthorized":
        return None
    return f"http://{listen}/v1 answered {status}, not as mxhook-web does"


def probe_track(listen: str, timeout: float = 3.0) -> str | None:
    """GET /healthz from mxhook-track at `listen`: None when it answers `200 ok`, else why not."""
    try:
        status, body = _get(listen, "/healthz", timeout)
    except OSError as exc:
        return f"http://{listen}/healthz: {exc.strerror or exc}"
    if status == 200 and body.strip() == b"ok":
        return None
    return f"http://{listen}/healthz answered {status}, not as mxhook-track does"


def _heartbeat_result(check: str, daemon: str, path: str, *, expected: bool,
                      not_expected: str, now: float | None) -> dict:
    beat = heartbeat.read(path, now)
    state, age = beat["state"], beat["age"]
    if state == "alive":
        return result(check, True, f"{daemon} is running (pid {beat['pid']}; its loop wrote "
                                   f"{path} {age:.0f} s ago)")
    if state == "missing" and not expected:
        return result(check, True, f"{daemon} is not running here ({not_expected})")
    if state == "missing":
        why = f"{path} does not exist: it is not running (or stopped)"
    elif state == "dead":
        why = f"process {beat['pid']} of {path} is gone: it died without stopping cleanly"
    elif state == "stale":
        why = (f"its loop last wrote {path} {age:.0f} s ago (more than "
               f"{heartbeat.STALE_AFTER:.0f} s): it hangs")
    elif "Permission denied" in (beat["error"] or ""):
        return result(check, False, f"{daemon}: its heartbeat {path} {UNREADABLE}", "permission_denied")
    else:
        why = f"{path} cannot be read: {beat['error']}"
    return _down(check, daemon, why)


def _down(check: str, daemon: str, why: str) -> dict:
    return result(check, False, f"{daemon} is DOWN: {why}; `systemctl status {daemon}` and its "
                                f"log say why, `systemctl restart {daemon}` starts it", "daemon_down")


def check_daemons(cfg: configmod.Config, now: float | None = None) -> list[dict]:
    """One result per daemon: mxhook-milter (its socket answers a milter negotiation),
    mxhook-spooler and mxhook-logfollow (their heartbeat files are fresh: module heartbeat),
    mxhook-web (answers on [web] listen), mxhook-track (answers /healthz on [tracking] listen).
    The log follower is expected once its position file exists, mxhook-web once access.db does
    (tokens or users were made), mxhook-track once [tracking] public_url is set (with its key
    file and URL checked too: `check_track`); the milter and the spooler always."""
    results = []
    path = socket_path(cfg.get("milter", "socket"))
    if path is None:
        results.append(result("milter", True, "mxhook-milter listens on an inet: socket: not "
                                                "probed (see the socket check)"))
    else:
        why = probe_milter(path)
        if why is not None and ("EACCES" in why or "EPERM" in why):
            results.append(result("milter", True, f"mxhook-milter: cannot tell as this user ({why}); "
                                                    "run `mxhook check` as root"))
        else:
            results.append(_probed("milter", "mxhook-milter", why, f"it answers a milter "
                                   f"negotiation on {path}", f"{path}: {why}"))
    results.append(_heartbeat_result(
        "spooler", "mxhook-spooler", heartbeat.path_for(cfg.state_db, heartbeat.SPOOLER),
        expected=True, not_expected="", now=now))
    state_file = cfg.get("logfollow", "state_file")
    results.append(_heartbeat_result(
        "logfollow", "mxhook-logfollow", heartbeat.path_for(state_file, heartbeat.LOGFOLLOW),
        expected=os.path.exists(state_file), now=now,
        not_expected=f"it never ran: no position file {state_file}; delivery events need it"))
    listen, access_db = cfg.get("web", "listen"), cfg.get("web", "access_db")
    try:
        web_set_up = exists(access_db, "access database")
    except Unavailable as exc:
        return [*results, result("web", False, str(exc), exc.code)]
    if not web_set_up:
        results.append(result("web", True, f"mxhook-web is not set up ({access_db} does not exist: "
                                             "`mxhook token add NAME` makes a token for the API)"))
    else:
        why = probe_web(listen)
        results.append(_probed("web", "mxhook-web", why, f"it answers on http://{listen}/", why))
    results += check_track(cfg)
    return results


def check_track(cfg: configmod.Config) -> list[dict]:
    """mxhook-track while tracking is configured ([tracking] public_url set): it answers, the
    key file holds a key (else the milter tracks nothing and every link answers 404), and the
    URL recipients are given is https."""
    public_url, listen = cfg.get("tracking", "public_url"), cfg.get("tracking", "listen")
    if not public_url:
        return [result("track", True, "mxhook-track is not set up ([tracking] public_url is empty: "
                                      "no tracking)")]
    why = probe_track(listen)
    results = [_probed("track", "mxhook-track", why, f"it answers on http://{listen}/healthz", why)]
    key_file = cfg.get("tracking", "key_file")
    problem = None
    try:
        with open(key_file, encoding="utf-8") as fh:
            if not keyring.parse_keys(fh.read()):
                problem = f"{key_file} holds no key"
    except FileNotFoundError:
        problem = f"{key_file} does not exist"
    except PermissionError:
        results.append(result("track", True, f"tracking key file {key_file}: cannot tell as this "
                                             "user; run `mxhook check` as root"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        problem = f"{key_file} cannot be used ({exc})"
    if problem:
        results.append(result("track", False, f"tracking key: {problem}, so the milter tracks no "
                                               "mail (its queued events say why) and mxhook-track "
                                               "answers every link 404; `mxhook tracking rotate-key` "
                                               "makes one", "tracking_key_missing"))
    if not public_url.lower().startswith("https://"):
        results.append(result("track", False, f"[tracking] public_url {public_url} is not https: "
                                               "recipients' pixels, clicks and unsubscribes go in "
                                               "clear, and mail clients flag such links; put "
                                               "mxhook-track behind TLS (docs/tracking-endpoint.md)",
                                               "tracking_not_https"))
    return results


def _probed(check: str, daemon: str, why: str | None, running: str, down: str) -> dict:
    """The line of a daemon that was asked: `why` None when it answered."""
    if why is None:
        return result(check, True, f"{daemon} is running ({running})")
    return _down(check, daemon, down)
