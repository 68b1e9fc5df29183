"""Payload dialects and templates end to end (issue 16): real mail through a private Postfix, the
real mxhook-milter, mxhook-spooler (and mxhook-logfollow for delivery events), the real `mxhook`
CLI, and a loopback receiver that reads each body the way the ESP documents it, with the
receivers of the dialect unit tests (tests/support/esp_receivers.py), which never import mxhook.

- inbound: a rule `--dialect postmark`; a message with an attachment and a non-ASCII subject
  arrives as Postmark's inbound JSON;
- events: an endpoint `--dialect mailgun --signing-key KEY`; a delivered and a bounced recipient
  arrive as Mailgun event webhooks, one per request, each signed as Mailgun signs;
- template: a rule with a JSON `--template`; hostile mail text arrives as JSON that parses;
- custom headers: an endpoint `--dialect smtp2go --custom-header X-Campaign` gets that header
  as an extra form field; a native endpoint beside it gets `[milter] event_headers` only.
"""
from __future__ import annotations

import base64
import email
import json
import time
from urllib.parse import parse_qs

import pytest

from tests.e2e.test_events import (APP, CUSTOM_HEADER, HARD_DOMAIN, OK_DOMAIN, add_endpoint,
                                   event_stack, send_outbound)
from tests.support.esp_receivers import (as_rendered, mailgun_verify, receive_mailgun_event,
                                         receive_postmark_inbound)
from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
SUPPORT = r"To~^support(\+[^@]*)?@ours\.example$"
MAILGUN_KEY = "key-e2e-3ax6xnjp29jd6fds4gc373sgvjxteol0"
REPLAY_WINDOW = 300  # seconds: a receiver refuses an older timestamp (Mailgun's advice)


def the_posts(st, path: str, n: int, timeout: float = 30) -> list:
    """The first `n` requests on `path`, each a POST that came whole."""
    reqs = st.receiver.wait_for(n, timeout=timeout, path=path)
    assert all(r.method == "POST" and r.complete for r in reqs), reqs
    return reqs


# -- inbound: postmark ---------------------------------------------------------------------------

def test_inbound_mail_arrives_as_postmark_inbound_json(mxhook_stack):
    st = mxhook_stack
    st.add_rule("pm", "/postmark", "--when", SUPPORT, "--dialect", "postmark")
    st.wait_milter_snapshot()
    rcpt = "support+ticket-7@ours.example"
    subject = "Grüße aus Köln — 日本語 ✓ \"quoted\" {{ x }}"
    text = "Hallo Support,\nder Drucker brennt. Ünïcödé.\n"
    attachment = bytes(range(256)) * 3
    msg = make_message(from_="Alice Exämple <alice@sender.example>", to=rcpt, subject=subject, text=text,
                       attachments=[("Bericht März.bin", "application/octet-stream", attachment)])
    res = st.send(SENDER, [rcpt], msg)
    assert res.accepted, res

    (req,) = the_posts(st, "/postmark", 1)
    doc = receive_postmark_inbound(as_rendered(req))  # every field, typed as Postmark documents
    assert doc["Subject"] == subject
    assert (doc["From"], doc["FromName"]) == ("alice@sender.example", "Alice Exämple")
    assert doc["FromFull"] == {"Email": "alice@sender.example", "Name": "Alice Exämple", "MailboxHash": ""}
    assert [p["Email"] for p in doc["ToFull"]] == [rcpt]
    assert (doc["OriginalRecipient"], doc["MailboxHash"]) == (rcpt, "ticket-7")
    assert doc["TextBody"].replace("\r\n", "\n") == text
    assert doc["StrippedTextReply"] == text.rstrip("\n") and doc["Tag"] == ""  # nothing quoted: the text
    (att,) = doc["Attachments"]
    assert (att["Name"], att["ContentType"], att["ContentLength"]) == \
        ("Bericht März.bin", "application/octet-stream", len(attachment))
    assert base64.b64decode(att["Content"]) == attachment
    assert {h["Name"].lower() for h in doc["Headers"]} >= {"date", "message-id", "mime-version"}

    rows = st.wait_status(lambda rows: [r for r in rows if r["status"] == "succeeded"])
    assert [r["filterName"] for r in rows if r["status"] == "succeeded"] == ["pm"]


# -- events: mailgun -----------------------------------------------------------------------------

def mailgun_events(make_stack, subject: str):
    """An endpoint `--dialect mailgun --signing-key`, outbound mail to a delivered and a hard
    bouncing recipient: (stack, message id, its requests, their verified event-data, the
    event-data by (event, recipient))."""
    st = event_stack(make_stack)
    url = st.endpoint("/mailgun")
    st.cli("endpoint", "add", url, "--allow-http", "--dialect", "mailgun", "--signing-key", MAILGUN_KEY,
           "--interval", "1", "--retry-interval", "10")
    ok, hard = f"alice@{OK_DOMAIN}", f"nobody@{HARD_DOMAIN}"
    res, message_id = send_outbound(st, [ok, hard], subject=subject, app_id="order-9")
    assert res.accepted, res
    wanted = {("accepted", ok), ("accepted", hard), ("delivered", ok), ("failed", hard)}
    deadline = time.monotonic() + 60
    while True:
        reqs = [r for r in st.receiver.requests if r.path == "/mailgun"]
        got = [receive_mailgun_event(as_rendered(r), MAILGUN_KEY) for r in reqs]  # each verifies
        if wanted <= {(d["event"], d.get("recipient")) for d in got}:
            return st, message_id, reqs, got, {(d["event"], d.get("recipient")): d for d in got}
        assert time.monotonic() < deadline, (
            f"mailgun events after 60 s: {[(d['event'], d.get('recipient')) for d in got]}\n{st.diagnostics()}")
        time.sleep(0.2)


def test_delivery_events_arrive_as_signed_mailgun_webhooks(make_stack):
    subject = "Invoice 17 is due {{ soon }} \"now\""
    st, message_id, reqs, got, by = mailgun_events(make_stack, subject)
    ok, hard = f"alice@{OK_DOMAIN}", f"nobody@{HARD_DOMAIN}"
    for req in reqs:  # one event per request, signed now, with a key only the endpoint has
        payload = req.json()
        sig = payload["signature"]
        assert abs(time.time() - int(sig["timestamp"])) <= REPLAY_WINDOW
        assert not mailgun_verify("another-key", sig["token"], sig["timestamp"], sig["signature"])
        assert isinstance(payload["event-data"], dict)
    try:
        from mailgun.security import SecurityGuard
    except ImportError:
        pass
    else:  # the official SDK's check agrees
        sig = reqs[0].json()["signature"]
        assert SecurityGuard.verify_webhook(MAILGUN_KEY, sig["token"], sig["timestamp"], sig["signature"])

    delivered, failed = by[("delivered", ok)], by[("failed", hard)]
    assert "severity" not in delivered and delivered["delivery-status"]["code"] == 250
    assert (failed["severity"], failed["reason"], failed["log-level"]) == ("permanent", "bounce", "error")
    assert failed["delivery-status"]["code"] == 500 and failed["delivery-status"]["enhanced-code"] == "5.3.0"
    for d in (delivered, failed, by[("accepted", ok)]):
        assert d["message"]["headers"]["subject"] == subject
        assert d["message"]["headers"]["message-id"] == message_id.strip("<>")
        assert d["envelope"]["sender"] == "app@app.example"
    # nothing the dialect has no event for (the block list's `registered`) was posted
    assert {d["event"] for d in got} <= {"accepted", "delivered", "failed"}


# -- a JSON template ------------------------------------------------------------------------------

TEMPLATE = """{
  "subject": "{{ message.subject }}",
  "from": "{{ envelope.mail_from }}",
  "rcpt": {{ envelope.recipients|tojson }},
  "files": [{% for a in message.attachments %}"{{ a.filename }}"{% if not loop.last %}, {% endif %}{% endfor %}],
  "text": "{{ message.text }}"
}
"""


def test_a_json_template_renders_hostile_mail_as_json(mxhook_stack, tmp_path):
    st = mxhook_stack
    path = tmp_path / "inbound.json.j2"
    path.write_text(TEMPLATE, encoding="utf-8")
    st.add_rule("tpl", "/template", "--when", SUPPORT, "--template", str(path))
    st.wait_milter_snapshot()
    subject = 'Quote " back \\ {{ 7*7 }} {% if %} </script> é'
    text = 'line "one"\n{{ message }}\ttab \\ end\n'
    msg = make_message(to="support@ours.example", subject=subject, text=text,
                       attachments=[('no"te {{x}}.txt', "text/plain", b"hello\n")])
    res = st.send(SENDER, ["support@ours.example"], msg)
    assert res.accepted, res

    (req,) = the_posts(st, "/template", 1)
    assert req.headers["Content-Type"].split(";")[0] == "application/json"
    doc = json.loads(req.body.decode("utf-8"))
    assert doc["subject"] == subject
    assert doc["from"] == SENDER and doc["rcpt"] == ["support@ours.example"]
    assert doc["files"] == ['no"te {{x}}.txt']
    assert doc["text"].replace("\r\n", "\n") == text
    st.wait_status(lambda rows: [r for r in rows if r["status"] == "succeeded"])


def test_a_non_ascii_subject_reaches_mailgun_decoded(make_stack):
    subject = "Rechnung Nr. 17 – fällig"
    _, _, _, got, _ = mailgun_events(make_stack, subject)
    assert {d["message"]["headers"]["subject"] for d in got} == {subject}


# -- custom headers per endpoint: smtp2go ---------------------------------------------------------

def test_smtp2go_endpoint_gets_its_own_custom_headers_as_fields(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st, "/smtp2go", "--dialect", "smtp2go", "--custom-header", "X-Campaign")
    add_endpoint(st, "/native")
    st.wait_milter_snapshot()
    ok = f"alice@{OK_DOMAIN}"
    msg = make_message(from_=f"App <{APP}>", to=ok, subject="Autumn sale",
                       headers={CUSTOM_HEADER: "order-5", "x-campaign": "autumn-24"})
    res = st.send(APP, [ok], msg, port=st.postfix.ports["submission"])
    assert res.accepted, res
    deadline = time.monotonic() + 60
    while True:
        forms = [{k: v[0] for k, v in parse_qs(r.text(), keep_blank_values=True).items()}
                 for r in st.receiver.requests if r.path == "/smtp2go"]
        native = [e for r in st.receiver.requests if r.path == "/native" for e in r.json()["events"]]
        if {"processed", "delivered"} <= {f["event"] for f in forms} and len(native) >= 2:
            break
        assert time.monotonic() < deadline, f"{forms} {native}\n{st.diagnostics()}"
        time.sleep(0.2)
    for form in forms:  # its selection, named as given, and nothing else
        assert form["X-Campaign"] == "autumn-24" and form["rcpt"] == ok
        assert not {"x-campaign", "x-app-id", "X-App-Id"} & set(form)
    message_id = email.message_from_bytes(msg)["Message-ID"]
    for event in native:  # [milter] event_headers only, named as configured
        assert event["custom_headers"] == {CUSTOM_HEADER: "order-5"} and event["message_id"] == message_id
