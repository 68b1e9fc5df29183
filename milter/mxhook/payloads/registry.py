"""Which request body a target gets, and the one entry point per side that builds it. Pure:
the caller passes the attempt's time and nonce and the reader of stored templates.

    inbound_request(target, delivery_id=, meta=, raw=, now=, nonce=, ...)   a rule's body
    event_request(target, events, request_id=, now=, nonce=, ...)          an endpoint's body

The spooler, `mxhook endpoint test` and the tests call these two. Each picks, in this order:
1. the target's jinja2 template (`target.template`: a version in rules.db, read through the
   caller's `templates` loader, compiled once per (owner kind, owner id, version));
2. its dialect (`target.dialect`, other than native: `INBOUND_DIALECTS` / `EVENT_DIALECTS`, the
   same names as the catalogue's, payloads/dialects/catalogue.py);
3. the native body of its `format` (inbound) or payload version and `format` (events):
   `render_inbound` / `render_events`, over these tables:
   - `INBOUND`: a rule's format (`json`, `multipart`, `raw`) -> `InboundFormat` (producer over
     an `inbound.Delivery`, encoding of what it produced under the payload size cap);
   - `EVENT_VERSIONS`: an endpoint's payload version -> `EventVersion` (producer of the batch
     document); `EVENT_ENCODINGS`: an endpoint's format (`json`, `form`) -> encoding.
A body that cannot be made raises ValueError with a reason for the admin (TemplateError for a
template: missing from rules.db, a render error); the spooler records it as a failed attempt.

`event_types(target)` and `events_per_request(target)` are what the spooler fans out and
batches by: the types the target's body has a place for, and 1 for a one-event-per-request
dialect. The native names are also in the model (`model/rules.py` FORMATS, `model/endpoints.py`
FORMATS and VERSIONS), which validates them without importing this layer; a test keeps both the
same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from mxhook.model.events import TYPES
from mxhook.model.fetchurls import FetchUrls
from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE
from mxhook.model.targets import Target
from mxhook.payloads import encodings, events, inbound, templates
from mxhook.payloads.dialects import (DEFAULT_MAX_PAYLOAD_SIZE, EventContext, InboundContext,
                                      actionmailbox, catalogue, mailgun, msndr, paubox, postmark,
                                      sendgrid, smtp2go)
from mxhook.payloads.encodings import Rendered
from mxhook.payloads.templates import Template, TemplateError

# (owner kind: rule | endpoint, owner id, version) -> (content type, source), or None when
# rules.db has no such version: store.rulesdb.Templates.get
TemplateLoader = Callable[[str, "int | None", "int | None"], "tuple[str, str] | None"]


@dataclass(frozen=True)
class InboundFormat:
    document: Callable[..., object]  # (inbound.Delivery, *, max_attachment_size, fetch_url) -> document
    encode: Callable[..., Rendered]  # (document, *, max_payload_size, fetch_url) -> body


@dataclass(frozen=True)
class EventVersion:
    document: Callable[..., dict]  # (events, *, tz, batch_id, endpoint_id, api_key) -> document
    takes_v1_text: bool = False  # takes events.V1Text in place of event dicts


def _native_json(doc: dict, *, max_payload_size: int, fetch_url=None) -> Rendered:
    msg = doc["message"]
    return encodings.json_capped(doc, max_payload_size, attachments=inbound.capped_contents(doc),
                                 defects=msg["defects"],
                                 on_omit=inbound.url_on_omit(fetch_url, inbound.numbered_contents(doc)))


def _native_multipart(doc: dict, *, max_payload_size: int, fetch_url=None) -> Rendered:
    msg = doc["message"]
    return encodings.multipart_capped(doc, max_payload_size, parts=inbound.form_parts,
                                      attachments=inbound.capped_contents(doc), defects=msg["defects"],
                                      seed=doc["id"],  # the delivery id: a retry sends the same bytes
                                      on_omit=inbound.url_on_omit(fetch_url, inbound.numbered_contents(doc)))


def _raw(doc: tuple, *, max_payload_size: int, fetch_url=None) -> Rendered:
    return encodings.raw_message(*doc)  # the message as it came: no cap applies


INBOUND: dict[str, InboundFormat] = {
    "json": InboundFormat(inbound.native_document, _native_json),
    "multipart": InboundFormat(inbound.native_document, _native_multipart),
    "raw": InboundFormat(inbound.raw_document, _raw),
}

# Add a version only with a real reason, and never change an existing one: endpoints are pinned
# to the version they were created with.
EVENT_VERSIONS: dict[int, EventVersion] = {1: EventVersion(events.document_v1, takes_v1_text=True)}

EVENT_ENCODINGS: dict[str, Callable[[dict], Rendered]] = {
    "json": encodings.json,
    "form": encodings.form_urlencoded,
}


def _lookup(table: dict, key, what: str):
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unknown {what} {key!r} (known: {', '.join(map(str, table))})") from None


def render_inbound(fmt: str, *, delivery_id: str, meta: dict, raw: bytes, target: Target,
                   recipients: Iterable[str] | None = None,
                   max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                   max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> Rendered:
    """The request body for one inbound delivery (one message, one rule).

    `meta` is the spool record's inbound metadata, `target` the delivery's target,
    `recipients` the envelope recipients this rule matched (default: taken from
    meta["deliveries"] by the rule's name). Raises ValueError only for an unknown format; bad
    message content never raises (see model.message.normalize)."""
    entry = _lookup(INBOUND, fmt, "payload format")
    delivery = inbound.Delivery.of(delivery_id=delivery_id, meta=meta, raw=raw, target=target,
                                   recipients=recipients)
    return entry.encode(entry.document(delivery, max_attachment_size=max_attachment_size),
                        max_payload_size=max_payload_size)


def render_events(version: int, batch: Iterable[dict | events.V1Text], *, endpoint_tz: str = "UTC",
                  fmt: str = "json", batch_id: str, endpoint_id: int | None = None,
                  api_key: str | None = None) -> Rendered:
    """The request body for one event batch. ValueError for an unknown version or format.
    `batch`: event dicts, or events.V1Text."""
    entry = _lookup(EVENT_VERSIONS, version, "event payload version")
    encode = _lookup(EVENT_ENCODINGS, fmt, "event payload format")
    if not entry.takes_v1_text:
        batch = map(events.as_dict, batch)
    doc = entry.document(batch, tz=events.zone(endpoint_tz), batch_id=batch_id,
                         endpoint_id=endpoint_id, api_key=api_key)
    return encode(doc)


# ---------------------------------------------------------------------------------------------
# Dialects and templates: the entry points

# dialect name -> (inbound.Delivery, InboundContext) -> Rendered
INBOUND_DIALECTS: dict[str, Callable[..., Rendered]] = {
    **sendgrid.INBOUND_DIALECTS,
    mailgun.NAME: mailgun.inbound_request,
    postmark.NAME: postmark.inbound_request,
    actionmailbox.NAME: actionmailbox.inbound_request,
}
# dialect name -> (events, EventContext) -> Rendered
EVENT_DIALECTS: dict[str, Callable[..., Rendered]] = {
    module.NAME: module.event_request for module in (smtp2go, paubox, msndr, sendgrid, mailgun, postmark)
}
_SIDES = {"rule": catalogue.INBOUND, "endpoint": catalogue.EVENTS}
_TEMPLATE_KINDS = {"rule": "inbound", "endpoint": "events"}
_ALL_TYPES = frozenset(TYPES)


def _dialect(target: Target, table: dict) -> Callable[..., Rendered] | None:
    """The target's dialect renderer; None for native. ValueError (the catalogue's text) for a
    name the catalogue does not have on this side."""
    name = target.dialect or catalogue.NATIVE
    if name == catalogue.NATIVE:
        return None
    catalogue.lookup(name, _SIDES[target.kind])
    return table[name]


def event_types(target: Target) -> frozenset[str]:
    """The event types the target's body has a place for (every type for native and templates;
    a dialect's EVENT_TYPES). ValueError for an unknown dialect."""
    name = target.dialect or catalogue.NATIVE
    if name == catalogue.NATIVE:
        return _ALL_TYPES
    types = catalogue.lookup(name, catalogue.EVENTS).event_types
    return _ALL_TYPES if types is None else frozenset(types)


def events_per_request(target: Target) -> int | None:
    """1 when the target's dialect posts one event per request; None: batches (up to the
    endpoint's max_events), also for a dialect the catalogue does not have on the event side:
    its batches are made as native ones, and rendering each says what is wrong."""
    name = target.dialect or catalogue.NATIVE
    if name == catalogue.NATIVE:
        return None
    try:
        return catalogue.lookup(name, catalogue.EVENTS).events_per_request
    except ValueError:
        return None


# Compiled templates by (owner kind, owner id, version), each with the source it was compiled
# from: a stored version does not change, but a cache that outlives one rules.db (tests, a
# restored backup) must not hand out another database's template. Workers share it: a dict's
# get and set are atomic, and two threads compiling one template at once store equal values.
_COMPILED: dict[tuple[str, int | None, int | None], Template] = {}
_COMPILED_MAX = 1024


def _template(target: Target, loader: TemplateLoader | None) -> Template:
    """The target's template, compiled; TemplateError when rules.db does not have it or it does
    not compile (a broken template put there by hand)."""
    key = (target.kind, target.id, target.template)
    found = loader(*key) if loader is not None else None
    if found is None:
        raise TemplateError(f"template version {target.template} of {target.kind} {target.name} "
                            "is not in rules.db")
    content_type, source = found
    cached = _COMPILED.get(key)
    if cached is not None and cached.source == source and cached.content_type == content_type:
        return cached
    compiled = templates.compile_template(source, content_type, _TEMPLATE_KINDS[target.kind])
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = compiled
    return compiled


def inbound_request(target: Target, *, delivery_id: str, meta: dict, raw: bytes, now: float,
                    nonce: str, recipients: Iterable[str] | None = None,
                    templates_loader: TemplateLoader | None = None,
                    max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
                    clock: Callable[[], float] | None = None,
                    message_id: str | None = None, fetch_urls: FetchUrls | None = None) -> Rendered:
    """The request body of one inbound delivery (one message, one rule) for this attempt:
    the rule's template, else its dialect, else the native body of its format. `now`, `nonce`:
    the attempt's time and random text (signatures); `recipients`: the envelope recipients the
    rule matched (default: from meta["deliveries"] by the rule's name); `clock`: bounds a
    template's render time; `message_id`: state.db's stored message, which the fetch URLs
    (`fetch_urls`: [web] public_url and its keys) of omitted contents name. ValueError
    (TemplateError) when no body can be made, with the reason; bad message content never
    raises."""
    delivery = inbound.Delivery.of(delivery_id=delivery_id, meta=meta, raw=raw, target=target,
                                   recipients=recipients, message_id=message_id)
    ctx = InboundContext(now=now, nonce=nonce, max_attachment_size=max_attachment_size,
                         max_payload_size=max_payload_size, signing_key=target.signing_key,
                         fetch_urls=fetch_urls)
    return delivery_request(delivery, ctx, templates_loader=templates_loader, clock=clock)


def delivery_request(delivery: inbound.Delivery, ctx: InboundContext, *,
                     templates_loader: TemplateLoader | None = None,
                     clock: Callable[[], float] | None = None) -> Rendered:
    """`inbound_request` for a delivery already read from its record (the conformance suite
    builds its own): the choice of body by `delivery.target`."""
    target = delivery.target
    if target.template is not None:
        return templates.inbound_request(_template(target, templates_loader), delivery, ctx, clock=clock)
    dialect = _dialect(target, INBOUND_DIALECTS)
    if dialect is not None:
        return dialect(delivery, ctx)
    entry = _lookup(INBOUND, target.format, "payload format")
    fetch_url = ctx.fetch_url(delivery)
    return entry.encode(entry.document(delivery, max_attachment_size=ctx.max_attachment_size,
                                       fetch_url=fetch_url),
                        max_payload_size=ctx.max_payload_size, fetch_url=fetch_url)


def event_request(target: Target, batch: Iterable[dict | events.V1Text], *, request_id: str,
                  now: float, nonce: str, version: int = 1, tz: str = "UTC",
                  templates_loader: TemplateLoader | None = None,
                  clock: Callable[[], float] | None = None,
                  event_headers: Iterable[str] | None = None,
                  selected_headers: Iterable[str] | None = None) -> Rendered:
    """The request body of one event batch (`request_id`: its webhook-id) for this attempt:
    the endpoint's template, else its dialect, else the native body of its payload `version`
    and format, times in `tz`. The batch is what the spooler made for the target: only the
    types `event_types` gives, one event when `events_per_request` is 1. `event_headers`:
    [milter] event_headers; given, each event's custom headers are cut to those and the
    target's own (`header_names`); None leaves them as stored. `selected_headers`: what every
    enabled endpoint selects (lower case); given, the events are looked at only when there is
    something to cut or name (`_cut_headers`), as the milter captured nothing else. ValueError
    (TemplateError) when no body can be made, with the reason."""
    ctx = EventContext(request_id=request_id, now=now, nonce=nonce, endpoint_id=target.id,
                       tz=events.zone(tz), api_key=target.api_key, signing_key=target.signing_key,
                       custom_headers=target.custom_headers)
    dialect = None if target.template is not None else _dialect(target, EVENT_DIALECTS)
    if event_headers is not None and _cut_headers(target, event_headers, selected_headers,
                                                  as_selected=dialect is None):
        names = header_names(target, event_headers, as_selected=dialect is None)
        batch = events.select_headers(batch, names)
    if target.template is not None:
        return templates.event_request(_template(target, templates_loader), batch, ctx, clock=clock)
    if dialect is None:
        return render_events(version, batch, endpoint_tz=tz, fmt=target.format,
                             batch_id=request_id, endpoint_id=target.id, api_key=target.api_key)
    return dialect(list(batch), ctx)


def header_names(target: Target, event_headers: Iterable[str], *,
                 as_selected: bool) -> dict[str, str | None]:
    """The custom headers an endpoint's body shows, lower-case name -> the name it shows each
    under: [milter] event_headers as the event names them (None; the milter: lower case), the
    endpoint's own selection as the admin wrote it (`as_selected`: native bodies and templates)
    or in lower case (dialects, which look up the names they know in lower case; SMTP2GO's
    extra fields are named from EventContext.custom_headers). The milter captures every enabled
    endpoint's selection: another endpoint's is never shown."""
    names: dict[str, str | None] = {name.lower(): None for name in event_headers}
    for name in target.custom_headers:
        names[name.lower()] = name if as_selected else name.lower()
    return names


def _cut_headers(target: Target, event_headers: Iterable[str], selected: Iterable[str] | None, *,
                 as_selected: bool) -> bool:
    """Can an event hold a custom header the target's body must not show, or show under another
    name? Not when no endpoint selects a header beyond [milter] event_headers and the target's
    own, and the target's own are shown as captured (lower case): the usual case, which then
    costs nothing per event. Unknown `selected`: yes."""
    if selected is None:
        return True
    own = {name.lower() for name in target.custom_headers}
    if own and as_selected and any(name != name.lower() for name in target.custom_headers):
        return True
    return bool(set(selected) - own - {name.lower() for name in event_headers})


def wanted_types(endpoint) -> frozenset[str]:
    """The event types an endpoint (model.endpoints.Endpoint) is sent: those of its categories
    that its body has a place for. An unknown dialect keeps every type of its categories:
    rendering then fails each attempt with the reason (and the events stay replayable)."""
    try:
        return endpoint.types & event_types(endpoint.target)
    except ValueError:
        return endpoint.types
