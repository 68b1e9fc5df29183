"""`mxhook postfix-config` and `mxhook check`: wiring Postfix to the milter, and a health check.

Both are plain click commands that cli.py registers into the `mxhook` group
(`cli.add_command(...)`); like the group's other commands they find the config through the
context object the group sets (`ctx.obj`: `.config_path`, and `.cfg`, loaded on first use).

- `postfix-config` reads main.cf through `postconf [-c DIR] -h NAME`, plans with the pure
  functions of postfixconf.py and prints the postconf commands; with `--apply` it shows the
  diff, asks (unless `--yes`), keeps a timestamped copy of main.cf, runs the commands and checks
  that Postfix can reach the socket (file system, then a real connection as Postfix's
  mail_owner when run as root). It never reloads Postfix unless `--reload` is given.
- `check` validates the config (every typed getter the daemons use), both databases, the
  socket, the spool directories and Postfix's milter settings; one line per problem, saying
  what to do; exit status 1 when there is any.

Every external program goes through `run_command` and the connection test through
`probe_socket`, so tests replace them (tests/unit/test_admin.py).
"""
from __future__ import annotations

import datetime as dt
import errno
import grp
import importlib
import json
import os
import pwd
import shlex
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
from urllib.parse import quote

import click

from mxhook import config as configmod
from mxhook.postfix import postconf as pc
from mxhook.store import integrity

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Parameters read besides pc.parameters() (what `desired` needs).
EXTRA_PARAMETERS = ("config_directory", "mail_owner", "milter_default_action")
# Tables the spooler creates in state.db (state.py has no schema version of its own).
STATE_TABLES = ("messages", "deliveries", "attempts", "inbound_log")


class InputError(click.UsageError):
    """Exit status 2 with one line on stderr (no usage text), as in cli.py."""

    def show(self, file=None) -> None:
        self.ctx = None
        super().show(file)


class PostfixError(Exception):
    """postconf/postfix missing or failing; the message says which command and why, `code`
    (as in `mxhook check --json`) what kind of failure it is."""

    code = "postfix_unreadable"


class PostfixNotReady(PostfixError):
    """No Postfix to work with: not installed (`postfix_not_installed`), or installed without a
    main.cf, as Debian leaves it after "No configuration" (`postfix_not_configured`). The
    message says what to do; both commands show it as it is."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# The outside world (replaced in tests)

def run_command(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _milter_negotiate(path: str, timeout: float) -> str | None:
    """Connect to the milter socket and do what smtpd does first (SMFIC_OPTNEG, protocol 6);
    None when a milter answered, else why not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as exc:
            if exc.errno:
                return f"connect: {os.strerror(exc.errno)} [{errno.errorcode.get(exc.errno, exc.errno)}]"
            return f"connect: {exc}"
        body = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
        s.sendall(struct.pack(">I", len(body)) + body)
        data = b""
        while len(data) < 5:
            chunk = s.recv(5 - len(data))
            if not chunk:
                return "the socket accepted the connection but closed it without a milter reply"
            data += chunk
        if data[4:5] != b"O":
            return f"the socket answered {data[4:5]!r}, not a milter option negotiation"
        try:
            s.sendall(struct.pack(">I", 1) + b"Q")
        except OSError:
            pass
        return None
    except socket.timeout:
        return f"no milter answer within {timeout:g} s"
    except OSError as exc:
        return str(exc)
    finally:
        s.close()


def probe_socket(path: str, user: str, timeout: float = 5.0) -> str | None:
    """Connect to the milter socket as `user` the way Postfix's smtpd does: uid and primary
    group of the user only (Postfix's set_ugid() drops supplementary groups), then negotiate.
    Needs root. None when it worked, else the reason."""
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, try, report through the pipe, _exit
        status = 0
        try:
            os.close(r)
            os.setgroups([pw.pw_gid])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            message = _milter_negotiate(path, timeout) or ""
        except BaseException as exc:  # noqa: BLE001 - the child must always _exit
            message = f"probe failed: {exc}"
        try:
            os.write(w, message.encode("utf-8", "replace")[:4000])
        except BaseException:  # noqa: BLE001
            status = 1
        os._exit(status)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    message = b"".join(chunks).decode("utf-8", "replace")
    return message or None


class Postfix:
    """One Postfix instance, seen through postconf (`config_dir` None: the default one)."""

    def __init__(self, config_dir: str | None = None):
        self.config_dir = config_dir

    @property
    def c(self) -> list[str]:
        return ["-c", self.config_dir] if self.config_dir else []

    def _run(self, argv: list[str]) -> str:
        try:
            proc = run_command(argv)
        except FileNotFoundError:
            raise PostfixNotReady(
                "postfix_not_installed",
                f"Postfix is not installed ({argv[0]} not found): install it (`apt install "
                "postfix`, choosing \"Internet Site\"), then run `mxhook postfix-config`") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{shlex.join(argv)} did not finish") from None
        if proc.returncode != 0:
            self._raise_if_unconfigured()
            why = " ".join((proc.stderr or proc.stdout or "").split()) or f"exit status {proc.returncode}"
            raise PostfixError(f"{shlex.join(self.shown(argv))} failed: {why}")
        return proc.stdout or ""

    def _raise_if_unconfigured(self) -> None:
        """After a failed command: PostfixNotReady when the instance has no main.cf (postconf
        then fails on every parameter, and its own message does not say what to do)."""
        config_dir = self.config_dir
        if config_dir is None:
            try:  # the compiled-in default (or $MAIL_CONFIG): -d reads no main.cf
                proc = run_command([POSTCONF, "-d", "-h", "config_directory"])
            except (OSError, subprocess.SubprocessError):
                return
            config_dir = (proc.stdout or "").strip() if proc.returncode == 0 else ""
            if not config_dir:
                return
        main_cf = os.path.join(config_dir, "main.cf")
        if os.path.lexists(main_cf) or not os.path.isdir(config_dir):
            return
        if self.config_dir is None:
            raise PostfixNotReady(
                "postfix_not_configured",
                f"Postfix is installed but not configured (no {main_cf}): run `dpkg-reconfigure "
                "postfix` first (\"Internet Site\"), then `mxhook postfix-config`")
        raise PostfixNotReady(
            "postfix_not_configured",
            f"{config_dir} has no main.cf: --postfix-dir must name the configuration directory "
            "of a configured Postfix instance")

    @staticmethod
    def shown(argv: list[str]) -> list[str]:
        """argv as an admin would type it (program names without their directory)."""
        return [os.path.basename(argv[0]), *argv[1:]]

    def postconf(self, *args: str) -> str:
        return self._run([POSTCONF, *self.c, *args])

    def get(self, name: str) -> str:
        return self.postconf("-h", name).rstrip("\n")

    def values(self, names) -> dict[str, str]:
        return {name: self.get(name) for name in names}

    def master_fields(self) -> dict[str, dict[str, str]]:
        return pc.parse_master(self.postconf("-F"))

    def master_overrides(self) -> dict[str, dict[str, str]]:
        return pc.parse_master(self.postconf("-P"))

    def run_postconf(self, cmd: list[str]) -> None:
        """A command of pc.postconf_commands (which start with a bare `postconf`)."""
        self._run([POSTCONF, *cmd[1:]])

    def reload(self) -> str:
        return self._run([POSTFIX, *self.c, "reload"])

    def command(self, *args: str) -> str:
        """`postfix [-c DIR] ARGS` as text for messages."""
        return shlex.join(["postfix", *self.c, *args])


# ---------------------------------------------------------------------------------------------
# Context and output

def _config_path(ctx: click.Context) -> str | None:
    return getattr(ctx.obj, "config_path", None)


def _load_config(ctx: click.Context) -> configmod.Config:
    """The group's config (ctx.obj.cfg, as cli.App loads it), or the file given by
    $MXHOOK_CONFIG / the default when the command runs outside the group."""
    obj = ctx.obj
    if obj is not None and hasattr(obj, "cfg"):
        return obj.cfg
    return configmod.load(_config_path(ctx))


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _shown_value(value: str) -> str:
    return value if value != "" else "(empty)"


def _result(check: str, ok: bool, message: str, code: str | None = None) -> dict:
    """One line of `check`; `code` names the kind of problem where a script may need to tell
    them apart (see docs/cli.md), and is left out otherwise."""
    result = {"check": check, "ok": ok, "message": message}
    if code is not None:
        result["code"] = code
    return result


def postfix_unreadable(exc: PostfixError) -> str:
    """What both commands say when Postfix's configuration cannot be read."""
    if isinstance(exc, PostfixNotReady):
        return str(exc)
    return f"cannot read Postfix's configuration: {exc}"


def _socket_path(spec: str) -> str | None:
    if spec.startswith(("unix:", "local:")):
        return spec.split(":", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------
# Checks shared by both commands

def check_socket(socket_spec: str, mail_owner: str) -> list[dict]:
    """Can Postfix's smtpd (user mail_owner, its primary group) reach the milter socket?"""
    try:
        pw = pwd.getpwnam(mail_owner)
    except KeyError:
        return [_result("socket", False, f"Postfix's mail_owner {mail_owner!r} is not a user on this "
                                        "system: is Postfix installed?")]
    path = _socket_path(socket_spec)
    if path is not None and not os.path.isabs(path):
        return [_result("socket", False, f"[milter] socket {socket_spec} is not an absolute path: "
                                        "give unix:/var/spool/postfix/mxhook/milter.sock or another absolute path")]
    problems = pc.socket_problems(socket_spec, pw.pw_gid)
    group = grp.getgrgid(pw.pw_gid).gr_name
    problems = [p.replace("the postfix group", f"group {group}") for p in problems]
    if problems:
        hint = (f"; the socket's directory must be setgid group {group} (the package makes "
                "/var/spool/postfix/mxhook mxhook:postfix 2750; `dpkg-reconfigure mxhook` restores "
                "it) or [milter] socket_group must name it; then restart mxhook-milter")
        return [_result("socket", False, p + (hint if "mode" in p or "group" in p else ""))
                for p in problems]
    if os.geteuid() != 0:
        return [_result("socket", True, f"milter socket {path}: 0660, group {group} (not root: a "
                                        f"connection as {mail_owner} was not tried)")]
    why = probe_socket(path, mail_owner)
    if why is None:
        return [_result("socket", True, f"milter socket {path}: user {mail_owner} connects and "
                                        "the milter answers")]
    if "ECONNREFUSED" in why:
        why += ": nothing listens there (stale socket); is mxhook-milter running?"
    elif "EACCES" in why:
        why += (f": user {mail_owner} (group {group} only, as smtpd runs) must be able to "
                f"traverse every directory above {path}")
    return [_result("socket", False, f"user {mail_owner} cannot use the milter socket {path}: {why}")]


def check_postfix_wiring(postfix: Postfix, values: dict[str, str], socket_spec: str) -> list[dict]:
    """Does Postfix (main.cf, master.cf -o) hand mail to this milter, safely?"""
    queue_dir = values.get("queue_directory", "/var/spool/postfix")
    fields = postfix.master_fields()
    overrides = postfix.master_overrides()
    problems, notes = pc.milter_wiring(
        values.get("smtpd_milters", ""), overrides, socket_spec, queue_dir,
        values.get("milter_default_action", "tempfail"), pc.chrooted_smtpd(fields),
    )
    missing = [name for name, _old, _new in pc.changes(values, pc.desired(values, socket_spec))
               if name != "smtpd_milters"]
    problems += [p for p in pc.route_problems(values.get("transport_maps", ""), fields)
                 if p.startswith("master.cf")]  # transport_maps: in `missing`
    if missing:
        problems.append(
            f"main.cf lacks mxhook's {', '.join(missing)}: run `mxhook postfix-config` to see "
            "the commands (--apply runs them)"
        )
    where = postfix.config_dir or values.get("config_directory") or "/etc/postfix"
    if problems:
        return [_result("postfix", False, f"{where}: {p}", "postfix_not_wired") for p in problems]
    return [_result("postfix", True, f"{where}: " + "; ".join(notes))]


# ---------------------------------------------------------------------------------------------
# mxhook postfix-config

@click.command("postfix-config", context_settings=CONTEXT_SETTINGS,
               short_help="Print (or apply) the main.cf settings that connect Postfix to mxhook.")
@click.option("--postfix-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Postfix configuration directory (postconf -c DIR; default: Postfix's own, "
                   "normally /etc/postfix).")
@click.option("--apply", "apply_", is_flag=True,
              help="Change main.cf: show the diff, ask, keep a backup, run the commands, check "
                   "that Postfix can reach the milter socket.")
@click.option("--yes", "-y", is_flag=True, help="With --apply: do not ask.")
@click.option("--reload", "reload_", is_flag=True,
              help="With --apply: `postfix reload` afterwards (only when the socket check passed).")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def postfix_config(ctx, postfix_dir, apply_, yes, reload_, as_json):
    """Print the postconf commands that connect Postfix to this mxhook installation.

    The milter socket comes from [milter] socket of the config; a socket under Postfix's
    queue_directory is named relative to it (unix:mxhook/milter.sock), as smtpd runs chrooted
    there. Milters already in smtpd_milters are kept. Nothing is changed without --apply, and
    Postfix is reloaded only with --reload.

    \b
    Examples:
      mxhook postfix-config                       # the commands, as a shell script
      mxhook postfix-config --apply               # diff, confirm, backup, apply, check
      mxhook postfix-config --apply --yes --reload
    """
    if (yes or reload_) and not apply_:
        raise InputError("--yes and --reload go with --apply")
    try:
        cfg = _load_config(ctx)
    except configmod.ConfigError as exc:
        raise InputError(str(exc)) from None
    socket_spec = cfg.get("milter", "socket")
    postfix = Postfix(postfix_dir)
    try:
        current = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
    except PostfixError as exc:
        raise click.ClickException(postfix_unreadable(exc)) from None
    config_dir = postfix_dir or current.get("config_directory") or "/etc/postfix"
    main_cf = os.path.join(config_dir, "main.cf")
    queue_dir = current["queue_directory"]
    name = pc.postfix_socket(socket_spec, queue_dir)
    diff = pc.changes(current, pc.desired(current, socket_spec))
    commands = pc.postconf_commands(diff, postfix_dir)
    report = {
        "config_directory": config_dir,
        "main_cf": main_cf,
        "queue_directory": queue_dir,
        "socket": socket_spec,
        "postfix_socket": name,
        "changes": [{"parameter": n, "old": old, "new": new} for n, old, new in diff],
        "commands": [shlex.join(c) for c in commands],
    }
    if not apply_:
        if as_json:
            _emit_json(report)
        else:
            _print_commands(report, postfix, diff, commands)
        return

    report.update(applied=False, backup=None, problems=[], reloaded=False, rollback=None)
    if not diff:
        if as_json:
            _emit_json(report)
        else:
            click.echo(f"{main_cf} already has every setting mxhook needs (milter {name}); "
                       "nothing changed. `mxhook check` tests the whole setup.")
        return
    out = (lambda *a, **k: None) if as_json else click.echo
    out(f"Changes to {main_cf} (milter socket {socket_spec}, named {name} in main.cf):")
    for n, old, new in diff:
        out(f"  {n}: {_shown_value(old)} -> {new}")
    if not yes:
        if not _interactive():
            raise InputError(f"--apply changes {main_cf} and asks first, but there is no terminal "
                             "to ask on: add --yes to apply without asking")
        if as_json:  # the diff was not printed; show it where the question goes
            for n, old, new in diff:
                click.echo(f"  {n}: {_shown_value(old)} -> {new}", err=True)
        if not click.confirm(f"Apply these {len(diff)} changes to {main_cf}?", err=True):
            raise click.ClickException("nothing changed")

    backup = make_backup(main_cf)
    report["backup"] = backup
    rollback = f"cp -p {shlex.quote(backup)} {shlex.quote(main_cf)} && {postfix.command('reload')}"
    report["rollback"] = rollback
    out(f"Backup of main.cf: {backup}")
    for cmd in commands:
        try:
            postfix.run_postconf(cmd)
        except PostfixError as exc:
            report["problems"].append(str(exc))
            if as_json:
                _emit_json(report)
            raise click.ClickException(
                f"{exc}; main.cf may be partly changed. To roll back: {rollback}") from None
        out(f"  ran: {shlex.join(cmd)}")
    report["applied"] = True

    # What Postfix has now, and whether it can use it.
    try:
        after = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
        left = pc.changes(after, pc.desired(after, socket_spec))
        if left:
            report["problems"].append(
                "postconf ran, but main.cf still differs in " + ", ".join(n for n, _o, _n in left))
        results = check_socket(socket_spec, after.get("mail_owner") or "postfix")
        results += check_postfix_wiring(postfix, after, socket_spec)
    except PostfixError as exc:
        results = [_result("postfix", False, str(exc))]
    report["problems"] += [r["message"] for r in results if not r["ok"]]
    for r in results:
        if r["ok"]:
            out(f"ok: {r['message']}")
    for p in report["problems"]:
        out(f"problem: {p}")

    if report["problems"]:
        out(f"Postfix was not reloaded: with these problems it would answer mail with 4xx "
            f"(default_action=tempfail). Fix them and run `{postfix.command('reload')}`, or roll "
            f"back: {rollback}")
    elif reload_:
        try:
            postfix.reload()
            report["reloaded"] = True
            out(f"Reloaded Postfix ({postfix.command('reload')}): smtpd now uses the milter.")
        except PostfixError as exc:
            report["problems"].append(f"{exc} (main.cf is changed; Postfix uses it when it starts)")
            out(f"problem: {report['problems'][-1]}")
    else:
        out(f"Not reloaded: run `{postfix.command('reload')}` so that smtpd uses the milter.")
    out(f"To roll back: {rollback}")
    if as_json:
        _emit_json(report)
    if report["problems"]:
        ctx.exit(1)


def _print_commands(report: dict, postfix: Postfix, diff, commands) -> None:
    main_cf = report["main_cf"]
    click.echo(f"# mxhook: main.cf settings for {main_cf}")
    click.echo(f"# milter socket {report['socket']} (mxhook.conf) = {report['postfix_socket']} "
               f"for Postfix (queue_directory {report['queue_directory']})")
    if not diff:
        click.echo("# nothing to change: main.cf already has every setting mxhook needs")
        return
    for n, old, new in diff:
        click.echo(f"#   {n}: {_shown_value(old)} -> {new}")
    click.echo(f"cp -p {shlex.quote(main_cf)} {shlex.quote(main_cf)}.mxhook-$(date +%Y%m%d%H%M%S)")
    for cmd in commands:
        click.echo(shlex.join(cmd))
    click.echo(f"{postfix.command('check')} && {postfix.command('reload')}")
    click.echo("# or let mxhook apply them (diff, backup, socket check): "
               f"mxhook postfix-config{' --postfix-dir ' + shlex.quote(postfix.config_dir) if postfix.config_dir else ''} --apply")


def make_backup(main_cf: str) -> str:
    """Copy main.cf to main.cf.mxhook-YYYYmmddHHMMSS (never over an existing file), keeping
    its mode, times and owner."""
    base = pc.backup_path(main_cf, dt.datetime.now())
    for n in range(100):
        path = base if n == 0 else f"{base}.{n}"
        try:
            with open(main_cf, "rb") as src, open(path, "xb") as dst:
                shutil.copyfileobj(src, dst)
        except FileExistsError:
            continue
        except OSError as exc:
            raise click.ClickException(f"cannot back up {main_cf}: {exc}; nothing changed") from None
        shutil.copystat(main_cf, path)
        st = os.stat(main_cf)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
        return path
    raise click.ClickException(f"cannot back up {main_cf}: too many backups named {base}*")


# ---------------------------------------------------------------------------------------------
# mxhook check

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


def check_database(check: str, label: str, path: str, uids: list[int], *, version: int | None,
                   tables: tuple[str, ...] = (), missing_hint: str, private: str,
                   missing_ok: bool = False, describe=None) -> list[dict]:
    """Open read-only, schema version (or required tables), quick integrity check, and file
    permissions for the daemons' users `uids` (WAL: they must also write -wal/-shm and the
    directory)."""
    if not os.path.exists(path):
        return [_result(check, missing_ok, f"{label} {path} does not exist{' yet' if missing_ok else ''}: "
                                           f"{missing_hint}")]
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
        return [_result(check, False, f"{label} {path} cannot be read: {exc} (not an SQLite "
                                      "database, or damaged: restore it from a backup)")]
    if version is not None:
        if found > version:
            problems.append(f"{label} {path} has schema version {found}, newer than this mxhook "
                            f"understands ({version}): upgrade mxhook")
        elif found == 0:
            problems.append(f"{label} {path} is empty (schema version 0): {missing_hint}")
        elif found < version:
            problems.append(f"{label} {path} has schema version {found}, older than {version}: "
                            "`mxhook domain list` upgrades it")
        summary = f"schema {found}"
    lacking = [t for t in tables if t not in names]
    if lacking:
        problems.append(f"{label} {path} lacks the tables {', '.join(lacking)}: {missing_hint}")
    elif tables and version is None:
        summary = "tables present"
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
        return [_result(check, False, p) for p in problems]
    return [_result(check, True, f"{label} {path}: {summary + ', ' if summary else ''}integrity ok, "
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
        return [_result("spool", False, f"spool directory {spool_dir} does not exist: start "
                                        "mxhook-milter or mxhook-spooler (they create it)")]
    if not stat.S_ISDIR(st.st_mode):
        return [_result("spool", False, f"spool directory {spool_dir} is not a directory")]
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
        return [_result("spool", False, p) for p in problems]
    counts = {}
    for sub in ("new", "bad"):
        try:
            with os.scandir(os.path.join(spool_dir, sub)) as it:
                counts[sub] = sum(1 for _ in it)
        except OSError:
            counts[sub] = "?"
    return [_result("spool", True, f"spool {spool_dir}: {', '.join(spool.SUBDIRS)} writable by "
                                   f"{_users(uids)}, not open to others ({counts['new']} waiting "
                                   f"in new/, {counts['bad']} in bad/)")]


def _users(uids: list[int]) -> str:
    return " and ".join(_user(u) for u in uids)


def daemon_uids(socket_spec: str, spool_dir: str) -> list[int]:
    """Who runs the daemons: the owner of the spool directory and the owner of the socket
    (the milter created it); normally one user (mxhook)."""
    uids: list[int] = []
    for p in (spool_dir, _socket_path(socket_spec)):
        if p:
            try:
                uid = os.stat(p).st_uid
            except OSError:
                continue
            if uid not in uids:
                uids.append(uid)
    return uids or [os.geteuid()]


def run_checks(ctx: click.Context, postfix_dir: str | None) -> list[dict]:
    path = configmod.config_path(_config_path(ctx))
    try:
        cfg = configmod.load(_config_path(ctx))
    except configmod.ConfigError as exc:
        return [_result("config", False, f"{exc}; the other checks need the config")]
    results: list[dict] = []
    problems = config_problems(cfg)
    if problems:
        results += [_result("config", False, p) for p in problems]
    else:
        source = cfg.source or f"built-in defaults ({path} does not exist)"
        results.append(_result("config", True, f"{source}: every setting the daemons read is valid"))

    socket_spec = cfg.get("milter", "socket")
    uids = daemon_uids(socket_spec, cfg.spool_dir)
    from mxhook.store import rulesdb as dbmod

    results += check_database(
        "rules_db", "rules database", cfg.rules_db, uids, version=dbmod.SCHEMA_VERSION,
        missing_hint="no domain is permitted, so inbound mail is refused; `mxhook domain add "
                     "DOMAIN` creates it", private="endpoint secrets", missing_ok=True,
        describe=_describe_rules)
    try:
        from mxhook.store import statedb as statemod
        state_version = getattr(statemod, "SCHEMA_VERSION", None)
    except ImportError:
        state_version = None
    results += check_database(
        "state_db", "state database", cfg.state_db, uids, version=state_version,
        tables=STATE_TABLES if state_version is None else (),
        missing_hint="start mxhook-spooler (it creates it)", private="mail and delivery logs")
    fault = integrity.read_fault(cfg.state_db)
    if fault:
        results.append(_result("state_db", False, f"mxhook-spooler stopped: state database "
                                                  f"{cfg.state_db} is damaged ({fault}); spooled mail "
                                                  "waits in new/: restore state.db from a backup, "
                                                  "then restart mxhook-spooler"))
    results += check_spool(cfg.spool_dir, uids)

    postfix = Postfix(postfix_dir)
    try:
        values = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
    except PostfixError as exc:
        results += check_socket(socket_spec, "postfix")
        results.append(_result("postfix", False, postfix_unreadable(exc), exc.code))
        return results
    results += check_socket(socket_spec, values.get("mail_owner") or "postfix")
    try:
        results += check_postfix_wiring(postfix, values, socket_spec)
    except PostfixError as exc:
        results.append(_result("postfix", False, f"cannot read Postfix's master.cf: {exc}", exc.code))
    return results


@click.command("check", context_settings=CONTEXT_SETTINGS,
               short_help="Check config, databases, socket, spool and Postfix's milter settings.")
@click.option("--postfix-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Postfix configuration directory (postconf -c DIR; default: Postfix's own).")
@click.option("--json", "as_json", is_flag=True,
              help="Output JSON: a list of {check, ok, message}, and `code` on some problems.")
@click.pass_context
def check(ctx, postfix_dir, as_json):
    """Check that this mxhook installation can work: the config file (every setting the
    daemons read), rules.db and state.db (readable, known schema, integrity, permissions), the
    milter socket (mode, group, and a real connection as Postfix's user when run as root), the
    spool directories, and Postfix's smtpd_milters (names this socket, default_action=tempfail).

    Prints one line per check, and one line per problem saying what to do. Exit status: 0 when
    everything is fine, 1 when there is a problem.
    """
    results = run_checks(ctx, postfix_dir)
    failed = [r for r in results if not r["ok"]]
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            click.echo(f"{'ok     ' if r['ok'] else 'PROBLEM'} {r['check']}: {r['message']}")
        if failed:
            click.echo(f"{len(failed)} problem{'s' if len(failed) != 1 else ''} found")
        else:
            click.echo(f"everything checked is fine ({len(results)} checks)")
    if failed:
        ctx.exit(1)
