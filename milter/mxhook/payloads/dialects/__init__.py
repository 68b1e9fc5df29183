"""Payload dialects: the request bodies of the systems mxhook is modelled on and of the ESPs
users migrate from, one module per system (django-anymail style: mappings as data). Pure.

An event dialect module has
    NAME: str
    EVENTS_PER_REQUEST: int | None   1 = one event per request; None = the endpoint's batch size
    def event_request(events: list[dict], ctx: EventContext) -> encodings.Rendered
and an inbound dialect module has
    NAME: str
    def inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> encodings.Rendered
(a module may have both). `events` are event dicts as stored (`model.events.Event.to_dict()`,
enriched with the message fields of their `queued` event: payloads/events.py), or the
`events.V1Text` the store may keep one as (`events.as_dict` reads it back). A dialect never
raises for what a message or event contains; fields it cannot fill yet get the value its
documentation gives for "absent", never a wrong one (docs/payloads.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone, tzinfo

from mxhook.model.fetchurls import FetchUrls
from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE
from mxhook.payloads import inbound

DEFAULT_MAX_PAYLOAD_SIZE = 25 * 1024 * 1024


@dataclass(frozen=True)
class EventContext:
    """What an event request is rendered with, besides its events."""

    request_id: str  # the dispatch's id (webhook-id header): the same on every retry
    now: float  # Unix time of this attempt (signature timestamps): injected, never read here
    nonce: str  # random text of this attempt (e.g. Mailgun's `token`): injected
    endpoint_id: int | None = None
    tz: tzinfo = timezone.utc  # the endpoint's time zone, for dialects with local times
    api_key: str | None = None  # the endpoint's api_key (native: in the body)
    signing_key: str | None = None  # the key a dialect signs its body with (Mailgun), or None
    custom_headers: tuple[str, ...] = ()  # header names the admin selected (SMTP2GO extras)


@dataclass(frozen=True)
class InboundContext:
    """What an inbound request is rendered with, besides its delivery."""

    now: float
    nonce: str
    max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    signing_key: str | None = None
    fetch_urls: FetchUrls | None = None  # [web] public_url and its keys; None: no fetch URLs

    def fetch_url(self, delivery: inbound.Delivery) -> inbound.FetchUrl | None:
        """The fetch URLs of the delivery's omitted contents (None: none are given)."""
        return inbound.fetch_url_maker(delivery, self.fetch_urls, self.now)

    def native_document(self, delivery: inbound.Delivery) -> dict:
        """The delivery's native document under this context's caps, omitted contents with
        their fetch URL."""
        return inbound.native_document(delivery, max_attachment_size=self.max_attachment_size,
                                       fetch_url=self.fetch_url(delivery))
