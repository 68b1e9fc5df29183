"""Routing (issue 17): recipient tags and `Recipient` conditions, fan-out (`--continue`),
per-domain pass-through, custom reject texts, the From == To heuristic, `--include-raw`."""
from __future__ import annotations

import pytest

from mxhook import config as configmod
from mxhook.model import inbound
from mxhook.model.recipients import recipient_tag, split_recipient
from mxhook.model.records import InboundRecord, Routed
from mxhook.model.rules import RuleSet
from mxhook.payloads import inbound as payload
from mxhook.payloads.dialects import postmark
from mxhook.model.targets import Target, Destination
from tests.unit.inbound_support import OURS, mail, message, rcpts, rule, snapshot, transaction


# -- recipient tags ------------------------------------------------------------------------------

@pytest.mark.parametrize("address,delimiters,expected", [
    ("support+ticket-4711@ours.example", "+", ("support@ours.example", "ticket-4711")),
    ("support@ours.example", "+", ("support@ours.example", None)),
    ("a+b+c@x.example", "+", ("a@x.example", "b+c")),  # the first delimiter cuts
    ("a-b+c@x.example", "+-", ("a@x.example", "b+c")),  # the first of any in the set
    ("a+b-c@x.example", "+-", ("a@x.example", "b-c")),
    ("a+@x.example", "+", ("a@x.example", "")),  # a trailing delimiter: an empty tag
    ("+a@x.example", "+", ("+a@x.example", None)),  # a leading one is part of the name
    ("a+b@x.example", "", ("a+b@x.example", None)),  # no delimiters: no tags
    ("a+b@x.example", "-", ("a+b@x.example", None)),
    ("MAILER-DAEMON@x.example", "-", ("MAILER-DAEMON@x.example", None)),  # Postfix never cuts these
    ("double-bounce@x.example", "-", ("double-bounce@x.example", None)),
    ("postmaster+x@x.example", "+", ("postmaster@x.example", "x")),  # only the name itself
    ("owner-list@x.example", "-", ("owner-list@x.example", None)),  # with `-`: owner-*, *-request
    ("list-request@x.example", "-", ("list-request@x.example", None)),
    ("owner-list+x@x.example", "+", ("owner-list@x.example", "x")),  # but only with `-`
    ("no-at-sign+x", "+", ("no-at-sign", "x")),
    ('"a+b"@x.example', "+", ('"a+b"@x.example', None)),  # quoted: a name of its own
])
def test_split_recipient_as_postfix_recipient_delimiter(address, delimiters, expected):
    assert split_recipient(address, delimiters) == expected


def test_recipient_tag_is_the_first_recipients():
    assert recipient_tag(["a+one@x.example", "b+two@x.example"], "+") == "one"
    assert recipient_tag(["a@x.example"], "+") is None and recipient_tag([], "+") is None


def test_recipient_delimiter_config_key():
    assert configmod.parse_delimiters("+-") == "+-" and configmod.parse_delimiters("") == ""
    for bad in ("@", " ", "+\u00e9", '"'):
        with pytest.raises(ValueError):
            configmod.parse_delimiters(bad)


def test_recipient_conditions_test_the_address_without_its_tag():
    rs = RuleSet([rule("untagged", "Recipient~^support@ours\\.example$", priority=1),
                  rule("exact", "To~^support@ours\\.example$", priority=2)])
    assert [r.name for r in rs.envelope_candidates("support+ticket-4711@ours.example")] == ["untagged"]
    # an untagged address is its own untagged form; `To` rules keep matching as they did
    assert [r.name for r in rs.envelope_candidates("support@ours.example")] == ["untagged"]
    assert rs.match("support+t@ours.example", {}).rule.name == "untagged"
    explained = rs.match("support+t@ours.example", {}, explain=True).evaluated
    assert [r.matched for r in explained] == [True, False]
    assert "envelope recipient does not match" in explained[1].reason()
    assert "recipient" not in rs.header_names and "to" not in rs.header_names


def test_recipient_conditions_follow_the_configured_delimiters():
    conds = ("Recipient~^support@",)
    assert RuleSet([rule("r", *conds)], recipient_delimiter="-").envelope_candidates("support-x@o.example")
    assert not RuleSet([rule("r", *conds)], recipient_delimiter="+").envelope_candidates("support-x@o.example")
    assert not RuleSet([rule("r", *conds)], recipient_delimiter="").envelope_candidates("support+x@o.example")


def test_negated_recipient_condition_and_header_conditions_together():
    rs = RuleSet([rule("r", "Recipient~^support@", "Subject~ticket")])
    cands = rs.envelope_candidates("support+1@ours.example")
    assert rs.match_candidates("support+1@ours.example", cands, {"subject": ["ticket 1"]}).rule.name == "r"
    assert rs.match_candidates("support+1@ours.example", cands, {"subject": ["hi"]}).rule is None


def _delivery(recipients, delimiter="+"):
    record = InboundRecord(received="2026-11-22T12:00:00.000000Z", mail_from="a@s.example",
                           deliveries=[Routed(list(recipients), {"name": "r", "endpoint": "https://h.example/"})],
                           recipient_delimiter=delimiter)
    return payload.Delivery.of(delivery_id="d1", meta=record.to_meta(), target=Target.of(
        "rule", 1, "r", Destination("https://h.example/")), raw=b"From: a@s.example\r\nTo: x@y.example\r\n\r\nhi\r\n")


def test_native_payload_and_postmark_carry_the_tag_cut_with_the_records_delimiter():
    doc = payload.native_document(_delivery(["support+ticket-4711@ours.example"]))
    assert doc["envelope"]["recipient_tag"] == "ticket-4711"
    assert payload.native_document(_delivery(["support@ours.example"]))["envelope"]["recipient_tag"] is None
    dashed = _delivery(["support-77+x@ours.example"], "-")
    assert payload.native_document(dashed)["envelope"]["recipient_tag"] == "77+x"
    import json
    ctx = postmark.InboundContext(now=0, nonce="n", max_attachment_size=1 << 20, max_payload_size=1 << 24)
    body = json.loads(postmark.inbound_request(dashed, ctx).body)
    assert body["MailboxHash"] == "77+x" and body["BccFull"][0]["MailboxHash"] == "77+x"


def test_record_keeps_a_delimiter_other_than_the_default():
    base = dict(received="2026-11-22T12:00:00.000000Z",
                deliveries=[Routed(["a@x.example"], {"name": "r", "endpoint": "https://h.example/"})])
    assert "recipient_delimiter" not in InboundRecord(**base).to_meta()  # records as before
    meta = InboundRecord(**base, recipient_delimiter="+-").to_meta()
    assert InboundRecord.from_meta(meta).recipient_delimiter == "+-"
    assert InboundRecord.from_meta(InboundRecord(**base).to_meta()).recipient_delimiter == "+"


def test_the_milter_records_the_delimiter_its_rules_matched_with():
    snap = snapshot([rule("support", "Recipient~^support@")], recipient_delimiter="-")
    t = transaction(snap=snap)
    assert rcpts(t, "support-4711@ours.example")[0].action == inbound.CONTINUE
    _, answer = message(t, mail(to="support@ours.example"))
    record = answer.message.record
    assert record.recipient_delimiter == "-" and record.deliveries[0].recipients == ["support-4711@ours.example"]


# -- fan-out (--continue) ------------------------------------------------------------------------

ARCHIVE = rule("archive", "To~@ours\\.example$", priority=1, continue_matching=True)
APP = rule("app", "To~^support@", priority=2, discard=True)
LATER = rule("later", "To~^support@", priority=3)


def test_a_continue_rule_offers_the_message_to_the_rules_after_it():
    rs = RuleSet([ARCHIVE, APP, LATER])
    # envelope candidates go past a continue rule without header conditions
    assert [r.name for r in rs.envelope_candidates("support@ours.example")] == ["archive", "app"]
    m = rs.match_candidates("support@ours.example", rs.envelope_candidates("support@ours.example"), {})
    assert [r.name for r in m.taken] == ["archive", "app"] and m.rule.name == "archive"
    assert [r.name for r in rs.match("support@ours.example", {}).taken] == ["archive", "app"]
    explained = rs.match("support@ours.example", {}, explain=True)
    assert [r.name for r in explained.taken] == ["archive", "app"]  # `later` matches, after a stop
    assert [r.matched for r in explained.evaluated] == [True, True, True]
    # a recipient only the continue rule takes
    assert [r.name for r in rs.match("bob@ours.example", {}).taken] == ["archive"]


def test_fan_out_with_header_conditions():
    rs = RuleSet([rule("a", "To~@ours", "Subject~x", priority=1, continue_matching=True),
                  rule("b", "To~@ours", "Subject~y", priority=2, continue_matching=True),
                  rule("c", "To~@ours", priority=3)])
    cands = rs.envelope_candidates("u@ours.example")
    assert [r.name for r in cands] == ["a", "b", "c"]
    taken = lambda subject: [r.name for r in rs.match_candidates("u@ours.example", cands, {"subject": [subject]}).taken]  # noqa: E731
    assert taken("x y") == ["a", "b", "c"] and taken("y") == ["b", "c"] and taken("z") == ["c"]


def test_fan_out_spools_one_delivery_per_rule_and_discard_by_any_rule_drops_the_recipient():
    t = transaction(snap=snapshot([ARCHIVE, APP, LATER]))
    rcpts(t, "support@ours.example", "bob@ours.example")
    _, answer = message(t, mail())
    deliveries = answer.message.record.deliveries
    assert [(d.name, d.recipients) for d in deliveries] == [
        ("archive", ["support@ours.example", "bob@ours.example"]), ("app", ["support@ours.example"])]
    assert answer.delete == ("<support@ours.example>",)  # app has --discard: webhook only
    assert answer.log[0].recipients == ["support@ours.example", "bob@ours.example"]


def test_rule_test_shows_every_rule_that_takes_a_recipient():
    from mxhook.model.envelope import Envelope
    envelope = Envelope(sender="alice@sender.example")
    envelope.recipient("support@ours.example")
    out = inbound.explain(snapshot([ARCHIVE, APP, LATER]), inbound.Policy(), mail(), envelope,
                          routes=True).as_dict()
    r = out["recipients"][0]
    assert r["rule"] == "archive" and [t["rule"] for t in r["taken_by"]] == ["archive", "app"]
    assert r["action"] == "discard" and "fan-out" in r["reason"]
    assert out["reason"] == "accepted for archive, app"


# -- pass-through within a domain (unmatched = pass) ---------------------------------------------

SUPPORT = rule("support", "Recipient~^support@")
TICKETS = rule("tickets", "To~^tickets@", "Subject~ticket")


def passing(**kw):
    return snapshot([SUPPORT, TICKETS], pass_unmatched=(OURS,), **kw)


def test_unmatched_recipients_of_a_pass_domain_go_to_postfix_in_the_same_transaction():
    t = transaction(snap=passing())
    answers = rcpts(t, "support+7@ours.example", "bob@ours.example", "tickets@ours.example")
    assert [a.action for a in answers] == [inbound.CONTINUE] * 3  # one class: never refused
    headers, answer = message(t, mail(subject="hello"))
    assert headers.action == inbound.CONTINUE and not headers.denials
    assert [(e.outcome, e.recipients) for e in headers.log] == [("passed", ["tickets@ours.example"])]
    assert [(d.name, d.recipients) for d in answer.message.record.deliveries] == [
        ("support", ["support+7@ours.example"])]
    assert answer.delete == () and answer.bounce == () and not answer.add_discard
    assert set(t.passed) == {"bob@ours.example", "tickets@ours.example"}


def test_a_pass_domain_with_no_recipient_taken_is_left_to_postfix_at_end_of_headers():
    t = transaction(snap=passing())
    rcpts(t, "bob@ours.example", "tickets@ours.example")
    headers, answer = message(t, mail(subject="no"))
    assert headers.action == inbound.ACCEPT and answer is None


def test_a_heuristic_keeps_pass_domain_recipients_from_the_rules_but_not_from_postfix():
    t = transaction(snap=passing())
    rcpts(t, "support@ours.example", "bob@ours.example")
    headers, _ = message(t, mail(frm="ceo@ours.example"))  # From in a permitted domain
    assert headers.action == inbound.ACCEPT and not headers.denials
    assert headers.log[0].recipients == ["support@ours.example"] and headers.log[0].by.startswith("heuristic:")


def test_reject_domain_recipients_do_not_share_a_transaction_with_pass_domain_ones():
    snap = snapshot([SUPPORT], domains=(OURS, "other.example"), pass_unmatched=(OURS,))
    t = transaction(snap=snap)
    answers = rcpts(t, "bob@ours.example", "support@other.example", "nobody@other.example")
    assert answers[0].action == inbound.CONTINUE
    assert answers[1].reply[:2] == ("452", "4.5.3")  # rules class: sent again alone
    assert answers[2].reply[:2] == ("550", "5.7.1")  # no rule, reject domain


def test_null_sender_to_a_pass_domain_is_passed_not_held_and_a_bounce_report_reaches_the_mailbox():
    with open(__import__("tests.unit.inbound_support", fromlist=["DSN"]).DSN, "rb") as f:
        dsn = f.read()
    t = transaction("", snap=passing())
    rcpts(t, "bob@ours.example", "support@ours.example")
    assert t.passed == ["bob@ours.example"] and not t.held
    headers, answer = message(t, dsn)
    assert headers.action == inbound.CONTINUE and answer.action == inbound.ACCEPT
    assert answer.delete == ()  # nobody consumed: the mailboxes get the report


def test_rule_test_explains_pass_through():
    from mxhook.model.envelope import Envelope
    envelope = Envelope(sender="alice@sender.example")
    for r in ("support@ours.example", "bob@ours.example", "tickets@ours.example"):
        envelope.recipient(r)
    out = inbound.explain(passing(), inbound.Policy(), mail(), envelope, routes=True).as_dict()
    got = [(r["outcome"], r["decided_by"]) for r in out["recipients"]]
    assert got == [("accepted", "rule:support"), ("passed", "unmatched=pass"), ("passed", "unmatched=pass")]
    assert out["result"] == "accept"
    envelope.recipients[:] = envelope.recipients[1:]
    out = inbound.explain(passing(), inbound.Policy(), mail(), envelope, routes=True).as_dict()
    assert (out["result"], out["decided_by"]) == ("pass", "unmatched=pass")


# -- custom reject texts -------------------------------------------------------------------------

def test_domain_reject_text_at_rcpt_and_rule_reject_text_at_end_of_headers():
    snap = snapshot([rule("tickets", "To~^tickets@", "Subject~ticket", reject_text="Tickets only, please"),
                     rule("sales", "To~^sales@", "Subject~quote")],
                    reject_texts={OURS: "No such address at ours.example"})
    t = transaction(snap=snap)
    [answer] = rcpts(t, "nobody@ours.example")
    assert answer.reply == ("550", "5.7.1", "No such address at ours.example")
    assert answer.denials[0].reason == "no inbound rule matches <nobody@ours.example>"  # the log keeps why
    t = transaction(snap=snap)
    rcpts(t, "tickets@ours.example")
    headers, _ = message(t, mail(subject="hello"))
    assert headers.reply == ("550", "5.7.1", "Tickets only, please")
    t = transaction(snap=snap)
    rcpts(t, "sales@ours.example")  # its rule has no text: the domain's
    assert message(t, mail(subject="hello"))[0].reply == ("550", "5.7.1", "No such address at ours.example")


def test_heuristics_and_unknown_domains_keep_mxhooks_texts():
    snap = snapshot([rule("tickets", "To~^tickets@", reject_text="custom")], reject_texts={OURS: "custom"})
    t = transaction(snap=snap)
    [answer] = rcpts(t, "x@elsewhere.example")
    assert "not enabled for inbound mail" in answer.reply[2]
    t = transaction(snap=snap)
    rcpts(t, "tickets@ours.example")
    assert "claims one of this server's own domains" in message(t, mail(frm="a@ours.example"))[0].reply[2]


def test_without_texts_the_replies_are_as_before():
    t = transaction()
    [answer] = rcpts(t, "nobody@ours.example")
    assert answer.reply[2] == "<nobody@ours.example>: no inbound rule matches <nobody@ours.example>"


def test_rule_test_shows_the_reply_text():
    from mxhook.model.envelope import Envelope
    snap = snapshot([rule("tickets", "To~^tickets@", "Subject~ticket", reject_text="Tickets only")],
                    reject_texts={OURS: "Nobody here"})
    envelope = Envelope(sender="alice@sender.example")
    envelope.recipient("nobody@ours.example")
    out = inbound.explain(snap, inbound.Policy(), mail(), envelope, routes=True).as_dict()
    assert out["recipients"][0]["reply"] == "Nobody here"
    envelope = Envelope(sender="alice@sender.example")
    envelope.recipient("tickets@ours.example")
    assert inbound.explain(snap, inbound.Policy(), mail(), envelope, routes=True).as_dict()["reply"] == "Tickets only"


# -- From == To: when it fires (docs/rules.md, "The From == To heuristic") -----------------------

from mxhook.model import heuristics  # noqa: E402

FIRES, PASSES = True, False


@pytest.mark.parametrize("frm,to,rcpt,fires", [
    # the self-addressed message the seed describes: To is the sender
    ([b"alice@sender.example"], [b"alice@sender.example"], "in@ours.example", FIRES),
    ([b"Alice <alice@sender.example>"], [b'"A." <ALICE@Sender.Example>, alice@sender.example'], "in@ours.example", FIRES),
    ([b"alice@sender.example, bob@sender.example"], [b"bob@sender.example"], "in@ours.example", FIRES),
    ([b"alice@sender.example"], [b"alice@sender.example", b"alice@sender.example"], "in@ours.example", FIRES),
    # the sender copies themselves beside other recipients: not self-addressed
    ([b"alice@sender.example"], [b"rich@ours.example, alice@sender.example"], "rich@ours.example", PASSES),
    ([b"alice@sender.example"], [b"alice@sender.example, bob@sender.example"], "in@ours.example", PASSES),
    ([b"alice@sender.example"], [b"alice@sender.example", b"rich@ours.example"], "rich@ours.example", PASSES),
    # no To address at all, or only someone else
    ([b"alice@sender.example"], [], "in@ours.example", PASSES),
    ([b"alice@sender.example"], [b"undisclosed-recipients:;"], "in@ours.example", PASSES),
    ([b"alice@sender.example"], [b"bob@sender.example"], "in@ours.example", PASSES),
    # From is the envelope recipient, whatever To says
    ([b"in@ours.example"], [b"bob@sender.example, carol@x.example"], "in@ours.example", FIRES),
])
def test_from_equals_to_table(frm, to, rcpt, fires):
    v = heuristics.check(frm, to, [rcpt], frozenset({"ours.example"}), enabled=(heuristics.FROM_EQUALS_TO,))
    assert (v is not None) == fires, v
    if fires:
        assert v.heuristic == heuristics.FROM_EQUALS_TO


def test_the_issue_false_positive_is_accepted_through_the_whole_decision():
    t = transaction(snap=snapshot([rule("rich", "To~^rich@")]))
    rcpts(t, "rich@ours.example")
    headers, answer = message(t, mail(frm="alice@sender.example", to="rich@ours.example, alice@sender.example"))
    assert headers.action == inbound.CONTINUE and answer.message is not None
    t = transaction(snap=snapshot([rule("rich", "To~^rich@")]))
    rcpts(t, "rich@ours.example")
    headers, _ = message(t, mail(frm="alice@sender.example", to="alice@sender.example"))
    assert headers.action == inbound.REJECT and "names only the sender" in headers.reply[2]


# -- --include-raw -------------------------------------------------------------------------------

import base64  # noqa: E402
import json  # noqa: E402

from mxhook.payloads import registry  # noqa: E402

ATTACHED = (b"From: a@s.example\r\nTo: in@ours.example\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--b\r\nContent-Type: application/octet-stream; name=x.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(bytes(range(256)) * 8) + b"--b--\r\n")


def _render(fmt, raw=ATTACHED, include_raw=True, **caps):
    r = rule("r", "To~^in@", include_raw=include_raw)
    record = InboundRecord(received="2026-11-22T12:00:00.000000Z", mail_from="a@s.example",
                           deliveries=[Routed(["in@ours.example"], r.target_record())])
    return registry.render_inbound(fmt, delivery_id="d1", meta=record.to_meta(), raw=raw, target=r.target, **caps)


def test_include_raw_puts_the_message_as_it_came_beside_the_parsed_json():
    doc = json.loads(_render("json").body)
    assert base64.b64decode(doc["raw"]["content"]) == ATTACHED
    assert doc["raw"]["size"] == len(ATTACHED) and doc["raw"]["content_type"] == "message/rfc822"
    assert "raw" not in json.loads(_render("json", include_raw=False).body)


def test_the_raw_message_is_the_first_content_the_payload_cap_omits():
    full = len(_render("json").body)
    doc = json.loads(_render("json", max_payload_size=full - 1).body)
    assert doc["raw"]["content"] is None and doc["raw"]["omitted_reason"] == "payload size cap"
    assert doc["message"]["attachments"][0]["content"] is not None  # the attachment stays
    doc = json.loads(_render("json", max_attachment_size=len(ATTACHED) - 1).body)
    assert doc["raw"]["content"] is None and "max_attachment_size" in doc["raw"]["omitted_reason"]


def test_include_raw_in_multipart_is_a_file_part():
    body = _render("multipart").body
    assert b'name="raw-message"; filename="message.eml"' in body and ATTACHED in body
    assert b'"field": "raw-message"' in body or b'"field":"raw-message"' in body
    full = len(body)
    capped = _render("multipart", max_payload_size=full - 1).body
    assert b'name="raw-message"' not in capped and b"x.bin" in capped


def test_include_raw_travels_in_the_spool_record():
    t = transaction(snap=snapshot([rule("r", "To~^sales@", include_raw=True)]))
    rcpts(t, "sales@ours.example")
    _, answer = message(t, mail())
    assert answer.message.record.deliveries[0].target["include_raw"] is True
