"""`rule test`: what the milter would answer for a message and its recipients, at which stage,
and why, with every rule explained also past the first match; with `payload`, the body each
delivery would post."""
from __future__ import annotations

import ipaddress
import time

from mxhook import config as configmod
from mxhook.mailauth.authenticate import AuthSettings, authenticator
from mxhook.mailauth.resolvers import StaticResolver
from mxhook.model import inbound
from mxhook.model.envelope import Envelope
from mxhook.model.headers import normalize_address
from mxhook.model.targets import Target
from mxhook.payloads import registry
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
                    mail_from: str | None = None, *, payload: bool = False,
                    client_ip: str = "", helo: str = "", dns: bool = True) -> dict:
    """Read the message from `stream` (binary) and explain it against rules.db; with
    `payload`, also the request body of each delivery (`payloads`). `client_ip`, `helo`: the
    SMTP client the verdicts are checked for; `dns` False: verify without DNS (every lookup
    finds nothing)."""
    for r in recipients:
        if "@" not in r:
            raise Invalid(f"{r!r} is not an address (local@domain)", "invalid_recipient")
    raw = read_message(stream, cfg.value("milter", "max_message_size"))
    with rules_store(cfg) as store:
        snapshot = store.snapshot(regex_timeout=cfg.value("milter", "regex_timeout"),
                                  recipient_delimiter=cfg.value("milter", "recipient_delimiter"))
    if client_ip:
        try:
            ipaddress.ip_address(client_ip)
        except ValueError:
            raise Invalid(f"{client_ip!r} is not an IP address", "invalid_client_ip") from None
    return explain(snapshot, cfg, raw, list(recipients), mail_from, payload=payload,
                   client_ip=client_ip, helo=helo, dns=dns)


def explain(snapshot: dbmod.Snapshot, cfg: configmod.Config, raw: bytes, recipients: list[str],
            mail_from: str | None, *, payload: bool = False, client_ip: str = "", helo: str = "",
            dns: bool = True) -> dict:
    """What the milter would answer for this message and these recipients (in RCPT order), at
    which stage, and why: the milter's own decision (model.inbound.explain) with the settings
    the milter reads, the authentication verdicts as `[authentication]` makes them."""
    def value(key):
        return cfg.value("milter", key)

    envelope = Envelope(sender=normalize_address(mail_from) if mail_from is not None else None)
    for r in recipients:
        envelope.recipient(r)
    # Refusals at RCPT are capped where Postfix has mxhook's routes (`mxhook check`); with
    # discard_via = milter the milter never relies on them, so it splits without a cap.
    authenticate = authenticator(AuthSettings.from_config(cfg), client_ip=client_ip, helo=helo,
                                 mail_from=envelope.sender or "",
                                 dns=None if dns else StaticResolver({}))
    internal = inbound.internal_routes(cfg.value("tracking", "feedback_address"),
                                       cfg.value("tracking", "unsubscribe_address"))
    explained = inbound.explain(snapshot, inbound.Policy.from_section(value, internal), raw, envelope,
                                routes=value("discard_via") != "milter", authenticate=authenticate)
    out = explained.as_dict()
    if payload:
        out["payloads"] = bodies(cfg, explained.spooled)
    return out


def bodies(cfg: configmod.Config, spooled: inbound.SpooledMessage | None) -> list[dict]:
    """The request body each delivery of a dry-run message would post, rendered as the spooler
    renders it (the rule's template, dialect or native format, the [spooler] size caps); the
    body as text (UTF-8, undecodable bytes escaped)."""
    if spooled is None:
        return []
    meta = spooled.record.to_meta()
    templates = dbmod.Templates(cfg.rules_db)
    out = []
    try:
        for routed in spooled.record.deliveries:
            target = Target.from_record(routed.target)
            entry = {"rule": target.name, "dialect": target.dialect, "format": target.format,
                     "template": target.template}
            try:
                rendered = registry.inbound_request(
                    target, delivery_id=f"{spooled.id}-{target.name}", meta=meta, raw=spooled.raw,
                    now=time.time(), nonce="dry-run", templates_loader=templates.get,
                    max_attachment_size=cfg.value("spooler", "max_attachment_size"),
                    max_payload_size=cfg.value("spooler", "max_payload_size"))
            except ValueError as exc:  # a template's error: what the spooler would record
                entry["error"] = str(exc)
            else:
                entry.update(content_type=rendered.content_type,
                             body=rendered.body.decode("utf-8", "backslashreplace"))
            out.append(entry)
    finally:
        templates.close()
    return out
