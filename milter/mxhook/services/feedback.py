"""Mail mxhook answers itself, and what engagement events do to the block list.

`Handler`: the spooler hands it each spooled message of an internal route (records.INTERNAL_ROUTES:
an ARF complaint report to `[tracking] feedback_address`, a mailto: unsubscribe to
`unsubscribe_address`); it parses the message (model/arf.py) with the install's tracking keys
and answers an `Outcome`: the `complained` / `unsubscribed` event (source `feedback`, its id
made from the record's, so ingesting the record again after a crash stores it once) or why
there is none. store/ingest.py stores the event with the record, in one transaction, after
checking an unverified claim against the mail we sent, and logs the outcome in the inbound log.

`settle`: an `unsubscribed` or `complained` event puts its recipient on the block list for its
sending domain (a suppression, source `unsubscribe` / `complaint`) with a `registered` event; a
`resubscribed` event takes an unsubscribe suppression away (never a complaint's) with a
`deleted` event. The spooler runs it on the events ingest marked pending, as it runs the
hard-bounce hand-over.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mxhook.model import arf
from mxhook.model import events as events_mod
from mxhook.model.events import Event
from mxhook.model.records import InboundRecord
from mxhook.model.rules import RuleError
from mxhook.services import keyfiles
from mxhook.store import rulesdb

log = logging.getLogger(__name__)

SOURCE_OF = {"unsubscribed": "unsubscribe", "complained": "complaint"}


@dataclass
class Outcome:
    """What a message of an internal route gave: `event` (None: nothing to record, `reason`
    says why), `verified` (a valid token named its recipient; otherwise ingest checks the
    claim against the `queued` events before storing it)."""

    event: Event | None
    verified: bool
    reason: str


class Handler:
    """The spooler's handler of mail to mxhook's own addresses (see the module)."""

    def __init__(self, key_file: str):
        self.key_file = keyfiles.KeyFile(key_file)  # read again when it changes
        self._key_error: str | None = None

    def keys(self) -> tuple[bytes, ...]:
        """The tracking keys; () when the file is missing or unreadable (logged once): every
        token is then unverifiable."""
        try:
            keys = self.key_file.keys()
            error = None if keys else "missing or empty"
        except (OSError, ValueError) as exc:
            keys, error = (), f"{type(exc).__name__}: {exc}"
        if error is not None and error != self._key_error:
            log.error("cannot read the tracking keys in %s (tokens in feedback mail are not "
                      "verified meanwhile): %s", self.key_file.path, error)
        self._key_error = error
        return keys

    def __call__(self, route: str, record_id: str, message: InboundRecord, raw: bytes) -> Outcome:
        try:
            return self._handle(route, record_id, message, raw)
        except arf.NotAReport as exc:
            return Outcome(None, False, str(exc))
        except Exception as exc:  # noqa: BLE001 - one odd message must not stop the spooler
            log.exception("mail %s to mxhook's %s address could not be read", record_id, route)
            return Outcome(None, False, f"could not be read: {type(exc).__name__}: {exc}")

    def _handle(self, route: str, record_id: str, message: InboundRecord, raw: bytes) -> Outcome:
        keys = self.keys()
        engagement: dict = {}
        if route == "unsubscribe":
            claim = arf.unsubscribe_request(raw, keys)
            etype = "unsubscribed"
        else:
            report = arf.parse(raw)
            claim = arf.complaint(report, keys)
            etype = "complained"
            engagement.update(feedback_type=report.feedback_type, user_agent=report.user_agent)
            if not claim.recipient:
                return Outcome(None, False, f"{report.feedback_type} report names no recipient "
                               f"({claim.why}); recorded, nobody suppressed")
        received = message.received or events_mod.now_iso()
        at_us = events_mod.us_from_iso(received)
        event = Event(type=etype, at=received, id=events_mod.event_id(at_us, "feedback", record_id),
                      source="feedback", queue_id=claim.queue_id, recipient=claim.recipient,
                      # a verified event takes the Message-ID of the message we sent (enrichment
                      # by queue id), not the report's word
                      message_id=None if claim.verified else claim.message_id,
                      engagement={"sending_domain": claim.sending_domain or None, **engagement})
        return Outcome(event, claim.verified, f"{etype} {claim.recipient}: {claim.why}")


def settle(store: rulesdb.RulesStore, event: dict, at: str) -> tuple[str, dict | None]:
    """Apply one pending `unsubscribed`, `complained` or `resubscribed` event (an enriched
    event dict with its id) to the block list; (its id, the `registered` / `deleted` event to
    store, or None). rules.db errors propagate (the event stays pending)."""
    address = event.get("recipient") or ""
    domain = (event.get("engagement") or {}).get("sending_domain") or ""
    etype = event["type"]
    try:
        if etype == "resubscribed":
            removed = store.block_remove(address, scope=domain, sources=("unsubscribe",))
            if removed:
                log.info("block list: %s resubscribed to mail of %s (event %s)", address, domain, event["id"])
            # a crash between this and recording the event loses the deleted event (rare)
            return event["id"], _follow_up(event, "deleted", address, "resubscribed to mail of "
                                           + domain, at) if removed else None
        source = SOURCE_OF[etype]
        reason = rulesdb.refusal_reason(source, domain)
        added = store.block_add(address, reason=reason, source=source, event_id=event["id"], scope=domain)
    except RuleError as exc:  # not an address or not a domain: nothing to suppress
        log.warning("%s event %s: %s; no suppression", etype, event["id"], exc)
        return event["id"], None
    # added now, or by this very event before a crash kept us from recording it: the
    # registered event is owed (its id makes storing it twice harmless)
    owed = added or (store.block_get(address, domain) or {}).get("event_id") == event["id"]
    if added:
        log.info("block list: suppressed %s for %s after %s event %s", address, domain, etype, event["id"])
    return event["id"], _follow_up(event, "registered", address, reason, at) if owed else None


def _follow_up(event: dict, etype: str, address: str, reason: str, at: str) -> dict:
    fields = {k: event.get(k) for k in ("queue_id", "sender", "header_from", "message_id", "subject",
                                        "client_addr", "auth_user")}
    fields["custom_headers"] = dict(event.get("custom_headers") or {})
    recipient = rulesdb.normalize_block_address(address)
    return Event(**fields, id=f"{etype}-{recipient}-{event['id']}", type=etype, at=at,
                 source=event.get("source") or "feedback", recipient=recipient,
                 reason=reason).to_meta()
