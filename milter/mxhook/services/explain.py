"""`rule test`: what the milter would answer for a message and its recipients, at which stage,
and why, with every rule explained also past the first match."""
from __future__ import annotations

from mxhook import config as configmod
from mxhook.model import inbound
from mxhook.model.envelope import Envelope
from mxhook.model.headers import normalize_address
from mxhook.services.errors import Invalid, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb as dbmod


def read_message(stream, limit: int) -> bytes:
    """The message, at most `limit` bytes of it read: a larger one (say /dev/zero) is refused
    naming the limit, as the milter answers such a message 552 5.3.4."""
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        name = "stdin" if getattr(stream, "name", "-") in ("<stdin>", "-") else stream.name
        raise Invalid(f"{name} is larger than [milter] max_message_size ({limit} bytes): the "
                      "milter refuses such a message (552 5.3.4), so it is not tested",
                      "message_too_large")
    return raw


@translated()
def explain_message(cfg: configmod.Config, stream, recipients: list[str],
                    mail_from: str | None = None) -> dict:
    """Read the message from `stream` (binary) and explain it against rules.db."""
    for r in recipients:
        if "@" not in r:
            raise Invalid(f"{r!r} is not an address (local@domain)", "invalid_recipient")
    raw = read_message(stream, cfg.value("milter", "max_message_size"))
    with rules_store(cfg) as store:
        snapshot = store.snapshot(regex_timeout=cfg.value("milter", "regex_timeout"),
                                  recipient_delimiter=cfg.value("milter", "recipient_delimiter"))
    return explain(snapshot, cfg, raw, list(recipients), mail_from)


def explain(snapshot: dbmod.Snapshot, cfg: configmod.Config, raw: bytes, recipients: list[str],
            mail_from: str | None) -> dict:
    """What the milter would answer for this message and these recipients (in RCPT order), at
    which stage, and why: the milter's own decision (model.inbound.explain) with the settings
    the milter reads."""
    def value(key):
        return cfg.value("milter", key)

    envelope = Envelope(sender=normalize_address(mail_from) if mail_from is not None else None)
    for r in recipients:
        envelope.recipient(r)
    # Refusals at RCPT are capped where Postfix has mxhook's routes (`mxhook check`); with
    # discard_via = milter the milter never relies on them, so it splits without a cap.
    return inbound.explain(snapshot, inbound.Policy.from_section(value), raw, envelope,
                           routes=value("discard_via") != "milter").as_dict()
