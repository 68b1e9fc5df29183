"""End of headers in the inbound decision (model/inbound.py): heuristics, rules, held null-sender
recipients, and who is refused or bounced."""
from mxhook.model import inbound
from mxhook.model.message import header_section

from tests.unit.inbound_support import dsn, mail, rcpts, transaction


def eoh(t, raw):
    return t.end_of_headers(header_section(raw)[0])


def test_a_matching_rule_lets_the_message_continue_to_its_body():
    t = transaction()
    rcpts(t, "<sales@ours.example>")
    a = eoh(t, mail())
    assert (a.action, a.reply, a.denials, a.timed_out) == (inbound.CONTINUE, None, (), ())
    assert [r.name for r, _ in t.decision.grouped()] == ["sales"]


def test_a_heuristic_refuses_the_whole_message():
    t = transaction()
    rcpts(t, "<sales@ours.example>")
    a = eoh(t, mail(frm="Boss <boss@OURS.example>"))
    assert a.action == inbound.REJECT and a.reply[:2] == ("550", "5.7.1")
    [d] = a.denials
    assert d.filter == "heuristic:from_permitted_domain" and d.recipients == ["sales@ours.example"]
    assert d.record.header_from == "boss@ours.example"  # the fields are known by now


def test_a_message_without_from_is_refused_unless_the_policy_accepts_it():
    raw = b"To: sales@ours.example\r\nSubject: hi\r\n\r\nbody\r\n"
    t = transaction()
    rcpts(t, "<sales@ours.example>")
    a = eoh(t, raw)
    assert a.action == inbound.REJECT and a.denials[0].filter == "heuristic:missing_from"
    t = transaction(missing_from="accept")
    rcpts(t, "<sales@ours.example>")
    assert eoh(t, raw).action == inbound.CONTINUE


def test_header_conditions_unmet_refuse_the_message():
    t = transaction()
    rcpts(t, "<vip@ours.example>")
    a = eoh(t, mail(subject="not now"))
    assert a.action == inbound.REJECT
    assert a.reply[2] == "mxhook: no inbound rule matches <vip@ours.example>"
    assert a.denials[0].filter == "no_rule"


def test_only_pass_through_recipients_are_accepted_without_the_body():
    t = transaction(unknown_domains="pass")
    rcpts(t, "<x@elsewhere.example>")
    assert eoh(t, mail()).action == inbound.ACCEPT


def test_null_sender_mail_that_is_no_bounce_report_refuses_the_held_recipients_by_filter():
    t = transaction(sender="")
    rcpts(t, "<nobody@ours.example>", "<x@elsewhere.example>")
    a = eoh(t, mail())
    assert a.action == inbound.REJECT
    assert [(d.filter, d.recipients) for d in a.denials] == [
        ("no_rule", ["nobody@ours.example"]), ("unknown_domain", ["x@elsewhere.example"])]


def test_a_bounce_report_keeps_held_recipients_for_end_of_message():
    t = transaction(sender="")
    rcpts(t, "<app@elsewhere.example>")
    a = eoh(t, dsn())
    assert a.action == inbound.CONTINUE and t.dsn and a.denials == ()


def test_a_report_is_only_one_with_the_null_sender():
    t = transaction()
    rcpts(t, "<sales@ours.example>")
    eoh(t, dsn(to="sales@ours.example"))
    assert not t.dsn


def test_past_the_cap_a_refused_recipient_beside_accepted_ones_is_bounced():
    t = transaction(max_rcpt_refusals=1)
    rcpts(t, "<sales@ours.example>", "<vip@ours.example>", "<vip@ours.example>")
    a = eoh(t, mail(subject="not now"))
    assert a.action == inbound.CONTINUE and t.bounced == ["vip@ours.example"]  # the second: split
    [d] = a.denials
    assert d.bounced and d.logged().reason.endswith("; Postfix bounces it to the sender")


def test_recipients_of_one_class_decided_apart_answer_451():
    t = transaction()
    rcpts(t, "<sales@ours.example>", "<trash@ours.example>")
    t.candidates["trash@ours.example"] = ()  # as if RCPT had found no rule for it after all
    a = eoh(t, mail())
    assert a.action == inbound.TEMPFAIL and a.reply == inbound.INTERNAL_ERROR
    assert "decided apart" in a.error
