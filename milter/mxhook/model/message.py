"""A raw RFC 5322 message → a JSON-able dict (headers in order, addresses, bodies, attachments).

Pure and fuzz-safe: `normalize` never raises on bad input. What it had to guess or skip is
written to the result's `defects` list instead. The top-level header section is split from the
body as Postfix splits it before its milters see it (`header_section`), so the payload shows
the fields the milter's decision saw, no more and no fewer; it is read from the raw bytes
directly (8-bit and malformed headers keep their order and content). The MIME structure comes
from the stdlib parser with the `compat32` policy, the most forgiving one (the modern policy
raises on some broken headers when they are accessed), fed that same split; `message/*` parts
are not parsed but passed on as the bytes that came.

Body text is decoded from the part's declared charset, its label read as in header encoded
words (`headers.charset_codec`: gb2312 as gb18030, big5 as big5hkscs, ...). Text declared (or defaulting to) UTF-8
or US-ASCII that is not: each byte outside a valid UTF-8 sequence is read as Windows-1252.
An unknown label: UTF-8, else the same. Another declared charset the text is not valid in:
its vendor superset where there is one (Shift_JIS as cp932, ...), else UTF-8 if the text is
that, else the declared charset with U+FFFD for what it cannot read (as browsers do; one bad
sequence must not garble the whole text). ISO-8859-1 labels are read as
Windows-1252, as browsers do (WHATWG Encoding), because that is what the senders meant. Line
ends in decoded text are LF.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.utils
import re
from datetime import timezone
from email.message import Message
from email.feedparser import BytesFeedParser
from email.policy import Compat32

from mxhook.model.headers import (
    charset_codec,
    decode_field,
    decode_value,
    mailboxes,
    plain_address,
    to_text,
)

DEFAULT_MAX_ATTACHMENT_SIZE = 10 * 1024 * 1024
MAX_PARTS = 1000  # leaf parts looked at; the rest is skipped with a defect
MAX_DEPTH = 50  # multipart nesting
MAX_REOPENED = 10  # multiparts continued after their close delimiter (each is parsed again)
# What of a Content-Type / Content-Disposition value is read: the first characters, up to the
# first semicolons (parameters, and `;` inside quoted values).
MAX_PARAMETER_FIELD = 8192
MAX_PARAMETER_SEMICOLONS = 32
_PARAMETER_FIELDS = ("Content-Type", "Content-Disposition")

_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MSG_ID = re.compile(r"<[^<>\s]*>")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")
_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_CHARSET = re.compile(r"[A-Za-z0-9!#$%&'+^_`{}~.-]{1,40}\Z")  # a token: needs no quoting
_WHATWG_1252 = {"ascii", "iso8859-1", "cp1252"}  # read as windows-1252 (python codec names)
# Tried when the declared charset cannot read the text: the vendor supersets that mailers write
# under the standard label (NEC/IBM extensions such as circled digits). Labels read as their
# superset from the start (big5, euc-kr, gb2312, ...) are in headers.charset_codec.
_FAILURE_SUPERSETS = {"shift_jis": "cp932", "euc_jp": "euc_jis_2004"}
# windows-1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined: those stay Latin-1 (C1 controls).
_CP1252_FROM_LATIN1 = {
    i: bytes([i]).decode("cp1252") for i in range(0x80, 0xA0) if i not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}




class _Policy(Compat32):
    """compat32, except that 8-bit header bytes read back as text (UTF-8, else Latin-1) instead
    of U+FFFD, so parameters such as a raw UTF-8 filename survive."""

    def header_fetch_parse(self, name, value):
        return to_text(value)


_POLICY = _Policy()


# ---------------------------------------------------------------------------------------------
# Charsets

def _cp1252(data: bytes) -> str:
    """Windows-1252, total: every byte maps to a character."""
    return data.decode("latin-1").translate(_CP1252_FROM_LATIN1)


def _cp1252_errors(exc: UnicodeDecodeError) -> tuple[str, int]:
    return _cp1252(exc.object[exc.start:exc.end]), exc.end


codecs.register_error("mxhook-cp1252", _cp1252_errors)


def _utf8_else_cp1252(data: bytes) -> tuple[str, bool]:
    """(text, whether all of it was UTF-8): UTF-8, each byte outside a valid UTF-8 sequence
    read as Windows-1252, so a Latin-1 body labelled UTF-8 reads right and a UTF-8 body with a
    stray Latin-1 byte keeps its UTF-8 text."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", "mxhook-cp1252"), False


def decode_text(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """(text, problem or None) for body bytes with a declared charset label (may be None)."""
    codec = charset_codec(charset)
    if charset and codec is None:
        text, utf8 = _utf8_else_cp1252(data)
        return text, f"unknown charset {charset!r}, decoded as {'utf-8' if utf8 else 'windows-1252'}"
    if codec is None or codec in _WHATWG_1252:
        try:
            return data.decode("ascii"), None
        except UnicodeDecodeError:
            pass
        if codec is not None and codec != "ascii":  # declared latin-1 / windows-1252
            return _cp1252(data), None
        text, utf8 = _utf8_else_cp1252(data)
        return text, (f"8-bit text declared as {charset or 'us-ascii (default)'}, "
                      f"decoded as {'utf-8' if utf8 else 'windows-1252'}")
    try:
        return data.decode(codec), None
    except (UnicodeDecodeError, UnicodeError, ValueError, LookupError):
        pass
    if codec == "utf-8":
        return (_utf8_else_cp1252(data)[0],
                f"text is not valid {charset}, bytes outside utf-8 sequences read as windows-1252")
    superset = _FAILURE_SUPERSETS.get(codec)
    if superset is not None:
        try:
            text = data.decode(superset)
        except UnicodeDecodeError:
            text = None
        # (cp932 reads stray 0xA0, 0xFD-0xFF as private-use characters: not text either)
        if text is not None and _PRIVATE_USE.search(text) is None:
            return text, f"text is not valid {charset}, decoded as {superset}"
    try:
        return data.decode("utf-8"), f"text is not valid {charset}, decoded as utf-8"
    except UnicodeDecodeError:
        pass
    try:  # one bad sequence must not turn a whole text in its declared charset into mojibake
        return data.decode(codec, "replace"), f"text is not valid {charset}, undecodable bytes replaced"
    except Exception:
        return _cp1252(data), f"text is not valid {charset}, decoded as windows-1252"


# ---------------------------------------------------------------------------------------------
# Headers

def header_section(raw: bytes) -> tuple[list[tuple[str, bytes]], int, list[str]]:
    """The top-level header fields, split from the body exactly as Postfix does before its
    milters see them: (fields as (name, raw value bytes after the colon, continuation lines
    joined with LF), offset of the first body byte in `raw`, defects).

    Postfix's rules (smtpd.c, mime_state.c): leading lines that start with "From " (after any
    ">") become X-Mailbox-Line fields; if the next line starts with white space, the message
    has no header section at all (smtpd puts a blank line before it); a field is a name of
    printable ASCII other than ":", optional blanks, then ":"; a line starting with white space
    continues the field before it; the first line that is none of these ends the header
    section: an empty line is the separator, any other line is the first line of the body."""
    fields: list[tuple[str, bytes]] = []
    defects: list[str] = []
    pos, end = 0, len(raw)
    first = True
    while pos < end:
        nl = raw.find(b"\n", pos)
        next_pos = end if nl < 0 else nl + 1
        line = raw[pos:next_pos if nl < 0 else nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        if first and line.lstrip(b">").startswith(b"From "):  # mbox separator line(s)
            fields.append(("X-Mailbox-Line", b" " + line))
            pos = next_pos
            continue
        if line[:1] in (b" ", b"\t"):
            if first:
                defects.append("the first line starts with white space: no header section "
                               "(the whole message is body, as Postfix reads it)")
                return fields, pos, defects
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
            pos = next_pos
            continue
        first = False
        if not line:
            return fields, next_pos, defects
        m = _FIELD_NAME.match(line)
        if m is None:
            defects.append(f"header section ends at a line that is not a header field: {to_text(line[:60])!r}")
            return fields, pos, defects
        fields.append((m.group(1).decode("ascii"), line[m.end():]))
        pos = next_pos
    return fields, end, defects


def split_headers(raw: bytes) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Top-level header fields as (name, raw value bytes) in order, unfolding left to
    decode_value; what Postfix passes to a milter (see header_section)."""
    fields, _, defects = header_section(raw)
    return fields, defects


def _date_iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
        if dt.tzinfo is None:  # "-0000": UTC by RFC 5322's reading
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except Exception:
        return None


def _addresses(values: list[bytes]) -> list[dict]:
    """The mailboxes of address fields, each address as written (an internationalized domain
    as its U-label), in lower case; comparisons use `headers.normalize_address`."""
    return [{"name": m.name, "address": plain_address(m.address)} for v in values for m in mailboxes(v)]


# ---------------------------------------------------------------------------------------------
# Parts

def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = part.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    return to_text(str(value)).strip().strip('"')


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if name is None:
        return None
    name = decode_value(to_text(name)).strip()
    return name or None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    cid = decode_value(str(value)).strip().strip("<>").strip()
    return cid or None


def _defect_name(defect) -> str:
    return type(defect).__name__ if isinstance(defect, email.errors.MessageDefect) else str(defect)


class _Walker:
    def __init__(self, max_attachment_size: int):
        self.max_attachment_size = max_attachment_size
        self.text_parts: list[str] = []
        self.html_parts: list[str] = []
        self.attachments: list[dict] = []
        self.defects: list[str] = []
        self.leaves = 0
        self.reopened = 0  # multiparts continued after their close delimiter

    def defect(self, path: str, what: str) -> None:
        self.defects.append(f"{path}: {what}" if path else what)

    def walk(self, part: Message, path: str, depth: int) -> None:
        label = f"part {path}" if path else "message"
        for d in getattr(part, "defects", ()):
            self.defect(label, _defect_name(d))
        ctype = part.get_content_type()
        if not _CONTENT_TYPE.match(ctype):
            self.defect(label, f"invalid content type {to_text(ctype)!r}, taken as application/octet-stream")
            ctype = "application/octet-stream"
        maintype = ctype.partition("/")[0]
        payload = part.get_payload()
        if maintype == "multipart" and isinstance(payload, list):
            if depth >= MAX_DEPTH:
                self.defect(label, f"multipart nested deeper than {MAX_DEPTH} levels, skipped")
                return
            count = 0
            while payload is not None:
                for sub in payload:
                    count += 1
                    if isinstance(sub, Message):
                        self.walk(sub, f"{path}.{count}" if path else str(count), depth + 1)
                part = self._reopened(part, label)
                payload = part.get_payload() if part is not None else None
            return
        self.leaves += 1
        if self.leaves > MAX_PARTS:
            if self.leaves == MAX_PARTS + 1:
                self.defect("", f"more than {MAX_PARTS} parts, the rest skipped")
            return
        try:
            self.leaf(part, label, ctype, maintype)
        except Exception as exc:  # a part we cannot read must not sink the rest
            self.defect(label, f"unreadable part ({type(exc).__name__}: {exc})")

    def _reopened(self, multipart: Message, label: str) -> Message | None:
        """The parts that follow the multipart's close delimiter under the same boundary (a
        reused-boundary trick: the stdlib takes them for the epilogue, while mail clients show
        them), as a multipart of their own; None when there are none."""
        boundary, epilogue = multipart.get_boundary(), multipart.epilogue
        if not boundary or not epilogue or self.reopened > MAX_REOPENED:
            return None
        data = epilogue.encode("ascii", "surrogateescape")
        delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
        if re.search(rb"^" + re.escape(delimiter) + rb"[ \t]*\r?$", data, re.MULTILINE) is None:
            return None
        self.reopened += 1
        if self.reopened > MAX_REOPENED:
            self.defect(label, f"more than {MAX_REOPENED} multiparts continued after their close "
                               "delimiter, the rest skipped")
            return None
        self.defect(label, "parts after the close delimiter (boundary used again), read as further parts")
        try:
            following = _parse(b"Content-Type: multipart/mixed; boundary="
                               + email.utils.quote(boundary).join('""').encode("ascii", "surrogateescape")
                               + b"\n\n" + data)
        except Exception as exc:
            self.defect(label, f"parts after the close delimiter unreadable ({type(exc).__name__}: {exc})")
            return None
        for d in following.defects:
            self.defect(label, _defect_name(d))
        return following if isinstance(following.get_payload(), list) else None

    def leaf(self, part: Message, label: str, ctype: str, maintype: str) -> None:
        disposition = _disposition(part)
        filename = _filename(part)
        if maintype == "multipart":  # declared multipart, but its boundary never came
            self.defect(label, f"{ctype} without its boundary, body kept as text")
            ctype = "text/plain"
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and filename is None:
            data = self._decoded(part, label)
            text, problem = decode_text(data, _param(part, "charset"))
            if problem:
                self.defect(label, problem)
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            (self.text_parts if ctype == "text/plain" else self.html_parts).append(text)
            return
        data = self._decoded(part, label)  # message/*: the enclosed bytes as they came (_Parser)
        cid = _content_id(part)
        if disposition == "inline" or (disposition is None and cid is not None):
            disp = "inline"
        else:
            disp = "attachment"
        charset = _param(part, "charset") if maintype == "text" else None
        if charset and _CHARSET.match(charset):  # a text attachment's bytes are read by it
            ctype = f"{ctype}; charset={charset.lower()}"
        att = {
            "filename": filename, "content_type": ctype, "size": len(data),
            "content_id": cid, "disposition": disp,
        }
        if len(data) > self.max_attachment_size:
            att.update(content=None, omitted=True,
                       omitted_reason=f"size {len(data)} bytes exceeds max_attachment_size {self.max_attachment_size}")
        else:
            att["content"] = base64.b64encode(data).decode("ascii")
        self.attachments.append(att)

    def _decoded(self, part: Message, label: str) -> bytes:
        """The part's payload with its transfer encoding undone; defects that decoding
        registered (bad base64 and the like) are reported."""
        seen = len(part.defects)
        data = part.get_payload(decode=True)
        new = part.defects[seen:]
        for d in new:
            self.defect(label, _defect_name(d))
        if any(isinstance(d, email.errors.InvalidBase64LengthDefect) for d in new):
            # the stdlib then hands back the undecoded text; decode what can be decoded instead
            data = _lenient_b64(part.get_payload(decode=False))
        return data if isinstance(data, bytes) else b""


def _lenient_b64(payload) -> bytes:
    """Best-effort base64: stray characters dropped, a dangling last character ignored."""
    if isinstance(payload, str):
        payload = payload.encode("ascii", "surrogateescape")
    if not isinstance(payload, bytes):
        return b""
    clean = _NOT_B64.sub(b"", payload.split(b"=", 1)[0])
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return b""


# ---------------------------------------------------------------------------------------------

def _empty(raw: bytes) -> dict:
    return {
        "headers": [], "from": [], "to": [], "cc": [], "reply_to": [],
        "subject": None, "message_id": None, "date": None, "date_iso": None,
        "in_reply_to": None, "references": [],
        "text": "", "html": "", "text_parts": [], "html_parts": [],
        "attachments": [], "size": len(raw), "defects": [],
    }


class _Parser(BytesFeedParser):
    """The stdlib parser, but it keeps two kinds of part unparsed, their content one string of
    the bytes as they came: `message/*` parts (an enclosed message is passed on byte for byte,
    so its DKIM signature still verifies; the stdlib would re-serialise it from its parse) and
    multiparts nested deeper than the walker looks (MAX_DEPTH: the stdlib recurses once per
    level and, near a thousand levels, raises RecursionError, which would cost the whole
    message its text and attachments)."""

    _HIDDEN = "application/x-mxhook-unparsed"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.hidden: list[tuple[Message, str | None]] = []  # (part, its real Content-Type)

    def _parse_headers(self, lines):
        super()._parse_headers(lines)
        cur = self._cur
        for name in _PARAMETER_FIELDS:
            value = cur.get(name)
            if isinstance(value, str) and (len(value) > MAX_PARAMETER_FIELD
                                           or value.count(";") > MAX_PARAMETER_SEMICOLONS):
                # the stdlib's parameter parsing costs the field's length times its `;`s
                cut = value[:MAX_PARAMETER_FIELD].split(";")[:MAX_PARAMETER_SEMICOLONS + 1]
                cur.replace_header(name, ";".join(cut))
                cur.defects.append(f"{name} longer than {MAX_PARAMETER_FIELD} characters or with more "
                                   f"than {MAX_PARAMETER_SEMICOLONS} ';', the rest ignored")
        maintype = cur.get_content_maintype()  # a multipart/digest part without one: message
        if maintype == "message" or (maintype == "multipart" and len(self._msgstack) > MAX_DEPTH + 1):
            self.hidden.append((cur, cur["Content-Type"]))
            del cur["Content-Type"]
            cur["Content-Type"] = self._HIDDEN  # the parser does not go in

    def close(self) -> Message:
        msg = super().close()
        for part, content_type in self.hidden:
            del part["Content-Type"]
            if content_type is not None:
                part["Content-Type"] = content_type
        return msg


def _parse(raw: bytes) -> Message:
    parser = _Parser(policy=_POLICY)
    parser.feed(raw)
    return parser.close()


def _as_postfix_splits(raw: bytes) -> bytes:
    """`raw` with its header section rewritten as Postfix reads it (see header_section) and an
    empty line after it, so the MIME parser finds the same top-level fields and the same body
    as the milter's decision saw: no header section when the first line starts with white
    space, the body from the first line that is not a field, "Name : value" read as a field."""
    fields, body_start, _ = header_section(raw)
    linesep = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    # a bare CR is no line end to Postfix, but is one to the stdlib parser
    block = b"".join(name.encode("ascii") + b":" + value.replace(b"\r", b" ").replace(b"\n", linesep) + linesep
                     for name, value in fields)
    return block + linesep + raw[body_start:]


def normalize(raw: bytes, *, max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE) -> dict:
    """Raw message bytes → normalized dict (see docs/payloads.md, "message"). Never raises."""
    if isinstance(raw, str):  # be lenient with callers
        raw = raw.encode("utf-8", "surrogateescape")
    result = _empty(raw)
    defects: list[str] = result["defects"]
    try:
        _headers_into(raw, result)
    except Exception as exc:  # pragma: no cover - split_headers is written not to raise
        defects.append(f"headers unreadable ({type(exc).__name__}: {exc})")
    walker = _Walker(max_attachment_size)
    try:
        msg = _parse(_as_postfix_splits(raw))
        walker.walk(msg, "", 0)
    except RecursionError:
        walker.defect("", "MIME structure nested too deeply to parse")
    except Exception as exc:
        walker.defect("", f"MIME structure unreadable ({type(exc).__name__}: {exc})")
    defects.extend(walker.defects)
    result["text_parts"] = walker.text_parts
    result["html_parts"] = walker.html_parts
    result["text"] = "\n".join(walker.text_parts)
    result["html"] = "\n".join(walker.html_parts)
    result["attachments"] = walker.attachments
    return _scrub(result)


def _scrub(obj):
    """Lone surrogates (from surrogate-escaped input, or a UTF-7 body) cannot be encoded as
    UTF-8 JSON: replace them with U+FFFD, everywhere."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(obj, list):
        return [_scrub(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    return obj


def _headers_into(raw: bytes, result: dict) -> None:
    fields, defects = split_headers(raw)
    result["defects"].extend(defects)
    result["headers"] = [{"name": n, "value": decode_field(n, v)} for n, v in fields]
    by_name: dict[str, list[bytes]] = {}
    for name, value in fields:
        by_name.setdefault(name.lower(), []).append(value)

    def first(name: str) -> str | None:
        values = by_name.get(name)
        return decode_value(values[0]) if values else None

    result["from"] = _addresses(by_name.get("from", []))
    result["to"] = _addresses(by_name.get("to", []))
    result["cc"] = _addresses(by_name.get("cc", []))
    result["reply_to"] = _addresses(by_name.get("reply-to", []))
    result["subject"] = first("subject")
    result["message_id"] = first("message-id")
    result["date"] = first("date")
    result["date_iso"] = _date_iso(result["date"])
    if result["date"] and result["date_iso"] is None:
        result["defects"].append(f"unparsable Date: {result['date']!r}")
    result["in_reply_to"] = first("in-reply-to")
    refs = " ".join(decode_value(v) for v in by_name.get("references", []))
    result["references"] = _MSG_ID.findall(refs) or ([refs.strip()] if refs.strip() else [])
