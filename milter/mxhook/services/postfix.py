"""Postfix as mxhook sees it: its configuration read through `postconf [-c DIR] -h NAME`, the
milter wiring planned with the pure functions of postfix.postconf and applied (a timestamped
copy of main.cf first), and whether Postfix's smtpd can reach the milter socket (file system,
then a real connection as Postfix's mail_owner when run as root). It never reloads Postfix
unless asked.

Every external program goes through `run_command` and the connection test through
`probe_socket`, so tests replace them (tests/unit/test_admin.py).
"""
from __future__ import annotations

import datetime as dt
import errno
import grp
import os
import pwd
import shlex
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable

from mxhook import config as configmod
from mxhook.postfix import postconf as pc
from mxhook.services.errors import Failed

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
# Parameters read besides pc.parameters() (what `desired` needs).
EXTRA_PARAMETERS = ("config_directory", "mail_owner", "milter_default_action")


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



def milter_negotiate(path: str, timeout: float) -> str | None:
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
            message = milter_negotiate(path, timeout) or ""
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

    def expanded(self, name: str) -> str:
        """A parameter as Postfix's daemons read it: `$other` references expanded (postconf -x)."""
        return self.postconf("-x", "-h", name).rstrip("\n")

    def running(self) -> bool:
        """`postfix status` exits 0 (the master process runs)."""
        try:
            return run_command([POSTFIX, *self.c, "status"], timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

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
        try:
            return self._run([POSTFIX, *self.c, "reload"])
        except PostfixError as exc:
            if not str(exc).endswith(" failed: exit status 1"):
                raise
            # postfix-script logs its reason (only to the mail log when not on a terminal)
            raise PostfixError(f"{exc}: {self._why_not_reloaded()}") from None

    def _why_not_reloaded(self) -> str:
        if not self.running():
            return (f"Postfix is not running (`{self.command('status')}`): start it "
                    "(`systemctl start postfix`); it reads the changed main.cf when it starts")
        try:
            log_file = self.get("maillog_file")
        except PostfixError:
            log_file = ""
        where = log_file or "the mail log (`journalctl -t postfix/postfix-script`)"
        return f"postfix-script wrote the reason to {where}"

    def command(self, *args: str) -> str:
        """`postfix [-c DIR] ARGS` as text for messages."""
        return shlex.join(["postfix", *self.c, *args])


def result(check: str, ok: bool, message: str, code: str | None = None) -> dict:
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


def socket_path(spec: str) -> str | None:
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
        return [result("socket", False, f"Postfix's mail_owner {mail_owner!r} is not a user on this "
                                        "system: is Postfix installed?")]
    path = socket_path(socket_spec)
    if path is not None and not os.path.isabs(path):
        return [result("socket", False, f"[milter] socket {socket_spec} is not an absolute path: "
                                        "give unix:/var/spool/postfix/mxhook/milter.sock or another absolute path")]
    problems = pc.socket_problems(socket_spec, pw.pw_gid)
    group = grp.getgrgid(pw.pw_gid).gr_name
    problems = [p.replace("the postfix group", f"group {group}") for p in problems]
    if problems:
        hint = (f"; the socket's directory must be setgid group {group} (the package makes "
                "/var/spool/postfix/mxhook mxhook:postfix 2750; `dpkg-reconfigure mxhook` restores "
                "it) or [milter] socket_group must name it; then restart mxhook-milter")
        return [result("socket", False, p + (hint if "mode" in p or "group" in p else ""))
                for p in problems]
    if os.geteuid() != 0:
        return [result("socket", True, f"milter socket {path}: 0660, group {group} (not root: a "
                                        f"connection as {mail_owner} was not tried)")]
    why = probe_socket(path, mail_owner)
    if why is None:
        return [result("socket", True, f"milter socket {path}: user {mail_owner} connects and "
                                        "the milter answers")]
    if "ECONNREFUSED" in why:
        why += ": nothing listens there (stale socket); is mxhook-milter running?"
    elif "EACCES" in why:
        why += (f": user {mail_owner} (group {group} only, as smtpd runs) must be able to "
                f"traverse every directory above {path}")
    return [result("socket", False, f"user {mail_owner} cannot use the milter socket {path}: {why}")]


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
        return [result("postfix", False, f"{where}: {p}", "postfix_not_wired") for p in problems]
    return [result("postfix", True, f"{where}: " + "; ".join(notes))]


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
            raise Failed(f"cannot back up {main_cf}: {exc}; nothing changed", "backup_failed") from None
        shutil.copystat(main_cf, path)
        st = os.stat(main_cf)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
        return path
    raise Failed(f"cannot back up {main_cf}: too many backups named {base}*", "backup_failed")



# ---------------------------------------------------------------------------------------------
# Wiring Postfix to the milter (`mxhook postfix-config`)

@dataclass
class Plan:
    postfix: Postfix
    socket_spec: str  # [milter] socket of the config
    diff: list  # [(parameter, old, new)] for main.cf
    commands: list  # the postconf argv lists that make the diff
    report: dict  # JSON-able: directories, sockets, changes, commands
    remove: bool = False  # unwiring (pc.unwired) instead of wiring


def plan(cfg: configmod.Config, postfix_dir: str | None, *, remove: bool = False) -> Plan:
    """What main.cf needs so that Postfix hands mail to this milter; milters already in
    smtpd_milters are kept. A socket under Postfix's queue_directory is named relative to it,
    as smtpd runs chrooted there. With `remove`: what takes mxhook's milter out again."""
    socket_spec = cfg.get("milter", "socket")
    postfix = Postfix(postfix_dir)
    try:
        current = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
    except PostfixError as exc:
        raise Failed(postfix_unreadable(exc), exc.code) from None
    config_dir = postfix_dir or current.get("config_directory") or "/etc/postfix"
    queue_dir = current["queue_directory"]
    want = pc.unwired(current, socket_spec) if remove else pc.desired(current, socket_spec)
    diff = pc.changes(current, want)
    commands = pc.postconf_commands(diff, postfix_dir)
    report = {
        "config_directory": config_dir,
        "main_cf": os.path.join(config_dir, "main.cf"),
        "queue_directory": queue_dir,
        "socket": socket_spec,
        "postfix_socket": pc.postfix_socket(socket_spec, queue_dir),
        "changes": [{"parameter": n, "old": old, "new": new} for n, old, new in diff],
        "commands": [shlex.join(c) for c in commands],
    }
    return Plan(postfix, socket_spec, diff, commands, report, remove)


def apply(planned: Plan, *, reload: bool = False,
          out: Callable[[str], None] = lambda _line: None) -> dict:
    """Keep a backup of main.cf, run the commands, check that Postfix can use the milter, and
    reload Postfix when asked and the checks passed. `out` gets each step as it happens. The
    report gains applied, backup, problems, reloaded and rollback."""
    postfix, report = planned.postfix, planned.report
    report.update(applied=False, backup=None, problems=[], reloaded=False, rollback=None)
    if not planned.diff:
        return report
    main_cf = report["main_cf"]
    backup = make_backup(main_cf)
    report["backup"] = backup
    rollback = f"cp -p {shlex.quote(backup)} {shlex.quote(main_cf)} && {postfix.command('reload')}"
    report["rollback"] = rollback
    out(f"Backup of main.cf: {backup}")
    for cmd in planned.commands:
        try:
            postfix.run_postconf(cmd)
        except PostfixError as exc:
            report["problems"].append(str(exc))
            raise Failed(f"{exc}; main.cf may be partly changed. To roll back: {rollback}",
                         "postconf_failed", detail=report) from None
        out(f"  ran: {shlex.join(cmd)}")
    report["applied"] = True

    # What Postfix has now, and whether it can use it.
    socket_spec = planned.socket_spec
    try:
        after = postfix.values([*pc.parameters(), *EXTRA_PARAMETERS])
        want = pc.unwired(after, socket_spec) if planned.remove else pc.desired(after, socket_spec)
        left = pc.changes(after, want)
        if left:
            report["problems"].append(
                "postconf ran, but main.cf still differs in " + ", ".join(n for n, _o, _n in left))
        results = [] if planned.remove else check_socket(socket_spec, after.get("mail_owner") or "postfix")
        results += [] if planned.remove else check_postfix_wiring(postfix, after, socket_spec)
    except PostfixError as exc:
        results = [result("postfix", False, str(exc))]
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
    elif reload:
        try:
            postfix.reload()
            report["reloaded"] = True
            out(f"Reloaded Postfix ({postfix.command('reload')}): smtpd "
                f"{'no longer uses' if planned.remove else 'now uses'} the milter.")
        except PostfixError as exc:
            report["problems"].append(f"{exc} (main.cf is changed; Postfix uses it when it starts)")
            out(f"problem: {report['problems'][-1]}")
    else:
        out(f"Not reloaded: run `{postfix.command('reload')}` so that smtpd "
            f"{'stops using' if planned.remove else 'uses'} the milter.")
    out(f"To roll back: {rollback}")
    return report
