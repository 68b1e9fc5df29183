"""Stripped replies end to end: replies from the corpus (tests/data/replies/) sent through the
private Postfix to the real mxhook-milter and mxhook-spooler arrive with the stripped text,
signature and HTML the corpus expects: in the native JSON, and as Mailgun's forward() and
Postmark's inbound JSON read them (tests/support/esp_receivers.py, which never imports mxhook).
"""
from __future__ import annotations

import urllib.parse

import pytest

from tests.e2e.test_dialects_e2e import MAILGUN_KEY, SENDER, SUPPORT, the_posts
from tests.support.esp_receivers import as_rendered, receive_postmark_inbound
from tests.unit.test_replies import CORPUS, expected

pytestmark = pytest.mark.e2e

RCPT = "support@ours.example"


def corpus_message(name: str) -> bytes:
    with open(f"{CORPUS}/{name}.eml", "rb") as f:
        return f.read()


def test_a_reply_arrives_with_its_stripped_text(mxhook_stack):
    st = mxhook_stack
    st.add_rule("native", "/native", "--when", SUPPORT)
    st.wait_milter_snapshot()
    names = ("gmail-alternative", "outlook-de", "thunderbird-dash-signature")
    for name in names:
        res = st.send(SENDER, [RCPT], corpus_message(name))
        assert res.accepted, (name, res)
    reqs = the_posts(st, "/native", len(names))
    by_id = {req.json()["message"]["message_id"]: req.json()["message"] for req in reqs}
    for name in names:
        msg = by_id[f"<reply-{name}@corpus.example>"]
        text, signature, html = expected(name)
        assert (msg["stripped_text"], msg["stripped_signature"]) == (text, signature), name
        assert msg["stripped_html"] == (html or ""), name
        assert msg["text"].startswith(text.split("\n")[0])  # the whole body is still there


def test_a_reply_arrives_stripped_in_the_mailgun_and_postmark_dialects(mxhook_stack):
    st = mxhook_stack
    st.add_rule("pm", "/postmark", "--when", r"To~^pm@ours\.example$", "--dialect", "postmark")
    st.add_rule("mg", "/mailgun", "--when", r"To~^mg@ours\.example$", "--dialect", "mailgun",
                "--signing-key", MAILGUN_KEY)
    st.wait_milter_snapshot()
    for rcpt, name in (("pm@ours.example", "apple-en-iphone"), ("mg@ours.example", "gmail-alternative")):
        res = st.send(SENDER, [rcpt], corpus_message(name))
        assert res.accepted, (name, res)

    (req,) = the_posts(st, "/postmark", 1)
    doc = receive_postmark_inbound(as_rendered(req))  # every field, typed as Postmark documents
    assert doc["StrippedTextReply"] == expected("apple-en-iphone")[0] == "Yes, see you there."

    (req,) = the_posts(st, "/mailgun", 1)
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = dict(urllib.parse.parse_qsl(req.body.decode("utf-8"), keep_blank_values=True))
    text, signature, html = expected("gmail-alternative")
    assert (form["stripped-text"], form["stripped-signature"], form["stripped-html"]) == (text, signature, html)
    assert form["body-plain"].startswith(text)  # the whole body is still there
