"""msndr's webhook API (seed 003: `POST/GET/DELETE /v1/email/webhook`, body `{"url": ...}`)
over mxhook's event endpoints, so a client written for msndr configures mxhook unchanged.

The msndr webhook is an event endpoint with the msndr dialect (one JSON event per request, in
msndr's payload shape and event names): the one with the lowest id when there are several.
Setting it adds one (every event category; what the dialect has no name for is not posted) or
changes that one's URL; removing it removes that endpoint. Endpoints of other dialects are
never touched."""
from __future__ import annotations

import os

from mxhook import config as configmod
from mxhook.model.targets import Destination
from mxhook.payloads.dialects import msndr as msndr_dialect
from mxhook.services import endpoints
from mxhook.services.errors import Invalid, NotFound

DIALECT = msndr_dialect.NAME


def _current(cfg: configmod.Config):
    if not os.path.exists(cfg.rules_db):  # nothing set yet; GET must not create rules.db
        return None
    found = [v.endpoint for v in endpoints.list_all(cfg) if v.endpoint.destination.dialect == DIALECT]
    return min(found, key=lambda ep: ep.id) if found else None


def get(cfg: configmod.Config) -> dict:
    """{"url": ...} of the msndr webhook; NotFound when none is set."""
    ep = _current(cfg)
    if ep is None:
        raise NotFound("no webhook is set (POST /v1/email/webhook sets one)", "webhook_not_set")
    return {"url": ep.destination.url}


def set_url(cfg: configmod.Config, url) -> tuple[dict, int]:
    """({"url": ...}, the endpoint's id): the webhook's endpoint added, or its URL changed."""
    if not isinstance(url, str) or not url:
        raise Invalid("url: give the endpoint's URL as a string", "url_required")
    ep = _current(cfg)
    if ep is None:
        view = endpoints.add(cfg, destination=Destination(url=url, dialect=DIALECT))
        return {"url": view.endpoint.destination.url}, view.endpoint.id
    if ep.destination.url != url:
        ep = endpoints.edit(cfg, ep.id, destination={"url": url})
    return {"url": ep.destination.url}, ep.id


def remove(cfg: configmod.Config) -> tuple[dict, int]:
    """({"url": ...} of the webhook removed, the endpoint's id)."""
    ep = _current(cfg)
    if ep is None:
        raise NotFound("no webhook is set", "webhook_not_set")
    endpoints.remove(cfg, ep.id)
    return {"url": ep.destination.url}, ep.id
