"""The actionmailbox dialect: bodies checked by a receiver that does what Rails' relay ingress
(`ActionMailbox::Ingresses::Relay::InboundEmailsController`) does — Basic auth as
`actionmailbox`, media type message/rfc822, a non-empty body stored as the raw message, the
duplicate check on Message-ID + SHA1 of the body, routing on `mail.recipients` — and byte for
byte against golden/dialects/actionmailbox/ (re-record: see test_dialect_mailgun.py)."""
from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mxhook.payloads.dialects import InboundContext, actionmailbox
from mxhook.payloads.encodings import Rendered
from mxhook.payloads.inbound import Delivery
from tests.unit.test_dialect_mailgun import check_golden, golden_names
from tests.unit.test_payloads import META, raw, target

MIME = Path(__file__).parent / "fixtures" / "mime"
URL = "https://app.example/rails/action_mailbox/relay/inbound_emails"
PASSWORD = "s3cr3t:with:colons"
CTX = InboundContext(now=1767268800.75, nonce="n" * 50)


def rails_target(**changes):
    return replace(target(url=URL, basic_auth=f"actionmailbox:{PASSWORD}"), **changes)


def delivery(raw_bytes: bytes | None = None, *, meta=META, recipients=("in@ours.example",), tgt=None):
    return Delivery.of(delivery_id="0187a2b3c4d5e6f7a1b2c3d4e5f6-reports", meta=meta,
                       raw=raw() if raw_bytes is None else raw_bytes, target=tgt or rails_target(),
                       recipients=list(recipients))


def authorization(basic_auth: str) -> str:
    """The header the delivery layer sends for a target's basic_auth."""
    return "Basic " + base64.b64encode(basic_auth.encode("utf-8")).decode("ascii")


class Ingress:
    """Rails' relay ingress and the InboundEmail model, as far as a request can tell."""

    def __init__(self, password: str = PASSWORD):
        self.password = password
        self.stored: dict[tuple[str, str], bytes] = {}

    def post(self, headers: dict, body: bytes) -> int:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return 401
        user, _, password = base64.b64decode(credentials).decode("utf-8").partition(":")
        if (user, password) != ("actionmailbox", self.password):
            return 401
        if headers["Content-Type"].split(";")[0].strip().lower() != "message/rfc822":
            return 415
        if not body:
            return 422
        checksum = hashlib.sha1(body).hexdigest()
        message_id = BytesParser(policy=compat32).parsebytes(body)["Message-ID"] or f"<{checksum}@generated>"
        self.stored.setdefault((str(message_id), checksum), body)  # a repeat is RecordNotUnique: nil
        return 204


def post(r: Rendered, ingress: Ingress, basic_auth: str = f"actionmailbox:{PASSWORD}") -> int:
    return ingress.post({"Authorization": authorization(basic_auth), "Content-Type": r.content_type}, r.body)


def recipients(body: bytes) -> list[str]:
    """Mail::Message#recipients as Action Mailbox extends it: To, Cc, Bcc, X-Original-To, X-Forwarded-To."""
    msg = BytesParser(policy=compat32).parsebytes(body)
    listed = [a for _, a in getaddresses(msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("Bcc", []))]
    return listed + msg.get_all("X-Original-To", []) + msg.get_all("X-Forwarded-To", [])


CASES = {
    "mixed_alternative_attachment": dict(),
    "plain_ascii": dict(raw_bytes=(MIME / "plain_ascii.eml").read_bytes()),
    "latin1_8bit": dict(raw_bytes=(MIME / "latin1_8bit.eml").read_bytes()),
    "rfc822_byte_exact": dict(raw_bytes=(MIME / "rfc822_byte_exact.eml").read_bytes()),
    "multi_recipient": dict(recipients=("in@ours.example", "hidden@ours.example")),
    "hostile_envelope": dict(meta={**META, "mail_from": "a@x\r\nX-Evil: 1", "helo": "h\u2028elo"},
                             recipients=("in@ours.example\r\nX-Evil: 2",)),
    "api_key": dict(tgt=rails_target(api_key="k-secret")),
}


def render(raw_bytes=None, **kw) -> Rendered:
    return actionmailbox.inbound_request(delivery(raw_bytes, **kw), CTX)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    r = render(**CASES[name])
    assert post(r, Ingress()) == 204
    check_golden("actionmailbox", name, r)


def test_golden_files_are_the_cases():
    assert golden_names("actionmailbox") == sorted(CASES)


def test_the_message_as_it_came_after_the_envelope():
    original = (MIME / "latin1_8bit.eml").read_bytes()
    r = render(original, recipients=("in@ours.example", "x@ours.example"))
    assert r.content_type == "message/rfc822"
    assert r.body.endswith(original)
    head = r.body[:-len(original)].decode("utf-8").splitlines()
    assert head[:2] == ["X-Original-To: in@ours.example", "X-Original-To: x@ours.example"]
    assert all(line.startswith("X-Mxhook-") for line in head[2:])
    assert "X-Mxhook-Rule: reports" in head


def test_routing_sees_envelope_only_recipients():
    """A Bcc recipient is in no header of the message: X-Original-To lets the app route it."""
    body = render(recipients=("in@ours.example", "hidden@ours.example")).body
    assert "hidden@ours.example" in recipients(body)


def test_api_key_is_not_stored_in_the_app():
    assert b"k-secret" not in render(tgt=rails_target(api_key="k-secret")).body


def test_a_retry_is_dropped_by_the_apps_duplicate_check():
    ingress = Ingress()
    first, retry = render(), render()
    assert post(first, ingress) == 204 and post(retry, ingress) == 204
    assert len(ingress.stored) == 1


def test_the_ingress_refuses_another_user_or_password():
    r = render()
    assert post(r, Ingress()) == 204
    assert post(r, Ingress(), "mailbox:" + PASSWORD) == 401
    assert post(r, Ingress(), "actionmailbox:wrong") == 401


def test_check_target():
    assert actionmailbox.check_target(rails_target()) == []
    assert actionmailbox.check_target(replace(rails_target(), url=URL + "/")) == []
    assert actionmailbox.check_target(replace(rails_target(), url="https://app.example/mail"
                                              + actionmailbox.INGRESS_PATH)) == []  # mounted below a path
    [wrong_user] = actionmailbox.check_target(rails_target(basic_auth="rails:pw"))
    assert "'actionmailbox'" in wrong_user and "'rails'" in wrong_user
    [empty] = actionmailbox.check_target(rails_target(basic_auth="actionmailbox:"))
    assert "empty" in empty
    [missing] = actionmailbox.check_target(rails_target(basic_auth=None))
    assert "--basic-auth actionmailbox:PASSWORD" in missing
    bearer = actionmailbox.check_target(rails_target(basic_auth=None, bearer="tok"))
    assert len(bearer) == 2 and "Bearer" in bearer[0]
    [path] = actionmailbox.check_target(rails_target(url="https://app.example/inbound"))
    assert actionmailbox.INGRESS_PATH in path and "/inbound" in path


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=500), mail_from=TEXT, helo=TEXT, rcpts=st.lists(TEXT, min_size=1, max_size=3))
def test_hostile_envelope_never_adds_a_header_line(body, mail_from, helo, rcpts):
    message = b"Subject: x\r\nMessage-ID: <m@x>\r\n\r\n" + body
    r = render(message, meta={**META, "mail_from": mail_from, "helo": helo}, recipients=tuple(rcpts))
    assert r.body.endswith(message)
    head = r.body[:-len(message)]
    lines = head.split(b"\r\n")[:-1]
    assert len(lines) == len(rcpts) * 2 + 8  # X-Original-To and X-Mxhook-Rcpt-To each, 8 others
    assert all(line.split(b":")[0] in (b"X-Original-To",) or line.startswith(b"X-Mxhook-") for line in lines)
    assert post(r, Ingress()) == 204
