"""Event endpoints: where delivery events (bounces, deliveries, blocks) are posted, in
batches. Writes go to rules.db; the running spooler picks them up within about a second."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from mxhook import config as configmod
from mxhook import spool
from mxhook.model import endpoints as endpointsmod
from mxhook.model import events
from mxhook.model.targets import Destination
from mxhook.services import targets
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.services.targets import Warn, no_warnings
from mxhook.store import rulesdb

SAMPLE_TYPES = events.TYPES  # sample_event makes one of each


@dataclass(frozen=True)
class EndpointView:
    endpoint: endpointsmod.Endpoint
    keys: list | None  # signing keys (None: not asked for)

    def as_dict(self) -> dict:
        """JSON-able, secrets masked (signing keys too: public keys in full)."""
        ep = self.endpoint
        d = {
            "id": ep.id, "enabled": ep.enabled, "events": list(ep.categories),
            "interval": ep.interval, "max_events": ep.max_events, "version": ep.version,
            "timezone": ep.timezone, **targets.as_dict(ep.destination),
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


@translated()
def add(cfg: configmod.Config, *, destination: Destination, categories=None,
        interval: int | None = None, max_events: int | None = None, version: int | None = None,
        timezone: str | None = None, enabled: bool = True, ed25519: bool = False,
        warn: Warn = no_warnings) -> EndpointView:
    """The endpoint added, with its signing keys (secrets in full: shown this once)."""
    targets.check_secrets(destination, what="endpoint")
    new = endpointsmod.with_defaults(
        destination=destination, categories=_categories(categories or ""), interval=interval,
        max_events=max_events, version=version, timezone=timezone, enabled=enabled,
    )
    endpointsmod.validate(new)  # before the database is created or opened for writing
    targets.check_egress(cfg, destination.url, warn)
    with rules_store(cfg, create=True) as store:
        added = store.add_endpoint(new, ed25519=ed25519)
        return EndpointView(added, store.signing_keys("endpoint", added.id))


@translated()
def list_all(cfg: configmod.Config, *, with_keys: bool = False) -> list[EndpointView]:
    with rules_store(cfg) as store:
        return [EndpointView(ep, store.signing_keys("endpoint", ep.id) if with_keys else None)
                for ep in store.list_endpoints()]


@translated()
def show(cfg: configmod.Config, key) -> EndpointView:
    with rules_store(cfg) as store:
        ep = get_or_fail(store, key)
        return EndpointView(ep, store.signing_keys("endpoint", ep.id))


@translated()
def edit(cfg: configmod.Config, key, *, destination: Mapping[str, object] | None = None,
         clear_auth: bool = False, categories=None, interval: int | None = None,
         max_events: int | None = None, version: int | None = None, timezone: str | None = None,
         enabled: bool | None = None, warn: Warn = no_warnings) -> endpointsmod.Endpoint:
    """Change endpoint `key` (id or URL); None keeps a value. `destination`: the
    destination's fields to change (Destination.edited). Changes apply to batches made from
    now on."""
    dest_changes = {k: v for k, v in (destination or {}).items() if v is not None}
    targets.check_secrets(dest_changes, what="endpoint")
    given = [categories, interval, max_events, version, timezone, enabled]
    if all(v is None for v in given) and not dest_changes and not clear_auth:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    with rules_store(cfg) as store:
        old = get_or_fail(store, key)
        changes = {name: value for name, value in (
            ("interval", interval), ("max_events", max_events), ("version", version),
            ("timezone", timezone), ("enabled", enabled)) if value is not None}
        changes["destination"] = old.destination.edited(dest_changes, clear_auth=clear_auth)
        if categories is not None:
            changes["categories"] = _categories(categories)
        candidate = endpointsmod.validate(dataclasses.replace(old, **changes))
        if "url" in dest_changes:
            targets.check_egress(cfg, candidate.destination.url, warn)
        return store.replace_endpoint(old.id, candidate)


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
    """Post one sample event to the endpoint now, through the spooler's delivery client (same
    payload version, format, time zone, auth, signing and timeout)."""
    from mxhook.delivery import webhook
    from mxhook.payloads.events import sample_event
    from mxhook.payloads.registry import render_events

    if event_type not in SAMPLE_TYPES:
        raise Invalid(f"no sample event of type {event_type!r} (known: {', '.join(SAMPLE_TYPES)})")
    with rules_store(cfg) as store:
        ep = get_or_fail(store, key)
    signing_keys = rulesdb.SigningKeys(cfg.rules_db)
    try:
        keys = signing_keys.active("endpoint", ep.id)
    finally:
        signing_keys.close()
    batch_id = "evb_test_" + spool.new_id()
    rendered = render_events(ep.version, [sample_event(event_type)], endpoint_tz=ep.timezone,
                             fmt=ep.destination.format, batch_id=batch_id, endpoint_id=ep.id,
                             api_key=ep.destination.api_key)
    session = webhook.make_session(cfg.value("http", "allow_networks"))
    outcome = webhook.deliver(session, ep.target, rendered.body,
                              rendered.content_type, batch_id,
                              user_agent=cfg.get("spooler", "user_agent"),
                              max_response_bytes=cfg.value("spooler", "max_response_bytes"), keys=keys)
    return SampleSent(ep, batch_id, outcome)
