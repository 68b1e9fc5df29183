"""The payload registry and the model agree on the names an admin can pick: the model validates
rules and endpoints against its own lists (it does not import the payload layer), and every
name it accepts must render; and the entry points pick a template, else a dialect, else the
native body."""
import json
from dataclasses import replace

import pytest

from mxhook.model import endpoints, rules
from mxhook.model.targets import Destination, Target
from mxhook.payloads import registry, templates
from mxhook.payloads.dialects import catalogue
from mxhook.payloads.events import sample_event


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


# ---------------------------------------------------------------------------------------------
# The entry points: template > dialect > native

RAW = b"From: a@x.example\r\nTo: in@ours.example\r\nSubject: hi\r\n\r\nbody\r\n"
RULE = Target.of("rule", 5, "r5", Destination("https://h.example/in"))
ENDPOINT = Target.of("endpoint", 6, "endpoint-6", Destination("https://h.example/ev"))
META = {"received": "2026-11-22T12:00:00.000000Z", "queue_id": "Q1", "mail_from": "a@x.example",
        "deliveries": [{"recipients": ["in@ours.example"], "rule": RULE.to_record()}]}
ATTEMPT = {"now": 1_800_000_000.0, "nonce": "n" * 32}
EVENT = sample_event("bounced", at="2026-11-22T12:00:00.000000Z")


def loader(stored: dict):
    return lambda kind, owner_id, version: stored.get((kind, owner_id, version))


def inbound(target: Target, **kw):
    return registry.inbound_request(target, delivery_id="d1-r5", meta=META, raw=RAW, **ATTEMPT, **kw)


def events(target: Target, batch=(EVENT,), **kw):
    return registry.event_request(target, list(batch), request_id="evb_1", **ATTEMPT, **kw)


def test_dialect_tables_are_the_catalogue_names():
    assert set(registry.INBOUND_DIALECTS) == set(catalogue.names(catalogue.INBOUND)) - {"native"}
    assert set(registry.EVENT_DIALECTS) == set(catalogue.names(catalogue.EVENTS)) - {"native"}


def test_native_is_the_native_renderer_byte_for_byte():
    for fmt in ("json", "multipart", "raw"):
        target = replace(RULE, format=fmt)
        assert inbound(target) == registry.render_inbound(fmt, delivery_id="d1-r5", meta=META, raw=RAW,
                                                          target=target)
    for fmt in ("json", "form"):
        target = replace(ENDPOINT, format=fmt, api_key="k")
        assert events(target, tz="Europe/Berlin") == registry.render_events(
            1, [EVENT], endpoint_tz="Europe/Berlin", fmt=fmt, batch_id="evb_1", endpoint_id=6, api_key="k")


def test_a_dialect_replaces_the_native_body():
    assert inbound(replace(RULE, dialect="postmark")).content_type == "application/json"
    assert "FromFull" in json.loads(inbound(replace(RULE, dialect="postmark")).body)
    body = json.loads(events(replace(ENDPOINT, dialect="mailgun", signing_key="key-1")).body)
    assert body["signature"]["token"] == ATTEMPT["nonce"]
    assert body["signature"]["timestamp"] == str(int(ATTEMPT["now"]))


def test_a_template_comes_before_the_dialect_and_is_compiled_once():
    source = '{"id": "{{ id }}"}'
    stored = {("rule", 5, 2): (templates.JSON, source)}
    target = replace(RULE, template=2, dialect="postmark")  # the catalogue refuses both; the template wins
    assert json.loads(inbound(target, templates_loader=loader(stored)).body) == {"id": "d1-r5"}
    cached = registry._COMPILED[("rule", 5, 2)]
    inbound(target, templates_loader=loader(stored))
    assert registry._COMPILED[("rule", 5, 2)] is cached
    # another rules.db with the same (kind, id, version): its own source, not the cached one
    other = {("rule", 5, 2): (templates.JSON, '{"other": "{{ id }}"}')}
    assert json.loads(inbound(target, templates_loader=loader(other)).body) == {"other": "d1-r5"}
    ep_stored = {("endpoint", 6, 1): (templates.JSON, '{"n": {{ count }}}')}
    assert json.loads(events(replace(ENDPOINT, template=1), templates_loader=loader(ep_stored)).body) == {"n": 1}


def test_a_template_missing_from_rules_db_or_broken_is_a_template_error():
    with pytest.raises(templates.TemplateError, match="template version 3 of rule r5 is not in rules.db"):
        inbound(replace(RULE, template=3), templates_loader=loader({}))
    with pytest.raises(templates.TemplateError, match="not in rules.db"):
        inbound(replace(RULE, template=3))  # no loader given
    broken = {("endpoint", 6, 1): (templates.JSON, '{"x": {{ nope }}}')}
    with pytest.raises(templates.TemplateError, match="nope"):
        events(replace(ENDPOINT, template=1), templates_loader=loader(broken))


def test_unknown_or_wrong_side_dialect_is_a_value_error():
    with pytest.raises(ValueError, match="unknown dialect 'nope'"):
        inbound(replace(RULE, dialect="nope"))
    with pytest.raises(ValueError, match="unknown dialect 'nope'"):
        events(replace(ENDPOINT, dialect="nope"))
    with pytest.raises(ValueError, match="posts inbound mail"):
        events(replace(ENDPOINT, dialect="actionmailbox"))


def test_event_types_and_events_per_request_come_from_the_catalogue():
    assert registry.event_types(ENDPOINT) == set(registry.TYPES)
    assert registry.events_per_request(ENDPOINT) is None
    smtp2go = replace(ENDPOINT, dialect="smtp2go")
    assert registry.event_types(smtp2go) == set(catalogue.DIALECTS["smtp2go"].event_types)
    assert "deferred" not in registry.event_types(smtp2go)
    assert registry.events_per_request(smtp2go) == 1
    assert registry.events_per_request(replace(ENDPOINT, dialect="sendgrid")) is None
    # not an event dialect: batched as native, each render says what is wrong
    assert registry.events_per_request(replace(ENDPOINT, dialect="nope")) is None
    assert registry.events_per_request(replace(ENDPOINT, dialect="actionmailbox")) is None


# ---------------------------------------------------------------------------------------------
# Custom headers: [milter] event_headers and each endpoint's own selection

from mxhook.payloads import events as event_payloads  # noqa: E402

CAPTURED = {**EVENT, "id": "e2", "type": "queued", "at": "2026-01-15T12:00:00.250000Z",
            "recipient": "r@x.example",
            "custom_headers": {"x-app-id": "shop-7", "x-campaign": "autumn", "x-other": "theirs"}}


def native_headers(target, event, event_headers=("X-App-Id",)):
    body = registry.event_request(target, [event], request_id="evb_h", now=0.0, nonce="n",
                                  event_headers=event_headers).body
    return json.loads(body)["events"][0]["custom_headers"]


@pytest.mark.parametrize("as_text", [False, True])
def test_an_endpoint_that_selects_nothing_shows_event_headers_only(as_text):
    event = event_payloads.v1_text(CAPTURED) if as_text else CAPTURED
    assert native_headers(ENDPOINT, event) == {"x-app-id": "shop-7"}
    assert native_headers(ENDPOINT, event, None) == CAPTURED["custom_headers"]  # not cut
    selecting = replace(ENDPOINT, custom_headers=("X-Campaign",))
    assert native_headers(selecting, event) == {"x-app-id": "shop-7", "X-Campaign": "autumn"}
    assert CAPTURED["custom_headers"]["x-other"] == "theirs"  # the stored event is not changed


def test_a_v1_text_that_keeps_its_headers_is_passed_on_as_it_is():
    text = event_payloads.v1_text(CAPTURED)
    everything = dict.fromkeys(("x-app-id", "x-campaign", "x-other"))
    assert event_payloads.select_headers([text], everything)[0] is text
    (cut,) = event_payloads.select_headers([text], {"x-campaign": None, "x-app-id": "X-App-Id"})
    assert type(cut) is event_payloads.V1Text  # still joined as it is
    assert cut == event_payloads.v1_text({**CAPTURED, "custom_headers": {"X-App-Id": "shop-7", "x-campaign": "autumn"}})
    bare = event_payloads.v1_text({**CAPTURED, "custom_headers": {}})
    assert event_payloads.select_headers([bare], {})[0] is bare
    tricky = event_payloads.v1_text({**CAPTURED, "subject": '"custom_headers":{"x":1}}',
                                     "custom_headers": {"custom_headers": "v", "x-other": "o"}})
    (cut,) = event_payloads.select_headers([tricky], {"custom_headers": "Custom_Headers"})
    cut = event_payloads.as_dict(cut)
    assert cut["custom_headers"] == {"Custom_Headers": "v"} and cut["subject"] == '"custom_headers":{"x":1}}'


def test_a_v1_text_with_headers_named_as_configured_is_passed_on_as_it_is():
    """The milter names [milter] event_headers as configured (X-App-Id): kept under that name,
    without parsing the text again."""
    text = event_payloads.v1_text({**CAPTURED, "custom_headers": {"X-App-Id": "shop-7"}})
    assert event_payloads.select_headers([text], {"x-app-id": None})[0] is text
    assert native_headers(ENDPOINT, text) == {"X-App-Id": "shop-7"}


def test_dialects_see_their_own_selection_only():
    smtp2go = replace(ENDPOINT, dialect="smtp2go", custom_headers=("X-Campaign",))
    body = registry.event_request(smtp2go, [CAPTURED], request_id="evb_h", now=0.0, nonce="n",
                                  event_headers=("x-app-id",)).body.decode()
    assert body.endswith("&X-Campaign=autumn")
    plain = replace(smtp2go, custom_headers=())
    body = registry.event_request(plain, [CAPTURED], request_id="evb_h", now=0.0, nonce="n",
                                  event_headers=("x-app-id",)).body.decode()
    assert body.endswith("&x-app-id=shop-7")
    sendgrid = replace(ENDPOINT, dialect="sendgrid", custom_headers=("X-SMTPAPI",))
    smtpapi = {**CAPTURED, "custom_headers": {"x-smtpapi": '{"category": "c1"}'}}
    (out,) = json.loads(registry.event_request(sendgrid, [smtpapi], request_id="evb_h", now=0.0,
                                               nonce="n", event_headers=()).body)
    assert out["category"] == "c1"
    (out,) = json.loads(registry.event_request(replace(sendgrid, custom_headers=()), [smtpapi],
                                               request_id="evb_h", now=0.0, nonce="n",
                                               event_headers=()).body)
    assert "category" not in out


def test_events_are_looked_at_only_when_another_endpoint_selects_more(monkeypatch):
    looked = []
    monkeypatch.setattr(event_payloads, "select_headers",
                        lambda batch, names: looked.append(names) or list(batch))

    def render(target, selected):
        registry.event_request(target, [CAPTURED], request_id="evb_h", now=0.0, nonce="n",
                               event_headers=("X-App-Id",), selected_headers=selected)

    render(ENDPOINT, frozenset())  # nobody selects anything: nothing to cut
    render(replace(ENDPOINT, custom_headers=("x-campaign",)), frozenset({"x-campaign"}))  # its own, as captured
    render(replace(ENDPOINT, dialect="smtp2go", custom_headers=("X-Campaign",)), frozenset({"x-campaign"}))
    assert looked == []
    render(ENDPOINT, frozenset({"x-campaign"}))  # another endpoint's
    render(replace(ENDPOINT, custom_headers=("X-Campaign",)), frozenset({"x-campaign"}))  # named as given
    render(ENDPOINT, None)  # not known
    assert len(looked) == 3



from hypothesis import given, settings, strategies as st  # noqa: E402

NAME_TEXT = st.text(st.sampled_from('ab-"\\:{},é\x00'), max_size=6)


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(NAME_TEXT, NAME_TEXT, max_size=4),
       names=st.dictionaries(NAME_TEXT, st.one_of(st.none(), NAME_TEXT.filter(bool)), max_size=4),
       subject=NAME_TEXT)
def test_cutting_a_pre_rendered_event_is_cutting_its_dict(headers, names, subject):
    names = {k.lower(): v for k, v in names.items()}
    event = {**CAPTURED, "subject": subject, "custom_headers": headers}
    (from_text,) = event_payloads.select_headers([event_payloads.v1_text(event)], names)
    (from_dict,) = event_payloads.select_headers([event], names)
    assert type(from_text) is event_payloads.V1Text
    assert event_payloads.as_dict(from_text)["custom_headers"] == from_dict["custom_headers"]
    assert event_payloads.as_dict(from_text)["subject"] == subject
