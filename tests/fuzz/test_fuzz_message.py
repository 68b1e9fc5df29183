"""Fuzzing `message.normalize`: raw bytes and structured-but-mutated MIME.

Properties:
- `normalize` never raises, whatever the bytes;
- its result has the documented shape and is JSON-encodable as UTF-8 (no lone surrogates), so
  the spooler can always render a payload from it;
- attachments carry base64 that decodes to exactly `size` bytes (or are marked omitted);
- for well-formed messages built here (unique boundaries, declared charsets and transfer
  encodings used correctly) the text parts and attachments come back exactly as put in:
  fuzzing checks that the normalizer is right, not only that it survives.
"""
from __future__ import annotations

import base64
import json
import os
import quopri

from hypothesis import example, given
from hypothesis import strategies as st

from mxhook.model import message

from . import FUZZ, scaled

MIME_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "unit", "fixtures", "mime")
FIXTURE_BYTES = []
for _name in sorted(os.listdir(MIME_FIXTURES)):
    with open(os.path.join(MIME_FIXTURES, _name), "rb") as _fh:
        FIXTURE_BYTES.append(_fh.read())

RESULT_KEYS = {
    "headers", "from", "to", "cc", "reply_to", "subject", "message_id", "date", "date_iso",
    "in_reply_to", "references", "text", "html", "text_parts", "html_parts", "attachments",
    "size", "defects",
}


def check_shape(raw: bytes, result: dict) -> None:
    assert set(result) == RESULT_KEYS
    assert result["size"] == len(raw)
    # what the json payload renderer does with it: must not raise
    json.dumps(result, ensure_ascii=False).encode("utf-8")
    for key in ("from", "to", "cc", "reply_to"):
        for addr in result[key]:
            assert set(addr) == {"name", "address"} and "@" in addr["address"]
    for h in result["headers"]:
        assert isinstance(h["name"], str) and isinstance(h["value"], str)
    for key in ("text", "html"):
        assert isinstance(result[key], str)
        assert "\r" not in result[key]  # line ends are LF
    for att in result["attachments"]:
        assert isinstance(att["size"], int) and att["size"] >= 0
        assert att["disposition"] in ("inline", "attachment")
        assert "/" in att["content_type"]
        if att.get("omitted"):
            assert att["content"] is None and att["omitted_reason"]
        else:
            assert len(base64.b64decode(att["content"], validate=True)) == att["size"]
    assert all(isinstance(d, str) for d in result["defects"])


# ---------------------------------------------------------------------------------------------
# Arbitrary bytes

@FUZZ
@given(st.binary(max_size=4000))
@example(b"")
@example(b"\r\n\r\n")
@example(b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n--\r\n")
@example(b"Subject: =?idna?q?abc?=\r\n\r\nx")
@example(b"Content-Type: text/plain; charset=\"utf\x00-8\"\r\n\r\nx")
def test_normalize_arbitrary_bytes(raw):
    check_shape(raw, message.normalize(raw))


@FUZZ
@given(st.sampled_from(FIXTURE_BYTES), st.data())
def test_normalize_mutated_fixtures(raw, data):
    mutated = data.draw(mutations(raw))
    check_shape(mutated, message.normalize(mutated))


@FUZZ
@given(st.text(max_size=2000))
def test_normalize_accepts_str_leniently(text):
    result = message.normalize(text)
    json.dumps(result, ensure_ascii=False).encode("utf-8")


@scaled(60)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=2000))
def test_attachment_size_cap_marks_omitted(content, cap):
    raw = build(Leaf("application/octet-stream", None, "base64", content, "f.bin"))
    result = message.normalize(raw, max_attachment_size=cap)
    (att,) = result["attachments"]
    assert att["size"] == len(content)
    if len(content) > cap:
        assert att["omitted"] and att["content"] is None
    else:
        assert base64.b64decode(att["content"]) == content


# ---------------------------------------------------------------------------------------------
# Structured MIME

class Leaf:
    def __init__(self, ctype, charset, cte, body: bytes, filename=None, text=None):
        self.ctype, self.charset, self.cte, self.body = ctype, charset, cte, body
        self.filename, self.text = filename, text


class Multi:
    def __init__(self, subtype, boundary, children, preamble=b"", epilogue=b""):
        self.subtype, self.boundary, self.children = subtype, boundary, children
        self.preamble, self.epilogue = preamble, epilogue


def encode_body(body: bytes, cte: str | None) -> bytes:
    if cte == "base64":
        return base64.encodebytes(body).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(body).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return body


def render(node, out: list[bytes]) -> None:
    if isinstance(node, Leaf):
        ct = f"Content-Type: {node.ctype}".encode()
        if node.charset is not None:
            ct += b'; charset="' + node.charset.encode("utf-8", "surrogateescape") + b'"'
        out.append(ct + b"\r\n")
        if node.cte is not None:
            out.append(b"Content-Transfer-Encoding: " + node.cte.encode("utf-8", "surrogateescape") + b"\r\n")
        if node.filename is not None:
            out.append(b'Content-Disposition: attachment; filename="'
                       + node.filename.encode("utf-8", "surrogateescape") + b'"\r\n')
        out.append(b"\r\n")
        out.append(encode_body(node.body, (node.cte or "").lower()))
        return
    b = node.boundary.encode("utf-8", "surrogateescape")
    out.append(b"Content-Type: multipart/" + node.subtype.encode() + b'; boundary="' + b + b'"\r\n\r\n')
    out.append(node.preamble)
    for child in node.children:
        out.append(b"\r\n--" + b + b"\r\n")
        render(child, out)
    out.append(b"\r\n--" + b + b"--\r\n")
    out.append(node.epilogue)


def build(root, subject: bytes = b"fuzz") -> bytes:
    out = [b"From: Fuzz <fuzz@sender.example>\r\n", b"To: in@ours.example\r\n",
           b"Subject: " + subject + b"\r\n", b"MIME-Version: 1.0\r\n"]
    render(root, out)
    return b"".join(out)


CHARSETS = st.one_of(
    st.sampled_from([
        "utf-8", "UTF-8", "us-ascii", "iso-8859-1", "latin1", "windows-1252", "iso-8859-15",
        "koi8-r", "shift_jis", "euc-jp", "iso-2022-jp", "gb2312", "gbk", "big5", "utf-16",
        "utf-16-le", "utf-32", "utf-7", "cp437", "x-unknown", "", "idna", "punycode", "rot13",
        "base64", "hex", "undefined", "unicode-escape", "raw-unicode-escape", "zlib", "uu",
        "utf-8\x00", "\udcff", "mbcs", "oem", "utf_8_sig",
    ]),
    st.text(max_size=20),
)
CTES = st.sampled_from([None, "7bit", "8bit", "binary", "base64", "quoted-printable", "BASE64",
                        "x-uuencode", "uuencode", "x-garbage", ""])
CTYPES = st.sampled_from(["text/plain", "text/html", "application/octet-stream", "image/png",
                          "message/rfc822", "message/delivery-status", "text/x-weird",
                          "multipart/mixed", "bogus", "text/", "/", "application/pdf"])
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
BOUNDARIES = st.one_of(
    st.text(alphabet=BCHARS, min_size=1, max_size=70),
    st.text(max_size=80),  # anything, including quotes, CR/LF and non-ASCII
)


@st.composite
def random_leaf(draw):
    return Leaf(draw(CTYPES), draw(st.none() | CHARSETS), draw(CTES), draw(st.binary(max_size=300)),
                draw(st.none() | st.text(max_size=30)))


def random_tree():
    return st.recursive(
        random_leaf(),
        lambda children: st.builds(
            Multi, st.sampled_from(["mixed", "alternative", "related", "report", "digest", "x"]),
            BOUNDARIES, st.lists(children, max_size=4), st.binary(max_size=30), st.binary(max_size=30),
        ),
        max_leaves=12,
    )


@st.composite
def mutations(draw, raw: bytes):
    """A few random edits of `raw`: byte flips, cuts, duplicated or deleted lines, inserted
    boundary-ish lines, truncation."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dupline", "delline", "truncate", "crlf"]))
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut" and n:
            i = draw(st.integers(0, n - 1))
            j = draw(st.integers(i, min(n, i + 200)))
            del data[i:j]
        elif op == "insert":
            i = draw(st.integers(0, n))
            chunk = draw(st.sampled_from([
                b"\r\n--", b"--\r\n", b"\r\n\r\n", b"=?utf-8?b?", b"?=", b"=\r\n", b"\x00",
                b"Content-Type: multipart/mixed; boundary=x\r\n", b"\r\n--x\r\n", b"\r\n--x--\r\n",
                b"Content-Transfer-Encoding: base64\r\n", b"charset=\"utf-7\"", b"\xff\xfe",
            ]) | st.binary(max_size=20))
            data[i:i] = chunk
        elif op in ("dupline", "delline"):
            lines = bytes(data).split(b"\n")
            if lines:
                k = draw(st.integers(0, len(lines) - 1))
                if op == "dupline":
                    lines.insert(k, lines[k])
                else:
                    del lines[k]
                data = bytearray(b"\n".join(lines))
        elif op == "truncate" and n:
            del data[draw(st.integers(0, n)):]
        elif op == "crlf":
            data = bytearray(bytes(data).replace(b"\r\n", b"\n"))
    return bytes(data)


@scaled(200)
@given(random_tree(), st.data())
def test_normalize_random_mime_trees(tree, data):
    raw = build(tree)
    check_shape(raw, message.normalize(raw))
    mutated = data.draw(mutations(raw))
    check_shape(mutated, message.normalize(mutated))


@FUZZ
@given(st.integers(1, 400), st.sampled_from([b"multipart/mixed", b"multipart/alternative"]))
def test_deep_nesting_is_bounded(depth, kind):
    head = b"".join(b"Content-Type: " + kind + b'; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                    for i in range(depth))
    raw = b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    result = message.normalize(raw)
    check_shape(raw, result)
    if depth > message.MAX_DEPTH:
        assert result["defects"]


# Well-formed trees: what goes in comes out.

TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85")
               | st.sampled_from(["\n", "\t"]), max_size=200)
GOOD_CHARSETS = ["utf-8", "utf-16", "iso-8859-15", "koi8-r", "shift_jis", "euc-jp", "big5", "utf-8"]


@st.composite
def good_leaf(draw):
    if draw(st.booleans()):
        charset = draw(st.sampled_from(GOOD_CHARSETS))
        text = draw(TEXT)
        try:
            body = text.replace("\n", "\r\n").encode(charset)
            if body.decode(charset) != text.replace("\n", "\r\n"):  # shift_jis maps U+00A5 to '\\'
                raise UnicodeEncodeError(charset, text, 0, 1, "does not round-trip")
        except UnicodeEncodeError:
            text = text.encode("ascii", "ignore").decode()
            body = text.replace("\n", "\r\n").encode(charset)
        # utf-16 is not ASCII-safe: 7bit/qp would be a lie, so base64 there
        cte = "base64" if charset == "utf-16" else draw(st.sampled_from(["base64", "quoted-printable"]))
        return Leaf("text/plain", charset, cte, body, None, text=text)
    content = draw(st.binary(max_size=400))
    name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20))
    return Leaf("application/octet-stream", None, "base64", content, name)


def good_tree():
    counter = iter(range(10**9))

    def multi(children):
        return st.builds(lambda sub, kids: Multi(sub, f"=_fuzz_{next(counter)}_=", kids),
                         st.sampled_from(["mixed", "related"]), st.lists(children, min_size=1, max_size=4))

    return st.recursive(good_leaf(), multi, max_leaves=8)


def leaves(node):
    if isinstance(node, Leaf):
        yield node
    else:
        for child in node.children:
            yield from leaves(child)


@scaled(200)
@given(good_tree())
def test_well_formed_mime_round_trips(tree):
    raw = build(tree)
    result = message.normalize(raw)
    check_shape(raw, result)
    want_texts = [lf.text for lf in leaves(tree) if lf.text is not None]
    want_atts = [(lf.filename, lf.body) for lf in leaves(tree) if lf.text is None]
    assert result["text_parts"] == want_texts, result["defects"]
    got_atts = [(a["filename"], base64.b64decode(a["content"])) for a in result["attachments"]]
    assert got_atts == want_atts
    assert result["subject"] == "fuzz"
    assert [a["address"] for a in result["from"]] == ["fuzz@sender.example"]


@FUZZ
@given(st.binary(max_size=600), CHARSETS)
def test_decode_text_is_total(data, charset):
    text, problem = message.decode_text(data, charset)
    assert isinstance(text, str)
    assert problem is None or isinstance(problem, str)


@FUZZ
@given(st.binary(max_size=2000))
def test_split_headers_never_raises(raw):
    fields, defects = message.split_headers(raw)
    for name, value in fields:
        assert isinstance(name, str) and name and isinstance(value, bytes)


# ---------------------------------------------------------------------------------------------
# The header section as Postfix splits it, and message/* parts byte for byte

HEADERISH = st.lists(st.sampled_from([
    b"From: a@x.example", b"From a@x.example Thu", b">From x", b"From : ceo@ours.example",
    b"Subject: s", b"Subject : s", b" ", b"\tfolded", b"", b"no colon", b": x", b"X-\xe9: 1",
    b"Content-Type: multipart/mixed; boundary=b", b"--b", b"a\rb: c", b"\x00: nul",
]), max_size=12)


@FUZZ
@given(HEADERISH, st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=200))
def test_the_header_section_survives_the_milters_round_trip(lines, eol, tail):
    """What the milter spools (the fields Postfix passed it, an empty line, the body) has the
    same header section and body as the message the client sent."""
    raw = eol.join(lines) + eol + tail
    fields, body_start, _ = message.header_section(raw)
    spooled = b"".join(n.encode() + b":" + v.replace(b"\n", b"\r\n") + b"\r\n" for n, v in fields) + b"\r\n" + raw[body_start:]
    again, again_start, _ = message.header_section(spooled)
    assert again == fields
    assert spooled[again_start:] == raw[body_start:]
    assert message.normalize(raw)["headers"] == message.normalize(spooled)["headers"]


ENCLOSED = st.lists(st.sampled_from([
    b"Subject:Hi", b"Subject:  x  ", b"From:a@x.example", b"", b" ", b"\tfold", b"body",
    b"Content-Type: multipart/mixed; boundary=in", b"--in", b"--in--", b"\xff\xfe 8-bit",
    b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: base64",
]), max_size=20)


@FUZZ
@given(ENCLOSED, st.sampled_from(["message/rfc822", "message/global", "message/delivery-status"]),
       st.sampled_from([b"\r\n", b"\n"]))
def test_message_parts_are_passed_byte_for_byte(lines, ctype, eol):
    inner = eol.join(lines)
    raw = eol.join([b"Content-Type: multipart/mixed; boundary=OUT", b"", b"--OUT",
                    b"Content-Type: " + ctype.encode(), b"", inner, b"--OUT--", b""])
    [att] = message.normalize(raw)["attachments"]
    assert (att["content_type"], base64.b64decode(att["content"])) == (ctype, inner)
