"""Fetch URLs end to end: mail with an attachment over max_attachment_size through the private
Postfix, the real milter and spooler; the posted payload's `url` (and the raw message's) fetched
from the real mxhook-web gives back the same bytes, also after the delivery succeeded."""
from __future__ import annotations

import base64
import os

import pytest

from tests.support.postfix import make_message
from tests.support.daemons import WebProcess
from tests.support.ports import free_port
from tests.support.web_client import Client

pytestmark = pytest.mark.e2e

SUPPORT = "support@ours.example"


def test_omitted_attachment_fetched_by_its_url(make_stack, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    st = make_stack(config={
        "spooler": {"max_attachment_size": "100K"},
        "web": {"listen": f"127.0.0.1:{port}", "public_url": base, "log": "stderr",
                "access_db": str(tmp_path / "access.db"),
                "attachment_key_file": str(tmp_path / "attachment.key")},
    })
    web = WebProcess(st.cfg)
    web.start()
    try:
        st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$", "--include-raw")
        st.wait_milter_snapshot()
        big, small = os.urandom(250_000), b"small enough\n"
        msg = make_message(to=SUPPORT, subject="scans",
                           attachments=[("small.txt", "application/octet-stream", small),
                                        ("scans.bin", "application/octet-stream", big)])
        res = st.send("alice@sender.example", [SUPPORT], msg)
        assert res.accepted, res
        (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
        doc = req.json()
        first, second = doc["message"]["attachments"]
        assert base64.b64decode(first["content"]) == small and "url" not in first
        assert second["omitted"] is True and second["url"].startswith(base + "/v1/attachments/")
        assert doc["raw"]["omitted"] is True

        # after the delivery succeeded: the body is kept for its URLs
        st.wait_status(lambda rows: [r for r in rows if r["status"] == "succeeded"])
        client = Client(base)
        reply = client.request("GET", second["url"][len(base):])  # no API token
        assert reply.status == 200, reply.body[:300]
        assert reply.body == big
        assert reply.headers["Content-Disposition"].startswith('attachment; filename="scans.bin"')
        raw = client.request("GET", doc["raw"]["url"][len(base):])
        assert raw.status == 200 and raw.headers["Content-Type"] == "message/rfc822"
        assert base64.b64encode(big)[:76] in raw.body.replace(b"\r\n", b"\n").replace(b"\n", b"")
        assert client.request("GET", second["url"][len(base):-3] + "AAA").status == 404
    finally:
        web.stop()
