"""Encodings: a payload document -> request body bytes and content type. Pure.

- `json`: compact UTF-8 JSON of a document (top-level `JSONText` values spliced in as they are).
- `form_urlencoded`: the top-level fields of a document as x-www-form-urlencoded fields (lists and
  objects as their JSON text, nulls left out).
- `multipart`: multipart/form-data from (fields, files).
- `raw_message`: a MIME message with header fields prepended.
- `json_capped` / `multipart_capped`: under a payload size cap by omitting a document's
  attachment contents, largest first.

Bodies are built with `json.dumps` and byte-level code rather than text templates: a template
cannot get JSON string escaping or form-data quoting right for hostile input.
"""
from __future__ import annotations

import hashlib
import json as _json
import secrets
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

PAYLOAD_CAP_REASON = "payload size cap"

Fields = list[tuple[str, str]]  # (name, text)
Files = list[tuple[str, str, str, bytes]]  # (field name, filename, content type, bytes)


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str


class JSONText(str):
    """A value already encoded as JSON text, spliced into a body as it is (a batch's events
    array joined from texts made once per event)."""

    __slots__ = ()


_ENCODER = _json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one a call


def dumps(obj) -> str:
    """Compact JSON text, non-ASCII as itself."""
    return _ENCODER.encode(obj)


def utf8(text: str) -> bytes:
    """`text` as UTF-8; a lone surrogate (no UTF-8 form: a spool record's JSON may carry
    "\\ud800", a surrogate-escaped byte is one) as U+FFFD, a surrogate pair as the character it
    stands for. Every body's text goes through here, never a strict `.encode`."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# json and x-www-form-urlencoded

def json(doc: dict) -> Rendered:
    """`doc` (a dict with str keys) as UTF-8 JSON; byte for byte json.dumps of it, with each
    JSONText value written as the JSON it holds."""
    if not any(type(v) is JSONText for v in doc.values()):
        return Rendered(utf8(dumps(doc)), "application/json")
    items = ",".join(f"{dumps(k)}:{v if type(v) is JSONText else dumps(v)}" for k, v in doc.items())
    return Rendered(utf8("{" + items + "}"), "application/json")


def form_urlencoded(doc: dict) -> Rendered:
    """The top-level fields of `doc`: scalars as text, lists and objects as JSON text (one JSON
    decode on the receiving side gives them back), nulls left out."""
    fields = []
    for key, value in doc.items():
        if isinstance(value, JSONText):
            fields.append((key, value))
        elif isinstance(value, (dict, list)):
            fields.append((key, dumps(value)))
        elif value is not None:
            fields.append((key, str(value)))
    try:
        text = urlencode(fields)
    except UnicodeEncodeError:  # a lone surrogate: percent-encode the bytes utf8() gives it
        text = urlencode([(utf8(k), utf8(v)) for k, v in fields])
    return Rendered(text.encode("ascii"), "application/x-www-form-urlencoded")


# ---------------------------------------------------------------------------------------------
# multipart/form-data

def quote_param(value: str) -> str:
    """A quoted form-data parameter value: `"`, CR and LF as %22, %0D, %0A, as browsers send
    them (WHATWG HTML), and a backslash as %5C, so that a reader of RFC 2045 quoted strings (the
    stdlib email parser, Werkzeug, Django, busboy), which takes a backslash as an escape, reads
    the same text as a WHATWG reader, which does not."""
    return (value.replace("\\", "%5C").replace('"', "%22").replace("\r", "%0D")
            .replace("\n", "%0A"))


def _multipart_body(fields: Fields, files: Files, boundary: str) -> bytes:
    out = []
    b = boundary.encode("ascii")
    for name, value in fields:
        out += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode("ascii"),
                b'"\r\n\r\n', value.encode("utf-8"), b"\r\n"]
    for name, filename, ctype, data in files:
        out += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode("ascii"),
                b'"; filename="', quote_param(filename).encode("utf-8"), b'"\r\nContent-Type: ',
                ctype.encode("ascii"), b"\r\n\r\n", data, b"\r\n"]
    out += [b"--", b, b"--\r\n"]
    return b"".join(out)


def _new_boundary(fields: Fields, files: Files) -> str:
    while True:
        boundary = "mxhook-" + secrets.token_hex(16)
        b = boundary.encode("ascii")
        if not any(b in v.encode("utf-8") for _, v in fields) and not any(b in f[3] for f in files):
            return boundary


def seeded_boundary(seed: str, fields: Fields, files: Files) -> str:
    """A boundary made from `seed` (a delivery id: the same body on every retry) that occurs in
    none of the parts."""
    for n in range(1000):
        candidate = "mxhook-" + hashlib.blake2b(f"{seed}\x1f{n}".encode("utf-8", "replace"),
                                                digest_size=16).hexdigest()
        b = candidate.encode("ascii")
        if not any(b in v.encode("utf-8") for _, v in fields) and not any(b in f[3] for f in files):
            return candidate
    raise AssertionError("no free boundary in 1000 tries")  # a 128-bit hash in every part: never


def multipart(fields: Fields, files: Files, *, boundary: str | None = None) -> Rendered:
    """multipart/form-data: the fields, then the files; a fresh boundary found in none of them
    unless one is given."""
    bnd = boundary or _new_boundary(fields, files)
    return Rendered(_multipart_body(fields, files, bnd), f"multipart/form-data; boundary={bnd}")


# ---------------------------------------------------------------------------------------------
# raw MIME

def raw_message(headers: list[tuple[str, str]], message: bytes) -> Rendered:
    """`message` with `headers` prepended, in the message's own line ends (LF if its first line
    ends in a bare LF, else CRLF). Header values must be safe already (one line each)."""
    first_line_end = message.find(b"\n")
    eol = b"\n" if first_line_end > 0 and message[first_line_end - 1:first_line_end] != b"\r" else b"\r\n"
    prefix = b"".join(f"{name}: {value}".encode("utf-8") + eol for name, value in headers)
    return Rendered(prefix + message, "message/rfc822")


# ---------------------------------------------------------------------------------------------
# Size caps: a document's `attachments` (dicts with base64 `content`) lose their content, largest
# first, until the body fits; what is still over the cap without them goes with a note in
# `defects`.

# called on each entry the cap omits, after it is marked (e.g. to give it a fetch URL)
OnOmit = Callable[[dict], None]


def _omit(att: dict, on_omit: OnOmit | None) -> None:
    att["content"] = None
    att["omitted"] = True
    att["omitted_reason"] = PAYLOAD_CAP_REASON
    if on_omit is not None:
        on_omit(att)


def _largest_first(attachments: list[dict]) -> list[dict]:
    with_content = [a for a in attachments if a.get("content")]
    return sorted(with_content, key=lambda a: len(a["content"]), reverse=True)  # stable


def _utf8(obj) -> bytes:
    return utf8(dumps(obj))


def _over_cap(max_size: int) -> str:
    return f"payload exceeds max_payload_size {max_size} even without attachment contents"


def json_capped(doc: dict, max_size: int, *, attachments: list[dict], defects: list[str],
                on_omit: OnOmit | None = None) -> Rendered:
    """`json(doc)`, shrunk under max_size by omitting attachment contents (they are marked
    omitted, reason "payload size cap", then given to `on_omit`). Only attachments are
    dropped."""
    body = _utf8(doc)
    if len(body) > max_size:
        total = len(body)
        for att in _largest_first(attachments):
            if total <= max_size:
                break
            before = len(_utf8(att))  # a nested dict serializes exactly as it does alone
            _omit(att, on_omit)
            total -= before - len(_utf8(att))
        if total > max_size:
            defects.append(_over_cap(max_size))
        body = _utf8(doc)
    return Rendered(body, "application/json")


def multipart_capped(doc: dict, max_size: int, *, parts: Callable[[dict], tuple[Fields, Files]],
                     attachments: list[dict], defects: list[str],
                     boundary: str | None = None, seed: str | None = None,
                     on_omit: OnOmit | None = None) -> Rendered:
    """`multipart(*parts(doc))`, shrunk under max_size by omitting attachment contents (their
    file parts go; their metadata is marked omitted, reason "payload size cap", and given to
    `on_omit`). The boundary:
    `boundary`, else one made from `seed` (`seeded_boundary`: the same bytes on every retry),
    else a random one."""
    while True:
        fields, files = parts(doc)
        bnd = boundary or (seeded_boundary(seed, fields, files) if seed is not None
                           else _new_boundary(fields, files))
        body = _multipart_body(fields, files, bnd)
        excess = len(body) - max_size
        candidates = _largest_first(attachments)
        if excess <= 0 or not candidates:
            break
        for att in candidates:  # drop enough for this round, then measure again
            excess -= len(att["content"]) * 3 // 4
            _omit(att, on_omit)
            if excess <= 0:
                break
    if len(body) > max_size:
        defects.append(_over_cap(max_size))
        fields, files = parts(doc)
        body = _multipart_body(fields, files, bnd)
    return Rendered(body, f"multipart/form-data; boundary={bnd}")

