"""[logfollow] source = auto: which log the follower reads (paths and journald injected), what it
says at start-up, and one run against the machine's real journal when journald runs here."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from mxhook import config
from mxhook.postfix import logsource
from mxhook.postfix.logsource import choose_source, describe

LOG = "/var/log/mail.log"


def choose(source="auto", state=None, *, maillog="", existing=(), journal=False):
    return choose_source(source, LOG, state, maillog_file=lambda: maillog,
                         exists=lambda p: p in existing, journal=lambda: journal)


def test_postfix_maillog_file_comes_first():
    c = choose(maillog="/var/log/postfix.log", existing={"/var/log/postfix.log", LOG}, journal=True)
    assert (c.source, c.path, c.missing) == ("file", "/var/log/postfix.log", False)


def test_the_path_when_it_exists():
    c = choose(existing={LOG}, journal=True)
    assert (c.source, c.path) == ("file", LOG)


def test_stock_debian_12_logs_to_the_journal_only():
    c = choose(journal=True)
    assert c.source == "journald" and "does not exist and journald runs" in describe(c)


def test_nothing_to_read_is_said_loudly():
    c = choose()
    assert (c.source, c.path, c.missing) == ("file", LOG, True)
    assert f"{LOG} does not exist: no delivery events" in describe(c)


def test_a_saved_position_keeps_its_source():
    assert choose(state={"source": "journald", "cursor": "s=1"}, existing={LOG}).source == "journald"
    c = choose(state={"source": "file", "path": "/var/log/old.log"}, existing={"/var/log/old.log"},
               maillog="/var/log/postfix.log")
    assert c.path == "/var/log/old.log"
    # a saved file that is gone: chosen afresh
    assert choose(state={"source": "file", "path": "/gone.log"}, journal=True).source == "journald"


def test_explicit_sources_are_kept_and_a_missing_file_is_flagged():
    assert choose("journald", existing={LOG}).source == "journald"
    c = choose("file", journal=True)
    assert (c.source, c.missing) == ("file", True)


def test_start_up_warns_when_the_file_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(logsource, "JOURNAL_SOCKET_DIR", str(tmp_path / "no-journal"))
    monkeypatch.setattr(logsource, "POSTCONF", str(tmp_path / "no-postconf"))
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render({"paths": {"spool_dir": str(tmp_path / "spool")}, "logfollow": {
        "path": str(tmp_path / "mail.log"), "state_file": str(tmp_path / "pos"), "log": "stderr"}}))
    code = ("import sys; from mxhook.daemons import logfollow; from mxhook.postfix import logsource as l; "
            f"l.JOURNAL_SOCKET_DIR = {str(tmp_path / 'no-journal')!r}; "
            f"l.POSTCONF = {str(tmp_path / 'no-postconf')!r}; "
            f"sys.exit(logfollow.main(['--config', {str(conf)!r}, '--once']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "mail.log does not exist: no delivery events" in r.stderr


@pytest.mark.skipif(not (logsource.journald_running() and shutil.which("journalctl")),
                    reason="journald does not run on this machine (no /run/systemd/journal): "
                           "the real-journal run is skipped")
def test_auto_reads_the_real_journal(tmp_path):
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render({"paths": {"spool_dir": str(tmp_path / "spool")}, "logfollow": {
        "path": str(tmp_path / "absent.log"), "state_file": str(tmp_path / "pos"),
        "start_at": "end", "log": "stderr"}}))
    r = subprocess.run([sys.executable, "-m", "mxhook.daemons.logfollow", "--config", str(conf), "--once"],
                       capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert "following the journal" in r.stderr
    assert '"source": "journald"' in (tmp_path / "pos").read_text()
