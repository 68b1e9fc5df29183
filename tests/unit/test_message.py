"""message.normalize on real-world-shaped fixtures (tests/unit/fixtures/mime/), incl. broken ones."""
import base64
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxhook.model import message as message_module
from mxhook.model.message import decode_text, normalize, split_headers

FIXTURES = Path(__file__).parent / "fixtures" / "mime"
ALL_FIXTURES = sorted(FIXTURES.glob("*.eml"))


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def norm(name: str, **kw) -> dict:
    return normalize(load(name), **kw)


def content(att: dict) -> bytes:
    return base64.b64decode(att["content"])


def test_plain_ascii_every_field():
    raw = load("plain_ascii.eml")
    assert b"\r\n" not in raw  # this fixture has LF line ends
    m = normalize(raw)
    assert m["headers"] == [
        {"name": "Return-Path", "value": "<alice@example.org>"},
        {"name": "From", "value": '"Alice Example" <Alice@Example.ORG>'},
        {"name": "To", "value": "Bob <bob@ours.example>, carol@ours.example"},
        {"name": "Cc", "value": '"Dave, the third" <dave@example.net>'},
        {"name": "Reply-To", "value": "replies@example.org"},
        {"name": "Subject", "value": "Quarterly numbers, folded over two lines"},
        {"name": "Date", "value": "Tue, 15 Nov 2022 16:04:05 -0500"},
        {"name": "Message-ID", "value": "<20221115.1@example.org>"},
        {"name": "In-Reply-To", "value": "<20221114.9@example.org>"},
        {"name": "References", "value": "<20221113.1@example.org> <20221114.9@example.org>"},
        {"name": "MIME-Version", "value": "1.0"},
        {"name": "Content-Type", "value": "text/plain; charset=us-ascii"},
        {"name": "Content-Transfer-Encoding", "value": "7bit"},
    ]
    assert m["from"] == [{"name": "Alice Example", "address": "alice@example.org"}]
    assert m["to"] == [
        {"name": "Bob", "address": "bob@ours.example"},
        {"name": "", "address": "carol@ours.example"},
    ]
    assert m["cc"] == [{"name": "Dave, the third", "address": "dave@example.net"}]
    assert m["reply_to"] == [{"name": "", "address": "replies@example.org"}]
    assert m["subject"] == "Quarterly numbers, folded over two lines"
    assert m["message_id"] == "<20221115.1@example.org>"
    assert m["date"] == "Tue, 15 Nov 2022 16:04:05 -0500"
    assert m["date_iso"] == "2022-11-15T21:04:05Z"
    assert m["in_reply_to"] == "<20221114.9@example.org>"
    assert m["references"] == ["<20221113.1@example.org>", "<20221114.9@example.org>"]
    assert m["text"] == "Hi Bob,\n\nthe numbers are attached.\n-- \nAlice\n"
    assert m["text_parts"] == [m["text"]]
    assert m["html"] == "" and m["html_parts"] == []
    assert m["attachments"] == []
    assert m["size"] == len(raw)
    assert m["defects"] == []
    json.dumps(m)  # JSON-able as it stands


def test_latin1_8bit_body():
    m = norm("latin1_8bit.eml")
    assert m["text"] == "Grüße aus Köln, café à la crème.\n"
    assert m["defects"] == []


def test_windows1252_quoted_printable():
    m = norm("windows1252_qp.eml")
    assert m["text"] == "\u201cSmart quotes\u201d cost \u20ac50 \u2013 that\u2019s a lot\u2026\n"
    assert m["defects"] == []


def test_iso2022jp_body_subject_and_display_name():
    m = norm("iso2022jp.eml")
    assert m["subject"] == "会議の件"
    assert m["from"] == [{"name": "山田太郎", "address": "taro@example.jp"}]
    assert m["text"] == "こんにちは、世界。\n"
    assert m["defects"] == []


def test_koi8r_base64():
    m = norm("koi8r_base64.eml")
    assert m["subject"] == "Привет"
    assert m["text"] == "Привет, мир!\n"
    assert m["defects"] == []


def test_utf8_quoted_printable_soft_breaks():
    m = norm("utf8_qp.eml")
    assert m["subject"] == "Déjà vu"
    assert m["text"] == (
        "Déjà vu: a line that is long enough to need a soft line break in quoted-printable "
        "encoding, really.\nÜnïcödé ✓\n"
    )


def test_utf8_base64_html_only():
    m = norm("utf8_base64_html.eml")
    assert m["text"] == "" and m["text_parts"] == []
    assert m["html"] == "<html><body><p>Grüße — <b>bold</b></p></body></html>\n"
    assert m["html_parts"] == [m["html"]]


PDF = b"%PDF-1.4\n% fake pdf for tests\n" + bytes(range(256)) + b"\n%%EOF\n"


def test_alternative_nested_in_mixed_with_attachment():
    m = norm("mixed_alternative_attachment.eml")
    assert m["text"] == "Report attached."
    assert m["html"] == "<p>Report <i>attached</i>.</p>"
    assert m["attachments"] == [{
        "filename": "report.pdf", "content_type": "application/pdf", "size": len(PDF),
        "content_id": None, "disposition": "attachment",
        "content": base64.b64encode(PDF).decode("ascii"),
    }]
    assert m["defects"] == []


def test_attachment_over_the_size_cap_is_marked_omitted():
    m = norm("mixed_alternative_attachment.eml", max_attachment_size=100)
    assert m["attachments"] == [{
        "filename": "report.pdf", "content_type": "application/pdf", "size": 293,
        "content_id": None, "disposition": "attachment", "content": None, "omitted": True,
        "omitted_reason": "size 293 bytes exceeds max_attachment_size 100",
    }]
    assert norm("mixed_alternative_attachment.eml", max_attachment_size=293)["attachments"][0]["content"]


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_related_inline_images():
    m = norm("related_inline_image.eml")
    assert m["text"] == "Newsletter (text version)"
    assert m["html"] == '<html><body><img src="cid:logo.123@example.com"></body></html>'
    assert m["attachments"] == [
        {"filename": None, "content_type": "image/png", "size": 70,
         "content_id": "logo.123@example.com", "disposition": "inline",
         "content": base64.b64encode(PNG).decode("ascii")},
        {"filename": "spacer.gif", "content_type": "image/gif", "size": 14,
         "content_id": None, "disposition": "inline", "content": "R0lGODlhAQABAAAAACw="},
    ]
    assert m["defects"] == []


def test_8bit_raw_header_bytes():
    m = norm("header_8bit.eml")
    assert m["headers"][:4] == [
        {"name": "From", "value": "Jürgen Müller <juergen@example.de>"},  # Latin-1 bytes
        {"name": "To", "value": '"Zoë Saldana" <zoe@ours.example>'},  # UTF-8 bytes
        {"name": "Subject", "value": "Grüße und Straße"},
        {"name": "X-Weird", "value": "ÿþ raw bytes"},
    ]
    assert m["from"] == [{"name": "Jürgen Müller", "address": "juergen@example.de"}]
    assert m["to"] == [{"name": "Zoë Saldana", "address": "zoe@ours.example"}]
    assert m["subject"] == "Grüße und Straße"
    assert m["text"] == "Body is plain.\n"
    assert m["defects"] == []


def test_missing_closing_boundary_keeps_both_parts():
    m = norm("broken_missing_close.eml")
    assert m["text_parts"] == ["first part", "second part, and then the message just ends"]
    assert m["text"] == "first part\nsecond part, and then the message just ends"
    assert m["defects"] == ["message: CloseBoundaryNotFoundDefect"]


def test_declared_boundary_absent_body_kept_as_text():
    m = norm("broken_boundary_absent.eml")
    assert m["text"] == "Just text, no parts at all.\n"
    assert m["attachments"] == []
    assert m["defects"] == [
        "message: StartBoundaryNotFoundDefect",
        "message: MultipartInvariantViolationDefect",
        "message: multipart/mixed without its boundary, body kept as text",
    ]


def test_bad_base64_decodes_what_it_can():
    m = norm("broken_base64.eml")
    assert m["text"] == "hello world"
    assert m["attachments"] == [{
        "filename": "data.bin", "content_type": "application/octet-stream", "size": 3,
        "content_id": None, "disposition": "attachment",
        "content": base64.b64encode(b"\x00\x01\x02").decode("ascii"),
    }]
    assert m["defects"] == [
        "part 1: InvalidBase64CharactersDefect",
        "part 1: InvalidBase64PaddingDefect",
        "part 2: InvalidBase64LengthDefect",
    ]


def test_unknown_and_misdeclared_charsets():
    m = norm("unknown_charset.eml")
    assert m["text_parts"] == [
        "UTF-8 really: été",
        "Latin-1 really: été €",
        "Misdeclared ASCII: naïve",
        "Broken UTF-8: \xff end",  # a stray Latin-1 byte, read as windows-1252
    ]
    assert m["defects"] == [
        "part 1: unknown charset 'x-unknown', decoded as utf-8",
        "part 2: unknown charset 'x-unknown', decoded as windows-1252",
        "part 3: 8-bit text declared as us-ascii, decoded as utf-8",
        "part 4: text is not valid utf-8, bytes outside utf-8 sequences read as windows-1252",
    ]


def test_message_rfc822_is_an_attachment():
    m = norm("rfc822_attachment.eml")
    assert m["text"] == "See the forwarded message."  # the inner body is not the outer text
    [att] = m["attachments"]
    inner = (
        b"From: origin@example.com\r\nTo: forwarder@example.org\r\nSubject: original\r\n"
        b"Message-ID: <orig.1@example.com>\r\n\r\nOriginal body, not part of the outer text."
    )
    assert {k: v for k, v in att.items() if k != "content"} == {
        "filename": "original.eml", "content_type": "message/rfc822", "size": len(inner),
        "content_id": None, "disposition": "attachment",
    }
    assert content(att) == inner
    assert normalize(content(att))["subject"] == "original"


def test_rfc2231_and_encoded_word_filenames():
    m = norm("rfc2231_filenames.eml")
    assert m["text"] == "Three files."
    assert [(a["filename"], a["content_type"], content(a)) for a in m["attachments"]] == [
        ("Résumé €.pdf", "application/pdf", b"%PDF"),
        ("Grüße_und_mehr.txt", "text/plain; charset=iso-8859-1", b"Gr\xfc\xdfe"),  # text with a filename: attachment, its charset kept
        ("Übersicht.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", b"PK\x03\x04"),
    ]


def test_raw_utf8_filename_parameter():
    raw = (b"Content-Type: application/x-y\r\nContent-Disposition: attachment; "
           b"filename=\"caf\xc3\xa9.pdf\"\r\n\r\nx")
    assert normalize(raw)["attachments"][0]["filename"] == "café.pdf"


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_crlf_and_lf_give_the_same_result(path):
    raw = path.read_bytes()
    lf = normalize(raw.replace(b"\r\n", b"\n"))
    crlf = normalize(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    for m in (lf, crlf):
        m.pop("size")
        for a in m["attachments"]:
            if a["content_type"].startswith("message/"):  # kept with the message's own line ends
                a.pop("content"), a.pop("size")
    assert lf == crlf


@pytest.mark.parametrize("date, iso", [
    ("Tue, 15 Nov 2022 16:04:05 -0500", "2022-11-15T21:04:05Z"),
    ("15 Nov 2022 16:04:05 +0100", "2022-11-15T15:04:05Z"),
    ("Tue, 15 Nov 2022 16:04:05 -0000", "2022-11-15T16:04:05Z"),
    ("Tue, 15 Nov 2022 16:04:05 GMT", "2022-11-15T16:04:05Z"),
    ("Tue, 15 Nov 2022 16:04:05 EST", "2022-11-15T21:04:05Z"),
])
def test_date_iso(date, iso):
    m = normalize(f"Date: {date}\n\nx".encode())
    assert (m["date"], m["date_iso"]) == (date, iso)
    assert m["defects"] == []


def test_unparsable_date_is_kept_with_a_defect():
    m = normalize(b"Date: yesterday-ish\n\nx")
    assert (m["date"], m["date_iso"]) == ("yesterday-ish", None)
    assert m["defects"] == ["unparsable Date: 'yesterday-ish'"]


def test_several_from_headers_and_addresses_stay_a_list():
    m = normalize(b"From: a@x.org, B <b@y.org>\nFrom: c@z.org\n\nx")
    assert [a["address"] for a in m["from"]] == ["a@x.org", "b@y.org", "c@z.org"]


def test_a_line_that_is_not_a_field_starts_the_body_as_in_postfix():
    raw = b"Subject: a\n  continued\nnot a header\nX-A: 1\n\nbody"
    fields, defects = split_headers(raw)
    assert fields == [("Subject", b" a\n  continued")]
    assert defects == ["header section ends at a line that is not a header field: 'not a header'"]
    assert normalize(raw)["text"] == "not a header\nX-A: 1\n\nbody"


def test_text_part_with_attachment_disposition_is_not_body():
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nbody\n"
           b"--b\nContent-Type: text/plain\nContent-Disposition: attachment\n\nfile\n"
           b"--b\nContent-Type: text/html\nContent-Disposition: inline\n\n<p>inline html</p>\n--b--\n")
    m = normalize(raw)
    assert m["text"] == "body"
    assert m["html"] == "<p>inline html</p>"
    assert [(a["filename"], a["disposition"], content(a)) for a in m["attachments"]] == [
        (None, "attachment", b"file")]


def test_invalid_content_type_and_utf7_surrogates_are_json_safe():
    m = normalize(b"Content-Type: \xff/\xfe\n\nx")
    assert m["attachments"][0]["content_type"] == "application/octet-stream"
    assert m["defects"] == ["message: invalid content type 'ÿ/þ', taken as application/octet-stream"]
    m = normalize(b"Content-Type: text/plain; charset=utf-7\n\n+2AA-")  # a lone surrogate
    json.dumps(m, ensure_ascii=False).encode("utf-8")
    assert "\ufffd" in m["text"]


def test_deep_nesting_and_many_parts_are_bounded():
    raw = b"Subject: deep\n"
    for i in range(1500):
        raw += b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
    m = normalize(raw + b"Content-Type: text/plain\n\ninner\n")
    assert m["subject"] == "deep"
    assert m["defects"] and ("nested" in m["defects"][-1])
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\nContent-Type: a/b\n\nx\n" * 1200 + b"--b--\n"
    m = normalize(raw)
    assert len(m["attachments"]) == 1000
    assert m["defects"] == ["more than 1000 parts, the rest skipped"]


def _nested(depth: int, subtype: bytes, innermost: bytes, beside: bytes) -> bytes:
    """A multipart/mixed whose first part opens `depth - 1` nested multipart/<subtype> levels
    around `innermost`, and whose other parts are `beside`."""
    head = b"".join(b'Content-Type: multipart/%s; boundary="b%d"\r\n\r\n--b%d\r\n' % (subtype, i, i)
                    for i in range(1, depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(1, depth)))
    return (b'Subject: deep\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n'
            b"--b0\r\n" + head + innermost + tail + b"\r\n" + beside + b"--b0--\r\n")


BESIDE_TEXT = b"--b0\r\nContent-Type: text/plain\r\n\r\nbeside it\r\n"


@pytest.mark.parametrize("depth", [51, 1000, 5000])
def test_parts_beside_a_too_deep_nesting_keep_their_text_and_attachments(depth):
    # The stdlib parser recurses once per level and gave up (RecursionError) near 1,000
    # levels: then the whole message lost its text and attachments, not only the deep part.
    pdf = (b"--b0\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=x.pdf"
           b"\r\n\r\nPDF\r\n")
    m = normalize(_nested(depth, b"mixed", b"Content-Type: text/plain\r\n\r\ntoo deep to see\r\n",
                          BESIDE_TEXT + pdf))
    assert m["text"] == "beside it"
    assert [a["filename"] for a in m["attachments"]] == ["x.pdf"]
    [defect] = m["defects"]
    assert defect.endswith("multipart nested deeper than 50 levels, skipped")


@pytest.mark.parametrize("depth", [50, 51, 52])  # 51: the header-less part is the first one cut
def test_a_deep_digest_part_without_content_type_is_no_trouble(depth):
    # a part without Content-Type in a multipart/digest is message/rfc822 by default: the
    # parser's depth bound must cope with the missing header (it raised KeyError)
    m = normalize(_nested(depth, b"digest", b"\r\nSubject: inner\r\n\r\nhi\r\n", BESIDE_TEXT))
    assert m["text"] == "beside it"
    assert not any("unreadable" in d for d in m["defects"]), m["defects"]


def test_a_message_attachment_nested_thousands_deep_is_passed_on_unchanged():
    inner = b"Subject: innermost\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    for i in range(3000):
        inner = b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % i + inner
    raw = (b'Subject: top\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: text/plain\r\n\r\nbody text\r\n"
           b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--B--\r\n")
    m = normalize(raw)
    assert m["text"] == "body text" and m["defects"] == []
    [att] = m["attachments"]
    assert att["content_type"] == "message/rfc822"
    assert base64.b64decode(att["content"]) == inner  # the parser's cut is invisible


@pytest.mark.parametrize("data, charset, expected", [
    (b"plain", None, ("plain", None)),
    (b"caf\xc3\xa9", None, ("café", "8-bit text declared as us-ascii (default), decoded as utf-8")),
    (b"caf\xe9", None, ("café", "8-bit text declared as us-ascii (default), decoded as windows-1252")),
    (b"\x93q\x94 \x81", "iso-8859-1", ("\u201cq\u201d \x81", None)),  # WHATWG: latin-1 is cp1252
    (b"\xd4\xc5\xd3\xd4", "koi8-r", ("тест", None)),
    (b"\xb2\xe2\xca\xd4", "gb2312", ("测试", None)),
    (b"x", "base64", ("x", "unknown charset 'base64', decoded as utf-8")),  # a codec, no charset
    (b"\\u0041", "unicode-escape", ("\\u0041", "unknown charset 'unicode-escape', decoded as utf-8")),
    (b"\xe9", "utf-8", ("\xe9", "text is not valid utf-8, bytes outside utf-8 sequences read as windows-1252")),
    (b"caf\xe9 \x80", "UTF-8", ("caf\xe9 \u20ac", "text is not valid UTF-8, bytes outside utf-8 sequences read as windows-1252")),
    # a UTF-8 text with one stray Latin-1 byte keeps its UTF-8 characters
    (b"\xc3\xa9t\xc3\xa9 \xe9", "utf-8", ("\xe9t\xe9 \xe9", "text is not valid utf-8, bytes outside utf-8 sequences read as windows-1252")),
    (b"\xe2\x82", "utf8", ("\xe2\u201a", "text is not valid utf8, bytes outside utf-8 sequences read as windows-1252")),
    # other declared charsets: UTF-8 if the text is that, else the declared charset with U+FFFD
    # for what it cannot read (a whole text turned to windows-1252 would be all mojibake)
    (b"\x82\xa0\xff", "shift_jis", ("\u3042\ufffd", "text is not valid shift_jis, undecodable bytes replaced")),
    # the vendor supersets mailers write under the standard label
    (b"\x87\x40\x82\xa0", "Shift_JIS", ("\u2460\u3042", "text is not valid Shift_JIS, decoded as cp932")),
    (b"\xad\xa1", "euc-jp", ("\u2460", "text is not valid euc-jp, decoded as euc_jis_2004")),
    # labels read as their superset from the start, as in header encoded words (one table:
    # headers.charset_codec), so no defect
    (b"\x81\x41", "ks_c_5601-1987", ("\uac02", None)),
    (b"\x87\x40", "big5", ("\u43f0", None)),
    (b"\x80\xa1", "tis-620", ("\u20ac\u0e01", None)),
    (b"\xa1", "windows-874", ("\u0e01", None)),
    (b"\xe0", "iso-8859-8-i", ("\u05d0", None)),
    (b"\xe1\xae", "iso-8859-7", ("\u03b1\ufffd", "text is not valid iso-8859-7, undecodable bytes replaced")),
    (b"\xff\xfe\x41", "utf-16", ("\ufffd", "text is not valid utf-16, undecodable bytes replaced")),
    (b"caf\xc3\xa9", "iso-2022-jp", ("café", "text is not valid iso-2022-jp, decoded as utf-8")),
])
def test_decode_text(data, charset, expected):
    assert decode_text(data, charset) == expected


def _assert_sane(m: dict, raw: bytes) -> None:
    json.dumps(m, ensure_ascii=False).encode("utf-8")  # JSON-able, no lone surrogates
    assert m["size"] == len(raw)
    assert isinstance(m["defects"], list) and all(isinstance(d, str) for d in m["defects"])
    assert isinstance(m["text"], str) and isinstance(m["html"], str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes_never_raise(raw):
    _assert_sane(normalize(raw), raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_fuzz_mutated_fixtures_never_raise(path, data):
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(0, 20))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from(
                [b"\r\n", b"\n--", b"=?utf-8?b?", b"?=", b"\xff", b"boundary=", b"Content-Type: multipart/mixed; boundary=x\n",
                 b"charset=x-unknown", b"base64", b"*0*=utf-8''%", b"\x00", b"message/rfc822"]))
        elif op == "delete" and raw:
            del raw[pos:pos + data.draw(st.integers(1, 40))]
    raw = bytes(raw)
    _assert_sane(normalize(raw), raw)


# --- parts after a close delimiter (boundary reused) ------------------------------------------

def test_parts_after_a_close_delimiter_are_listed_with_a_defect():
    m = norm("reused_boundary.eml")
    assert m["text_parts"] == ["Please see the attachment.", "A second text after the reuse."]
    [att] = m["attachments"]
    assert (att["filename"], att["content_type"], content(att)) == (
        "invoice.zip", "application/zip", base64.b64decode("UEsDBBQAAAAIAA=="))
    assert m["defects"] == [
        "message: parts after the close delimiter (boundary used again), read as further parts"]


def test_parts_after_a_nested_close_delimiter_are_numbered_on():
    raw = (b"Content-Type: multipart/mixed; boundary=o\n\n--o\n"
           b"Content-Type: multipart/alternative; boundary=i\n\n--i\nContent-Type: text/plain\n\none\n"
           b"--i--\n--i\nContent-Type: image/png\n\nPNG\n--o\nContent-Type: text/plain\n\nthree\n--o--\n")
    m = normalize(raw)
    assert m["text_parts"] == ["one", "three"]
    assert [a["content_type"] for a in m["attachments"]] == ["image/png"]
    assert m["defects"] == [  # the reopened parts end at the outer delimiter, without a close
        "part 1: parts after the close delimiter (boundary used again), read as further parts",
        "part 1: CloseBoundaryNotFoundDefect"]


def test_an_epilogue_without_a_delimiter_and_a_second_close_are_no_parts():
    raw = b"Content-Type: multipart/mixed; boundary=o\n\n--o\n\none\n--o--\n--o--\nthe end\n--o-- \n"
    m = normalize(raw)
    assert (m["text_parts"], m["attachments"], m["defects"]) == (["one"], [], [])


def test_reused_boundaries_are_bounded():
    raw = b"Content-Type: multipart/mixed; boundary=o\n\n" + b"--o\n\npart\n--o--\n" * 30
    m = normalize(raw)
    assert len(m["text_parts"]) == 1 + message_module.MAX_REOPENED
    assert m["defects"][-1] == (f"message: more than {message_module.MAX_REOPENED} multiparts "
                                "continued after their close delimiter, the rest skipped")


# --- message/* passed byte for byte ----------------------------------------------------------

def _between(raw: bytes, head: bytes, tail: bytes) -> bytes:
    return raw.split(head, 1)[1].split(tail, 1)[0]


def test_message_parts_are_the_bytes_as_they_came():
    raw = load("rfc822_byte_exact.eml")
    m = normalize(raw)
    assert m["text"] == "See the enclosed message." and m["defects"] == []
    rfc822, dsn = m["attachments"]
    # the enclosed bytes: after the part's header section, up to the CRLF before the delimiter
    assert content(rfc822) == _between(raw, b"Content-Type: message/rfc822\r\n\r\n", b"\r\n--out\r\n")
    assert b"Subject:Hi  \r\n" in content(rfc822) and content(rfc822).endswith(b"--in--\r\nepilogue\r\n\r\n\r\n")
    assert content(dsn) == _between(raw, b"Content-Type: message/delivery-status\r\n\r\n", b"\r\n--out--")
    assert rfc822["size"] == len(content(rfc822)) and dsn["content_type"] == "message/delivery-status"


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_message_parts_nested_in_messages_and_multiparts_are_exact(depth):
    inner = b"Subject:Hi\r\nX-Odd:   spaced  \r\n\r\nbody\r\n\r\n"
    for i in range(depth):  # message/global in a multipart in a message/rfc822 ...
        inner = (b"Content-Type: multipart/mixed; boundary=L%d\r\n\r\n--L%d\r\n"
                 b"Content-Type: message/global\r\n\r\n" % (i, i) + inner + b"\r\n--L%d--\r\n" % i)
        inner = b"Subject:level\r\nContent-Type: message/rfc822\r\n\r\n" + inner
    raw = b"Content-Type: multipart/mixed; boundary=T\r\n\r\n--T\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--T--\r\n"
    [att] = normalize(raw)["attachments"]
    assert content(att) == inner


def test_a_base64_message_part_is_decoded_as_before():
    inner = b"Subject:Hi\r\n\r\nbody"
    raw = (b"Content-Type: multipart/mixed; boundary=T\r\n\r\n--T\r\nContent-Type: message/rfc822\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(inner) + b"\r\n--T--\r\n")
    assert content(normalize(raw)["attachments"][0]) == inner


def test_a_digest_part_without_content_type_is_exact():
    inner = b"Subject:Hi\n\nbody\n"
    raw = b"Content-Type: multipart/digest; boundary=d\n\n--d\n\n" + inner + b"\n--d--\n"
    [att] = normalize(raw)["attachments"]
    assert (att["content_type"], content(att)) == ("message/rfc822", inner)


# --- charsets --------------------------------------------------------------------------------

def test_a_latin1_body_labelled_utf8_reads_as_windows_1252():
    m = norm("utf8_label_latin1.eml")
    assert m["text"] == "Grüße aus Köln, € 5.\n"
    assert "\ufffd" not in m["text"]
    assert m["defects"] == ["message: text is not valid utf-8, bytes outside utf-8 sequences read as windows-1252"]


def test_parameter_fields_with_thousands_of_quoted_semicolons_normalize_in_bounded_time():
    # the stdlib's parameter parser costs a field's length times its `;`s: 40,000 `;` inside a
    # quoted value took seconds per lookup, and nested parts repeat it
    junk = b'; x="' + b";" * 40_000 + b'"'
    parts = b"".join(b"--b\r\nContent-Type: text/plain; charset=utf-8" + junk
                     + b"\r\nContent-Disposition: inline" + junk + b"\r\n\r\npart " + str(i).encode() + b"\r\n"
                     for i in range(5))
    raw = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b" + junk
           + b"\r\n\r\n" + parts + b"--b--\r\n")
    start = time.perf_counter()
    result = normalize(raw)
    assert time.perf_counter() - start < 1.0
    assert [t.strip() for t in result["text_parts"]] == [f"part {i}" for i in range(5)]
    assert any("more than 32 ';'" in d for d in result["defects"])
