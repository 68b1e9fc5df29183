"""DSN classification and asynchronous bounce (delivery-status report) parsing. Pure.

Hard or soft? A hard bounce puts the address on the block list, so here "hard" means one thing
only: *this address does not exist or is not valid* (asking again will fail again). Everything
else that is permanent for this message but says nothing bad about the address — mailbox full,
message too large, blocked as spam, policy, sender problems, remote system trouble — is "soft".
docs/events.md has the table; in short, for a permanent (5.x.x) failure:

* hard by code: 5.1.0 5.1.1 5.1.2 5.1.3 5.1.4 5.1.6 5.1.10 (bad address / domain / syntax /
  mailbox moved / null MX), 5.2.1 (mailbox disabled), 5.4.4 (domain does not resolve).
* soft by code: 5.1.7 5.1.8 (the *sender's* address), 5.2.2 (mailbox full), 5.2.3 (message too
  long), 5.2.4 (list expansion), 5.3.x (remote system, 5.3.4 too big), 5.4.6 (loop), 5.4.7
  (expired), 5.6.x (content).
* 5.7.x (security / policy, e.g. spam blocks): soft, unless the reply text says the address does
  not exist ("user unknown", "no such user", ...) and has no spam/policy/quota hint.
* every other 5.x.x (5.0.0 from a bare 550, 5.2.0, 5.4.x such as Microsoft's
  "550 5.4.1 Recipient address rejected", 5.5.x): hard, unless the reply text carries a
  quota/size/spam/policy hint.

Temporary (4.x.x) failures are always soft.
"""
from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from typing import NamedTuple

_DSN_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
# An enhanced code inside reply text: not part of a longer dotted number (an IP address).
_ENH_AFTER_CODE = re.compile(r"(?<![\d.])[245]\d\d[ -]+([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_ENH_ANYWHERE = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_BASIC_CODE = re.compile(r"(?<![\d.])([245])\d\d(?:[ -]|$)")

_AT_RCPT = re.compile(r"in reply to RCPT TO command", re.IGNORECASE)
HARD_CODES = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.6", "5.1.10",
                        "5.2.1", "5.4.4"})
SOFT_CODES = frozenset({"5.1.7", "5.1.8", "5.2.2", "5.2.3", "5.2.4", "5.4.6", "5.4.7"})
SOFT_SUBJECTS = frozenset({"3", "6"})

SOFT_HINTS = re.compile(
    r"quota|mailbox (?:is )?full|out of storage|storage (?:space|allocation)|insufficient"
    r"|too (?:large|big)|size limit|exceeds? (?:the )?(?:maximum |message |size )|message size"
    r"|spam|unsolicited|junk|virus|malware|phish"
    r"|blocked|block ?list|black ?list|deny ?list|\brbl\b|dnsbl|spamhaus|spamcop|barracuda"
    r"|reputation|policy|policies|rate.?limit|too many|try again later|temporar|greylist|graylist"
    r"|content rejected|dmarc|\bspf\b|dkim|authentication|not authorized|unauthenticated"
    r"|relay(?:ing)? (?:access )?denied|relay not permitted|relaying",
    re.I,
)
HARD_HINTS = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address|account|person)"
    r"|(?:does not|doesn't|doesn&#39;t|do not|did not) exist|not exist"
    r"|recipient not found|recipientnotfound|unknown (?:recipient|mailbox|address|local part)"
    r"|invalid (?:recipient|mailbox|address|user)|recipient (?:address )?(?:is )?invalid"
    r"|mailbox (?:not found|unavailable|does not exist|disabled|inactive)"
    r"|address (?:not found|unknown|invalid|does not exist)|user not found|account not found"
    r"|account (?:has been |is )?(?:disabled|closed|deactivated|suspended|deleted|expired|inactive)"
    r"|no mailbox|not a valid (?:mailbox|recipient|user|address)|unrouteable address"
    r"|no longer (?:available|active|in use|valid)|doesn't have an? \S+ account",
    re.I,
)


def normalize_dsn(dsn: str | None) -> str | None:
    """' 5.01.001 ' -> '5.1.1'; anything that is not an enhanced status code -> None."""
    if not dsn:
        return None
    m = _DSN_RE.fullmatch(dsn.strip())
    if not m:
        return None
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"


def extract_dsn(reply: str | None) -> str | None:
    """The enhanced status code of an SMTP reply text ('550-5.1.1 ...' -> '5.1.1'); failing
    that, the class of its basic reply code ('550 no such user' -> '5.0.0'); else None."""
    if not reply:
        return None
    m = _ENH_AFTER_CODE.search(reply) or _ENH_ANYWHERE.search(reply)
    if m:
        return normalize_dsn(m.group(1))
    m = _BASIC_CODE.search(reply)
    if m:
        return f"{m.group(1)}.0.0"
    return None


def classify(dsn: str | None, reply: str | None, status: str) -> tuple[str | None, str | None]:
    """(bounce_type, normalized dsn) for one recipient's outcome.

    `status` is Postfix's (`sent`, `deferred`, `bounced`, `expired`, `undeliverable`,
    `SOFTBOUNCE`, ...) or a DSN report's Action (`failed`, `delayed`, `delivered`, ...).
    bounce_type is 'hard' / 'soft' for bounced/failed/softbounced/deferred/delayed outcomes and
    None otherwise. A missing or malformed dsn is taken from the reply text.
    """
    code = normalize_dsn(dsn)
    if code is None or code.endswith(".0.0"):
        # Postfix says X.0.0 when the reply had no enhanced code; the text may still have one.
        from_text = extract_dsn(reply)
        if from_text and (code is None or from_text[0] == code[0]):
            code = from_text
    st = (status or "").strip().lower()
    if st in ("deferred", "delayed", "softbounce"):
        return "soft", code
    if st not in ("bounced", "failed", "bounce", "hard", "undeliverable"):
        return None, code
    text = reply or ""
    if code is None:
        return ("soft" if SOFT_HINTS.search(text) else "hard"), code
    cls, subject, _detail = code.split(".")
    if cls != "5":
        return "soft", code
    if code in HARD_CODES:
        return "hard", code
    if code in SOFT_CODES:
        return "soft", code
    if subject in SOFT_SUBJECTS:
        # A generic system error given in answer to RCPT TO still refuses this one address
        # (many servers say "500 5.3.0" or "550 5.0.0" for unknown users); after DATA it does not.
        if _AT_RCPT.search(text) and not SOFT_HINTS.search(text):
            return "hard", code
        return "soft", code
    if subject == "7":
        if HARD_HINTS.search(text) and not SOFT_HINTS.search(text):
            return "hard", code
        return "soft", code
    return ("soft" if SOFT_HINTS.search(text) else "hard"), code


# ---------------------------------------------------------------------------------------------
# Reply texts

def clean_reply(reply: str | None) -> str | None:
    """Collapse a multi-line SMTP reply that Postfix joined into one line:
    '550-5.1.1 The email account ... Please try 550-5.1.1 double-checking ... 550 5.1.1  https://...'
    -> '550 5.1.1 The email account ... Please try double-checking ... https://...'.
    Only the repeated prefixes (same reply code, same enhanced code) are removed."""
    if not reply:
        return reply
    text = reply.strip()
    m = re.match(r"([245]\d\d)[- ](?:([245]\.\d{1,3}\.\d{1,3}) +)?", text)
    if not m:
        return text
    code, enh = m.group(1), m.group(2)
    rest = text[m.end():]
    if enh:
        rest = re.sub(rf"(?<![\w.]){code}[- ]{re.escape(enh)} +", "", rest)
    elif text[3:4] == "-":  # multi-line without enhanced codes: 'code-' ... 'code ' (last line)
        rest = re.sub(rf"(?<![\w.]){code}- ?", "", rest)
        last = rest.rfind(f" {code} ")
        if last >= 0:
            rest = rest[:last] + " " + rest[last + 5:]
    rest = re.sub(r" {2,}", " ", rest).strip()
    return f"{code} {enh} {rest}".rstrip() if enh else f"{code} {rest}".rstrip()


# ---------------------------------------------------------------------------------------------
# Asynchronous bounces: multipart/report; report-type=delivery-status (RFC 3464)

class DsnRecipient(NamedTuple):
    recipient: str  # Original-Recipient when present, else Final-Recipient (address only)
    action: str  # failed, delayed, delivered, relayed, expanded (lower case)
    status: str | None  # normalized enhanced status code
    diagnostic: str | None  # Diagnostic-Code text without its type ('smtp; ')
    remote_mta: str | None  # Remote-MTA without its type ('dns; ')


@dataclass
class DsnReport:
    """What a delivery-status report says: per-message fields, the returned message's
    identification, and one DsnRecipient per recipient block."""

    reporting_mta: str | None = None
    original_envelope_id: str | None = None
    queue_id: str | None = None  # X-Postfix-Queue-ID: the *reporting* MTA's queue id
    message_id: str | None = None  # Message-ID of the returned (original) message
    subject: str | None = None
    sender: str | None = None  # X-Postfix-Sender, else the original message's Return-Path
    recipients: list[DsnRecipient] = field(default_factory=list)


def _strip_type(value: str | None) -> str | None:
    """'rfc822; a@b' -> 'a@b'; 'smtp; 550 ...' -> '550 ...'; unfolds continuation lines."""
    if value is None:
        return None
    value = re.sub(r"\s*\r?\n\s+", " ", str(value)).strip()
    if ";" in value:
        kind, _, rest = value.partition(";")
        if kind.strip() and " " not in kind.strip():
            value = rest.strip()
    return value or None


def _address(value: str | None) -> str | None:
    value = _strip_type(value)
    if value and value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value or None


def _field_blocks(text: str) -> list[dict[str, str]]:
    """Parse the body of a message/delivery-status part: blank-line separated blocks of
    RFC 822 style fields (continuation lines start with whitespace). Keys are lower case."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[:1] in (" ", "\t") and last is not None:
            current[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            continue
        last = name.strip().lower()
        current.setdefault(last, value.strip())
    if current:
        blocks.append(current)
    return blocks


def _part_text(part) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:  # compat32 parses message/delivery-status into sub-messages
        inner = part.get_payload()
        if isinstance(inner, list):
            return "\n\n".join(
                "\n".join(f"{k}: {v}" for k, v in sub.items()) for sub in inner
            )
        return str(inner or "")
    return payload.decode("utf-8", "replace")


def is_dsn_content_type(value: str) -> bool:
    """'multipart/report; report-type=delivery-status; ...' (any case, quoted or not)."""
    v = value.lower()
    return v.split(";", 1)[0].strip() == "multipart/report" and bool(
        re.search(r"report-type\s*=\s*\"?delivery-status", v))


def parse_dsn(raw: bytes) -> DsnReport | None:
    """A DsnReport for a delivery-status report, None for any other message. Never raises on
    malformed input (a broken report yields what could be read)."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # noqa: BLE001 - the email package must not take the caller down
        return None
    status_part = None
    original = None
    try:
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in ("message/delivery-status", "message/global-delivery-status") and status_part is None:
                status_part = part
            elif ctype in ("message/rfc822", "text/rfc822-headers", "message/global",
                           "message/global-headers") and original is None:
                original = part
    except Exception:  # noqa: BLE001
        return None
    if status_part is None:
        return None
    report = DsnReport()
    blocks = _field_blocks(_part_text(status_part))
    if blocks:
        per_message = blocks[0] if "final-recipient" not in blocks[0] else {}
        report.reporting_mta = _strip_type(per_message.get("reporting-mta"))
        report.original_envelope_id = _strip_type(per_message.get("original-envelope-id"))
        report.queue_id = _strip_type(per_message.get("x-postfix-queue-id"))
        report.sender = _address(per_message.get("x-postfix-sender"))
        for block in blocks:
            final = block.get("final-recipient")
            if not final:
                continue
            rcpt = _address(block.get("original-recipient")) or _address(final)
            if not rcpt:
                continue
            report.recipients.append(DsnRecipient(
                recipient=rcpt,
                action=(block.get("action") or "").strip().lower(),
                status=normalize_dsn(block.get("status")) or extract_dsn(block.get("status")),
                diagnostic=_strip_type(block.get("diagnostic-code")),
                remote_mta=_strip_type(block.get("remote-mta")),
            ))
    if original is not None:
        try:
            headers = original.get_payload()
            if isinstance(headers, list) and headers:
                headers = headers[0]
            if isinstance(headers, str):
                headers = email.message_from_string(headers, policy=email.policy.compat32)
            if hasattr(headers, "get"):
                mid = headers.get("Message-ID")
                report.message_id = str(mid).strip() if mid else None
                subj = headers.get("Subject")
                report.subject = str(subj).strip() if subj else None
                if report.sender is None and headers.get("Return-Path"):
                    report.sender = _address(str(headers.get("Return-Path")))
        except Exception:  # noqa: BLE001
            pass
    return report


def parse_dsn_report(raw: bytes) -> list[DsnRecipient]:
    """[(original recipient, action, status, diagnostic, remote-mta), ...] of a
    multipart/report; report-type=delivery-status message; [] for anything else."""
    report = parse_dsn(raw)
    return list(report.recipients) if report else []


def events_from_dsn(raw: bytes, *, at: str | None = None, key: str = "") -> list:
    """Events for an asynchronous DSN that came back for mail we sent: `bounced` (with
    bounce_type) for Action failed with a 5.x.x status, `failed` for Action failed with a 4.x.x
    status (the remote MTA gave up: expired), `deferred` for Action delayed. Delivered/relayed/
    expanded reports produce nothing. Joined later by message_id (the returned message's
    Message-ID). `key` (e.g. the spool record id of the DSN) makes the event ids unique per DSN
    message while staying deterministic."""
    from mxhook.model import events  # keep the import graph one-way at module load

    report = parse_dsn(raw)
    if report is None:
        return []
    at = at or events.now_iso()
    at_us = events.us_from_iso(at)
    out = []
    for r in report.recipients:
        if r.action == "failed":
            bounce_type, code = classify(r.status, r.diagnostic, "failed")
            etype = "bounced" if (code or "5").startswith("5") else "failed"
            if etype == "failed":
                bounce_type = None
        elif r.action == "delayed":
            etype, (bounce_type, code) = "deferred", (None, classify(r.status, r.diagnostic, "delayed")[1])
        else:
            continue
        out.append(events.Event(
            id=events.event_id(at_us, "dsn", key or report.message_id or "", report.queue_id or "",
                               r.recipient, r.action),
            type=etype, at=at, source="dsn", recipient=r.recipient, sender=report.sender,
            message_id=report.message_id, subject=report.subject, dsn=code,
            bounce_type=bounce_type, remote_host=r.remote_mta, reply=clean_reply(r.diagnostic),
            diagnostic=r.diagnostic,
        ))
    return out
