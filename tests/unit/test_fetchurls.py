"""Fetch URLs of omitted attachment contents: the signed token (model/fetchurls.py), the `url`
the payloads give (native json and multipart, --include-raw, Postmark, SendGrid), the key file
and the part a URL names (services/attachments.py)."""
import base64
import json
import os
import stat
from dataclasses import replace
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mxhook import config as configmod
from mxhook.model import fetchurls
from mxhook.model.fetchurls import Claim, FetchUrls, make_token, verify
from mxhook.model.keyring import parse_keys
from mxhook.model.records import to_datetime
from mxhook.model.rules import Rule
from mxhook.model.targets import Destination
from mxhook.payloads import registry
from mxhook.services import attachments, keyfiles

KEY1, KEY2 = b"k" * 32, b"\x01" * 32
NOW = 1_800_000_000
FIXTURE = (Path(__file__).parent / "fixtures" / "mime" / "mixed_alternative_attachment.eml").read_bytes()
RECEIVED = "2026-11-22T12:00:00.000000Z"
RECEIVED_AT = to_datetime(RECEIVED).timestamp()


# -- the token ---------------------------------------------------------------------------------

def test_round_trip():
    token = make_token((KEY1,), "0187abc", "2", NOW + 60)
    assert verify((KEY1,), token, NOW) == Claim("0187abc", "2", NOW + 60)
    assert verify((KEY1,), make_token((KEY1,), "m", "raw", NOW + 1), NOW).part == "raw"


def test_expired_at_its_second():
    token = make_token((KEY1,), "m", "0", NOW + 60)
    assert verify((KEY1,), token, NOW + 59.9) is not None
    assert verify((KEY1,), token, NOW + 60) is None


def _reb64(obj: bytes) -> str:
    return base64.urlsafe_b64encode(obj).rstrip(b"=").decode()


@pytest.mark.parametrize("index, value", [(1, "00000000"), (2, "other"), (3, "3"), (4, str(NOW + 10**6))])
def test_each_signed_part_changed_is_refused(index, value):
    token = make_token((KEY1,), "m", "0", NOW + 60)
    head, sig = token.split(".")
    fields = base64.urlsafe_b64decode(head + "==").decode().split(":")
    fields[index] = value
    assert verify((KEY1,), _reb64(":".join(fields).encode()) + "." + sig, NOW) is None


def test_signature_changed_or_malformed_is_refused():
    token = make_token((KEY1,), "m", "0", NOW + 60)
    head, sig = token.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(sig + "="))
    flipped[0] ^= 1
    for bad in (head + "." + _reb64(bytes(flipped)), head, head + ".", "." + sig, "", "a.b.c",
                "!!!." + sig, token + "x", "x" * 2000 + "." + sig):
        assert verify((KEY1,), bad, NOW) is None, bad


def test_rotation_signs_with_the_newest_and_accepts_every_listed_key():
    old = make_token((KEY1,), "m", "0", NOW + 60)
    new = make_token((KEY1, KEY2), "m", "0", NOW + 60)
    assert verify((KEY2,), new, NOW) is not None and verify((KEY1,), new, NOW) is None
    assert verify((KEY1, KEY2), old, NOW) is not None  # overlap: the old key still listed
    assert verify((KEY2,), old, NOW) is None  # removed: its URLs stop working
    assert verify((), old, NOW) is None


def test_parse_keys():
    text = f"# keys\n{base64.b64encode(KEY1).decode()}\n\n{KEY2.hex()}\n"
    assert parse_keys(text) == (KEY1, KEY2)
    with pytest.raises(ValueError, match="line 1"):
        parse_keys(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="line 2"):
        parse_keys("#\nnot a key!\n")


def test_expiry_from_arrival_bounded_by_retention():
    urls = FetchUrls("https://mx.example", (KEY1,), ttl=7 * 86400, retention=30 * 86400)
    assert urls.expires(RECEIVED_AT + 100, RECEIVED_AT) == int(RECEIVED_AT + 7 * 86400)  # retries: same URL
    assert urls.expires(RECEIVED_AT + 8 * 86400, RECEIVED_AT) == int(RECEIVED_AT + 15 * 86400)  # a replay
    assert urls.expires(RECEIVED_AT + 28 * 86400, RECEIVED_AT) == int(RECEIVED_AT + 30 * 86400)  # never past retention
    assert FetchUrls("h", (KEY1,), ttl=50 * 86400, retention=0).expires(NOW, None) == NOW + 50 * 86400


# -- payloads ----------------------------------------------------------------------------------

URLS = FetchUrls("https://mx.example.com/", (KEY1,), ttl=7 * 86400, retention=30 * 86400)
PREFIX = "https://mx.example.com/v1/attachments/"


def _target(**kw):
    return Rule(name="r", destination=Destination("https://hooks.example/in"), id=5, **kw).target


def _render(target, *, max_attachment_size=100, max_payload_size=25 << 20, fetch_urls=URLS,
            message_id="0187msg", include_raw=False):
    rule = Rule(name="r", destination=Destination("https://hooks.example/in"), id=5, include_raw=include_raw)
    meta = {"received": RECEIVED, "queue_id": "Q1", "mail_from": "a@x.example",
            "deliveries": [{"recipients": ["in@ours.example"], "rule": rule.target_record()}]}
    return registry.inbound_request(target, delivery_id="0187msg-r", meta=meta, raw=FIXTURE,
                                    now=RECEIVED_AT + 5, nonce="n" * 32, max_attachment_size=max_attachment_size,
                                    max_payload_size=max_payload_size, message_id=message_id,
                                    fetch_urls=fetch_urls)


def _claim(url: str) -> Claim:
    assert url.startswith(PREFIX)
    return verify((KEY1,), url[len(PREFIX):], RECEIVED_AT + 60)


def test_native_json_gives_omitted_attachments_and_raw_a_url():
    doc = json.loads(_render(_target(), include_raw=True).body)
    (att,) = doc["message"]["attachments"]
    assert att["omitted"] is True
    assert _claim(att["url"]) == Claim("0187msg", "0", int(RECEIVED_AT + 7 * 86400))
    assert _claim(doc["raw"]["url"]).part == "raw"


def test_no_url_without_public_url_or_when_nothing_is_omitted():
    doc = json.loads(_render(_target(), fetch_urls=None, include_raw=True).body)
    assert "url" not in doc["message"]["attachments"][0] and "url" not in doc["raw"]
    doc = json.loads(_render(_target(), max_attachment_size=10 << 20, include_raw=True).body)
    assert "url" not in doc["message"]["attachments"][0] and "url" not in doc["raw"]
    doc = json.loads(_render(_target(), message_id=None).body)  # not from state.db: nothing to name
    assert "url" not in doc["message"]["attachments"][0]


def test_the_same_url_on_every_attempt():
    assert _render(_target()).body == _render(_target()).body


def _form(rendered) -> dict:
    msg = BytesParser(policy=default_policy).parsebytes(
        f"Content-Type: {rendered.content_type}\r\n\r\n".encode() + rendered.body)
    return {p.get_param("name", header="content-disposition"): p.get_content() for p in msg.iter_parts()}


def test_native_multipart_and_sendgrid_metadata_carry_it():
    form = _form(_render(replace(_target(), format="multipart")))
    (att,) = json.loads(form["attachments"])
    assert att["field"] is None and _claim(att["url"]).part == "0"
    info = json.loads(_form(_render(replace(_target(), dialect="sendgrid")))["attachment-info"])
    assert _claim(info["attachment1"]["url"]).part == "0"


def test_postmark_gives_url():
    (att,) = json.loads(_render(replace(_target(), dialect="postmark")).body)["Attachments"]
    assert att["Omitted"] is True and _claim(att["Url"]).part == "0"


CAPPED = {"max_attachment_size": 10 << 20, "max_payload_size": 300}  # under the body: every content goes


def test_contents_the_payload_size_cap_omits_get_a_url_too():
    doc = json.loads(_render(_target(), include_raw=True, **CAPPED).body)
    assert doc["raw"]["omitted_reason"] == "payload size cap" and _claim(doc["raw"]["url"]).part == "raw"
    (att,) = doc["message"]["attachments"]
    assert att["omitted_reason"] == "payload size cap" and _claim(att["url"]).part == "0"
    (att,) = json.loads(_form(_render(replace(_target(), format="multipart"), **CAPPED))["attachments"])
    assert att["field"] is None and _claim(att["url"]).part == "0"
    info = json.loads(_form(_render(replace(_target(), dialect="sendgrid"), **CAPPED))["attachment-info"])
    assert _claim(info["attachment1"]["url"]).part == "0"
    (att,) = json.loads(_render(replace(_target(), dialect="postmark"), **CAPPED).body)["Attachments"]
    assert att["OmittedReason"] == "payload size cap" and _claim(att["Url"]).part == "0"
    doc = json.loads(_render(_target(), fetch_urls=None, **CAPPED).body)
    assert doc["message"]["attachments"][0]["omitted"] and "url" not in doc["message"]["attachments"][0]


# -- the key file and the part a URL names ----------------------------------------------------

def _cfg(tmp_path, **web) -> configmod.Config:
    raw = {s: dict(v) for s, v in configmod.DEFAULTS.items()}
    raw["web"].update(attachment_key_file=str(tmp_path / "attachment.key"), **web)
    return configmod.Config(raw=raw)


def test_no_fetch_urls_without_public_url(tmp_path):
    assert attachments.fetch_urls(_cfg(tmp_path)) is None
    assert not (tmp_path / "attachment.key").exists()


def test_key_file_created_0640_at_first_use_and_read_again_on_change(tmp_path):
    cfg = _cfg(tmp_path, public_url="https://mx.example.com/")
    keys = keyfiles.KeyFile(str(tmp_path / "attachment.key"))
    first = attachments.fetch_urls(cfg, keys)
    assert first.base_url == "https://mx.example.com" and len(first.keys) == 1
    assert stat.S_IMODE(os.stat(keys.path).st_mode) == 0o640
    assert first.ttl == 7 * 86400 and first.retention == 30 * 86400
    with open(keys.path, "a") as f:  # rotation: a newer key appended
        f.write(base64.b64encode(KEY2).decode() + "\n")
    assert attachments.fetch_urls(cfg, keys).keys == (first.keys[0], KEY2)
    assert not keys.create()  # never over an existing file
    with open(keys.path, "a") as f:
        f.write("not a key\n")
    with pytest.raises(configmod.ConfigError, match="attachment_key_file .*line 3"):
        attachments.fetch_urls(cfg, keys)


def test_part_of_finds_the_payloads_index():
    found = attachments.part_of(FIXTURE, "0")
    doc = json.loads(_render(_target(), max_attachment_size=10 << 20).body)
    att = doc["message"]["attachments"][0]
    assert found.content == base64.b64decode(att["content"])
    assert found.content_type == att["content_type"] and found.filename == att["filename"]
    assert attachments.part_of(FIXTURE, "1") is None
    assert attachments.part_of(FIXTURE, fetchurls.RAW).content == FIXTURE
