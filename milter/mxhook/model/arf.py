"""Spam complaint reports (ARF, RFC 5965) and mailto: unsubscribe requests: parsing and what
they say about mail we sent. Pure: the tracking keys are handed in.

An ARF report is `multipart/report; report-type=feedback-report` with a human-readable part,
the machine-readable `message/feedback-report` part (Feedback-Type, User-Agent, Version,
Original-Mail-From, Original-Rcpt-To, Arrival-Date, Source-IP, Reported-Domain, ...) and the
original message (`message/rfc822`) or its header section (`text/rfc822-headers`). Microsoft's
JMRP and Yahoo's, AOL's and other mailbox providers' feedback loops send this shape, but
usually redact the recipient: no Original-Rcpt-To, the original's To replaced by a
placeholder. The `X-Mxhook-Ref` header the milter adds to every tracked message (a signed
REFERENCE token naming queue id, recipient and sending domain) survives redaction and says whom
the complaint is about.

Whom a report may suppress (`complaint`): anyone can mail the feedback address, with any
content, so an unsigned claim never names the address to suppress by itself:
  - a valid reference token with a recipient: that recipient, for the token's sending domain;
  - otherwise (no token, a forged or foreign one, or a token of a message with several
    recipients): the report's Original-Rcpt-To (else the original's To) is only a claim. It
    counts when the spooler finds a `queued` event for that recipient with the original's
    Message-ID in state.db (as for delivery-status reports), and is ignored otherwise.
"""
from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message

from mxhook.model import tracktokens
from mxhook.model.headers import address_domain, decode_value, first_address, normalize_address

REF_HEADER = "X-Mxhook-Ref"
# RFC 5965 section 7.3 registry, and what providers send besides; anything else becomes `other`
FEEDBACK_TYPES = ("abuse", "fraud", "virus", "other", "not-spam", "auth-failure")
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global",
                   "message/global-headers")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


class NotAReport(ValueError):
    """Mail that is not a feedback report (or an unsubscribe request); the message says why."""


@dataclass
class Report:
    """What a feedback report says. Addresses normalized; absent fields None / empty."""

    feedback_type: str
    user_agent: str | None = None
    version: str | None = None
    original_mail_from: str | None = None
    original_rcpt_to: list[str] = field(default_factory=list)
    arrival_date: str | None = None
    source_ip: str | None = None
    reported_domain: list[str] = field(default_factory=list)
    reporting_mta: str | None = None
    # from the attached original (or its headers)
    reference: str | None = None  # X-Mxhook-Ref as found, unverified
    message_id: str | None = None
    to: str | None = None  # the original's first To address ("" when redacted beyond reading)
    subject: str | None = None


@dataclass(frozen=True)
class Claim:
    """Whom a report or an unsubscribe request is about. `verified`: a valid token names the
    recipient; otherwise the recipient is only claimed and the spooler checks it against the
    mail we sent (`message_id`)."""

    recipient: str  # "" when nobody is named at all
    sending_domain: str  # "" when unknown (the spooler takes the sender's domain)
    queue_id: str | None
    verified: bool
    message_id: str | None = None
    why: str = ""  # how the recipient was found (inbound log)


def fields_of(text: str) -> dict[str, list[str]]:
    """RFC 5322-style fields (continuation lines unfolded), lower-case name -> values in order
    (ARF repeats Original-Rcpt-To and Reported-Domain). Stops at the first blank line after a
    field."""
    out: dict[str, list[str]] = {}
    last: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if out:
                break
            continue
        if line[:1] in (" ", "\t") and last is not None:
            out[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            last = None
            continue
        last = name.strip().lower()
        out.setdefault(last, []).append(value.strip())
    return out


def _plain(value: str | None) -> str | None:
    """An address field value ('<a@b>', 'rfc822; a@b') -> 'a@b' normalized, or None."""
    if not value:
        return None
    value = value.strip()
    if ";" in value and "@" not in value.partition(";")[0]:
        value = value.partition(";")[2]
    found = normalize_address(value.strip().strip("<>"))
    return found if "@" in found else None


def _report_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:  # compat32 may parse message/* parts into sub-messages
        inner = part.get_payload()
        if isinstance(inner, list):
            return "\n".join(f"{k}: {v}" for sub in inner for k, v in sub.items())
        return str(inner or "")
    return payload.decode("utf-8", "replace")


def _original_headers(part: Message) -> Message | None:
    inner = part.get_payload()
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        if cte not in ("base64", "quoted-printable"):
            return inner[0]
        # a message/rfc822 part must not be encoded (RFC 2046 5.2.1), but some reports are:
        # the parser took the encoded text for the message
        text = inner[0].as_string().encode("ascii", "replace")
        data = base64.b64decode(text) if cte == "base64" else quopri.decodestring(text)
        return email.message_from_bytes(data, policy=email.policy.compat32)
    data = part.get_payload(decode=True)
    if data is None and isinstance(inner, str):
        data = inner.encode("utf-8", "surrogateescape")
    if not data:
        return None
    return email.message_from_bytes(data, policy=email.policy.compat32)


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    text = decode_value(str(value)).strip()
    return text or None


def parse(raw: bytes) -> Report:
    """The Report of an ARF message; NotAReport saying why for anything else. Never raises
    another exception on malformed input."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        ctype = msg.get_content_type()
        if ctype != "multipart/report":
            raise NotAReport(f"not a feedback report: Content-Type is {ctype}, not multipart/report")
        report_type = (msg.get_param("report-type") or "")
        if str(report_type).strip().lower() != "feedback-report":
            raise NotAReport(f"not a feedback report: multipart/report of report-type "
                             f"{str(report_type) or '(none)'}, not feedback-report")
        feedback = original = None
        for part in msg.walk():
            ptype = part.get_content_type()
            if ptype == "message/feedback-report" and feedback is None:
                feedback = part
            elif ptype in _ORIGINAL_TYPES and original is None:
                original = part
        if feedback is None:
            raise NotAReport("malformed feedback report: no message/feedback-report part")
        fields = fields_of(_report_text(feedback))
        first = {k: v[0] for k, v in fields.items()}
        kind = (first.get("feedback-type") or "").strip().lower()
        if not kind:
            raise NotAReport("malformed feedback report: no Feedback-Type field")
        report = Report(
            feedback_type=kind if kind in FEEDBACK_TYPES else "other",
            user_agent=first.get("user-agent"), version=first.get("version"),
            original_mail_from=_plain(first.get("original-mail-from")),
            original_rcpt_to=[a for a in map(_plain, fields.get("original-rcpt-to", ())) if a],
            arrival_date=first.get("arrival-date") or first.get("received-date"),
            source_ip=first.get("source-ip"),
            reported_domain=[d.strip().lower() for d in fields.get("reported-domain", ()) if d.strip()],
            reporting_mta=first.get("reporting-mta"))
        headers = _original_headers(original) if original is not None else None
        if headers is not None:
            ref = _header(headers, REF_HEADER)
            found = _TOKEN.search(ref) if ref else None
            report.reference = found.group(0) if found else None
            report.message_id = _header(headers, "Message-ID")
            report.subject = _header(headers, "Subject")
            to = headers.get("To")
            report.to = first_address(str(to)) if to is not None else None
        return report
    except NotAReport:
        raise
    except Exception as exc:  # noqa: BLE001 - the email package on hostile input
        raise NotAReport(f"malformed feedback report: {type(exc).__name__}: {exc}") from None


def complaint(report: Report, keys: tuple[bytes, ...]) -> Claim:
    """Whom `report` is about (see the module's rule)."""
    track = tracktokens.verify(keys, report.reference, kind=tracktokens.REFERENCE) \
        if report.reference and keys else None
    claimed = next(iter(report.original_rcpt_to), None) or (report.to if report.to and "@" in report.to else None)
    if track is not None and track.recipient:
        return Claim(normalize_address(track.recipient), track.sending_domain, track.queue_id,
                     True, report.message_id, f"{REF_HEADER} names the recipient")
    if track is not None:
        why = f"{REF_HEADER} is valid but names no recipient (several); recipient claimed by the report"
        domain = track.sending_domain
    else:
        why = (f"{REF_HEADER} is not a valid reference token" if report.reference
               else f"no {REF_HEADER} in the attached original") + "; recipient claimed by the report"
        domain = address_domain(report.original_mail_from or "")
    return Claim(claimed or "", domain, track.queue_id if track else None, False,
                 report.message_id, why)


def unsubscribe_request(raw: bytes, keys: tuple[bytes, ...]) -> Claim:
    """The Claim of a mailto: unsubscribe (`mailto:<unsubscribe_address>?subject=unsubscribe
    <token>`): the subject's token (kind UNSUBSCRIBE) must be valid and name a recipient; the
    mail's sender need not be that recipient (forwarding, aliases). NotAReport otherwise."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        subject = _header(msg, "Subject") or ""
    except Exception as exc:  # noqa: BLE001
        raise NotAReport(f"malformed unsubscribe request: {type(exc).__name__}: {exc}") from None
    words = subject.split()
    # replies prefix the subject ("Re: unsubscribe <token>"): the word before the token counts
    at = next((i for i, w in enumerate(words) if w.lower() == "unsubscribe"), None)
    if at is None or at + 1 >= len(words):
        raise NotAReport("not an unsubscribe request: the subject is not 'unsubscribe <token>'")
    track = tracktokens.verify(keys, words[at + 1], kind=tracktokens.UNSUBSCRIBE) if keys else None
    if track is None:
        raise NotAReport("unsubscribe request with an invalid token (forged, of another install, "
                         "or signed with a key no longer listed)")
    if not track.recipient:
        raise NotAReport("unsubscribe token of a message with several recipients names nobody")
    return Claim(normalize_address(track.recipient), track.sending_domain, track.queue_id, True,
                 why="unsubscribe token in the subject")
