"""mxhook.store.migrations: numbered steps, one transaction, the version in user_version."""
from __future__ import annotations

import grp
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest
import sqlite_utils

import mxhook
from mxhook import cli as climod
from mxhook import config
from mxhook.store import logs, migrations, rulesdb, statedb
from mxhook.store.statedb import StateStore
from tests.support.cli import separate_runner


def table(name):
    return lambda db: db.execute(f"CREATE TABLE {name} (x)")


@pytest.fixture()
def db(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "t.db"), isolation_level=None)
    yield sqlite_utils.Database(conn)
    conn.close()


def names(db):
    return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def test_steps_run_once_in_order(db):
    steps = ((1, table("a")), (2, table("b")))
    assert migrations.migrate(db, steps, name="t") == 0
    assert migrations.user_version(db.conn) == 2 and names(db) == ["a", "b"]
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrations.migrate(db, steps, name="t") == 2  # nothing left to do
    assert migrations.migrate(db, steps + ((3, table("c")),), name="t") == 2
    assert names(db) == ["a", "b", "c"] and migrations.user_version(db.conn) == 3


def test_a_failing_step_leaves_the_file_as_it_was(db):
    def broken(database):
        database.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        migrations.migrate(db, ((1, table("a")), (2, broken)), name="t")
    assert migrations.user_version(db.conn) == 0 and names(db) == []


def test_a_step_that_commits_is_caught(db):
    def commits(database):
        database.execute("CREATE TABLE a (x)")
        database.conn.execute("COMMIT")

    with pytest.raises(RuntimeError, match="step 1 ended"):
        migrations.migrate(db, ((1, commits),), name="t")


def test_newer_file_is_refused(db):
    db.conn.execute("PRAGMA user_version = 3")

    class Refused(Exception):
        pass

    with pytest.raises(Refused, match=r"t schema version 3 is newer than this mxhook understands \(2\)"):
        migrations.migrate(db, ((1, table("a")), (2, table("b"))), name="t", newer=Refused)
    assert names(db) == []


def test_steps_are_numbered_from_one(db):
    with pytest.raises(ValueError, match="1..n"):
        migrations.migrate(db, ((2, table("a")),), name="t")


# ---------------------------------------------------------------------------------------------
# Read-only opens never migrate: a reader who may not write the file (`mxhook log`, `mxhook
# status` by a user of the daemons' group) gets the file's data or a message saying what
# upgrades it, and the file stays byte for byte as it was.

STATE_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "statedb", "unversioned.sql")


def readonly(conn_path):
    return sqlite3.connect(f"file:{conn_path}?mode=ro", uri=True, isolation_level=None)


def test_check_readable_reads_the_version_and_writes_nothing(tmp_path):
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    steps = ((1, table("a")), (2, table("b")))
    ro = readonly(path)
    try:
        with pytest.raises(migrations.NotReadable,
                           match=r"^t is at schema version 1, older than this mxhook's 2: run the upgrader$"):
            migrations.check_readable(ro, path, steps, name="t", upgrade="run the upgrader")
        assert migrations.check_readable(ro, path, steps[:1], name="t", upgrade="-") == 1
        with pytest.raises(migrations.SchemaTooNew):
            migrations.check_readable(ro, path, (), name="t", upgrade="-")
    finally:
        ro.close()


def _old_state_db(tmp_path) -> str:
    """state.db as the spooler wrote it before the file had a schema version, made read-only."""
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    with open(STATE_FIXTURE, encoding="utf-8") as f:
        conn.executescript(f.read())
    conn.close()
    os.chmod(path, 0o440)
    return path


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _cli(tmp_path, *args):
    conf = tmp_path / "mxhook.conf"
    if not conf.exists():
        conf.write_text(config.render({"paths": {
            "state_db": str(tmp_path / "state.db"), "rules_db": str(tmp_path / "rules.db"),
            "spool_dir": str(tmp_path / "spool")}}))
    return separate_runner().invoke(climod.cli, ["--config", str(conf), *args])


def test_an_old_state_db_is_not_migrated_by_readers(tmp_path):
    path = _old_state_db(tmp_path)
    before = _digest(path)
    said = (rf"state database {re.escape(path)} is at schema version 0, older than this mxhook's "
            rf"{statedb.SCHEMA_VERSION}: start mxhook-spooler once to upgrade it")
    with pytest.raises(migrations.NotReadable, match=said):
        StateStore(path, readonly=True)
    res = _cli(tmp_path, "log", "inbound")
    assert res.exit_code == 1 and re.search(said, res.stderr), res.stderr
    report = json.loads(_cli(tmp_path, "status", "--json").stdout)
    assert report["state_db"]["error"] is None  # not damage
    assert any(re.fullmatch(said, p) for p in report["problems"]), report["problems"]
    assert "DAMAGED" not in _cli(tmp_path, "status").stdout
    rows = [r for r in json.loads(_cli(tmp_path, "check", "--json").stdout) if r["check"] == "state_db"]
    assert any("schema version 0, older than" in r["message"] for r in rows), rows
    assert _digest(path) == before and sorted(os.listdir(tmp_path)) == ["mxhook.conf", "state.db"]

    # what mxhook-spooler does when it starts: the readers read it from then on
    os.chmod(path, 0o640)
    StateStore(path).close()
    os.chmod(path, 0o440)
    upgraded = _digest(path)
    with StateStore(path, readonly=True) as st:
        assert [r["id"] for r in logs.inbound_log(st)] == ["d0001", "r0001-r1"]
    res = _cli(tmp_path, "log", "inbound")
    assert res.exit_code == 0 and "d0001" in res.stdout, res.stderr
    assert _digest(path) == upgraded


def test_an_old_rules_db_is_not_migrated_by_status(tmp_path):
    from tests.unit.test_rulesdb import make_v1_db

    path = str(tmp_path / "rules.db")
    make_v1_db(path)
    before = _digest(path)
    said = (rf"rules database {re.escape(path)} is at schema version 1, older than this mxhook's "
            rf"{rulesdb.SCHEMA_VERSION}: `mxhook domain list`, run by its owner, upgrades it")
    with pytest.raises(migrations.NotReadable, match=said):
        rulesdb.RulesStore(path, readonly=True)
    report = json.loads(_cli(tmp_path, "status", "--json").stdout)
    assert any(re.fullmatch(said, p) for p in report["problems"]), report["problems"]
    assert _digest(path) == before
    with rulesdb.RulesStore(path):  # a writer migrates it
        pass
    with rulesdb.RulesStore(path, readonly=True) as store:
        assert [r.name for r in store.list_rules()] == ["r1"]


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run a reader as another user")
def test_a_group_reader_without_write_access(tmp_path):
    """A user of the daemons' group: may read state.db (0640) and its directory (0750), write
    neither. The file is upgraded and in WAL mode, as mxhook-spooler leaves it."""
    top = tempfile.mkdtemp(prefix="mxhook-ro-")  # pytest's tmp_path is closed to other users
    try:
        os.chmod(top, 0o755)
        directory = os.path.join(top, "lib")
        os.mkdir(directory)
        path = os.path.join(directory, "state.db")
        StateStore(path).close()
        group = grp.getgrnam("nogroup").gr_gid
        os.chown(directory, 0, group)
        os.chmod(directory, 0o750)
        probe = ("import sys; from mxhook.store import logs, statedb, migrations\n"
                 "try:\n"
                 "    with statedb.StateStore(sys.argv[1], readonly=True) as st:\n"
                 "        print('read', logs.counts(st)['messages'])\n"
                 "except migrations.NotReadable as exc:\n"
                 "    print('refused', exc)\n")

        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mxhook.__file__)))
        can_run = subprocess.run([*NOBODY, sys.executable, "-c", "import mxhook.store.statedb"],
                                 capture_output=True, text=True, env=env, cwd="/", timeout=60)
        if can_run.returncode != 0:  # e.g. a checkout or venv under /root (0700)
            pytest.skip("nobody cannot run this checkout's Python here: "
                        + (can_run.stderr.strip().splitlines() or ["?"])[-1])

        def read_as_nobody() -> str:
            for p in os.listdir(directory):
                os.chown(os.path.join(directory, p), 0, group)
            res = subprocess.run([*NOBODY, sys.executable, "-c", probe, path], capture_output=True,
                                 text=True, env=env, cwd="/", timeout=60)
            assert res.returncode == 0, res.stderr
            return res.stdout.strip()

        # no daemon has it open: no -shm file, which SQLite would have to create
        said = read_as_nobody()
        assert said.startswith(f"refused state database {path} cannot be read by this user now"), said
        assert "is not writable for this user); run this as the daemons' user, or while they run" in said
        # the spooler has it open (its -shm file exists): read, and nothing written
        writer = sqlite3.connect(path)
        try:
            writer.execute("SELECT count(*) FROM messages").fetchone()
            assert read_as_nobody() == "read 0"
            writer.execute("PRAGMA user_version = 0")  # as an older mxhook left it
            assert read_as_nobody().startswith(f"refused state database {path} is at schema version 0")
        finally:
            writer.close()
    finally:
        shutil.rmtree(top)
