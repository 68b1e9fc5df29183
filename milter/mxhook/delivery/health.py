"""Health and disabling of rules and endpoints: the spooler's one policy for targets that fail.

- A 410 Gone disables the rule (inbound) or the endpoint (events) in rules.db, with a warning
  in the log, unless it no longer points at the URL that answered (`gone`).
- A rule/endpoint whose attempts have all failed for `disable_after_days` days (counted from
  the first failure after its last success, state.db `target_health`) is disabled the same way
  when an attempt of it fails (`check_failing`; 0 = never).
- After rules.db changed (`refresh`): which rules are disabled (their deliveries wait), and
  which rules/endpoints were enabled again or pointed at another URL (their failure streak
  starts afresh, so `disable_after_days` does not strike at their next failure).

Health is owned by (kind, ref): kind `rule` with ref `statedb.rule_ref`, or kind `endpoint`
with its id as text. rules.db trouble is logged and tried again later; state.db errors go to
`on_state_error(exc, what)` (the spooler stops for damage, logs the rest).
"""
from __future__ import annotations

import logging
import os
import sqlite3
from typing import Callable

from mxhook.delivery import webhook
from mxhook.model.endpoints import Endpoint
from mxhook.model.retry import DAY
from mxhook.model.rules import RuleError
from mxhook.store import rulesdb
from mxhook.store.statedb import StateStore

log = logging.getLogger(__name__)


class Health:
    def __init__(self, state: StateStore, rules_db: str, *, disable_after_days: float,
                 clock: Callable[[], float], on_state_error: Callable[[sqlite3.Error, str], None],
                 on_rules_change: Callable[[], None] = lambda: None):
        self.state = state
        self.rules_db = rules_db
        self.disable_after_days = disable_after_days
        self.clock = clock
        self.on_state_error = on_state_error
        self.on_rules_change = on_rules_change  # the set of disabled rules changed
        self.disabled_rules: set[int] = set()  # their deliveries wait until enabled again
        self.seen = -1  # EndpointsView.generation the rule states were read at
        self._targets_seen: dict[tuple[str, str], tuple[bool, str]] = {}  # -> (enabled, URL)
        self._store: rulesdb.RulesStore | None = None

    def close(self) -> None:
        """Drop the rules.db connection (after an error: the next use opens it again)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def rules_store(self) -> rulesdb.RulesStore:
        """The spooler's one connection to rules.db (rule states, disabling, the block list)."""
        if self._store is None:
            self._store = rulesdb.RulesStore(self.rules_db)
        return self._store

    def refresh(self, eps: dict[int, Endpoint], generation: int) -> None:
        """After a change to rules.db (`generation`): see the module docstring."""
        rules = {}
        if os.path.exists(self.rules_db):
            try:
                rules = {r.id: r for r in self.rules_store().list_rules()}
            except (sqlite3.Error, RuleError, OSError) as exc:
                log.error("cannot read rules from %s (will retry): %s", self.rules_db, exc)
                self.close()
                return
        disabled = {i for i, r in rules.items() if not r.enabled}
        if disabled != self.disabled_rules:
            self.on_rules_change()  # deliveries of a rule enabled again are due now
        self.disabled_rules = disabled
        seen = {("rule", str(i)): (r.enabled, r.destination.url) for i, r in rules.items()}
        seen.update({("endpoint", str(i)): (ep.enabled, ep.destination.url) for i, ep in eps.items()})
        try:
            health = self.state.health()
            for key, (enabled, url) in seen.items():
                row = health.get(key)
                before = self._targets_seen.get(key)
                if row is None or not enabled:
                    continue
                again = row["disabled_at"] is not None or (before is not None and not before[0])
                if again or (before is not None and before[1] != url):
                    self.state.reset_health(*key, now=self.clock())
                    if again and row["disabled_at"] is not None:
                        log.info("%s %s is enabled again: its deliveries resume", key[0],
                                 row["name"] or key[1])
        except sqlite3.Error as exc:
            self.on_state_error(exc, "cannot update rule/endpoint health in state.db (will retry)")
            return
        self._targets_seen = seen
        self.seen = generation

    def disable(self, kind: str, ref: str, reason: str, *, url: str | None) -> str | None:
        """Disable rule/endpoint `ref` in rules.db because of `reason`, unless it is gone,
        already disabled, or (`url` given) no longer points at that URL. Logs a warning and
        remembers it in state.db. Returns its name when it was disabled now."""
        try:
            store = self.rules_store()
            if kind == "rule":
                found = [r for r in store.list_rules()
                         if (str(r.id) == ref if not ref.startswith("name:") else r.name == ref[5:])]
                if not found or not found[0].enabled or (url is not None and found[0].destination.url != url):
                    return None
                rule = store.set_enabled(found[0].name, False)
                self.disabled_rules.add(rule.id)
                self.on_rules_change()
                name, where, enable = rule.name, webhook.redact_url(rule.destination.url), f"mxhook rule enable {rule.name}"
            else:
                ep = store.get_endpoint(int(ref))
                if ep is None or not ep.enabled or (url is not None and ep.destination.url != url):
                    return None
                ep = store.set_endpoint_enabled(ep.id, False)
                name, where, enable = str(ep.id), webhook.redact_url(ep.destination.url), f"mxhook endpoint edit {ep.id} --enabled"
        except (sqlite3.Error, RuleError, OSError, ValueError) as exc:
            log.error("cannot disable %s %s in %s (%s): %s", kind, ref, self.rules_db, reason, exc)
            self.close()
            return None
        log.warning("%s %s disabled: %s (endpoint %s); its pending deliveries wait and its failed "
                    "ones stay replayable; enable it again with `%s`", kind, name, reason, where, enable)
        try:
            self.state.mark_disabled(kind, ref, name if kind == "rule" else where, reason, now=self.clock())
        except sqlite3.Error as exc:
            self.on_state_error(exc, f"cannot record that {kind} {name} was disabled in state.db")
        return name

    def gone(self, owner: tuple[str, str], url: str, outcome: webhook.Outcome) -> str:
        """A 410 Gone from `url`: disable the owner; returns the note for the log's reason."""
        kind, ref = owner
        name = self.disable(kind, ref, f"the endpoint answered {outcome.error or 'HTTP 410 Gone'}", url=url)
        return f"; {kind} {name} disabled" if name is not None else ""

    def check_failing(self, failed: dict[tuple[str, str], str | None], now: float) -> None:
        """Of the owners whose attempts just failed (`failed`: (kind, ref) -> the URL the
        attempt went to), disable those that have had no successful attempt since their first
        failure `disable_after_days` days ago or more."""
        if not failed or self.disable_after_days <= 0:
            return
        try:
            rows = self.state.failing_targets(now - self.disable_after_days * DAY)
        except sqlite3.Error as exc:
            self.on_state_error(exc, "cannot read rule/endpoint health from state.db")
            return
        days = f"{self.disable_after_days:g} day{'s' if self.disable_after_days != 1 else ''}"
        for row in rows:
            key = (row["kind"], row["ref"])
            if key in failed:
                self.disable(*key, f"no successful delivery since {row['failing_since']} "
                                   f"({days} or more; last error: {row['last_error'] or '-'})",
                             url=failed[key])
