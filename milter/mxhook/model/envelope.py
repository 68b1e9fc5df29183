"""The SMTP envelope of one message, as the milter's callbacks (or `mxhook rule test`) fill it,
and what is derived from it with the header fields: the envelope fields of spool records
(model/records.py) and the milter's events (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from mxhook.model import events
from mxhook.model.headers import decode_value, first_address, normalize_address, to_text

INBOUND = ""  # Envelope.direction of inbound mail; outbound mail names why it is outbound
AUTHENTICATED, DAEMON_NAME, TRUSTED_NETWORK = "authenticated", "daemon_name", "trusted_network"
# Mail given to Postfix's sendmail(1) (pickup, then cleanup's non_smtpd_milters): cleanup
# pretends a connection from localhost[127.0.0.1] port 0, which no SMTP client can have.
LOCAL_SUBMISSION = "local_submission"
LOCAL_CLIENT = ("localhost", "127.0.0.1", 0)


@dataclass(slots=True)
class Recipient:
    given: str  # as Postfix has it, in angle brackets: delrcpt must name it exactly, case included
    address: str  # normalized (headers.normalize_address): what rules and domains compare
    refused: bool = False  # answered 4xx/5xx at RCPT: Postfix does not have it


@dataclass(slots=True)
class Envelope:
    client_addr: str = ""
    client_name: str = ""
    helo: str = ""
    sender: str | None = ""  # normalized MAIL FROM; "" is the null sender; None: not known (a dry run)
    direction: str = INBOUND
    auth_user: str = ""
    queue_id: str = ""
    recipients: list[Recipient] = field(default_factory=list)  # in RCPT order, as given
    host_name: str = ""  # this MX: Postfix's myhostname (macro `j`), what logs call hostName

    def recipient(self, given: str) -> Recipient:
        """Adds RCPT TO `given` (text from the client, with or without angle brackets)."""
        given = given.strip()
        rcpt = Recipient(given if given.startswith("<") else f"<{given}>", normalize_address(given))
        self.recipients.append(rcpt)
        return rcpt

    def given(self, addresses) -> list[str]:
        """Every form in which the client named these normalized addresses and Postfix accepted
        it, in RCPT order."""
        wanted = set(addresses)
        return [r.given for r in self.recipients if r.address in wanted and not r.refused]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def header_values(raw_headers: list[tuple[str, bytes]], name: str) -> list[bytes]:
    """The values of the fields called `name` (lower case), in message order."""
    return [v for n, v in raw_headers if n.lower() == name]


def message_fields(envelope: Envelope, raw_headers: list[tuple[str, bytes]], received: str) -> dict:
    """The envelope fields of a spool record, with the header fields shown in the inbound log:
    keyword arguments of records.InboundRecord and records.DeniedRecord."""
    subject = header_values(raw_headers, "subject")
    message_id = header_values(raw_headers, "message-id")
    header_from = header_values(raw_headers, "from")
    return {
        "received": received,
        "queue_id": envelope.queue_id,
        "mail_from": envelope.sender,
        "client_addr": envelope.client_addr,
        "client_name": envelope.client_name,
        "helo": envelope.helo,
        "header_from": first_address(header_from[0]) if header_from else "",
        "subject": decode_value(subject[0]).strip() if subject else "",  # as a reader sees it
        "message_id": to_text(message_id[0]).strip() if message_id else "",
        "host_name": envelope.host_name or None,
    }


def milter_events(envelope: Envelope, raw_headers: list[tuple[str, bytes]], event_type: str,
                  recipients: list[str], *, event_headers: tuple[str, ...], received: str,
                  new_id: Callable[[], str], **fields) -> list[events.Event]:
    """One event of the milter (`queued`, `blocked`) per recipient; the message's fields are
    looked up once. event_headers: names of fields copied into `custom_headers`, matched in any
    case and kept under the first spelling given (the admin's: docs/payloads.md)."""
    meta = message_fields(envelope, raw_headers, received)
    custom = {}
    seen = set()
    for name in event_headers:
        lower = name.lower()
        if lower in seen:
            continue
        seen.add(lower)
        values = header_values(raw_headers, lower)
        if values:
            custom[name] = decode_value(values[0])
    return [events.Event(
        type=event_type, at=received, id=new_id(), source="milter",
        queue_id=envelope.queue_id or None, recipient=rcpt, sender=envelope.sender,
        header_from=meta["header_from"] or None, message_id=meta["message_id"] or None,
        subject=meta["subject"] or None, client_addr=envelope.client_addr or None,
        auth_user=envelope.auth_user or None, host_name=envelope.host_name or None,
        custom_headers=dict(custom), **fields,
    ) for rcpt in recipients]
