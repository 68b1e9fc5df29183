"""`mxhook config export` / `import`: permitted domains, inbound rules, event endpoints, the
block list and tracking settings as one document (docs/automation.md), so several MX hosts
(or Ansible) keep one rule set.

Objects are matched by their natural key: a domain by its name, a rule by its name, an endpoint
by its URL (unique in rules.db: a changed URL is a removal and an addition), a block-list entry
by (address, scope), tracking settings by the sending domain. Secrets (Basic auth, Bearer
token, API key, a dialect's signing key, the signing secrets) are exported only when asked;
on import a secret left out keeps the stored one, and a new rule or endpoint without one gets
a new signing secret, as `add` gives it.

Import reads the document whole and checks every object before anything is written
(`Invalid` naming the item: `rules[2].url: ...`), then `plan` (pure: what is added, changed,
removed per kind) and one rules.db transaction applies it. A kind the document leaves out is
not managed: neither changed nor pruned. Block-list entries imported emit no registered or
deleted events (the host that blocked the address emitted them)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import yaml

from mxhook import config as configmod
from mxhook.delivery import signing
from mxhook.model import endpoints as endpointsmod
from mxhook.model import rules as rulesmod
from mxhook.model.rules import RuleError
from mxhook.model.targets import AUTH_FIELDS, Destination, DestinationError
from mxhook.payloads import templates
from mxhook.payloads.dialects import catalogue
from mxhook.services import rules as rulesvc
from mxhook.services import targets
from mxhook.services.errors import Invalid, translated
from mxhook.services.stores import exists, rules_store
from mxhook.services.targets import TemplateGiven, Warn, no_warnings
from mxhook.store import rulesdb
from mxhook.store.migrations import transaction
from mxhook.store.rulesdb import TRACKING_FEATURES

FORMAT_VERSION = 1
FORMATS = ("json", "yaml")
KINDS = ("domains", "rules", "endpoints", "blocklist", "tracking")
# a destination's fields in the document besides its secrets and template (new ones follow)
DEST_FIELDS = tuple(f.name for f in dataclasses.fields(Destination)
                    if f.name not in AUTH_FIELDS and f.name != "template")
DEST_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Destination)}
SCHEMES = ("v1", "v1a")
SECRET_KEYS = (*AUTH_FIELDS, "signing_secrets")
RULE_KEYS = ("name", "priority", "enabled", "discard", "continue", "include_raw", "reject_text",
             "conditions", *DEST_FIELDS, "template", "ed25519")
ENDPOINT_KEYS = ("url", "enabled", "events", "interval", "max_events", "version", "timezone",
                 "custom_headers", *(f for f in DEST_FIELDS if f != "url"), "template", "ed25519")
DOMAIN_KEYS = ("name", "log_denied", "unmatched", "reject_text")
BLOCK_KEYS = ("address", "scope", "source", "reason")
TRACKING_KEYS = ("domain", *TRACKING_FEATURES)


# ---------------------------------------------------------------------------------------------
# Reading what is stored

def _signing(store: rulesdb.RulesStore, kind: str, owner_id: int) -> dict:
    """scheme -> the current key's secret."""
    return {k.scheme: k.secret for k in store.signing_keys(kind, owner_id) if k.current}


def _template(store: rulesdb.RulesStore, kind: str, owner_id: int, dest: Destination) -> dict | None:
    found = store.stored_template(kind, owner_id, dest.template)
    return None if found is None else {"content_type": found.content_type, "source": found.source}


def _rule_fields(r: rulesmod.Rule) -> dict:
    return {"name": r.name, "priority": r.priority, "enabled": r.enabled, "discard": r.discard,
            "continue": r.continue_matching, "include_raw": r.include_raw,
            "reject_text": r.reject_text,
            "conditions": [{"header": c.header, "pattern": c.pattern, "negate": c.negate}
                           for c in r.conditions]}


def _endpoint_fields(e: endpointsmod.Endpoint) -> dict:
    return {"url": e.destination.url, "enabled": e.enabled, "events": list(e.categories),
            "interval": e.interval, "max_events": e.max_events, "version": e.version,
            "timezone": e.timezone, "custom_headers": list(e.custom_headers)}


def _destination(dest: Destination, secrets: bool) -> dict:
    d = {f: getattr(dest, f) for f in DEST_FIELDS}
    if secrets:
        d.update({f: getattr(dest, f) for f in AUTH_FIELDS})
    return d


def _owner(store, kind: str, owner_id: int, dest: Destination, secrets: bool) -> dict:
    keys = _signing(store, kind, owner_id)
    d = {"template": _template(store, kind, owner_id, dest), "ed25519": "v1a" in keys}
    if secrets:
        d["signing_secrets"] = keys
    return d


def read(store: rulesdb.RulesStore, *, secrets: bool) -> dict:
    """The document of what `store` holds (secrets only with `secrets`)."""
    doc: dict = {"version": FORMAT_VERSION}
    doc["domains"] = [{k: d[k] for k in DOMAIN_KEYS} for d in store.list_domains()]
    doc["rules"] = [{**_rule_fields(r), **_destination(r.destination, secrets),
                     **_owner(store, "rule", r.id, r.destination, secrets)}
                    for r in store.list_rules()]
    doc["endpoints"] = [{**_endpoint_fields(e), **_destination(e.destination, secrets),
                         **_owner(store, "endpoint", e.id, e.destination, secrets)}
                        for e in sorted(store.list_endpoints(), key=lambda e: e.destination.url)]
    doc["blocklist"] = [{k: b[k] for k in BLOCK_KEYS}
                        for b in sorted(store.block_list(), key=lambda b: (b["address"], b["scope"]))]
    doc["tracking"] = [{k: getattr(t, k) for k in TRACKING_KEYS} for t in store.list_tracking()]
    return doc


@translated()
def export(cfg: configmod.Config, *, include_secrets: bool = False) -> dict:
    """What rules.db holds as a document (an empty one when there is no rules.db yet)."""
    if not exists(cfg.rules_db, "rules database"):
        return {"version": FORMAT_VERSION, **{k: [] for k in KINDS}}
    with rules_store(cfg) as store:
        return read(store, secrets=include_secrets)


def dumps(doc: dict, fmt: str = "json") -> str:
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def loads(text: str, fmt: str | None = None) -> dict:
    """A document from JSON or YAML text (`fmt` None: JSON when it starts with '{', else YAML);
    Invalid when it does not parse or is not a mapping."""
    if fmt is None:
        fmt = "json" if text.lstrip().startswith("{") else "yaml"
    try:
        if fmt == "json":
            doc = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise Invalid(f"the document is not valid {fmt.upper()}: {exc}", "document_invalid") from None
    if not isinstance(doc, dict):
        raise Invalid("the document must be a mapping with version, domains, rules, endpoints, "
                      "blocklist and tracking", "document_invalid")
    return doc


# ---------------------------------------------------------------------------------------------
# Checking a document

class _Bad(Exception):
    def __init__(self, path: str | None, message: str):
        super().__init__(message if path is None else f"{path}: {message}")


def _type(path: str, value, kind, what: str):
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise _Bad(path, f"must be {what}, got {json.dumps(value, default=str)}")
    return value


def _opt_text(path: str, value):
    return None if value is None else _type(path, value, str, "text or null")


def _keys(path: str, obj, allowed) -> dict:
    _type(path, obj, dict, "a mapping")
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise _Bad(f"{path}.{unknown[0]}", f"unknown key (known: {', '.join(allowed)})")
    return obj


def _flag(path: str, obj: dict, key: str, default: bool) -> bool:
    return _type(f"{path}.{key}", obj.get(key, default), bool, "true or false")


def _url_credentials(path: str, obj: dict) -> dict:
    """`obj` with the user info of an SMTP2GO-style URL (https://USER:PASS@host/path) taken out
    into its basic_auth, as `add` takes it."""
    dialect = _type(f"{path}.dialect", obj.get("dialect", "native"), str, "text")
    given = {k: obj[k] for k in ("url", "basic_auth", "bearer") if k in obj}
    try:
        return {**obj, **targets.with_url_credentials(given, dialect)}
    except Invalid as exc:
        raise _Bad(path, str(exc)) from None


def _dest(path: str, obj: dict, stored: Destination | None) -> Destination:
    values = {}
    for f in DEST_FIELDS:
        if f in obj:
            values[f] = obj[f]
        elif f != "url":
            values[f] = DEST_DEFAULTS[f]
    for f in AUTH_FIELDS:
        if f in obj:
            values[f] = _opt_text(f"{path}.{f}", obj[f])
        else:  # left out: the stored secret stays
            values[f] = getattr(stored, f) if stored is not None else None
        if values[f] == "":
            raise _Bad(f"{path}.{f}", "must not be empty (null removes it)")
    if "url" not in values:
        raise _Bad(path, "url is missing")
    for f in DEST_FIELDS:  # typed as its default is
        default = DEST_DEFAULTS.get(f)
        if f == "url" or isinstance(default, str):
            _type(f"{path}.{f}", values[f], str, "text")
        elif isinstance(default, bool):
            _type(f"{path}.{f}", values[f], bool, "true or false")
        elif isinstance(default, (int, float)) and values[f] is not None:
            _type(f"{path}.{f}", values[f], (int, float), "a number")
    try:
        return Destination(**values, template=stored.template if stored else None)
    except TypeError as exc:
        raise _Bad(path, str(exc)) from None


def _template_given(path: str, value, side: str):
    """None (no template) or the NewTemplate to compare and store."""
    if value is None:
        return None
    t = _keys(path, value, ("content_type", "source"))
    source = _type(f"{path}.source", t.get("source"), str, "the template's text")
    content_type = _type(f"{path}.content_type", t.get("content_type", templates.JSON), str, "text")
    try:
        return targets.new_template(TemplateGiven(source, content_type, name=path), side)
    except Invalid as exc:  # its message starts with `path`
        raise _Bad(None, str(exc).replace(" (nothing stored)", "")) from None


def _signing_secrets(path: str, obj: dict, ed25519: bool) -> dict | None:
    if "signing_secrets" not in obj:
        return None
    given = _keys(path + ".signing_secrets", obj["signing_secrets"], SCHEMES)
    for scheme, secret in given.items():
        where = f"{path}.signing_secrets.{scheme}"
        _type(where, secret, str, "text")
        try:
            if scheme == "v1":
                signing.decode_secret(secret)
            else:
                signing.public_key_for(secret)
        except ValueError as exc:
            raise _Bad(where, str(exc)) from None
    if "v1a" in given and not ed25519:
        raise _Bad(path + ".signing_secrets.v1a", "given, but ed25519 is false")
    return given


@dataclass(frozen=True)
class Wanted:
    """One object of the document, checked: `key` its natural key, `value` what is compared
    with the stored object (its document form), `obj` what is written."""

    key: object
    value: dict  # secrets left out are the stored ones; signing_secrets only when given
    obj: object = None
    template: object = None  # rulesdb.NewTemplate | None
    signing_secrets: dict | None = None


def _check_rules(cfg, items, stored_rules: dict) -> list[Wanted]:
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"rules[{i}]"
        item = _keys(path, item, RULE_KEYS + SECRET_KEYS)
        name = _type(f"{path}.name", item.get("name"), str, "the rule's name")
        if isinstance(item.get("url"), str):
            item = _url_credentials(path, item)
        if name.lower() in seen:
            raise _Bad(f"{path}.name", f"rule {name!r} is given twice")
        seen.add(name.lower())
        old = stored_rules.get(name)
        conditions = []
        for j, c in enumerate(_type(f"{path}.conditions", item.get("conditions"), list, "a list")):
            c = _keys(f"{path}.conditions[{j}]", c, ("header", "pattern", "negate"))
            conditions.append(rulesmod.Condition(
                header=_type(f"{path}.conditions[{j}].header", c.get("header"), str,
                             "text").strip().lower(),  # as parse_condition stores it
                pattern=_type(f"{path}.conditions[{j}].pattern", c.get("pattern"), str, "text"),
                negate=_flag(f"{path}.conditions[{j}]", c, "negate", False)))
        dest = _dest(path, item, old.destination if old else None)
        new_template = _template_given(f"{path}.template", item.get("template"), catalogue.INBOUND)
        rule = rulesmod.Rule(
            name=name, destination=dest, conditions=tuple(conditions),
            priority=_type(f"{path}.priority", item.get("priority", 0), int, "a whole number"),
            enabled=_flag(path, item, "enabled", True), discard=_flag(path, item, "discard", False),
            continue_matching=_flag(path, item, "continue", False),
            include_raw=_flag(path, item, "include_raw", False),
            reject_text=_opt_text(f"{path}.reject_text", item.get("reject_text")) or None)
        ed25519 = _flag(path, item, "ed25519", False)
        secrets = _signing_secrets(path, item, ed25519)
        try:
            rulesmod.validate(rule)
            rulesvc.check_authentication(cfg, rule.conditions)
            catalogue.check(dest, catalogue.INBOUND, template=new_template is not None)
        except (RuleError, DestinationError, Invalid) as exc:
            raise _Bad(path, str(exc)) from None
        out.append(_wanted(name, _rule_fields(rule), rule, new_template, ed25519, secrets))
    return out


def _wanted(key, fields: dict, obj, new_template, ed25519: bool, secrets: dict | None) -> Wanted:
    """A rule or endpoint of the document: `fields` (its own), its destination (secrets
    merged), template and keys, as `read` gives them."""
    value = {**fields, **_destination(obj.destination, True), "ed25519": ed25519,
             "template": None if new_template is None else {
                 "content_type": new_template.content_type, "source": new_template.source}}
    if secrets is not None:
        value["signing_secrets"] = secrets
    return Wanted(key, value, obj, new_template, secrets)


def _check_endpoints(items, stored: dict) -> list[Wanted]:
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"endpoints[{i}]"
        item = _keys(path, item, ENDPOINT_KEYS + SECRET_KEYS)
        _type(f"{path}.url", item.get("url"), str, "the endpoint's URL")
        item = _url_credentials(path, item)
        url = item["url"]
        if url in seen:
            raise _Bad(f"{path}.url", f"endpoint {url} is given twice")
        seen.add(url)
        old = stored.get(url)
        dest = _dest(path, item, old.destination if old else None)
        new_template = _template_given(f"{path}.template", item.get("template"), catalogue.EVENTS)
        events = _type(f"{path}.events", item.get("events", []), list, "a list of categories")
        headers = item.get("custom_headers", [])
        ed25519 = _flag(path, item, "ed25519", False)
        secrets = _signing_secrets(path, item, ed25519)
        try:
            ep = endpointsmod.validate(endpointsmod.Endpoint(
                destination=dest,
                categories=endpointsmod.parse_categories(",".join(map(str, events))),
                interval=_type(f"{path}.interval", item.get("interval", endpointsmod.DEFAULTS["interval"]),
                               int, "a whole number"),
                max_events=_type(f"{path}.max_events",
                                 item.get("max_events", endpointsmod.DEFAULTS["max_events"]),
                                 int, "a whole number"),
                version=item.get("version"),
                timezone=_type(f"{path}.timezone", item.get("timezone", endpointsmod.DEFAULTS["timezone"]),
                               str, "an IANA time zone name"),
                enabled=_flag(path, item, "enabled", True),
                custom_headers=tuple(_type(f"{path}.custom_headers", headers, list, "a list of names"))))
            catalogue.check(ep.destination, catalogue.EVENTS, template=new_template is not None)
        except (RuleError, DestinationError, Invalid) as exc:
            raise _Bad(path, str(exc)) from None
        out.append(_wanted(url, _endpoint_fields(ep), ep, new_template, ed25519, secrets))
    return out


def _check_domains(items) -> list[Wanted]:
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"domains[{i}]"
        item = _keys(path, item, DOMAIN_KEYS)
        try:
            name = rulesdb.normalize_domain(_type(f"{path}.name", item.get("name"), str, "a domain name"))
            unmatched = item.get("unmatched", "reject")
            if unmatched not in rulesdb.UNMATCHED:
                raise RuleError(f"unmatched must be one of {', '.join(rulesdb.UNMATCHED)}, not {unmatched!r}")
            text = rulesmod.check_reject_text(_opt_text(f"{path}.reject_text", item.get("reject_text")))
        except RuleError as exc:
            raise _Bad(path, str(exc)) from None
        if name in seen:
            raise _Bad(f"{path}.name", f"domain {name} is given twice")
        seen.add(name)
        out.append(Wanted(name, {"name": name, "log_denied": _flag(path, item, "log_denied", True),
                                 "unmatched": unmatched, "reject_text": text or None}))
    return out


def _check_blocklist(items) -> list[Wanted]:
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"blocklist[{i}]"
        item = _keys(path, item, BLOCK_KEYS)
        try:
            address = rulesdb.normalize_block_address(
                _type(f"{path}.address", item.get("address"), str, "an address"))
            scope = rulesdb.block_scope(_type(f"{path}.scope", item.get("scope", rulesdb.SCOPE_ALL),
                                              str, "a sending domain or *"))
        except RuleError as exc:
            raise _Bad(path, str(exc)) from None
        source = item.get("source", "cli")
        if source not in rulesdb.BLOCK_SOURCES:
            raise _Bad(f"{path}.source", f"must be one of {', '.join(rulesdb.BLOCK_SOURCES)}")
        if (address, scope) in seen:
            raise _Bad(path, f"{address} (scope {scope}) is given twice")
        seen.add((address, scope))
        out.append(Wanted((address, scope), {
            "address": address, "scope": scope, "source": source,
            "reason": _opt_text(f"{path}.reason", item.get("reason"))}))
    return out


def _check_tracking(items) -> list[Wanted]:
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"tracking[{i}]"
        item = _keys(path, item, TRACKING_KEYS)
        try:
            domain = rulesdb.normalize_domain(_type(f"{path}.domain", item.get("domain"), str,
                                                    "a sending domain"))
        except RuleError as exc:
            raise _Bad(path, str(exc)) from None
        if domain in seen:
            raise _Bad(f"{path}.domain", f"{domain} is given twice")
        seen.add(domain)
        defaults = rulesdb.TrackingSettings(domain)
        out.append(Wanted(domain, {"domain": domain, **{
            f: _flag(path, item, f, getattr(defaults, f)) for f in TRACKING_FEATURES}}))
    return out


def check(cfg: configmod.Config, doc: dict, store: rulesdb.RulesStore | None) -> dict[str, list[Wanted]]:
    """The document's objects per kind, each checked (and merged with the stored secrets it
    leaves out); Invalid naming the first bad item. Kinds the document leaves out are absent."""
    try:
        version = doc.get("version")
        if version != FORMAT_VERSION:
            raise _Bad("version", f"must be {FORMAT_VERSION} (the format this mxhook reads), "
                                  f"got {json.dumps(version, default=str)}")
        unknown = [k for k in doc if k not in ("version", *KINDS)]
        if unknown:
            raise _Bad(unknown[0], f"unknown key (known: version, {', '.join(KINDS)})")
        for kind in KINDS:
            if kind in doc:
                _type(kind, doc[kind], list, "a list")
        rules = {r.name: r for r in store.list_rules()} if store else {}
        endpoints = {e.destination.url: e for e in store.list_endpoints()} if store else {}
        checkers = {"domains": _check_domains, "blocklist": _check_blocklist,
                    "tracking": _check_tracking,
                    "rules": lambda items: _check_rules(cfg, items, rules),
                    "endpoints": lambda items: _check_endpoints(items, endpoints)}
        return {kind: checkers[kind](doc[kind]) for kind in KINDS if kind in doc}
    except _Bad as exc:
        raise Invalid(f"{exc} (nothing imported)", "document_invalid") from None


# ---------------------------------------------------------------------------------------------
# The plan

_KEYS = {"domains": lambda d: d["name"], "rules": lambda d: d["name"],
         "endpoints": lambda d: d["url"], "blocklist": lambda d: (d["address"], d["scope"]),
         "tracking": lambda d: d["domain"]}


def _label(kind: str, key) -> str:
    return f"{key[0]} (scope {key[1]})" if kind == "blocklist" else str(key)


@dataclass
class Plan:
    """Per kind the natural keys added, changed and removed, in document order."""

    added: dict = field(default_factory=lambda: {k: [] for k in KINDS})
    changed: dict = field(default_factory=lambda: {k: [] for k in KINDS})
    removed: dict = field(default_factory=lambda: {k: [] for k in KINDS})

    @property
    def count(self) -> int:
        return sum(len(v) for d in (self.added, self.changed, self.removed) for v in d.values())

    def as_dict(self) -> dict:
        return {kind: {"added": [_label(kind, k) for k in self.added[kind]],
                       "changed": [_label(kind, k) for k in self.changed[kind]],
                       "removed": [_label(kind, k) for k in self.removed[kind]]} for kind in KINDS}


def plan(current: dict, wanted: dict[str, list[Wanted]], *, prune: bool) -> Plan:
    """Pure: what applying `wanted` (check's result) to `current` (read's document, secrets
    included) changes. An object is changed when a key the document gives differs."""
    out = Plan()
    for kind, items in wanted.items():
        stored = {_KEYS[kind](d): d for d in current.get(kind, [])}
        for w in items:
            old = stored.get(w.key)
            if old is None:
                out.added[kind].append(w.key)
            elif _differs(old, w.value):
                out.changed[kind].append(w.key)
        if prune:
            keep = {w.key for w in items}
            out.removed[kind] = [k for k in stored if k not in keep]
    return out


def _differs(old: dict, new: dict) -> bool:
    for key, value in new.items():
        if key == "signing_secrets":
            if any(old.get(key, {}).get(s) != v for s, v in value.items()):
                return True
        elif old.get(key) != value:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Applying it

@dataclass(frozen=True)
class Imported:
    plan: Plan
    dry_run: bool
    new_keys: list  # (kind, name, [SigningKey]) of rules and endpoints added: shown once


@translated()
def import_document(cfg: configmod.Config, doc: dict, *, prune: bool = False,
                    dry_run: bool = False, warn: Warn = no_warnings) -> Imported:
    """Check `doc` whole, then apply it in one rules.db transaction (with `dry_run`, only say
    what would change). `prune`: remove the objects of the kinds the document gives that it
    does not list."""
    if not exists(cfg.rules_db, "rules database"):  # checked before the file is made
        wanted = check(cfg, doc, None)
        if dry_run:
            return Imported(plan({}, wanted, prune=prune), True, [])
    with rules_store(cfg, create=not dry_run) as store:
        wanted = check(cfg, doc, store)
        current = read(store, secrets=True)
        todo = plan(current, wanted, prune=prune)
        if dry_run or not todo.count:
            return Imported(todo, dry_run, [])
        for kind in ("rules", "endpoints"):
            for w in wanted.get(kind, []):
                if w.key in todo.added[kind] or w.key in todo.changed[kind]:
                    targets.check_egress(cfg, w.obj.destination.url, warn)
                    if kind == "rules":
                        rulesvc.warn_backtracking(cfg, w.obj.conditions, warn)
        new_keys: list = []
        with transaction(store.conn):
            _apply(store, wanted, todo, current, new_keys)
        return Imported(todo, False, new_keys)


def _apply(store: rulesdb.RulesStore, wanted: dict, todo: Plan, current: dict, new_keys: list) -> None:
    by_key = {kind: {w.key: w for w in items} for kind, items in wanted.items()}
    stored = {kind: {_KEYS[kind](d): d for d in current[kind]} for kind in KINDS}
    for name in todo.removed["domains"]:
        store.remove_domain(name)
    for name in todo.added["domains"] + todo.changed["domains"]:
        v = by_key["domains"][name].value
        if name in todo.added["domains"]:
            store.add_domain(name, log_denied=v["log_denied"], unmatched=v["unmatched"],
                             reject_text=v["reject_text"])
        else:
            store.set_domain(name, log_denied=v["log_denied"], unmatched=v["unmatched"],
                             reject_text=v["reject_text"] or "")
    for name in todo.removed["rules"]:
        store.remove_rule(name)
    for w in wanted.get("rules", []):
        if w.key in todo.added["rules"]:
            added = store.add_rule(w.obj, ed25519=w.value["ed25519"], template=w.template)
            _set_keys(store, "rule", added.id, w, new_keys, new=True)
        elif w.key in todo.changed["rules"]:
            old = store.get_rule(w.key)
            rule = dataclasses.replace(w.obj, destination=_keep_template(
                store, "rule", old.id, old.destination, w))
            store.replace_rule(w.key, rule, template=_new_version(store, "rule", old.id, old.destination, w))
            _set_keys(store, "rule", old.id, w, new_keys, new=False)
    for url in todo.removed["endpoints"]:
        store.remove_endpoint(url)
    for w in wanted.get("endpoints", []):
        if w.key in todo.added["endpoints"]:
            added = store.add_endpoint(w.obj, ed25519=w.value["ed25519"], template=w.template)
            _set_keys(store, "endpoint", added.id, w, new_keys, new=True)
        elif w.key in todo.changed["endpoints"]:
            old = store.get_endpoint(w.key)
            ep = dataclasses.replace(w.obj, destination=_keep_template(
                store, "endpoint", old.id, old.destination, w))
            store.replace_endpoint(old.id, ep,
                                   template=_new_version(store, "endpoint", old.id, old.destination, w))
            _set_keys(store, "endpoint", old.id, w, new_keys, new=False)
    for address, scope in todo.removed["blocklist"]:
        store.block_remove(address, scope=scope)
    for key in todo.added["blocklist"] + todo.changed["blocklist"]:
        v = by_key["blocklist"][key].value
        if key in stored["blocklist"]:  # the reason or source changed: the entry keeps its time
            store.conn.execute("UPDATE blocklist SET source = ?, reason = ? WHERE address = ?"
                               " AND scope = ?", (v["source"], v["reason"], *key))
        else:
            store.block_add(v["address"], reason=v["reason"], source=v["source"], scope=v["scope"])
    for domain in todo.removed["tracking"]:
        store.remove_tracking(domain)
    for domain in todo.added["tracking"] + todo.changed["tracking"]:
        v = by_key["tracking"][domain].value
        store.set_tracking(domain, **{f: v[f] for f in TRACKING_FEATURES})


def _new_version(store, kind: str, owner_id: int, dest: Destination, w: Wanted):
    """The template to store as a new version: the document's, unless it is the current one."""
    found = store.stored_template(kind, owner_id, dest.template)
    if w.template is None or (found is not None and (found.content_type, found.source)
                              == (w.template.content_type, w.template.source)):
        return None
    return w.template


def _keep_template(store, kind: str, owner_id: int, dest: Destination, w: Wanted) -> Destination:
    """The document's destination naming the stored version it keeps (none without a template)."""
    keep = dest.template if w.template is not None else None
    return dataclasses.replace(w.obj.destination, template=keep)


def _set_keys(store: rulesdb.RulesStore, kind: str, owner_id: int, w: Wanted, new_keys: list, *,
              new: bool) -> None:
    """The owner's signing keys as the document says: the secrets it gives become the current
    ones (the previous ones stop signing), ed25519 on or off; a new owner's generated keys the
    document does not give are reported, to be shown once."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    conn = store.conn
    given = w.signing_secrets or {}
    current = {k.scheme: k for k in store.signing_keys(kind, owner_id) if k.current}
    if not w.value["ed25519"] and "v1a" in current:
        conn.execute("UPDATE signing_keys SET expires = ? WHERE kind = ? AND owner_id = ? AND"
                     " scheme = 'v1a' AND expires IS NULL", (now, kind, owner_id))
    if w.value["ed25519"] and "v1a" not in current and "v1a" not in given:
        store.rotate_key(kind, owner_id, overlap=0, scheme="v1a")
    for scheme, secret in given.items():
        if current.get(scheme) is not None and current[scheme].secret == secret:
            continue
        conn.execute("UPDATE signing_keys SET expires = ? WHERE kind = ? AND owner_id = ? AND"
                     " scheme = ? AND expires IS NULL", (now, kind, owner_id, scheme))
        conn.execute("INSERT INTO signing_keys (kind, owner_id, scheme, secret, public_key, created,"
                     " expires) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                     (kind, owner_id, scheme, secret,
                      signing.public_key_for(secret) if scheme == "v1a" else None, now))
    made = [k for k in store.signing_keys(kind, owner_id) if k.current and k.scheme not in given
            and (new or k.scheme not in current)]
    if made:
        new_keys.append((kind, w.key, made))
