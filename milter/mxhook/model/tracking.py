"""Open and click tracking of one outbound message's body: links rewritten to the tracking host,
an open pixel added. Pure: bytes in, bytes out; the milter (daemons/milter.py) hands the new
body to Postfix.

The message is changed as little as a rewrite can: headers never change, the multipart
structure is walked by its boundaries and every byte outside a rewritten part's content is
copied as it came (no re-serialisation: email.generator changes bytes). A rewritten part keeps
its charset and transfer encoding:

- 7bit, 8bit, binary: the content is edited in place. A link whose rewrite would make its line
  longer than 998 octets (RFC 5322) stays as it was: Postfix's SMTP client would break that
  line, inside the URL.
- quoted-printable: only the encoded lines that hold an edit are encoded again (soft breaks at
  76 characters, the part's own line ends); every other line is copied.
- base64: decoded, edited, encoded again in lines as long as the part's first line (76 when it
  has none usable), with the part's line ends.

HTML is read as bytes (Latin-1 as a stand-in: every byte one character, so offsets are byte
offsets) by a small regex tokenizer over tags that follows the HTML tokenizer where it matters
for links: comments, `<script>`/`<style>`-like raw text, quoted and unquoted attribute values
(a `>` inside quotes does not end a tag), the first of two same-named attributes, a document
that ends inside a tag. Text and tags other than `<a>`/`<area>` are skipped in one linear regex
match; html.parser is not used because it reports positions as line/column and normalises what
it hands over. Only the value of `href` in `<a>` and `<area>` is replaced, so the
rest of the document stays byte for byte; the new value is ASCII, the same bytes in every
ASCII-compatible charset, which is why stateful and non-ASCII-compatible charsets (UTF-16,
UTF-7, ISO-2022-*, HZ, EBCDIC) leave the part untouched. Outlook's conditional comments
(`<!--[if mso]>...<![endif]-->`) are read as markup: Outlook renders them.

A link stays as it is when it is not `http(s)` (mailto:, tel:, #anchors, relative URLs,
templating placeholders), already points at the tracking host, or is marked to be skipped: an
attribute `data-mxhook-skip` or `mxhook-skip`, or a class `mxhook-skip`
(`<a class="button mxhook-skip" href="...">`). Parts never touched: attachments (disposition
attachment, or a file name), everything inside message/rfc822 (and multipart/digest items).
With `text_links`, http(s) URLs in text/plain parts are rewritten too (trailing punctuation and
an unbalanced closing parenthesis stay outside the URL).

Where readers of a message could disagree, the message (or the part) stays untouched: several
Content-Type or Content-Transfer-Encoding fields, a bare CR, a multipart without its closing
delimiter, a quoted-printable line with trailing white space or a bad escape, an unknown charset.
The pixel goes into the last HTML part, before its last `</body>` (else at its end); link
indexes count the rewritten links of the message from 0 in document order.

Nothing here raises to the caller: any problem leaves the message untouched, with the reason.
"""
from __future__ import annotations

import base64
import binascii
import bisect
import html
import re
from dataclasses import dataclass
from email.message import Message
from typing import Callable

from mxhook.model.headers import charset_codec, to_text, unfold
from mxhook.model.message import MAX_DEPTH, MAX_PARTS, header_section
from mxhook.model.tracktokens import CLICK, OPEN

MAX_LINE = 998  # octets before the line end (RFC 5322 2.1.1)
B64_LINE = 76
SKIP_MARKER = "mxhook-skip"
PIXEL = ('<img src="{url}" width="1" height="1" alt="" '
         'style="display:block;border:0;height:1px;width:1px" />')
HONEYPOT = '<a href="{url}" style="display:none" aria-hidden="true" tabindex="-1"></a>'


@dataclass(frozen=True)
class Plan:
    """What to do to one message."""

    opens: bool  # add the open pixel
    clicks: bool  # rewrite http(s) links of the HTML part(s)
    text_links: bool  # also rewrite http(s) URLs in text/plain parts
    honeypot: bool  # add one hidden link a human cannot see or click (bot verdicts)
    base_url: str  # [tracking] public_url, e.g. "https://t.example.com" (no trailing /)
    token: Callable[[str, int | None, str | None], str]  # (kind, link index, url) -> token
    max_size: int = 10_000_000


@dataclass(frozen=True)
class Rewritten:
    """The new body, or None with the reason the message stays untouched."""

    body: bytes | None  # the whole new body (what follows the header block); None = untouched
    reason: str | None  # why untouched; None when rewritten
    links: int  # links rewritten
    pixel: bool  # open pixel added


class _Untouched(Exception):
    """The message (or one part) stays as it is, for the reason given."""


def rewrite(headers: list[tuple[str, str]], body: bytes, plan: Plan) -> Rewritten:
    """`body` with its links rewritten and the pixel added as `plan` asks; never raises."""
    try:
        return _Rewriter(plan).message(headers, body)
    except _Untouched as exc:
        return Rewritten(None, str(exc), 0, False)
    except Exception as exc:  # a bug must not cost the message: it goes out untouched
        return Rewritten(None, f"rewriter error: {type(exc).__name__}: {exc}", 0, False)


# ---------------------------------------------------------------------------------------------
# MIME structure

@dataclass
class _Leaf:
    start: int  # content span in the body
    end: int
    ctype: str
    charset: str | None
    cte: str


def _fields(pairs) -> Message:
    """A header-only Message for parameter parsing (Content-Type, Content-Disposition)."""
    m = Message()
    for name, value in pairs:
        m[name] = unfold(to_text(value))
    return m


def _leaf_or_none(m: Message, default_type: str) -> tuple[str, str | None, str] | None:
    ctype = m.get_content_type() if m.get("content-type") is not None else default_type
    disposition = (m.get_content_disposition() or "").lower()
    if disposition == "attachment" or m.get_filename() is not None:
        return None
    if len(m.get_all("content-transfer-encoding") or ()) > 1:
        raise _Untouched("several Content-Transfer-Encoding fields")
    cte = unfold(str(m.get("content-transfer-encoding", "7bit"))).strip().lower() or "7bit"
    charset = m.get_param("charset")
    if isinstance(charset, tuple):  # RFC 2231
        charset = charset[2]
    return ctype, (str(charset).strip() if charset else None), cte


def _line_end_before(body: bytes, pos: int, floor: int) -> int:
    """Start of the line break that ends at `pos` (which belongs to the delimiter)."""
    if pos > floor and body[pos - 1:pos] == b"\n":
        return pos - 2 if pos - 1 > floor and body[pos - 2:pos - 1] == b"\r" else pos - 1
    return pos


def _delimiters(body: bytes, start: int, end: int, boundary: bytes):
    """(line start, line end incl. its line break, closing) of each delimiter line in the span."""
    marker = b"--" + boundary
    pos = start
    while True:
        at = body.find(marker, pos, end)
        if at < 0:
            return
        pos = at + len(marker)
        if at != start and body[at - 1:at] != b"\n":
            continue
        j = pos
        closing = body.startswith(b"--", j) and j + 2 <= end
        if closing:
            j += 2
        while j < end and body[j:j + 1] in (b" ", b"\t"):
            j += 1
        if j < end and body[j:j + 1] == b"\r":
            j += 1
        if j < end and body[j:j + 1] == b"\n":
            j += 1
        elif j != end:
            continue  # more on the line: not a delimiter
        yield at, j, closing
        pos = j


def _walk(body: bytes, start: int, end: int, m: Message, default_type: str,
          depth: int, leaves: list[_Leaf]) -> None:
    if depth > MAX_DEPTH:
        raise _Untouched(f"multipart nesting deeper than {MAX_DEPTH}")
    if len(m.get_all("content-type") or ()) > 1:
        raise _Untouched("several Content-Type fields")  # readers disagree which one counts
    ctype = m.get_content_type() if m.get("content-type") is not None else default_type
    maintype = ctype.partition("/")[0]
    if maintype == "message":
        return  # a forwarded or attached message is never touched
    if maintype != "multipart":
        leaf = _leaf_or_none(m, default_type)
        if leaf is not None and leaf[0] in ("text/html", "text/plain"):
            if len(leaves) >= MAX_PARTS:
                raise _Untouched(f"more than {MAX_PARTS} parts")
            leaves.append(_Leaf(start, end, *leaf))
        return
    boundary = m.get_boundary()
    if not boundary:
        raise _Untouched(f"{ctype} without a boundary")
    child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    part_start = None
    for line_start, line_end, closing in _delimiters(body, start, end,
                                                     boundary.encode("utf-8", "surrogateescape")):
        if part_start is not None:
            _part(body, part_start, _line_end_before(body, line_start, part_start),
                  child_default, depth, leaves)
        if closing:
            return
        part_start = line_end
    raise _Untouched(f"{ctype} without its closing delimiter")


def _part(body: bytes, start: int, end: int, default_type: str, depth: int,
          leaves: list[_Leaf]) -> None:
    fields, offset, _defects = header_section(body[start:end])
    _walk(body, start + offset, end, _fields(fields), default_type, depth + 1, leaves)


# ---------------------------------------------------------------------------------------------
# The rewrite

_STATEFUL = ("utf_7", "iso2022", "hz", "utf_16", "utf_32")
_ASCII_PROBE = "<a href=\"x\" class='y'>&amp;=#/:.?%-_ \t\r\n</a>abcxyzABCXYZ0189"


def _ascii_compatible(codec: str) -> bool:
    if codec.replace("-", "_").startswith(_STATEFUL):
        return False
    try:
        return _ASCII_PROBE.encode(codec) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


class _Rewriter:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.base = plan.base_url.rstrip("/")
        self.links = 0
        self.pixel = False

    def message(self, headers: list[tuple[str, str]], body: bytes) -> Rewritten:
        plan = self.plan
        if not (plan.opens or plan.clicks or plan.text_links or plan.honeypot):
            raise _Untouched("no tracking asked")
        if len(body) > plan.max_size:
            raise _Untouched("message over max_size")
        if not self.base.lower().startswith(("https://", "http://")):
            raise _Untouched("tracking base URL is not http(s)")
        if body.count(b"\r") != body.count(b"\r\n"):
            # readers disagree whether a bare CR ends a line (and so where parts begin)
            raise _Untouched("a bare CR in the body")
        leaves: list[_Leaf] = []
        _walk(body, 0, len(body), _fields(headers), "text/plain", 0, leaves)
        html_leaves = [leaf for leaf in leaves if leaf.ctype == "text/html"]
        wanted = [leaf for leaf in leaves if leaf.ctype == "text/html"
                  or (plan.text_links and leaf.ctype == "text/plain")]
        if not wanted:
            raise _Untouched("no HTML part")
        last_html = html_leaves[-1] if html_leaves else None
        edits: list[tuple[int, int, bytes]] = []
        reasons: list[str] = []
        for leaf in wanted:
            try:
                new = self._leaf(body, leaf, pixel_here=leaf is last_html)
            except _Untouched as exc:
                reasons.append(str(exc))
                continue
            if new is not None:
                edits.append((leaf.start, leaf.end, new))
        if not edits:
            if reasons:
                raise _Untouched(reasons[0])
            raise _Untouched("no link to rewrite" if html_leaves else "no HTML part")
        out, pos = [], 0
        for start, end, new in edits:
            out += [body[pos:start], new]
            pos = end
        out.append(body[pos:])
        return Rewritten(b"".join(out), None, self.links, self.pixel)

    # -- one part ----------------------------------------------------------------------------

    def _leaf(self, body: bytes, leaf: _Leaf, *, pixel_here: bool) -> bytes | None:
        if leaf.charset:
            codec = charset_codec(leaf.charset)
            if codec is None:
                raise _Untouched(f"unknown charset {leaf.charset!r}")
            if not _ascii_compatible(codec):
                raise _Untouched(f"charset {leaf.charset} not supported (not ASCII-compatible)")
        else:
            codec = "ascii"
        raw = body[leaf.start:leaf.end]
        if leaf.cte in ("7bit", "8bit", "binary"):
            return self._plain(raw, leaf, codec, pixel_here)
        if leaf.cte == "quoted-printable":
            return self._qp(raw, leaf, codec, pixel_here)
        if leaf.cte == "base64":
            return self._base64(raw, leaf, codec, pixel_here)
        raise _Untouched(f"unknown transfer encoding {leaf.cte}")

    def _edits(self, data: bytes, leaf: _Leaf, codec: str, pixel_here: bool,
               lines: _Lines | None = None) -> list[tuple[int, int, bytes]]:
        text = data.decode("latin-1")
        if leaf.ctype == "text/html":
            return self._html(text, codec, pixel_here, lines)
        return self._text(text, lines)

    def _plain(self, raw: bytes, leaf: _Leaf, codec: str, pixel_here: bool) -> bytes | None:
        lines = _Lines(raw)
        edits = self._edits(raw, leaf, codec, pixel_here, lines)
        return _apply(raw, edits) if edits else None

    def _qp(self, raw: bytes, leaf: _Leaf, codec: str, pixel_here: bool) -> bytes | None:
        logical = _qp_logical_lines(raw)
        decoded = b"".join(text + end for _s, _e, text, end in logical)
        edits = self._edits(decoded, leaf, codec, pixel_here)
        if not edits:
            return None
        eol = _line_end(raw)
        if not logical:
            return _qp_encode(_apply(decoded, edits), eol)
        starts, pos = [], 0
        for _s, _e, text, end in logical:
            starts.append(pos)
            pos += len(text) + len(end)
        # the logical lines each edit touches, merged where edits share lines: only those are
        # encoded again
        groups: list[list] = []  # [first line, last line, edits]
        for start, end, new in edits:
            first = bisect.bisect_right(starts, start) - 1
            last = first
            while starts[last] + len(logical[last][2]) < end:
                last += 1
            if groups and first <= groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], last)
                groups[-1][2].append((start, end, new))
            else:
                groups.append([first, last, [(start, end, new)]])
        out, copied = [], 0
        for first, last, mine in groups:
            if any(isinstance(line[2], _Ambiguous) for line in logical[first:last + 1]):
                raise _Untouched("quoted-printable line with trailing white space or a bad escape")
            out.append(raw[copied:logical[first][0]])
            g_start = starts[first]
            g_end = starts[last] + len(logical[last][2])  # the last line's break stays outside
            content = _apply(decoded[g_start:g_end], [(s - g_start, e - g_start, new) for s, e, new in mine])
            out.append(_qp_encode(content, eol) + logical[last][3])
            copied = logical[last][1]
        out.append(raw[copied:])
        return b"".join(out)

    def _base64(self, raw: bytes, leaf: _Leaf, codec: str, pixel_here: bool) -> bytes | None:
        compact = re.sub(rb"[ \t\r\n]+", b"", raw)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise _Untouched("invalid base64") from None
        edits = self._edits(data, leaf, codec, pixel_here)
        if not edits:
            return None
        eol = _line_end(raw)
        first = raw.split(b"\n", 1)[0].rstrip(b"\r \t")
        width = len(first) if 4 <= len(first) <= B64_LINE and len(first) % 4 == 0 \
            and len(compact) > len(first) else B64_LINE
        encoded = base64.b64encode(_apply(data, edits))
        lines = [encoded[i:i + width] for i in range(0, len(encoded), width)]
        trailer = raw[len(raw.rstrip(b"\r\n")):]  # keep how the part ended
        return eol.join(lines) + trailer

    # -- HTML --------------------------------------------------------------------------------

    def _html(self, text: str, codec: str, pixel_here: bool,
              lines: _Lines | None) -> list[tuple[int, int, bytes]]:
        plan = self.plan
        edits: list[tuple[int, int, bytes]] = []
        body_close = None
        broken = False
        for kind, a, _b, attrs in _tags(text):
            if kind == "close":
                body_close = a
                continue
            if kind == "broken":
                broken = True
                continue
            if not plan.clicks:
                continue
            href = _link_attr(attrs)
            if href is None:
                continue
            _name, v_start, v_end, quote, _value = href
            url = self._url(text[v_start:v_end], codec)
            if url is None:
                continue
            new_value = self._click_url(url)
            if quote:
                replacement = html.escape(new_value, quote=True)
            elif _UNQUOTED_OK.fullmatch(new_value):
                replacement = new_value.replace("&", "&amp;")
            else:
                replacement = '"' + html.escape(new_value, quote=True) + '"'
            new = replacement.encode("ascii")
            if lines is not None and not lines.fits(v_start, v_end, new):
                continue
            edits.append((v_start, v_end, new))
            self.links += 1
        # a document that ends inside markup would swallow a pixel added at its end
        if pixel_here and (plan.opens or plan.honeypot) and (body_close is not None or not broken):
            insert = ""
            if plan.opens:
                insert += PIXEL.format(url=html.escape(f"{self.base}/o/{plan.token(OPEN, None, None)}"))
            if plan.honeypot:
                insert += HONEYPOT.format(url=html.escape(f"{self.base}/c/{plan.token(CLICK, -1, self.base)}"))
            # before the last </body>, else at the end (before the final line break)
            at = body_close if body_close is not None else len(text.rstrip("\r\n"))
            new = insert.encode("ascii")
            if lines is not None and not lines.fits(at, at, new):
                new = lines.break_line + new
            edits.append((at, at, new))
            edits.sort(key=lambda edit: edit[0])  # links may follow the last </body>
            self.pixel = plan.opens
        return edits

    def _url(self, raw_value: str, codec: str) -> str | None:
        """The link's real URL when it is one to track, else None."""
        try:
            value = raw_value.encode("latin-1").decode(codec)
        except (UnicodeError, LookupError):
            return None
        url = _URL_NOISE.sub("", html.unescape(value)).strip(" \x0c\x00")
        if not _HTTP.match(url):
            return None
        if _same_origin(url, self.base):
            return None
        return url

    def _click_url(self, url: str) -> str:
        return f"{self.base}/c/{self.plan.token(CLICK, self.links, url)}"

    # -- text/plain --------------------------------------------------------------------------

    def _text(self, text: str, lines: _Lines | None) -> list[tuple[int, int, bytes]]:
        edits: list[tuple[int, int, bytes]] = []
        for m in _TEXT_URL.finditer(text):
            url = _trim_url(m.group(0))
            start, end = m.start(), m.start() + len(url)
            if _same_origin(url, self.base) or not _HTTP.match(url):
                continue
            new = self._click_url(url).encode("ascii")
            if lines is not None and not lines.fits(start, end, new):
                continue
            edits.append((start, end, new))
            self.links += 1
        return edits


# ---------------------------------------------------------------------------------------------
# Helpers

_WS = "\t\n\x0c\r "
_HTTP = re.compile(r"https?://[^/?#\s]", re.I)
_URL_NOISE = re.compile(r"[\t\n\r]")  # removed by URL parsing (WHATWG)
_UNQUOTED_OK = re.compile(r"[^\t\n\x0c\r \"'=<>`]+")
_TEXT_URL = re.compile(r"https?://[!#-;=?-~]+", re.I)  # printable ASCII but space, " < >
_TRAILING = ".,;:!?'*"
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _same_origin(url: str, base: str) -> bool:
    low, b = url.lower(), base.lower()
    return low == b or low.startswith(b + "/")


def _trim_url(url: str) -> str:
    """Sentence punctuation after a URL stays outside it; a closing bracket only when the URL
    does not open one."""
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _CLOSERS and url.count(last) > url.count(_CLOSERS[last]):
            url = url[:-1]
        else:
            break
    return url


def _apply(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out, pos = [], 0
    for start, end, new in edits:
        out += [data[pos:start], new]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _line_end(raw: bytes) -> bytes:
    nl = raw.find(b"\n")
    return b"\r\n" if nl > 0 and raw[nl - 1:nl] == b"\r" else b"\n"


class _Lines:
    """Line lengths of a 7bit/8bit part, so an edit never makes a line longer than 998 octets."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.growth: dict[int, int] = {}  # line start -> octets added so far
        self.break_line = _line_end(raw)
        self.breaks = [m.start() for m in re.finditer(b"\n", raw)]  # (many links, one line: linear)

    def fits(self, start: int, end: int, new: bytes) -> bool:
        raw, breaks = self.raw, self.breaks
        i = bisect.bisect_left(breaks, start)
        if i < len(breaks) and breaks[i] < end:
            return False  # a value across lines: keep it simple, leave it
        line_start = breaks[i - 1] + 1 if i else 0
        line_end = breaks[i] if i < len(breaks) else len(raw)
        if line_end > line_start and raw[line_end - 1:line_end] == b"\r":
            line_end -= 1
        grown = self.growth.get(line_start, 0) + len(new) - (end - start)
        if line_end - line_start + grown > MAX_LINE and grown > 0:
            return False
        self.growth[line_start] = grown
        return True


def _qp_logical_lines(raw: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(raw start, raw end incl. line break, decoded bytes, line break) of each logical line
    (physical lines joined at soft breaks) of quoted-printable `raw`; the decoded bytes are
    an _Ambiguous for a line with trailing white space or an "=" that starts no escape: decoders
    differ there (RFC 2045 6.7 says drop trailing white space, the email package keeps some), so
    such a line is never encoded again."""
    out = []
    lines = raw.split(b"\n")
    last = len(lines) - 1
    pos = start = 0
    pieces: list[bytes] = []
    blank_tail = False
    for i, line in enumerate(lines):
        if i == last and not line:
            break  # `raw` ended with a line break
        line_end = pos + len(line) + (i != last)
        body = line[:-1] if line[-1:] == b"\r" else line
        brk = line[len(body):] + (b"\n" if i != last else b"")
        if body[-1:] in (b" ", b"\t"):
            blank_tail = True
            body = body.rstrip(b" \t")
        if body[-1:] == b"=":
            pieces.append(body[:-1])
            pos = line_end
            if brk:
                continue
            break  # a soft break at the very end: nothing follows
        pieces.append(body)
        out.append((start, line_end, _qp_decode(b"".join(pieces), blank_tail), brk))
        pos = start = line_end
        pieces = []
        blank_tail = False
    if pieces:
        out.append((start, len(raw), _qp_decode(b"".join(pieces), blank_tail), b""))
    return out


_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2})")


def _qp_decode(data: bytes, ambiguous: bool = False) -> bytes | _Ambiguous:
    if b"=" not in data:
        return _Ambiguous(data) if ambiguous else data
    decoded = binascii.a2b_qp(data)
    if ambiguous or _QP_BAD_ESCAPE.search(data):
        return _Ambiguous(decoded)
    return decoded


class _Ambiguous(bytes):
    """Decoded quoted-printable whose line had trailing white space: read, never re-encoded."""


def _qp_encode(data: bytes, eol: bytes) -> bytes:
    """`data` as quoted-printable, its line breaks kept as they are, soft breaks (`eol`) keeping
    lines within 76 characters."""
    pieces = re.split(rb"(\r?\n)", data)
    return b"".join(_qp_line(piece, eol) if i % 2 == 0 else piece for i, piece in enumerate(pieces))


def _qp_line(data: bytes, eol: bytes) -> bytes:
    # binascii: 76-character lines, trailing white space encoded; not text mode, so a lone CR
    # (which some readers take for a line break) is encoded too
    return binascii.b2a_qp(data, False, False, False).replace(b"=\n", b"=" + eol)


# ---------------------------------------------------------------------------------------------
# The HTML tokenizer

_TAG_OPEN = re.compile(r"<(?:!--|/?[A-Za-z]|[!?])")
_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\x0c\r />]*")
_ATTR = re.compile(
    r"[\t\n\x0c\r /]*([^\t\n\x0c\r />][^\t\n\x0c\r />=]*)"
    r"(?:[\t\n\x0c\r ]*=[\t\n\x0c\r ]*(?:\"([^\"]*)\"|'([^']*)'|([^\t\n\x0c\r >]*)))?")
_ATTR_END = re.compile(r"[\t\n\x0c\r /]*>")
# a whole well-formed tag after its name, in one linear match: the attributes are matched
# inside a lookahead and consumed by a backreference, which makes the group atomic (no
# backtracking into it; re's own possessive quantifiers match wrongly before Python 3.11.5,
# and Debian 12 has 3.11.2: cpython gh-106052, gh-100061). An unclosed quote, or a name
# starting with "=" or a quote, fails it and the tag is read attribute by attribute.
_WHOLE_TAG = re.compile(
    r"(?=((?:[\t\n\x0c\r /]*[^\t\n\x0c\r />=\"'][^\t\n\x0c\r />=]*"
    r"(?:[\t\n\x0c\r ]*=[\t\n\x0c\r ]*(?:\"[^\"]*\"|'[^']*'|(?![\"'])[^\t\n\x0c\r >]*))?)*))\1"
    r"[\t\n\x0c\r /]*>")
_RAW_TEXT = {"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
             "plaintext"}
# text and the tags that matter to nobody here (all but a, area, raw-text elements, </body>,
# comments, <!...> and <?...>) skipped in one match; the tokenizer loop sees only the rest.
# Nothing follows the repetition, so a failing iteration ends the match, never backtracks; a
# tag name cannot give back characters (the lookahead after it).
_SKIP = re.compile(
    r"(?:[^<]+|<(?![A-Za-z!?/])|</(?![A-Za-z])"
    r"|<(?!(?:a|area|" + "|".join(sorted(_RAW_TEXT)) + r")[\t\n\x0c\r />])[A-Za-z][^\t\n\x0c\r />]*(?=[\t\n\x0c\r />])"
    + _WHOLE_TAG.pattern +
    r"|</(?!body[\t\n\x0c\r />])[A-Za-z][^>]*>)*", re.I)


def _tags(text: str):
    """("link", tag start, tag end, attributes) for every start tag of `a` or `area`,
    ("close", start, end, None) for every `</body`, and last ("broken", start, end, None) when
    the document ends inside markup (a tag, comment, quoted value or script); attributes as
    (lower-case name, value start, value end, quote character or "", value)."""
    pos = 0
    while True:
        pos = _SKIP.match(text, pos).end()
        m = _TAG_OPEN.search(text, pos)
        if m is None:
            return
        at = m.start()
        opener = m.group(0)
        if opener == "<!--":
            if text.startswith("[if", at + 4):  # Outlook conditional comment: markup inside
                pos = at + 4
                continue
            if text.startswith(">", at + 4):
                pos = at + 5
                continue
            if text.startswith("->", at + 4):
                pos = at + 6
                continue
            end = text.find("-->", at + 4)
            if end < 0:
                yield "broken", at, len(text), None
                return  # the rest of the document is a comment
            pos = end + 3
            continue
        if opener in ("<!", "<?") or opener.startswith("</"):
            end = text.find(">", at + 1)
            if end < 0:
                yield "broken", at, len(text), None
                return
            if opener.startswith("</") and text[at + 2:at + 6].lower() == "body" \
                    and text[at + 6:at + 7] in ("", ">", "/") + tuple(_WS):
                yield "close", at, end + 1, None
            pos = end + 1
            continue
        name_m = _TAG_NAME.match(text, at + 1)
        name = name_m.group(0).lower()
        pos = name_m.end()
        if name not in ("a", "area"):
            rest = _WHOLE_TAG.match(text, pos)  # most tags: no need to look at their attributes
            if rest is not None:
                pos = rest.end()
                if name in _RAW_TEXT:
                    if name == "plaintext":
                        yield "broken", at, len(text), None
                        return  # the rest of the document is text
                    close = re.compile("</" + name + r"(?=[\t\n\x0c\r />])", re.I).search(text, pos)
                    if close is None:
                        yield "broken", at, len(text), None
                        return
                    pos = close.start()
                continue
        attrs = []
        while True:
            end_m = _ATTR_END.match(text, pos)
            if end_m is not None:
                pos = end_m.end()
                break
            a = _ATTR.match(text, pos)
            if a is None or a.end() == pos:
                yield "broken", at, len(text), None
                return  # the tag never ends: nothing after it is markup
            value = a.group(4)
            if value is not None and value[:1] in ('"', "'"):
                yield "broken", at, len(text), None
                return  # an unclosed quote runs to the end of the document
            for group, quote in ((2, '"'), (3, "'"), (4, "")):
                if a.group(group) is not None:
                    attrs.append((a.group(1).lower(), a.start(group), a.end(group), quote,
                                  a.group(group)))
                    break
            else:
                attrs.append((a.group(1).lower(), -1, -1, None, ""))
            pos = a.end()
        if name in ("a", "area"):
            yield "link", at, pos, attrs
        elif name == "plaintext":
            yield "broken", at, len(text), None
            return  # the rest of the document is text
        elif name in _RAW_TEXT:
            close = re.compile("</" + name + r"(?=[\t\n\x0c\r />])", re.I).search(text, pos)
            if close is None:
                yield "broken", at, len(text), None
                return
            pos = close.start()


def _link_attr(attrs):
    """The href attribute (name, value start, value end, quote, value) to rewrite, or None
    (none, or the link is marked to be skipped)."""
    href = None
    seen = set()
    for attr in attrs:
        name = attr[0]
        if name in ("data-" + SKIP_MARKER, SKIP_MARKER):
            return None
        if name in seen:
            continue  # the first of two same-named attributes counts
        seen.add(name)
        if name == "class" and SKIP_MARKER in html.unescape(attr[4]).split():
            return None
        if name == "href" and attr[3] is not None:
            href = attr
    return href
