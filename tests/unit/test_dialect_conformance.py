"""The conformance suite every payload runs: each event dialect and each inbound dialect (the
native formats and a sample JSON template included) gets the same scenarios, and its body is
read the way a receiver reads it, by its content type (dialect_conformance_support.decode).

Scenarios: hostile subject (quotes, `{{ }}`, CR/LF, NUL and other control characters, RFC 2047
with an unknown charset, lone surrogates, 100 kB; fixed cases and hypothesis), multi-recipient,
non-UTF-8 body, an attachment over max_attachment_size and a message over max_payload_size, the
same body on every attempt (but for documented per-attempt fields), one event per request or
batches up to the largest batch size, event types a dialect does not send, and the content
type.

`EVENT_DIALECTS` and `INBOUND_DIALECTS` are what runs: every dialect of the catalogue, the
native formats and a template, each rendered through the registry's entry point as the spooler
renders it (payloads/registry.py); what a dialect documents differently from the rest is in the
few tables after them, keyed by name, each entry saying where it is documented. A module in
payloads/dialects the registry does not render with fails test_every_dialect_module_runs_the_suite.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from email.utils import parseaddr

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from mxhook.model.endpoints import MAX_EVENTS_RANGE
from mxhook.model.events import ENGAGEMENT_TYPES, TYPES
from mxhook.model.rules import Rule
from mxhook.model.targets import Destination, Target
from mxhook.payloads import dialects as dialects_package, inbound, registry, templates
from mxhook.payloads.dialects import EventContext, InboundContext, catalogue
from mxhook.payloads.encodings import Rendered, quote_param
from mxhook.payloads.events import sample_event, v1_text
from tests.unit.dialect_conformance_support import (carries_bytes, decode, encoded_word, media_type,
                                                    mime, recovered, without_boundary)
from tests.unit.seed_dialect_cases import EVENTS as EVENT_CASES

# ---------------------------------------------------------------------------------------------
# What runs


EVENT_TEMPLATE_SOURCE = (
    '{"batch": "{{ batch_id }}", "count": {{ count }}, "events": [{% for e in events %}'
    '{"id": "{{ e.id }}", "type": "{{ e.type }}", "at": "{{ e.at }}", "to": "{{ e.recipient }}", '
    '"subject": "{{ e.subject }}", "reply": {{ e.reply|tojson }}}'
    '{% if not loop.last %},{% endif %}{% endfor %}]}')
INBOUND_TEMPLATE_SOURCE = (
    '{"id": "{{ id }}", "rcpt": {{ envelope.recipients|tojson }}, "from": {{ message.from|tojson }}, '
    '"to": {{ message.to|tojson }}, "cc": {{ message.cc|tojson }}, "subject": {{ message.subject|tojson }}, '
    '"text": "{{ message.text }}", "html": {{ message.html|tojson }}, "files": [{% for a in message.attachments %}'
    '{"name": {{ a.filename|tojson }}, "content": {{ a.content|tojson }}, '
    '"omitted": {{ a.omitted_reason|default(none)|tojson }}}{% if not loop.last %},{% endif %}{% endfor %}]}')
EVENT_OWNER, RULE_OWNER = 3, 9
# What rules.db holds for the suite's template targets (version 1 of each owner's template)
STORED_TEMPLATES = {("endpoint", EVENT_OWNER, 1): (templates.JSON, EVENT_TEMPLATE_SOURCE),
                    ("rule", RULE_OWNER, 1): (templates.JSON, INBOUND_TEMPLATE_SOURCE)}


def _stored_template(kind, owner_id, version):
    return STORED_TEMPLATES.get((kind, owner_id, version))


ENDPOINT = Target.of("endpoint", EVENT_OWNER, f"endpoint-{EVENT_OWNER}", Destination("https://app.example/hooks/ev"))
TARGET = Rule(name="conformance", destination=Destination("https://app.example/hooks/in"), id=RULE_OWNER).target


def _event_target(dialect: str = "native", fmt: str = "json", template: int | None = None) -> Target:
    return dataclasses.replace(ENDPOINT, dialect=dialect, format=fmt, template=template)


def _events_entry(target: Target):
    """What the spooler calls for an endpoint with `target` (its key and api_key from the ctx)."""
    def render(events, ctx: EventContext):
        t = dataclasses.replace(target, id=ctx.endpoint_id, api_key=ctx.api_key, signing_key=ctx.signing_key)
        return registry.event_request(t, events, request_id=ctx.request_id, now=ctx.now, nonce=ctx.nonce,
                                      tz="UTC", templates_loader=_stored_template)
    render.target = target
    return render


def _inbound_entry(dialect: str = "native", fmt: str = "json", template: int | None = None,
                   url_suffix: str = ""):
    """What the spooler calls for a rule with this dialect, format or template."""
    def render(delivery: inbound.Delivery, ctx: InboundContext):
        target = dataclasses.replace(delivery.target, dialect=dialect, format=fmt, template=template,
                                     signing_key=ctx.signing_key, url=delivery.target.url + url_suffix)
        return registry.delivery_request(dataclasses.replace(delivery, target=target), ctx,
                                         templates_loader=_stored_template)
    return render


# name -> (events, EventContext) -> Rendered: every event dialect of the catalogue, the native
# formats, a JSON template
EVENT_DIALECTS = {
    "native": _events_entry(_event_target()),
    "native-form": _events_entry(_event_target(fmt="form")),
    **{name: _events_entry(_event_target(name)) for name in catalogue.names(catalogue.EVENTS)
       if name != catalogue.NATIVE},
    "template-json": _events_entry(_event_target(template=1)),
}
# name -> (inbound.Delivery, InboundContext) -> Rendered: every inbound dialect of the
# catalogue, the native formats, Mailgun's raw-MIME variant (the same dialect, for a URL ending
# in `mime`), a JSON template
INBOUND_DIALECTS = {
    **{fmt: _inbound_entry(fmt=fmt) for fmt in registry.INBOUND},
    **{name: _inbound_entry(name) for name in catalogue.names(catalogue.INBOUND) if name != catalogue.NATIVE},
    "mailgun-mime": _inbound_entry("mailgun", url_suffix="/mime"),
    "template-json": _inbound_entry(template=1),
}

# What a dialect documents differently from the rest (name -> where it says so).
# Event dialects whose body has no subject.
NO_SUBJECT = {"sendgrid": "docs/payloads.md, sendgrid events: no subject field",
              "msndr": "dialects/msndr.py: event.data has no subject"}
# Fields new on every attempt (their names, at any depth).
PER_ATTEMPT = {"mailgun": ("timestamp", "token", "signature"),  # dialects/mailgun.py: the signature
               "mailgun-mime": ("timestamp", "token", "signature")}
# Attachments over a cap that are left out without a marker in the body.
UNMARKED_OMISSION = {"mailgun": "docs/payloads.md, mailgun inbound: files over a cap are not posted; "
                                "attachment-count counts the posted ones"}
# Bodies still over max_payload_size without attachment contents that are refused, not sent.
OVER_CAP_REFUSED = {"template-json": "payloads/templates.py render: TemplateError, a failed attempt"}

# Defects found that are outside the dialect modules: (test, dialect, case or None for every
# case) -> reason. Each runs as a strict xfail, so fixing it fails the suite until it is removed.
KNOWN_DEFECTS = {
}


@pytest.fixture(autouse=True)
def known_defect(request):
    params = getattr(request.node, "callspec", None)
    params = params.params if params else {}
    test = request.node.originalname
    reason = (KNOWN_DEFECTS.get((test, params.get("name"), params.get("case")))
              or KNOWN_DEFECTS.get((test, params.get("name"), None)))
    if reason:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


KEY = "key-conformance"
CTX = EventContext(request_id="evr_conformance", now=1_800_000_000.0, nonce="nonce-attempt-1",
                   endpoint_id=3, api_key="k-1", signing_key=KEY)
RETRY = dataclasses.replace(CTX, now=CTX.now + 3600.5, nonce="nonce-attempt-2")
ICTX = InboundContext(now=1_800_000_000.0, nonce="nonce-attempt-1", signing_key=KEY)
IRETRY = dataclasses.replace(ICTX, now=ICTX.now + 3600.5, nonce="nonce-attempt-2")
MAX_BATCH = MAX_EVENTS_RANGE[1]

META = {"received": "2026-11-22T12:00:00.123456Z", "queue_id": "4XbConf001",
        "mail_from": "bounces@sender.example", "client_addr": "192.0.2.1",
        "client_name": "mail.sender.example", "helo": "mail.sender.example",
        "header_from": "ann@sender.example", "subject": "Conformance subject", "message_id": None,
        "deliveries": [{"recipients": ["in@ours.example"], "rule": TARGET.to_record()}]}


def events_per_request(name: str) -> int | None:
    """1 for one event per request, None for batches (native and templates batch): what the
    spooler batches by."""
    return registry.events_per_request(EVENT_DIALECTS[name].target)


def event_types(name: str) -> frozenset[str]:
    """What the spooler fans out to such an endpoint."""
    return registry.event_types(EVENT_DIALECTS[name].target)


def event(case: str = "bounced_hard", **changes) -> dict:
    return {**EVENT_CASES[case], **changes}


def sent_cases(name: str) -> dict[str, dict]:
    types = event_types(name)
    return {case: e for case, e in EVENT_CASES.items()
            if e["type"] in types and case in ("queued", "succeeded", "deferred", "bounced_hard",
                                               "bounced_soft", "failed_expired", "blocked",
                                               "registered", "deleted")}


def delivery(raw: bytes, recipients=("in@ours.example",)) -> inbound.Delivery:
    """The delivery of `raw`; its record's subject is the message's (as the milter reads it)."""
    d = inbound.Delivery.of(delivery_id="0187conformance-conformance", meta=META, raw=raw,
                            target=TARGET, recipients=recipients)
    subject = native_message(d)["subject"]
    return dataclasses.replace(d, message=dataclasses.replace(d.message, subject=subject))


def native_message(d: inbound.Delivery, ctx: InboundContext = ICTX) -> dict:
    """The reference reading of a message: the native document's `message`."""
    return inbound.native_document(d, max_attachment_size=ctx.max_attachment_size)["message"]


def sends_raw(decoded, raw: bytes) -> bool:
    """Whether the body carries the message as it came (message/rfc822, or a field holding
    it as text: UTF-8, Latin-1 or with U+FFFD for what is not UTF-8, as the dialect documents)."""
    if decoded.raw is not None:
        return decoded.raw.endswith(raw)
    forms = {raw.decode("utf-8", "replace"), raw.decode("latin-1")}
    return any(text in forms for text in decoded.texts())


EVENTS = pytest.mark.parametrize("name", sorted(EVENT_DIALECTS))
INBOUND = pytest.mark.parametrize("name", sorted(INBOUND_DIALECTS))


def test_every_dialect_module_runs_the_suite():
    """Every catalogue dialect runs the suite, through the registry's entry points; every module
    in payloads/dialects (but _-prefixed ones and the catalogue) is one the registry renders
    with: its event_request in registry.EVENT_DIALECTS, its inbound_request (or every entry of
    its INBOUND_DIALECTS) in registry.INBOUND_DIALECTS."""
    assert set(catalogue.names(catalogue.EVENTS)) <= set(EVENT_DIALECTS)
    assert set(catalogue.names(catalogue.INBOUND)) - {catalogue.NATIVE} <= set(INBOUND_DIALECTS)
    event_fns = set(registry.EVENT_DIALECTS.values())
    inbound_fns = set(registry.INBOUND_DIALECTS.values())
    names = [m.name for m in pkgutil.iter_modules(dialects_package.__path__)
             if not m.name.startswith("_") and m.name != "catalogue"]  # the catalogue lists them
    assert names
    for name in names:
        module = importlib.import_module(f"{dialects_package.__name__}.{name}")
        event_fn = getattr(module, "event_request", None)
        inbound_of = (list(getattr(module, "INBOUND_DIALECTS", {}).values())
                      or [getattr(module, "inbound_request", None)])
        assert event_fn or any(inbound_of), f"dialects/{name}.py renders nothing"
        assert event_fn is None or event_fn in event_fns, f"{name}.event_request not in the registry"
        for fn in filter(None, inbound_of):
            assert fn in inbound_fns, f"{name}.{fn.__name__} not in the registry"
    assert set(NO_SUBJECT) <= set(EVENT_DIALECTS)
    assert set(UNMARKED_OMISSION) | set(OVER_CAP_REFUSED) <= set(INBOUND_DIALECTS)
    assert set(PER_ATTEMPT) <= set(EVENT_DIALECTS) | set(INBOUND_DIALECTS)
    assert {name for _, name, _ in KNOWN_DEFECTS} <= set(EVENT_DIALECTS) | set(INBOUND_DIALECTS)


# ---------------------------------------------------------------------------------------------
# Hostile subject

HOSTILE_SUBJECTS = {
    "quotes": "\"double\" 'single' `back` \\ \\\" \\u0000 </script>",
    "braces": "{{ 7*7 }} {% if x %}{# c #} ${x} %(x)s {0}",
    "crlf": "first\r\nBcc: evil@x.example\r\n\r\nbody",
    "controls": "nul\x00 bel\x07 esc\x1b[31m del\x7f nel\x85 ls\u2028 ps\u2029 tab\t vt\x0b",
    "form_chars": "a&b=c+d%20e;f?g#h",
    "bad_charset": "=?x-unknown?q?abc?= =?utf-8?q?broken=ZZ?= =?utf-8?b?!!!?=",
    "surrogateescape": b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape"),
    "lone_surrogate": "lone \ud800 high, \udfff low, pair \ud83d\ude00",
    "non_ascii": "caf\u00e9 \u65e5\u672c \U0001f600 \u202eevil",
    "100kB": "\u00e9x" * 34_000 + "{{ end }}",
}
HOSTILE_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(st.characters(exclude_categories=()), max_size=30),  # surrogates included
    st.lists(st.sampled_from(['"', "\\", "{{", "}}", "{%", "\r\n", "\n", "\x00", "\x1b", "&", "=",
                              "+", "%", "\u2028", "\udcff", "\ud800", "=?x-unknown?q?a?=", "é"]),
             max_size=12).map("".join),
)
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# The mail's text fields an event carries: a dialect that has one as it is in its body (with
# plain text) has it as it is with hostile text too, lone surrogates aside. A Message-ID has
# its angle brackets (some dialects document it without: then it is not compared).
MAIL_FIELDS = ("subject", "header_from", "sender", "recipient", "message_id", "reply")


def _field_value(field: str, text: str) -> str:
    return f"<{field}:{text}>" if field == "message_id" else f"{field}:{text}"


@functools.lru_cache(maxsize=None)
def carried_fields(name: str) -> tuple[str, ...]:
    values = {f: _field_value(f, "plain-7f3a@customer.example") for f in MAIL_FIELDS}
    decoded = decode(EVENT_DIALECTS[name]([event(**values)], CTX))
    return tuple(f for f in MAIL_FIELDS if recovered(decoded, values[f]))


def check_event_fields(name: str, text: str) -> None:
    """`text` as the subject, and in every other field the dialect carries as it is."""
    values = {f: _field_value(f, text) for f in carried_fields(name) if f != "subject"}
    decoded = decode(EVENT_DIALECTS[name]([event(subject=text, **values)], CTX))
    if name not in NO_SUBJECT:
        assert recovered(decoded, text), f"{name}: subject not in the body"
    for f, value in values.items():
        assert recovered(decoded, value), f"{name}: {f} not in the body"


@EVENTS
def test_a_plain_subject_is_in_the_body_unless_documented(name):
    assert ("subject" in carried_fields(name)) == (name not in NO_SUBJECT)
    assert "recipient" in carried_fields(name)


@EVENTS
@pytest.mark.parametrize("case", sorted(HOSTILE_SUBJECTS))
def test_hostile_event_subject(name, case):
    check_event_fields(name, HOSTILE_SUBJECTS[case])


@EVENTS
@SETTINGS
@given(subject=HOSTILE_TEXT)
def test_hostile_event_subject_generated(name, subject):
    check_event_fields(name, subject)


def hostile_header(subject: str, how: str) -> bytes:
    """The Subject field's bytes: encoded words, or 8-bit text (controls that would end the field
    left out), or as it is for ASCII."""
    if how == "encoded":
        return encoded_word(subject)
    text = "".join(" " if c in "\r\n" else c for c in subject)
    return text.encode("utf-8", "surrogateescape" if how == "8bit" else "surrogatepass")


def check_inbound_subject(name: str, header: bytes) -> None:
    raw = mime(header)
    d = delivery(raw)
    expected = native_message(d)["subject"]
    decoded = decode(INBOUND_DIALECTS[name](d, ICTX))
    if decoded.raw is not None:
        assert sends_raw(decoded, raw)
    else:
        assert recovered(decoded, expected), f"{name}: subject {expected!r} not in the body"


@INBOUND
@pytest.mark.parametrize("case", sorted(HOSTILE_SUBJECTS))
@pytest.mark.parametrize("how", ["encoded", "8bit"])
def test_hostile_inbound_subject(name, case, how):
    subject = HOSTILE_SUBJECTS[case]
    if how == "8bit" and "\ud800" in subject:
        how = "cesu"
    check_inbound_subject(name, hostile_header(subject, how))


@INBOUND
@SETTINGS
@given(subject=HOSTILE_TEXT, how=st.sampled_from(["encoded", "8bit"]))
@example(subject="\x00\r\n{{x}}", how="encoded")
def test_hostile_inbound_subject_generated(name, subject, how):
    try:
        header = hostile_header(subject, how)
    except UnicodeEncodeError:  # surrogates of no byte: as CESU-8, invalid UTF-8 all the same
        header = hostile_header(subject, "cesu")
    check_inbound_subject(name, header)


def test_the_reference_reading_decodes_encoded_words_as_they_were_written():
    """What the inbound scenarios compare with: the native reading gives back an encoded
    word's text, controls included; bytes that are not UTF-8 as U+FFFD."""
    for subject in ("a\r\nb\x00c \"{{x}}\" caf\u00e9", "x" * 100_000):
        assert native_message(delivery(mime(encoded_word(subject))))["subject"] == subject
    assert native_message(delivery(mime(encoded_word("\udcff ok"))))["subject"] == "\ufffd ok"


# ---------------------------------------------------------------------------------------------
# Multi-recipient

# ---------------------------------------------------------------------------------------------
# Engagement events: hostile text in what mxhook-track records (a URL of the message, the
# reader's user agent), and a message with several recipients (recipient null)

ENGAGEMENT_FIELDS = ("url", "user_agent", "ip", "client", "city")


def clicked(**engagement) -> dict:
    return event("clicked", engagement={**EVENT_CASES["clicked"]["engagement"], **engagement})


@functools.lru_cache(maxsize=None)
def carried_engagement(name: str) -> tuple[str, ...]:
    """The engagement fields a dialect's click body has as they are (plain text)."""
    values = {f: f"{f}:plain-7f3a" for f in ENGAGEMENT_FIELDS}
    decoded = decode(EVENT_DIALECTS[name]([clicked(**values)], CTX))
    return tuple(f for f in ENGAGEMENT_FIELDS if recovered(decoded, values[f]))


def check_engagement_fields(name: str, text: str) -> None:
    values = {f: f"{f}:{text}" for f in carried_engagement(name)}
    decoded = decode(EVENT_DIALECTS[name]([clicked(**values)], CTX))
    for f, value in values.items():
        assert recovered(decoded, value), f"{name}: engagement {f} not in the body"


CLICKING = [name for name in sorted(EVENT_DIALECTS) if "clicked" in event_types(name)]


@pytest.mark.parametrize("name", CLICKING)
def test_every_dialect_that_sends_clicks_carries_the_url(name):
    if name != "template-json":  # the suite's template shows no engagement field
        assert "url" in carried_engagement(name)


@pytest.mark.parametrize("name", CLICKING)
@pytest.mark.parametrize("case", sorted(HOSTILE_SUBJECTS))
def test_hostile_engagement_text(name, case):
    check_engagement_fields(name, HOSTILE_SUBJECTS[case])


@pytest.mark.parametrize("name", CLICKING)
@SETTINGS
@given(text=HOSTILE_TEXT)
def test_hostile_engagement_text_generated(name, text):
    check_engagement_fields(name, text)


@EVENTS
def test_engagement_of_a_message_with_several_recipients(name):
    """Such a message's tokens carry no recipient: its events have recipient null, and every
    dialect that sends the type still renders a body that reads."""
    for etype in sorted(set(ENGAGEMENT_TYPES) & event_types(name)):
        e = event(etype, recipient=None, orig_recipient=None, engagement={"sending_domain": "ours.example"})
        decode(EVENT_DIALECTS[name]([e], CTX))


RECIPIENTS = ("one@customer.example", "two@customer.example", "three@customer.example")


@EVENTS
def test_multi_recipient_events(name):
    """One event per recipient of one message: each recipient is in a body (its own body for a
    one-per-request dialect, in order in a batch otherwise)."""
    batch = [event("succeeded", id=f"18ea5ff0c0000000cccccccccc{i}0", recipient=r)
             for i, r in enumerate(RECIPIENTS)]
    if events_per_request(name) == 1:
        bodies = [decode(EVENT_DIALECTS[name]([e], CTX)) for e in batch]
        for r, decoded in zip(RECIPIENTS, bodies):
            assert decoded.contains(r)
            assert not any(decoded.contains(other) for other in RECIPIENTS if other != r)
    else:
        texts = decode(EVENT_DIALECTS[name](batch, CTX)).texts()
        found = [next(i for i, t in enumerate(texts) if r in t) for r in RECIPIENTS]
        assert found == sorted(found)


@INBOUND
def test_multi_recipient_inbound(name):
    """Recipients in To and Cc, and one only in the envelope (Bcc): all are in the body."""
    envelope = ("in@ours.example", "two@ours.example", "cc@ours.example", "bcc@ours.example")
    raw = mime(to=b"in@ours.example, Two <two@ours.example>", cc=b"cc@ours.example")
    decoded = decode(INBOUND_DIALECTS[name](delivery(raw, recipients=envelope), ICTX))
    for address in envelope:
        assert decoded.contains(address), address


HOSTILE_ENVELOPE = ("in@ours.example\r\nX-Evil: 1", "nul\x00@ours.example", "ls\u2028x@ours.example")


@INBOUND
def test_hostile_envelope_recipients_add_no_header(name):
    """Envelope text cannot add a header line to a message/rfc822 body (values made
    header-safe), nor break a structured one."""
    decoded = decode(INBOUND_DIALECTS[name](delivery(mime(), recipients=HOSTILE_ENVELOPE), ICTX))
    if decoded.raw is not None:
        assert not any(path[0].lower() == "x-evil" for path, _ in decoded.leaves)
        assert decoded.contains("in@ours.exampleX-Evil: 1")
    else:
        assert all(decoded.contains(r) for r in HOSTILE_ENVELOPE)


@INBOUND
@pytest.mark.parametrize("case", ["quotes", "braces", "crlf", "controls", "non_ascii"])
def test_hostile_from_display_name(name, case):
    """The From display name as the native reading has it: as a text value, inside one, or
    as what an address parser reads from one (a From field re-quoted as RFC 5322 says), or the
    message whole."""
    raw = mime().replace(b"From: \"Ann O'Neil\" <ann@sender.example>",
                         b"From: " + encoded_word(HOSTILE_SUBJECTS[case]) + b" <ann@sender.example>")
    d = delivery(raw)
    sender = native_message(d)["from"][0]
    decoded = decode(INBOUND_DIALECTS[name](d, ICTX))
    assert (sends_raw(decoded, raw) or decoded.contains(sender["name"])
            or (sender["name"], sender["address"]) in map(parseaddr, decoded.texts()))


HOSTILE_FILENAME = 'q"uote\\back\r\nX: {{ x }} caf\u00e9 \U0001f600.txt'


@INBOUND
def test_hostile_attachment_filename(name):
    """The file name as the native reading has it, in a text value or as a file part's name
    (form-data's quoting: `"`, CR, LF as %22, %0D, %0A, as documented), or the message whole."""
    raw = mime(attachments=((HOSTILE_FILENAME, SMALL),))
    d = delivery(raw)
    expected = native_message(d)["attachments"][0]["filename"]
    assert expected.startswith('q"uote\\back') and expected.endswith("{{ x }} caf\u00e9 \U0001f600.txt")
    decoded = decode(INBOUND_DIALECTS[name](d, ICTX))
    assert (sends_raw(decoded, raw) or recovered(decoded, expected)
            or any(f[1] in (expected, quote_param(expected)) for f in decoded.files))


# ---------------------------------------------------------------------------------------------
# Non-UTF-8 bodies

NON_UTF8 = {
    "latin1_declared": (b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                        b"Content-Transfer-Encoding: 8bit\r\n", b"Gr\xfc\xdfe, caf\xe9 \xa4\r\n"),
    "latin1_as_utf8": (b"Content-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Transfer-Encoding: 8bit\r\n", b"Gr\xfc\xdfe \xff\xfe\r\n"),
    "undeclared_8bit": (b"", b"caf\xe9 \x80\x81\r\n"),
    "broken_base64": (b"Content-Type: text/plain; charset=utf-8\r\n"
                      b"Content-Transfer-Encoding: base64\r\n", b"SGVsbG8gd29y!!bGQ*\r\nx=y==\r\n"),
}


@INBOUND
@pytest.mark.parametrize("case", sorted(NON_UTF8))
def test_non_utf8_body(name, case):
    """The body reads, and carries the text as the native reading has it, or the message as it
    came (raw dialects)."""
    body_headers, body = NON_UTF8[case]
    raw = mime(body=body, body_headers=body_headers)
    d = delivery(raw)
    decoded = decode(INBOUND_DIALECTS[name](d, ICTX))
    assert sends_raw(decoded, raw) or recovered(decoded, native_message(d)["text"])


BROKEN = {
    "empty": b"",
    "headers_only": b"Subject: x\r\n",
    "binary": bytes(range(256)) * 4,
    "lf_line_ends": b"Subject: hi\nFrom: a@b.example\n\nbody\n",
    "no_header_section": b"\r\njust a body\r\n",
    "broken_fields": b"Sub\x00ject: x\r\nFrom\r\n: y\r\n\r\nb",
    "huge_lines": b"Subject: " + b"x" * 200_000 + b"\r\n\r\n" + b"y" * 300_000,
}


@INBOUND
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_message(name, case):
    """Never raises for what a message holds; the body reads (a message/rfc822 body: the
    fields mxhook puts in front parse, the message follows as it came)."""
    raw = BROKEN[case]
    rendered = INBOUND_DIALECTS[name](delivery(raw), ICTX)
    if media_type(rendered.content_type) == "message/rfc822":
        assert rendered.body.endswith(raw)
        prefix = rendered.body[:len(rendered.body) - len(raw)]
        assert decode(Rendered(prefix + b"\r\n", rendered.content_type)).leaves
    else:
        decode(rendered)


# ---------------------------------------------------------------------------------------------
# Size caps

SMALL = b"small attachment " + bytes(range(256))
BIG = b"BIG" + bytes(range(255, -1, -1)) * 24  # 6 kB


@INBOUND
def test_attachment_over_the_attachment_cap(name):
    """Left out, with the native marker (unless documented otherwise), the other attachment
    kept; a raw dialect sends the message whole."""
    raw = mime(attachments=(("small.bin", SMALL), ("big.bin", BIG)))
    ctx = dataclasses.replace(ICTX, max_attachment_size=4096)
    rendered = INBOUND_DIALECTS[name](delivery(raw), ctx)
    decoded = decode(rendered)
    assert carries_bytes(decoded, SMALL)
    if sends_raw(decoded, raw):
        assert carries_bytes(decoded, BIG)
        return
    assert not carries_bytes(decoded, BIG)
    assert BIG[:64] not in rendered.body
    assert decoded.contains("exceeds max_attachment_size 4096") == (name not in UNMARKED_OMISSION)


@INBOUND
def test_message_over_the_payload_cap(name):
    """Attachment contents are left out until the body fits, marked (unless documented
    otherwise); a raw dialect sends the message whole."""
    raw = mime(body=b"text " * 200 + b"\r\n", attachments=(("big.bin", BIG * 2),))
    ctx = dataclasses.replace(ICTX, max_payload_size=6000)
    rendered = INBOUND_DIALECTS[name](delivery(raw), ctx)
    decoded = decode(rendered)
    if sends_raw(decoded, raw):
        return
    assert len(rendered.body) <= ctx.max_payload_size
    assert not carries_bytes(decoded, BIG * 2)
    assert decoded.contains("payload size cap") == (name not in UNMARKED_OMISSION)


@INBOUND
def test_text_alone_over_the_payload_cap(name):
    """Sent anyway, readable (the native formats say so in `defects`), or refused where that is
    documented."""
    raw = mime(body=b"long text " * 1000 + b"\r\n", attachments=(("small.bin", SMALL),))
    ctx = dataclasses.replace(ICTX, max_payload_size=6000)
    if name in OVER_CAP_REFUSED:
        with pytest.raises(ValueError, match="max_payload_size"):
            INBOUND_DIALECTS[name](delivery(raw), ctx)
        return
    rendered = INBOUND_DIALECTS[name](delivery(raw), ctx)
    decoded = decode(rendered)
    assert sends_raw(decoded, raw) or recovered(decoded, native_message(delivery(raw))["text"])


# ---------------------------------------------------------------------------------------------
# The same body on every attempt

def check_same_but_per_attempt(name: str, first, second) -> None:
    if without_boundary(first) == without_boundary(second):
        return
    allowed = PER_ATTEMPT.get(name, ())
    assert allowed, f"{name}: the body differs between attempts"
    a, b = decode(first).leaves, decode(second).leaves
    assert [p for p, _ in a] == [p for p, _ in b]
    differ = {path[-2] if isinstance(path[-1], int) else path[-1]
              for (path, x), (_, y) in zip(a, b) if x != y}
    assert differ and differ <= set(allowed), differ


@EVENTS
def test_same_event_body_on_every_attempt(name):
    for case, e in sent_cases(name).items():
        first = EVENT_DIALECTS[name]([e], CTX)
        check_same_but_per_attempt(name, first, EVENT_DIALECTS[name]([dict(e)], RETRY))


@INBOUND
def test_same_inbound_body_on_every_attempt(name):
    raw = mime(attachments=(("small.bin", SMALL),))
    first = INBOUND_DIALECTS[name](delivery(raw), ICTX)
    check_same_but_per_attempt(name, first, INBOUND_DIALECTS[name](delivery(raw), IRETRY))


@INBOUND
def test_same_inbound_bytes_on_every_attempt(name):
    """Byte for byte, boundary included (a receiver that hashes the body sees a repeat)."""
    if name in PER_ATTEMPT:
        pytest.skip("per-attempt fields: " + ", ".join(PER_ATTEMPT[name]))
    raw = mime(attachments=(("small.bin", SMALL),))
    assert INBOUND_DIALECTS[name](delivery(raw), ICTX) == INBOUND_DIALECTS[name](delivery(raw), IRETRY)


# ---------------------------------------------------------------------------------------------
# Batches and event types

@EVENTS
def test_one_per_request_or_batches_up_to_the_batch_size(name):
    e = event("succeeded")
    if events_per_request(name) == 1:
        for batch in ([e, dict(e, id="second")], []):
            with pytest.raises(ValueError):
                EVENT_DIALECTS[name](batch, CTX)
        return
    assert events_per_request(name) is None
    batch = [dict(e, id=f"evt-{i:05d}") for i in range(MAX_BATCH)]
    texts = decode(EVENT_DIALECTS[name](batch, CTX)).texts()
    ids = [t for t in texts if t.startswith("evt-")]
    assert ids == [e["id"] for e in batch]


@EVENTS
def test_event_types_it_does_not_send(name):
    """Refused (ValueError), or left out of a batch, as the module documents; every type it
    sends renders, `mxhook endpoint test`'s sample events included."""
    for etype in sorted(event_types(name)):
        decode(EVENT_DIALECTS[name]([sample_event(etype, at="2026-11-22T12:00:00.000000Z")], CTX))
    sent = event("succeeded")
    for etype in sorted(set(TYPES) - event_types(name)):
        unsent = sample_event(etype, at="2026-11-22T12:00:00.000000Z")
        if events_per_request(name) == 1:
            with pytest.raises(ValueError):
                EVENT_DIALECTS[name]([unsent], CTX)
        else:
            assert EVENT_DIALECTS[name]([sent, unsent], CTX) == EVENT_DIALECTS[name]([sent], CTX)


@EVENTS
def test_every_sent_type_has_a_content_type_its_body_reads_by(name):
    """Each type it sends reads by its content type, and gives the same body whether the event
    comes as a dict or as the V1Text the store may keep it as (payloads/events.py)."""
    for case, e in sent_cases(name).items():
        rendered = EVENT_DIALECTS[name]([e], CTX)
        assert decode(rendered).leaves, case
        assert EVENT_DIALECTS[name]([v1_text(e)], CTX) == rendered, case


@INBOUND
def test_inbound_content_type_and_fields_from_the_mail(name):
    """The body reads by its content type, and what came from the mail is in it: subject, From
    address, text and the attachment (or the message whole)."""
    raw = mime(b"=?utf-8?q?Caf=C3=A9_=22menu=22?=", attachments=(("small.bin", SMALL),))
    d = delivery(raw)
    rendered = INBOUND_DIALECTS[name](d, ICTX)
    decoded = decode(rendered)
    if decoded.raw is not None:
        assert sends_raw(decoded, raw)
        return
    assert recovered(decoded, 'Caf\u00e9 "menu"')
    assert decoded.contains("ann@sender.example")
    assert sends_raw(decoded, raw) or recovered(decoded, native_message(d)["text"])
    assert carries_bytes(decoded, SMALL)


def test_delay_micros_is_none_for_what_is_not_a_finite_duration():
    from mxhook.payloads.dialects._fields import delay_micros
    assert delay_micros(1.5) == 1_500_000
    assert delay_micros(0) == 0
    for bad in (-1, float("inf"), float("nan"), 1.8e302, "3", None, True):
        assert delay_micros(bad) is None, bad
