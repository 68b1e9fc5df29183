"""GET /v1/attachments/<token> on the real mxhook-web: the bytes of an attachment the payload
omitted, from the message stored in state.db (filled through the store layer, as the spooler
does), by the url the payload gave; anything else 404, with no Bearer token asked for."""
from __future__ import annotations

import base64
import json
import os
import time
from email.message import EmailMessage
from urllib.parse import unquote

import pytest

from mxhook import config as configmod
from mxhook import spool
from mxhook.model.fetchurls import make_token
from mxhook.model.records import iso
from mxhook.payloads import registry
from mxhook.model.rules import Rule
from mxhook.model.targets import Destination
from mxhook.services import attachments
from mxhook.store import ingest
from mxhook.store.statedb import AttemptRecord, StateStore
from tests.web.conftest import WebStack

BIG = os.urandom(300_000)
SMALL = b"%PDF-1.4 small\n"
FILENAME = 'r\u00e9sum\u00e9 "final";\r\n../x.bin'


def message() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@else.example", "in@ours.example", "big"
    msg.set_content("see attached")
    msg.add_attachment(SMALL, maintype="application", subtype="pdf", filename="small.pdf")
    msg.add_attachment(BIG, maintype="application", subtype="octet-stream", filename=FILENAME)
    return msg.as_bytes()


RAW = message()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("webatt"))
    s = WebStack(workdir)
    s.cfg.update({"web": {"public_url": s.client.base,
                          "attachment_key_file": os.path.join(workdir, "attachment.key")}})
    s.web.start()
    try:
        yield s
    finally:
        s.web.stop()


def store_message(stack, *, rule="hook", include_raw=True) -> str:
    """An inbound message accepted for `rule`, in state.db as the spooler ingests it."""
    rid = spool.new_id()
    target = Rule(name=rule, destination=Destination("https://127.0.0.1:9/h"), id=1,
                  include_raw=include_raw).target_record()
    record = spool.Record(id=rid, kind="inbound", payload=RAW, meta={
        "received": iso(time.time()), "queue_id": "QA", "mail_from": "a@else.example",
        "header_from": "a@else.example", "subject": "big", "message_id": "<big@else>",
        "deliveries": [{"recipients": ["in@ours.example"], "rule": target}]})
    with StateStore(stack.cfg.state_db) as st:
        ingest.records(st, [record])
    return rid


def payload(stack, rid: str) -> dict:
    """The native body the spooler would post for the stored delivery."""
    cfg = configmod.load(stack.cfg.path)
    with StateStore(stack.cfg.state_db) as st:
        (due,) = [d for d in st.due(limit=1000) if d.message_id == rid]
    rendered = registry.inbound_request(
        due.target, delivery_id=due.id, meta=due.meta, raw=due.raw, recipients=due.recipients,
        now=time.time(), nonce="n" * 32, max_attachment_size=100_000, message_id=rid,
        fetch_urls=attachments.fetch_urls(cfg))
    return json.loads(rendered.body)


def get(stack, url: str):
    assert url.startswith(stack.client.base)
    return stack("GET", url[len(stack.client.base):], token=None)


def test_the_url_serves_the_omitted_attachment(stack):
    doc = payload(stack, store_message(stack))
    small, big = doc["message"]["attachments"]
    assert "url" not in small and base64.b64decode(small["content"]) == SMALL
    assert big["omitted"] is True and big["content"] is None
    reply = get(stack, big["url"])  # no Authorization: the signed URL is the credential
    assert reply.status == 200
    assert reply.body == BIG
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Cache-Control"] == "private, no-store"
    disposition = reply.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="r_sum_ _final__ .._x.bin"; ')
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == big["filename"]
    assert "\r" not in disposition and "\n" not in disposition


def test_the_raw_url_serves_the_message(stack):
    doc = payload(stack, store_message(stack))
    reply = get(stack, doc["raw"]["url"])
    assert reply.status == 200 and reply.body == RAW
    assert reply.headers["Content-Type"] == "message/rfc822"


def _key(stack) -> bytes:
    return attachments.KeyFile(configmod.load(stack.cfg.path).value("web", "attachment_key_file")).keys()


def test_forged_expired_and_unknown_are_one_404(stack):
    rid = store_message(stack)
    url = payload(stack, rid)["message"]["attachments"][1]["url"]
    token = url.rsplit("/", 1)[1]
    keys = _key(stack)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    cases = [
        tampered,
        make_token((os.urandom(32),), rid, "1", int(time.time()) + 60),  # another key
        make_token(keys, rid, "1", int(time.time()) - 1),  # expired
        make_token(keys, rid, "7", int(time.time()) + 60),  # no such attachment
        make_token(keys, "0" * 28, "1", int(time.time()) + 60),  # no such message
        "not-a-token",
    ]
    bodies = set()
    for bad in cases:
        reply = stack("GET", f"/v1/attachments/{bad}", token=None)
        assert reply.status == 404, bad
        assert reply.code == "not_found"
        bodies.add(reply.body)
    assert len(bodies) == 1  # nothing tells which
    assert get(stack, url).status == 200  # the good one still works


def test_gone_once_the_body_is_no_longer_stored(stack):
    rid = store_message(stack)
    url = payload(stack, rid)["message"]["attachments"][1]["url"]
    with StateStore(stack.cfg.state_db) as st:  # delivered, bodies not kept (no keep_bodies_over)
        st.record_attempts([AttemptRecord(ingest.delivery_id(rid, "hook"), iso(time.time()),
                                          "succeeded", "succeeded", status_code=200)])
    assert get(stack, url).status == 404


def test_kept_after_delivery_when_the_spooler_keeps_large_bodies(stack):
    rid = store_message(stack)
    url = payload(stack, rid)["message"]["attachments"][1]["url"]
    with StateStore(stack.cfg.state_db) as st:
        st.keep_bodies_over = 100_000  # the spooler's max_attachment_size with public_url set
        st.record_attempts([AttemptRecord(ingest.delivery_id(rid, "hook"), iso(time.time()),
                                          "succeeded", "succeeded", status_code=200)])
    assert get(stack, url).body == BIG


def test_the_access_log_never_shows_a_token(stack):
    url = payload(stack, store_message(stack))["message"]["attachments"][1]["url"]
    assert get(stack, url).status == 200
    token = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 5
    while "GET /v1/attachments/<token> 200" not in stack.web.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = stack.web.stderr_text()
    assert "signed-url GET /v1/attachments/<token> 200" in log
    assert token not in log and token[:20] not in log


def test_other_routes_still_need_a_token(stack):
    assert stack("GET", "/v1/status", token=None).status == 401
    assert stack("GET", "/v1/attachments", token=None).status == 401
