"""payloads.templates: custom jinja2 payload templates (compile, check, render), their escaping
against hostile mail text, the sandbox and the bounds."""
from __future__ import annotations

import json
import re
import threading
from datetime import timezone
from pathlib import Path
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from mxhook.model.events import TYPES
from mxhook.model.targets import Target
from mxhook.payloads import events, inbound, registry, templates
from mxhook.payloads.dialects import EventContext, InboundContext
from mxhook.payloads.templates import (FORM, JSON, TEXT, TemplateError, check, compile_template,
                                       events_context, render, template_version)

STAMP = "2026-11-22T12:00:00.123456Z"


def tmpl(source: str, content_type: str = JSON, kind: str = "events") -> templates.Template:
    return compile_template(source, content_type, kind)


def out(source: str, content_type: str = JSON, **context) -> str:
    return render(tmpl(source, content_type), context).body.decode("utf-8")


def error(source: str, content_type: str = JSON, kind: str = "events", **context) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        t = compile_template(source, content_type, kind)
        render(t, context) if context else check(t)
    return info.value


def batch(n: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        e = events.sample_event(TYPES[i % len(TYPES)], at=STAMP)
        e.update(id=f"ev-{i}", subject=f'Re: "{i}" \\ {{{{ x }}}}\n\t\x00', delay=1.5 * i,
                 custom_headers={"X-Tenant": f"t{i}"})
        out.append(e)
    return out


# A field-by-field template for the native version-1 body: strings that are always present
# written inside quotes (the escaping), the rest with tojson.
QUOTED = ("id", "type", "at", "source")
EVENT = ", ".join(f'"{k}": "{{{{ e.{k} }}}}"' if k in QUOTED else f'"{k}": {{{{ e.{k}|tojson }}}}'
                  for k in events.V1_FIELDS)
NATIVE = ('{"type": "{{ type }}", "version": {{ version }}, "batch_id": "{{ batch_id }}", '
          '"endpoint_id": {{ endpoint_id|tojson }}, "count": {{ count }}, "events": [\n'
          '{% for e in events %}{' + EVENT + '}{% if not loop.last %},{% endif %}\n{% endfor %}]'
          '{% if api_key %}, "api_key": "{{ api_key }}"{% endif %}}\n')


# ---------------------------------------------------------------------------------------------
# Good templates

@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize("api_key", [None, 'k-"1"'])
def test_a_field_by_field_template_gives_the_native_body(tz, api_key):
    evs = batch(8)
    native = registry.render_events(1, evs, endpoint_tz=tz, batch_id="evb_1", endpoint_id=3,
                                    api_key=api_key)
    ctx = events_context(evs, tz=events.zone(tz), batch_id="evb_1", endpoint_id=3, api_key=api_key)
    mine = render(tmpl(NATIVE), ctx)
    assert mine.content_type == "application/json"
    assert json.loads(mine.body) == json.loads(native.body)


def test_requests_over_the_dialects_contexts():
    evs = batch(2)
    ctx = EventContext(request_id="evb_9", now=0.0, nonce="n", endpoint_id=4,
                       tz=ZoneInfo("Europe/Berlin"), api_key="k")
    assert templates.event_request(tmpl(NATIVE), evs, ctx).body == render(
        tmpl(NATIVE), events_context(evs, tz=ZoneInfo("Europe/Berlin"), batch_id="evb_9",
                                     endpoint_id=4, api_key="k")).body
    t = Target(kind="rule", id=2, name="r", url="https://h.example/")
    meta = {"received": STAMP, "deliveries": [{"recipients": ["a@ours.example"], "rule": t.to_record()}]}
    d = inbound.Delivery.of(delivery_id="d-r", meta=meta, raw=b"Subject: hi\r\n\r\nbody\r\n", target=t)
    body = templates.inbound_request(tmpl('{"s": "{{ message.subject }}"}', kind="inbound"), d,
                                     InboundContext(now=0.0, nonce="n")).body
    assert json.loads(body) == {"s": "hi"}
    with pytest.raises(TemplateError, match="max_payload_size"):
        templates.inbound_request(tmpl('{"s": "{{ message.subject }}"}', kind="inbound"), d,
                                  InboundContext(now=0.0, nonce="n", max_payload_size=5))


def test_events_context_holds_the_v1_document_fields():
    ctx = events_context(batch(2), tz=ZoneInfo("Europe/Berlin"), batch_id="b", endpoint_id=None)
    assert list(ctx) == ["type", "version", "batch_id", "endpoint_id", "count", "events", "api_key"]
    assert ctx["count"] == 2 and ctx["api_key"] is None and ctx["endpoint_id"] is None
    assert list(ctx["events"][0]) == [*events.V1_FIELDS, "engagement"]  # null but for engagement events
    assert ctx["events"][0]["engagement"] is None
    assert ctx["events"][0]["at"] == "2026-11-22T13:00:00.123456+01:00"


ENGAGEMENT_TEMPLATE = (
    '[{% for e in events %}{"type": "{{ e.type }}", "url": {{ e.engagement.url|tojson if e.engagement else "null" }},'
    ' "ua": "{{ e.engagement.user_agent if e.engagement else "" }}",'
    ' "bot": {{ e.engagement.machine|tojson if e.engagement else "null" }}}{% if not loop.last %},{% endif %}'
    '{% endfor %}]')


def test_templates_read_the_engagement_object_of_any_event():
    """`e.engagement` is there for every event (null for delivery events), so StrictUndefined
    never trips on a batch that mixes them; `check` renders the sample of every type."""
    t = tmpl(ENGAGEMENT_TEMPLATE)
    doc = json.loads(check(t).body)
    by_type = {d["type"]: d for d in doc}
    assert by_type["clicked"]["url"] == "https://example.org/welcome?from=mxhook-test"
    assert by_type["opened"]["bot"] is False and by_type["bounced"]["ua"] == ""
    assert by_type["complained"]["url"] is None and by_type["queued"]["bot"] is None


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=40), st.text(max_size=40))
def test_hostile_engagement_text_never_breaks_a_json_template(user_agent, url):
    e = {**events.sample_event("clicked", at=STAMP), "engagement": {"user_agent": user_agent, "url": url}}
    (d,) = json.loads(render(tmpl(ENGAGEMENT_TEMPLATE), events_context([e], batch_id="b", endpoint_id=1)).body)
    # high surrogates (no decoder of mxhook makes them) become U+FFFD; low ones, such as the
    # surrogateescape'd bytes of invalid UTF-8, come back as they were (templates._json_surrogate)
    scrub = "".join("\ufffd" if "\ud800" <= c < "\udc80" else c for c in user_agent)
    assert d["ua"] == scrub and d["url"] == url


def test_events_context_takes_prerendered_v1_text():
    evs = batch(2)
    texts = [events.v1_text(e) for e in evs]
    assert events_context(texts, batch_id="b", endpoint_id=1) == \
        events_context(evs, batch_id="b", endpoint_id=1)


def test_inbound_template_over_the_sample_document():
    t = tmpl('{"from": "{{ message.from[0].address if message.from else "" }}",\n'
             ' "subject": "{{ message.subject }}", "rcpt": {{ envelope.recipients|tojson }},\n'
             ' "files": [{% for a in message.attachments %}"{{ a.filename }}"{% endfor %}],\n'
             ' "rule": "{{ rule }}", "id": "{{ id }}", "received": "{{ received }}",\n'
             ' "key": {{ api_key|tojson }}}', kind="inbound")
    doc = json.loads(check(t).body)
    sample = templates.sample_inbound_context()
    assert doc == {"from": sample["message"]["from"][0]["address"],
                   "subject": sample["message"]["subject"],
                   "rcpt": ["in@ours.example", "bob@ours.example"], "files": ["report.csv"],
                   "rule": "sample", "id": "sample-delivery-sample",
                   "received": "2026-11-22T12:00:00.123456Z", "key": None}
    assert '"42"' in doc["subject"] and "{{" in doc["subject"] and "\\" in doc["subject"]


def test_inbound_context_is_the_native_document():
    t = Target(kind="rule", id=2, name="r", url="https://h.example/", api_key="k")
    meta = {"received": STAMP, "deliveries": [{"recipients": ["a@ours.example"], "rule": t.to_record()}]}
    d = inbound.Delivery.of(delivery_id="d-r", meta=meta, raw=b"Subject: hi\r\n\r\nbody\r\n", target=t)
    ctx = templates.inbound_context(d)
    assert ctx == inbound.native_document(d)
    assert ctx["api_key"] == "k"


def test_sample_events_cover_every_type():
    assert [e["type"] for e in templates.sample_events_context()["events"]] == list(TYPES)


def test_form_template_percent_encodes_values_and_allows_one_field_a_line():
    t = tmpl("type={{ type }}\n  &count={{ count }}\n&first={{ events[0].subject }}\n"
             "&events={{ events|tojson }}\n&none={{ api_key }}", FORM)
    r = render(t, events_context(batch(2), batch_id="b", endpoint_id=1))
    assert r.content_type == "application/x-www-form-urlencoded"
    fields = dict(parse_qsl(r.body.decode("ascii"), keep_blank_values=True, strict_parsing=True))
    assert fields["type"] == "events" and fields["count"] == "2" and fields["none"] == ""
    assert fields["first"] == batch(1)[0]["subject"]
    assert [e["id"] for e in json.loads(fields["events"])] == ["ev-0", "ev-1"]


def test_text_template_writes_values_as_they_are():
    r = render(tmpl("{{ count }} events, first: {{ events[0].subject }} {{ api_key }}|{{ true }}", TEXT),
               events_context(batch(1), batch_id="b", endpoint_id=1))
    assert r.content_type == "text/plain; charset=utf-8"
    assert r.body.decode() == f"1 events, first: {batch(1)[0]['subject']} |true"


def test_values_in_json_are_json_text_escaped_for_a_string():
    assert json.loads(out('["{{ n }}", "{{ f }}", "{{ b }}", "{{ z }}", "{{ o }}", "{{ l }}"]',
                          n=None, f=1.5, b=False, z=0, o={"a": '"'}, l=[1, "x"])) == \
        ["null", "1.5", "false", "0", '{"a":"\\""}', '[1,"x"]']
    assert json.loads(out('{"n": {{ n }}, "c": {{ c }}}', n=None, c=3)) == {"n": None, "c": 3}


def test_tojson_keeps_utf8_and_takes_an_indent():
    assert out("{{ s|tojson }}", s="düe ✓") == '"düe ✓"'
    assert json.loads(out("{{ d|tojson(2) }}", d={"a": [1]})) == {"a": [1]}


def test_macros_and_set_blocks_are_written_as_made_not_escaped_twice():
    src = ('{% macro ev(e) %}{"s": "{{ e }}"}{% endmacro %}'
           '{% macro wrap() %}{"s": {{ caller() }}}{% endmacro %}'
           '{% set tail %}"t": "{{ s }}"{% endset %}'
           '{"a": {{ ev(s) }}, {{ tail }}, "c": {% call wrap() %}"{{ s }}"{% endcall %}}')
    hostile = '"}, "admin": true, "x": {"'
    assert json.loads(out(src, s=hostile)) == {"a": {"s": hostile}, "t": hostile, "c": {"s": hostile}}


def test_default_and_is_defined_work_with_strict_undefined():
    assert out('{{ nope|default("x") }}{% if nope is defined %}y{% endif %}{{ e.a|default("z") }}',
               TEXT, e={}) == "xz"


def test_loop_controls_work():
    assert out("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
               TEXT) == "012"


def test_template_version_is_a_stable_hash_of_text_and_content_type():
    v = template_version("{{ x }}", JSON)
    assert v == template_version("{{ x }}", JSON) == tmpl("{{ x }}").version
    assert len(v) == 16 and int(v, 16) >= 0
    assert v != template_version("{{ x }}", FORM) and v != template_version("{{ x }} ", JSON)


def test_content_type_and_kind_are_checked():
    assert tmpl("{}", " Application/JSON ").content_type == JSON
    for ctype in ("text/html", "multipart/form-data", "application/xml", "application/json; charset=utf-8"):
        assert "unsupported content type" in str(error("{}", ctype))
    assert "unknown template kind" in str(error("{}", JSON, "bounces"))


# ---------------------------------------------------------------------------------------------
# Errors an admin reads: syntax with the line, undefined names, bodies that are not JSON

@pytest.mark.parametrize("source, line, words", [
    ('{"a": "{{ x }"}', 1, "unexpected '}'"),
    ("{\n\n  {% for e in events %}\n}", 3, "Unexpected end of template"),
    ('{\n"a": "{{ x }}"\n{% endif %}\n}', 3, "unknown tag 'endif'"),
    ("{\n  {{ events|nosuch }}\n}", 2, "No filter named 'nosuch'"),
    ("{{ 1 is nosuch }}", 1, "No test named 'nosuch'"),
    ("[\n{% for e in events recursive %}{% endfor %}]", 2, "recursive"),
    ("{% include 'x.json' %}", None, None),
])
def test_syntax_errors_name_the_line(source, line, words):
    if words is None:  # no loader: include, import and extends fail when rendered
        assert "no loader" in str(error(source)).lower()
        return
    with pytest.raises(TemplateError) as info:
        tmpl(source)
    assert info.value.line == line and words in info.value.reason
    assert str(info.value) == f"line {line}: {info.value.reason}" and "\n" not in str(info.value)


def test_oversized_deeply_nested_and_non_utf8_sources_are_refused():
    assert "larger than 1,048,576 characters" in str(error("x" * (1024 * 1024 + 1), TEXT))
    assert "nested too deeply" in str(error("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", TEXT))
    assert "not valid UTF-8" in str(error("caf\udce9 {{ x }}", TEXT))


def test_undefined_names_raise_with_the_name_and_line():
    e = error('{\n"a": "{{ events[0].subjet }}"}')
    assert e.line == 2 and "has no attribute 'subjet'" in e.reason
    e = error('{"a": "{{ subjet }}"}')
    assert e.line == 1 and e.reason == "'subjet' is undefined"
    assert "'nope' is undefined" in str(error("{{ nope|tojson }}"))
    assert "'nope' is undefined" in str(error("{{ 'a' ~ nope }}", TEXT))
    assert "'nope' is undefined" in str(error("{% if nope %}{% endif %}", TEXT))


def test_a_json_template_whose_output_does_not_parse_is_refused_with_a_hint():
    e = error('{"subject": {{ events[0].subject }}}')
    assert e.reason.startswith("output is not JSON: Expecting value at output line 1")
    assert "|tojson" in e.reason and e.line is None
    assert "output is not JSON" in str(error('{"a": {{ x|tojson }}}', x=float("inf")))
    assert "output is not JSON" in str(error('{"a": 1}{% if x %},{% endif %}', x=1))


def test_a_form_template_whose_output_is_not_a_form_is_refused():
    for source in ("a={{ type }} b", "a={{ type }}&&b", 'a="x"', "ä={{ type }}"):
        assert "not x-www-form-urlencoded" in str(error(source, FORM))


def test_render_errors_are_template_errors_with_the_line():
    e = error("{\n\n{{ 1 // x }}}", TEXT, x=0)
    assert e.line == 3 and e.reason.startswith("ZeroDivisionError")
    e = error("{{ x.y.z }}", TEXT, x={"y": 1})
    assert e.line == 1


# ---------------------------------------------------------------------------------------------
# Hostile mail text

HOSTILE = [
    '"', "\\", '\\"', "\"}, \"admin\": true, \"x\": {\"", "{{ 7*7 }}", "{% raw %}", "}}", "\x00\x1f\x7f",
    "\r\n\t\b\f", "\u2028\u2029", "\ud800", "\udcff\udc80", "</script>", "&=+%20?#", "é ✓ 😀",
    "a" * 100_000, '"\\\x00{{\u2028' * 20_000,
]

JSON_SITES = '{"v": "{{ s }}", "k{{ s }}": {{ s|tojson }}, "m": {{ m(s) }}, "j": "{{ s ~ s }}"}'
JSON_MACRO = '{% macro m(x) %}["{{ x }}"]{% endmacro %}'


def _kept(s: str) -> str:
    """What a body gives back: every string, except surrogates that are not surrogateescape'd
    bytes (no mxhook decoder makes them), which become U+FFFD."""
    return re.sub("[\ud800-\udc7f]", "\ufffd", s)


def _check_json(s: str) -> None:
    doc = json.loads(out(JSON_MACRO + JSON_SITES, s=s))
    k = _kept(s)
    assert doc == {"v": k, "k" + k: k, "m": [k], "j": k + k}


def _check_form(s: str) -> None:
    body = out("a={{ s }}&b={{ s|tojson }}&{{ s }}=c", FORM, s=s)
    fields = parse_qsl(body, keep_blank_values=True, strict_parsing=True, errors="surrogateescape")
    (a, text), (b, as_json), (name, c) = fields
    assert (a, text, b, json.loads(as_json), name, c) == ("a", _kept(s), "b", _kept(s), _kept(s), "c")


@pytest.mark.parametrize("s", HOSTILE)
def test_hostile_strings_never_break_json_or_form(s):
    _check_json(s)
    _check_form(s)


def test_mail_text_is_never_evaluated():
    assert json.loads(out('{"v": "{{ s }}"}', s="{{ 7*7 }}{% for i in range(9) %}x{% endfor %}")) == \
        {"v": "{{ 7*7 }}{% for i in range(9) %}x{% endfor %}"}


def test_invalid_utf8_stays_valid_utf8_and_comes_back():
    s = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    body = render(tmpl('{"v": "{{ s }}"}'), {"s": s}).body
    body.decode("utf-8")  # strict
    assert json.loads(body)["v"] == s
    assert render(tmpl("{{ s }}", TEXT), {"s": s}).body == "caf\ufffd \ufffd".encode()


_MAIL_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7f)),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(st.sampled_from(HOSTILE[:-2])).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(_MAIL_TEXT)
def test_hypothesis_rendered_json_parses_to_the_input(s):
    _check_json(s)


@settings(max_examples=300, deadline=None)
@given(_MAIL_TEXT)
def test_hypothesis_rendered_form_parses_to_the_input(s):
    _check_form(s)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_hostile_subject_bytes_through_the_inbound_document(subject):
    """Raw header bytes as a sender writes them, through normalize and the native document."""
    t = Target(kind="rule", id=1, name="r", url="https://h.example/")
    meta = {"received": STAMP, "deliveries": [{"recipients": ["a@ours.example"], "rule": t.to_record()}]}
    raw = b"From: a@b.example\r\nSubject: " + subject.replace(b"\r", b"").replace(b"\n", b"") + \
        b"\r\n\r\nbody\r\n"
    d = inbound.Delivery.of(delivery_id="d-r", meta=meta, raw=raw, target=t)
    ctx = templates.inbound_context(d)
    doc = json.loads(render(tmpl('{"s": "{{ message.subject }}", "h": {{ message.headers|tojson }}}',
                                 kind="inbound"), ctx).body)
    assert doc == {"s": ctx["message"]["subject"], "h": ctx["message"]["headers"]}


# ---------------------------------------------------------------------------------------------
# The sandbox

@pytest.mark.parametrize("expr", [
    "''.__class__", "''.__class__.__mro__[1].__subclasses__()", "range.__self__",
    "cycler.__init__.__globals__", "lipsum.__globals__", "self._TemplateReference__context",
    "namespace.__init__", "events.__class__", "x.__dict__", "(1).real.__class__",
    "''.format.__globals__", "events.append(1)", "d.update(a=1)", "d.pop('a')",
    "'{0.__class__}'.format(1)", "('{0.__class__}'|attr('format'))(1)",
    "'{a.__class__}'.format_map({'a': 1})", "'%s'|format(x.__class__)",
    "''|attr('__class__')", "[x]|map(attribute='__class__')|first",
])
def test_the_sandbox_refuses_internals_and_changes(expr):
    e = error(f"{{{{ {expr} }}}}", TEXT, events=[], x=object(), d={"a": 1})
    assert e.reason.startswith("not allowed") or "has no attribute" in e.reason


def test_safe_and_filter_blocks_are_refused_where_values_are_escaped():
    for ctype in (JSON, FORM):
        assert "No filter named 'safe'" in str(error('{"a": "{{ s|safe }}"}', ctype))
        assert "{% filter %} blocks are not supported" in str(
            error("{% filter replace('\\\\', '') %}{{ s }}{% endfilter %}", ctype))
        assert "filtered {% set %} block" in str(error("{% set x | upper %}{{ s }}{% endset %}", ctype))
    assert out("{{ s|safe }}{% filter upper %}{{ s }}{% endfilter %}", TEXT, s="a") == "aA"


@pytest.mark.parametrize("name", ["_mxhook_output", "_mxhook_concat", "_mxhook_steps"])
def test_the_engine_s_own_filters_cannot_be_named(name):
    assert f"No filter named '{name}'" in str(error(f'{{"a": "{{{{ s|{name} }}}}"}}'))


def test_render_does_not_change_the_context():
    ctx = {"d": {"a": [1]}, "l": [1, 2]}
    before = json.dumps(ctx)
    out('{% set ns = namespace(x=1) %}{% set ns.x = 2 %}{"a": {{ d|tojson }}}', **ctx)
    assert json.dumps(ctx) == before


# ---------------------------------------------------------------------------------------------
# Bounds

def test_nested_loops_stop_at_the_step_budget():
    e = error("{% for i in range(100000) %}\n{% for j in range(100000) %}{% endfor %}{% endfor %}",
              TEXT, x=1)
    assert e.reason.startswith("too much work: more than 1,000,000 loop iterations")
    assert e.line == 2


def test_filters_spend_a_step_per_item_they_go_through():
    e = error("{% for i in range(1000) %}{{ range(100000)|map('string')|join|length }}{% endfor %}",
              TEXT, x=1)
    assert e.reason.startswith("too much work")
    assert out("{% for i in range(900) %}{{ range(1000)|sum }}{% endfor %}", TEXT) == "499500" * 900


def test_recursive_macros_stop():
    e = error("{% macro f(n) %}{% for i in range(10) %}{{ f(n) }}{% endfor %}{% endmacro %}{{ f(1) }}",
              TEXT, x=1)
    assert "too much work" in e.reason or "too deeply" in e.reason


def test_a_clock_bounds_the_render_time():
    ticks = iter(range(10**9))
    t = tmpl("{% for i in range(100000) %}{% endfor %}", TEXT)
    with pytest.raises(TemplateError, match="longer than 2 s"):
        render(t, {}, clock=lambda: next(ticks))  # one "second" a reading
    assert render(t, {}, clock=lambda: 0.0).body == b""


def test_renders_on_threads_keep_their_own_budget():
    heavy = tmpl("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", TEXT)
    light = tmpl("{% for i in range(50000) %}{% endfor %}ok", TEXT)
    results = {}

    def run(name, t):
        try:
            results[name] = render(t, {}).body
        except TemplateError as exc:
            results[name] = exc.reason

    threads = [threading.Thread(target=run, args=(f"light{i}", light)) for i in range(4)]
    threads.append(threading.Thread(target=run, args=("heavy", heavy)))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.pop("heavy").startswith("too much work")
    assert set(results.values()) == {b"ok"}


def test_a_budget_is_per_render():
    t = tmpl("{% for i in range(90000) %}{% endfor %}", TEXT)
    for _ in range(20):  # 1.8M steps in all
        render(t, {})


@pytest.mark.parametrize("expr", [
    "'a' * 10**9", "10**9 * 'a'", "[1] * 10**9", "'%999999999d' % 1", "'%*d' % (9, 1)",
    "'a'.ljust(10**9)", "'a'.center(10**9)", "'a'.zfill(10**9)", "'a'|center(10**9)",
    "'a'|indent(10**9)", "'{:>999999999}'.format(1)", "'{:>{}}'.format(1, 9)",
    "'%999999999d'|format(1)", "('a' * 10**7).replace('a', 'aaaa')", "('a' * 10**7)|replace('a', 'aaaa')",
    "('x' * 10**7).join(range(5))", "range(5)|join('x' * 10**7)", "(10**8)**(10**5)", "[1]|slice(10**9)",
    "('a' * 10**7) + ('a' * 10**7) + ('a' * 10**7)", "'\\t'.expandtabs(10**9)",
])
def test_what_would_build_a_huge_value_is_refused_before_it_is_built(expr):
    e = error(f"{{{{ {expr} }}}}", TEXT, x=1)
    assert "limit" in e.reason or "not allowed" in e.reason


def test_doubling_a_namespace_string_stops_at_the_size_limit():
    e = error("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
              "{% endfor %}", TEXT, x=1)
    assert "over the 26,214,400 limit" in e.reason


def test_output_is_capped_while_it_is_rendered():
    t = tmpl("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", TEXT)
    with pytest.raises(TemplateError, match=r"body over max_payload_size \(1,000 bytes\)$"):
        render(t, {}, max_payload_size=1000)
    assert len(render(t, {}, max_payload_size=10**6).body) == 10**6
    with pytest.raises(TemplateError, match="max_payload_size"):  # characters under, bytes over
        render(tmpl("{% for i in range(600) %}é{% endfor %}", TEXT), {}, max_payload_size=1000)


def test_an_inbound_body_over_the_cap_is_rendered_again_without_attachment_contents():
    t = tmpl('{"files": {{ message.attachments|tojson }}}', kind="inbound")
    ctx = templates.sample_inbound_context()
    ctx["message"]["attachments"][0]["content"] = "QUFB" * 1000
    full = render(t, ctx)
    assert json.loads(full.body)["files"][0]["content"]
    lighter = render(t, ctx, max_payload_size=len(full.body) - 1)
    att = json.loads(lighter.body)["files"][0]
    assert att["content"] is None and att["omitted"] is True and att["omitted_reason"] == "payload size cap"
    assert ctx["message"]["attachments"][0]["content"]  # the context is not changed
    with pytest.raises(TemplateError, match="even without attachment contents"):
        render(t, ctx, max_payload_size=20)


def test_check_uses_the_kind_s_sample():
    assert json.loads(check(tmpl('{"n": {{ count }}}')).body) == {"n": len(TYPES)}
    assert "'count' is undefined" in str(error('{"n": {{ count }}}', kind="inbound"))
    assert check(tmpl("{{ envelope.queue_id }}", TEXT, "inbound")).body == b"4XbSample01"


def test_events_context_default_timezone_is_utc():
    ctx = events_context(batch(1), batch_id="b", endpoint_id=1)
    assert ctx["events"][0]["at"].endswith("+00:00")
    assert events_context(batch(1), tz=timezone.utc, batch_id="b", endpoint_id=1) == ctx


def test_the_examples_in_docs_pass_their_check():
    doc = (Path(__file__).parents[2] / "docs" / "payloads.md").read_text(encoding="utf-8")
    section = doc.split("## Custom templates", 1)[1].split("### Examples", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"\n```\n(.*?)```\n", section, re.S)
    kinds = [(JSON, "inbound"), (FORM, "events"), (TEXT, "events")]
    assert len(blocks) == len(kinds)
    for source, (ctype, kind) in zip(blocks, kinds):
        body = check(compile_template(source, ctype, kind)).body
        if ctype == JSON:
            assert json.loads(body)["files"][0]["name"] == "report.csv"
        elif ctype == FORM:
            assert dict(parse_qsl(body.decode()))["event"] == "queued"
        else:
            assert body.decode().splitlines()[0] == "queued nobody@example.com"
