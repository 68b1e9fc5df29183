"""Event endpoints: the model and its validation (pure)."""
from __future__ import annotations

import pytest

from mxhook.model import endpoints
from mxhook.model.endpoints import Endpoint
from mxhook.model.rules import RuleError
from mxhook.model.targets import Destination, DestinationError
from tests.support.destinations import routed

URL = "https://hooks.example.net/events"


def test_defaults_and_pinned_latest_version():
    ep = endpoints.validate(Endpoint(Destination(URL)))
    assert ep.categories == ("bounces", "deliveries", "blocks")
    dest = ep.destination
    assert (ep.interval, ep.max_events, dest.timeout, ep.timezone, dest.format) == (10, 1000, 30, "UTC", "json")
    assert (dest.retry_interval, dest.retry_period) == (60, 3)
    assert ep.version == endpoints.latest_version() == 1
    assert ep.enabled and not dest.allow_http


def test_categories_canonical_order_and_types():
    ep = endpoints.validate(Endpoint(Destination(URL),
                                     categories=endpoints.parse_categories(" Blocks,bounces ")))
    assert ep.categories == ("bounces", "blocks")
    assert ep.types == {"bounced", "blocked", "registered", "deleted"}
    assert ep.wants("bounced") and not ep.wants("succeeded")
    assert endpoints.parse_categories("") == ("bounces", "deliveries", "blocks")
    assert endpoints.parse_categories("all") == endpoints.CATEGORIES


@pytest.mark.parametrize("fields, match", [
    ({"interval": 0}, "interval must be between 1 and 600 seconds, got 0"),
    ({"interval": 601}, "interval must be between 1 and 600"),
    ({"max_events": 99}, "max events must be between 100 and 10000"),
    ({"max_events": 10001}, "max events must be between 100 and 10000"),
    ({"timeout": 0}, "timeout must be between 1 and 999"),
    ({"timeout": 1000}, "timeout must be between 1 and 999"),
    ({"retry_interval": 9}, "retry interval must be between 10 and 600"),
    ({"retry_period": 11}, "retry period must be between 1 and 10 days"),
    ({"format": "xml"}, "format must be one of json, form"),
    ({"version": 7}, "payload version 7 does not exist"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"timezone": "../../etc/passwd"}, "unknown time zone"),
    ({"timezone": ""}, "time zone is empty"),
    ({"basic_auth": "u:p", "bearer": "t"}, "either Basic auth or a Bearer token"),
    ({"basic_auth": "nocolon"}, "USER:PASSWORD"),
    ({"bearer": ""}, "--bearer must not be empty"),
    ({"url": "http://hooks.example.net/e"}, "not HTTPS"),
    ({"url": "ftp://hooks.example.net/e"}, "must be an https:// URL"),
    ({"url": "https://u:p@hooks.example.net/e"}, "credentials"),
    ({"categories": ("bounces", "spam")}, "unknown event category spam"),
])
def test_invalid(fields, match):
    with pytest.raises((RuleError, DestinationError), match=match):
        endpoints.validate(Endpoint(**routed(**{"url": URL, **fields})))


def test_http_allowed_explicitly_and_iana_zones():
    ep = endpoints.validate(Endpoint(Destination("http://10.0.0.5/e", allow_http=True),
                                     timezone="America/New_York"))
    assert ep.timezone == "America/New_York"
    assert endpoints.check_timezone("Etc/UTC") == "Etc/UTC"


def test_an_endpoint_has_a_delivery_target():
    ep = endpoints.validate(Endpoint(Destination(URL, bearer="tok", timeout=5, retry_interval=20),
                                     id=4))
    t = ep.target
    assert (t.url, t.bearer, t.timeout, t.retry.interval, t.retry.period) == (URL, "tok", 5, 20, 3)
    assert (t.kind, t.id, t.name, t.allow_http) == ("endpoint", 4, "endpoint-4", False)


def test_with_defaults_ignores_none():
    ep = endpoints.with_defaults(destination=Destination(URL), interval=None, max_events=500)
    assert (ep.max_events, ep.interval) == (500, endpoints.DEFAULTS["interval"])
