"""`mxhook postfix-config` and `mxhook check` with a fake postconf/postfix (postfixsvc.run_command)
and a fake connection probe (postfixsvc.probe_socket); the real probe has its own tests at the end.
The planning itself (postconf.desired/changes) is tested in test_postconf.py; the same
commands against a real Postfix are in tests/e2e/test_postfix_config.py."""
from __future__ import annotations

import json
import os
import pathlib
import pwd
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading

import click
import pytest
from tests.support.cli import separate_runner

from mxhook.cli import admin
from mxhook.cli import base
from mxhook.services import check as checksvc
from mxhook.services import postfix as postfixsvc
from mxhook import config
from mxhook.store import rulesdb as dbmod
from mxhook.store import statedb
from mxhook.postfix import postconf as pc
from mxhook import spool
from mxhook.store.statedb import StateStore

ME = pwd.getpwuid(os.geteuid()).pw_name
REAL_RUN_COMMAND = postfixsvc.run_command
OURS = "{ unix:mxhook/milter.sock, " + pc.MILTER_OPTIONS + " }"


@click.group(cls=base.MxhookGroup)
@click.option("--config", "config_path")
@click.pass_context
def root(ctx, config_path):
    """Like cli.cli: the context object is cli.App."""
    ctx.obj = base.App(config_path)


root.add_command(admin.postfix_config)
root.add_command(admin.check)


class FakePostfix:
    """postconf and postfix as run_command sees them. main.cf is a dict, also written to
    DIR/main.cf (so the backup has something to copy); `postconf -e` changes both."""

    def __init__(self, tmp_path, queue_dir, **main):
        self.dir = tmp_path / "postfix-etc"
        self.dir.mkdir()
        self.running = True  # `postfix status`
        self.main = {
            "config_directory": str(self.dir),
            "queue_directory": queue_dir,
            "mail_owner": ME,  # the socket is ours and in our group: no chown needed
            "milter_default_action": "tempfail",
            "smtpd_milters": "",
            "milter_protocol": "6",
            "enable_long_queue_ids": "no",
            "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
            "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr}",
            "milter_end_of_header_macros": "i",
            "milter_end_of_data_macros": "i",
            "transport_maps": pc.ROUTES_TABLE,  # test_postconf covers adding it
        }
        self.main.update(main)
        self.master_fields = ("smtp/inet/command = smtpd\nsmtp/inet/chroot = y\npickup/unix/command = pickup\n"
                              "discard/unix/command = discard\nerror/unix/command = error\n")
        self.master_overrides = ""
        self.calls: list[list[str]] = []
        self.fail: dict[str, tuple[int, str]] = {}  # program or argument -> (status, stderr)
        self.write()

    def write(self):
        (self.dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main.items()))

    @property
    def main_cf(self) -> str:
        return str(self.dir / "main.cf")

    def edits(self) -> list[str]:
        return [c[-1] for c in self.calls if "-e" in c]

    def reloads(self) -> int:
        return sum(1 for c in self.calls if os.path.basename(c[0]) == "postfix" and c[-1] == "reload")

    def __call__(self, argv, timeout=60.0):
        self.calls.append(list(argv))
        prog, args = os.path.basename(argv[0]), list(argv[1:])
        if args[:1] == ["-c"]:
            assert args[1] == str(self.dir), argv
            args = args[2:]
        done = lambda out="", rc=0, err="": subprocess.CompletedProcess(argv, rc, out, err)  # noqa: E731
        for word, (rc, err) in self.fail.items():
            if word == prog or word in args:
                return done(rc=rc, err=err)
        if prog == "postconf":
            if args[:2] == ["-d", "-h"]:  # compiled-in defaults: no main.cf needed
                return done({"config_directory": str(self.dir)}.get(args[2], "") + "\n")
            if not (self.dir / "main.cf").exists():  # as the real postconf: every lookup fails
                return done(rc=1, err=f"postconf: fatal: open {self.dir}/main.cf: No such file or directory\n")
            if args[0] == "-h":
                return done(self.main.get(args[1], "") + "\n")
            if args[:2] == ["-x", "-h"]:  # $name expanded, once is enough here
                value = re.sub(r"\$\{?(\w+)\}?", lambda m: self.main.get(m.group(1), ""),
                               self.main.get(args[2], ""))
                return done(value + "\n")
            if args[0] == "-e":
                name, _, value = args[1].partition(" = ")
                self.main[name] = value
                self.write()
                return done()
            if args[0] == "-F":
                return done(self.master_fields)
            if args[0] == "-P":
                return done(self.master_overrides)
        if prog == "postfix" and args == ["status"]:
            return done(rc=0 if self.running else 1)
        if prog == "postfix" and args == ["reload"]:
            return done("postfix/postfix-script: refreshing the Postfix mail system\n")
        raise AssertionError(f"unexpected command {argv}")


class Env:
    """An mxhook installation in tmp_path: config, both databases, spool, a listening milter
    socket (mode 0660, our group) under a fake queue directory, and a fake Postfix."""

    def __init__(self, tmp_path, monkeypatch, *, socket_under_queue=True, **main):
        self.tmp = tmp_path
        self.queue_dir = str(tmp_path / "queue")
        os.makedirs(os.path.join(self.queue_dir, "mxhook"))
        sock_dir = os.path.join(self.queue_dir, "mxhook") if socket_under_queue else str(tmp_path / "run")
        os.makedirs(sock_dir, exist_ok=True)
        self.socket_path = os.path.join(sock_dir, "milter.sock")
        self.rules_db = str(tmp_path / "lib" / "rules.db")
        self.state_db = str(tmp_path / "lib" / "state.db")
        self.spool_dir = str(tmp_path / "spool")
        self.conf = str(tmp_path / "mxhook.conf")
        self.values = {
            "paths": {"rules_db": self.rules_db, "state_db": self.state_db, "spool_dir": self.spool_dir},
            "milter": {"socket": "unix:" + self.socket_path},
            "web": {"access_db": str(tmp_path / "lib" / "access.db")},
            "logfollow": {"state_file": str(tmp_path / "lib" / "logfollow.state"),
                          "path": str(tmp_path / "mail.log")},
        }
        (tmp_path / "mail.log").write_text("")
        self.write_config()
        self.postfix = FakePostfix(tmp_path, self.queue_dir, **main)
        monkeypatch.setattr(postfixsvc, "run_command", self.postfix)
        self.probes: list[tuple[str, str]] = []
        self.probe_answer: str | None = None
        monkeypatch.setattr(postfixsvc, "probe_socket", self._probe)
        # the daemons are alive unless a test says otherwise (test_check_daemons.py: for real)
        self.alive: dict[str, str] = {}
        monkeypatch.setattr(checksvc, "probe_milter", lambda path: self.alive.get("milter"))
        monkeypatch.setattr(checksvc.heartbeat, "read", lambda path, now=None: {
            "state": self.alive.get(os.path.basename(path), "alive"), "age": 1.0,
            "pid": os.getpid(), "started": 0, "error": None})
        self.runner = separate_runner()
        self.sock: socket.socket | None = None

    def write_config(self):
        with open(self.conf, "w") as fh:
            fh.write(config.render(self.values))

    def _probe(self, path, user, timeout=5.0):
        self.probes.append((path, user))
        return self.probe_answer

    def listen(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.socket_path)
        self.sock.listen(1)
        os.chmod(self.socket_path, 0o660)
        return self

    def healthy(self):
        """Databases, spool and socket as the package makes them."""
        os.makedirs(os.path.dirname(self.rules_db), mode=0o750)
        with dbmod.RulesStore(self.rules_db) as store:
            store.add_domain("ours.example")
        with StateStore(self.state_db):
            pass
        os.chmod(self.state_db, 0o640)
        os.mkdir(self.spool_dir, 0o750)
        spool.ensure_dirs(self.spool_dir)
        return self.listen()

    def close(self):
        if self.sock is not None:
            self.sock.close()

    def run(self, *args, input=None):
        return self.runner.invoke(root, ["--config", self.conf, *args], input=input)

    def pc(self, *args, input=None):
        return self.run("postfix-config", "--postfix-dir", str(self.postfix.dir), *args, input=input)

    def check(self, *args):
        res = self.run("check", "--postfix-dir", str(self.postfix.dir), "--json", *args)
        assert res.exit_code in (0, 1), (res.stdout, res.stderr, res.exception)
        return res.exit_code, json.loads(res.stdout)


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = Env(tmp_path, monkeypatch)
    yield e
    e.close()


def problems(results):
    return [r["message"] for r in results if not r["ok"]]


# -- postfix-config: printing ----------------------------------------------------------------------

def test_prints_the_postconf_commands_for_this_installation_and_changes_nothing(env):
    res = env.pc()
    assert res.exit_code == 0, res.stderr
    d = str(env.postfix.dir)
    lines = res.stdout.splitlines()
    assert f"postconf -c {d} -e 'smtpd_milters = {OURS}'" in lines
    assert f"postconf -c {d} -e 'enable_long_queue_ids = yes'" in lines
    assert f"postfix -c {d} check && postfix -c {d} reload" in lines
    assert any(l.startswith(f"cp -p {d}/main.cf {d}/main.cf.mxhook-") for l in lines)
    # every line is a comment or a command: the output is a shell script
    assert all(l.startswith(("#", "cp ", "postconf ", "postfix ")) for l in lines)
    assert env.postfix.edits() == [] and env.postfix.reloads() == 0


def test_socket_outside_the_queue_directory_is_named_absolute(tmp_path, monkeypatch):
    e = Env(tmp_path, monkeypatch, socket_under_queue=False)
    res = e.pc("--json")
    doc = json.loads(res.stdout)
    assert doc["postfix_socket"] == f"unix:{tmp_path}/run/milter.sock"
    assert doc["changes"][0]["new"].startswith(f"{{ unix:{tmp_path}/run/milter.sock, default_action=tempfail")


def test_json_lists_changes_and_commands(env):
    doc = json.loads(env.pc("--json").stdout)
    assert doc["main_cf"] == env.postfix.main_cf
    assert doc["postfix_socket"] == "unix:mxhook/milter.sock"
    assert doc["changes"] == [
        {"parameter": "smtpd_milters", "old": "", "new": OURS},
        {"parameter": "enable_long_queue_ids", "old": "no", "new": "yes"},
    ]
    assert doc["commands"][1] == f"postconf -c {env.postfix.dir} -e 'enable_long_queue_ids = yes'"


def test_other_milters_are_kept(tmp_path, monkeypatch):
    e = Env(tmp_path, monkeypatch, smtpd_milters="inet:localhost:8891")
    doc = json.loads(e.pc("--json").stdout)
    assert doc["changes"][0]["new"] == "inet:localhost:8891, " + OURS


def test_nothing_to_change_is_said_and_exits_0(tmp_path, monkeypatch):
    e = Env(tmp_path, monkeypatch, smtpd_milters=OURS, enable_long_queue_ids="yes")
    res = e.pc()
    assert res.exit_code == 0 and "nothing to change" in res.stdout
    res = e.pc("--apply")
    assert res.exit_code == 0, res.stderr
    assert "nothing changed" in res.stdout
    assert e.postfix.edits() == [] and not list(e.postfix.dir.glob("main.cf.mxhook-*"))


def test_unreadable_postfix_configuration_is_one_line_and_status_1(env):
    env.postfix.fail["-h"] = (1, "postconf: fatal: open /nowhere/main.cf: No such file or directory")
    res = env.pc()
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: cannot read Postfix's configuration: postconf -c {env.postfix.dir} -h queue_directory "
        "failed: postconf: fatal: open /nowhere/main.cf: No such file or directory"]


def test_bad_mxhook_config_exits_1(env):
    env.values["milter"]["bogus"] = "1"
    env.write_config()
    res = env.pc()
    assert res.exit_code == 1 and "unknown key 'bogus'" in res.stderr


@pytest.mark.parametrize("flag", ["--yes", "--reload"])
def test_yes_and_reload_need_apply(env, flag):
    res = env.pc(flag)
    assert res.exit_code == 2 and "go with --apply" in res.stderr


# -- postfix-config --apply ------------------------------------------------------------------------

def test_apply_without_a_terminal_refuses_unless_yes(env):
    env.listen()
    before = open(env.postfix.main_cf).read()
    res = env.pc("--apply")
    assert res.exit_code == 2
    assert "no terminal to ask on: add --yes" in res.stderr
    assert "smtpd_milters: (empty) -> " + OURS in res.stdout  # the diff was shown
    assert open(env.postfix.main_cf).read() == before
    assert env.postfix.edits() == [] and not list(env.postfix.dir.glob("main.cf.mxhook-*"))


def test_apply_asks_and_no_changes_nothing(env, monkeypatch):
    env.listen()
    monkeypatch.setattr(admin, "_interactive", lambda: True)
    res = env.pc("--apply", input="n\n")
    assert res.exit_code == 1 and "nothing changed" in res.stderr
    assert "Apply these 2 changes" in res.stderr
    assert env.postfix.edits() == []


def test_apply_asks_and_yes_applies(env, monkeypatch):
    env.listen()
    monkeypatch.setattr(admin, "_interactive", lambda: True)
    res = env.pc("--apply", input="y\n")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert env.postfix.main["smtpd_milters"] == OURS


def test_apply_yes_backs_up_runs_postconf_checks_the_socket_and_does_not_reload(env):
    env.listen()
    before = open(env.postfix.main_cf).read()
    res = env.pc("--apply", "--yes")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert env.postfix.edits() == [f"smtpd_milters = {OURS}", "enable_long_queue_ids = yes"]
    (backup,) = env.postfix.dir.glob("main.cf.mxhook-*")
    assert len(backup.name) == len("main.cf.mxhook-20261122130000")
    assert backup.read_text() == before
    assert "smtpd_milters = " + OURS in open(env.postfix.main_cf).read()
    # the probe ran as Postfix's mail_owner against the file Postfix resolves
    assert env.probes == [(env.socket_path, ME)]
    assert env.postfix.reloads() == 0
    out = res.stdout
    assert f"Not reloaded: run `postfix -c {env.postfix.dir} reload`" in out
    assert f"To roll back: cp -p {backup} {env.postfix.main_cf} && postfix -c {env.postfix.dir} reload" in out
    assert "smtpd_milters: (empty) -> " + OURS in out


def test_apply_reload_reloads_after_a_good_socket_check(env):
    env.listen()
    res = env.pc("--apply", "--yes", "--reload")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert env.postfix.reloads() == 1
    assert "Reloaded Postfix" in res.stdout
    # reload comes after the postconf commands
    kinds = [os.path.basename(c[0]) + ("-e" if "-e" in c else "") for c in env.postfix.calls]
    assert kinds.index("postfix") > max(i for i, k in enumerate(kinds) if k == "postconf-e")


def test_apply_with_a_missing_socket_applies_but_does_not_reload_and_exits_1(env):
    res = env.pc("--apply", "--yes", "--reload", "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["applied"] is True and doc["reloaded"] is False
    assert doc["problems"] == [f"milter socket {env.socket_path} does not exist: is mxhook-milter running?"]
    assert doc["backup"] and os.path.exists(doc["backup"])
    assert doc["rollback"] == f"cp -p {doc['backup']} {env.postfix.main_cf} && postfix -c {env.postfix.dir} reload"
    assert env.postfix.reloads() == 0


def test_apply_reports_a_socket_postfix_cannot_connect_to(env):
    env.listen()
    env.probe_answer = "connect: Permission denied [EACCES]"
    res = env.pc("--apply", "--yes")
    assert res.exit_code == 1
    assert (f"problem: user {ME} cannot use the milter socket {env.socket_path}: connect: Permission "
            "denied [EACCES]: user") in res.stdout
    assert "must be able to traverse every directory above" in res.stdout
    assert "Postfix was not reloaded" in res.stdout


def test_apply_stale_socket(env):
    env.listen()
    env.probe_answer = "connect: Connection refused [ECONNREFUSED]"
    res = env.pc("--apply", "--yes")
    assert res.exit_code == 1 and "stale socket); is mxhook-milter running?" in res.stdout


def test_apply_postconf_failure_says_how_to_roll_back(env):
    env.listen()
    env.postfix.fail["enable_long_queue_ids = yes"] = (1, "postconf: fatal: open main.cf: Permission denied")
    res = env.pc("--apply", "--yes")
    assert res.exit_code == 1
    (backup,) = env.postfix.dir.glob("main.cf.mxhook-*")
    err = res.stderr.strip()
    assert "postconf: fatal: open main.cf: Permission denied; main.cf may be partly changed" in err
    assert err.endswith(f"To roll back: cp -p {backup} {env.postfix.main_cf} && postfix -c {env.postfix.dir} reload")


def test_apply_reload_failure_exits_1(env):
    env.listen()
    env.postfix.fail["reload"] = (1, "postfix/postfix-script: fatal: the Postfix mail system is not running")
    res = env.pc("--apply", "--yes", "--reload")
    assert res.exit_code == 1
    assert "the Postfix mail system is not running (main.cf is changed; Postfix uses it when it starts)" in res.stdout


def test_apply_twice_the_second_changes_nothing(env):
    env.listen()
    assert env.pc("--apply", "--yes").exit_code == 0
    res = env.pc("--apply", "--yes")
    assert res.exit_code == 0 and "nothing changed" in res.stdout
    assert len(list(env.postfix.dir.glob("main.cf.mxhook-*"))) == 1


def test_backups_never_overwrite(tmp_path):
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("a = 1\n")
    first = postfixsvc.make_backup(str(main_cf))
    main_cf.write_text("a = 2\n")
    second = postfixsvc.make_backup(str(main_cf))
    assert first != second
    assert open(first).read() == "a = 1\n" and open(second).read() == "a = 2\n"


# -- check -----------------------------------------------------------------------------------------

def wire(e):
    e.postfix.main.update(smtpd_milters=OURS, enable_long_queue_ids="yes")


def test_check_healthy(env):
    env.healthy()
    wire(env)
    status, results = env.check()
    assert problems(results) == []
    assert status == 0
    assert [r["check"] for r in results] == ["config", "rules_db", "state_db", "spool", "milter",
                                             "spooler", "logfollow", "web", "track", "postfix_running",
                                             "logfollow_source", "socket", "postfix", "local_submission"]
    assert env.probes == [(env.socket_path, ME)]
    assert results[1]["message"].endswith("; 1 permitted domain, 0 enabled rules")
    text = env.run("check", "--postfix-dir", str(env.postfix.dir))
    assert text.exit_code == 0
    assert text.stdout.splitlines()[-1] == "everything checked is fine (14 checks)"


def test_check_missing_socket(env):
    env.healthy()
    wire(env)
    env.close()
    os.unlink(env.socket_path)
    status, results = env.check()
    assert status == 1
    assert problems(results) == [f"milter socket {env.socket_path} does not exist: is mxhook-milter running?"]


def test_check_socket_mode(env):
    env.healthy()
    wire(env)
    os.chmod(env.socket_path, 0o600)
    status, results = env.check()
    assert status == 1
    (p,) = problems(results)
    assert p.startswith(f"milter socket {env.socket_path} has mode 0600; the group needs read and write")
    assert "dpkg-reconfigure mxhook" in p


def test_check_smtpd_milters_lacking_ours(env):
    env.healthy()
    env.postfix.main.update(smtpd_milters="inet:localhost:8891", enable_long_queue_ids="yes")
    status, results = env.check()
    assert status == 1
    assert problems(results) == [
        f"{env.postfix.dir}: Postfix's smtpd_milters does not name mxhook's socket "
        "unix:mxhook/milter.sock: run `mxhook postfix-config --apply`, then `postfix reload`"]
    assert [r.get("code") for r in results] == [None] * 12 + ["postfix_not_wired", None]
    # the text form: one line per problem, and a count
    res = env.run("check", "--postfix-dir", str(env.postfix.dir))
    assert res.exit_code == 1
    assert [l for l in res.stdout.splitlines() if l.startswith("PROBLEM")] == [
        f"PROBLEM postfix: {problems(results)[0]}"]
    assert res.stdout.splitlines()[-1] == "1 problem found"


def test_check_accepts_the_port_25_only_alternative(env):
    env.healthy()
    env.postfix.main.update(enable_long_queue_ids="yes")
    env.postfix.master_overrides = f"smtp/inet/smtpd_milters = {OURS}\n"
    status, results = env.check()
    assert status == 0, problems(results)
    assert "master.cf smtp/inet" in [r for r in results if r["check"] == "postfix"][0]["message"]


def test_check_default_action_accept_is_a_problem(env):
    env.healthy()
    env.postfix.main.update(smtpd_milters="unix:mxhook/milter.sock", enable_long_queue_ids="yes",
                            milter_default_action="accept")
    status, results = env.check()
    assert status == 1
    (p,) = problems(results)
    assert "default_action is accept" in p and "set default_action=tempfail" in p


def test_check_absolute_name_with_chrooted_smtpd(env):
    env.healthy()
    env.postfix.main.update(smtpd_milters=f"unix:{env.socket_path}", enable_long_queue_ids="yes")
    status, results = env.check()
    assert status == 1
    (p,) = problems(results)
    assert f"smtpd runs chrooted in {env.queue_dir} (smtp/inet in master.cf)" in p
    env.postfix.master_fields = env.postfix.master_fields.replace("smtp/inet/chroot = y", "smtp/inet/chroot = n")
    assert env.check()[0] == 0


def test_check_reports_master_cf_without_the_discard_service(env):
    env.healthy()
    env.postfix.main.update(smtpd_milters=OURS, enable_long_queue_ids="yes")
    assert env.check()[0] == 0
    env.postfix.master_fields = env.postfix.master_fields.replace("discard/unix/command = discard\n", "")
    status, results = env.check()
    assert status == 1
    (p,) = problems(results)
    assert "master.cf has no discard service running discard(8)" in p


def test_check_missing_main_cf_settings(env):
    env.healthy()
    env.postfix.main.update(smtpd_milters=OURS, milter_connect_macros="j v")
    status, results = env.check()
    assert status == 1
    (p,) = problems(results)
    assert "main.cf lacks mxhook's enable_long_queue_ids, milter_connect_macros" in p


def test_check_spool_unwritable_by_the_daemon_user(env, monkeypatch):
    env.healthy()
    wire(env)
    nobody = pwd.getpwnam("nobody").pw_uid
    monkeypatch.setattr(checksvc, "daemon_uids", lambda spec, spool_dir: [nobody])
    status, results = env.check()
    assert status == 1
    spool_problems = [r["message"] for r in results if r["check"] == "spool" and not r["ok"]]
    assert spool_problems[0].startswith(f"spool directory {env.spool_dir} (")
    assert "cannot be entered by nobody, who runs the daemons" in spool_problems[0]
    assert any(p.startswith(f"spool directory {env.spool_dir}/new (") and "cannot be written by nobody" in p
               and f"chown nobody:nogroup {env.spool_dir}/new" in p for p in spool_problems)
    assert any("rules database" in p and "is not writable by nobody" in p for p in problems(results))


def test_check_spool_open_to_everyone_and_missing_subdir(env):
    env.healthy()
    wire(env)
    os.chmod(env.spool_dir, 0o755)
    os.rmdir(os.path.join(env.spool_dir, "bad"))
    status, results = env.check()
    assert status == 1
    assert problems(results) == [
        f"spool directory {env.spool_dir} ({ME}:{_group()} 0755) is open to every user, but spooled "
        f"mail is private: chmod o-rwx {env.spool_dir}",
        f"spool directory {env.spool_dir}/bad does not exist: restart mxhook-milter (it creates "
        "tmp/, new/, bad/)",
    ]


def _group():
    import grp
    return grp.getgrgid(os.getegid()).gr_name


def test_check_databases(env):
    env.healthy()
    wire(env)
    os.chmod(env.state_db, 0o644)
    status, results = env.check()
    assert problems(results) == [
        f"state database {env.state_db} ({ME}:{_group()} 0644) is open to every user, but holds mail "
        f"and delivery logs: chmod o-rwx {env.state_db}"]
    os.chmod(env.state_db, 0o640)
    conn = sqlite3.connect(env.rules_db)
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    conn.close()
    status, results = env.check()
    assert problems(results) == [
        f"rules database {env.rules_db} has schema version {dbmod.SCHEMA_VERSION + 1}, newer than "
        f"this mxhook understands ({dbmod.SCHEMA_VERSION}): upgrade mxhook"]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(env.rules_db + suffix):
            os.unlink(env.rules_db + suffix)
    with open(env.rules_db, "wb") as fh:
        fh.write(b"this is not a database" * 100)
    status, results = env.check()
    (p,) = problems(results)
    assert p.startswith(f"rules database {env.rules_db} cannot be read: file is not a database")
    os.unlink(env.rules_db)
    os.unlink(env.state_db)
    status, results = env.check()
    assert status == 1
    # no rules.db yet is a fresh installation, not a fault; no state.db means no spooler
    assert results[1] == {"check": "rules_db", "ok": True, "message":
                          f"rules database {env.rules_db} does not exist yet: no domain is "
                          "permitted, so inbound mail is refused; `mxhook domain add DOMAIN` creates it"}
    assert problems(results) == [
        f"state database {env.state_db} does not exist: start mxhook-spooler (it creates it)"]


def test_check_says_restarting_the_spooler_upgrades_an_unversioned_state_db(env):
    """A state.db made before it had a schema version (tables, user_version 0) is older, not
    empty: the spooler migrates it when it starts."""
    env.healthy()
    wire(env)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(env.state_db + suffix):
            os.unlink(env.state_db + suffix)
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "statedb", "unversioned.sql")
    conn = sqlite3.connect(env.state_db)
    with open(fixture, encoding="utf-8") as fh:
        conn.executescript(fh.read())
    conn.close()
    os.chmod(env.state_db, 0o640)
    status, results = env.check()
    assert status == 1
    assert problems(results) == [
        f"state database {env.state_db} has schema version 0, older than "
        f"{statedb.SCHEMA_VERSION}: restarting mxhook-spooler upgrades it"]
    with StateStore(env.state_db):
        pass
    status, results = env.check()
    assert status == 0, problems(results)


def test_check_config_values_every_daemon_reads(env):
    env.healthy()
    wire(env)
    env.values["spooler"] = {"workers": "0", "max_payload_size": "lots"}
    env.values["logfollow"] = {"source": "syslog"}
    env.values["http"] = {"allow_networks": "10.0.0.1/8"}
    env.values["milter"]["log_level"] = "verbose"
    env.values["milter"]["unknown_domains"] = "drop"
    env.write_config()
    status, results = env.check()
    assert status == 1
    msgs = [r["message"] for r in results if r["check"] == "config"]
    assert all(not r["ok"] for r in results if r["check"] == "config")
    joined = "\n".join(msgs)
    for needle in ("[milter] unknown_domains = 'drop'", "[spooler] workers must be at least 1",
                   "[logfollow] source = 'syslog'", "did you mean 10.0.0.0/8",
                   "[milter] log_level = 'verbose'"):
        assert needle in joined, joined
    # the other checks still ran
    assert {r["check"] for r in results} == {"config", "rules_db", "state_db", "spool", "socket", "postfix",
                                             "milter", "spooler", "logfollow", "web", "track", "postfix_running",
                                             "logfollow_source", "local_submission"}


def test_check_unloadable_config_stops_early(env):
    with open(env.conf, "a") as fh:
        fh.write("[nonsense]\n")
    status, results = env.check()
    assert status == 1
    (r,) = results
    assert r["check"] == "config" and "unknown section [nonsense]" in r["message"]


def test_check_postfix_failing_otherwise(env):
    env.healthy()
    env.postfix.fail["postconf"] = (1, "postconf: fatal: bad things")
    status, results = env.check()
    assert status == 1
    assert results[-1]["message"] == (
        f"cannot read Postfix's configuration: postconf -c {env.postfix.dir} -h queue_directory "
        "failed: postconf: fatal: bad things")
    assert results[-1]["code"] == "postfix_unreadable"


# What Debian leaves after installing Postfix with "No configuration": no main.cf. Both commands
# say the same thing, and what to do.
NOT_CONFIGURED = ("Postfix is installed but not configured (no {}/main.cf): run `dpkg-reconfigure "
                  "postfix` first (\"Internet Site\"), then `mxhook postfix-config`")


def test_check_default_postfix_without_main_cf(env):
    env.healthy()
    (env.postfix.dir / "main.cf").unlink()
    res = env.run("check", "--json")
    assert res.exit_code == 1
    results = json.loads(res.stdout)
    assert results[-1] == {"check": "postfix", "ok": False, "code": "postfix_not_configured",
                           "message": NOT_CONFIGURED.format(env.postfix.dir)}
    text = env.run("check")
    assert f"PROBLEM postfix: {NOT_CONFIGURED.format(env.postfix.dir)}" in text.stdout.splitlines()


def test_postfix_config_default_postfix_without_main_cf_exits_1(env):
    (env.postfix.dir / "main.cf").unlink()
    for args in ((), ("--json",), ("--apply", "--yes")):
        res = env.run("postfix-config", *args)
        assert res.exit_code == 1, (args, res.stderr)
        assert res.stderr.splitlines() == [f"Error: {NOT_CONFIGURED.format(env.postfix.dir)}"]
        assert res.stdout == ""


def test_postfix_dir_without_main_cf_with_the_real_postconf(env, monkeypatch, tmp_path):
    """The real postconf on an empty configuration directory."""
    if not os.path.exists(postfixsvc.POSTCONF):
        pytest.skip("postconf is not installed")
    monkeypatch.setattr(postfixsvc, "run_command", REAL_RUN_COMMAND)
    empty = tmp_path / "empty-etc"
    empty.mkdir()
    expected = (f"{empty} has no main.cf: --postfix-dir must name the configuration directory of "
                "a configured Postfix instance")
    res = env.run("postfix-config", "--postfix-dir", str(empty))
    assert (res.exit_code, res.stderr.splitlines()) == (1, [f"Error: {expected}"])
    res = env.run("check", "--postfix-dir", str(empty), "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)[-1] == {"check": "postfix", "ok": False,
                                          "code": "postfix_not_configured", "message": expected}


def test_postfix_not_installed(env, monkeypatch):
    env.healthy()

    def no_such_program(argv, timeout=60.0):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    monkeypatch.setattr(postfixsvc, "run_command", no_such_program)
    expected = (f"Postfix is not installed ({postfixsvc.POSTCONF} not found): install it (`apt install "
                "postfix`, choosing \"Internet Site\"), then run `mxhook postfix-config`")
    status, results = env.check()
    assert status == 1
    assert results[-1] == {"check": "postfix", "ok": False, "code": "postfix_not_installed",
                           "message": expected}
    res = env.run("postfix-config")
    assert (res.exit_code, res.stderr.splitlines()) == (1, [f"Error: {expected}"])


# -- pure helpers ----------------------------------------------------------------------------------

def test_same_socket_under_two_names():
    q = "/var/spool/postfix"
    assert pc.same_socket("unix:mxhook/milter.sock", "unix:/var/spool/postfix/mxhook/milter.sock", q)
    assert not pc.same_socket("unix:mxhook/milter.sock", "unix:/run/mxhook/milter.sock", q)
    assert not pc.same_socket("inet:localhost:1", "inet:localhost:2", q)
    # an absolute name of our socket is replaced by the relative one, not doubled
    want = pc.desired({"queue_directory": q, "smtpd_milters": "inet:x:1, unix:/var/spool/postfix/mxhook/milter.sock"},
                      "unix:/var/spool/postfix/mxhook/milter.sock")
    assert want["smtpd_milters"] == "inet:x:1, " + OURS


def test_entry_options_and_master_parsing():
    assert pc.entry_options(OURS)["default_action"] == "tempfail"
    assert pc.entry_options("unix:x") == {}
    fields = pc.parse_master(
        "127.0.0.1:2525/inet/command = smtpd -o {smtpd_milters={ unix:/x, default_action=accept }}\n"
        "127.0.0.1:2525/inet/chroot = n\nsmtp/inet/command = smtpd\nsmtp/inet/chroot = y\n"
        "pickup/unix/command = pickup\npickup/unix/chroot = y\n")
    assert pc.smtpd_services(fields) == ["127.0.0.1:2525/inet", "smtp/inet"]
    assert pc.chrooted_smtpd(fields) == ["smtp/inet"]
    overrides = pc.parse_master("smtp/inet/smtpd_milters = { unix:/x, default_action=accept }\n")
    assert overrides == {"smtp/inet": {"smtpd_milters": "{ unix:/x, default_action=accept }"}}


def test_allows():
    st = os.stat_result((0o40750, 0, 0, 0, 1000, 1000, 0, 0, 0, 0))
    assert checksvc.allows(st, 1000, set(), 0o3)
    assert checksvc.allows(st, 2000, {1000}, 0o1) and not checksvc.allows(st, 2000, {1000}, 0o3)
    assert not checksvc.allows(st, 2000, set(), 0o1)
    assert checksvc.allows(st, 0, set(), 0o7)


# -- the real probe (root: it becomes another user) --------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="probe_socket changes uid: run as root")


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's tmp_path sits in a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="mxhook-probe-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def fake_milter(path):
    """A socket that answers the option negotiation like a milter, once."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn:
            size = struct.unpack(">I", conn.recv(4))[0]
            conn.recv(size)
            body = b"O" + struct.pack(">III", 6, 0, 0)
            conn.sendall(struct.pack(">I", len(body)) + body)
            conn.recv(16)

    threading.Thread(target=serve, daemon=True).start()
    return srv


@needs_root
def test_probe_connects_as_the_user_and_negotiates(open_dir):
    d = open_dir
    srv = fake_milter(str(d / "m.sock"))
    try:
        assert postfixsvc.probe_socket(str(d / "m.sock"), "postfix") is None
    finally:
        srv.close()


@needs_root
def test_probe_reports_what_postfix_would_meet(open_dir):
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    srv = fake_milter(str(closed / "m.sock"))
    try:
        assert postfixsvc.probe_socket(str(closed / "m.sock"), "postfix") == "connect: Permission denied [EACCES]"
        # root itself gets through: the probe really changed user
        assert postfixsvc.probe_socket(str(closed / "m.sock"), "root") is None
    finally:
        srv.close()
    stale = open_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    os.chmod(stale, 0o666)
    assert postfixsvc.probe_socket(str(stale), "postfix") == "connect: Connection refused [ECONNREFUSED]"
