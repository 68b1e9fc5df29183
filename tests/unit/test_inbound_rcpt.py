"""The RCPT stage of the inbound decision (model/inbound.py): each recipient's SMTP answer."""
from mxhook.model import inbound

from tests.unit.inbound_support import rcpts, snapshot, transaction


def test_a_recipient_some_rule_can_take_is_accepted():
    t = transaction()
    [a] = rcpts(t, "<Sales@Ours.Example>")
    assert (a.action, a.reply, a.denials) == (inbound.CONTINUE, None, ())
    assert t.managed == ["sales@ours.example"]


def test_no_rule_can_match_the_envelope_is_550_with_a_denied_record():
    t = transaction()
    [a] = rcpts(t, "<nobody@ours.example>")
    assert a.action == inbound.REJECT
    assert a.reply == ("550", "5.7.1", "<nobody@ours.example>: no inbound rule matches <nobody@ours.example>")
    [d] = a.denials
    assert (d.recipients, d.filter, d.bounced) == (["nobody@ours.example"], "no_rule", False)
    assert d.record.received == "2026-11-22T12:00:00.000000Z" and d.record.filter == "no_rule"
    assert d.logged() == inbound.Logged("denied", ["nobody@ours.example"], "no_rule",
                                        "no inbound rule matches <nobody@ours.example>")


def test_denied_record_only_where_the_domain_logs_denied_mail_or_for_unknown_domains():
    t = transaction(snap=snapshot(log_denied=()))
    nobody, foreign = rcpts(t, "<nobody@ours.example>", "<x@elsewhere.example>")
    assert nobody.denials[0].record is None
    assert foreign.denials[0].filter == "unknown_domain" and foreign.denials[0].record is not None
    assert "elsewhere.example is not enabled" in foreign.reply[2]


def test_unknown_domains_pass_accepts_and_leaves_it_to_postfix():
    t = transaction(unknown_domains="pass")
    [a] = rcpts(t, "<x@elsewhere.example>")
    assert a.action == inbound.CONTINUE and t.passed == ["x@elsewhere.example"]


def test_recipient_of_another_outcome_class_is_split_with_452():
    t = transaction()
    sales, vip = rcpts(t, "<sales@ours.example>", "<vip@ours.example>")
    assert sales.action == inbound.CONTINUE
    assert vip.action == inbound.TEMPFAIL and vip.reply[:2] == ("452", "4.5.3") and vip.note


def test_null_sender_recipients_without_a_rule_are_held_until_end_of_headers():
    t = transaction(sender="")
    a, b = rcpts(t, "<nobody@ours.example>", "<x@elsewhere.example>")
    assert a.action == b.action == inbound.CONTINUE
    assert t.held == ["nobody@ours.example", "x@elsewhere.example"]


def test_past_the_cap_on_refusals_a_recipient_of_another_class_is_accepted():
    t = transaction(max_rcpt_refusals=1)
    answers = rcpts(t, "<sales@ours.example>", "<vip@ours.example>", "<vip@ours.example>",
                    "<nobody@ours.example>")
    assert [a.action for a in answers] == [inbound.CONTINUE, inbound.TEMPFAIL, inbound.CONTINUE,
                                           inbound.REJECT]  # no rule can take nobody@: refused
    assert t.overflow == {"vip@ours.example"} and "refusals" in answers[2].note


def test_without_postfix_routes_recipients_are_split_without_a_cap():
    t = transaction(max_rcpt_refusals=1, routes=False)
    answers = rcpts(t, "<sales@ours.example>", "<vip@ours.example>", "<vip@ours.example>")
    assert [a.action for a in answers] == [inbound.CONTINUE, inbound.TEMPFAIL, inbound.TEMPFAIL]
