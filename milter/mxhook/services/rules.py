"""Inbound rules (routes): which mail is posted to which webhook. Writes go to rules.db; the
running milter and spooler pick them up within about a second."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from mxhook import config as configmod
from mxhook.model import rules
from mxhook.model.targets import Destination
from mxhook.services import targets
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store
from mxhook.services.targets import Warn, no_warnings
from mxhook.store import rulesdb


@dataclass(frozen=True)
class RuleView:
    rule: rules.Rule
    times: dict | None  # {created, updated}
    keys: list | None  # signing keys (None: not asked for)

    def as_dict(self) -> dict:
        """JSON-able, secrets masked (signing keys too: public keys in full)."""
        rule = self.rule
        d = {
            "id": rule.id, "name": rule.name, "priority": rule.priority, "enabled": rule.enabled,
            "discard": rule.discard, **targets.as_dict(rule.destination),
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


def get_or_fail(store: rulesdb.RulesStore, name: str) -> rules.Rule:
    found = store.get_rule(name)
    if found is None:
        raise NotFound(f"no rule named {name!r}")
    return found


@translated()
def add(cfg: configmod.Config, *, name: str, destination: Destination, when=(), unless=(),
        priority: int | None = None, discard: bool = False, enabled: bool = True,
        ed25519: bool = False, warn: Warn = no_warnings) -> Added:
    targets.check_secrets(destination, what="rule")
    new = rules.Rule(name=name, destination=destination,
                     conditions=tuple(parse_conditions(when, unless)),
                     priority=priority or 0, discard=discard, enabled=enabled)
    rules.validate(new)  # before the database is created or opened for writing
    targets.check_egress(cfg, destination.url, warn)
    warn_backtracking(cfg, new.conditions, warn)
    with rules_store(cfg, create=True) as store:
        added = store.add_rule(new, ed25519=ed25519)
        return Added(added, store.signing_keys("rule", added.id), not store.list_domains())


@translated()
def list_all(cfg: configmod.Config, *, with_keys: bool = False) -> list[RuleView]:
    """Every rule in evaluation order."""
    with rules_store(cfg) as store:
        times = store.rule_times()
        return [RuleView(r, times.get(r.name), store.signing_keys("rule", r.id) if with_keys else None)
                for r in store.list_rules()]


@translated()
def show(cfg: configmod.Config, name: str) -> RuleView:
    with rules_store(cfg) as store:
        found = get_or_fail(store, name)
        return RuleView(found, store.rule_times().get(found.name), store.signing_keys("rule", found.id))


@translated()
def edit(cfg: configmod.Config, name: str, *, destination: Mapping[str, object] | None = None,
         clear_auth: bool = False, when=(), unless=(), priority: int | None = None,
         new_name: str | None = None, discard: bool | None = None, enabled: bool | None = None,
         warn: Warn = no_warnings) -> rules.Rule:
    """Change rule `name`; None keeps a value. `destination`: the destination's fields to
    change (Destination.edited). `when` replaces all conditions (with the `unless` ones given
    alongside); `unless` alone replaces only the negated conditions."""
    dest_changes = {k: v for k, v in (destination or {}).items() if v is not None}
    targets.check_secrets(dest_changes, what="rule")
    given = [priority, new_name, discard, enabled]
    if all(v is None for v in given) and not dest_changes and not when and not unless \
            and not clear_auth:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    with rules_store(cfg) as store:
        old = get_or_fail(store, name)
        changes = {key: value for key, value in (
            ("priority", priority), ("name", new_name), ("discard", discard),
            ("enabled", enabled)) if value is not None}
        changes["destination"] = old.destination.edited(dest_changes, clear_auth=clear_auth)
        if when:
            changes["conditions"] = tuple(parse_conditions(when, unless))
        elif unless:
            keep = [c for c in old.conditions if not c.negate]
            changes["conditions"] = tuple(keep + parse_conditions((), unless))
        candidate = dataclasses.replace(old, **changes)
        rules.validate(candidate)
        if "url" in dest_changes:
            targets.check_egress(cfg, candidate.destination.url, warn)
        if when or unless:
            warn_backtracking(cfg, parse_conditions(when, unless), warn)
        return store.replace_rule(name, candidate)


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
