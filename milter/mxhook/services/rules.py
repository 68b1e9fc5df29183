"""Inbound rules (routes): which mail is posted to which webhook. Writes go to rules.db; the
running milter and spooler pick them up within about a second."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from mxhook import config as configmod
from mxhook.model import rules
from mxhook.model.targets import Destination
from mxhook.payloads.dialects import catalogue
from mxhook.services import targets
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.services.targets import TemplateGiven, Warn, no_warnings
from mxhook.store import rulesdb


SIDE = catalogue.INBOUND


@dataclass(frozen=True)
class RuleView:
    rule: rules.Rule
    times: dict | None  # {created, updated}
    keys: list | None  # signing keys (None: not asked for)
    template: dict | None = None  # targets.template_view

    def as_dict(self, *, template_source: bool = False) -> dict:
        """JSON-able, secrets masked (signing keys too: public keys in full); the template's
        source only with `template_source`."""
        rule = self.rule
        d = {
            "id": rule.id, "name": rule.name, "priority": rule.priority, "enabled": rule.enabled,
            "discard": rule.discard, "continue": rule.continue_matching,
            "include_raw": rule.include_raw, "reject_text": rule.reject_text,
            **targets.as_dict(rule.destination, self.template,
                                                        template_source=template_source),
            "conditions": [
                {"header": c.header, "pattern": c.pattern, "negate": c.negate} for c in rule.conditions
            ],
        }
        if self.keys is not None:
            d["signing"] = [k.to_public_dict() for k in self.keys]
        if self.times:
            d.update(created=self.times.get("created"), updated=self.times.get("updated"))
        return d


@dataclass(frozen=True)
class Added:
    rule: rules.Rule
    keys: list  # secrets in full: shown this once
    no_domains: bool  # no permitted domain yet, so the rule applies to no mail


def parse_conditions(when=(), unless=()) -> list[rules.Condition]:
    """'HEADER~REGEX' texts: `when` must hold, `unless` must not."""
    return [rules.parse_condition(w) for w in when] + [
        rules.parse_condition(u, negate=True) for u in unless
    ]


def warn_backtracking(cfg: configmod.Config, conditions, warn: Warn) -> None:
    """A warning for each condition whose regex may backtrack catastrophically."""
    timeout = None
    for cond in conditions:
        if rules.is_catastrophic_risk(cond.pattern):
            if timeout is None:
                timeout = cfg.value("milter", "regex_timeout")
            warn(f"warning: condition '{cond.header}~{cond.pattern}' "
                 f"{rules.backtracking_risk(cond.pattern)}; a header value it takes longer "
                 f"than [milter] regex_timeout ({timeout:g} s) to match counts as no match")


def check_authentication(cfg: configmod.Config, conditions) -> None:
    """A condition on an authentication verdict (`dmarc~^fail$`) needs verdicts: refused while
    `[authentication] mode = off` (such a rule would never match)."""
    names = sorted({c.header for c in conditions if c.header in rules.AUTHENTICATION_FIELDS})
    if names and cfg.value("authentication", "mode") == "off":
        raise Invalid(f"condition on {', '.join(names)}: the authentication verdicts are computed "
                      "only with [authentication] mode = verify or upstream (it is off, so the "
                      "rule would never match); set the mode first", "authentication_off")


def get_or_fail(store: rulesdb.RulesStore, name: str) -> rules.Rule:
    found = store.get_rule(name)
    if found is None:
        raise NotFound(f"no rule named {name!r}")
    return found


@translated()
def add(cfg: configmod.Config, *, name: str, destination: Destination, when=(), unless=(),
        priority: int | None = None, discard: bool = False, enabled: bool = True,
        continue_matching: bool = False, include_raw: bool = False, reject_text: str | None = None,
        ed25519: bool = False, template: TemplateGiven | None = None,
        warn: Warn = no_warnings) -> Added:
    """Add a rule; `template`: its body's jinja2 template (stored as version 1);
    `continue_matching`: the rules after it are offered its mail too (fan-out)."""
    targets.check_secrets(destination, what="rule")
    destination = Destination(**targets.with_url_credentials(
        dataclasses.asdict(destination), destination.dialect))
    new_template = targets.new_template(template, SIDE) if template is not None else None
    new = rules.Rule(name=name, destination=destination,
                     conditions=tuple(parse_conditions(when, unless)),
                     priority=priority or 0, discard=discard, enabled=enabled,
                     continue_matching=continue_matching, include_raw=include_raw,
                     reject_text=reject_text or None)
    rules.validate(new)  # before the database is created or opened for writing
    check_authentication(cfg, new.conditions)
    catalogue.check(destination, SIDE, template=new_template is not None)
    targets.check_egress(cfg, destination.url, warn)
    warn_backtracking(cfg, new.conditions, warn)
    with rules_store(cfg, create=True) as store:
        added = store.add_rule(new, ed25519=ed25519, template=new_template)
        return Added(added, store.signing_keys("rule", added.id), not store.list_domains())


@translated()
def list_all(cfg: configmod.Config, *, with_keys: bool = False) -> list[RuleView]:
    """Every rule in evaluation order."""
    with rules_store(cfg) as store:
        times = store.rule_times()
        return [RuleView(r, times.get(r.name), store.signing_keys("rule", r.id) if with_keys else None,
                         targets.template_view(store, "rule", r.id, r.destination))
                for r in store.list_rules()]


@translated()
def show(cfg: configmod.Config, name: str) -> RuleView:
    with rules_store(cfg) as store:
        found = get_or_fail(store, name)
        return RuleView(found, store.rule_times().get(found.name), store.signing_keys("rule", found.id),
                        targets.template_view(store, "rule", found.id, found.destination))


@translated()
def edit(cfg: configmod.Config, name: str, *, destination: Mapping[str, object] | None = None,
         clear_auth: bool = False, when=(), unless=(), priority: int | None = None,
         new_name: str | None = None, discard: bool | None = None, enabled: bool | None = None,
         continue_matching: bool | None = None, include_raw: bool | None = None,
         reject_text: str | None = None, template: TemplateGiven | None = None,
         no_template: bool = False, warn: Warn = no_warnings) -> rules.Rule:
    """Change rule `name`; None keeps a value. `destination`: the destination's fields to
    change (Destination.edited). `when` replaces all conditions (with the `unless` ones given
    alongside); `unless` alone replaces only the negated conditions. `template`: stored as the
    next version of the rule's template; `no_template`: back to the dialect's body (stored
    versions stay: mail accepted under one still renders with it). `reject_text` '' removes
    the rule's reject text."""
    dest_changes = {k: v for k, v in (destination or {}).items() if v is not None}
    targets.check_secrets(dest_changes, what="rule")
    if template is not None and no_template:
        raise Invalid("give either --template or --no-template")
    given = [priority, new_name, discard, enabled, template, continue_matching, include_raw, reject_text]
    if all(v is None for v in given) and not dest_changes and not when and not unless \
            and not clear_auth and not no_template:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    new_template = targets.new_template(template, SIDE) if template is not None else None
    with rules_store(cfg) as store:
        old = get_or_fail(store, name)
        dest_changes = targets.with_url_credentials(
            dest_changes, dest_changes.get("dialect", old.destination.dialect))
        changes = {key: value for key, value in (
            ("priority", priority), ("name", new_name), ("discard", discard),
            ("enabled", enabled), ("continue_matching", continue_matching),
            ("include_raw", include_raw)) if value is not None}
        if reject_text is not None:
            changes["reject_text"] = reject_text or None
        changes["destination"] = targets.edited(old.destination, dest_changes,
                                                clear_auth=clear_auth, no_template=no_template)
        if when:
            changes["conditions"] = tuple(parse_conditions(when, unless))
        elif unless:
            keep = [c for c in old.conditions if not c.negate]
            changes["conditions"] = tuple(keep + parse_conditions((), unless))
        candidate = dataclasses.replace(old, **changes)
        rules.validate(candidate)
        if when or unless:
            check_authentication(cfg, candidate.conditions)
        catalogue.check(candidate.destination, SIDE, template=new_template is not None
                        or candidate.destination.template is not None)
        if "url" in dest_changes:
            targets.check_egress(cfg, candidate.destination.url, warn)
        if when or unless:
            warn_backtracking(cfg, parse_conditions(when, unless), warn)
        return store.replace_rule(name, candidate, template=new_template)


def move(cfg: configmod.Config, name: str, priority: int) -> rules.Rule:
    """Give rule `name` a new place in the evaluation order (lower runs first)."""
    return edit(cfg, name, priority=priority)


@translated()
def set_enabled(cfg: configmod.Config, name: str, enabled: bool) -> rules.Rule:
    with rules_store(cfg) as store:
        return store.set_enabled(name, enabled)


@translated()
def remove(cfg: configmod.Config, name: str) -> None:
    with rules_store(cfg) as store:
        store.remove_rule(name)


@translated()
def rotate_secret(cfg: configmod.Config, name: str, *, overlap: float,
                  ed25519: bool = False) -> tuple[rules.Rule, targets.Rotation]:
    with rules_store(cfg) as store:
        found = get_or_fail(store, name)
        return found, targets.rotate(store, "rule", found.id, overlap, ed25519)
