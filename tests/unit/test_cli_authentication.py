"""`mxhook rule add|edit` with conditions on authentication verdicts, and `rule test` showing
the verdicts (`--client-ip`, `--helo`, `--no-dns`), offline."""
from __future__ import annotations

import json

import pytest

from mxhook import config
from mxhook.services import check
from tests.unit.test_cli import Env, eml

TRUSTED = "Authentication-Results: filter.ours.example; spf=pass smtp.mailfrom=sender.example; dkim=fail header.d=sender.example; dmarc=fail header.from=sender.example policy.dmarc=reject"
FORGED = "Authentication-Results: mx.ours.example; dmarc=pass header.from=sender.example"


def env_with(tmp_path, **authentication) -> Env:
    env = Env(tmp_path)
    values = {"paths": {"rules_db": env.rules_db, "state_db": env.state_db, "spool_dir": env.spool_dir},
              "authentication": authentication}
    with open(env.conf, "w") as fh:
        fh.write(config.render(values))
    env.ok("domain", "add", "ours.example")
    return env


def test_rule_add_and_edit_refuse_verdict_conditions_while_mode_is_off(tmp_path):
    env = env_with(tmp_path)
    env.fails("rule", "add", "suspect", "--url", "https://app.example.net/s", "--when", "To~^support@",
              "--when", "dmarc~^fail$", match="[authentication] mode = verify or upstream")
    env.ok("rule", "add", "support", "--url", "https://app.example.net/s", "--when", "To~^support@")
    env.fails("rule", "edit", "support", "--unless", "spf~^pass$", match="mode = verify or upstream")


@pytest.fixture
def upstream(tmp_path):
    env = env_with(tmp_path, mode="upstream", trusted_authserv_ids="filter.ours.example")
    env.ok("rule", "add", "suspect", "--url", "https://app.example.net/suspect", "--when", "To~^support@",
           "--when", "dmarc~^fail$", "--priority", "1")
    env.ok("rule", "add", "support", "--url", "https://app.example.net/support", "--when", "To~^support@",
           "--priority", "2")
    return env


def test_rule_test_decides_verdict_rules_at_end_of_message(upstream, tmp_path):
    msg = eml(tmp_path, f"{FORGED}\n{TRUSTED}\nFrom: Alice <alice@sender.example>\n"
                        "To: support@ours.example\nSubject: hi\nMessage-ID: <1@sender.example>")
    res = upstream.json("rule", "test", msg, "--rcpt", "support@ours.example", "--json")
    (r,) = res["recipients"]
    assert (r["outcome"], r["stage"], r["rule"]) == ("accepted", "eom", "suspect")
    auth = res["authentication"]
    assert (auth["source"], auth["authserv_id"], auth["dmarc"]["result"]) == ("upstream", "filter.ours.example", "fail")
    assert [(u["authserv_id"], u["trusted"]) for u in auth["upstream"]] == [
        ("mx.ours.example", False), ("filter.ours.example", True)]
    text = upstream.ok("rule", "test", msg, "--rcpt", "support@ours.example", "--payload").stdout
    assert "Auth:       spf=pass dkim=fail (d=sender.example s=) dmarc=fail, policy reject" in text
    assert "1 untrusted Authentication-Results field(s)" in text
    assert "at end of message" in text
    body = json.loads(text.split("Payload for rule suspect (native json, application/json):\n", 1)[1])
    assert body["authentication"]["dmarc"]["result"] == "fail"


def test_rule_test_verifies_without_dns(tmp_path):
    env = env_with(tmp_path, mode="verify", authserv_id="mx.ours.example")
    env.ok("rule", "add", "support", "--url", "https://app.example.net/support", "--when", "To~^support@")
    msg = eml(tmp_path, "From: Alice <alice@sender.example>\nTo: support@ours.example\nSubject: hi")
    res = env.json("rule", "test", msg, "--rcpt", "support@ours.example", "--mail-from",
                   "alice@sender.example", "--client-ip", "192.0.2.10", "--helo", "mx.sender.example",
                   "--no-dns", "--json")
    auth = res["authentication"]
    assert (auth["source"], auth["spf"]["result"], auth["spf"]["client_ip"]) == ("mxhook", "none", "192.0.2.10")
    assert (auth["dkim"], auth["dmarc"]["result"]) == ([], "none")
    env.fails("rule", "test", msg, "--rcpt", "support@ours.example", "--client-ip", "nope",
              match="not an IP address")


def test_check_reports_verdict_rules_that_mode_off_keeps_from_matching(upstream):
    assert check.check_authentication(config.load(upstream.conf)) == []
    values = {"paths": {"rules_db": upstream.rules_db, "state_db": upstream.state_db,
                        "spool_dir": upstream.spool_dir}}
    with open(upstream.conf, "w") as fh:
        fh.write(config.render(values))
    (problem,) = check.check_authentication(config.load(upstream.conf))
    assert problem["ok"] is False and "rule suspect test authentication verdicts" in problem["message"]
