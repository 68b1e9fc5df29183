"""Dead letter, replay and status end to end: a private Postfix, the real milter and spooler, a
loopback receiver and the real `mxhook` CLI (see tests/conftest.py).

- a mail whose endpoint answers 404 is `failed`; once the receiver is fixed, `mxhook replay ID`
  delivers it with the same webhook-id, and `mxhook status` follows along;
- a 410 Gone disables the rule: `mxhook status` and `mxhook rule list` show it, its next mail is
  refused, and replaying its delivery is refused until the rule is enabled again.
"""
from __future__ import annotations

import time

import pytest

from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
SUPPORT = "support@ours.example"


def rows_for(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def rule_state(st, name):
    report = st.cli.json("status")
    (entry,) = [r for r in report["rules"] if r["name"] == name]
    return entry, report


def wait_rule_state(st, name, state, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        entry, report = rule_state(st, name)
        if entry["state"] == state or time.monotonic() > deadline:
            assert entry["state"] == state, report
            return entry, report
        time.sleep(0.3)


def test_failed_delivery_is_replayed_with_the_same_webhook_id(mxhook_stack):
    st = mxhook_stack
    st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$")
    st.wait_milter_snapshot()
    st.receiver.script("/hook", [(404, {}, b"no such hook")])
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT, subject="Printer on fire"))
    assert res.accepted, res
    rows = st.wait_status(lambda rows: rows_for(rows, status="failed"), timeout=30)
    (row,) = rows_for(rows, status="failed")
    assert "404" in row["reason"]
    did = row["id"]
    (first,) = st.receiver.wait_for(1, timeout=5, path="/hook")
    assert first.headers["webhook-id"] == did

    entry, report = wait_rule_state(st, "support", "failing")
    assert entry["failed"] == 1 and "404" in entry["last_error"]
    assert report["last_hour"]["inbound"]["failed"] == 1

    dry = st.cli.json("replay", did, "--dry-run")
    assert [i["id"] for i in dry["replayed"]] == [did]
    assert rows_for(st.inbound_log(), id=did)[0]["status"] == "failed"  # a dry run changes nothing

    st.receiver.script("/hook", [(200, {}, b"ok")])  # the receiver is fixed
    out = st.cli("replay", did)
    assert "Replayed 1 item(s)" in out.stdout
    st.wait_status(lambda rows: rows_for(rows, id=did, status="succeeded"), timeout=30)
    reqs = st.receiver.wait_for(2, timeout=5, path="/hook")
    assert [r.headers["webhook-id"] for r in reqs] == [did, did]
    assert reqs[1].json()["message"]["subject"] == "Printer on fire"
    detail = st.cli.json("log", "show", did)
    assert [a["status_code"] for a in detail["attempts"]] == [404, 200]

    entry, report = wait_rule_state(st, "support", "ok")
    assert entry["failed"] == 0 and entry["pending"] == 0
    assert report["spool"]["backlog"] == 0 and report["pending"]["inbound"] == 0
    # replaying a delivered one is refused
    again = st.cli("replay", did, check=False)
    assert again.returncode == 1 and "succeeded" in again.stderr


def test_410_disables_the_rule(mxhook_stack):
    st = mxhook_stack
    st.add_rule("gone", "/gone", "--when", r"To~^gone@ours\.example$")
    st.wait_milter_snapshot()
    st.receiver.script("/gone", [(410, {}, b"gone")])
    res = st.send(SENDER, ["gone@ours.example"], make_message(to="gone@ours.example"))
    assert res.accepted, res
    rows = st.wait_status(lambda rows: rows_for(rows, status="failed"), timeout=30)
    (row,) = rows_for(rows, status="failed")
    assert row["reason"] == "HTTP 410 Gone; rule gone disabled"

    entry, _ = wait_rule_state(st, "gone", "disabled")
    assert entry["enabled"] is False and "410" in entry["disabled_reason"] and entry["since"]
    text = st.cli("status").stdout
    assert "disabled" in text and "410" in text
    (listed,) = st.cli.json("rule", "list")
    assert listed["name"] == "gone" and listed["enabled"] is False
    table = st.cli("rule", "list").stdout.splitlines()
    assert any(line.split()[1:3] == ["gone", "no"] for line in table[2:]), table
    assert "rule gone disabled" in st.spooler.stderr_text() and "410" in st.spooler.stderr_text()

    # the milter no longer matches the rule: the next mail is refused
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["gone@ours.example"], make_message(to="gone@ours.example"))
    assert res.code == 550, res
    assert len(st.receiver.requests) == 1

    # replay: refused while disabled; after enabling (and fixing the receiver) it is delivered
    refused = st.cli("replay", row["id"], check=False)
    assert refused.returncode == 1 and "rule gone is disabled" in refused.stderr
    st.receiver.script("/gone", [(200, {}, b"ok")])
    st.cli("rule", "enable", "gone")
    st.cli("replay", row["id"])
    st.wait_status(lambda rows: rows_for(rows, id=row["id"], status="succeeded"), timeout=30)
    assert [r.headers["webhook-id"] for r in st.receiver.requests] == [row["id"], row["id"]]
    wait_rule_state(st, "gone", "ok")
