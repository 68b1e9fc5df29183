"""The inbound decision with authentication verdicts injected (pure: no DNS): rules on `spf`,
`dkim`, `dmarc`, `dmarc_policy`, `arc` wait for end of message, rules without them keep the
end-of-headers fast path, dmarc_reject refuses at end of message, and the verdicts go into
the spool record and the payloads."""
from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from mxhook.mailauth.authenticate import AuthSettings, for_decision
from mxhook.mailauth.resolvers import StaticResolver
from mxhook.model import inbound
from mxhook.model.decision import decide
from mxhook.model.envelope import Envelope
from mxhook.model.records import InboundRecord, RecordError
from mxhook.model.rules import AUTHENTICATION_FIELDS, RuleSet, parse_condition
from mxhook.model.targets import Target
from mxhook.payloads.dialects import sendgrid
from mxhook.payloads.inbound import Delivery, form_parts, native_document
from tests.unit.inbound_support import NOW, mail, message, rcpts, rule, snapshot

PASS = {"spf": "pass", "dkim": "pass", "dmarc": "pass", "dmarc_policy": "reject", "arc": "none"}
FAIL = {"spf": "fail", "dkim": "fail", "dmarc": "fail", "dmarc_policy": "reject", "arc": "none"}
PAYLOAD = {"source": "mxhook", "authserv_id": "mx.ours.example",
           "spf": {"result": "pass", "domain": "sender.example", "identity": "mailfrom",
                   "client_ip": "192.0.2.7", "reason": ""},
           "dkim": [{"result": "pass", "domain": "sender.example", "selector": "s1",
                     "algorithm": "rsa-sha256", "reason": ""}],
           "dmarc": {"result": "pass", "domain": "sender.example", "policy": "reject"},
           "arc": {"result": "none", "reason": ""}, "upstream": []}

RULES = [rule("suspect", "To~^support@", "dmarc~^fail$", priority=1),
         rule("support", "To~^support@", priority=2),
         rule("sales", "To~^sales@", priority=2)]


class Authenticator:
    """The milter's `authenticate`, with verdicts given: counts its calls."""

    def __init__(self, conditions=PASS, reject=None, payload=PAYLOAD):
        self.conditions, self.reject, self.payload, self.calls = conditions, reject, payload, 0

    def __call__(self, raw: bytes):
        self.calls += 1
        assert raw.startswith(b"From: ") and raw.endswith(b"Hi\r\n")  # the whole message
        return inbound.Authentication(dict(self.conditions), self.payload, self.reject)


def transaction(auth, rules=RULES, **snap):
    ids = itertools.count(1)
    envelope = Envelope(client_addr="192.0.2.7", client_name="mail.sender.example",
                        helo="mail.sender.example", sender="alice@sender.example", queue_id="4QX1")
    return inbound.Inbound(snapshot(rules, **snap), inbound.Policy(), envelope, routes=True,
                           clock=lambda: NOW, new_id=lambda: f"id{next(ids)}", authenticate=auth)


def test_reserved_names_are_the_verdicts_never_header_fields():
    assert AUTHENTICATION_FIELDS == {"spf", "dkim", "dmarc", "dmarc_policy", "arc"}
    rs = RuleSet([rule("r", "dmarc~fail")])
    # a header field named DMARC is not what the condition tests
    fields = [("From", b" a@sender.example"), ("DMARC", b" fail")]
    d = decide(rs, frozenset({"ours.example"}), ["x@ours.example"], fields)
    assert d.accepted == []
    d = decide(rs, frozenset({"ours.example"}), ["x@ours.example"], fields, authentication=PASS)
    assert d.accepted == []
    d = decide(rs, frozenset({"ours.example"}), ["x@ours.example"], fields, authentication=FAIL)
    assert [r.name for _, r in d.accepted] == ["r"]
    assert rs.header_names == frozenset()  # no header field decoded for them


@pytest.mark.parametrize("explain", [False, True])
def test_without_verdicts_a_condition_holds_never_negated_or_not(explain):
    neg = dataclasses.replace(rule("neg", "To~@"), conditions=(
        parse_condition("To~@"), parse_condition("dmarc~^fail$", negate=True)))
    rs = RuleSet([neg])
    fields = [("From", b" a@sender.example")]
    d = decide(rs, frozenset({"ours.example"}), ["x@ours.example"], fields, explain=explain)
    assert d.accepted == []
    if explain:
        result = d.matches[0].evaluated[0]
        assert "no authentication verdicts" in result.reason()
    d = decide(rs, frozenset({"ours.example"}), ["x@ours.example"], fields, explain=explain,
               authentication=PASS)
    assert [r.name for _, r in d.accepted] == ["neg"]


def test_rules_with_verdict_conditions_wait_for_end_of_message():
    auth = Authenticator(FAIL)
    t = transaction(auth)
    assert [a.action for a in rcpts(t, "support@ours.example")] == [inbound.CONTINUE]
    headers, msg = message(t, mail(to="support@ours.example"))
    assert headers.action == inbound.CONTINUE and t.waiting is not None
    assert auth.calls == 1
    assert msg.action == inbound.ACCEPT
    assert [d.name for d in msg.message.record.deliveries] == ["suspect"]
    assert msg.message.record.authentication == PAYLOAD
    meta = msg.message.record.to_meta()
    assert InboundRecord.from_meta(json.loads(json.dumps(meta))).authentication == PAYLOAD

    t = transaction(Authenticator(PASS))
    rcpts(t, "support@ours.example")
    _, msg = message(t, mail(to="support@ours.example"))
    assert [d.name for d in msg.message.record.deliveries] == ["support"]


def test_rules_without_verdict_conditions_keep_the_end_of_headers_path():
    auth = Authenticator(PASS)
    t = transaction(auth)
    rcpts(t, "sales@ours.example")
    headers, msg = message(t, mail())
    assert t.waiting is None and t.decision is not None  # decided at end of headers
    assert auth.calls == 1  # verdicts for the payload, after the decision
    assert msg.message.record.authentication == PAYLOAD

    t = transaction(auth)
    rcpts(t, "nobody@ours.example")  # no candidate: 550 at RCPT, no verdicts looked up
    assert auth.calls == 1


def test_mode_off_decides_at_end_of_headers_and_the_verdict_rules_never_match():
    t = transaction(None)
    rcpts(t, "support@ours.example")
    headers, msg = message(t, mail(to="support@ours.example"))
    assert t.waiting is None
    assert [d.name for d in msg.message.record.deliveries] == ["support"]
    assert msg.message.record.authentication is None
    assert "authentication" not in msg.message.record.to_meta()  # as records from before


def test_mode_off_a_recipient_only_verdict_rules_could_take_is_refused_at_rcpt():
    rules = [rule("suspect", "To~^abuse@", "dmarc~^fail$"), *RULES[1:]]
    (off,) = rcpts(transaction(None, rules=rules), "abuse@ours.example")
    assert off.action == inbound.REJECT and off.reply[:2] == inbound.SMTP_DENY
    (on,) = rcpts(transaction(Authenticator(FAIL), rules=rules), "abuse@ours.example")
    assert on.action == inbound.CONTINUE


def test_rules_decided_at_end_of_message_refuse_with_550():
    t = transaction(Authenticator(PASS), rules=[rule("only-failing", "To~^support@", "dmarc~^fail$")])
    rcpts(t, "support@ours.example")
    headers, msg = message(t, mail(to="support@ours.example"))
    assert headers.action == inbound.CONTINUE
    assert msg.action == inbound.REJECT and msg.reply[:2] == ("550", "5.7.1")
    assert msg.message is None
    assert [d.filter for d in msg.denials] == ["no_rule"]


def test_a_heuristic_still_refuses_at_end_of_headers():
    auth = Authenticator(FAIL)
    t = transaction(auth)
    rcpts(t, "support@ours.example")
    headers, msg = message(t, mail(frm="boss@ours.example", to="support@ours.example"))
    assert headers.action == inbound.REJECT and msg is None and auth.calls == 0


def test_dmarc_reject_refuses_the_message_at_end_of_message():
    text = "mxhook: DMARC policy of sender.example rejects this message (no SPF or DKIM pass aligned with the From domain)"
    t = transaction(Authenticator(FAIL, reject=text))
    rcpts(t, "sales@ours.example")
    headers, msg = message(t, mail())
    assert headers.action == inbound.CONTINUE
    assert msg.action == inbound.REJECT and msg.reply == ("550", "5.7.1", text)
    assert msg.message is None
    (denial,) = msg.denials
    assert denial.filter == inbound.DMARC_REJECT and denial.recipients == ["sales@ours.example"]
    assert denial.record is not None and denial.record.reason == text  # logged as a denial


def test_verdict_conditions_are_in_the_outcome_class():
    rules = [rule("only", "To~^support@", "dmarc~^fail$"), rule("sales", "To~^sales@")]
    t = transaction(Authenticator(PASS), rules=rules)
    answers = rcpts(t, "support@ours.example", "sales@ours.example")
    # support is taken only when DMARC fails, sales always: one transaction each
    assert [a.action for a in answers] == [inbound.CONTINUE, inbound.TEMPFAIL]
    # support's candidates (suspect, then support) take it whatever DMARC says: one class
    t = transaction(Authenticator(PASS))
    answers = rcpts(t, "support@ours.example", "sales@ours.example")
    assert [a.action for a in answers] == [inbound.CONTINUE, inbound.CONTINUE]


def test_explain_shows_the_verdicts_and_the_stage():
    raw = mail(to="support@ours.example")
    envelope = Envelope(sender="alice@sender.example")
    envelope.recipient("support@ours.example")
    out = inbound.explain(snapshot(RULES), inbound.Policy(), raw, envelope, routes=True,
                          authenticate=Authenticator(FAIL))
    d = out.as_dict()
    assert d["authentication"] == PAYLOAD
    (r,) = d["recipients"]
    assert r["stage"] == "eom" and r["rule"] == "suspect"
    suspect = next(x for x in r["rules"] if x["name"] == "suspect")
    assert suspect["matched"] and suspect["conditions"][1]["value"] == "fail"
    support = next(x for x in r["rules"] if x["name"] == "support")
    assert support["matched"]

    out = inbound.explain(snapshot(RULES), inbound.Policy(), raw, envelope, routes=True,
                          authenticate=Authenticator(FAIL, reject="mxhook: DMARC says no"))
    d = out.as_dict()
    assert (d["result"], d["decided_by"], d["reply"]) == ("reject", "dmarc_reject", "mxhook: DMARC says no")
    assert d["recipients"][0]["outcome"] == "denied" and d["recipients"][0]["stage"] == "eom"


def test_old_records_without_verdicts_stay_readable_and_bad_ones_are_refused():
    meta = {"received": "2026-11-22T12:00:00.000000Z", "mail_from": "a@b.example",
            "deliveries": [{"recipients": ["x@ours.example"],
                            "rule": Target.of("rule", 1, "r", rule("r", "To~x").destination).to_record()}]}
    assert InboundRecord.from_meta(meta).authentication is None
    with pytest.raises(RecordError, match="authentication"):
        InboundRecord.from_meta({**meta, "authentication": "pass"})


def delivery(authentication):
    target = Target.of("rule", 1, "r", rule("r", "To~x").destination)
    meta = {"received": "2026-11-22T12:00:00.000000Z", "mail_from": "alice@sender.example",
            "client_addr": "192.0.2.7",
            "deliveries": [{"recipients": ["support@ours.example"], "rule": target.to_record()}]}
    if authentication is not None:
        meta["authentication"] = authentication
    return Delivery.of(delivery_id="id1-r", meta=meta, raw=mail(to="support@ours.example"), target=target)


def test_payloads_carry_the_verdicts():
    doc = native_document(delivery(PAYLOAD))
    assert doc["authentication"] == PAYLOAD
    assert json.loads(dict(form_parts(doc)[0])["authentication"]) == PAYLOAD
    assert "authentication" not in native_document(delivery(None))  # mode off: left out

    fields = dict(sendgrid._common_fields(delivery(PAYLOAD), {}))
    assert (fields["SPF"], fields["dkim"]) == ("pass", "{@sender.example : pass}")
    fields = dict(sendgrid._common_fields(delivery({**PAYLOAD, "dkim": []}), {}))
    assert fields["dkim"] == "none"
    fields = dict(sendgrid._common_fields(delivery(None), {}))
    assert (fields["SPF"], fields["dkim"]) == ("", "")


def test_the_dmarc_refusal_text_is_safe_for_the_smtp_reply():
    settings = AuthSettings(mode="verify", authserv_id="mx.ours.example", trusted_authserv_ids=(),
                            nameservers=(), dns_timeout=1, dns_budget=2, dmarc_reject=True)
    raw = b"From: a@x%y.example\r\nTo: sales@ours.example\r\nSubject: s\r\n\r\nHi\r\n"
    zone = StaticResolver({("_dmarc.x%y.example", "TXT"): ["v=DMARC1; p=reject"]})
    auth = for_decision(raw, settings, client_ip="192.0.2.7", helo="h", mail_from="a@x%y.example", dns=zone)
    assert auth.conditions["dmarc"] == "fail" and auth.reject is not None
    assert "%" not in auth.reject and "x?y.example" in auth.reject
