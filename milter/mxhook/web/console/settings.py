"""The console's settings pages (seed 000's settings tabs): permitted domains, inbound rules,
event endpoints and the block list, and the audit log. Each form is parsed into the fields
the API takes (web/api.py), handed to the same service, and recorded in the audit log as the
API records it (actor `user:NAME`, the API's operation names). Secrets are write-only here
too: a form never shows one back (an empty field keeps the one set); pages show `****`.
Deleting a domain, rule or endpoint asks for the account's password again, as seed 000 does."""
from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for

from mxhook.model.endpoints import CATEGORIES
from mxhook.model.targets import AUTH_FIELDS as AUTH
from mxhook.services import access, blocks, domains, endpoints, rules
from mxhook.services.errors import Invalid, ServiceError, Unavailable
from mxhook.web import api
from mxhook.web.console.core import audit, blueprint, cfg, check_password
from mxhook.web.present import redacted


# -- form fields ---------------------------------------------------------------------------

def text(name: str) -> str | None:
    value = request.form.get(name, "").strip()
    return value or None


def number(name: str) -> int | None:
    value = text(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise Invalid(f"{name.replace('_', ' ')} must be a whole number")
    return int(value)


def checked(name: str) -> bool:
    return request.form.get(name) == "on"


def lines(name: str) -> list[str]:
    return [line.strip() for line in request.form.get(name, "").splitlines() if line.strip()]


def destination_form() -> dict:
    """The destination's fields as the API's body has them (None: not given, keep)."""
    data = {key: text(key) for key in ("url", "dialect", "format", "retry_backoff", *AUTH)}
    data.update({key: number(key) for key in ("retry_interval", "retry_period", "retry_cap", "timeout")})
    data["allow_http"] = checked("allow_http")
    return data


def given(data: dict) -> dict:
    return {key: value for key, value in data.items() if value is not None}


def form_values(data: dict) -> dict:
    """What a form shows again after a refusal: what was typed, never a secret."""
    return {key: value for key, value in data.items() if key not in AUTH}


def listed(list_all) -> list:
    """A listing; empty before rules.db exists (the first add creates it)."""
    try:
        return list_all(cfg())
    except Unavailable as exc:
        if exc.code != "rules_db_missing":
            raise
        return []


def done(message: str, endpoint: str, **values):
    flash(message)
    return redirect(url_for(endpoint, **values))


def refused(template: str, exc: ServiceError, **context):
    return render_template(template, error=exc.message, **context), 400


# -- domains --------------------------------------------------------------------------------

@blueprint.route("/settings/domains")
def domain_list():
    return render_template("domains.html", domains=listed(domains.list_all))


@blueprint.route("/settings/domains", methods=["POST"])
def domain_add():
    data = {"name": text("name"), "log_denied": checked("log_denied"),
            "unmatched": text("unmatched") or "reject", "reject_text": text("reject_text")}
    try:
        added = domains.add(cfg(), data["name"] or "", log_denied=data["log_denied"],
                            unmatched=data["unmatched"], reject_text=data["reject_text"])
    except ServiceError as exc:
        return refused("domains.html", exc, domains=listed(domains.list_all), form=data)
    audit("domain.add", added["name"], given(data))
    return done(f"{added['name']} added", "console.domain_list")


@blueprint.route("/settings/domains/<name>", methods=["POST"])
def domain_edit(name):
    data = {"log_denied": checked("log_denied"), "unmatched": text("unmatched") or "reject",
            "reject_text": request.form.get("reject_text", "").strip()}
    try:
        domains.edit(cfg(), name, **data)
    except ServiceError as exc:
        return refused("domains.html", exc, domains=listed(domains.list_all))
    audit("domain.edit", name, data)
    return done(f"{name} saved", "console.domain_list")


# -- rules ----------------------------------------------------------------------------------

def rule_form() -> dict:
    return {"name": text("name"), "when": lines("when"), "unless": lines("unless"),
            "priority": number("priority"), "enabled": checked("enabled"),
            "discard": checked("discard"), "continue": checked("continue"),
            "include_raw": checked("include_raw"),
            "reject_text": request.form.get("reject_text", "").strip(),
            **destination_form()}


def rule_values(view: rules.RuleView) -> dict:
    """A stored rule as its edit form shows it (secrets: only whether one is set)."""
    d = redacted(view.as_dict())
    d["when"] = [f"{c['header']}~{c['pattern']}" for c in d["conditions"] if not c["negate"]]
    d["unless"] = [f"{c['header']}~{c['pattern']}" for c in d["conditions"] if c["negate"]]
    return d


@blueprint.route("/settings/rules")
def rule_list():
    views = [redacted(v.as_dict()) for v in listed(rules.list_all)]
    return render_template("rules.html", rules=views)


@blueprint.route("/settings/rules/new", methods=["GET", "POST"])
def rule_add():
    if request.method == "GET":
        return render_template("rule_form.html", rule={"enabled": True}, new=True)
    data = {}
    try:
        data = rule_form()
        added = rules.add(cfg(), name=data["name"] or "", destination=api.targets_destination(data),
                          when=data["when"], unless=data["unless"], priority=data["priority"],
                          discard=data["discard"], enabled=data["enabled"],
                          continue_matching=data["continue"], include_raw=data["include_raw"],
                          reject_text=data["reject_text"] or None, warn=flash)
    except ServiceError as exc:
        return refused("rule_form.html", exc, rule=form_values(data), new=True)
    audit("rule.add", added.rule.name, api.not_secret(given(data)))
    return done(f"rule {added.rule.name} added", "console.rule_list")


@blueprint.route("/settings/rules/<name>/edit", methods=["GET", "POST"])
def rule_edit(name):
    if request.method == "GET":
        return render_template("rule_form.html", rule=rule_values(rules.show(cfg(), name)), new=False)
    data = {}
    try:
        data = rule_form()
        new = rules.edit(cfg(), name, destination=api.destination_values(data),
                         clear_auth=checked("clear_auth"), when=data["when"], unless=data["unless"],
                         priority=data["priority"], new_name=data["name"], discard=data["discard"],
                         enabled=data["enabled"], continue_matching=data["continue"],
                         include_raw=data["include_raw"], reject_text=data["reject_text"], warn=flash)
    except ServiceError as exc:
        return refused("rule_form.html", exc, rule=dict(form_values(data), original=name), new=False)
    audit("rule.edit", name, api.not_secret(given(data)))
    return done(f"rule {new.name} saved", "console.rule_list")


@blueprint.route("/settings/rules/<name>/enabled", methods=["POST"])
def rule_enable(name):
    enabled = request.form.get("enabled") == "true"
    rules.set_enabled(cfg(), name, enabled)
    audit("rule.edit", name, {"enabled": enabled})
    return done(f"rule {name} {'enabled' if enabled else 'disabled'}", "console.rule_list")


# -- event endpoints ------------------------------------------------------------------------

def endpoint_form() -> dict:
    return {"events": [c for c in CATEGORIES if checked(f"events_{c}")],
            "interval": number("interval"), "max_events": number("max_events"),
            "version": number("version"), "timezone": text("timezone"),
            "enabled": checked("enabled"), **destination_form()}


@blueprint.route("/settings/endpoints")
def endpoint_list():
    views = [redacted(v.as_dict()) for v in listed(endpoints.list_all)]
    return render_template("endpoints.html", endpoints=views)


@blueprint.route("/settings/endpoints/new", methods=["GET", "POST"])
def endpoint_add():
    if request.method == "GET":
        return render_template("endpoint_form.html", endpoint={"enabled": True, "events": CATEGORIES},
                               categories=CATEGORIES, new=True)
    data = {}
    try:
        data = endpoint_form()
        view = endpoints.add(cfg(), destination=api.targets_destination(data),
                             categories=data["events"], interval=data["interval"],
                             max_events=data["max_events"], version=data["version"],
                             timezone=data["timezone"], enabled=data["enabled"], warn=flash)
    except ServiceError as exc:
        return refused("endpoint_form.html", exc, endpoint=form_values(data),
                       categories=CATEGORIES, new=True)
    audit("endpoint.add", str(view.endpoint.id), api.not_secret(given(data)))
    return done(f"endpoint {view.endpoint.id} added", "console.endpoint_list")


@blueprint.route("/settings/endpoints/<int:endpoint_id>/edit", methods=["GET", "POST"])
def endpoint_edit(endpoint_id):
    if request.method == "GET":
        return render_template("endpoint_form.html", endpoint=redacted(endpoints.show(cfg(), endpoint_id).as_dict()),
                               categories=CATEGORIES, new=False)
    data = {}
    try:
        data = endpoint_form()
        endpoints.edit(cfg(), endpoint_id, destination=api.destination_values(data),
                       clear_auth=checked("clear_auth"), categories=data["events"],
                       interval=data["interval"], max_events=data["max_events"],
                       version=data["version"], timezone=data["timezone"], enabled=data["enabled"],
                       warn=flash)
    except ServiceError as exc:
        return refused("endpoint_form.html", exc, endpoint=dict(form_values(data), id=endpoint_id),
                       categories=CATEGORIES, new=False)
    audit("endpoint.edit", str(endpoint_id), api.not_secret(given(data)))
    return done(f"endpoint {endpoint_id} saved", "console.endpoint_list")


@blueprint.route("/settings/endpoints/<int:endpoint_id>/enabled", methods=["POST"])
def endpoint_enable(endpoint_id):
    enabled = request.form.get("enabled") == "true"
    endpoints.edit(cfg(), endpoint_id, enabled=enabled)
    audit("endpoint.edit", str(endpoint_id), {"enabled": enabled})
    return done(f"endpoint {endpoint_id} {'enabled' if enabled else 'disabled'}", "console.endpoint_list")


# -- deleting, after the password again ----------------------------------------------------

def _remove_endpoint(key: str) -> str:
    if not key.isdigit():
        abort(404)
    return endpoints.remove(cfg(), int(key)).destination.url


REMOVALS = {  # kind -> (what, remove(key) -> shown name, audit action, list page)
    "domains": ("domain", lambda key: domains.remove(cfg(), key), "domain.remove", "console.domain_list"),
    "rules": ("rule", lambda key: rules.remove(cfg(), key) or key, "rule.remove", "console.rule_list"),
    "endpoints": ("endpoint", _remove_endpoint, "endpoint.remove", "console.endpoint_list"),
}


@blueprint.route("/settings/<kind>/<key>/delete", methods=["GET", "POST"])
def delete(kind, key):
    if kind not in REMOVALS:
        abort(404)
    what, remove, action, back = REMOVALS[kind]
    if request.method == "POST":
        if not check_password(g.user, request.form.get("password", "")):
            return render_template("delete.html", what=what, key=key, kind=kind, back=back,
                                   error="wrong password: nothing was deleted"), 403
        removed = remove(key)
        audit(action, key)
        return done(f"{what} {removed} deleted", back)
    return render_template("delete.html", what=what, key=key, kind=kind, back=back)


# -- block list -----------------------------------------------------------------------------

@blueprint.route("/settings/blocks")
def block_list():
    address = request.args.get("address", "").strip()
    if address:
        try:
            entries = [blocks.search(cfg(), address)]
        except ServiceError:
            entries = []
    else:
        entries = listed(blocks.list_all)
    return render_template("blocks.html", blocks=entries, address=address)


@blueprint.route("/settings/blocks", methods=["POST"])
def block_add():
    address, reason = text("address") or "", text("reason")
    try:
        change = blocks.add(cfg(), address, reason=reason, source="api")
    except ServiceError as exc:
        return refused("blocks.html", exc, blocks=listed(blocks.list_all), address="")
    audit("block.add", change.address, given({"event_id": change.event_id, "reason": reason}))
    return done(f"{change.address} blocked", "console.block_list")


@blueprint.route("/settings/blocks/<address>/<how>", methods=["POST"])
def block_remove(address, how):
    reasons = {"delete": "deleted through the console", "cancel": "cancelled through the console"}
    if how not in reasons:
        abort(404)
    change = blocks.remove(cfg(), address, reason=text("reason") or reasons[how], source="api")
    audit(f"block.{how}", change.address, {"event_id": change.event_id})
    return done(f"{change.address} removed from the block list", "console.block_list")


# -- audit ----------------------------------------------------------------------------------

@blueprint.route("/audit")
def audit_log():
    return render_template("audit.html", entries=access.audit(cfg(), limit=200))
