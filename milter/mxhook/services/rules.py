"""Inbound rules (routes): which mail is posted to which webhook. Writes go to rules.db; the
running milter and spooler pick them up within about a second."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mxhook import config as configmod
from mxhook.model import rules
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
            "endpoint": rule.endpoint, "format": rule.format, **targets.masked_auth(rule),
            "retry_interval": rule.retry_interval, "retry_period": rule.retry_period,
            "timeout": rule.timeout, "discard": rule.discard, "allow_http": rule.allow_http,
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
def add(cfg: configmod.Config, *, name: str, endpoint: str, when=(), unless=(),
        priority: int | None = None, format: str | None = None,  # noqa: A002 - the rule's field
        basic_auth: str | None = None, bearer: str | None = None, api_key: str | None = None,
        retry_interval: int | None = None, retry_period: int | None = None,
        timeout: int | None = None, discard: bool = False, enabled: bool = True,
        allow_http: bool = False, ed25519: bool = False, warn: Warn = no_warnings) -> Added:
    targets.check_secrets(what="rule", basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    new = rules.with_defaults(
        name=name, endpoint=endpoint, conditions=tuple(parse_conditions(when, unless)),
        priority=priority, format=format, basic_auth=basic_auth, bearer=bearer, api_key=api_key,
        retry_interval=retry_interval, retry_period=retry_period, timeout=timeout,
        discard=discard, enabled=enabled, allow_http=allow_http,
    )
    rules.validate(new)  # before the database is created or opened for writing
    targets.check_egress(cfg, new.endpoint, warn)
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
def edit(cfg: configmod.Config, name: str, *, endpoint: str | None = None, when=(), unless=(),
         priority: int | None = None, format: str | None = None,  # noqa: A002
         basic_auth: str | None = None, bearer: str | None = None, api_key: str | None = None,
         retry_interval: int | None = None, retry_period: int | None = None,
         timeout: int | None = None, new_name: str | None = None, discard: bool | None = None,
         enabled: bool | None = None, allow_http: bool | None = None, clear_auth: bool = False,
         warn: Warn = no_warnings) -> rules.Rule:
    """Change rule `name`; None keeps a value. `when` replaces all conditions (with the `unless`
    ones given alongside); `unless` alone replaces only the negated conditions."""
    targets.check_secrets(what="rule", basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    given = [endpoint, priority, format, basic_auth, bearer, api_key, retry_interval, retry_period,
             timeout, new_name, discard, enabled, allow_http]
    if all(v is None for v in given) and not when and not unless and not clear_auth:
        raise Invalid("nothing to change: give at least one option (see --help)", "nothing_to_change")
    with rules_store(cfg) as store:
        old = get_or_fail(store, name)
        changes = {key: value for key, value in (
            ("endpoint", endpoint), ("priority", priority), ("format", format),
            ("retry_interval", retry_interval), ("retry_period", retry_period),
            ("timeout", timeout), ("name", new_name), ("discard", discard),
            ("allow_http", allow_http), ("enabled", enabled)) if value is not None}
        if when:
            changes["conditions"] = tuple(parse_conditions(when, unless))
        elif unless:
            keep = [c for c in old.conditions if not c.negate]
            changes["conditions"] = tuple(keep + parse_conditions((), unless))
        changes.update(targets.auth_changes(clear_auth=clear_auth, basic_auth=basic_auth,
                                            bearer=bearer, api_key=api_key))
        candidate = dataclasses.replace(old, **changes)
        rules.validate(candidate)
        if endpoint is not None:
            targets.check_egress(cfg, candidate.endpoint, warn)
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
