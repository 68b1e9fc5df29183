"""What the dialect conformance suite (test_dialect_conformance.py) reads bodies with: one
decoder per content type, strict the way a receiver's parser is, giving every value of a body as
a (path, value) leaf, and the messages and events its scenarios render.

A receiver reads a body by its Content-Type, and nothing else: application/json with a strict
JSON parser (no NaN), x-www-form-urlencoded with `parse_qsl(strict_parsing=True)` and strict
UTF-8, multipart/form-data and message/rfc822 with the stdlib email parser (no defects
allowed). Text leaves that hold JSON (a form field carrying an object) are read too, so a
recipient inside SendGrid's `envelope` field is found like one in a JSON array.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import HTTP, compat32
from urllib.parse import parse_qsl, quote

from mxhook.payloads.encodings import Rendered

Path = tuple  # keys and indexes from the top of the body


@dataclass
class Decoded:
    content_type: str
    leaves: list[tuple[Path, object]]  # every scalar value of the body, in order
    files: list[tuple[str, str | None, str, bytes]] = field(default_factory=list)  # form-data files
    raw: bytes | None = None  # message/rfc822: the message (headers included)

    def texts(self) -> list[str]:
        """Every text value, and the text values of JSON held in a text value."""
        out = []
        for _, value in self.leaves:
            if isinstance(value, str):
                out.append(value)
                out += _json_texts(value)
        return out

    def contains(self, needle: str) -> bool:
        return any(needle in text for text in self.texts())


def _strict_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _walk(value, path: Path = ()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, path + (i,))
    else:
        yield path, value


def _json_texts(text: str) -> list[str]:
    if not text[:1] in ("{", "["):
        return []
    try:
        value = json.loads(text, parse_constant=_strict_constant)
    except (ValueError, RecursionError):
        return []
    return [v for _, v in _walk(value) if isinstance(v, str)]


def _indexed(pairs) -> list[tuple[Path, object]]:
    """(name, value) pairs as leaves ((name, n-th of that name), value)."""
    seen: dict[str, int] = {}
    out = []
    for name, value in pairs:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(((name, n), value))
    return out


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def boundary(content_type: str) -> str | None:
    match = re.search(r';\s*boundary="?([^";]+)"?', content_type)
    return match.group(1) if match else None


def decode(rendered: Rendered) -> Decoded:
    """The body read by its content type, as a receiver reads it; AssertionError (or the
    parser's error) when it does not read."""
    ctype = rendered.content_type
    assert ctype and "\r" not in ctype and "\n" not in ctype, f"bad content type {ctype!r}"
    kind = media_type(ctype)
    assert isinstance(rendered.body, bytes)
    if kind == "application/json":
        doc = json.loads(rendered.body.decode("utf-8"), parse_constant=_strict_constant)
        return Decoded(ctype, list(_walk(doc)))
    if kind == "application/x-www-form-urlencoded":
        text = rendered.body.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          encoding="utf-8", errors="strict")
        return Decoded(ctype, _indexed(pairs))
    if kind == "multipart/form-data":
        return _form_data(rendered)
    if kind == "message/rfc822":
        msg = BytesParser(policy=compat32).parsebytes(rendered.body)
        assert not msg.defects, msg.defects
        leaves = _indexed((name, str(value)) for name, value in msg.items())
        return Decoded(ctype, leaves, raw=rendered.body)
    if kind == "text/plain":
        return Decoded(ctype, [((), rendered.body.decode("utf-8"))])
    raise AssertionError(f"no receiver reads {ctype!r}")


def _form_data(rendered: Rendered) -> Decoded:
    bnd = boundary(rendered.content_type)
    assert bnd, rendered.content_type
    head = f"Content-Type: {rendered.content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("ascii")
    msg = BytesParser(policy=HTTP).parsebytes(head + rendered.body)
    assert msg.is_multipart() and not msg.defects, msg.defects
    assert rendered.body.startswith(b"--" + bnd.encode("ascii") + b"\r\n")
    assert rendered.body.endswith(b"--" + bnd.encode("ascii") + b"--\r\n")
    fields, files = [], []
    for part in msg.iter_parts():
        assert not part.defects, part.defects
        assert part.get_content_disposition() == "form-data", part.get("Content-Disposition")
        name = part.get_param("name", header="content-disposition")
        assert name, part.get("Content-Disposition")
        data = part.get_payload(decode=True)
        filename = part.get_param("filename", header="content-disposition")
        if filename is None:
            fields.append((name, data.decode("utf-8")))
        else:
            files.append((name, filename, part.get_content_type(), data))
    # as many parts as boundaries: no value held a boundary line
    assert len(fields) + len(files) == rendered.body.count(b"--" + bnd.encode("ascii") + b"\r\n")
    return Decoded(rendered.content_type, _indexed(fields), files)


def without_boundary(rendered: Rendered) -> bytes:
    """The body with its form-data boundary (random per render in some encodings) written as
    one fixed text, so two renders compare by what they carry."""
    bnd = boundary(rendered.content_type)
    if not bnd or media_type(rendered.content_type) != "multipart/form-data":
        return rendered.body
    return rendered.body.replace(bnd.encode("ascii"), b"BOUNDARY")


def carries_bytes(decoded: Decoded, data: bytes) -> bool:
    """Whether attachment bytes `data` are in a body: as a file part, as base64 in a text
    value, or as a part of a message the body carries whole (message/rfc822, or a text value
    holding the message)."""
    if any(f[3] == data for f in decoded.files):
        return True
    b64 = base64.b64encode(data).decode("ascii")
    messages = [decoded.raw] if decoded.raw is not None else []
    for text in decoded.texts():
        if b64 in text:
            return True
        if b64[:76] in text:  # the first base64 line of a MIME part
            messages.append(text.encode("utf-8", "surrogateescape"))
    return any(part.get_payload(decode=True) == data for raw in messages
               for part in message_from_bytes(raw, policy=compat32).walk() if not part.is_multipart())


# ---------------------------------------------------------------------------------------------
# Messages the inbound scenarios render

def mime(subject: bytes = b"Conformance subject", *, to: bytes = b"in@ours.example",
         cc: bytes | None = None, body: bytes = b"Hello there.\r\n",
         body_headers: bytes = b"Content-Type: text/plain; charset=utf-8\r\n",
         attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """A message with `subject` as the Subject field's bytes (encoded words, 8-bit or plain)."""
    head = (b"From: \"Ann O'Neil\" <ann@sender.example>\r\nTo: " + to + b"\r\n"
            + (b"Cc: " + cc + b"\r\n" if cc else b"") + b"Subject: " + subject + b"\r\n"
            b"Message-ID: <conformance.1@sender.example>\r\n"
            b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n")
    if not attachments:
        return head + body_headers + b"\r\n" + body
    out = [head, b'Content-Type: multipart/mixed; boundary="conf-b1"\r\n\r\n',
           b"--conf-b1\r\n", body_headers, b"\r\n", body]
    for filename, data in attachments:
        b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
        if re.fullmatch(r"[\w.-]+", filename, re.ASCII):
            param = b'filename="' + filename.encode("ascii") + b'"'
        else:  # RFC 2231: any character, CR and LF included
            param = b"filename*=utf-8''" + quote(filename, safe="").encode("ascii")
        out += [b"--conf-b1\r\n", b"Content-Type: application/octet-stream\r\n",
                b"Content-Disposition: attachment; " + param + b"\r\n",
                b"Content-Transfer-Encoding: base64\r\n\r\n", b64]
    out.append(b"--conf-b1--\r\n")
    return b"".join(out)


def encoded_word(text: str) -> bytes:
    """`text` as RFC 2047 UTF-8 base64 encoded words (lone surrogates from surrogateescape as
    the bytes they stand for; others as their CESU-8 bytes: invalid UTF-8 either way)."""
    data = text.encode("utf-8", "surrogatepass" if _STRAY_SURROGATE.search(text) else "surrogateescape")
    chunks = [data[i:i + 45] for i in range(0, len(data), 45)] or [b""]
    return b"\r\n ".join(b"=?utf-8?b?" + base64.b64encode(c) + b"?=" for c in chunks)


def scrubbed(value: str) -> str:
    """`value` with lone surrogates as U+FFFD (a pair as the character it stands for)."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def recovered(decoded: Decoded, expected: str) -> bool:
    """Whether a text value of the body is `expected`, or `expected` with its surrogates
    replaced as documented where a body's encoding cannot carry them: U+FFFD for a lone one (a
    pair as the character it stands for, or each as U+FFFD), surrogateescape'd bytes kept or
    as U+FFFD."""
    wanted = {expected, scrubbed(expected), _SURROGATE.sub("\ufffd", expected),
              _STRAY_SURROGATE.sub("\ufffd", expected)}
    return any(text in wanted for text in decoded.texts())


_SURROGATE = re.compile("[\ud800-\udfff]")
_STRAY_SURROGATE = re.compile("[\ud800-\udc7f]")  # not from surrogateescape
