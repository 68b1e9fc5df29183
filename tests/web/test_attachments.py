"""GET /v1/attachments/<token> on the real mxhook-web: the bytes of an attachment the payload
omitted, from the message stored in state.db (filled through the store layer, as the spooler
does), by the url the payload gave; anything else 404, with no Bearer token asked for; the
signing key rotated (`mxhook attachments rotate-key`) with overlap, or with --drop-old."""
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
from mxhook.model import fetchurls, keyring
from mxhook.model.fetchurls import make_token
from mxhook.model.records import iso
from mxhook.payloads import registry
from mxhook.model.rules import Rule
from mxhook.model.targets import Destination
from mxhook.services import attachments, keyfiles
from mxhook.services.errors import Invalid
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
    return keyfiles.KeyFile(configmod.load(stack.cfg.path).value("web", "attachment_key_file")).keys()


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


def test_rotate_key_keeps_the_previous_keys_until_the_ttl_after_their_successor(tmp_path):
    from tests.support.services import make_config

    path = tmp_path / "attachment.key"
    cfg = make_config(tmp_path, web={"attachment_key_file": str(path), "attachment_url_ttl": "7"})
    first = attachments.rotate_key(cfg, now=1_000_000.0)  # no file yet: made with one key
    assert first["kept"] == [] and first["dropped"] == []
    assert os.stat(path).st_mode & 0o777 == 0o640
    keys = keyfiles.KeyFile(str(path))
    (a,) = keys.keys()
    signed_a = make_token((a,), "m1", "0", 2_000_000)
    day = 86400.0
    b = attachments.rotate_key(cfg, now=1_000_000.0 + day)
    c = attachments.rotate_key(cfg, now=1_000_000.0 + 7 * day)  # a: b came 6 days ago, kept
    assert c["kept"] == [first["key_id"], b["key_id"]] and c["dropped"] == []
    assert keyring.key_id(keys.keys()[-1]) == c["key_id"]  # the newest signs
    assert fetchurls.verify(keys.keys(), signed_a, 1_500_000.0) is not None  # the old verify
    d = attachments.rotate_key(cfg, now=1_000_000.0 + 8 * day)  # b came 7 days ago: a goes
    assert d["dropped"] == [first["key_id"]] and d["kept"] == [b["key_id"], c["key_id"]]
    assert fetchurls.verify(keys.keys(), signed_a, 1_500_000.0) is None
    text = path.read_text()
    assert text.count("# added ") == 3 and len(keys.keys()) == 3
    e = attachments.rotate_key(cfg, drop_old=True, now=1_000_000.0 + 8 * day)
    assert e["kept"] == [] and len(e["dropped"]) == 3
    assert [keyring.key_id(k) for k in keys.keys()] == [e["key_id"]]
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".attachment-key")] == []
    path.write_text("not a key\n")
    with pytest.raises(Invalid):
        attachments.rotate_key(cfg)
    assert path.read_text() == "not a key\n"  # left as it was


def test_rotating_from_the_cli_keeps_old_urls_working_and_drop_old_ends_them(stack):
    rid = store_message(stack)
    before = payload(stack, rid)["message"]["attachments"][1]["url"]
    assert get(stack, before).status == 200
    shown = stack.cli("attachments", "rotate-key").stdout
    assert shown.startswith("Added key ") and "Still verifying: " in shown
    after = payload(stack, rid)["message"]["attachments"][1]["url"]
    assert after != before
    assert get(stack, before).status == 200 and get(stack, after).status == 200  # overlap
    done = json.loads(stack.cli("attachments", "rotate-key", "--drop-old", "--json").stdout)
    assert len(done["dropped"]) == 2 and done["kept"] == []
    assert get(stack, before).status == 404 and get(stack, after).status == 404
    newest = payload(stack, rid)["message"]["attachments"][1]["url"]
    assert get(stack, newest).body == BIG
