"""Every inbound format and event payload version/format, rendered for fixed inputs, is byte for
byte the body recorded in golden/payloads.json (content type, length, sha256): what goes on the
wire never changes by accident. A deliberate change re-records it:

    MXHOOK_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_payload_golden.py
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mxhook.model.rules import Rule
from mxhook.model.targets import Destination
from mxhook.payloads import events as ev_payloads
from mxhook.payloads.registry import render_events, render_inbound
from tests.unit.seed_dialect_cases import EVENTS as SEED_EVENTS
from tests.unit.test_payloads import META  # a change there shows here as changed bodies

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "payloads.json"
MIME = HERE / "fixtures" / "mime"

HOSTILE_META = {**META, "mail_from": "a@x\r\nX-Evil: 1", "helo": "h\u2028elo", "client_name": None}
RULE = Rule(name="reports", destination=Destination("https://hooks.example/in"), id=7)
KEYED = Rule(name="reports",
             destination=Destination("https://hooks.example/in", api_key="k-\u00e9\r\n1"), id=7)

EVENTS = [
    {"id": "18a0000000000000aaaaaaaaaaaa", "type": "bounced", "at": "2026-01-15T12:00:00.250000Z",
     "source": "log", "queue_id": "4XbQ1k2Lmz", "recipient": "gone@else.example",
     "sender": "app@ours.example", "header_from": "App <app@ours.example>",
     "message_id": "<m1@ours.example>", "subject": "=HYPERLINK(\"x\") \"quoted\" \u00e9\u2028",
     "dsn": "5.1.1", "bounce_type": "hard", "remote_host": "mx.else.example",
     "relay": "mx.else.example[192.0.2.25]:25", "reply": "550 5.1.1 <gone@else.example>: User unknown",
     "delay": 1.2, "custom_headers": {"X-Campaign": "c-42"}, "some_future_field": "not in v1"},
    {"id": "2", "type": "delivered", "at": "2026-07-01T23:59:59.999999Z", "recipient": "ok@x.example",
     "delay": 3, "custom_headers": None},
    {"id": "3", "type": "deferred", "at": "not a time", "diagnostic": "a&b=c d+e%"},
    {"id": "4", "type": "queued", "at": "2026-03-29T01:30:00+02:00", "delay": float("nan")},
]


# Engagement events among delivery events: only theirs carry the `engagement` object
ENGAGEMENT = [SEED_EVENTS[name] for name in ("succeeded", "opened", "opened_machine", "clicked", "clicked_hostile",
                                             "unsubscribed_mailto", "resubscribed", "complained",
                                             "opened_several_recipients", "engagement_wrong_types",
                                             "engagement_not_an_object")]


def inbound_cases():
    for path in sorted(MIME.glob("*.eml")):
        for fmt in ("json", "multipart", "raw"):
            yield f"inbound/{fmt}/{path.stem}", dict(fmt=fmt, raw=path.read_bytes())
    mixed = (MIME / "mixed_alternative_attachment.eml").read_bytes()
    for fmt in ("json", "multipart", "raw"):
        yield f"inbound/{fmt}/api_key", dict(fmt=fmt, raw=mixed, rule=KEYED)
        yield f"inbound/{fmt}/hostile_envelope", dict(fmt=fmt, raw=mixed, meta=HOSTILE_META)
        yield f"inbound/{fmt}/recipients_from_meta", dict(fmt=fmt, raw=mixed, recipients=None)
        yield f"inbound/{fmt}/small_attachment_cap", dict(fmt=fmt, raw=mixed, max_attachment_size=100)
    several = (MIME / "rfc2231_filenames.eml").read_bytes()  # four attachments, dropped one by one
    for fmt in ("json", "multipart", "raw"):
        for cap in (400, 1200, 1300, 3300, 3900):  # 3900: multipart fits once all are dropped
            yield f"inbound/{fmt}/payload_cap_{cap}", dict(fmt=fmt, raw=several, max_payload_size=cap)


def event_cases():
    for fmt in ("json", "form"):
        for tz in ("UTC", "Europe/Berlin", "America/St_Johns"):
            yield f"events/v1/{fmt}/{tz}", dict(fmt=fmt, tz=tz, events=EVENTS)
            yield f"events/v1/{fmt}/{tz}/prerendered", dict(
                fmt=fmt, tz=tz, events=[ev_payloads.v1_text(e) if i % 2 == 0 else e
                                        for i, e in enumerate(EVENTS)])
        yield f"events/v1/{fmt}/api_key", dict(fmt=fmt, tz="UTC", events=EVENTS[:1], api_key="k&=\u00e9",
                                               endpoint_id=None)
        yield f"events/v1/{fmt}/empty", dict(fmt=fmt, tz="UTC", events=[])
        yield f"events/v1/{fmt}/engagement", dict(fmt=fmt, tz="UTC", events=ENGAGEMENT)
        yield f"events/v1/{fmt}/engagement/Europe/Berlin/prerendered", dict(
            fmt=fmt, tz="Europe/Berlin", events=[ev_payloads.v1_text(e) for e in ENGAGEMENT])
        yield f"events/v1/{fmt}/sample", dict(
            fmt=fmt, tz="UTC", events=[{**ev_payloads.sample_event("bounced", at="2026-01-01T00:00:00.000000Z"),
                                        "id": "test-1"}])


CASES = dict(inbound_cases()) | dict(event_cases())


def render_case(case: dict):
    if "events" in case:
        return render_events(1, case["events"], endpoint_tz=case["tz"], fmt=case["fmt"], batch_id="evb_golden",
                             endpoint_id=case.get("endpoint_id", 3), api_key=case.get("api_key"))
    rule = case.get("rule", RULE)
    return render_inbound(
        case["fmt"], delivery_id="0187a2b3c4d5e6f7a1b2c3d4e5f6-reports", meta=case.get("meta", META),
        raw=case["raw"], target=rule.target,
        recipients=case.get("recipients", ["in@ours.example", "x@ours.example"]),
        max_attachment_size=case.get("max_attachment_size", 10 * 1024 * 1024),
        max_payload_size=case.get("max_payload_size", 25 * 1024 * 1024))


def fingerprint(rendered) -> dict:
    return {"content_type": rendered.content_type, "length": len(rendered.body),
            "sha256": hashlib.sha256(rendered.body).hexdigest()}


def test_golden_file_covers_every_case():
    if os.environ.get("MXHOOK_GOLDEN_WRITE"):
        recorded = {name: fingerprint(render_case(case)) for name, case in CASES.items()}
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_body_is_byte_identical(name):
    assert fingerprint(render_case(CASES[name])) == json.loads(GOLDEN.read_text())[name]
