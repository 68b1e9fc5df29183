"""`mxhook check` sees the outages it used to miss: Postfix stopped, a log follower with no log
to read, mxhook in non_smtpd_milters (the opendkim recipe `$smtpd_milters`), and a non-root
user meeting unreadable files (a line each, the other checks go on)."""
from __future__ import annotations

import json
import os

import pytest

from mxhook import config
from tests.unit.test_admin import Env, problems, wire
from tests.support.nobody import reachable_dir, run_cli_as_nobody  # noqa: F401 (a fixture)


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = Env(tmp_path, monkeypatch)
    yield e
    e.close()


def by_check(results, name):
    return [r for r in results if r["check"] == name]


def test_postfix_stopped_is_a_problem(env):
    env.healthy()
    wire(env)
    env.postfix.running = False
    status, results = env.check()
    assert status == 1
    [r] = by_check(results, "postfix_running")
    assert not r["ok"] and r["code"] == "postfix_stopped"
    assert r["message"].startswith(f"Postfix is not running (`postfix -c {env.postfix.dir} status`")


def test_a_log_file_that_does_not_exist_is_a_problem(env, monkeypatch):
    from mxhook.postfix import logsource

    monkeypatch.setattr(logsource, "JOURNAL_SOCKET_DIR", str(env.tmp / "no-journal"))
    env.healthy()
    wire(env)
    os.unlink(env.tmp / "mail.log")
    status, results = env.check()
    assert status == 1
    [r] = by_check(results, "logfollow_source")
    assert r["code"] == "log_source_missing" and "mail.log does not exist: no delivery events" in r["message"]
    # journald runs: auto follows the journal, nothing to say
    (env.tmp / "journal").mkdir()
    monkeypatch.setattr(logsource, "JOURNAL_SOCKET_DIR", str(env.tmp / "journal"))
    status, results = env.check()
    [r] = by_check(results, "logfollow_source")
    assert r["ok"] and r["message"].startswith("mxhook-logfollow reads the journal")
    # Postfix's own maillog_file comes first
    env.postfix.main["maillog_file"] = str(env.tmp / "postfix.log")
    (env.tmp / "postfix.log").write_text("")
    [r] = by_check(env.check()[1], "logfollow_source")
    assert r["ok"] and f"{env.tmp}/postfix.log (auto: Postfix's maillog_file)" in r["message"]


def test_non_smtpd_milters_through_smtpd_milters_is_seen(env):
    env.healthy()
    wire(env)
    [r] = by_check(env.check()[1], "local_submission")
    assert r["ok"] and r["message"].startswith("non_smtpd_milters does not name mxhook")
    env.postfix.main["non_smtpd_milters"] = "$smtpd_milters"  # the opendkim recipe
    status, results = env.check()
    assert status == 0, problems(results)
    [r] = by_check(results, "local_submission")
    assert r["message"].startswith("non_smtpd_milters (through $smtpd_milters) names mxhook's milter")
    env.postfix.main["non_smtpd_milters"] = "unix:mxhook/milter.sock"  # milter_default_action
    env.postfix.main["milter_default_action"] = "accept"
    [r] = by_check(env.check()[1], "local_submission")
    assert not r["ok"] and "default_action accept" in r["message"]


# ---------------------------------------------------------------------------------------------
# As a user who may not read mxhook's files

def test_check_as_nobody_reports_unreadable_files_and_goes_on(reachable_dir):
    tmp = reachable_dir
    lib, spool_dir = tmp / "lib", tmp / "spool"
    lib.mkdir(mode=0o700)
    spool_dir.mkdir(mode=0o700)
    (lib / "rules.db").write_bytes(b"")
    (lib / "state.db").write_bytes(b"")
    (lib / "logfollow.state").write_text("{}")
    (tmp / "mail.log").write_text("")
    conf = tmp / "mxhook.conf"
    conf.write_text(config.render({
        "paths": {"rules_db": f"{lib}/rules.db", "state_db": f"{lib}/state.db", "spool_dir": str(spool_dir)},
        "milter": {"socket": f"unix:{tmp}/milter.sock"},
        "logfollow": {"state_file": f"{lib}/logfollow.state", "path": str(tmp / "mail.log")},
        "web": {"access_db": f"{lib}/access.db"}}))
    os.chmod(conf, 0o644)
    proc = run_cli_as_nobody("--config", str(conf), "check", "--json",
                             "--postfix-dir", str(tmp / "no-postfix"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    results = json.loads(proc.stdout)
    checks = [r["check"] for r in results]
    for name in ("rules_db", "state_db", "spool", "milter", "spooler", "logfollow", "postfix"):
        assert name in checks, (name, results)
    # without a Postfix to read, "not configured" is the one Postfix line: running, log source
    # and milter lists follow from it
    assert not {"postfix_running", "logfollow_source", "local_submission"} & set(checks)
    text = "\n".join(r["message"] for r in results)
    assert "cannot be reached by this user" in text or "cannot be read by this user" in text
    for name in ("rules_db", "state_db", "spool"):
        [r] = by_check(results, name)
        assert not r["ok"] and r["code"] == "permission_denied", r
        assert "by this user" in r["message"] and "member of group mxhook" in r["message"]
