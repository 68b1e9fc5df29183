"""Replay: failed inbound deliveries and event batches back in the queue.

Through `store.replay.requeue` (state.db in WAL mode with a busy timeout, so the running spooler
keeps going; it notices the change through `PRAGMA data_version`). Each keeps its id, which is
its `webhook-id`, and gets a fresh retry period. A delivery goes out with its rule's current
settings (URL, auth, retry) when the rule still exists; a batch always goes to its endpoint's
current ones. Items of a disabled rule/endpoint are refused unless `force` (then they wait in
the queue until it is enabled again).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from mxhook import config as configmod
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store, state_store
from mxhook.services.times import parse_time
from mxhook.store import logs as state_logs
from mxhook.store import replay as state_replay
from mxhook.store import statedb

REQUEUE_CHUNK = 200  # items per state.db transaction (and progress step)

Progress = Callable[[int, int], None]  # (done, total), before the first chunk and after each


def no_progress(_done: int, _total: int) -> None:
    pass


@dataclass
class Replay:
    scope: str  # what was asked for, in words
    dry_run: bool
    ranged: bool  # limited by since/until
    replayed: list = field(default_factory=list)  # [(item, note or None)]
    skipped: list = field(default_factory=list)  # [(item, reason)]

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "scope": self.scope,
                "replayed": [summary(item, note=note) for item, note in self.replayed],
                "skipped": [summary(item, reason=reason) for item, reason in self.skipped],
                "counts": {"replayed": len(self.replayed), "skipped": len(self.skipped)}}


def summary(item: dict, note: str | None = None, reason: str | None = None) -> dict:
    out = {"id": item["id"], "kind": item["kind"], "status": item["status"],
           "received": item["received"], "url": item["url"],
           "last_error": item["last_error"]}
    if item["kind"] == "delivery":
        out["rule"] = item["rule"]
    else:
        out.update(endpoint_id=item["endpoint_id"], size=item["size"])
    if note is not None:
        out["note"] = note
    if reason is not None:
        out["reason"] = reason
    return out


def _time(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise Invalid(f"{option}: {exc}") from None


def _current_rule(rules_by_id: dict, rules_by_name: dict, item: dict):
    if item.get("rule_id") is not None and item["rule_id"] in rules_by_id:
        return rules_by_id[item["rule_id"]]
    if item.get("rule_id") is None:
        return rules_by_name.get(item["rule"])
    return None


def plan(items: list[dict], rules: list, endpoints: dict, health: dict, force: bool) -> tuple[list, list]:
    """(to replay: [(item, target or None, note or None)], skipped: [(item, reason)])."""
    by_id = {r.id: r for r in rules}
    by_name = {r.name: r for r in rules}
    todo, skipped = [], []
    for item in items:
        if item["status"] != "failed":
            why = {"succeeded": "was delivered (succeeded)", "queued": "is already queued",
                   "deferred": "is being retried (deferred)"}.get(item["status"], f"is {item['status']}")
            skipped.append((item, f"{why}; only failed deliveries and batches are replayed"))
            continue
        if item["kind"] == "delivery":
            if not item["body_stored"]:
                skipped.append((item, "its message body is no longer stored"))
                continue
            rule = _current_rule(by_id, by_name, item)
            if rule is None:
                todo.append((item, None, f"rule {item['rule']} no longer exists: sent with the "
                                         "settings it was accepted under"))
                continue
            kind, key, name, enabled = "rule", str(rule.id), rule.name, rule.enabled
            target = rule.target_record()
            enable = f"mxhook rule enable {rule.name}"
        else:
            ep = endpoints.get(item["endpoint_id"])
            if ep is None:
                skipped.append((item, f"endpoint {item['endpoint_id']} was removed"))
                continue
            kind, key, name, enabled, target = "endpoint", str(ep.id), str(ep.id), ep.enabled, None
            enable = f"mxhook endpoint edit {ep.id} --enabled"
        if enabled:
            todo.append((item, target, None))
            continue
        h = health.get((kind, key)) or {}
        why = f"{kind} {name} is disabled"
        if h.get("disabled_at"):
            why += f" (since {h['disabled_at']}: {h['disabled_reason']})"
        if force:
            todo.append((item, target, f"{why}: queued, sent once it is enabled again (`{enable}`)"))
        else:
            skipped.append((item, f"{why}; enable it first (`{enable}`) or give --force to queue it "
                                  "anyway (it is sent once enabled)"))
    return todo, skipped


@translated()
def replay(cfg: configmod.Config, *, ids=(), rule: str | None = None, endpoint: str | None = None,
           since: str | None = None, until: str | None = None, force: bool = False,
           dry_run: bool = False, progress: Progress = no_progress) -> Replay:
    """Give `ids` (delivery ids, event batch ids `evb_...`, or an inbound message id for all its
    deliveries), or `rule` (a name) or `endpoint` (a URL or id) for all failed ones, optionally
    in `since`/`until` (times or ages as an admin gives them)."""
    if sum(bool(x) for x in (ids, rule, endpoint)) != 1:
        raise Invalid("give delivery/batch IDs, or --rule NAME, or --endpoint URL|ID (one of them)")
    if ids and (since or until):
        raise Invalid("--since/--until go with --rule or --endpoint, not with IDs")
    since, until = _time(since, "--since"), _time(until, "--until")
    store = rules_store(cfg) if (rule or endpoint or os.path.exists(cfg.rules_db)) else None
    try:
        rules = store.list_rules() if store else []
        endpoints = {ep.id: ep for ep in store.list_endpoints()} if store else {}
        with state_store(cfg, write=True) as st:
            if ids:
                items, unknown = state_replay.replay_items(st, ids)
                if unknown:
                    raise NotFound(f"no inbound delivery or event batch with id {', '.join(unknown)} "
                                   "(see `mxhook log inbound` / `mxhook log events --json`)")
                scope = "the given id(s)"
            elif rule:
                found = next((r for r in rules if r.name == rule), None)
                items = state_replay.failed_items(st, rule_id=found.id if found else None, rule_name=rule,
                                        since=since, until=until)
                if found is None and not items:
                    raise NotFound(f"no rule named {rule!r}, and no failed deliveries under that name")
                scope = f"rule {rule}"
            else:
                ep = store.get_endpoint(endpoint)
                if ep is None:
                    raise NotFound(f"no endpoint {endpoint!r} (give its id or URL; see `endpoint list`)")
                items = state_replay.failed_items(st, endpoint_id=ep.id, since=since, until=until)
                scope = f"endpoint {ep.id} ({ep.destination.url})"
            todo, skipped = plan(items, rules, endpoints, st.health(), force)
            done = set(_requeue(st, todo, progress)) if not dry_run and todo else set()
    finally:
        if store is not None:
            store.close()
    if not dry_run:  # anything that stopped being failed meanwhile
        skipped += [(item, "is no longer failed (changed meanwhile)") for item, _, _ in todo
                    if item["id"] not in done]
        todo = [t for t in todo if t[0]["id"] in done]
    return Replay(scope, dry_run, bool(since or until), [(item, note) for item, _, note in todo],
                  skipped)


def _requeue(st: statedb.StateStore, todo: list, progress: Progress) -> list[str]:
    """Requeue in chunks, one transaction each."""
    ids = [item["id"] for item, _, _ in todo]
    targets = {item["id"]: target for item, target, _ in todo if target is not None}
    done: list[str] = []
    progress(0, len(ids))
    for start in range(0, len(ids), REQUEUE_CHUNK):
        done += state_replay.requeue(st, ids[start:start + REQUEUE_CHUNK], targets=targets)
        progress(min(start + REQUEUE_CHUNK, len(ids)), len(ids))
    return done


def replay_event(cfg: configmod.Config, event_id: str, *, force: bool = False,
                 dry_run: bool = False) -> Replay:
    """The event batches that carried event `event_id` (one per endpoint that took it), as
    `replay` replays them: the failed ones go back in the queue (with the other events of
    their batch: a batch is one webhook-id)."""
    with state_store(cfg) as st:
        detail = state_logs.event_detail(st, event_id)
    if detail is None:
        raise NotFound(f"no event with id {event_id!r}")
    batch_ids = [d["batchId"] for d in detail["deliveries"] if d["batchId"]]
    if not batch_ids:
        raise Invalid(f"event {event_id} is in no batch yet (nothing was sent to replay)",
                      "not_sent_yet")
    return replay(cfg, ids=batch_ids, force=force, dry_run=dry_run)
