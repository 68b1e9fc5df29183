"""What the payload says and what the milter's decision saw are the same message, for odd
header-section shapes, through the real private Postfix: a rule on the envelope recipient only
(`To`), one recipient posted as `raw` (exactly what the milter got from Postfix) and one as
`json` (what message.normalize made of it)."""
from __future__ import annotations

import pytest

from mxhook.decision import header_index
from mxhook.headers import decode_value
from tests.support.header_shapes import SHAPES

pytestmark = pytest.mark.e2e

RAW_RCPT, JSON_RCPT = "raw@ours.example", "json@ours.example"


def _spooled(body: bytes) -> bytes:
    """A raw payload without the X-Mxhook-* envelope lines mxhook puts in front."""
    lines = body.split(b"\r\n")
    while lines and lines[0].startswith(b"X-Mxhook-"):
        lines.pop(0)
    return b"\r\n".join(lines)


def test_payload_headers_are_the_headers_postfix_passed_the_milter(mxhook_stack):
    st = mxhook_stack
    st.add_rule("raw", "/raw", "--when", r"To~^raw@", "--format", "raw")
    st.add_rule("json", "/json", "--when", r"To~^json@")
    st.wait_milter_snapshot()
    for n, shape in enumerate(SHAPES, 1):
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
