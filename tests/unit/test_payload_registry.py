"""The payload registry and the model agree on the names an admin can pick: the model validates
rules and endpoints against its own lists (it does not import the payload layer), and every
name it accepts must render."""
from mxhook.model import endpoints, rules
from mxhook.payloads import registry


def test_inbound_formats_are_the_rule_formats():
    assert tuple(registry.INBOUND) == rules.FORMATS


def test_event_versions_and_formats_are_the_endpoint_ones():
    assert tuple(sorted(registry.EVENT_VERSIONS)) == endpoints.VERSIONS == endpoints.supported_versions()
    assert tuple(registry.EVENT_ENCODINGS) == endpoints.FORMATS


def test_every_event_version_renders_in_every_format():
    event = {"id": "e1", "type": "delivered", "at": "2026-01-15T12:00:00.250000Z"}
    for version in endpoints.VERSIONS:
        for fmt in endpoints.FORMATS:
            body = registry.render_events(version, [event], fmt=fmt, batch_id="evb_1").body
            assert b"e1" in body
