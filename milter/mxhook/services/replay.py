"""Replay: failed inbound deliveries, event batches and events back in the queue.

Through `store.replay.requeue` (state.db in WAL mode with a busy timeout, so the running spooler
keeps going; it notices the change through `PRAGMA data_version`). Each keeps its id, which is
its `webhook-id`, and gets a fresh retry period. A delivery goes out with its rule's current
settings (URL, auth, retry) when the rule still exists; a batch always goes to its endpoint's
current ones. Items of a disabled rule/endpoint are refused unless `force` (then they wait in
the queue until it is enabled again).

One event (its failed delivery to each endpoint) follows the same rule, a `webhook-id` names
one payload: alone in its batch, that batch is replayed (same id); from a batch of several
events, it goes alone in a new batch with a new id (`store.replay.requeue_event`), and the
failed batch keeps its id and can still be replayed whole.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from mxhook import config as configmod
from mxhook.delivery.webhook import redact_url
from mxhook.services.errors import Invalid, NotFound, translated
from mxhook.services.stores import rules_store, state_store
from mxhook.services.times import parse_time
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
    if item["kind"] == "event":
        out.update(batch_id=item["batch_id"], webhook_id=item.get("webhook_id"))
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
    """(to replay: [(item, target or None, note or None)], skipped: [(item, reason)]). Each
    item's `url` becomes the one it would go to now, redacted (webhook.redact_url)."""
    by_id = {r.id: r for r in rules}
    by_name = {r.name: r for r in rules}
    todo, skipped = [], []
    for item in items:
        if item["kind"] == "delivery":
            rule = _current_rule(by_id, by_name, item)
            if rule is not None:
                item["url"] = rule.destination.url
        elif item["endpoint_id"] in endpoints:
            item["url"] = endpoints[item["endpoint_id"]].destination.url
        item["url"] = redact_url(item["url"]) if item["url"] else None
        if item["status"] != "failed":
            why = {"succeeded": "was delivered (succeeded)", "queued": "is already queued",
                   "deferred": "is being retried (deferred)"}.get(item["status"], f"is {item['status']}")
            if item["kind"] == "event" and item["batch_id"] is None:
                why = "is not sent yet (it waits for its batch)"
            skipped.append((item, f"{why}; only failed deliveries, batches and events are replayed"))
            continue
        if item["kind"] == "delivery":
            if not item["body_stored"]:
                skipped.append((item, "its message body is no longer stored"))
                continue
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


def _alone(item: dict) -> bool:
    """An event replayed as the batch it was in: it was that batch's only event."""
    return item["batch_size"] == 1


def event_note(item: dict, dry_run: bool) -> str:
    """How one event goes out, and with which webhook-id."""
    batch = item["batch_id"]
    if _alone(item):
        return f"alone in batch {batch}: that batch {'would be' if dry_run else 'is'} replayed (same webhook-id)"
    sent = ("would go alone in a new batch, with a new webhook-id" if dry_run
            else f"sent alone as batch {item['webhook_id']} (a new webhook-id)")
    return (f"{sent}: its batch {batch} carried {item['batch_size']} events and stays failed "
            f"(`mxhook replay {batch}` replays them all, with its webhook-id)")


@translated()
def replay(cfg: configmod.Config, *, ids=(), rule: str | None = None, endpoint: str | None = None,
           since: str | None = None, until: str | None = None, force: bool = False,
           dry_run: bool = False, progress: Progress = no_progress) -> Replay:
    """Give `ids` (delivery ids, event batch ids `evb_...`, an inbound message id for all its
    deliveries, or an event id for its failed delivery to each endpoint), or `rule` (a name)
    or `endpoint` (a URL or id) for all failed ones, optionally in `since`/`until` (times or
    ages as an admin gives them)."""
    if sum(bool(x) for x in (ids, rule, endpoint)) != 1:
        raise Invalid("give delivery/batch/event IDs, or --rule NAME, or --endpoint URL|ID (one of them)")
    if ids and (since or until):
        raise Invalid("--since/--until go with --rule or --endpoint, not with IDs")
    since, until = _time(since, "--since"), _time(until, "--until")

    def select(st: statedb.StateStore, rules: list, store) -> tuple[list[dict], str]:
        if ids:
            items, unknown = state_replay.replay_items(st, ids)
            unsent = [key for key in unknown if state_replay.event_items(st, key) == []]
            if unsent:
                raise NotFound(f"event {', '.join(unsent)} went to no endpoint (none takes its type): "
                               "nothing to replay")
            if unknown:
                raise NotFound(f"no inbound delivery, event batch or event with id {', '.join(unknown)} "
                               "(see `mxhook log inbound` / `mxhook log events --json`)")
            return _failed_of_events(items), "the given id(s)"
        if rule:
            found = next((r for r in rules if r.name == rule), None)
            items = state_replay.failed_items(st, rule_id=found.id if found else None, rule_name=rule,
                                              since=since, until=until)
            if found is None and not items:
                raise NotFound(f"no rule named {rule!r}, and no failed deliveries under that name")
            return items, f"rule {rule}"
        ep = store.get_endpoint(endpoint)
        if ep is None:
            raise NotFound(f"no endpoint {endpoint!r} (give its id or URL; see `endpoint list`)")
        return (state_replay.failed_items(st, endpoint_id=ep.id, since=since, until=until),
                f"endpoint {ep.id} ({redact_url(ep.destination.url)})")

    return _run(cfg, select, need_rules=bool(rule or endpoint), force=force, dry_run=dry_run,
                progress=progress, ranged=bool(since or until))


@translated()
def replay_event(cfg: configmod.Config, event_id: str, *, force: bool = False,
                 dry_run: bool = False) -> Replay:
    """Event `event_id` again, alone, to each endpoint its delivery to failed (what `replay`
    does with an event id); `not_sent_yet` when it is in no batch yet."""
    def select(st: statedb.StateStore, _rules: list, _store) -> tuple[list[dict], str]:
        items = state_replay.event_items(st, event_id)
        if items is None:
            raise NotFound(f"no event with id {event_id!r}")
        if not any(item["batch_id"] for item in items):
            raise Invalid(f"event {event_id} is in no batch yet (nothing was sent to replay)",
                          "not_sent_yet")
        return _failed_of_events(items), f"event {event_id}"

    return _run(cfg, select, need_rules=False, force=force, dry_run=dry_run, progress=no_progress,
                ranged=False)


def _failed_of_events(items: list[dict]) -> list[dict]:
    """An event id names its failed deliveries (to the endpoints that did not take it), as
    --rule names a rule's failed ones; all of its deliveries when none failed, to say why
    nothing is replayed."""
    failed = {item["id"] for item in items if item["kind"] == "event" and item["status"] == "failed"}
    return [item for item in items
            if item["kind"] != "event" or item["id"] not in failed or item["status"] == "failed"]


def _run(cfg: configmod.Config, select, *, need_rules: bool, force: bool, dry_run: bool,
         progress: Progress, ranged: bool) -> Replay:
    """What `select(state store, rules, rules store)` names ((items, scope in words)), planned
    and (unless `dry_run`) requeued."""
    store = rules_store(cfg) if (need_rules or os.path.exists(cfg.rules_db)) else None
    try:
        rules = store.list_rules() if store else []
        endpoints = {ep.id: ep for ep in store.list_endpoints()} if store else {}
        with state_store(cfg, write=True) as st:
            items, scope = select(st, rules, store)
            todo, skipped = plan(items, rules, endpoints, st.health(), force)
            done = _requeue(st, todo, endpoints, progress) if not dry_run and todo else set()
    finally:
        if store is not None:
            store.close()
    key = state_replay.item_key
    if not dry_run:  # anything that stopped being failed meanwhile
        skipped += [(item, "is no longer failed (changed meanwhile)") for item, _, _ in todo
                    if key(item) not in done]
        todo = [t for t in todo if key(t[0]) in done]
    replayed = []
    for item, _, note in todo:
        if item["kind"] == "event":
            if _alone(item):
                item["webhook_id"] = item["batch_id"]
            note = "; ".join(filter(None, (event_note(item, dry_run), note)))
        replayed.append((item, note))
    return Replay(scope, dry_run, ranged, replayed, skipped)


def _requeue(st: statedb.StateStore, todo: list, endpoints: dict, progress: Progress) -> set[tuple]:
    """Requeue in chunks, one transaction each (an event from a batch of several: one each);
    the item_keys of what was requeued."""
    key = state_replay.item_key
    plain: dict[str, list] = {}  # the id requeued -> its items: an event alone in its batch is that batch
    for item, _, _ in todo:
        if item["kind"] != "event" or _alone(item):
            plain.setdefault(item["batch_id"] if item["kind"] == "event" else item["id"], []).append(item)
    singles = [item for item, _, _ in todo if item["kind"] == "event" and not _alone(item)]
    ids = list(plain)
    targets = {item["id"]: target for item, target, _ in todo if target is not None}
    done: set[tuple] = set()
    total = len(ids) + len(singles)
    progress(0, total)
    for start in range(0, len(ids), REQUEUE_CHUNK):
        for requeued in state_replay.requeue(st, ids[start:start + REQUEUE_CHUNK], targets=targets):
            done.update(key(item) for item in plain[requeued])
        progress(min(start + REQUEUE_CHUNK, len(ids)), total)
    for n, item in enumerate(singles, 1):
        ep = endpoints.get(item["endpoint_id"])
        item["webhook_id"] = state_replay.requeue_event(
            st, item, url=ep.destination.url if ep is not None else None)
        if item["webhook_id"] is not None:
            done.add(key(item))
        progress(len(ids) + n, total)
    return done
