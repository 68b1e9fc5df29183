"""Suppressions: block-list entries scoped to a sending domain (unsubscribes, complaints) beside
the ones for every domain (hard bounces, the admin's), in rules.db and for the milter's reader."""
from __future__ import annotations

import sqlite3

import pytest

from mxhook.model.rules import RuleError
from mxhook.store import rulesdb


@pytest.fixture
def store(tmp_path):
    with rulesdb.RulesStore(str(tmp_path / "rules.db")) as s:
        yield s


def test_scoped_entries_beside_one_for_every_domain(store, tmp_path):
    assert store.block_add("carol@else.example", reason="unsubscribed", source="unsubscribe",
                           scope="Shop.Example.")
    assert store.block_add("carol@else.example", reason="spam report", source="complaint",
                           scope="news.example")
    assert not store.block_add("carol@else.example", reason="again", source="unsubscribe",
                               scope="shop.example")
    assert [(r["scope"], r["source"]) for r in store.block_list()] == [
        ("shop.example", "unsubscribe"), ("news.example", "complaint")]
    assert store.is_blocked("carol@else.example", "shop.example")
    assert not store.is_blocked("carol@else.example", "other.example")
    assert not store.is_blocked("carol@else.example")
    reader = rulesdb.BlocklistReader(str(tmp_path / "rules.db"))
    assert reader.find("Carol@Else.Example", "shop.example") == ("unsubscribe", "unsubscribed")
    assert reader.find("carol@else.example", "other.example") is None
    store.block_add("carol@else.example", reason="hard bounce", source="bounce", event_id="e1")
    # the entry for every domain answers first
    assert reader.find("carol@else.example", "shop.example") == ("bounce", "hard bounce")
    assert reader.find("carol@else.example", "other.example") == ("bounce", "hard bounce")
    assert store.block_get("carol@else.example")["event_id"] == "e1"
    assert store.block_get("carol@else.example", "news.example")["source"] == "complaint"
    reader.close()


def test_remove_by_scope_and_source(store):
    store.block_add("carol@else.example", reason=None, source="complaint", scope="shop.example")
    store.block_add("dan@else.example", reason=None, source="unsubscribe", scope="shop.example")
    store.block_add("dan@else.example", reason=None, source="bounce")
    # a resubscribe takes only an unsubscribe away, never a complaint
    assert store.block_remove("carol@else.example", scope="shop.example", sources=("unsubscribe",)) == 0
    assert store.block_remove("dan@else.example", scope="shop.example", sources=("unsubscribe",)) == 1
    assert [r["source"] for r in store.block_list(address="dan@else.example")] == ["bounce"]
    assert store.block_remove("carol@else.example") == 1  # every entry of the address


@pytest.mark.parametrize("bad", ["", "a@b.example", "no spaces.example", "-x-.example"])
def test_a_scope_is_a_domain_or_all(store, bad):
    with pytest.raises(RuleError):
        store.block_add("carol@else.example", reason=None, source="unsubscribe", scope=bad)
    assert rulesdb.block_scope("all") == rulesdb.block_scope("*") == "*"
    assert rulesdb.block_scope("B\u00fccher.example") == "xn--bcher-kva.example"


def test_migration_keeps_entries_for_every_domain(tmp_path):
    path = str(tmp_path / "rules.db")
    with rulesdb.RulesStore(path) as s:
        s.block_add("gone@else.example", reason="5.1.1", source="bounce", event_id="e9")
        s.conn.execute("DROP TABLE blocklist")
        s.conn.execute("CREATE TABLE blocklist (address TEXT PRIMARY KEY NOT NULL, reason TEXT,"
                       " dsn TEXT, source TEXT NOT NULL, event_id TEXT, created TEXT NOT NULL)")
        s.conn.execute("INSERT INTO blocklist VALUES ('gone@else.example', '5.1.1', '5.1.1',"
                       " 'bounce', 'e9', '2026-12-01T00:00:00.000000Z')")
        s.conn.execute("PRAGMA user_version = 7")
    with rulesdb.RulesStore(path) as s:
        [row] = s.block_list()
        assert (row["address"], row["scope"], row["source"], row["event_id"]) == (
            "gone@else.example", "*", "bounce", "e9")
        assert s.block_add("gone@else.example", reason=None, source="unsubscribe", scope="shop.example")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == rulesdb.SCHEMA_VERSION


def test_services_and_cli_show_and_remove_suppressions(tmp_path):
    from click.testing import CliRunner

    from mxhook import spool
    from mxhook import cli as climod
    from mxhook.services import blocks
    from mxhook.services.errors import Conflict, NotFound
    from tests.support.services import make_config

    cfg = make_config(tmp_path)
    spool.ensure_dirs(cfg.spool_dir)
    conf = tmp_path / "mxhook.conf"
    conf.write_text(f"[paths]\nrules_db = {cfg.rules_db}\nstate_db = {cfg.state_db}\n"
                    f"spool_dir = {cfg.spool_dir}\n")
    blocks.add(cfg, "carol@else.example", scope="shop.example", reason="asked by phone")
    blocks.add(cfg, "carol@else.example")
    with pytest.raises(Conflict, match="for shop.example"):
        blocks.add(cfg, "carol@else.example", scope="Shop.Example")
    assert blocks.search(cfg, "carol@else.example")["scope"] == "*"  # the entry for every domain
    with pytest.raises(NotFound, match="for news.example"):
        blocks.remove(cfg, "carol@else.example", scope="news.example")
    out = CliRunner().invoke(climod.cli, ["--config", str(conf), "block", "list"])
    assert out.exit_code == 0, out.output
    assert "SCOPE" in out.output and "shop.example" in out.output and " all " in out.output
    out = CliRunner().invoke(climod.cli, ["--config", str(conf), "block", "remove", "carol@else.example",
                                        "--scope", "shop.example"])
    assert out.exit_code == 0, out.output
    assert [r["scope"] for r in blocks.list_all(cfg)] == ["*"]
