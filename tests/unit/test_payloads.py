"""payloads.registry.render_inbound: json / multipart / raw bodies, parsed back with the stdlib."""
import base64
import json
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from dataclasses import replace

from mxhook.payloads import encodings
from mxhook.payloads.encodings import Rendered, quote_param
from mxhook.payloads.inbound import MESSAGE_FIELDS, Delivery, form_parts, header_safe, native_document
from mxhook.payloads.registry import render_inbound
from mxhook.model.rules import Rule
from mxhook.model.targets import Target
from mxhook.model.targets import Destination

FIXTURES = Path(__file__).parent / "fixtures" / "mime"
PDF = b"%PDF-1.4\n% fake pdf for tests\n" + bytes(range(256)) + b"\n%%EOF\n"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

META = {
    "received": "2026-11-22T12:00:00.123456Z", "queue_id": "4XbQ1k2Lmz", "mail_from": "reports@example.com",
    "client_addr": "192.0.2.1", "client_name": "mail.example.com", "helo": "mail.example.com",
    "header_from": "reports@example.com", "subject": "Monthly report", "message_id": None,
    "deliveries": [{"recipients": ["in@ours.example", "in2@ours.example"],
                    "rule": Rule(name="reports",
                                 destination=Destination("https://hooks.example/in")).target.to_record()}],
}
DELIVERY_ID = "0187a2b3c4d5e6f7a1b2c3d4e5f6-reports"


def target(**changes) -> Target:
    rule = Rule(name="reports", destination=Destination("https://hooks.example/in"), id=7)
    return replace(rule.target, **changes)


def raw(name="mixed_alternative_attachment.eml") -> bytes:
    return (FIXTURES / name).read_bytes()


def render(fmt, *, raw_bytes=None, meta=META, tgt=None, recipients=("in@ours.example",),
           max_attachment_size=10 * 1024 * 1024, max_payload_size=25 * 1024 * 1024) -> Rendered:
    return render_inbound(
        fmt, delivery_id=DELIVERY_ID, meta=meta, raw=raw() if raw_bytes is None else raw_bytes,
        target=tgt or target(), recipients=list(recipients) if recipients is not None else None,
        max_attachment_size=max_attachment_size, max_payload_size=max_payload_size)


# ---------------------------------------------------------------------------------------------
# json

def test_json_native_schema():
    r = render("json")
    assert r.content_type == "application/json"
    doc = json.loads(r.body.decode("utf-8"))
    assert list(doc) == ["id", "type", "received", "rule", "envelope", "message"]
    assert doc["id"] == DELIVERY_ID
    assert doc["type"] == "inbound"
    assert doc["received"] == "2026-11-22T12:00:00.123456Z"
    assert doc["rule"] == "reports"
    assert doc["envelope"] == {
        "mail_from": "reports@example.com", "recipients": ["in@ours.example"], "recipient_tag": None,
        "client_addr": "192.0.2.1", "client_name": "mail.example.com", "helo": "mail.example.com",
        "queue_id": "4XbQ1k2Lmz",
    }
    m = doc["message"]
    assert list(m) == list(MESSAGE_FIELDS)
    assert m["from"] == [{"name": "Reports", "address": "reports@example.com"}]
    assert m["to"] == [{"name": "", "address": "in@ours.example"}]
    assert m["subject"] == "Monthly report"
    assert m["text"] == "Report attached."
    assert m["html"] == "<p>Report <i>attached</i>.</p>"
    assert m["headers"][0] == {"name": "From", "value": "Reports <reports@example.com>"}
    assert m["size"] == len(raw())
    assert m["defects"] == []
    [att] = m["attachments"]
    assert base64.b64decode(att["content"]) == PDF
    assert att["filename"] == "report.pdf" and att["size"] == len(PDF)
    assert "api_key" not in doc


def test_json_is_utf8_not_ascii_escaped():
    r = render("json", raw_bytes=(FIXTURES / "iso2022jp.eml").read_bytes())
    assert "会議の件".encode("utf-8") in r.body
    assert json.loads(r.body)["message"]["subject"] == "会議の件"


def test_json_api_key_only_when_set():
    doc = json.loads(render("json", tgt=target(api_key="k-123")).body)
    assert doc["api_key"] == "k-123"
    for empty in (None, ""):
        assert "api_key" not in json.loads(render("json", tgt=target(api_key=empty)).body)


def test_recipients_default_to_the_rule_s_delivery_in_meta():
    doc = json.loads(render("json", recipients=None).body)
    assert doc["envelope"]["recipients"] == ["in@ours.example", "in2@ours.example"]


def test_json_attachment_over_max_attachment_size():
    doc = json.loads(render("json", max_attachment_size=100).body)
    [att] = doc["message"]["attachments"]
    assert att["content"] is None and att["omitted"] is True
    assert att["omitted_reason"] == "size 293 bytes exceeds max_attachment_size 100"


def _two_attachments() -> bytes:
    def part(name, data):
        return (f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                f"filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode() + \
            base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"From: a@example.org\r\nSubject: two\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
            + part("big.bin", b"B" * 30000) + part("small.bin", b"s" * 3000) + b"--b--\r\n")


def test_json_payload_cap_drops_largest_attachment_first():
    full = render("json", raw_bytes=_two_attachments())
    cap = len(full.body) - 1000  # dropping the big one (40000 base64 chars) is enough
    r = render("json", raw_bytes=_two_attachments(), max_payload_size=cap)
    assert len(r.body) <= cap
    big, small = json.loads(r.body)["message"]["attachments"]
    assert (big["filename"], big["content"], big["omitted"], big["omitted_reason"]) == \
        ("big.bin", None, True, "payload size cap")
    assert big["size"] == 30000  # the size stays: it says what was left out
    assert base64.b64decode(small["content"]) == b"s" * 3000 and "omitted" not in small


def test_json_payload_cap_drops_all_when_needed_and_exact_fit_keeps_all():
    full = render("json", raw_bytes=_two_attachments())
    assert json.loads(render("json", raw_bytes=_two_attachments(), max_payload_size=len(full.body)).body) \
        == json.loads(full.body)
    r = render("json", raw_bytes=_two_attachments(), max_payload_size=2000)
    doc = json.loads(r.body)
    assert len(r.body) <= 2000
    assert [a["omitted_reason"] for a in doc["message"]["attachments"]] == ["payload size cap"] * 2
    assert doc["message"]["defects"] == []


def test_json_payload_cap_that_text_alone_exceeds_is_sent_with_a_defect():
    r = render("json", raw_bytes=_two_attachments(), max_payload_size=100)
    doc = json.loads(r.body)
    assert doc["message"]["defects"] == [
        "payload exceeds max_payload_size 100 even without attachment contents"]
    assert doc["message"]["text"] == "body"


# ---------------------------------------------------------------------------------------------
# multipart

def parse_form(r: Rendered):
    """(fields {name: text}, files {name: (filename, content type, bytes)}, field order)."""
    assert r.content_type.startswith("multipart/form-data; boundary=")
    msg = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + r.content_type.encode() + b"\r\n\r\n" + r.body)
    assert msg.is_multipart() and not msg.defects
    fields, files, order = {}, {}, []
    for part in msg.iter_parts():
        assert part.get_content_disposition() == "form-data"
        name = part.get_param("name", header="content-disposition")
        order.append(name)
        payload = part.get_payload(decode=True)
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), part.get_content_type(), payload)
        else:
            fields[name] = payload.decode("utf-8")
    return fields, files, order


def test_multipart_fields_and_file_parts():
    fields, files, order = parse_form(render("multipart", raw_bytes=(FIXTURES / "related_inline_image.eml").read_bytes()))
    assert order == ["id", "type", "received", "rule", "envelope", *MESSAGE_FIELDS,
                     "attachment-count", "attachment-1", "attachment-2"]
    assert fields["id"] == DELIVERY_ID
    assert fields["type"] == "inbound"
    assert fields["received"] == "2026-11-22T12:00:00.123456Z"
    assert fields["rule"] == "reports"
    assert json.loads(fields["envelope"])["recipients"] == ["in@ours.example"]
    assert json.loads(fields["from"]) == [{"name": "", "address": "news@example.com"}]
    assert json.loads(fields["headers"])[2] == {"name": "Subject", "value": "Newsletter"}
    assert fields["subject"] == "Newsletter"
    assert fields["message_id"] == "" and fields["date_iso"] == ""  # null → empty
    assert json.loads(fields["references"]) == []
    assert fields["text"] == "Newsletter (text version)"
    assert fields["html"] == '<html><body><img src="cid:logo.123@example.com"></body></html>'
    assert fields["size"] == str(len((FIXTURES / "related_inline_image.eml").read_bytes()))
    assert json.loads(fields["defects"]) == []
    assert fields["attachment-count"] == "2"
    assert json.loads(fields["attachments"]) == [
        {"filename": None, "content_type": "image/png", "size": 70, "content_id": "logo.123@example.com",
         "disposition": "inline", "field": "attachment-1"},
        {"filename": "spacer.gif", "content_type": "image/gif", "size": 14, "content_id": None,
         "disposition": "inline", "field": "attachment-2"},
    ]
    assert files == {
        "attachment-1": ("attachment-1", "image/png", PNG),  # no filename: the field name
        "attachment-2": ("spacer.gif", "image/gif", base64.b64decode("R0lGODlhAQABAAAAACw=")),
    }


def test_multipart_api_key_and_unicode_filenames():
    r = render("multipart", raw_bytes=(FIXTURES / "rfc2231_filenames.eml").read_bytes(), tgt=target(api_key="k-1"))
    fields, files, order = parse_form(r)
    assert order[:5] == ["id", "type", "received", "rule", "api_key"]
    assert fields["api_key"] == "k-1"
    # raw UTF-8 in the quoted filename, as browsers send it (RFC 7578 section 4.2)
    assert b'filename="R\xc3\xa9sum\xc3\xa9 \xe2\x82\xac.pdf"' in r.body
    assert b'filename="Gr\xc3\xbc\xc3\x9fe_und_mehr.txt"' in r.body
    assert b'filename="\xc3\x9cbersicht.xlsx"' in r.body
    assert [v[2] for v in files.values()] == [b"%PDF", b"Gr\xfc\xdfe", b"PK\x03\x04"]


def test_multipart_filename_quoting_cannot_break_out():
    evil = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/x-y\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''a%22%0DX-Evil%3A%201%0A.txt\r\n\r\nx\r\n--b--\r\n")
    r = render("multipart", raw_bytes=evil)
    assert b'filename="a%22%0DX-Evil: 1 .txt"' in r.body  # LF was unfolded by normalize already
    fields, files, _ = parse_form(r)
    assert files["attachment-1"] == ("a%22%0DX-Evil: 1 .txt", "application/x-y", b"x")
    assert json.loads(fields["attachments"])[0]["filename"] == 'a"\rX-Evil: 1 .txt'
    assert quote_param('q"\r\n') == "q%22%0D%0A"
    assert quote_param("C:\\x\\") == "C:%5Cx%5C"  # read alike by RFC 2045 and WHATWG readers


def test_multipart_boundary_is_not_in_the_content():
    doc = native_document(Delivery.of(delivery_id="d", meta=META, raw=raw(), target=target(), recipients=[]))
    r = encodings.multipart(*form_parts(doc))
    boundary = r.content_type.split("boundary=")[1]
    assert r.body.count(boundary.encode()) == len(parse_form(r)[2]) + 1


def test_multipart_payload_cap_drops_largest_file_first():
    full = render("multipart", raw_bytes=_two_attachments())
    cap = len(full.body) - 1000
    r = render("multipart", raw_bytes=_two_attachments(), max_payload_size=cap)
    assert len(r.body) <= cap
    fields, files, _ = parse_form(r)
    assert list(files) == ["attachment-2"]
    assert files["attachment-2"] == ("small.bin", "application/octet-stream", b"s" * 3000)
    big, small = json.loads(fields["attachments"])
    assert (big["field"], big["omitted"], big["omitted_reason"], big["size"]) == \
        (None, True, "payload size cap", 30000)
    assert small["field"] == "attachment-2"
    assert fields["attachment-count"] == "2"


def test_multipart_payload_cap_that_text_alone_exceeds():
    fields, files, _ = parse_form(render("multipart", raw_bytes=_two_attachments(), max_payload_size=100))
    assert files == {}
    assert json.loads(fields["defects"]) == ["payload exceeds max_payload_size 100 even without attachment contents"]


# ---------------------------------------------------------------------------------------------
# raw

def test_raw_prepends_envelope_headers_to_the_original_bytes():
    original = raw()
    r = render("raw", recipients=["in@ours.example", "in2@ours.example"])
    assert r.content_type == "message/rfc822"
    head, sep, rest = r.body.partition(b"From: Reports")
    assert rest and r.body.endswith(original) and len(r.body) == len(head) + len(original)
    assert head.decode().split("\r\n")[:-1] == [
        "X-Mxhook-Mail-From: reports@example.com",
        "X-Mxhook-Rcpt-To: in@ours.example",
        "X-Mxhook-Rcpt-To: in2@ours.example",
        "X-Mxhook-Client-Addr: 192.0.2.1",
        "X-Mxhook-Client-Name: mail.example.com",
        "X-Mxhook-Helo: mail.example.com",
        "X-Mxhook-Queue-Id: 4XbQ1k2Lmz",
        "X-Mxhook-Received: 2026-11-22T12:00:00.123456Z",
        "X-Mxhook-Rule: reports",
        f"X-Mxhook-Delivery-Id: {DELIVERY_ID}",
    ]
    msg = BytesParser(policy=default_policy).parsebytes(r.body)
    assert msg.get_all("X-Mxhook-Rcpt-To") == ["in@ours.example", "in2@ours.example"]
    assert msg["Subject"] == "Monthly report"


def test_raw_keeps_lf_line_ends_of_an_lf_message_and_null_sender():
    original = (FIXTURES / "plain_ascii.eml").read_bytes()
    r = render("raw", raw_bytes=original, meta=dict(META, mail_from=""), tgt=target(api_key="k-9"))
    assert b"\r\n" not in r.body
    assert r.body.startswith(b"X-Mxhook-Mail-From: <>\nX-Mxhook-Rcpt-To: in@ours.example\n")
    assert b"\nX-Mxhook-Api-Key: k-9\nReturn-Path:" in r.body


def test_raw_envelope_crlf_injection_is_neutralized():
    hostile = dict(META, mail_from="a@x.org\r\nX-Injected: 1", helo="evil\nBcc: victim@x.org\r\n\r\nbody",
                   client_name="n\x00ame\x85\u2028x", queue_id=None)
    r = render("raw", meta=hostile, recipients=["in@ours.example\r\nX-Injected: 2"])
    msg = BytesParser(policy=default_policy).parsebytes(r.body)
    assert msg["X-Injected"] is None and msg["Bcc"] is None
    assert msg["X-Mxhook-Mail-From"] == "a@x.orgX-Injected: 1"
    assert msg["X-Mxhook-Rcpt-To"] == "in@ours.exampleX-Injected: 2"
    assert msg["X-Mxhook-Helo"] == "evilBcc: victim@x.orgbody"
    assert msg["X-Mxhook-Client-Name"] == "namex"
    assert msg["X-Mxhook-Queue-Id"] == ""
    assert msg["Subject"] == "Monthly report"  # the original headers follow intact


@pytest.mark.parametrize("value, safe", [
    ("plain", "plain"), (None, ""), (42, "42"), ("a\r\nb", "ab"), ("\ttab ", "tab"), ("ü@ü.de", "ü@ü.de"),
])
def test_header_safe(value, safe):
    assert header_safe(value) == safe


def test_unknown_format_raises_value_error():
    with pytest.raises(ValueError, match="unknown payload format 'xml'"):
        render("xml")


@pytest.mark.parametrize("fmt", ["json", "multipart", "raw"])
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.eml")), ids=lambda p: p.name)
def test_every_fixture_renders_in_every_format(fmt, path):
    r = render(fmt, raw_bytes=path.read_bytes())
    assert isinstance(r.body, bytes) and r.body
    if fmt == "json":
        json.loads(r.body.decode("utf-8"))
    elif fmt == "multipart":
        parse_form(r)


# ---------------------------------------------------------------------------------------------
# What the payloads say is the message the milter's decision saw

@pytest.mark.parametrize("spooled", [
    b"\r\n \r\nFrom: ceo@ours.example\r\nSubject: Wire the money\r\n\r\nPay now.\r\n",  # milter
    b" \r\nFrom: ceo@ours.example\r\nSubject: Wire the money\r\n\r\nPay now.\r\n",  # as sent
], ids=["as the milter spools it", "as sent"])
def test_a_message_without_header_section_shows_no_fields_in_json_and_multipart(spooled):
    msg = json.loads(render("json", raw_bytes=spooled).body)["message"]
    assert (msg["headers"], msg["from"], msg["subject"], msg["date"]) == ([], [], None, None)
    assert "From: ceo@ours.example" in msg["text"]
    fields, _, _ = parse_form(render("multipart", raw_bytes=spooled))
    assert (fields["headers"], fields["from"], fields["subject"]) == ("[]", "[]", "")


def test_a_forwarded_message_is_posted_as_its_bytes_in_json_and_multipart():
    eml = raw("rfc822_byte_exact.eml")
    inner = eml.split(b"Content-Type: message/rfc822\r\n\r\n", 1)[1].split(b"\r\n--out\r\n", 1)[0]
    doc = json.loads(render("json", raw_bytes=eml).body)
    assert base64.b64decode(doc["message"]["attachments"][0]["content"]) == inner
    r = render("multipart", raw_bytes=eml)
    boundary = r.content_type.split("boundary=", 1)[1].encode()
    # the file part's bytes, not as a MIME parser would read the enclosed message
    assert (b'; filename="attachment-1"\r\nContent-Type: message/rfc822\r\n\r\n' + inner
            + b"\r\n--" + boundary) in r.body


# The boundary made from a seed (the delivery id: SendGrid's and the native multipart body, the
# same bytes on every retry) is passed over when a part holds it, as a random one is
# (tests/unit/test_dialect_mailgun.py): parts holding the first candidates parse back whole.
from hypothesis import given, settings, strategies as st  # noqa: E402

SEED = "0187a2b3c4d5e6f7a1b2c3d4e5f6-reports"
SEEDED = []
for _n in range(3):
    SEEDED.append(encodings.seeded_boundary(SEED, [("x", "".join(SEEDED))], []))
SEEDED_TEXT = st.lists(st.sampled_from(
    ["x", "\r\n", "--", "é", *(p + c + s for c in SEEDED for p, s in (("", ""), ("\r\n--", "\r\n"), ("--", "--\r\n")))]),
    max_size=10).map("".join)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(SEEDED_TEXT, min_size=1, max_size=3), data=SEEDED_TEXT)
def test_a_part_holding_a_seeded_boundary_never_breaks_the_body(values, data):
    fields = [(f"f{i}", v) for i, v in enumerate(values)]
    files = [("file", "f.bin", "application/octet-stream", data.encode("utf-8"))]
    boundary = encodings.seeded_boundary(SEED, fields, files)
    r = encodings.multipart(fields, files, boundary=boundary)
    assert boundary == encodings.seeded_boundary(SEED, fields, files)  # a retry: the same bytes
    msg = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + r.content_type.encode() + b"\r\n\r\n" + r.body)
    assert not msg.defects
    parts = list(msg.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == [v.encode() for _, v in fields] + [data.encode()]
