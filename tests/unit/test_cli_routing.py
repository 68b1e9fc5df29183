"""`mxhook domain` and `mxhook rule` for routing (issue 17): --unmatched, --reject-text,
--continue, --include-raw, and `rule test` naming every rule that takes a recipient."""
from __future__ import annotations

import sqlite3

import pytest

from mxhook.store import rulesdb
from tests.unit.test_cli import Env
from tests.unit.test_rulesdb import make_v5_db

MESSAGE = b"From: Alice <alice@sender.example>\r\nTo: support@ours.example\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_domain_unmatched_and_reject_text(env):
    out = env.ok("domain", "add", "ours.example", "--unmatched", "pass", "--reject-text", "No such mailbox here").stdout
    assert "passed to Postfix; its reject text applies with --unmatched reject" in out
    [d] = env.json("domain", "list", "--json")
    assert (d["unmatched"], d["reject_text"]) == ("pass", "No such mailbox here")
    assert "550 5.7.1 No such mailbox here" in env.ok("domain", "set", "ours.example", "--unmatched", "reject").stdout
    env.ok("domain", "set", "ours.example", "--unmatched", "reject", "--reject-text", "")
    [d] = env.json("domain", "list", "--json")
    assert (d["unmatched"], d["reject_text"], d["log_denied"]) == ("reject", None, True)
    env.fails("domain", "set", "ours.example", "--unmatched", "bounce", match="invalid value")
    env.fails("domain", "set", "ours.example", match="at least one")


@pytest.mark.parametrize("text,match", [
    ("line\r\nbreak", "not allowed"), ("caf\u00e9", "not allowed"), ("100% sure", "'%'"),
    ("x" * 501, "at most 500"), (" padded", "leading or trailing"),
])
def test_reject_texts_are_smtp_safe(env, text, match):
    env.ok("domain", "add", "ours.example")
    env.fails("domain", "set", "ours.example", "--reject-text", text, match=match)
    env.fails("domain", "add", "other.example", "--reject-text", text, match=match)
    env.fails("rule", "add", "r", "--url", "https://app.example.net/in", "--when", "To~^a@",
              "--reject-text", text, match=match)


def test_the_longest_reject_text_fits_the_reply_line(env):
    env.ok("domain", "add", "ours.example", "--reject-text", "x" * 500)
    assert len(b"550 5.7.1 " + b"x" * 500 + b"\r\n") == 512


def test_rule_continue_include_raw_and_reject_text(env):
    env.ok("domain", "add", "ours.example")
    env.ok("rule", "add", "archive", "--url", "https://archive.example.net/in", "--when", "To~@ours",
           "--continue", "--include-raw", "--priority", "1")
    env.ok("rule", "add", "app", "--url", "https://app.example.net/in", "--when", "Recipient~^support@",
           "--when", "Subject~.", "--discard", "--priority", "2", "--reject-text", "Support takes tickets only")
    shown = env.json("rule", "show", "archive", "--json")
    assert (shown["continue"], shown["include_raw"], shown["reject_text"]) == (True, True, None)
    assert "offered to the rules after it too" in env.ok("rule", "show", "archive").stdout
    assert "+continue +raw" in env.ok("rule", "list").stdout
    env.ok("rule", "edit", "archive", "--no-continue", "--no-include-raw", "--reject-text", "Go away")
    shown = env.json("rule", "show", "archive", "--json")
    assert (shown["continue"], shown["include_raw"], shown["reject_text"]) == (False, False, "Go away")
    env.ok("rule", "edit", "archive", "--continue", "--reject-text", "")
    assert env.json("rule", "show", "archive", "--json")["reject_text"] is None
    env.fails("rule", "add", "rawraw", "--url", "https://x.example.net/in", "--when", "To~^a@",
              "--format", "raw", "--include-raw", match="--include-raw")
    env.fails("rule", "add", "pm", "--url", "https://x.example.net/in", "--when", "To~^a@",
              "--dialect", "postmark", "--include-raw", match="--include-raw")
    msg = env.dir / "m.eml"
    msg.write_bytes(MESSAGE)
    res = env.json("rule", "test", str(msg), "--rcpt", "support+t1@ours.example", "--json")
    assert [t["rule"] for t in res["recipients"][0]["taken_by"]] == ["archive", "app"]
    text = env.ok("rule", "test", str(msg), "--rcpt", "support+t1@ours.example").stdout
    assert "by rule archive → json to https://archive.example.net/in; rule app" in text
    assert "takes it too (after --continue)" in text


def test_rules_db_from_schema_6_upgrades_with_routing_defaults(tmp_path):
    path = str(tmp_path / "rules.db")
    make_v5_db(path)
    with rulesdb.RulesStore(path) as store:
        rules = store.list_rules()
        assert rules and all(not r.continue_matching and not r.include_raw and r.reject_text is None
                             for r in rules)
        assert store.list_domains()[0]["unmatched"] == "reject"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 8


def test_snapshot_carries_pass_domains_reject_texts_and_the_delimiter(tmp_path):
    with rulesdb.RulesStore(str(tmp_path / "rules.db")) as store:
        store.add_domain("ours.example", unmatched="pass", reject_text="Not here")
        store.add_domain("other.example")
        snap = store.snapshot(recipient_delimiter="-")
    assert snap.pass_unmatched == frozenset({"ours.example"})
    assert snap.reject_texts == {"ours.example": "Not here"}
    assert snap.ruleset.recipient_delimiter == "-"


def test_rule_test_payload_prints_each_deliverys_body(env):
    import json
    env.ok("domain", "add", "ours.example")
    env.ok("rule", "add", "archive", "--url", "https://archive.example.net/in", "--when", "To~@ours",
           "--continue", "--include-raw", "--priority", "1")
    env.ok("rule", "add", "app", "--url", "https://app.example.net/in", "--when", "Recipient~^support@",
           "--dialect", "postmark", "--priority", "2")
    msg = env.dir / "m.eml"
    msg.write_bytes(MESSAGE)
    res = env.json("rule", "test", str(msg), "--rcpt", "support+t1@ours.example", "--payload", "--json")
    archive, app = res["payloads"]
    assert (archive["rule"], archive["content_type"]) == ("archive", "application/json")
    doc = json.loads(archive["body"])
    assert doc["envelope"]["recipient_tag"] == "t1" and doc["raw"]["size"] == len(MESSAGE)
    assert (app["dialect"], json.loads(app["body"])["MailboxHash"]) == ("postmark", "t1")
    text = env.ok("rule", "test", str(msg), "--rcpt", "support+t1@ours.example", "--payload").stdout
    assert "Payload for rule archive (native json, application/json):" in text
    assert "Payload for rule app (postmark, application/json):" in text
    assert "payloads" not in env.json("rule", "test", str(msg), "--rcpt", "support+t1@ours.example", "--json")
