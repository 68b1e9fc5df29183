"""Routing (issue 17) end to end through the private Postfix, the real milter and spooler: a
tagged recipient taken by a rule on the untagged address (`recipient_tag` in the payload),
fan-out to two receivers with distinct webhook-ids, a pass-through domain whose one recipient
goes to the webhook while the other is delivered to the sink in the same message, a custom
reject text as the SMTP client sees it, the From == To heuristic's two sides and the raw
message in the payload (`--include-raw`)."""
from __future__ import annotations

import base64

import pytest

from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"


def test_tagged_recipient_is_taken_by_a_rule_on_the_untagged_address(mxhook_stack):
    st = mxhook_stack
    st.add_rule("support", "/hook", "--when", r"Recipient~^support@ours\.example$")
    st.wait_milter_snapshot()
    rcpt = "support+ticket-4711@ours.example"
    res = st.send(SENDER, [rcpt], make_message(to=rcpt, subject="Re: ticket 4711"))
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    env = req.json()["envelope"]
    assert env["recipients"] == [rcpt] and env["recipient_tag"] == "ticket-4711"


def test_fan_out_posts_to_two_receivers_with_distinct_webhook_ids(mxhook_stack):
    st = mxhook_stack
    st.add_rule("archive", "/archive", "--when", r"To~@ours\.example$", "--continue", "--priority", "1")
    st.add_rule("app", "/app", "--when", r"To~^support@", "--priority", "2", "--discard")
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["support@ours.example"], make_message(to="support@ours.example"))
    assert res.accepted, res
    (archived,) = st.receiver.wait_for(1, timeout=15, path="/archive")
    (app,) = st.receiver.wait_for(1, timeout=15, path="/app")
    ids = {archived.headers["webhook-id"], app.headers["webhook-id"]}
    assert len(ids) == 2 and {i.rsplit("-", 1)[1] for i in ids} == {"archive", "app"}
    assert archived.json()["id"] != app.json()["id"]
    assert archived.json()["message"]["subject"] == app.json()["message"]["subject"]
    # app's --discard drops the recipient from Postfix's delivery: nothing reaches the sink
    st.postfix.wait_log(rf"{res.queue_id}: to=<webhook-only@discard\.mxhook\.invalid>")


def test_pass_through_domain_one_recipient_to_the_webhook_the_other_to_the_sink(make_stack):
    st = make_stack(permit=())
    st.cli("domain", "add", "ours.example", "--unmatched", "pass")
    st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$", "--discard")
    st.wait_milter_snapshot()
    support, bob = "support@ours.example", "bob@ours.example"
    res = st.send(SENDER, [support, bob], make_message(to=f"{support}, {bob}"))
    assert res.accepted, res
    assert res.rcpt[support].code == 250 and res.rcpt[bob].code == 250  # one transaction
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    assert req.json()["envelope"]["recipients"] == [support]
    st.postfix.wait_log(rf"{res.queue_id}: to=<{bob}>.*status=sent")
    assert f"to=<{support}>" not in st.postfix.log_text()  # --discard: webhook only


def test_custom_reject_texts_reach_the_smtp_client(make_stack):
    st = make_stack(permit=())
    st.cli("domain", "add", "ours.example", "--reject-text", "No such mailbox at ours.example")
    st.add_rule("tickets", "/hook", "--when", r"To~^tickets@", "--when", "Subject~ticket",
                "--reject-text", "tickets@ takes ticket mail only")
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["nobody@ours.example"], make_message(to="nobody@ours.example"))
    assert not res.accepted
    reply = res.rcpt["nobody@ours.example"]
    assert reply.code == 550 and "5.7.1 No such mailbox at ours.example" in reply.message, res
    res = st.send(SENDER, ["tickets@ours.example"], make_message(to="tickets@ours.example", subject="hi"))
    assert not res.accepted and res.code == 550 and "tickets@ takes ticket mail only" in str(res.reply), res


def test_from_equals_to_refuses_only_a_message_addressed_to_its_sender(mxhook_stack):
    st = mxhook_stack
    st.add_rule("rich", "/hook", "--when", r"To~^rich@ours\.example$", "--include-raw")
    st.wait_milter_snapshot()
    rich = "rich@ours.example"
    copied = make_message(from_=SENDER, to=f"{rich}, {SENDER}", subject="copy to myself")
    res = st.send(SENDER, [rich], copied)
    assert res.accepted, res  # the sender copies themselves: not refused
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    raw = base64.b64decode(req.json()["raw"]["content"])
    assert copied.split(b"\r\n\r\n", 1)[1] in raw and b"Subject: copy to myself" in raw
    res = st.send(SENDER, [rich], make_message(from_=SENDER, to=SENDER, subject="to myself"))
    assert not res.accepted and res.code == 550 and "names only the sender" in str(res.reply), res
