"""`mxhook token`, `mxhook user`, `mxhook audit` and access.db (services/access.py)."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from tests.support.cli import separate_runner
from tests.support.services import make_config

from mxhook import config as configmod
from mxhook.cli import cli
from mxhook.services import access
from mxhook.services.errors import Conflict, Invalid, NotFound


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "mxhook.conf"
    path.write_text(configmod.render({"web": {"access_db": str(tmp_path / "access.db")}}))
    return str(path)


def run(conf, *args, input=None, code=0):
    result = separate_runner().invoke(cli, ["--config", conf, *args], input=input)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def test_token_is_printed_once_and_stored_as_its_sha256(conf, tmp_path):
    added = run(conf, "token", "add", "ci")
    token = added.stdout.strip()
    assert token.startswith("mxh_") and len(token) == 4 + 43  # 32 bytes, URL-safe base64
    assert "shown only now" in added.stderr
    db = b"".join(p.read_bytes() for p in tmp_path.glob("access.db*"))
    assert token.encode() not in db and hashlib.sha256(token.encode()).hexdigest().encode() in db
    assert stat.S_IMODE(os.stat(tmp_path / "access.db").st_mode) == 0o640
    listed = json.loads(run(conf, "token", "list", "--json").stdout)
    assert [(t["name"], t["read_only"]) for t in listed] == [("ci", False)]
    assert token not in run(conf, "token", "list").stdout
    run(conf, "token", "add", "ci", code=1)  # the name is taken
    run(conf, "token", "add", "ro", "--read-only")
    cfg = configmod.load(conf)
    assert access.authenticate_token(cfg, token)["name"] == "ci"
    assert access.authenticate_token(cfg, token + "x") is None
    run(conf, "token", "remove", "ci")
    assert access.authenticate_token(cfg, token) is None
    run(conf, "token", "remove", "ci", code=1)  # not found


def test_users_have_scrypt_passwords(conf):
    run(conf, "user", "add", "alice", input="correct horse\ncorrect horse\n")
    cfg = configmod.load(conf)
    assert access.authenticate_user(cfg, "alice", "correct horse")
    assert not access.authenticate_user(cfg, "alice", "wrong horse")
    assert not access.authenticate_user(cfg, "nobody", "correct horse")
    run(conf, "user", "passwd", "alice", input="battery staple\nbattery staple\n")
    assert access.authenticate_user(cfg, "alice", "battery staple")
    assert not access.authenticate_user(cfg, "alice", "correct horse")
    assert [u["name"] for u in json.loads(run(conf, "user", "list", "--json").stdout)] == ["alice"]
    run(conf, "user", "add", "bob", input="short\nshort\n", code=2)
    run(conf, "user", "remove", "alice")
    assert "No console users" in run(conf, "user", "list").stdout


def test_password_records_are_salted_scrypt():
    one, two = access.hash_password("same password"), access.hash_password("same password")
    assert one.startswith("scrypt$32768$8$1$") and one != two
    assert access.check_password("same password", one) and access.check_password("same password", two)
    assert not access.check_password("same password", "pbkdf2$x") and not access.check_password("x", "junk")


def test_service_refusals(tmp_path):
    cfg = make_config(tmp_path, web={"access_db": str(tmp_path / "a.db")})
    assert access.list_tokens(cfg) == [] and access.audit(cfg) == []
    with pytest.raises(Invalid):
        access.add_token(cfg, "no spaces")
    access.add_token(cfg, "t")
    with pytest.raises(Conflict):
        access.add_token(cfg, "t")
    with pytest.raises(NotFound):
        access.remove_user(cfg, "nobody")


def test_audit_lists_newest_first(conf):
    cfg = configmod.load(conf)
    for i in range(3):
        access.record(cfg, "token:ci", "rule.add", f"r{i}", {"priority": i}, "127.0.0.1")
    rows = json.loads(run(conf, "audit", "--json", "--limit", "2").stdout)
    assert [(r["target"], r["detail"]) for r in rows] == [("r2", {"priority": 2}), ("r1", {"priority": 1})]
    table = run(conf, "audit").stdout
    assert "token:ci" in table and "rule.add" in table


def test_user_add_reads_the_password_from_a_file_or_stdin_and_can_be_read_only(conf, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from a file 1\nsecond line ignored\n")
    added = run(conf, "user", "add", "carol", "--password-file", str(secret))
    assert added.stdout == "Added user carol\n" and "Password" not in added.output
    ro = run(conf, "user", "add", "rita", "--read-only", "--password-file", "-", input="from stdin 2\r\n")
    assert ro.stdout == "Added read-only user rita\n"
    cfg = configmod.load(conf)
    assert access.authenticate_user(cfg, "carol", "from a file 1")
    assert access.authenticate_user(cfg, "rita", "from stdin 2")
    run(conf, "user", "passwd", "carol", "--password-file", "-", input="changed pass 3\n")
    assert access.authenticate_user(cfg, "carol", "changed pass 3")
    listed = json.loads(run(conf, "user", "list", "--json").stdout)
    assert [(u["name"], u["read_only"]) for u in listed] == [("carol", False), ("rita", True)]
    table = run(conf, "user", "list").stdout
    assert "READ-ONLY" in table
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(("carol", "rita"))] == [
        ["carol", "no"], ["rita", "yes"]]
    run(conf, "user", "add", "dave", "--password-file", "-", input="short\n", code=2)


def test_an_access_db_of_schema_1_gets_the_read_only_column(tmp_path):
    import sqlite3

    import sqlite_utils

    from mxhook.store import access as accessdb
    from mxhook.store import migrations

    path = str(tmp_path / "a.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(sqlite_utils.Database(conn), accessdb._MIGRATIONS[:1], name="access database")
    conn.execute("INSERT INTO users (name, password, created, updated) VALUES ('old', 'x', 't', 't')")
    conn.close()
    cfg = make_config(tmp_path, web={"access_db": path})
    assert access.list_users(cfg) == [{"name": "old", "read_only": False, "created": "t", "updated": "t"}]
