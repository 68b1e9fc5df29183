"""Inbound delivery request bodies: `json` (the native schema), `multipart` (form-data with the
attachments as files) and `raw` (the original MIME with the envelope in headers).

Pure: the spooler calls `render_inbound` per (message, rule) and posts `Rendered.body` with
`Rendered.content_type`. The field-by-field reference is docs/payloads.md.

The three inbound formats are structural (a JSON document, a form, a MIME message), so they are
built with `json.dumps` and byte-level code rather than text templates: a template cannot get
JSON string escaping or form-data quoting right for hostile input. Each format is one entry of
`FORMATS` (name -> renderer), which `render_inbound` dispatches on; event bodies are built the
same way in payloads/events.py.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass
from typing import Callable

from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE, normalize

SCHEMA_TYPE = "inbound"
# The message fields that go into payloads, in this order (normalize() also returns text_parts /
# html_parts, which would only double the size of the payload).
MESSAGE_FIELDS = (
    "headers", "from", "to", "cc", "reply_to", "subject", "message_id", "date", "date_iso",
    "in_reply_to", "references", "text", "html", "attachments", "size", "defects",
)
ENVELOPE_FIELDS = ("mail_from", "recipients", "client_addr", "client_name", "helo", "queue_id")
PAYLOAD_CAP_REASON = "payload size cap"
# C0 controls (CR, LF, NUL, ...), DEL, and what str.splitlines() also takes for a line end
_UNSAFE_HEADER_CHARS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str


def _recipients_from_meta(meta: dict, target: dict) -> list[str]:
    for d in meta.get("deliveries") or ():
        if (d.get("rule") or {}).get("name") == target.get("name"):
            return list(d.get("recipients") or ())
    return []


def native_document(*, delivery_id: str, meta: dict, raw: bytes, target: dict,
                    recipients: list[str], max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE) -> dict:
    """The native inbound document (before any payload size cap), as JSON-able data."""
    msg = normalize(raw, max_attachment_size=max_attachment_size)
    doc = {
        "id": delivery_id,
        "type": SCHEMA_TYPE,
        "received": meta.get("received"),
        "rule": target.get("name"),
        "envelope": {
            "mail_from": meta.get("mail_from"),
            "recipients": list(recipients),
            "client_addr": meta.get("client_addr"),
            "client_name": meta.get("client_name"),
            "helo": meta.get("helo"),
            "queue_id": meta.get("queue_id"),
        },
        "message": {k: msg[k] for k in MESSAGE_FIELDS},
    }
    if target.get("api_key"):
        doc["api_key"] = target["api_key"]
    return doc


def _omit(att: dict) -> None:
    att["content"] = None
    att["omitted"] = True
    att["omitted_reason"] = PAYLOAD_CAP_REASON


def _largest_first(attachments: list[dict]) -> list[dict]:
    with_content = [a for a in attachments if a.get("content")]
    return sorted(with_content, key=lambda a: len(a["content"]), reverse=True)  # stable


# ---------------------------------------------------------------------------------------------
# json

def _dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def render_json(doc: dict, max_payload_size: int) -> Rendered:
    """`doc` as UTF-8 JSON. Over max_payload_size, attachment contents are dropped largest
    first (marked omitted, reason "payload size cap") until it fits. Only attachments are
    dropped: a payload still over the cap without them is sent anyway, with a defect noted."""
    body = _dumps(doc)
    if len(body) > max_payload_size:
        total = len(body)
        for att in _largest_first(doc["message"]["attachments"]):
            if total <= max_payload_size:
                break
            before = len(_dumps(att))  # a nested dict serializes exactly as it does alone
            _omit(att)
            total -= before - len(_dumps(att))
        if total > max_payload_size:
            doc["message"]["defects"].append(
                f"payload exceeds max_payload_size {max_payload_size} even without attachment contents")
        body = _dumps(doc)
    return Rendered(body, "application/json")


# ---------------------------------------------------------------------------------------------
# multipart/form-data

def _quote_param(value: str) -> str:
    """A quoted form-data parameter value, escaped as browsers do (WHATWG HTML)."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def form_fields(doc: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str, str, bytes]]]:
    """(fields, files) of the multipart format: fields as (name, text); files as
    (field name, filename, content type, bytes). Attachment metadata gets `field`: the name of
    its file part, or null when its content was omitted."""
    msg = doc["message"]
    fields: list[tuple[str, str]] = []

    def add(name: str, value) -> None:
        if value is None:
            value = ""
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        fields.append((name, str(value)))

    for key in ("id", "type", "received", "rule"):
        add(key, doc.get(key))
    if "api_key" in doc:
        add("api_key", doc["api_key"])
    add("envelope", doc["envelope"])
    files = []
    meta = []
    for i, att in enumerate(msg["attachments"], 1):
        entry = {k: v for k, v in att.items() if k != "content"}
        if att.get("content") is not None:
            name = f"attachment-{i}"
            entry["field"] = name
            filename = att.get("filename") or name
            files.append((name, filename, att["content_type"], base64.b64decode(att["content"])))
        else:
            entry["field"] = None
        meta.append(entry)
    for key in MESSAGE_FIELDS:
        add(key, meta if key == "attachments" else msg[key])
    add("attachment-count", len(meta))
    return fields, files


def _multipart_body(fields, files, boundary: str) -> bytes:
    out = []
    b = boundary.encode("ascii")
    for name, value in fields:
        out += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode("ascii"),
                b'"\r\n\r\n', value.encode("utf-8"), b"\r\n"]
    for name, filename, ctype, data in files:
        out += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode("ascii"),
                b'"; filename="', _quote_param(filename).encode("utf-8"), b'"\r\nContent-Type: ',
                ctype.encode("ascii"), b"\r\n\r\n", data, b"\r\n"]
    out += [b"--", b, b"--\r\n"]
    return b"".join(out)


def _new_boundary(fields, files) -> str:
    while True:
        boundary = "mxhook-" + secrets.token_hex(16)
        b = boundary.encode("ascii")
        if not any(b in v.encode("utf-8") for _, v in fields) and not any(b in f[3] for f in files):
            return boundary


def render_multipart(doc: dict, max_payload_size: int, *, boundary: str | None = None) -> Rendered:
    """multipart/form-data; over max_payload_size, file parts are dropped largest first (their
    metadata marked omitted, reason "payload size cap") until it fits."""
    attachments = doc["message"]["attachments"]
    while True:
        fields, files = form_fields(doc)
        bnd = boundary or _new_boundary(fields, files)
        body = _multipart_body(fields, files, bnd)
        excess = len(body) - max_payload_size
        candidates = _largest_first(attachments)
        if excess <= 0 or not candidates:
            break
        for att in candidates:  # drop enough for this round, then measure again
            excess -= len(att["content"]) * 3 // 4
            _omit(att)
            if excess <= 0:
                break
    if len(body) > max_payload_size:
        doc["message"]["defects"].append(
            f"payload exceeds max_payload_size {max_payload_size} even without attachment contents")
        fields, files = form_fields(doc)
        body = _multipart_body(fields, files, bnd)
    return Rendered(body, f"multipart/form-data; boundary={bnd}")


# ---------------------------------------------------------------------------------------------
# raw

def header_safe(value) -> str:
    """A header value that cannot start a new header line: control characters (CR, LF, NUL,
    ...) and Unicode line separators removed."""
    return _UNSAFE_HEADER_CHARS.sub("", "" if value is None else str(value)).strip()


def envelope_headers(*, delivery_id: str, meta: dict, target: dict, recipients: list[str]) -> list[tuple[str, str]]:
    mail_from = header_safe(meta.get("mail_from"))
    headers = [("X-Mxhook-Mail-From", mail_from or "<>")]
    headers += [("X-Mxhook-Rcpt-To", header_safe(r)) for r in recipients]
    headers += [
        ("X-Mxhook-Client-Addr", header_safe(meta.get("client_addr"))),
        ("X-Mxhook-Client-Name", header_safe(meta.get("client_name"))),
        ("X-Mxhook-Helo", header_safe(meta.get("helo"))),
        ("X-Mxhook-Queue-Id", header_safe(meta.get("queue_id"))),
        ("X-Mxhook-Received", header_safe(meta.get("received"))),
        ("X-Mxhook-Rule", header_safe(target.get("name"))),
        ("X-Mxhook-Delivery-Id", header_safe(delivery_id)),
    ]
    if target.get("api_key"):
        headers.append(("X-Mxhook-Api-Key", header_safe(target["api_key"])))
    return headers


def render_raw(raw: bytes, headers: list[tuple[str, str]]) -> Rendered:
    first_line_end = raw.find(b"\n")
    eol = b"\n" if first_line_end > 0 and raw[first_line_end - 1:first_line_end] != b"\r" else b"\r\n"
    prefix = b"".join(f"{name}: {value}".encode("utf-8") + eol for name, value in headers)
    return Rendered(prefix + raw, "message/rfc822")


# ---------------------------------------------------------------------------------------------

def _json_format(**kw) -> Rendered:
    return render_json(native_document(**_doc_args(kw)), kw["max_payload_size"])


def _multipart_format(**kw) -> Rendered:
    return render_multipart(native_document(**_doc_args(kw)), kw["max_payload_size"])


def _raw_format(**kw) -> Rendered:
    headers = envelope_headers(delivery_id=kw["delivery_id"], meta=kw["meta"], target=kw["target"],
                               recipients=kw["recipients"])
    return render_raw(kw["raw"], headers)


def _doc_args(kw: dict) -> dict:
    return {k: kw[k] for k in ("delivery_id", "meta", "raw", "target", "recipients", "max_attachment_size")}


FORMATS: dict[str, Callable[..., Rendered]] = {
    "json": _json_format,
    "multipart": _multipart_format,
    "raw": _raw_format,
}


def render_inbound(fmt: str, *, delivery_id: str, meta: dict, raw: bytes, target: dict,
                   recipients: list[str] | None = None,
                   max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                   max_payload_size: int = 25 * 1024 * 1024) -> Rendered:
    """The request body for one inbound delivery (one message, one rule).

    `meta` is the spool record's inbound metadata, `target` the delivery's rule dict
    (`Target.to_record()`), `recipients` the envelope recipients this rule matched
    (default: taken from meta["deliveries"] by the rule's name). Raises ValueError only for an
    unknown format; bad message content never raises (see model.message.normalize)."""
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown payload format {fmt!r} (known: {', '.join(FORMATS)})") from None
    if recipients is None:
        recipients = _recipients_from_meta(meta, target)
    return renderer(delivery_id=delivery_id, meta=meta, raw=raw, target=target,
                    recipients=list(recipients), max_attachment_size=max_attachment_size,
                    max_payload_size=max_payload_size)
