"""model/tracking.py: the pure tracking rewriter, on real-world shaped messages
(tests/unit/fixtures/tracking/) and on edge cases.

Each rewritten message is checked the same way (`check_rewrite`, also used by the fuzz tests):
parsed with the email package, every part has the same headers and the same decoded content
except the href values that became tracking URLs and the inserted pixel/honeypot, and each
replaced value reads (HTML entities decoded) as the URL its token was made for.
"""
from __future__ import annotations

import email
import html
import os
import quopri
import re
from email import policy

import pytest

from mxhook.model.message import header_section
from mxhook.model.tracking import HONEYPOT, PIXEL, Plan, rewrite
from mxhook.model.headers import charset_codec, to_text

BASE = "https://t.example.com"
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tracking")


class Tokens:
    """A token function that records what it was asked for: (kind, index, url) per token."""

    def __init__(self):
        self.made: list[tuple[str, int | None, str | None]] = []

    def __call__(self, kind, index, url):
        self.made.append((kind, index, url))
        return f"T{len(self.made) - 1}.sig"

    def clicks(self):
        """(index, url) of the click tokens, the last one made for each index."""
        found = {i: u for k, i, u in self.made if k == "c" and i != -1}
        return sorted(found.items())


def plan(tokens=None, **kw) -> Plan:
    args = dict(opens=True, clicks=True, text_links=False, honeypot=False, base_url=BASE,
                token=tokens or Tokens())
    args.update(kw)
    return Plan(**args)


def split(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    fields, offset, _ = header_section(raw)
    return [(name, to_text(value)) for name, value in fields], raw[offset:]


def fixture(name: str) -> tuple[bytes, list[tuple[str, str]], bytes]:
    with open(os.path.join(FIXTURES, name), "rb") as fh:
        raw = fh.read()
    headers, body = split(raw)
    return raw, headers, body


def _header_block(raw: bytes) -> bytes:
    return raw[:header_section(raw)[1]]


# ---------------------------------------------------------------------------------------------
# The property every rewrite must have

_TRACKED = re.compile(re.escape(BASE) + r"/c/T(\d+)\.sig")


def _inserted(tokens: Tokens) -> list[str]:
    """The pixel/honeypot blocks the rewriter may have inserted, as they appear in HTML."""
    out = []
    for i, (kind, index, _url) in enumerate(tokens.made):
        if kind == "o":
            out.append(PIXEL.format(url=f"{BASE}/o/T{i}.sig"))
        elif index == -1:
            out.append(HONEYPOT.format(url=f"{BASE}/c/T{i}.sig"))
    return out


def _url_of(value: str, is_html: bool) -> str:
    if not is_html:
        return value
    return re.sub(r"[\t\n\r]", "", html.unescape(value)).strip(" \x0c\x00")


def check_text(before: str, after: str, tokens: Tokens, codec: str = "latin-1",
               is_html: bool = True) -> list[int]:
    """`after` is `before` with some spans replaced by tracking URLs (each replaced span reads as
    the URL its token carries, in `codec`) and the pixel/honeypot inserted. Both texts are
    Latin-1 stand-ins for bytes. Returns the token numbers of the tracking URLs in `after`."""
    inserted = "".join(_inserted(tokens))
    if inserted and inserted in after:
        without = after.replace(inserted, "", 1)
        # a 7bit rewrite puts the insertion on a line of its own when its line would be too long
        lined = re.sub(r"\r?\n" + re.escape(inserted), "", after, count=1)
        for candidate in (without, lined):
            try:
                return _check_pieces(before, candidate, tokens, codec, is_html)
            except AssertionError:
                if candidate is lined:
                    raise
    return _check_pieces(before, after, tokens, codec, is_html)


def _check_pieces(before: str, after: str, tokens: Tokens, codec: str, is_html: bool) -> list[int]:
    pieces = _TRACKED.split(after)
    texts, ids = pieces[0::2], [int(t) for t in pieces[1::2]]
    assert before.startswith(texts[0])
    pos = len(texts[0])
    gaps = []
    for i, piece in enumerate(texts[1:], 1):
        if i == len(texts) - 1:
            at = len(before) - len(piece)
            assert before.endswith(piece) and at >= pos, (piece[:80], before[pos:pos + 80])
        else:
            at = before.find(piece, pos)
            assert at >= pos, (piece[:80], before[pos:pos + 80])
        gaps.append(before[pos:at])
        pos = at + len(piece)
    if len(texts) == 1:
        assert before == texts[0]
    for gap, token_id in zip(gaps, ids):
        kind, _index, url = tokens.made[token_id]
        assert kind == "c"
        value = gap.strip("\"'").encode("latin-1").decode(codec)
        assert _url_of(value, is_html) == url, (gap, url)
    return ids


def _leaves(msg):
    for part in msg.walk():
        if not part.is_multipart():
            yield part
        if part.get_content_maintype() == "message":
            continue


def check_rewrite(raw: bytes, result, tokens: Tokens, *, text_links: bool = False) -> None:
    """The rewritten message reads as the original but for its tracking URLs and pixel."""
    if result.body is None:
        assert result.reason and result.links == 0 and not result.pixel
        return
    assert result.reason is None
    new_raw = _header_block(raw) + result.body
    before = email.message_from_bytes(raw, policy=policy.compat32)
    after = email.message_from_bytes(new_raw, policy=policy.compat32)
    old_parts, new_parts = list(before.walk()), list(after.walk())
    assert len(old_parts) == len(new_parts)
    ids: list[int] = []
    for old, new in zip(old_parts, new_parts):
        assert old.items() == new.items()
        if old.is_multipart():
            assert old.preamble == new.preamble and old.epilogue == new.epilogue
            continue
        a, b = old.get_payload(decode=True), new.get_payload(decode=True)
        if a == b:
            continue
        assert old.get_content_type() in ("text/html", "text/plain")
        assert old.get_content_type() == "text/html" or text_links
        assert old.get_content_disposition() != "attachment"
        codec = charset_codec(old.get_content_charset()) or "latin-1"
        ids += check_text(a.decode("latin-1"), b.decode("latin-1"), tokens, codec,
                          old.get_content_type() == "text/html")
    # a token made for a link that then stayed (line too long) is not in the message
    assert [tokens.made[i][1] for i in ids] == list(range(result.links))
    assert result.pixel == any(k == "o" for k, _, _ in tokens.made)


def run(raw: bytes, **kw):
    headers, body = split(raw)
    tokens = Tokens()
    result = rewrite(headers, body, plan(tokens, **kw))
    check_rewrite(raw, result, tokens, text_links=kw.get("text_links", False))
    return result, tokens


# ---------------------------------------------------------------------------------------------
# Fixtures

def test_gmail_alternative_qp_utf8_crlf():
    raw, headers, body = fixture("gmail_alternative.eml")
    result, tokens = run(raw)
    assert tokens.clicks() == [(0, "https://docs.example.com/report?id=42&utm_source=gmail"),
                               (1, "https://www.example.com/")]
    assert result.pixel and result.links == 2
    # the text part is copied byte for byte; the QP HTML keeps CRLF and 76-character lines
    text_end = body.index(b"--000000000000a1b2c3d4e5f6\r\nContent-Type: text/html")
    assert result.body[:text_end] == body[:text_end]
    html_part = result.body[text_end:].split(b"\r\n\r\n", 1)[1]
    assert b"\n" not in html_part.replace(b"\r\n", b"")
    assert max(len(line) for line in html_part.split(b"\r\n")) <= 76
    decoded = quopri.decodestring(html_part)
    for kept in (b'href="mailto:help@example.com"', b'href="tel:+4930123456"', b'href="#top"'):
        assert kept in decoded


def test_gmail_text_links_too():
    raw, _, _ = fixture("gmail_alternative.eml")
    result, tokens = run(raw, text_links=True)
    urls = [u for _, u in tokens.clicks()]
    assert urls[:2] == ["https://docs.example.com/report?id=42&utm_source=gmail",
                        "https://www.example.com/"]  # the text part first; the "." stays out
    assert result.links == 4


def test_outlook_related_latin1_qp_lf_conditional_comments():
    raw, _, body = fixture("outlook_related.eml")
    result, tokens = run(raw)
    assert [u for _, u in tokens.clicks()] == [
        "https://portal.example.de/dokumente?jahr=2026&monat=03",
        "https://mso.example.de/button",  # Outlook renders conditional comments
        "HTTPS://www.example.de/impressum",
        "https://www.example.de/datenschutz",
    ]
    assert b"\r\n" not in result.body  # LF stays LF
    assert b"https://commented.example/" in result.body  # a plain comment is not markup
    assert b"https://style.example/" in result.body
    # the image after the HTML part is copied as it came
    image = body.index(b"--_004_related_\nContent-Type: image/png")
    assert result.body.endswith(body[image:])
    # single-quoted and unquoted values keep their quoting
    assert b"href=3D'https://t.example.com/c/T" in result.body
    assert b"href=3Dhttps://t.example.com/c/T" in result.body


def test_mailchimp_base64_link_kinds():
    raw, _, body = fixture("mailchimp_newsletter.eml")
    result, tokens = run(raw, honeypot=True)
    urls = [u for _, u in tokens.clicks()]
    assert urls[:6] == [f"https://shop.example.com/p/{i}?utm_campaign=dec&utm_medium=email"
                        for i in range(6)]
    assert urls[6:] == ["https://map.example.com/north", "https://example.com/caps?x=1&y=2",
                        "https://example.com/spaced"]
    assert ("c", -1, BASE) in tokens.made
    # base64 lines as long as the original's, CRLF
    html_b64 = result.body.split(b"Content-Transfer-Encoding: base64\r\n\r\n")[1].split(b"\r\n--")[0]
    lines = html_b64.rstrip(b"\r\n").split(b"\r\n")
    assert {len(line) for line in lines[:-1]} == {76} and 0 < len(lines[-1]) <= 76
    # the 7bit text part is untouched without text_links
    assert result.body.split(b"--_----------=_MCPart_123456\r\nContent-Type: text/html")[0] == \
        body.split(b"--_----------=_MCPart_123456\r\nContent-Type: text/html")[0]


def test_mailchimp_text_links_keep_punctuation_and_parentheses():
    raw, _, _ = fixture("mailchimp_newsletter.eml")
    result, tokens = run(raw, text_links=True)
    assert [u for _, u in tokens.clicks()][:2] == [
        "https://shop.example.com/p/0?utm_campaign=dec", "https://example.com/faq_(list)"]
    assert b"(see https://t.example.com/c/T1.sig).\r\n" in result.body


def test_attachment_and_forwarded_message_untouched():
    raw, _, body = fixture("mixed_attachment.eml")
    result, tokens = run(raw, text_links=True)
    assert [u for _, u in tokens.clicks()] == ["https://app.example.com/invoice/7"] * 2
    tail = body.index(b"--outer\r\nContent-Type: text/html; charset=us-ascii; name=")
    assert result.body.endswith(body[tail:])  # attachment, message/rfc822, epilogue as they came
    assert result.body.startswith(b"This is a multi-part message in MIME format.\r\n--outer\r\n")


def test_latin1_8bit_single_part_without_body_tag():
    raw, _, body = fixture("latin1_8bit.eml")
    result, tokens = run(raw)
    assert [u for _, u in tokens.clicks()] == ["https://café.example/menü?q=crème",
                                               "http://www.example.fr/plan"]
    assert result.body.startswith(b"<p>Caf\xe9 cr\xe8me: <a href=\"https://t.example.com/c/T0.sig\">")
    # no </body>: the pixel goes at the end, before the final line break
    assert result.body.endswith(b"/>\n")


def test_unknown_transfer_encoding_leaves_the_message():
    raw, headers, body = fixture("uuencode.eml")
    result, tokens = run(raw)
    assert result == type(result)(None, "unknown transfer encoding x-uuencode", 0, False)


# ---------------------------------------------------------------------------------------------
# Edge cases

def html_message(html_text: bytes, *, cte="7bit", charset="utf-8", eol=b"\r\n") -> bytes:
    return (b"From: a@example.com" + eol + b"MIME-Version: 1.0" + eol
            + b"Content-Type: text/html; charset=" + charset.encode() + eol
            + b"Content-Transfer-Encoding: " + cte.encode() + eol + eol + html_text)


@pytest.mark.parametrize("href", [
    '"mailto:a@example.com"', '"tel:+1"', '"#x"', '"/rel"', '"ftp://x.example/"',
    '"javascript:alert(1)"', '"https://t.example.com/c/x"', '"HTTPS://T.EXAMPLE.COM/o/x"',
    '"{{ url }}"', '""', '"https://"',
])
def test_links_left_alone(href):
    raw = html_message(f"<a href={href}>x</a></body>".encode())
    result, tokens = run(raw, opens=False)
    assert result.body is None and result.reason == "no link to rewrite"


@pytest.mark.parametrize("attrs", ['data-mxhook-skip', 'mxhook-skip="1"', 'class="a mxhook-skip"',
                                   "class='MXHOOK-SKIP x' data-x=1"])
def test_skip_marker(attrs):
    raw = html_message(f'<a {attrs} href="https://x.example/">x</a>'.encode())
    result, _ = run(raw, opens=False)
    if "MXHOOK" in attrs:  # the class is matched as written (classes are case-sensitive)
        assert result.links == 1
    else:
        assert result.body is None


def test_entities_quotes_and_escaping():
    raw = html_message(b"<a title='a>b' href='https://x.example/?a=1&amp;b=&quot;2&quot;' "
                       b"href=\"https://second.example/\">x</a><a href=https://y.example/&#x3f;q=1>y</a>")
    result, tokens = run(raw, opens=False)
    assert [u for _, u in tokens.clicks()] == ['https://x.example/?a=1&b="2"',
                                               "https://y.example/?q=1"]


def test_comments_scripts_and_unclosed_markup():
    raw = html_message(b"<!-- <a href='https://c.example/'> --><script>'<a href=\"https://s.example/\">'"
                       b"</script><a href=\"https://x.example/\">x</a><a href=\"https://open.example/")
    result, tokens = run(raw, opens=False)
    assert [u for _, u in tokens.clicks()] == ["https://x.example/"]


def test_pixel_before_the_last_body_close():
    raw = html_message(b"<html><body>x</body><!-- </body> --></body></html>")
    result, tokens = run(raw, clicks=False, honeypot=True)
    pixel = PIXEL.format(url=f"{BASE}/o/T0.sig").encode()
    honey = HONEYPOT.format(url=f"{BASE}/c/T1.sig").encode()
    assert result.body == b"<html><body>x</body><!-- </body> -->" + pixel + honey + b"</body></html>"
    assert result.pixel and result.links == 0


def test_a_long_7bit_line_stays_within_998_octets():
    head = b"<p>" + b"x" * 955  # 995 octets: the rewritten link would not fit
    raw = html_message(head + b'<a href="https://x.example/">x</a></p>\r\n<a href="https://y.example/">y</a></body>\r\n')
    result, tokens = run(raw)
    assert [u for _, u in tokens.clicks()] == ["https://y.example/"]
    assert max(len(line) for line in result.body.split(b"\r\n")) <= 998


def test_long_qp_line_pixel_on_its_own_line_when_needed():
    raw = html_message(b"y" * 990 + b"</body>\n", eol=b"\n")
    result, _ = run(raw, clicks=False)
    assert max(len(line) for line in result.body.split(b"\n")) <= 998
    assert b"\n<img" in result.body


@pytest.mark.parametrize("charset,reason", [
    ("utf-16", "charset utf-16 not supported (not ASCII-compatible)"),
    ("iso-2022-jp", "charset iso-2022-jp not supported (not ASCII-compatible)"),
    ("utf-7", "charset utf-7 not supported (not ASCII-compatible)"),
    ("cp500", "charset cp500 not supported (not ASCII-compatible)"),
    ("x-nonsense", "unknown charset 'x-nonsense'"),
])
def test_charsets_refused(charset, reason):
    raw = html_message(b'<a href="https://x.example/">x</a>', charset=charset)
    result, _ = run(raw)
    assert result.body is None and result.reason == reason


def test_shift_jis_link():
    text = '<p>日本語 <a href="https://x.example/ソ">リンク</a></p></body>'
    raw = html_message(text.encode("shift_jis"), charset="shift_jis", cte="8bit")
    result, tokens = run(raw)
    assert [u for _, u in tokens.clicks()] == ["https://x.example/ソ"]
    assert result.body.decode("shift_jis").startswith("<p>日本語 <a href=\"https://t.example.com/c/T0")


@pytest.mark.parametrize("headers,body,reason", [
    ([], b"plain text https://x.example/", "no HTML part"),
    ([("Content-Type", "multipart/mixed")], b"--x\r\n\r\nx\r\n--x--\r\n",
     "multipart/mixed without a boundary"),
    ([("Content-Type", "multipart/mixed; boundary=x")], b"--x\r\nContent-Type: text/html\r\n\r\n<a href=https://x.example/>x</a>\r\n",
     "multipart/mixed without its closing delimiter"),
    ([("Content-Type", "text/html"), ("Content-Type", "text/plain")], b"<a href=https://x/>", "several Content-Type fields"),
    ([("Content-Type", "text/html"), ("Content-Transfer-Encoding", "base64")], b"PGE@@@", "invalid base64"),
    ([("Content-Type", "message/rfc822")], b"Content-Type: text/html\r\n\r\n<a href=https://x/>", "no HTML part"),
])
def test_untouched_with_a_reason(headers, body, reason):
    result = rewrite(headers, body, plan())
    assert result == type(result)(None, reason, 0, False)


def test_over_max_size_and_nothing_asked():
    raw = html_message(b'<a href="https://x.example/">x</a>')
    headers, body = split(raw)
    assert rewrite(headers, body, plan(max_size=10)).reason == "message over max_size"
    nothing = plan(opens=False, clicks=False)
    assert rewrite(headers, body, nothing).reason == "no tracking asked"


def test_a_failing_token_function_is_a_reason_not_an_exception():
    def token(kind, index, url):
        raise RuntimeError("no key")
    raw = html_message(b'<a href="https://x.example/">x</a>')
    headers, body = split(raw)
    result = rewrite(headers, body, plan(token=token))
    assert result.body is None and result.reason.startswith("rewriter error: RuntimeError")


def test_folded_content_type_and_rfc2231_charset():
    raw = (b"Content-Type: multipart/alternative;\r\n\tboundary=\"=_b\"\r\n\r\n"
           b"--=_b\r\nContent-Type: text/html; charset*=utf-8''utf-8\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n"
           b"<a href=3D\"https://x.example/=\r\nlong\">x</a>\r\n--=_b--\r\n")
    result, tokens = run(raw, opens=False)
    assert [u for _, u in tokens.clicks()] == ["https://x.example/long"]


def test_multipart_delimiter_rules():
    # a boundary string inside a line is not a delimiter; transport padding after one is
    raw = (b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b \t\r\nContent-Type: text/html\r\n\r\nsee --b here <a href=https://x.example/>x</a>\r\n--b-- \r\n")
    result, tokens = run(raw, opens=False)
    assert result.links == 1


def test_no_pixel_at_the_end_of_a_document_that_ends_inside_a_tag():
    raw = html_message(b'<a href="https://x.example/">x</a><img src="a.png" alt="unclosed')
    result, tokens = run(raw)
    assert result.links == 1 and not result.pixel
    assert result.body.endswith(b'alt="unclosed')


def test_a_bare_cr_leaves_the_message():
    # the email package reads a bare CR as a line break: "\r--b" would be a delimiter to it
    raw = (b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n"
           b"<a href=https://x.example/>x</a>\r--b\r\nContent-Type: text/plain\r\n\r\nz\r\n--b--\r\n")
    result, _ = run(raw)
    assert result.body is None and result.reason == "a bare CR in the body"


def test_links_after_the_last_body_close():
    raw = html_message(b'<html><body>x</body><a href="https://after.example/">late</a></html>')
    result, tokens = run(raw)
    assert result.links == 1 and result.pixel
    assert result.body.index(b"<img") < result.body.index(b"/c/T0.sig")


def test_pixel_in_the_last_html_part_only_and_named_html_files_left_alone():
    raw = (b"Content-Type: multipart/mixed; boundary=m\r\n\r\n"
           b"--m\r\nContent-Type: text/html\r\n\r\n<p><a href=\"https://one.example/\">1</a></p></body>\r\n"
           b"--m\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
           b"--m\r\nContent-Type: text/html\r\n\r\n<p><a href=\"https://two.example/\">2</a></p></body>\r\n"
           b"--m\r\nContent-Type: text/html; name=\"page.html\"\r\nContent-Disposition: inline\r\n\r\n"
           b"<a href=\"https://file.example/\">f</a></body>\r\n--m--\r\n")
    result, tokens = run(raw)
    assert [u for _, u in tokens.clicks()] == ["https://one.example/", "https://two.example/"]
    assert result.body.count(b"<img ") == 1
    assert result.body.index(b"<img ") > result.body.index(b"/c/T1.sig")
    assert b'<a href="https://file.example/">f</a>' in result.body


def test_digest_items_are_messages():
    raw = (b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
           b"--d\r\n\r\nContent-Type: text/html\r\n\r\n<a href=\"https://digest.example/\">d</a>\r\n--d--\r\n")
    result, _ = run(raw)
    assert result.body is None and result.reason == "no HTML part"
