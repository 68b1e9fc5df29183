"""Tracking settings per sending domain (rules.db, services/tracking.py, `mxhook tracking`), the
per-message header, and the key file's rotation."""
import os
import sqlite3
import stat

import pytest
from click.testing import CliRunner

from mxhook import config
from mxhook.cli import cli
from mxhook.model import keyring
from mxhook.services import tracking
from mxhook.services.keyfiles import KeyFile
from mxhook.services.errors import Invalid, NotFound
from mxhook.store import rulesdb
from mxhook.store.rulesdb import RulesStore, TrackingSettings


@pytest.fixture
def cfg(tmp_path):
    return config.from_dict({"paths": {"rules_db": str(tmp_path / "rules.db")},
                             "tracking": {"key_file": str(tmp_path / "keys" / "tracking.key")}})


def test_settings_start_from_opens_and_clicks_and_keep_what_is_not_given(cfg):
    t = tracking.set_domain(cfg, "Mail.Example.COM.", unsubscribe=True)
    assert (t["domain"], t["opens"], t["clicks"], t["text_links"], t["unsubscribe"], t["honeypot"]) == (
        "mail.example.com", True, True, False, True, False)
    t = tracking.set_domain(cfg, "mail.example.com", opens=False, clicks=None)
    assert (t["opens"], t["clicks"], t["unsubscribe"]) == (False, True, True)
    assert t["created"] <= t["updated"]
    assert [d["domain"] for d in tracking.list_all(cfg)] == ["mail.example.com"]
    assert tracking.get(cfg, "MAIL.example.com")["opens"] is False
    assert tracking.remove(cfg, "mail.example.com") == "mail.example.com"
    with pytest.raises(NotFound):
        tracking.get(cfg, "mail.example.com")
    with pytest.raises(NotFound):
        tracking.remove(cfg, "mail.example.com")


def test_internationalized_domain_is_stored_as_a_label_and_bad_names_are_refused(cfg):
    assert tracking.set_domain(cfg, "Bücher.example")["domain"] == "xn--bcher-kva.example"
    with pytest.raises(Invalid):
        tracking.set_domain(cfg, "alice@example.com")


def test_the_snapshot_carries_the_settings(cfg):
    tracking.set_domain(cfg, "a.example", clicks=False, honeypot=True)
    with RulesStore(cfg.rules_db) as store:
        snap = store.snapshot()
    assert snap.tracking["a.example"] == TrackingSettings(
        "a.example", opens=True, clicks=False, text_links=False, unsubscribe=False, honeypot=True,
        created=snap.tracking["a.example"].created, updated=snap.tracking["a.example"].updated)


def test_a_version_7_database_migrates_to_an_empty_tracking_table(tmp_path):
    path = str(tmp_path / "rules.db")
    with RulesStore(path) as store:
        store.add_domain("ours.example")
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE tracking")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    watcher = rulesdb.SnapshotWatcher(path, interval=60)  # the milter reads a version-7 file
    try:
        assert watcher.current.tracking == {} and watcher.current.domains == {"ours.example"}
    finally:
        watcher.stop()
    with RulesStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION
        assert store.list_tracking() == []
        assert store.set_tracking("ours.example", opens=False).opens is False


@pytest.mark.parametrize("value,expected", [
    ("opens, clicks", {"opens", "clicks"}),
    ("Opens,Text-Links;unsubscribe", {"opens", "text_links", "unsubscribe"}),
    (" none ", set()),
    ("clicks honeypot", {"clicks", "honeypot"}),
    ("everything", None),
    ("", None),
])
def test_header_values(value, expected):
    found = tracking.header_features(value)
    assert found == (None if expected is None else frozenset(expected))


def test_the_header_overrides_the_domain_and_keeps_its_honeypot():
    settings = TrackingSettings("a.example", opens=True, clicks=True, honeypot=True)
    assert tracking.features(settings, None) == {"opens", "clicks", "honeypot"}
    assert tracking.features(settings, "unsubscribe") == {"unsubscribe", "honeypot"}
    assert tracking.features(settings, "none") == frozenset()
    assert tracking.features(settings, "gibberish") == {"opens", "clicks", "honeypot"}
    assert tracking.features(None, "opens") == {"opens"}
    assert tracking.features(None, None) == frozenset()


def test_rotate_key_appends_newest_last_atomically_and_drop_old_keeps_one(cfg):
    path = cfg.value("tracking", "key_file")
    first = tracking.rotate_key(cfg)
    assert first["kept"] == [] and first["dropped"] == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    second = tracking.rotate_key(cfg)  # tracking keys never expire: every older one is kept
    third = tracking.rotate_key(cfg)
    keys = KeyFile(path).keys()
    assert [first["key_id"], second["key_id"], third["key_id"]] == [keyring.key_id(k) for k in keys]
    assert third["kept"] == [first["key_id"], second["key_id"]]
    inode = os.stat(path).st_ino
    fourth = tracking.rotate_key(cfg, drop_old=True)
    assert fourth["kept"] == [] and fourth["dropped"] == [first["key_id"], second["key_id"], third["key_id"]]
    assert [keyring.key_id(k) for k in KeyFile(path).keys()] == [fourth["key_id"]]
    assert os.stat(path).st_ino != inode  # replaced, never written in place
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert [f for f in os.listdir(os.path.dirname(path))] == ["tracking.key"]


def test_rotate_key_refuses_a_damaged_key_file(cfg):
    path = cfg.value("tracking", "key_file")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("not a key\n")
    with pytest.raises(Invalid):
        tracking.rotate_key(cfg)
    assert open(path).read() == "not a key\n"


def test_cli(cfg, tmp_path):
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render({"paths": {"rules_db": cfg.rules_db},
                                   "tracking": {"key_file": cfg.value("tracking", "key_file"),
                                                "public_url": "https://t.example.com"}}))
    run = CliRunner().invoke

    def ok(*args):
        result = run(cli, ["--config", str(conf), *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "opens, clicks, unsubscribe" in ok("tracking", "set", "a.example", "--unsubscribe")
    assert "clicks, unsubscribe" in ok("tracking", "set", "a.example", "--no-opens")
    assert "text-links" in ok("tracking", "set", "a.example", "--text-links", "--no-clicks")
    assert '"text_links": true' in ok("tracking", "list", "--json")
    assert "a.example" in ok("tracking", "list")
    assert "unsubscribe: yes" in ok("tracking", "show", "a.example")
    assert "Added key" in ok("tracking", "rotate-key")
    assert "Dropped (what they signed no longer verifies): " in ok("tracking", "rotate-key", "--drop-old")
    assert "Removed" in ok("tracking", "remove", "a.example")
    assert run(cli, ["--config", str(conf), "tracking", "show", "a.example"]).exit_code == 1  # not found
    assert run(cli, ["--config", str(conf), "tracking", "set", "-"]).exit_code == 2  # not a domain
    with open(cfg.value("tracking", "key_file"), "a") as f:
        f.write("not a key\n")
    assert run(cli, ["--config", str(conf), "tracking", "rotate-key"]).exit_code == 1  # a broken file
