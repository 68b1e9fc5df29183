"""Fuzzing the tracking rewriter (model/tracking.py).

Properties:
- `rewrite` never raises and never fails inside ("rewriter error" would be a bug caught by its
  last-resort guard), whatever the bytes, headers or structure;
- outside the replaced href values and the inserted pixel/honeypot nothing changes: both
  messages are parsed with the email package, every part keeps its headers and its decoded
  content but for those spans, and each replaced value reads as the URL its token was made for
  (`check_rewrite` of the unit tests);
- for documents built here (links of every kind, comments, scripts, entities, skip markers;
  7bit/8bit/quoted-printable/base64; UTF-8 and ISO-8859-1; CRLF and LF; nested multipart with
  an HTML attachment) exactly the trackable links are rewritten, in order, and the pixel is
  added once.
"""
from __future__ import annotations

import base64
import html
import quopri

from hypothesis import event, example, given
from hypothesis import strategies as st

from mxhook.model.tracking import rewrite

from ..unit.test_tracking import BASE, Tokens, check_rewrite, plan, split
from . import FUZZ

_PLANS = st.fixed_dictionaries({
    "opens": st.booleans(), "clicks": st.booleans(), "text_links": st.booleans(),
    "honeypot": st.booleans(),
})


def _run(raw: bytes, options: dict):
    headers, body = split(raw)
    tokens = Tokens()
    result = rewrite(headers, body, plan(tokens, **options))
    assert not (result.reason or "").startswith("rewriter error"), result.reason
    event(f"rewritten, {min(result.links, 3)}+ links" if result.body is not None else result.reason)
    check_rewrite(raw, result, tokens, text_links=options.get("text_links", False))
    return result, tokens


# ---------------------------------------------------------------------------------------------
# Raw bytes under a few realistic header blocks

_HEADS = st.sampled_from([
    b"Content-Type: text/html; charset=utf-8\r\n\r\n",
    b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
    b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"Content-Type: multipart/alternative; boundary=b\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\"b\"\n\n",
    b"Content-Type: text/plain\r\n\r\n",
])
_HTMLISH = st.lists(st.sampled_from([
    b'<a href="https://x.example/a">x</a>', b"<area href=https://y.example/?q=1&amp;r=2>",
    b"<a href=3D\"https://qp.example/=\r\nlong\">", b"<a href=", b"<A HREF='", b"https://x.example/", b"http://y.example/?a=1&amp;b", b"\"", b"'",
    b">", b"<", b"</a>", b"</body>", b"<!--", b"-->", b"<!--[if mso]>", b"<![endif]-->", b"<script>",
    b"</script>", b" ", b"\r\n", b"\n", b"=3D", b"=\r\n", b"--b", b"--b--", b"\r\n--b\r\n",
    b"Content-Type: text/html\r\n\r\n", b"Content-Transfer-Encoding: base64\r\n", b"\xe9", b"\xc3\xa9",
    b"data-mxhook-skip", b"class=mxhook-skip", b"&#x68;ttps://e.example/", b"mailto:a@b",
    b"https://t.example.com/c/x", b"PGEgaHJlZj0iaHR0cHM6Ly94LmV4YW1wbGUvIj4=", b"\t", b"=",
]) | st.binary(max_size=8), max_size=60).map(b"".join)


@FUZZ
@given(_HEADS, _HTMLISH, _PLANS)
@example(b"Content-Type: multipart/alternative; boundary=b\r\n\r\n",
         b"\r\n--b\r\nContent-Type: text/html\r\n\r\n<a href=https://x.example/>\r\n--b--\r\n",
         {"opens": True, "clicks": True, "text_links": False, "honeypot": True})
def test_never_raises_and_changes_only_links(head, body, options):
    _run(head + body, options)


@FUZZ
@given(st.binary(max_size=400), _PLANS)
def test_arbitrary_bytes(raw, options):
    _run(raw, options)


# ---------------------------------------------------------------------------------------------
# Documents built here: the links that must be rewritten are known

_WORDS = st.text(st.characters(codec="latin-1", exclude_characters="<>&\r\n\x00"), max_size=12)
_PATH = st.text(st.sampled_from("abcxyz0189-._~/?=&%+:@!$'()*,;é"), max_size=20)


@st.composite
def _link(draw):
    """(HTML of one link, its URL when it must be tracked, else None)."""
    kind = draw(st.sampled_from(["track", "track", "track", "mailto", "tel", "anchor", "relative",
                                 "skip", "skipclass", "ours", "comment", "script"]))
    url = draw(st.sampled_from(["https://", "http://", "HTTPS://"])) + \
        draw(st.sampled_from(["x.example", "shop.example.com", "t.example.co"])) + "/" + draw(_PATH)
    quote = draw(st.sampled_from(['"', "'", ""]))
    value = html.escape(url, quote=True)
    if not quote and any(c in value for c in " \t\n\r\"'=<>`"):
        quote = '"'
    tag = draw(st.sampled_from(["a", "A", "area"]))
    pre = draw(st.sampled_from(["", ' class="btn"', " title='a > b'", ' style="color:red"']))
    text = html.escape(draw(_WORDS))
    tracked = None
    if kind == "track":
        tracked = url
    elif kind == "mailto":
        value = "mailto:a@example.com"
    elif kind == "tel":
        value = "tel:+4930123"
    elif kind == "anchor":
        value = "#top"
    elif kind == "relative":
        value = "/p/" + html.escape(draw(_PATH), quote=True)
        quote = '"'
    elif kind == "skip":
        pre += " data-mxhook-skip"
    elif kind == "skipclass":
        pre = ' class="x mxhook-skip"'
    elif kind == "ours":
        value = BASE + "/c/old"
    markup = f"<{tag}{pre} href={quote}{value}{quote}>{text}</{tag}>"
    if kind == "comment":
        markup = f"<!-- {markup} -->"
    elif kind == "script":
        markup = f"<script>var s = '{markup}';</script>"
    return markup, tracked


@st.composite
def _document(draw):
    items = draw(st.lists(st.one_of(_link(), _WORDS.map(lambda w: (html.escape(w), None)),
                                    st.sampled_from([("<p>", None), ("</p>\n", None),
                                                     ("<br>\n", None), ("<!-- x -->", None)])),
                          max_size=12))
    body_close = draw(st.booleans())
    after = draw(st.lists(_link(), max_size=2)) if body_close else []  # content after </body>
    doc = ("<html><body>" + "".join(m for m, _ in items) + ("</body>" if body_close else "")
           + "".join(m for m, _ in after) + ("</html>\n" if body_close else "\n"))
    return doc, [u for _, u in items + after if u]


def _encode(data: bytes, cte: str, eol: bytes) -> bytes:
    if cte == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", eol)
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", eol)
    return data.replace(b"\n", eol)


@st.composite
def _message(draw):
    doc, tracked = draw(_document())
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    data = doc.encode(charset)
    if cte == "7bit" and any(b > 127 for b in data):
        cte = "8bit"
    part_head = (f"Content-Type: text/html; charset={charset}".encode() + eol
                 + f"Content-Transfer-Encoding: {cte}".encode() + eol)
    content = _encode(data, cte, eol)
    shape = draw(st.sampled_from(["single", "alternative", "mixed"]))
    if shape == "single":
        return part_head + eol + content, tracked
    text = b"Content-Type: text/plain" + eol + eol + b"see https://x.example/t" + eol
    alt = (b"--alt" + eol + text + b"--alt" + eol + part_head + eol + content + eol + b"--alt--" + eol)
    if shape == "alternative":
        return b"Content-Type: multipart/alternative; boundary=alt" + eol + eol + alt, tracked
    attachment = (b"Content-Type: text/html" + eol + b"Content-Disposition: attachment; filename=a.html"
                  + eol + eol + b'<a href="https://attached.example/">a</a>' + eol)
    raw = (b"Content-Type: multipart/mixed; boundary=\"mix\"" + eol + eol + b"preamble" + eol
           + b"--mix" + eol + b"Content-Type: multipart/alternative; boundary=alt" + eol + eol + alt
           + b"--mix" + eol + attachment + b"--mix--" + eol)
    return raw, tracked


@FUZZ
@given(_message(), st.booleans(), st.booleans())
def test_exactly_the_trackable_links(message, opens, honeypot):
    raw, tracked = message
    result, tokens = _run(raw, {"opens": opens, "clicks": True, "honeypot": honeypot})
    assert [u for _, u in tokens.clicks()] == tracked
    assert result.links == len(tracked)
    assert result.pixel == opens
    if not tracked and not opens and not honeypot:
        assert result.body is None and result.reason == "no link to rewrite"
