"""Custom payload templates: an admin's jinja2 template as the request body of a rule (inbound)
or an event endpoint (events). Pure.

- `compile_template(source, content_type, kind)` -> `Template`, or `TemplateError` with the line
  and a one-line reason;
- `check(template)`: render a sample context (what `add` / `edit` runs before storing);
- `render(template, context, max_payload_size=...)` -> `encodings.Rendered` (before each send;
  every failure is a `TemplateError` whose text is the attempt's reason);
- `inbound_context(delivery)` / `events_context(batch, ...)`: the variables a template sees;
- `inbound_request` / `event_request`: the two together, over the dialects' contexts
  (payloads/dialects), for the registry;
- `template_version(source, content_type)`: a stable content hash for storage and `show`.

Escaping is the engine's job, not the template author's: every `{{ ... }}` is written through
the content type's `finalize` (JSON string content, percent-encoding, or text), so hostile mail
text cannot break the body whatever a template does with it. The environment is jinja2's
immutable sandbox with StrictUndefined, no loader (no include, import or extends), no `|safe`;
each render has a work budget (loop iterations, calls, filters and the items they go through;
time too when the caller gives a clock: pure code reads none itself), what could build a huge
value is size-checked before it runs, and the output is capped while it is made.
docs/payloads.md, "Custom templates", is the reference for template authors.
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timezone
from typing import Callable, Iterable
from urllib.parse import parse_qsl, quote_plus

import jinja2
from jinja2 import nodes
from jinja2.runtime import BlockReference, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from mxhook.model.events import TYPES
from mxhook.model.message import DEFAULT_MAX_ATTACHMENT_SIZE
from mxhook.model.targets import Target
from mxhook.payloads import events, inbound
from mxhook.payloads.dialects import DEFAULT_MAX_PAYLOAD_SIZE, EventContext, InboundContext
from mxhook.payloads.encodings import JSONText, Rendered, dumps

KINDS = ("inbound", "events")
JSON, FORM, TEXT = "application/json", "application/x-www-form-urlencoded", "text/plain"
# The content types a template may declare -> the Content-Type header its bodies are sent with.
CONTENT_TYPES = {JSON: JSON, FORM: FORM, TEXT: "text/plain; charset=utf-8"}

# Loop iterations, calls (functions, methods, macros), filters and the items of the lists
# filters go through, in one render: a batch template takes a few per event, a runaway nested
# loop is stopped within seconds.
MAX_STEPS = 1_000_000
MAX_SOURCE_SIZE = 1024 * 1024
# With a clock given to `render`: the time one render may take.
MAX_SECONDS = 2.0
# The largest text, list or number of digits an operator or a call may be asked to build.
MAX_VALUE_SIZE = DEFAULT_MAX_PAYLOAD_SIZE

_STEPS_FILTER = "_mxhook_steps"
_CONCAT_FILTER = "_mxhook_concat"
_OUTPUT_FILTER = "_mxhook_output"
_INTERNAL_FILTERS = frozenset((_STEPS_FILTER, _CONCAT_FILTER, _OUTPUT_FILTER))
_TEMPLATE_FILE = "<template>"


class TemplateError(ValueError):
    """A template that does not compile, or a render that failed: `reason` is one line for an
    admin, `line` the template line it points at (None when no one line is to blame)."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line else reason)


@dataclass(frozen=True)
class Template:
    source: str
    content_type: str  # the declared media type: one of CONTENT_TYPES
    kind: str  # inbound | events
    version: str  # template_version(source, content_type)
    compiled: jinja2.Template = field(repr=False, compare=False)

    @property
    def header(self) -> str:
        """The Content-Type header of its bodies."""
        return CONTENT_TYPES[self.content_type]


def template_version(source: str, content_type: str) -> str:
    """A stable short hash of what decides a template's bodies (its text and content type)."""
    digest = hashlib.sha256(f"{content_type}\0{source}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# What `{{ ... }}` writes, per content type

_SURROGATE = re.compile("[\ud800-\udfff]")
# Surrogates that are not bytes decoded with surrogateescape (\udc80-\udcff): no decoder of
# mxhook makes them; as \u escapes a high one would pair with the next low one.
_STRAY_SURROGATE = re.compile("[\ud800-\udc7f]")
_encode_str = json.encoder.encode_basestring  # the escaping json.dumps(ensure_ascii=False) uses


def _json_surrogate(match: re.Match) -> str:
    char = match.group()
    return f"\\u{ord(char):04x}" if char >= "\udc80" else "\ufffd"


def _escape_surrogates(text: str) -> str:
    """In JSON text: surrogateescape'd bytes (invalid UTF-8 in mail) as \\udcXX escapes, so the
    body stays UTF-8 and a JSON parser gives back the same string; other surrogates as U+FFFD."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_json_surrogate, text)


class _Output(str):
    """Template output already escaped for its content type (a macro's or a set block's text):
    written as it is. Any operation on it gives a plain str, which is escaped again."""

    __slots__ = ()


def _text(value, none: str) -> str:
    """The text of a value: a string as it is; null, booleans and numbers as JSON spells them
    (null as `none`); a list or object as its JSON text."""
    if isinstance(value, str):
        return value
    if value is None:
        return none
    if isinstance(value, jinja2.Undefined):
        return str(value)  # StrictUndefined: raises, naming the variable
    try:
        return dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _json_finalize(value) -> str:
    """Inside a JSON string: the value's text with quotes, backslashes, control characters and
    lone surrogates escaped. `|tojson` output (JSONText) is a JSON value already: as it is."""
    kind = type(value)
    if kind is JSONText or kind is _Output:
        return value
    return _escape_surrogates(_encode_str(value if kind is str else _text(value, "null"))[1:-1])


def _form_finalize(value) -> str:
    """A form field's name or value: percent-encoded, nothing left as it is (invalid UTF-8
    given back as the bytes that came)."""
    if type(value) is _Output:
        return value
    text = _STRAY_SURROGATE.sub("\ufffd", _text(value, ""))
    return quote_plus(text, safe="", encoding="utf-8", errors="surrogateescape")


def _text_finalize(value) -> str:
    return _text(value, "")


_NULL = JSONText("null")


def tojson(value, indent: int | None = None) -> JSONText:
    """`{{ x|tojson }}`: x as a JSON value (a string with its quotes), UTF-8 not escaped."""
    if value is None:
        return _NULL
    if type(value) is str:  # the usual case, without the encoder's checks
        return JSONText(_escape_surrogates(_encode_str(value)))
    if isinstance(value, jinja2.Undefined):
        str(value)
    if indent is None:
        text = dumps(value)
    else:
        _check_size(_int(indent), "tojson indent")
        text = json.dumps(value, ensure_ascii=False, indent=indent)
    return JSONText(_escape_surrogates(text))


# ---------------------------------------------------------------------------------------------
# Bounds: a work budget per render; operators, calls and filters that cannot be asked for huge
# values

class _Budget:
    """A render's allowance of steps (loop iterations, calls, filters and the items a filter
    goes through) and, when the caller gives a clock, of time: read every 64 steps."""

    __slots__ = ("steps", "check_at", "clock", "deadline")

    def __init__(self, steps: int, clock: Callable[[], float] | None, seconds: float):
        self.steps = self.check_at = steps
        self.clock = clock
        self.deadline = clock() + seconds if clock else None

    def spend(self, steps: int = 1) -> None:
        self.steps -= steps
        if self.steps < self.check_at:
            self.check_at = self.steps - 64
            if self.steps < 0:
                raise TemplateError(f"too much work: more than {MAX_STEPS:,} loop iterations, "
                                    "calls and filtered items in one render")
            if self.clock and self.clock() > self.deadline:
                raise TemplateError("too much work: rendering took longer than "
                                    f"{MAX_SECONDS:g} s")


# The budget of the render running on this thread (set by _render_capped): the hooks that spend
# it are called by jinja2 without the render's context (filters, the steps of loops).
_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


def _steps(iterable):
    """Wrapped around every for loop's iterable at compile time: each iteration is a step."""
    spend = _BUDGET.get().spend
    for item in iterable:
        spend()
        yield item


def _concat(values: list) -> str:
    """The `~` operator (jinja2's: str of each), with its result's size checked before it is
    built."""
    parts = [str(v) for v in values]
    _check_size(sum(map(len, parts)), "~")
    return "".join(parts)


def _as_output(value):
    """A set block's text: template output, already escaped."""
    return _Output(value) if isinstance(value, str) else value


def _check_size(size: int, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise TemplateError(f"{what} would build a value of {size:,} characters or items, over "
                            f"the {MAX_VALUE_SIZE:,} limit")


def _sized(value) -> bool:
    return isinstance(value, (str, list, tuple, range, dict))


def _int(value, default: int = 0) -> int:
    return value if type(value) is int else default


# a field width or precision of 8 digits or more (or taken from the arguments) in a %-format or
# a str.format spec
_WIDE_PERCENT = re.compile(r"%[-#0 +]*(?:\*|\d{8,}|\d*\.(?:\*|\d{8,}))")
_WIDE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*(?:\d{8,}|\{)")


def _precheck(name: str, target, args: tuple, kwargs: dict, *, method: bool) -> None:
    """What a str method or filter that can build a value far larger than its input would
    build, checked before it runs. `target`: the str a method is bound to, or a filter's
    value."""
    arg = (lambda i, key, default=None: args[i] if len(args) > i else kwargs.get(key, default))
    if name in ("ljust", "rjust", "center", "zfill"):
        _check_size(_int(arg(0, "width")), name)
    elif name == "expandtabs" and isinstance(target, str):
        _check_size(len(target) * _int(arg(0, "tabsize", 8)), name)
    elif name == "indent" and isinstance(target, str):
        width = arg(0, "width", 4)
        width = len(width) if isinstance(width, str) else _int(width)
        _check_size(len(target) + (target.count("\n") + 1) * width, name)
    elif name == "replace" and isinstance(target, str):
        old, new = arg(0, "old"), arg(1, "new")
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            count = target.count(old) if old else len(target) + 1
            _check_size(len(target) + count * (len(new) - len(old)), name)
    elif name == "join":
        sep, items = (target, arg(0, "iterable")) if method else (arg(0, "d", ""), target)
        if isinstance(sep, str) and _sized(items):
            _check_size(len(sep) * len(items), name)
    elif name in ("format", "format_map") and isinstance(target, str):
        wide = _WIDE_FORMAT if method else _WIDE_PERCENT
        if wide.search(target):
            raise TemplateError(f"{name}: a field width or precision of 8 digits or more, or one "
                                "taken from the arguments, is not allowed")
    elif name == "slice" and not method:
        _check_size(_int(arg(0, "slices")), name)


_ITEMS = (list, tuple, range, dict)  # what a filter may go through item by item in Python
_CHECKED_METHODS = frozenset(("ljust", "rjust", "center", "zfill", "expandtabs", "replace",
                              "join", "format", "format_map"))
_CHECKED_FILTERS = ("center", "indent", "replace", "join", "format", "slice")


def _counted_filter(name: str, func):
    """A filter that spends a step, and one for each item of a list it is given; the few that
    can build a huge value are checked first."""
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # context / eval context / environment
    checked = name in _CHECKED_FILTERS

    @functools.wraps(func)
    def counted(*args, **kwargs):
        value = args[skip] if len(args) > skip else None
        _BUDGET.get().spend(1 + len(value) if isinstance(value, _ITEMS) else 1)
        if checked:
            _precheck(name, value, args[skip + 1:], kwargs, method=False)
        return func(*args, **kwargs)
    return counted


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox (no private or internal attributes, no changing a list or
    dict of the context) that also counts calls and checks what could build a huge value."""

    intercepted_binops = frozenset(("*", "**", "+", "%"))

    def getattr(self, obj, attribute):
        """`e.subject` on a dict: its item, without first failing to find an attribute (as
        jinja2 looks up `x.y`: attribute first, so `d.items` stays the method)."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def call(self, context, obj, /, *args, **kwargs):
        _BUDGET.get().spend()
        name = getattr(obj, "__name__", None)
        if name in _CHECKED_METHODS:
            bound = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)  # format: wrapped
            if isinstance(bound, str):
                _precheck(name, bound, args, kwargs, method=True)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(obj, (Macro, BlockReference)):
            return _Output(result)  # template text: its values were escaped as it was made
        if _sized(result):
            _check_size(len(result), "a call")
        return result

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            if type(left) is int and type(right) is int:
                _check_size((left.bit_length() + right.bit_length()) // 3, "*")
            else:
                for seq, n in ((left, right), (right, left)):
                    if _sized(seq) and type(n) is int:
                        _check_size(len(seq) * n, "*")
        elif operator == "**":
            if type(left) is int and type(right) is int and right > 0:
                _check_size(left.bit_length() * right // 3, "**")
        elif operator == "+":
            if _sized(left) and _sized(right):
                _check_size(len(left) + len(right), "+")
        elif operator == "%" and isinstance(left, str) and _WIDE_PERCENT.search(left):
            raise TemplateError("%: a field width or precision of 8 digits or more, or one taken "
                                "from the arguments, is not allowed")
        return super().call_binop(context, operator, left, right)


def _environment(content_type: str) -> _Sandbox:
    finalize = {JSON: _json_finalize, FORM: _form_finalize, TEXT: _text_finalize}[content_type]
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, finalize=finalize,
                   extensions=["jinja2.ext.loopcontrols"])
    for name, func in env.filters.items():
        env.filters[name] = _counted_filter(name, func)
    env.filters["tojson"] = tojson  # C-speed over values the size of its input: not counted
    env.filters[_STEPS_FILTER] = _steps
    env.filters[_CONCAT_FILTER] = _concat
    env.filters[_OUTPUT_FILTER] = _as_output
    if content_type != TEXT:
        del env.filters["safe"]  # the one way around the escaping
    return env


_ENVIRONMENTS = {ct: _environment(ct) for ct in CONTENT_TYPES}


def _filter(node: nodes.Node | None, name: str, lineno: int) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=lineno)


class _Bounds(NodeTransformer):
    """Every for loop's iterable counted, every `~` size-checked, set blocks' text kept as
    output. Refused: recursive loops (their inner iterations would not be counted) and, where
    `{{ }}` escapes, filter blocks and filtered set blocks (a filter over escaped text could
    undo the escaping)."""

    def __init__(self, escaping: bool):
        self.escaping = escaping

    def visit_For(self, node: nodes.For) -> nodes.Node:
        if node.recursive:
            raise TemplateError("recursive for loops are not supported (use a macro)", node.lineno)
        node = self.generic_visit(node)
        node.iter = _filter(node.iter, _STEPS_FILTER, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER, node.lineno)

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        if node.name in _INTERNAL_FILTERS:  # the engine's own, added after this visit
            raise TemplateError(f"No filter named {node.name!r}.", node.lineno)
        return self.generic_visit(node)

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> nodes.Node:
        if self.escaping:
            raise TemplateError("{% filter %} blocks are not supported in this content type "
                                "(apply the filter to the value)", node.lineno)
        return self.generic_visit(node)

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
        if node.filter is not None and self.escaping:
            raise TemplateError("a filtered {% set %} block is not supported in this content "
                                "type (apply the filter to the value)", node.lineno)
        node = self.generic_visit(node)
        if node.filter is None:
            node.filter = _filter(None, _OUTPUT_FILTER, node.lineno)
        return node


# ---------------------------------------------------------------------------------------------
# Compiling

_LINE_BREAKS = re.compile(r"\r?\n[ \t]*")


def _form_layout(tree: nodes.Template) -> None:
    """A form template may put one field a line: line breaks (and the indentation after them)
    in its literal text are not part of the body."""
    for data in tree.find_all(nodes.TemplateData):
        data.data = _LINE_BREAKS.sub("", data.data)


def media_type(content_type: str) -> str:
    """The declared content type, checked: one of CONTENT_TYPES (case and spaces aside)."""
    normal = content_type.strip().lower()
    if normal not in CONTENT_TYPES:
        raise TemplateError(f"unsupported content type {content_type!r} (supported: "
                            f"{', '.join(CONTENT_TYPES)})")
    return normal


def compile_template(source: str, content_type: str, kind: str) -> Template:
    """A template ready to render; TemplateError for a syntax error (with its line), an unknown
    filter or test, a recursive loop, or an unsupported content type or kind."""
    if kind not in KINDS:
        raise TemplateError(f"unknown template kind {kind!r} (known: {', '.join(KINDS)})")
    ctype = media_type(content_type)
    if len(source) > MAX_SOURCE_SIZE:
        raise TemplateError(f"template larger than {MAX_SOURCE_SIZE:,} characters")
    if not source.isascii() and _SURROGATE.search(source):
        raise TemplateError("the template is not valid UTF-8 text")
    env = _ENVIRONMENTS[ctype]
    try:
        tree = env.parse(source, filename=_TEMPLATE_FILE)
        if ctype == FORM:
            _form_layout(tree)
        tree = _Bounds(ctype != TEXT).visit(tree)
        code = env.compile(tree, filename=_TEMPLATE_FILE)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(_one_line(exc.message or "syntax error"), exc.lineno) from None
    except RecursionError:
        raise TemplateError("expressions nested too deeply") from None
    compiled = env.template_class.from_code(env, code, env.make_globals(None))
    return Template(source, ctype, kind, template_version(source, ctype), compiled)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# Contexts: what a template sees

def inbound_context(delivery: inbound.Delivery, *,
                    max_attachment_size: int = DEFAULT_MAX_ATTACHMENT_SIZE,
                    fetch_url: inbound.FetchUrl | None = None) -> dict:
    """The native inbound document's fields as variables (id, type, received, rule, envelope,
    message, api_key: null when the rule has none)."""
    doc = inbound.native_document(delivery, max_attachment_size=max_attachment_size, fetch_url=fetch_url)
    doc.setdefault("api_key", None)
    return doc


def events_context(batch: Iterable[dict | events.V1Text], *, tz=timezone.utc, batch_id: str,
                   endpoint_id: int | None, api_key: str | None = None) -> dict:
    """The version-1 batch document's fields as variables (type, version, batch_id,
    endpoint_id, count, events: the version-1 event objects, times in `tz`, each with an
    `engagement` object — null for other than engagement events, so a template reads
    `event.engagement` of any event; api_key: null when the endpoint has none)."""
    batch = list(batch)
    doc = events.document_v1((), tz=tz, batch_id=batch_id, endpoint_id=endpoint_id,
                             api_key=api_key)  # the top-level fields, from their one definition
    if tz is timezone.utc and all(type(e) is events.V1Text for e in batch):
        objects = json.loads("[" + ",".join(batch) + "]")  # fresh events: one parse
    else:
        objects = [events._v1_event(events.as_dict(e), tz) for e in batch]
    for obj in objects:
        obj.setdefault(events.V1_ENGAGEMENT_FIELD, None)
    doc["events"] = objects
    doc["count"] = len(objects)
    doc.setdefault("api_key", None)
    return doc


_SAMPLE_MESSAGE = (
    'From: "Ann \\"the boss\\" O\'Neil" <ann@sender.example>\r\n'
    "To: in@ours.example, Bob <bob@ours.example>\r\n"
    "Cc: carol@ours.example\r\n"
    "Subject: =?utf-8?q?Invoice_=2242=22_=E2=80=94_{{_total_}}_\\_d=C3=BCe?=\r\n"
    "Message-ID: <sample.1@sender.example>\r\n"
    "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    'Hello,\r\n\ttabbed "quoted" \\ text, {% raw %} and {{ braces }}.\r\n'
    "--b1\r\n"
    'Content-Type: text/csv; name="report.csv"\r\n'
    'Content-Disposition: attachment; filename="report.csv"\r\n'
    "\r\n"
    "a,b\r\n1,2\r\n"
    "--b1--\r\n"
).encode("utf-8")


def sample_inbound_context() -> dict:
    """A plausible inbound context (quotes, a backslash, `{{`, non-ASCII, an attachment), for
    `check`."""
    target = Target(kind="rule", id=1, name="sample", url="https://hooks.example/in")
    meta = {"received": "2026-11-22T12:00:00.123456Z", "queue_id": "4XbSample01",
            "mail_from": "bounces@sender.example", "client_addr": "192.0.2.1",
            "client_name": "mail.sender.example", "helo": "mail.sender.example",
            "deliveries": [{"recipients": ["in@ours.example", "bob@ours.example"],
                            "rule": target.to_record()}]}
    delivery = inbound.Delivery.of(delivery_id="sample-delivery-sample", meta=meta,
                                   raw=_SAMPLE_MESSAGE, target=target)
    return inbound_context(delivery)


def sample_events_context() -> dict:
    """A batch with one sample event of every type, for `check`."""
    batch = [events.sample_event(t, at="2026-11-22T12:00:00.123456Z") for t in TYPES]
    return events_context(batch, batch_id="evb_test_sample", endpoint_id=1)


SAMPLES: dict[str, Callable[[], dict]] = {"inbound": sample_inbound_context,
                                          "events": sample_events_context}


# ---------------------------------------------------------------------------------------------
# Rendering

def check(template: Template, *, clock: Callable[[], float] | None = None) -> Rendered:
    """Render the sample context of the template's kind (`SAMPLES`): the body, or TemplateError
    saying what is wrong (a JSON template whose output does not parse included)."""
    return render(template, SAMPLES[template.kind](), clock=clock)


class _OverCap(Exception):
    pass


def render(template: Template, context: dict, *,
           max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
           clock: Callable[[], float] | None = None) -> Rendered:
    """The request body. An inbound body over `max_payload_size` is rendered once more with
    every attachment's content omitted (as the native format omits them); a body still over it,
    a render error, too much work (MAX_STEPS; MAX_SECONDS by `clock`, e.g. time.monotonic, when
    given), or a JSON body that does not parse raises TemplateError with the reason. `context`
    is not changed."""
    budget = _Budget(MAX_STEPS, clock, MAX_SECONDS)  # one for both tries
    try:
        text = _render_capped(template, context, max_payload_size, budget)
    except _OverCap:
        lighter = _without_attachment_contents(context) if template.kind == "inbound" else None
        try:
            if lighter is None:
                raise
            text = _render_capped(template, lighter, max_payload_size, budget)
        except _OverCap:
            raise TemplateError(f"body over max_payload_size ({max_payload_size:,} bytes)"
                                + (" even without attachment contents" if lighter else "")) from None
    body = _body(template, text)
    if len(body) > max_payload_size:
        raise TemplateError(f"body over max_payload_size ({max_payload_size:,} bytes)")
    return Rendered(body, template.header)


def event_request(template: Template, batch: Iterable[dict | events.V1Text], ctx: EventContext, *,
                  clock: Callable[[], float] | None = None) -> Rendered:
    """An event batch's body through an endpoint's template, as a dialect's `event_request`."""
    return render(template, events_context(batch, tz=ctx.tz, batch_id=ctx.request_id,
                                           endpoint_id=ctx.endpoint_id, api_key=ctx.api_key),
                  clock=clock)


def inbound_request(template: Template, delivery: inbound.Delivery, ctx: InboundContext, *,
                    clock: Callable[[], float] | None = None) -> Rendered:
    """An inbound delivery's body through a rule's template, as a dialect's `inbound_request`."""
    return render(template, inbound_context(delivery, max_attachment_size=ctx.max_attachment_size,
                                           fetch_url=ctx.fetch_url(delivery)),
                  max_payload_size=ctx.max_payload_size, clock=clock)


def _render_capped(template: Template, context: dict, max_size: int, budget: _Budget) -> str:
    """The output, stopped as soon as it has more than `max_size` characters (each at least a
    byte), so a looping template cannot fill memory."""
    out = []
    size = 0
    token = _BUDGET.set(budget)
    try:
        for chunk in template.compiled.generate(context):
            size += len(chunk)
            if size > max_size:
                raise _OverCap
            out.append(chunk)
    except _OverCap:
        raise
    except TemplateError as exc:  # a bound: say where it was reached
        raise TemplateError(exc.reason, exc.line or _template_line(exc)) from None
    except SecurityError as exc:
        raise TemplateError(f"not allowed: {_one_line(exc)}", _template_line(exc)) from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(_one_line(exc), _template_line(exc)) from None
    except RecursionError as exc:
        raise TemplateError("macros call themselves too deeply", _template_line(exc)) from None
    except Exception as exc:  # a template may raise whatever its expressions raise
        raise TemplateError(f"{type(exc).__name__}: {_one_line(exc)}", _template_line(exc)) from None
    finally:
        _BUDGET.reset(token)
    return "".join(out)


def _template_line(exc: BaseException) -> int | None:
    """The template line of the innermost template frame of the traceback (jinja2 rewrites
    its frames to the template's lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _without_attachment_contents(context: dict) -> dict | None:
    """The context with every attachment's content omitted (a copy), or None if it has none."""
    message = context.get("message")
    attachments = message.get("attachments") if isinstance(message, dict) else None
    if not attachments or not any(isinstance(a, dict) and a.get("content") for a in attachments):
        return None
    omitted = [dict(a, content=None, omitted=True, omitted_reason="payload size cap")
               if isinstance(a, dict) and a.get("content") else a for a in attachments]
    return dict(context, message=dict(message, attachments=omitted))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _body(template: Template, text: str) -> bytes:
    if template.content_type == JSON:
        try:
            json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise TemplateError(_not_json(exc, text)) from None
    elif template.content_type == FORM:
        problem = _form_problem(text)
        if problem:
            raise TemplateError(problem)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a text template's values as they are
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _not_json(exc: ValueError, text: str) -> str:
    if isinstance(exc, json.JSONDecodeError):
        at = exc.pos
        excerpt = text[max(0, at - 30):at + 10]
        return (f"output is not JSON: {exc.msg} at output line {exc.lineno} column {exc.colno}, "
                f"near {excerpt!r} (write \"{{{{ x }}}}\" inside quotes, or {{{{ x|tojson }}}} for "
                "a JSON value)")
    return f"output is not JSON: {exc}"


_FORM_CHARS = re.compile(r"[A-Za-z0-9%&=+._~*-]*")


def _form_problem(text: str) -> str | None:
    bad = _FORM_CHARS.fullmatch(text) is None
    if not bad:
        try:
            parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            bad = True
    if not bad:
        return None
    return (f"output is not x-www-form-urlencoded (name=value&...: literal text must be "
            f"percent-encoded already): {text[:60]!r}")
