"""The dry run of `mxhook rule test` (inbound.explain) runs the milter's own decision, so it
answers as the milter does, with reasons."""
import pytest

from mxhook.model import inbound
from mxhook.model.envelope import Envelope

from tests.unit.inbound_support import NOW, dsn, mail, message, rcpts, snapshot, transaction


def explain(raw, *recipients, sender="alice@sender.example", routes=True, **policy):
    envelope = Envelope(sender=sender)
    for r in recipients:
        envelope.recipient(r)
    return inbound.explain(snapshot(), inbound.Policy(**policy), raw, envelope, routes=routes,
                           clock=lambda: NOW)


def test_null_sender_bounce_report_to_a_foreign_recipient_passed_to_postfix_keeps_its_events():
    # The disagreement of issue 15: the milter records a bounce report's events even when its
    # recipients are left to Postfix (unknown_domains = pass); rule test used to say "the
    # milter leaves the message alone".
    x = explain(dsn(), "app@example.org", sender="", unknown_domains="pass")
    assert (x.result, x.smtp, x.decided_by) == ("accept", "250", "dsn")
    assert "3 event(s) kept" in x.reason and "left to Postfix" in x.reason
    assert [(r.outcome, r.stage) for r in x.recipients] == [("passed", "rcpt")]
    assert len(x.events) == 3 and x.deleted == []
    # what the milter's transaction does with the same message
    t = transaction(sender="", unknown_domains="pass")
    rcpts(t, "<app@example.org>")
    _, m = message(t, dsn())
    assert len(m.events) == 3 and m.delete == () and m.action == inbound.ACCEPT


def test_null_sender_bounce_report_to_a_foreign_recipient_refused_at_rcpt_otherwise_is_consumed():
    x = explain(dsn(), "app@example.org", sender="")
    assert (x.result, x.decided_by) == ("accept", "dsn")
    [r] = x.recipients
    assert (r.outcome, r.stage, r.decided_by) == ("consumed", "eoh", "dsn")
    assert x.deleted == ["<app@example.org>"] and len(x.events) == 3
    assert [e["type"] for e in x.as_dict()["events"]] == ["bounced", "bounced", "deferred"]


def test_null_sender_mail_that_is_no_report_is_refused_for_a_foreign_recipient():
    x = explain(mail(), "x@elsewhere.example", sender="")
    assert (x.result, x.smtp, x.decided_by) == ("reject", "550 5.7.1", "unknown_domain")
    assert x.recipients[0].outcome == "denied"


def test_without_a_sender_a_bounce_report_is_judged_as_any_mail():
    x = explain(dsn(), "app@example.org", sender=None)
    assert (x.result, x.smtp, x.decided_by) == ("reject", "554 5.5.1", "unknown_domain")
    assert x.as_dict()["mail_from"] is None


@pytest.mark.parametrize("recipients,policy,expected", [
    (["sales@ours.example"], {}, ("accept", "250", "rules")),
    (["nobody@ours.example"], {}, ("reject", "554 5.5.1", "no_rule")),
    (["vip@ours.example"], {}, ("reject", "550 5.7.1", "no_rule")),
    (["x@elsewhere.example"], {"unknown_domains": "pass"}, ("pass", "250", "unknown_domains=pass")),
    (["sales@ours.example"], {"max_message_size": 10}, ("reject", "552 5.3.4", "size")),
])
def test_the_result_of_each_stage(recipients, policy, expected):
    x = explain(mail(), *recipients, **policy)
    assert (x.result, x.smtp, x.decided_by) == expected


def test_each_recipient_with_its_stage_and_every_rule_explained():
    x = explain(mail(frm="boss@ours.example"), "sales@ours.example", "vip@ours.example",
                "x@elsewhere.example")
    sales, vip, foreign = x.as_dict()["recipients"]
    assert (sales["outcome"], sales["decided_by"]) == ("denied", "heuristic:from_permitted_domain")
    assert [r["name"] for r in sales["rules"]] == ["sales", "trash", "vip"]
    assert sales["rules"][0]["matched"] is True  # for information: the heuristic decided
    assert (vip["outcome"], vip["smtp"]) == ("deferred", "452 4.5.3")
    assert (foreign["outcome"], foreign["stage"]) == ("rejected", "rcpt") and "rules" not in foreign
    assert x.as_dict()["heuristics"]["verdict"]["heuristic"] == "from_permitted_domain"


def test_an_accepted_recipient_names_its_rule_and_what_happens_to_the_message():
    x = explain(mail(to="trash@ours.example"), "trash@ours.example")
    [r] = x.as_dict()["recipients"]
    assert (r["outcome"], r["rule"], r["action"], r["url"]) == (
        "accepted", "trash", "discard", "https://hook.example/trash")
    assert x.deleted == ["<trash@ours.example>"] and x.reason == "accepted for trash"


def test_the_policy_comes_from_the_milter_section_alike_for_milter_and_rule_test():
    from mxhook import config
    from mxhook.daemons.milter import MilterSettings
    from mxhook.model import heuristics
    from mxhook.model.inbound import Policy

    cfg = config.from_dict({"milter": {"heuristic_from_equals_to": "no", "missing_from": "accept",
                                       "unknown_domains": "pass", "max_rcpt_refusals": "7"}})
    settings = MilterSettings.from_config(cfg)
    from_config = Policy.from_section(lambda key: cfg.value("milter", key))
    assert from_config == Policy.from_section(lambda key: getattr(settings, key))
    assert from_config.heuristics == (heuristics.FROM_PERMITTED_DOMAIN,)
    assert (from_config.missing_from, from_config.unknown_domains, from_config.max_rcpt_refusals) \
        == ("accept", "pass", 7)
