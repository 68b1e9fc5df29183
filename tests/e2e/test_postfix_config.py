"""`mxhook postfix-config` and `mxhook check` against a real private Postfix whose main.cf does
not know mxhook yet: the wiring done by our command is what makes mail reach the webhook, and
`check` sees each way it can break."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

from mxhook.postfix import postconf as pc
from tests.support.postfix import POSTCONF, make_message

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
HELLO = "hello@ours.example"
OURS = "{ unix:mxhook/milter.sock, " + pc.MILTER_OPTIONS + " }"

LAUNCH = """
from mxhook.cli import main
main()
"""


def mxhook(st, *args, status=0):
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "--config", st.cfg.path, *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == status, (
        f"mxhook {' '.join(args)}: exit {proc.returncode}, wanted {status}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n{st.diagnostics()}")
    return proc


def problems(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("PROBLEM")]


def main_cf(st) -> str:
    with open(os.path.join(st.postfix.config_dir, "main.cf")) as fh:
        return fh.read()


def as_packaged(st) -> None:
    """The harness's daemons run as root with umask 022; make the spool and state.db as private
    as the package makes them (directories 0750, UMask=0007), so `check` starts from healthy."""
    os.chmod(st.cfg.spool_dir, 0o750)
    os.chmod(st.cfg.state_db, 0o640)


def test_postfix_config_wires_a_private_postfix_and_check_sees_each_breakage(make_stack):
    st = make_stack(postfix_main_cf={"smtpd_milters": ""})
    etc = st.postfix.config_dir
    st.add_rule("hello", "/hook", "--when", r"To~^hello@ours\.example$")
    as_packaged(st)

    # Before: Postfix does not ask mxhook; mail to a domain mxhook would refuse is relayed.
    assert "milter.sock" not in main_cf(st)
    res = st.send(SENDER, ["someone@elsewhere.example"], make_message(to="someone@elsewhere.example"))
    assert res.accepted, res
    proc = mxhook(st, "check", "--postfix-dir", etc, status=1)
    assert problems(proc) == [
        f"PROBLEM postfix: {etc}: Postfix's smtpd_milters does not name mxhook's socket "
        "unix:mxhook/milter.sock: run `mxhook postfix-config --apply`, then `postfix reload`",
        f"PROBLEM postfix: {etc}: main.cf lacks mxhook's enable_long_queue_ids: run `mxhook "
        "postfix-config` to see the commands (--apply runs them)",
    ]

    # The printed commands name this instance and the socket relative to its queue directory.
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc)
    assert f"postconf -c {etc} -e 'smtpd_milters = {OURS}'" in proc.stdout.splitlines()
    assert "milter.sock" not in main_cf(st)

    # Apply (without --reload: Postfix is reloaded by the harness below).
    before = main_cf(st)
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--apply", "--yes")
    backups = [f for f in os.listdir(etc) if f.startswith("main.cf.mxhook-")]
    assert len(backups) == 1, os.listdir(etc)
    with open(os.path.join(etc, backups[0])) as fh:
        assert fh.read() == before
    assert "user postfix connects and the milter answers" in proc.stdout
    assert f"Not reloaded: run `postfix -c {etc} reload`" in proc.stdout
    assert f"To roll back: cp -p {etc}/{backups[0]} {etc}/main.cf && postfix -c {etc} reload" in proc.stdout
    got = {name: subprocess.run([POSTCONF, "-c", etc, "-h", name], capture_output=True, text=True,
                                check=True).stdout.strip()
           for name in ("smtpd_milters", "enable_long_queue_ids")}
    assert got == {"smtpd_milters": OURS, "enable_long_queue_ids": "yes"}
    st.postfix._postfix("reload")

    # After: the milter decides. Unknown domain refused in the session, the rule's mail posted.
    res = st.send(SENDER, ["someone@elsewhere.example"], make_message(to="someone@elsewhere.example"))
    assert res.stage == "RCPT" and res.code == 550, res
    res = st.send(SENDER, [HELLO], make_message(to=HELLO, subject="wired by postfix-config"))
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    doc = req.json()
    assert doc["rule"] == "hello" and doc["envelope"]["recipients"] == [HELLO]
    assert doc["message"]["subject"] == "wired by postfix-config"
    assert doc["envelope"]["queue_id"] == res.queue_id and len(res.queue_id) > 12  # long queue ids

    as_packaged(st)  # the spooler may have made new files meanwhile
    proc = mxhook(st, "check", "--postfix-dir", etc)
    assert problems(proc) == []
    assert proc.stdout.splitlines()[-1] == "everything checked is fine (14 checks)"

    # 1. smtpd_milters without mxhook
    subprocess.run([POSTCONF, "-c", etc, "-X", "smtpd_milters"], check=True)
    proc = mxhook(st, "check", "--postfix-dir", etc, status=1)
    assert problems(proc) == [
        f"PROBLEM postfix: {etc}: Postfix's smtpd_milters does not name mxhook's socket "
        "unix:mxhook/milter.sock: run `mxhook postfix-config --apply`, then `postfix reload`"]
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--apply", "--yes", "--reload")
    assert "Reloaded Postfix" in proc.stdout
    mxhook(st, "check", "--postfix-dir", etc)

    # 2. a spool directory the daemon user cannot write. The harness runs the daemons as root,
    # who may write anywhere; so give their files to `nobody`, as if the daemons ran as nobody
    # (check takes the owner of the spool directory for the daemons' user), and take the write
    # permission off new/.
    nobody = pwd.getpwnam("nobody")
    new_dir = os.path.join(st.cfg.spool_dir, "new")
    owned = [st.cfg.spool_dir] + [os.path.join(st.cfg.spool_dir, d) for d in ("tmp", "new", "bad")]
    owned += [p + suffix for p in (st.cfg.rules_db, st.cfg.state_db) for suffix in ("", "-wal", "-shm")
              if os.path.exists(p + suffix)]
    owned.append(st.cfg.workdir)
    for path in owned:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(new_dir, 0o550)
    try:
        proc = mxhook(st, "check", "--postfix-dir", etc, status=1)
        assert problems(proc) == [
            f"PROBLEM spool: spool directory {new_dir} (nobody:nogroup 0550) cannot be written by "
            f"nobody, who runs the daemons: chown nobody:nogroup {new_dir} && chmod 0750 {new_dir}"]
    finally:
        for path in owned:
            os.chown(path, 0, 0)
        os.chmod(new_dir, 0o750)
    mxhook(st, "check", "--postfix-dir", etc)

    # 3. the milter is gone: check says so, and Postfix tempfails (default_action=tempfail,
    # written by postfix-config) instead of accepting unspooled mail.
    st.milter.stop()
    proc = mxhook(st, "check", "--postfix-dir", etc, status=1)
    socket_path = st.cfg.socket_path
    down, line = problems(proc)
    assert down.startswith(f"PROBLEM milter: mxhook-milter is DOWN: {st.cfg.socket_path}: connect:"), down
    assert line in (
        f"PROBLEM socket: milter socket {socket_path} does not exist: is mxhook-milter running?",
        f"PROBLEM socket: user postfix cannot use the milter socket {socket_path}: connect: "
        "Connection refused [ECONNREFUSED]: nothing listens there (stale socket); is mxhook-milter "
        "running?",
    ), proc.stdout
    res = st.send(SENDER, [HELLO], make_message(to=HELLO))
    assert not res.accepted and 400 <= (res.code or 0) < 500, res
    st.milter.start()
    mxhook(st, "check", "--postfix-dir", etc)

    # 4. Unwired before mxhook goes: with the milter stopped, mail flows again (not 4xx);
    # another milter in the list is kept.
    other = "inet:127.0.0.1:1"
    subprocess.run([POSTCONF, "-c", etc, "-e", f"non_smtpd_milters = {other}, {OURS}"], check=True)
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--remove")
    assert [line for line in proc.stdout.splitlines() if line.startswith("postconf ")] == [
        f"postconf -c {etc} -e 'smtpd_milters = '",
        f"postconf -c {etc} -e 'non_smtpd_milters = {other}'"], proc.stdout
    st.milter.stop()
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--remove", "--apply", "--yes", "--reload")
    assert "smtpd no longer uses the milter" in proc.stdout, proc.stdout
    assert "milter.sock" not in main_cf(st)
    res = st.send(SENDER, [HELLO], make_message(to=HELLO))
    assert res.accepted, res
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--remove", "--apply", "--yes")
    assert "does not name mxhook's milter" in proc.stdout
    st.milter.start()

    # 5. Postfix stopped: the reload fails, and says why (postfix-script tells only the log)
    st.postfix.stop()
    proc = mxhook(st, "postfix-config", "--postfix-dir", etc, "--apply", "--yes", "--reload",
                  status=1)
    out = proc.stdout + proc.stderr
    # Postfix 3.10 (Debian 13) says it on stderr itself; before, postfix-script tells only the log
    # and mxhook asks `postfix status`
    assert (f"postfix -c {etc} reload failed: exit status 1: Postfix is not running "
            f"(`postfix -c {etc} status`): start it" in out
            or f"postfix -c {etc} reload failed: postfix/postlog: fatal: the Postfix mail system is "
               "not running" in out), out
