"""The REST API, `/v1`: each view parses the request, calls the service the CLI calls for the
same thing, and returns its answer as JSON (secrets never: `present.redacted`). Writes are
recorded in the audit log with the token's name. Every route is declared with `route`, which
also describes it for the OpenAPI document (`ROUTES`, web/openapi.py)."""
from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from urllib.parse import quote

from flask import Blueprint, Response, g, jsonify, request

from mxhook.model.targets import AUTH_FIELDS, destination
from mxhook.services import (attachments, blocks, domains, endpoints, explain, logs, msndr,
                             replay, rules, status, targets, tracking)
from mxhook.services.errors import Invalid, NotFound
from mxhook.services.targets import TemplateGiven
from mxhook.services.times import parse_time
from mxhook.web import openapi
from mxhook.web.auth import PUBLIC_ENDPOINTS, audit, cfg, refuse_read_only
from mxhook.web.errors import ApiError
from mxhook.web.present import csv_download, redacted

blueprint = Blueprint("api", __name__, url_prefix="/v1")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # Flask's form, under /v1
    name: str  # the operation (operationId; the audit action of a write)
    summary: str
    query: tuple = ()  # (name, type, description) of the query parameters
    body: dict | None = None  # field -> (type, description) of a JSON body
    status: int = 200
    content: str = "application/json"
    changes: bool | None = None  # None: every method but GET changes something
    public: bool = False  # no Bearer token: the path itself is the credential (a signed URL)

    @property
    def write(self) -> bool:
        """Whether the route changes something: refused to read-only tokens, audited."""
        return self.method != "GET" if self.changes is None else self.changes


ROUTES: list[Route] = []


def route(method: str, path: str, name: str, summary: str, **kw):
    """Declare and register a view; a write's success is audited as `name` on the target the
    view names in `g.audit_target` (else the path's values), with `g.audit_detail`."""
    spec = Route(method, "/v1" + path, name, summary, **kw)
    ROUTES.append(spec)

    def deco(view):
        @functools.wraps(view)
        def wrapped(**kwargs):
            if spec.write:
                refuse_read_only()
            g.audit_target, g.audit_detail = None, None
            result = view(**kwargs)
            if spec.write:
                target = g.audit_target or " ".join(str(v) for v in kwargs.values()) or None
                audit(name, target, g.audit_detail)
            return result

        endpoint = name.replace(".", "_")
        blueprint.add_url_rule(path, endpoint=endpoint, view_func=wrapped, methods=[method])
        if spec.public:
            PUBLIC_ENDPOINTS.add(f"{blueprint.name}.{endpoint}")
        return wrapped

    return deco


# -- request parsing --------------------------------------------------------------------------

STR, INT, NUM, BOOL, STRS, OBJ = "string", "integer", "number", "boolean", "array", "object"
_CHECKS = {
    STR: lambda v: isinstance(v, str),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    NUM: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    BOOL: lambda v: isinstance(v, bool),
    STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    OBJ: lambda v: isinstance(v, dict),
}


def body_of(spec: Route, *, required: tuple = ()) -> dict:
    """The JSON object of the request, each field checked against the route's `body`; unknown
    fields are refused (a typo must not pass silently). null = not given."""
    # parsed whatever the Content-Type says: a client written for msndr may leave it out
    data = request.get_json(force=True, silent=True) if request.content_length or request.data else {}
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    fields = spec.body or {}
    for key, value in data.items():
        if key not in fields:
            raise ApiError(400, "unknown_field", f"unknown field {key!r} (known: {', '.join(fields)})")
        kind = fields[key][0]
        if value is not None and not _CHECKS[kind](value):
            raise ApiError(400, "invalid_field", f"{key} must be {'an' if kind[0] in 'aio' else 'a'} {kind}")
    for key in required:
        if data.get(key) is None:
            raise ApiError(400, "missing_field", f"{key} is required")
    return {k: v for k, v in data.items() if v is not None}


def spec_of(name: str) -> Route:
    return next(r for r in ROUTES if r.name == name)


def query_of(spec: Route) -> dict:
    """The query parameters the route declares, typed; unknown ones are refused."""
    known = {q[0]: q[1] for q in spec.query}
    out = {}
    for key in request.args:
        if key not in known:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter {key!r}"
                           + (f" (known: {', '.join(known)})" if known else ""))
        text = request.args[key]
        kind = known[key]
        if kind == INT:
            if not re.fullmatch(r"[0-9]{1,9}", text):
                raise ApiError(400, "invalid_parameter", f"{key} must be a whole number")
            out[key] = int(text)
        elif kind == BOOL:
            if text not in ("true", "false", "1", "0"):
                raise ApiError(400, "invalid_parameter", f"{key} must be true or false")
            out[key] = text in ("true", "1")
        elif kind == "time":
            try:
                out[key] = parse_time(text)
            except ValueError as exc:
                raise Invalid(f"{key}: {exc}", "invalid_time") from None
        else:
            out[key] = text
    return out


def json_response(data, status: int = 200, warnings: list | None = None):
    if warnings:
        data = dict(data, warnings=warnings)
    response = jsonify(redacted(data))
    response.status_code = status
    return response


def not_secret(data: dict) -> dict:
    """What the audit log keeps of a body: every field, a secret as "****"."""
    return {k: ("****" if k in AUTH_FIELDS or k == "template" else v) for k, v in data.items()}


# -- destinations (rules and endpoints alike) -----------------------------------------------

DESTINATION = {
    "url": (STR, "Webhook URL (https:// unless allow_http)."),
    "dialect": (STR, "Whose request bodies (GET /v1/dialects)."),
    "format": (STR, "Payload format of the native dialect."),
    "basic_auth": (STR, "HTTP Basic auth USER:PASS (write-only)."),
    "bearer": (STR, "Bearer token (write-only)."),
    "api_key": (STR, "API key sent in the payload body (write-only)."),
    "signing_key": (STR, "The dialect's signing key (write-only)."),
    "retry_interval": (INT, "Seconds between retries (10..600)."),
    "retry_period": (INT, "Days to keep retrying (1..10)."),
    "retry_backoff": (STR, "How waits between retries grow: fixed (every one retry_interval) or "
                           "exponential (doubling from retry_interval up to retry_cap)."),
    "retry_cap": (INT, "Seconds an exponential backoff grows to at most (10..86400)."),
    "timeout": (INT, "Request timeout in seconds (1..999)."),
    "allow_http": (BOOL, "Allow a plain http:// URL."),
    "template": (OBJ, "A jinja2 template of the body: {source, content_type}."),
}
DESTINATION_EDIT = {
    **DESTINATION,
    "clear_auth": (BOOL, "Remove every credential (before applying new ones given)."),
    "no_template": (BOOL, "Back to the dialect's own body."),
}
_DEST_FIELDS = ("url", "dialect", "format", "basic_auth", "bearer", "api_key", "signing_key",
                "retry_interval", "retry_period", "retry_backoff", "retry_cap", "timeout", "allow_http")


def destination_values(data: dict) -> dict:
    return {k: data.get(k) for k in _DEST_FIELDS}


def template_of(data: dict) -> TemplateGiven | None:
    given = data.get("template")
    if given is None:
        return None
    source, content_type = given.get("source"), given.get("content_type", "application/json")
    if not isinstance(source, str) or not isinstance(content_type, str) or set(given) - {"source", "content_type"}:
        raise ApiError(400, "invalid_field", "template must be {\"source\": TEXT, \"content_type\": TYPE}")
    return TemplateGiven(source, content_type, name="the template")


def warnings_list() -> tuple[list, callable]:
    found: list[str] = []
    return found, found.append


# -- status, dialects ---------------------------------------------------------------------

@route("GET", "/status", "status", "Spool backlog, pending deliveries, each rule's and endpoint's state.")
def get_status():
    return json_response(status.collect(cfg()))


@route("GET", "/dialects", "dialects", "Every payload dialect, with what each side posts.")
def get_dialects():
    return json_response({"items": targets.dialect_list()})


@route("GET", "/openapi.json", "openapi", "This API, as an OpenAPI 3 document.")
def get_openapi():
    return jsonify(openapi.document(ROUTES))


# -- domains --------------------------------------------------------------------------------

DOMAIN = {"name": (STR, "The domain (U-label or A-label)."),
          "log_denied": (BOOL, "Log mail to it that is denied (default true)."),
          "unmatched": (STR, "Recipients no rule takes: reject (default) or pass (Postfix delivers them)."),
          "reject_text": (STR, "The text of the 550 refusing them (empty: mxhook's own).")}
DOMAIN_SETTINGS = ("log_denied", "unmatched", "reject_text")


@route("GET", "/domains", "domain.list", "Permitted domains.")
def domain_list():
    return json_response({"items": domains.list_all(cfg())})


@route("POST", "/domains", "domain.add", "Permit a domain.", body=DOMAIN, status=201)
def domain_add():
    data = body_of(spec_of("domain.add"), required=("name",))
    added = domains.add(cfg(), data["name"], log_denied=data.get("log_denied", True),
                        unmatched=data.get("unmatched") or "reject", reject_text=data.get("reject_text"))
    g.audit_target, g.audit_detail = added["name"], data
    return json_response(added, 201)


@route("GET", "/domains/<name>", "domain.get", "One permitted domain.")
def domain_get(name):
    return json_response(domains.get(cfg(), name))


@route("PATCH", "/domains/<name>", "domain.edit", "Change a domain's settings (the fields given).",
       body={key: DOMAIN[key] for key in DOMAIN_SETTINGS})
def domain_edit(name):
    data = body_of(spec_of("domain.edit"))
    g.audit_detail = data
    return json_response(domains.edit(cfg(), name, **{key: data.get(key) for key in DOMAIN_SETTINGS}))


@route("DELETE", "/domains/<name>", "domain.remove", "Stop permitting a domain.")
def domain_remove(name):
    removed = domains.remove(cfg(), name)
    g.audit_target = removed
    return json_response({"deleted": removed})


# -- rules ----------------------------------------------------------------------------------

RULE = {
    "name": (STR, "The rule's name."),
    "when": (STRS, "Conditions HEADER~REGEX that must hold."),
    "unless": (STRS, "Conditions HEADER~REGEX that must not hold."),
    "priority": (INT, "Place in the evaluation order (lower first)."),
    "discard": (BOOL, "Webhook only: the mail is not delivered on."),
    "enabled": (BOOL, "Whether the rule takes mail."),
    "continue": (BOOL, "Offer the mail it takes to the rules after it too (fan-out)."),
    "include_raw": (BOOL, "Post the raw message beside the parsed one (native json/multipart)."),
    "reject_text": (STR, "The 550 text when its recipients match no rule (empty: the domain's)."),
    **DESTINATION,
}
RULE_ADD = {**RULE, "ed25519": (BOOL, "Also sign with an ed25519 key pair.")}
RULE_EDIT = {**RULE, **DESTINATION_EDIT, "name": (STR, "A new name.")}


@route("GET", "/rules", "rule.list", "Inbound rules in evaluation order.")
def rule_list():
    views = rules.list_all(cfg(), with_keys=True)
    return json_response({"items": [v.as_dict() for v in views]})


@route("POST", "/rules", "rule.add", "Add an inbound rule.", body=RULE_ADD, status=201)
def rule_add():
    data = body_of(spec_of("rule.add"), required=("name", "url"))
    found, warn = warnings_list()
    added = rules.add(cfg(), name=data["name"], destination=targets_destination(data),
                      when=data.get("when", ()), unless=data.get("unless", ()),
                      priority=data.get("priority"), discard=data.get("discard", False),
                      enabled=data.get("enabled", True), ed25519=data.get("ed25519", False),
                      continue_matching=data.get("continue", False),
                      include_raw=data.get("include_raw", False), reject_text=data.get("reject_text"),
                      template=template_of(data), warn=warn)
    g.audit_target, g.audit_detail = added.rule.name, not_secret(data)
    view = rules.show(cfg(), added.rule.name)
    return json_response(dict(view.as_dict(), no_domains=added.no_domains), 201, found)


def targets_destination(data: dict):
    return destination(**destination_values(data))


@route("GET", "/rules/<name>", "rule.get", "One rule (secrets never shown).",
       query=(("template_source", BOOL, "Include the current template's source."),))
def rule_get(name):
    q = query_of(spec_of("rule.get"))
    return json_response(rules.show(cfg(), name).as_dict(template_source=q.get("template_source", False)))


@route("PATCH", "/rules/<name>", "rule.edit", "Change a rule; fields not given keep their value.",
       body=RULE_EDIT)
def rule_edit(name):
    data = body_of(spec_of("rule.edit"))
    found, warn = warnings_list()
    new = rules.edit(cfg(), name, destination=destination_values(data),
                     clear_auth=data.get("clear_auth", False), when=data.get("when", ()),
                     unless=data.get("unless", ()), priority=data.get("priority"),
                     new_name=data.get("name"), discard=data.get("discard"),
                     enabled=data.get("enabled"), continue_matching=data.get("continue"),
                     include_raw=data.get("include_raw"), reject_text=data.get("reject_text"),
                     template=template_of(data), no_template=data.get("no_template", False), warn=warn)
    g.audit_detail = not_secret(data)
    return json_response(rules.show(cfg(), new.name).as_dict(), 200, found)


@route("POST", "/rules/test", "rule.test", "Dry run: what the milter would answer for a message "
       "and its recipients, and why (`mxhook rule test`); changes nothing.",
       body={"message": (STR, "The message as RFC 5322 text (header fields, empty line, body)."),
             "rcpt": (STRS, "Envelope recipients, in RCPT order."),
             "mail_from": (STR, "Envelope sender.")}, changes=False)
def rule_test():
    data = body_of(spec_of("rule.test"), required=("message", "rcpt"))
    try:  # \udc80-\udcff in the JSON text stand for the bytes 0x80-0xff that are not UTF-8
        message = io.BytesIO(data["message"].encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_field", "message holds a lone surrogate") from None
    return json_response(explain.explain_message(cfg(), message, data["rcpt"], data.get("mail_from")))


@route("DELETE", "/rules/<name>", "rule.remove", "Remove a rule.")
def rule_remove(name):
    rules.remove(cfg(), name)
    return json_response({"deleted": name})


# -- event endpoints ------------------------------------------------------------------------

ENDPOINT = {
    "events": (STRS, "Categories: deliveries, bounces, blocks (default: all)."),
    "interval": (INT, "Send when the oldest pending event is this many seconds old."),
    "max_events": (INT, "Send when this many events are pending; never more per POST."),
    "version": (INT, "Payload version (pinned)."),
    "timezone": (STR, "Time zone of timestamps in payloads."),
    "enabled": (BOOL, "Whether events are queued and sent."),
    "custom_headers": (STRS, "Message headers the bodies carry besides [milter] event_headers "
                             "(SMTP2GO: extra fields), as named here; [] for none."),
    **DESTINATION,
}
ENDPOINT_ADD = {**ENDPOINT, "ed25519": (BOOL, "Also sign with an ed25519 key pair.")}
ENDPOINT_EDIT = {**ENDPOINT, **DESTINATION_EDIT}


@route("GET", "/endpoints", "endpoint.list", "Event endpoints.")
def endpoint_list():
    views = endpoints.list_all(cfg(), with_keys=True)
    return json_response({"items": [v.as_dict() for v in views]})


@route("POST", "/endpoints", "endpoint.add", "Add an event endpoint.", body=ENDPOINT_ADD, status=201)
def endpoint_add():
    data = body_of(spec_of("endpoint.add"), required=("url",))
    found, warn = warnings_list()
    view = endpoints.add(cfg(), destination=targets_destination(data), categories=data.get("events"),
                         interval=data.get("interval"), max_events=data.get("max_events"),
                         version=data.get("version"), timezone=data.get("timezone"),
                         enabled=data.get("enabled", True), ed25519=data.get("ed25519", False),
                         template=template_of(data), custom_headers=data.get("custom_headers", ()),
                         warn=warn)
    g.audit_target, g.audit_detail = str(view.endpoint.id), not_secret(data)
    return json_response(endpoints.show(cfg(), view.endpoint.id).as_dict(), 201, found)


@route("GET", "/endpoints/<int:endpoint_id>", "endpoint.get", "One event endpoint (secrets never shown).",
       query=(("template_source", BOOL, "Include the current template's source."),))
def endpoint_get(endpoint_id):
    q = query_of(spec_of("endpoint.get"))
    return json_response(endpoints.show(cfg(), endpoint_id).as_dict(
        template_source=q.get("template_source", False)))


@route("PATCH", "/endpoints/<int:endpoint_id>", "endpoint.edit",
       "Change an endpoint; fields not given keep their value.", body=ENDPOINT_EDIT)
def endpoint_edit(endpoint_id):
    data = body_of(spec_of("endpoint.edit"))
    found, warn = warnings_list()
    endpoints.edit(cfg(), endpoint_id, destination=destination_values(data),
                   clear_auth=data.get("clear_auth", False), categories=data.get("events"),
                   interval=data.get("interval"), max_events=data.get("max_events"),
                   version=data.get("version"), timezone=data.get("timezone"),
                   enabled=data.get("enabled"), template=template_of(data),
                   no_template=data.get("no_template", False),
                   custom_headers=data.get("custom_headers"), warn=warn)
    g.audit_detail = not_secret(data)
    return json_response(endpoints.show(cfg(), endpoint_id).as_dict(), 200, found)


@route("DELETE", "/endpoints/<int:endpoint_id>", "endpoint.remove",
       "Remove an endpoint (its pending events are marked failed).")
def endpoint_remove(endpoint_id):
    ep = endpoints.remove(cfg(), endpoint_id)
    return json_response({"deleted": ep.id, "url": ep.destination.url})


@route("POST", "/endpoints/<int:endpoint_id>/test", "endpoint.test",
       "Post one sample event to the endpoint now and answer its reply (`mxhook endpoint test`).",
       body={"type": (STR, "The sample event's type (default bounced).")})
def endpoint_test(endpoint_id):
    data = body_of(spec_of("endpoint.test"))
    sent = endpoints.send_test(cfg(), endpoint_id, data.get("type", "bounced"))
    outcome = sent.outcome
    g.audit_detail = {"type": data.get("type", "bounced"), "outcome": outcome.status}
    return json_response({"endpoint": endpoint_id, "url": sent.endpoint.destination.url,
                          "webhook_id": sent.batch_id, "status": outcome.status,
                          "status_code": outcome.status_code, "duration_ms": outcome.duration_ms,
                          "error": outcome.error, "reply": outcome.response_excerpt})


# -- block list -----------------------------------------------------------------------------

@route("GET", "/blocks", "block.list", "The block list, oldest first; or the entry of one address.",
       query=(("address", STR, "Only this address (any case or form mail uses)."),))
def block_list():
    q = query_of(spec_of("block.list"))
    if "address" in q:
        try:
            return json_response({"items": [blocks.search(cfg(), q["address"])]})
        except NotFound:
            return json_response({"items": []})
    return json_response({"items": blocks.list_all(cfg())})


@route("GET", "/blocks/<address>", "block.get", "The block list entry of an address.")
def block_get(address):
    return json_response(blocks.search(cfg(), address))


@route("POST", "/blocks", "block.add", "Block an address (emits a registered event).",
       body={"address": (STR, "The address."), "reason": (STR, "Why."),
             "scope": (STR, "Only mail from this sending domain (a suppression); default * (all).")},
       status=201)
def block_add():
    data = body_of(spec_of("block.add"), required=("address",))
    done = blocks.add(cfg(), data["address"], reason=data.get("reason"), source="api",
                      scope=data.get("scope", "*"))
    g.audit_target, g.audit_detail = done.address, {"event_id": done.event_id, **data}
    return json_response({"address": done.address, "event": "registered", "event_id": done.event_id}, 201)


@route("DELETE", "/blocks/<address>", "block.delete",
       "Delete an address from the block list (emits a deleted event).",
       query=(("scope", STR, "Only its entry of this sending domain (one suppression), or * "
                             "(the one for every sending domain); default: every entry."),))
def block_delete(address):
    q = query_of(spec_of("block.delete"))
    done = blocks.remove(cfg(), address, reason="deleted through the API", source="api",
                         scope=q.get("scope"))
    g.audit_target, g.audit_detail = done.address, {"event_id": done.event_id, **q}
    return json_response({"address": done.address, "event": "deleted", "event_id": done.event_id})


@route("POST", "/blocks/<address>/cancel", "block.cancel",
       "Cancel the blocking of an address (emits a deleted event).",
       body={"reason": (STR, "Why (default: cancelled through the API).")})
def block_cancel(address):
    data = body_of(spec_of("block.cancel"))
    done = blocks.remove(cfg(), address, reason=data.get("reason", "cancelled through the API"),
                         source="api")
    g.audit_target, g.audit_detail = done.address, {"event_id": done.event_id, **data}
    return json_response({"address": done.address, "event": "deleted", "event_id": done.event_id})


# -- tracking of outbound mail (docs/tracking.md) -----------------------------------------------

TRACKING = {
    "opens": (BOOL, "Add an open-tracking pixel to the HTML part."),
    "clicks": (BOOL, "Rewrite the HTML part's http(s) links to go through mxhook-track."),
    "text_links": (BOOL, "Rewrite the text part's links too."),
    "unsubscribe": (BOOL, "Add List-Unsubscribe and List-Unsubscribe-Post (one-click, RFC 8058) "
                          "unless the message has its own."),
    "honeypot": (BOOL, "Add a link no person sees: a click on it marks a machine."),
}


@route("GET", "/tracking", "tracking.list", "Every sending domain's tracking settings.")
def tracking_list():
    return json_response({"items": tracking.list_all(cfg())})


@route("GET", "/tracking/<domain>", "tracking.get", "One sending domain's tracking settings.")
def tracking_get(domain):
    return json_response(tracking.get(cfg(), domain))


@route("PUT", "/tracking/<domain>", "tracking.set",
       "Set a sending domain's tracking (the fields given; a new domain starts with opens and "
       "clicks).", body=TRACKING)
def tracking_set(domain):
    data = body_of(spec_of("tracking.set"))
    settings = tracking.set_domain(cfg(), domain, **data)
    g.audit_target, g.audit_detail = settings["domain"], data
    return json_response(settings)


@route("DELETE", "/tracking/<domain>", "tracking.remove",
       "Remove a sending domain's tracking settings (its mail is no longer tracked).")
def tracking_remove(domain):
    removed = tracking.remove(cfg(), domain)
    g.audit_target = removed
    return json_response({"deleted": removed})


# -- logs -----------------------------------------------------------------------------------

LOG_QUERY = (("status", STR, "Only this status."),
             ("since", "time", "From this time on (ISO, or an age: 30m, 2h, 7d)."),
             ("until", "time", "Before this time (ISO, or an age)."),
             ("recipient", STR, "A recipient (any case): an address, @domain, the start of an "
                                "address (alice), or a pattern with * (slower: a scan)."))
PAGE_QUERY = (("cursor", STR, "next_cursor of the previous page."),
              ("limit", INT, f"Rows a page (1..{logs.MAX_PAGE}, default 100)."))
INBOUND_QUERY = LOG_QUERY + (("rule", STR, "Only this rule (or the filter that denied)."),)
EVENT_QUERY = LOG_QUERY + (("endpoint", INT, "Only this endpoint's deliveries."),)
REPLAY_ONE = {"force": (BOOL, "Queue it even when its rule or endpoint is disabled."),
              "dry_run": (BOOL, "Say what would be replayed; change nothing.")}


def _csv(log: str, filters: dict, filename: str) -> Response:
    return csv_download(logs.csv_chunks(cfg(), log, **filters), filename)


@route("GET", "/logs/inbound", "log.inbound", "The inbound log, newest first, a page at a time.",
       query=INBOUND_QUERY + PAGE_QUERY)
def log_inbound():
    return json_response(logs.inbound_page(cfg(), **query_of(spec_of("log.inbound"))))


@route("GET", "/logs/inbound.csv", "log.inbound.csv", "Every matching inbound log row as CSV.",
       query=INBOUND_QUERY, content="text/csv")
def log_inbound_csv():
    return _csv("inbound", query_of(spec_of("log.inbound.csv")), "inbound-log.csv")


@route("GET", "/logs/inbound/<entry_id>", "log.inbound.get",
       "One inbound log entry with every delivery attempt.")
def log_inbound_get(entry_id):
    return json_response(logs.inbound_detail(cfg(), entry_id))


@route("POST", "/logs/inbound/<entry_id>/replay", "log.inbound.replay",
       "Replay a failed inbound delivery (same webhook-id).", body=REPLAY_ONE)
def log_inbound_replay(entry_id):
    data = body_of(spec_of("log.inbound.replay"))
    g.audit_detail = data
    return json_response(replay.replay(cfg(), ids=[entry_id], force=data.get("force", False),
                                       dry_run=data.get("dry_run", False)).as_dict())


@route("GET", "/logs/events", "log.events", "The event log (one row per event and endpoint), "
       "newest first, a page at a time.", query=EVENT_QUERY + PAGE_QUERY)
def log_events():
    return json_response(logs.events_page(cfg(), **query_of(spec_of("log.events"))))


@route("GET", "/logs/events.csv", "log.events.csv", "Every matching event log row as CSV.",
       query=EVENT_QUERY, content="text/csv")
def log_events_csv():
    return _csv("events", query_of(spec_of("log.events.csv")), "event-log.csv")


@route("GET", "/logs/events/<event_id>", "log.events.get",
       "One event with its delivery to each endpoint and every attempt.")
def log_events_get(event_id):
    return json_response(logs.event_detail(cfg(), event_id))


@route("POST", "/logs/events/<event_id>/replay", "log.events.replay",
       "Replay an event alone to each endpoint its delivery to failed.", body=REPLAY_ONE)
def log_events_replay(event_id):
    data = body_of(spec_of("log.events.replay"))
    g.audit_detail = data
    return json_response(replay.replay_event(cfg(), event_id, force=data.get("force", False),
                                             dry_run=data.get("dry_run", False)).as_dict())


@route("POST", "/replay", "replay", "Replay failed deliveries or batches: given ids, or a rule's "
       "or an endpoint's in a time range.",
       body={"ids": (STRS, "Delivery ids, batch ids (evb_...) or inbound message ids."),
             "rule": (STR, "Every failed delivery of this rule."),
             "endpoint": (STR, "Every failed batch of this endpoint (id or URL)."),
             "since": (STR, "With rule/endpoint: from this time on (ISO, or an age)."),
             "until": (STR, "With rule/endpoint: before this time."), **REPLAY_ONE})
def replay_range():
    data = body_of(spec_of("replay"))
    g.audit_target = data.get("rule") or data.get("endpoint") or ",".join(data.get("ids", ())) or None
    g.audit_detail = data
    return json_response(replay.replay(
        cfg(), ids=tuple(data.get("ids", ())), rule=data.get("rule"), endpoint=data.get("endpoint"),
        since=data.get("since"), until=data.get("until"), force=data.get("force", False),
        dry_run=data.get("dry_run", False)).as_dict())


# -- msndr's webhook API (seed 003) -----------------------------------------------------------

MSNDR_BODY = {"url": (STR, "Your endpoint for event data.")}


@route("GET", "/email/webhook", "msndr.get", "msndr-compatible: the webhook URL.")
def msndr_get():
    return jsonify(msndr.get(cfg()))


@route("POST", "/email/webhook", "msndr.set",
       "msndr-compatible: set the webhook URL (an event endpoint with the msndr dialect).",
       body=MSNDR_BODY)
def msndr_set():
    data = body_of(spec_of("msndr.set"), required=("url",))
    answer, endpoint_id = msndr.set_url(cfg(), data["url"])
    g.audit_target, g.audit_detail = str(endpoint_id), answer
    return jsonify(answer)


@route("DELETE", "/email/webhook", "msndr.remove", "msndr-compatible: remove the webhook.",
       body=MSNDR_BODY)
def msndr_remove():
    body_of(spec_of("msndr.remove"))  # msndr's clients send {"url": ...}; it names nothing more
    answer, endpoint_id = msndr.remove(cfg())
    g.audit_target, g.audit_detail = str(endpoint_id), answer
    return jsonify(answer)


# -- fetch URLs of omitted attachment contents -------------------------------------------------

@route("GET", "/attachments/<token>", "attachment.get",
       "An attachment (or raw message) a payload omitted, by the signed, expiring token of its "
       "`url`; no Bearer token (the URL is the credential); 404 for any invalid one.",
       content="application/octet-stream", public=True)
def attachment_get(token):
    found = attachments.fetch(cfg(), token)
    return Response(found.content, headers={
        "Content-Type": header_value(found.content_type) or "application/octet-stream",
        "Content-Disposition": content_disposition(found.filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    })


_UNSAFE_IN_QUOTES = re.compile(r'[^\x20-\x7e]|["\\/%;]')


def header_value(text: str) -> str:
    """`text` as a header value: printable ASCII only (nothing can end or split the line)."""
    return re.sub(r"[^\x20-\x7e]", "", text).strip()


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name as RFC 5987's filename*."""
    fallback = _UNSAFE_IN_QUOTES.sub("_", filename) or "attachment"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename.encode('utf-8', 'replace'), safe='')}"
