"""Address and header shapes through the private Postfix, the real milter and spooler (issue 14,
3b and 5): what the heuristics decide on and what the payload lists come from one parser."""
from __future__ import annotations

import base64

import pytest

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
SUPPORT = "support@ours.example"


def raw_message(*fields: str, body: str = "Hello.\r\n") -> bytes:
    head = "".join(f + "\r\n" for f in fields)
    return (head + "Message-ID: <shape@sender.example>\r\n\r\n" + body).encode("utf-8")


def add_rule(stack, when: str) -> None:
    stack.add_rule("support", "/hook", "--when", when)
    stack.wait_milter_snapshot()


def test_at_in_an_unquoted_display_name_is_refused_by_the_from_heuristic(mxhook_stack):
    st = mxhook_stack
    add_rule(st, r"To~^support@ours\.example$")
    msg = raw_message("From: ceo@ours.example <ceo@ours.example>", f"To: {SUPPORT}", "Subject: Wire")
    res = st.send(SENDER, [SUPPORT], msg)
    assert res.stage == "DATA" and res.code == 550, res
    assert "ceo@ours.example" in res.reply.message
    rows = st.wait_status(lambda rows: any(r["status"] == "denied" for r in rows))
    (row,) = [r for r in rows if r["status"] == "denied"]
    assert row["filterName"] == "heuristic:from_permitted_domain"
    assert st.receiver.requests == []


def test_odd_address_shapes_and_encoded_words_are_posted_as_other_parsers_read_them(make_stack):
    # Postfix rewrites the headers of mail from local clients (the loopback test client is one:
    # `Big Bug bb@bug.com` would become three addresses with @myorigin); mail from the internet
    # is left as it came, which is what this test is about.
    st = make_stack(postfix_main_cf={"local_header_rewrite_clients": ""})
    add_rule(st, r"To~^support@ours\.example$")
    subject = "\u6731\u9555\u57fa"  # 镕 is in GB 18030 (and GBK), not in GB 2312
    gb = base64.b64encode(subject.encode("gb18030")).decode()
    msg = raw_message(
        r"From: Pete(A wonderful \) chap) <pete(his account)@silly.test(his host)>",
        f"To: {SUPPORT}",
        "Cc: =?utf-8?q?Foo=2C_Bar?= <foo.bar@example.com>, Big Bug bb@bug.com",
        "Reply-To: boss@x.example <boss@x.example>",
        f"Subject: =?gb2312?b?{gb}?=",
        "X-Folded: two  spaces\r\n\tand a tab",
    )
    res = st.send("pete@silly.test", [SUPPORT], msg)
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    m = req.json()["message"]
    assert m["from"] == [{"name": "Pete", "address": "pete@silly.test"}]
    assert m["cc"] == [{"name": "Foo, Bar", "address": "foo.bar@example.com"},
                       {"name": "Big Bug", "address": "bb@bug.com"}]
    assert m["reply_to"] == [{"name": "boss@x.example", "address": "boss@x.example"}]
    assert m["subject"] == subject
    values = {h["name"]: h["value"] for h in m["headers"]}
    assert values["Cc"] == '"Foo, Bar" <foo.bar@example.com>, Big Bug <bb@bug.com>'
    assert values["X-Folded"] == "two  spaces\tand a tab"


def test_mail_to_the_idna_2008_a_label_of_a_permitted_domain_is_accepted(make_stack):
    # faß.example: IDNA 2003 made it fass.example, another domain
    st = make_stack(domains=("xn--fa-hia.example",), permit=("fa\u00df.example",))
    assert [d["name"] for d in st.cli.json("domain", "list")] == ["xn--fa-hia.example"]
    add_rule(st, r"To~^x@")
    rcpt = "x@xn--fa-hia.example"
    res = st.send(SENDER, [rcpt], raw_message(f"From: {SENDER}", f"To: {rcpt}", "Subject: Stra\u00dfe"))
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    doc = req.json()
    assert doc["envelope"]["recipients"] == [rcpt]
    assert doc["message"]["to"] == [{"name": "", "address": rcpt}]


@pytest.mark.parametrize("from_value", [
    "ceo@=?utf-8?q?ours.example?=",  # an encoded word as the domain (email.policy.default decodes it)
    "CEO <ceo@=?us-ascii?b?b3Vycy5leGFtcGxl?=>",
    "Boss <ceo@ours.example:>",  # a special glued onto the domain
    "ceo@ours.example]",
    "=?utf-8?q?ceo=40ours.example?= <a@evil.example>",  # an encoded display name that is our address
])
def test_from_shapes_that_a_reader_shows_as_our_domain_are_refused(make_stack, from_value):
    st = make_stack(postfix_main_cf={"local_header_rewrite_clients": ""})  # headers as they came
    add_rule(st, r"To~^support@ours\.example$")
    msg = raw_message(f"From: {from_value}", f"To: {SUPPORT}", "Subject: Wire")
    res = st.send(SENDER, [SUPPORT], msg)
    assert res.stage == "DATA" and res.code == 550, res
    assert "ceo@ours.example" in res.reply.message
    rows = st.wait_status(lambda rows: any(r["status"] == "denied" for r in rows))
    assert [r["filterName"] for r in rows if r["status"] == "denied"] == ["heuristic:from_permitted_domain"]
    assert st.receiver.requests == []
