"""What the tests of the inbound decision (test_inbound_*.py) share: a rules snapshot, a
transaction with a fixed clock and counted ids, and a message fed through its stages."""
from __future__ import annotations

import itertools
import os
from datetime import datetime, timezone
from types import SimpleNamespace

from mxhook.model import inbound
from mxhook.model.envelope import Envelope
from mxhook.model.message import header_section
from mxhook.model.rules import Rule, RuleSet, parse_condition
from mxhook.model.targets import Destination

OURS = "ours.example"
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
DSN = os.path.join(os.path.dirname(__file__), "fixtures", "maillog", "dsn_remote_exchange.eml")


def rule(name, *conditions, discard=False, **settings):
    return Rule(name=name, destination=Destination(f"https://hook.example/{name}"), discard=discard,
                conditions=tuple(parse_condition(c) for c in conditions), **settings)


RULES = [rule("sales", "To~^sales@"), rule("trash", "To~^trash@", discard=True),
         rule("vip", "To~^vip@", "Subject~urgent")]


def snapshot(rules=RULES, domains=(OURS,), log_denied=(OURS,), pass_unmatched=(), reject_texts=None,
             recipient_delimiter="+"):
    return SimpleNamespace(ruleset=RuleSet(list(rules), recipient_delimiter=recipient_delimiter),
                           domains=frozenset(domains), log_denied=frozenset(log_denied),
                           pass_unmatched=frozenset(pass_unmatched), reject_texts=reject_texts or {})


def transaction(sender="alice@sender.example", *, snap=None, routes=True, **policy):
    ids = itertools.count(1)
    envelope = Envelope(client_addr="192.0.2.7", client_name="mail.sender.example",
                        helo="mail.sender.example", sender=sender, queue_id="4QX1")
    return inbound.Inbound(snap or snapshot(), inbound.Policy(**policy), envelope, routes=routes,
                           clock=lambda: NOW, new_id=lambda: f"id{next(ids)}")


def rcpts(t: inbound.Inbound, *given: str) -> list[inbound.RcptAnswer]:
    return [t.rcpt(t.envelope.recipient(g)) for g in given]


def message(t: inbound.Inbound, raw: bytes):
    """End of headers, then (unless it answered) end of message: (headers, message answer)."""
    fields, body_at, _ = header_section(raw)
    headers = t.end_of_headers(fields)
    if headers.action != inbound.CONTINUE:
        return headers, None
    body = raw[body_at:]
    return headers, t.end_of_message([body], len(body))


def mail(subject="hello", frm="Alice <alice@sender.example>", to="sales@ours.example", body="Hi\r\n"):
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <m1@sender.example>\r\n"
            f"\r\n{body}").encode()


def dsn(to=None) -> bytes:
    raw = open(DSN, "rb").read()
    return raw.replace(b"To: app@example.org", b"To: " + to.encode()) if to else raw
