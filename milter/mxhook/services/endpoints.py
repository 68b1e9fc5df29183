"""Event endpoints: where delivery events (bounces, deliveries, blocks) are posted, in
batches. Writes go to rules.db; the running spooler picks them up within about a second."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from mxhook import config as configmod
from mxhook import spool
from mxhook.model import endpoints as endpointsmod
from mxhook.model import events
from mxhook.model.targets import Destination
from mxhook.payloads.dialects import catalogue, msndr, paubox, smtp2go
from mxhook.services import targets
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.services.targets import TemplateGiven, Warn, no_warnings
from mxhook.store import rulesdb

SAMPLE_TYPES = events.TYPES  # sample_event makes one of each
SIDE = catalogue.EVENTS
HEADERLESS_DIALECTS = (paubox.NAME, msndr.NAME)  # bodies with no place for message headers


@dataclass(frozen=True)
class EndpointView:
    endpoint: endpointsmod.Endpoint
    keys: list | None  # signing keys (None: not asked for)
    template: dict | None = None  # targets.template_view

    def as_dict(self, *, template_source: bool = False) -> dict:
        """JSON-able, secrets masked (signing keys too: public keys in full); the template's
        source only with `template_source`."""
        ep = self.endpoint
        d = {
            "id": ep.id, "enabled": ep.enabled, "events": list(ep.categories),
            "interval": ep.interval, "max_events": ep.max_events, "version": ep.version,
            "timezone": ep.timezone, "custom_headers": list(ep.custom_headers),
            **targets.as_dict(ep.destination, self.template,
                                                       template_source=template_source),
            "created": ep.created, "updated": ep.updated,
        }
        if self.keys is not None:
            d["signing"] = [k.to_public_dict() for k in self.keys]
        return d


def _categories(value) -> tuple[str, ...]:
    """'bounces,blocks' or ['bounces', 'blocks']."""
    return endpointsmod.parse_categories(value if isinstance(value, str) else ",".join(value))


def get_or_fail(store: rulesdb.RulesStore, key) -> endpointsmod.Endpoint:
    found = store.get_endpoint(key)
    if found is None:
        raise NotFound(f"no endpoint {key!r} (give its id or URL; see `mxhook endpoint list`)")
    return found


def _view(store: rulesdb.RulesStore, ep: endpointsmod.Endpoint, keys: list | None) -> EndpointView:
    return EndpointView(ep, keys, targets.template_view(store, "endpoint", ep.id, ep.destination))


def _check_dialect(ep: endpointsmod.Endpoint, template: bool, warn: Warn) -> None:
    dialect = catalogue.check(ep.destination, SIDE, template=template)
    targets.warn_unposted(dialect, [t for c in ep.categories for t in events.CATEGORIES[c]], warn)
    _warn_unposted_headers(ep, warn)


def _warn_unposted_headers(ep: endpointsmod.Endpoint, warn: Warn) -> None:
    """Custom headers the endpoint's body has no place for (docs/payloads.md, "Custom headers")."""
    names, dialect = ep.custom_headers, ep.destination.dialect
    if names and dialect in HEADERLESS_DIALECTS:
        warn(f"the {dialect} dialect's body has no place for custom headers: "
             f"{', '.join(names)} will not be posted")
    shadowed = [n for n in names if n.lower() in smtp2go.STANDARD_FIELDS]
    if shadowed and dialect == smtp2go.NAME:
        warn(f"{', '.join(shadowed)}: named as a standard field of SMTP2GO's body, which a custom "
             "header never replaces: not posted")


@translated()
def add(cfg: configmod.Config, *, destination: Destination, categories=None,
        interval: int | None = None, max_events: int | None = None, version: int | None = None,
        timezone: str | None = None, enabled: bool = True, ed25519: bool = False,
        template: TemplateGiven | None = None, custom_headers: Sequence[str] = (),
        warn: Warn = no_warnings) -> EndpointView:
    """The endpoint added, with its signing keys (secrets in full: shown this once).
    `template`: its body's jinja2 template (stored as version 1); `custom_headers`: the
    headers its bodies carry besides [milter] event_headers (SMTP2GO's custom headers)."""
    targets.check_secrets(destination, what="endpoint")
    destination = Destination(**targets.with_url_credentials(
        dataclasses.asdict(destination), destination.dialect))
    new_template = targets.new_template(template, SIDE) if template is not None else None
    new = endpointsmod.with_defaults(
        destination=destination, categories=_categories(categories or ""), interval=interval,
        max_events=max_events, version=version, timezone=timezone, enabled=enabled,
        custom_headers=tuple(custom_headers),
    )
    new = endpointsmod.validate(new)  # before the database is created or opened for writing
    _check_dialect(new, new_template is not None, warn)
    targets.check_egress(cfg, destination.url, warn)
    with rules_store(cfg, create=True) as store:
        added = store.add_endpoint(new, ed25519=ed25519, template=new_template)
        return _view(store, added, store.signing_keys("endpoint", added.id))


@translated()
def list_all(cfg: configmod.Config, *, with_keys: bool = False) -> list[EndpointView]:
    with rules_store(cfg) as store:
        return [_view(store, ep, store.signing_keys("endpoint", ep.id) if with_keys else None)
                for ep in store.list_endpoints()]


@translated()
def show(cfg: configmod.Config, key) -> EndpointView:
    with rules_store(cfg) as store:
        ep = get_or_fail(store, key)
        return _view(store, ep, store.signing_keys("endpoint", ep.id))


@translated()
def edit(cfg: configmod.Config, key, *, destination: Mapping[str, object] | None = None,
         clear_auth: bool = False, categories=None, interval: int | None = None,
         max_events: int | None = None, version: int | None = None, timezone: str | None = None,
         enabled: bool | None = None, template: TemplateGiven | None = None,
         no_template: bool = False, custom_headers: Sequence[str] | None = None,
         warn: Warn = no_warnings) -> endpointsmod.Endpoint:
    """Change endpoint `key` (id or URL); None keeps a value. `destination`: the
    destination's fields to change (Destination.edited). Changes apply to batches made from
    now on. `template`: stored as the next version of the endpoint's template; `no_template`:
    back to the dialect's body (stored versions stay); `custom_headers`: the new selection
    (empty: none).

    Events already pending go out in the endpoint's new settings; a batch made before (its
    events fixed, posted or not) keeps its id and is posted in them too, but never in more
    events than the new payload takes in one request: the spooler splits it
    (store/endpointbatches.py)."""
    dest_changes = {k: v for k, v in (destination or {}).items() if v is not None}
    targets.check_secrets(dest_changes, what="endpoint")
    if template is not None and no_template:
        raise Invalid("give either --template or --no-template")
    given = [categories, interval, max_events, version, timezone, enabled, template, custom_headers]
    if all(v is None for v in given) and not dest_changes and not clear_auth and not no_template:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    new_template = targets.new_template(template, SIDE) if template is not None else None
    with rules_store(cfg) as store:
        old = get_or_fail(store, key)
        dest_changes = targets.with_url_credentials(
            dest_changes, dest_changes.get("dialect", old.destination.dialect))
        changes = {name: value for name, value in (
            ("interval", interval), ("max_events", max_events), ("version", version),
            ("timezone", timezone), ("enabled", enabled)) if value is not None}
        changes["destination"] = targets.edited(old.destination, dest_changes,
                                                clear_auth=clear_auth, no_template=no_template)
        if categories is not None:
            changes["categories"] = _categories(categories)
        if custom_headers is not None:
            changes["custom_headers"] = tuple(custom_headers)
        candidate = endpointsmod.validate(dataclasses.replace(old, **changes))
        _check_dialect(candidate, new_template is not None
                       or candidate.destination.template is not None, warn)
        if "url" in dest_changes:
            targets.check_egress(cfg, candidate.destination.url, warn)
        return store.replace_endpoint(old.id, candidate, template=new_template)


@translated()
def remove(cfg: configmod.Config, key) -> endpointsmod.Endpoint:
    """Events still pending for it are marked failed (by the spooler)."""
    with rules_store(cfg) as store:
        return store.remove_endpoint(key)


@translated()
def rotate_secret(cfg: configmod.Config, key, *, overlap: float,
                  ed25519: bool = False) -> tuple[endpointsmod.Endpoint, targets.Rotation]:
    with rules_store(cfg) as store:
        ep = get_or_fail(store, key)
        return ep, targets.rotate(store, "endpoint", ep.id, overlap, ed25519)


@dataclass(frozen=True)
class SampleSent:
    endpoint: endpointsmod.Endpoint
    batch_id: str  # its webhook-id
    outcome: object  # delivery.webhook's outcome: status, status_code, duration_ms, error, ...


@translated()
def send_test(cfg: configmod.Config, key, event_type: str = "bounced") -> SampleSent:
    """Post one sample event to the endpoint now, through the spooler's delivery client and
    payload entry point (same template or dialect, payload version, format, time zone, auth,
    signing and timeout). The type must be one the endpoint's payload sends."""
    import secrets
    import time

    from mxhook.delivery import webhook
    from mxhook.payloads import registry
    from mxhook.payloads.events import sample_event

    if event_type not in SAMPLE_TYPES:
        raise Invalid(f"no sample event of type {event_type!r} (known: {', '.join(SAMPLE_TYPES)})")
    with rules_store(cfg) as store:
        ep = get_or_fail(store, key)
    sent = registry.event_types(ep.target)
    if event_type not in sent:
        raise Invalid(f"the {ep.destination.dialect} dialect sends no {event_type} events "
                      f"(it sends: {', '.join(t for t in SAMPLE_TYPES if t in sent)})")
    signing_keys = rulesdb.SigningKeys(cfg.rules_db)
    stored_templates = rulesdb.Templates(cfg.rules_db)
    try:
        keys = signing_keys.active("endpoint", ep.id)
        batch_id = "evb_test_" + spool.new_id()
        try:
            rendered = registry.event_request(
                ep.target, [sample_event(event_type)], request_id=batch_id, now=time.time(),
                nonce=secrets.token_hex(16), version=ep.version, tz=ep.timezone,
                templates_loader=stored_templates.get)
        except ValueError as exc:  # a template's error: what the spooler would record
            raise Invalid(f"cannot render the endpoint's payload: {exc}") from None
    finally:
        signing_keys.close()
        stored_templates.close()
    session = webhook.make_session(cfg.value("http", "allow_networks"))
    outcome = webhook.deliver(session, ep.target, rendered.body,
                              rendered.content_type, batch_id,
                              user_agent=cfg.get("spooler", "user_agent"),
                              max_response_bytes=cfg.value("spooler", "max_response_bytes"), keys=keys)
    return SampleSent(ep, batch_id, outcome)
