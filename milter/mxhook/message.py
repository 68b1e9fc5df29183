"""A raw RFC 5322 message → a JSON-able dict (headers in order, addresses, bodies, attachments).

Pure and fuzz-safe: `normalize` never raises on bad input. What it had to guess or skip is
written to the result's `defects` list instead. The top-level header list is read from the raw
bytes directly (so 8-bit and malformed headers keep their order and content); the MIME structure
comes from the stdlib parser with the `compat32` policy, the most forgiving one (the modern
policy raises on some broken headers when they are accessed).

Body text is decoded from the part's declared charset; when that is missing, unknown or wrong,
UTF-8 is tried and then Windows-1252/Latin-1, which map every byte. ISO-8859-1 and US-ASCII
labels are read as Windows-1252, as browsers do (WHATWG Encoding), because that is what the
senders meant. Line ends in decoded text are LF.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.utils
import io
import quopri
import re
from datetime import timezone
from email.generator import BytesGenerator
from email.message import Message
from email.feedparser import BytesFeedParser
from email.policy import Compat32

from .headers import decode_field, decode_value, mailboxes, plain_address, to_text

DEFAULT_MAX_ATTACHMENT_SIZE = 10 * 1024 * 1024
MAX_PARTS = 1000  # leaf parts looked at; the rest is skipped with a defect
MAX_DEPTH = 50  # multipart nesting

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MSG_ID = re.compile(r"<[^<>\s]*>")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
# Python codecs that are text encodings but no mail charsets (or transform text in surprising ways).
_NOT_CHARSETS = {"raw-unicode-escape", "unicode-escape", "undefined", "idna", "punycode", "mbcs", "oem"}
_WHATWG_1252 = {"ascii", "iso8859-1", "cp1252"}  # read as windows-1252 (python codec names)
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030"}  # decode with the superset, as browsers do
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

def _codec(label: str | None) -> str | None:
    """The Python codec name for a MIME charset label, or None when there is none usable."""
    if not label:
        return None
    try:
        info = codecs.lookup(label.strip().strip('"').strip())
    except Exception:  # LookupError, or worse for labels with NULs or surrogates
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return _SUPERSETS.get(info.name, info.name)


def _cp1252(data: bytes) -> str:
    """Windows-1252, total: every byte maps to a character."""
    return data.decode("latin-1").translate(_CP1252_FROM_LATIN1)


def decode_text(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """(text, problem or None) for body bytes with a declared charset label (may be None)."""
    codec = _codec(charset)
    if charset and codec is None:
        problem = f"unknown charset {charset!r}"
        try:
            return data.decode("utf-8"), problem + ", decoded as utf-8"
        except UnicodeDecodeError:
            return _cp1252(data), problem + ", decoded as windows-1252"
    if codec is None or codec in _WHATWG_1252:
        try:
            return data.decode("ascii"), None
        except UnicodeDecodeError:
            pass
        if codec is not None and codec != "ascii":  # declared latin-1 / windows-1252
            return _cp1252(data), None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return _cp1252(data), f"8-bit text declared as {charset or 'us-ascii (default)'}, decoded as windows-1252"
        return text, f"8-bit text declared as {charset or 'us-ascii (default)'}, decoded as utf-8"
    try:
        return data.decode(codec), None
    except (UnicodeDecodeError, UnicodeError, ValueError, LookupError):
        pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8"), f"text is not valid {charset}, decoded as utf-8"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode(codec, "replace"), f"text is not valid {charset}, undecodable bytes replaced"
    except Exception:
        return _cp1252(data), f"text is not valid {charset}, decoded as windows-1252"


# ---------------------------------------------------------------------------------------------
# Headers

def split_headers(raw: bytes) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Top-level header fields as (name, raw value bytes) in order, unfolding left to
    decode_value. Lines that are not fields are skipped and reported."""
    match = _HEADER_END.search(raw)
    block = raw[:match.start()] if match else raw
    fields: list[tuple[str, bytes]] = []
    defects: list[str] = []
    lines = _LINE.split(block)
    if lines and lines[0].startswith(b"From "):  # mbox separator line
        lines = lines[1:]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b"\n" + line)
            elif line.strip():
                defects.append("continuation line before the first header field")
            continue
        m = _FIELD_NAME.match(line)
        if m is None:
            if line.strip():
                defects.append(f"not a header field: {to_text(line[:60])!r}")
            continue
        fields.append((m.group(1).decode("ascii"), line[m.end():]))
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


def _serialize(msg: Message, linesep: str) -> bytes:
    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, maxheaderlen=0, policy=_POLICY.clone(linesep=linesep)).flatten(msg)
    return buf.getvalue()


def _defect_name(defect) -> str:
    return type(defect).__name__ if isinstance(defect, email.errors.MessageDefect) else str(defect)


class _Walker:
    def __init__(self, max_attachment_size: int, linesep: str):
        self.max_attachment_size = max_attachment_size
        self.linesep = linesep
        self.text_parts: list[str] = []
        self.html_parts: list[str] = []
        self.attachments: list[dict] = []
        self.defects: list[str] = []
        self.leaves = 0

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
            for i, sub in enumerate(payload, 1):
                if isinstance(sub, Message):
                    self.walk(sub, f"{path}.{i}" if path else str(i), depth + 1)
            return
        self.leaves += 1
        if self.leaves > MAX_PARTS:
            if self.leaves == MAX_PARTS + 1:
                self.defect("", f"more than {MAX_PARTS} parts, the rest skipped")
            return
        try:
            self.leaf(part, label, ctype, maintype, payload)
        except Exception as exc:  # a part we cannot read must not sink the rest
            self.defect(label, f"unreadable part ({type(exc).__name__}: {exc})")

    def leaf(self, part: Message, label: str, ctype: str, maintype: str, payload) -> None:
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
        if maintype == "message" and isinstance(payload, list):
            data = b"".join(_serialize(m, self.linesep) for m in payload if isinstance(m, Message))
            cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
            if cte in ("base64", "quoted-printable"):  # not allowed for message/*, but seen
                data = _undo_cte(data.strip(), cte)
        else:
            data = self._decoded(part, label)
        cid = _content_id(part)
        if disposition == "inline" or (disposition is None and cid is not None):
            disp = "inline"
        else:
            disp = "attachment"
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


def _undo_cte(data: bytes, cte: str) -> bytes:
    try:
        if cte == "base64":
            return _lenient_b64(data)
        return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        return data


# ---------------------------------------------------------------------------------------------

def _empty(raw: bytes) -> dict:
    return {
        "headers": [], "from": [], "to": [], "cc": [], "reply_to": [],
        "subject": None, "message_id": None, "date": None, "date_iso": None,
        "in_reply_to": None, "references": [],
        "text": "", "html": "", "text_parts": [], "html_parts": [],
        "attachments": [], "size": len(raw), "defects": [],
    }


class _DepthBoundParser(BytesFeedParser):
    """The stdlib parser, but it does not descend into parts nested deeper than the walker
    looks (MAX_DEPTH): it recurses once per level and, near a thousand levels, raises
    RecursionError, which used to cost the whole message its text and attachments. A part
    that deep keeps its content unparsed, as one string (the generator writes it back as it
    came, should an enclosing message/rfc822 attachment be flattened)."""

    _HIDDEN = "application/x-mxhook-nested-too-deep"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.cut: list[tuple[Message, str]] = []  # (part, its real Content-Type)

    def _parse_headers(self, lines):
        super()._parse_headers(lines)
        cur = self._cur
        if len(self._msgstack) > MAX_DEPTH + 1 and cur.get_content_maintype() in ("multipart", "message"):
            # (None: no header, a multipart/digest part is message/rfc822 by default)
            self.cut.append((cur, cur["Content-Type"]))
            del cur["Content-Type"]
            cur["Content-Type"] = self._HIDDEN  # the parser does not go in

    def close(self) -> Message:
        msg = super().close()
        for part, content_type in self.cut:
            del part["Content-Type"]
            if content_type is not None:
                part["Content-Type"] = content_type
        return msg


def _parse(raw: bytes) -> Message:
    parser = _DepthBoundParser(policy=_POLICY)
    parser.feed(raw)
    return parser.close()


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
    linesep = "\r\n" if b"\r\n" in raw[:4096] else "\n"
    walker = _Walker(max_attachment_size, linesep)
    try:
        msg = _parse(raw)
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
