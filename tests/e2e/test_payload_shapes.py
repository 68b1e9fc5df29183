"""What the payload says and what the milter's decision saw are the same message, for odd
header-section shapes, through the real private Postfix: a rule on the envelope recipient only
(`To`), one recipient posted as `raw` (exactly what the milter got from Postfix) and one as
`json` (what message.normalize made of it)."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from mxhook import config as configmod
from mxhook.model.decision import header_index
from mxhook.model.headers import decode_value
from tests.support.header_shapes import SHAPES
from tests.support.postfix import POSTCONF

pytestmark = pytest.mark.e2e

RAW_RCPT, JSON_RCPT = "raw@ours.example", "json@ours.example"
# Messages without a From header are accepted here, so their payloads can be looked at (where
# the missing_from policy exists; without it such messages are accepted anyway).
ACCEPT_WITHOUT_FROM = ({"milter": {"missing_from": "accept"}}
                       if "missing_from" in configmod.DEFAULTS["milter"] else None)


def postfix_version() -> tuple[int, int]:
    """(major, minor) of the Postfix the tests run: shapes where versions differ say which."""
    out = subprocess.run([POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True,
                         check=True).stdout
    major, minor = out.strip().split(".")[:2]
    return int(major), int(minor)


def _spooled(body: bytes) -> bytes:
    """A raw payload without the X-Mxhook-* envelope lines mxhook puts in front."""
    lines = body.split(b"\r\n")
    while lines and lines[0].startswith(b"X-Mxhook-"):
        lines.pop(0)
    return b"\r\n".join(lines)


def test_payload_headers_are_the_headers_postfix_passed_the_milter(make_stack):
    st = make_stack(config=ACCEPT_WITHOUT_FROM)
    st.add_rule("raw", "/raw", "--when", r"To~^raw@", "--format", "raw")
    st.add_rule("json", "/json", "--when", r"To~^json@")
    st.wait_milter_snapshot()
    version = postfix_version()
    for n, shape in enumerate([s for s in SHAPES if s.applies_to(version)], 1):
        # from 127.0.0.2, not a local_header_rewrite_clients address: Postfix adds no missing
        # Message-Id, Date or From, as for any client from the Internet
        res = st.send("alice@sender.example", [RAW_RCPT, JSON_RCPT], shape.raw, source_address="127.0.0.2")
        assert res.accepted, (shape.id, res)
        raw_req = st.receiver.wait_for(n, timeout=15, path="/raw")[-1]
        json_req = st.receiver.wait_for(n, timeout=15, path="/json")[-1]
        # the table in tests/support/header_shapes.py is what Postfix really does
        assert _spooled(raw_req.body) == shape.as_milter_spools(), shape.id
        m = json_req.json()["message"]
        # the payload lists the fields the decision saw (decision.header_index), in order
        index = header_index(shape.headers)
        assert [h["name"] for h in m["headers"]] == [name for name, _ in shape.headers], shape.id
        assert [h["value"] for h in m["headers"]] == [decode_value(v) for _, v in shape.headers], shape.id
        assert sorted({h["name"].lower() for h in m["headers"]}) == sorted(index), shape.id
        # nothing taken from the body: no From, Subject or Date the decision did not see
        assert m["from"] == [] or "from" in index, shape.id
        assert m["subject"] is None or "subject" in index, shape.id
        assert m["date"] is None or "date" in index, shape.id
        assert m["text"] == shape.body.decode("utf-8", "replace").replace("\r\n", "\n"), shape.id


FIXTURES = Path(__file__).parent.parent / "unit" / "fixtures" / "mime"


def test_mime_fidelity_through_postfix(mxhook_stack):
    st = mxhook_stack
    st.add_rule("json", "/json", "--when", r"To~^json@")
    st.wait_milter_snapshot()
    docs = []
    for n, name in enumerate(["reused_boundary.eml", "rfc822_byte_exact.eml", "utf8_label_latin1.eml"], 1):
        res = st.send("alice@sender.example", [JSON_RCPT], (FIXTURES / name).read_bytes(),
                      source_address="127.0.0.2")
        assert res.accepted, (name, res)
        docs.append(st.receiver.wait_for(n, timeout=15, path="/json")[-1].json()["message"])
    reused, enclosed, latin1 = docs

    # parts after a close delimiter (boundary used again) are posted, the .zip among them
    assert reused["text"] == "Please see the attachment.\nA second text after the reuse."
    assert [a["filename"] for a in reused["attachments"]] == ["invoice.zip"]
    assert "message: parts after the close delimiter (boundary used again), read as further parts" in reused["defects"]

    # message/* parts are the bytes as they came: no blank added after "Subject:", the inner
    # close delimiter, epilogue and empty lines kept
    raw = (FIXTURES / "rfc822_byte_exact.eml").read_bytes()
    rfc822, dsn = enclosed["attachments"]
    inner = raw.split(b"Content-Type: message/rfc822\r\n\r\n", 1)[1].split(b"\r\n--out\r\n", 1)[0]
    assert base64.b64decode(rfc822["content"]) == inner
    assert b"\r\nSubject:Hi  \r\n" in inner and inner.endswith(b"--in--\r\nepilogue\r\n\r\n\r\n")
    report = raw.split(b"Content-Type: message/delivery-status\r\n\r\n", 1)[1].split(b"\r\n--out--", 1)[0]
    assert base64.b64decode(dsn["content"]) == report

    # a Latin-1 body labelled UTF-8: Windows-1252, no U+FFFD
    assert latin1["text"].replace("\r\n", "\n") == "Grüße aus Köln, € 5.\n"
