"""`mxhook replay` and `mxhook status`: the dead letter and the state of delivery.

Both are plain click commands that cli.py registers into the `mxhook` group
(`cli.add_command(...)`), like admin.py's; they take the group's context object (`ctx.obj`,
a cli.App: `.cfg`, `.rules_store()`, `.state_store()`). cli.py imports this module at its end,
so cli's helpers (App, parse_time, table, ...) are imported inside the functions, never at
module load.

- `replay` puts failed inbound deliveries and event batches back in the queue through
  `StateStore.requeue` (state.db in WAL mode with a busy timeout, so the running spooler keeps
  going; it notices the change through `PRAGMA data_version`). Each keeps its id, which is its
  `webhook-id`, and gets a fresh retry period. A delivery goes out with its rule's current
  settings (URL, auth, retry) when the rule still exists; a batch always goes to its endpoint's
  current ones. Items of a disabled rule/endpoint are refused unless `--force` (then they wait
  in the queue until it is enabled again).
- `status` reports: the spool backlog (`spool.handed_over`), what is pending and since when,
  counts by status in the last hour, and per rule and endpoint whether it is ok, retrying,
  failing or disabled (and since when, with the last error). It always exits 0: it reports;
  `mxhook check` is the pass/fail tool.
"""
from __future__ import annotations

import os
import sqlite3
import time

import click

from mxhook import spool
from mxhook.store import statedb
from mxhook.store import integrity

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
REQUEUE_CHUNK = 200  # items per state.db transaction (and progress bar step)
STATUS_WINDOW = 3600.0  # seconds of "last hour"


# ---------------------------------------------------------------------------------------------
# Context

def _app(ctx: click.Context):
    """The group's cli.App, or one for $MXHOOK_CONFIG / the default outside the group."""
    obj = ctx.obj
    if obj is not None and hasattr(obj, "state_store"):
        return obj
    from mxhook.cli import App

    return App(getattr(obj, "config_path", None))


def _isatty() -> bool:
    return click.get_text_stream("stdout").isatty()


def _time_option(value: str | None, option: str) -> str | None:
    from mxhook.cli import InputError, parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None


def _age(seconds: float | None) -> str:
    """3725 -> '1h 2m'."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // subsize}{sub}"
    return f"{s}s"


# ---------------------------------------------------------------------------------------------
# replay

def _current_rule(rules_by_id: dict, rules_by_name: dict, item: dict):
    if item.get("rule_id") is not None and item["rule_id"] in rules_by_id:
        return rules_by_id[item["rule_id"]]
    if item.get("rule_id") is None:
        return rules_by_name.get(item["rule"])
    return None


def _plan(items: list[dict], rules: list, endpoints: dict, health: dict, force: bool) -> tuple[list, list]:
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
            target = rule.target.to_record(discard=rule.discard)
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


def _summary(item: dict, note: str | None = None, reason: str | None = None) -> dict:
    out = {"id": item["id"], "kind": item["kind"], "status": item["status"],
           "received": item["received"], "endpoint": item["endpoint"],
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


def _label(item: dict) -> str:
    if item["kind"] == "delivery":
        return f"{item['id']}  rule {item['rule']} -> {item['endpoint']}"
    return f"{item['id']}  endpoint {item['endpoint_id']} ({item['size']} event(s)) -> {item['endpoint']}"


@click.command("replay", context_settings=CONTEXT_SETTINGS,
               short_help="Send failed deliveries or event batches again (same webhook-id).")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--rule", "rule_name", metavar="NAME",
              help="Every failed delivery of this inbound rule (in --since/--until).")
@click.option("--endpoint", "endpoint_key", metavar="URL|ID",
              help="Every failed event batch of this endpoint (in --since/--until).")
@click.option("--since", metavar="TIME",
              help="With --rule/--endpoint: received (batch: made) at or after TIME (ISO, or an age: 2h, 7d).")
@click.option("--until", metavar="TIME", help="With --rule/--endpoint: before TIME.")
@click.option("--force", is_flag=True,
              help="Queue items of a disabled rule/endpoint too (they wait until it is enabled).")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def replay(ctx, ids, rule_name, endpoint_key, since, until, force, dry_run, as_json):
    """Put failed inbound deliveries or event batches back in the queue.

    Give IDs (delivery ids as in `log inbound`, event batch ids `evb_...` as in `log events`,
    or an inbound message id for all its deliveries), or --rule NAME or --endpoint URL|ID for
    all failed ones, optionally in --since/--until. Each keeps its webhook-id and gets a fresh
    retry period; the running spooler sends it within a second or so. Exit status 0 when
    everything asked for was queued (or would be, with --dry-run), 1 when something was
    refused (listed with the reason).
    """
    from mxhook.cli import InputError, emit_json, short_time

    app = _app(ctx)
    modes = sum(bool(x) for x in (ids, rule_name, endpoint_key))
    if modes != 1:
        raise InputError("give delivery/batch IDs, or --rule NAME, or --endpoint URL|ID (one of them)")
    if ids and (since or until):
        raise InputError("--since/--until go with --rule or --endpoint, not with IDs")
    since, until = _time_option(since, "--since"), _time_option(until, "--until")
    store = app.rules_store() if (rule_name or endpoint_key or os.path.exists(app.cfg.rules_db)) else None
    try:
        rules = store.list_rules() if store else []
        endpoints = {ep.id: ep for ep in store.list_endpoints()} if store else {}
        st = app.state_store()
        try:
            if ids:
                items, unknown = st.replay_items(ids)
                if unknown:
                    raise InputError(f"no inbound delivery or event batch with id {', '.join(unknown)} "
                                     "(see `mxhook log inbound` / `mxhook log events --json`)")
                scope = "the given id(s)"
            elif rule_name:
                rule = next((r for r in rules if r.name == rule_name), None)
                items = st.failed_items(rule_id=rule.id if rule else None, rule_name=rule_name,
                                        since=since, until=until)
                if rule is None and not items:
                    raise InputError(f"no rule named {rule_name!r}, and no failed deliveries under that name")
                scope = f"rule {rule_name}"
            else:
                ep = store.get_endpoint(endpoint_key)
                if ep is None:
                    raise InputError(f"no endpoint {endpoint_key!r} (give its id or URL; see `endpoint list`)")
                items = st.failed_items(endpoint_id=ep.id, since=since, until=until)
                scope = f"endpoint {ep.id} ({ep.url})"
            todo, skipped = _plan(items, rules, endpoints, st.health(), force)
            replayed: list[str] = []
            if not dry_run and todo:
                replayed = _requeue(st, todo, quiet=as_json)
        finally:
            st.close()
    finally:
        if store is not None:
            store.close()
    done = set(replayed)
    if not dry_run:  # anything that stopped being failed meanwhile
        skipped += [(item, "is no longer failed (changed meanwhile)") for item, _, _ in todo
                    if item["id"] not in done]
        todo = [t for t in todo if t[0]["id"] in done]
    if as_json:
        emit_json({"dry_run": dry_run, "scope": scope,
                   "replayed": [_summary(item, note=note) for item, _, note in todo],
                   "skipped": [_summary(item, reason=reason) for item, reason in skipped],
                   "counts": {"replayed": len(todo), "skipped": len(skipped)}})
    else:
        if not todo and not skipped:
            click.echo(f"Nothing to replay: no failed deliveries or batches for {scope}"
                       + (" in that time range" if since or until else ""))
        elif dry_run:
            click.echo(f"Would replay {len(todo)} item(s) for {scope}:")
            for item, _, note in todo:
                click.echo(f"  {_label(item)}  (received {short_time(item['received'])}; "
                           f"last error: {item['last_error'] or '-'})")
                if note:
                    click.echo(f"    {note}")
        elif todo:
            deliveries = sum(1 for item, _, _ in todo if item["kind"] == "delivery")
            click.echo(f"Replayed {len(todo)} item(s) for {scope}: {deliveries} inbound "
                       f"delivery(ies), {len(todo) - deliveries} event batch(es); same webhook-id, "
                       "fresh retry period")
            for item, _, note in todo:
                if note:
                    click.echo(f"  {item['id']}: {note}")
        for item, reason in skipped:
            click.echo(f"Not replayed: {item['id']}: {reason}", err=True)
    ctx.exit(1 if skipped else 0)


def _requeue(st: statedb.StateStore, todo: list, *, quiet: bool) -> list[str]:
    """Requeue in chunks (one transaction each), with a progress bar on a terminal and plain
    counts on stderr otherwise (for more than one chunk)."""
    ids = [item["id"] for item, _, _ in todo]
    targets = {item["id"]: target for item, target, _ in todo if target is not None}
    chunks = [ids[i:i + REQUEUE_CHUNK] for i in range(0, len(ids), REQUEUE_CHUNK)]
    done: list[str] = []
    if _isatty() and not quiet:
        with click.progressbar(length=len(ids), label="Replaying", show_pos=True) as bar:
            for chunk in chunks:
                done += st.requeue(chunk, targets=targets)
                bar.update(len(chunk))
        return done
    for n, chunk in enumerate(chunks, 1):
        done += st.requeue(chunk, targets=targets)
        if len(chunks) > 1 and not quiet:
            click.echo(f"replaying: {min(n * REQUEUE_CHUNK, len(ids))} of {len(ids)}", err=True)
    return done


# ---------------------------------------------------------------------------------------------
# status

def _record_time(record: spool.Record) -> str | None:
    received = record.meta.get("received") if isinstance(record.meta, dict) else None
    try:
        return statedb.iso(received) if received is not None else statedb.iso(int(record.id[:16], 16) / 1e9)
    except (ValueError, TypeError, OverflowError, OSError):
        return None


def _spool_backlog(spool_dir: str) -> dict:
    try:
        records = spool.handed_over(spool_dir)
    except OSError as exc:
        return {"backlog": None, "oldest": None, "error": f"cannot read {spool_dir}: {exc.strerror or exc}"}
    times = [t for t in map(_record_time, records) if t]
    return {"backlog": len(records), "oldest": min(times) if times else None, "error": None}


def _target_entry(kind: str, enabled: bool, h: dict | None, stats: dict | None,
                  admin_since: str | None) -> dict:
    h = h or {}
    stats = stats or {}
    pending = stats.get("pending", 0)
    entry = {"enabled": enabled, "state": "ok", "since": h.get("last_success"),
             "last_error": h.get("last_error"), "last_status_code": h.get("last_status_code"),
             "last_success": h.get("last_success"), "last_failure": h.get("last_failure"),
             "failing_since": h.get("failing_since"), "disabled_reason": None,
             "pending": pending, "oldest_pending": stats.get("oldest_pending"),
             "failed": stats.get("failed", stats.get("failed_batches", 0))}
    if not enabled:
        by_us = h.get("disabled_at") is not None
        entry.update(state="disabled", since=h["disabled_at"] if by_us else admin_since,
                     disabled_reason=h.get("disabled_reason") if by_us else "disabled by the admin")
    elif h.get("failing_since"):
        entry.update(state="retrying" if pending else "failing", since=h["failing_since"])
    return entry


def collect_status(cfg, now: float | None = None) -> dict:
    """Everything `mxhook status` shows, as data (its --json output)."""
    from mxhook.store import rulesdb as dbmod

    now = time.time() if now is None else now
    problems: list[str] = []
    report: dict = {"now": statedb.iso(now), "spool": _spool_backlog(cfg.spool_dir)}
    if report["spool"]["error"]:
        problems.append(report["spool"]["error"])
    summary, health = None, {}
    # what the spooler found (it stops on a damaged state.db), and what reading it here says
    state_db = {"path": cfg.state_db, "fault": integrity.read_fault(cfg.state_db), "error": None}
    if state_db["fault"]:
        problems.append(f"state database {cfg.state_db} is damaged; mxhook-spooler stopped "
                        f"({state_db['fault']}): restore it from a backup (`mxhook check` checks it)")
    if os.path.exists(cfg.state_db):
        try:
            with statedb.StateStore(cfg.state_db) as st:
                summary = st.status_summary(now, window=STATUS_WINDOW)
                health = st.health()
        except sqlite3.Error as exc:
            state_db["error"] = f"{type(exc).__name__}: {exc}"
            problems.append(f"state database {cfg.state_db} cannot be read ({state_db['error']}): "
                            "restore it from a backup (`mxhook check` checks it)")
    else:
        problems.append(f"state database {cfg.state_db} does not exist yet (mxhook-spooler creates it)")
    report["state_db"] = state_db
    pending = (summary or {}).get("pending") or {"inbound": 0, "inbound_oldest": None, "events": 0,
                                                  "events_oldest": None, "open_batches": 0}
    oldest = [t for t in (pending["inbound_oldest"], pending["events_oldest"], report["spool"]["oldest"]) if t]
    pending = dict(pending, oldest=min(oldest) if oldest else None)
    pending["oldest_age_seconds"] = (round(now - statedb.to_datetime(pending["oldest"]).timestamp(), 3)
                                     if pending["oldest"] else None)
    report["pending"] = pending
    report["last_hour"] = (summary or {}).get("last_hour") or {
        "since": statedb.iso(now - STATUS_WINDOW), "inbound": dict.fromkeys(statedb.LOG_STATUSES, 0),
        "events": dict.fromkeys(statedb.DELIVERY_STATUSES, 0)}
    rules_out, endpoints_out = [], []
    if os.path.exists(cfg.rules_db):
        with dbmod.RulesStore(cfg.rules_db) as store:
            rules, times, eps = store.list_rules(), store.rule_times(), store.list_endpoints()
        for r in rules:
            ref = statedb.rule_ref(r.id, r.name)
            entry = _target_entry("rule", r.enabled, health.get(("rule", ref)),
                                  (summary or {}).get("rules", {}).get(ref),
                                  (times.get(r.name) or {}).get("updated"))
            rules_out.append({"name": r.name, "id": r.id, "endpoint": r.endpoint, **entry})
        for ep in eps:
            entry = _target_entry("endpoint", ep.enabled, health.get(("endpoint", str(ep.id))),
                                  (summary or {}).get("endpoints", {}).get(ep.id), ep.updated)
            endpoints_out.append({"id": ep.id, "url": ep.url, **entry})
    else:
        problems.append(f"rules database {cfg.rules_db} does not exist yet")
    report.update(rules=rules_out, endpoints=endpoints_out, problems=problems)
    return report


def _counts(by_status: dict) -> str:
    parts = [f"{n} {status}" for status, n in by_status.items() if n]
    return ", ".join(parts) or "none"


@click.command("status", context_settings=CONTEXT_SETTINGS,
               short_help="Spool backlog, pending deliveries, rule and endpoint states.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def status(ctx, as_json):
    """Show the spool backlog, what is pending and since when, deliveries and events by status
    in the last hour, and each rule and endpoint: ok, retrying (its last attempt failed and
    deliveries are waiting for a retry), failing (its last attempt failed, nothing pending) or
    disabled (by the admin, or by the spooler after a 410 Gone or [spooler]
    disable_after_days of failures).

    Always exits 0 (it reports; `mxhook check` is the pass/fail tool).
    """
    from mxhook.cli import emit_json, short_time, table

    report = collect_status(_app(ctx).cfg)
    if as_json:
        emit_json(report)
        return
    sp, pending, hour = report["spool"], report["pending"], report["last_hour"]
    sdb = report["state_db"]
    if sdb["fault"] or sdb["error"]:
        click.echo(f"{'state db:':12}DAMAGED: {sdb['fault'] or sdb['error']} "
                   "(mxhook-spooler does not ingest or deliver; restore state.db from a backup)")
    if sp["error"]:
        click.echo(f"{'spool:':12}{sp['error']}")
    else:
        click.echo(f"{'spool:':12}{sp['backlog']} record(s) waiting to be ingested"
                   + (f", oldest {short_time(sp['oldest'])}" if sp["oldest"] else ""))
    line = (f"{pending['inbound']} inbound deliver{'y' if pending['inbound'] == 1 else 'ies'}, "
            f"{pending['events']} event deliver{'y' if pending['events'] == 1 else 'ies'} "
            f"({pending['open_batches']} open batch{'es' if pending['open_batches'] != 1 else ''})")
    if pending["oldest"]:
        line += f"; oldest waits {_age(pending['oldest_age_seconds'])} (since {short_time(pending['oldest'])})"
    click.echo(f"{'pending:':12}{line}")
    click.echo(f"{'last hour:':12}inbound: {_counts(hour['inbound'])}; events: {_counts(hour['events'])}")
    if report["rules"]:
        click.echo("")
        table(["RULE", "STATE", "SINCE", "PENDING", "FAILED", "LAST ERROR"],
              [[r["name"], r["state"], short_time(r["since"]), r["pending"], r["failed"],
                r["disabled_reason"] if r["state"] == "disabled" else
                (r["last_error"] if r["state"] != "ok" else None)] for r in report["rules"]],
              max_width=70)
    if report["endpoints"]:
        click.echo("")
        table(["ENDPOINT", "STATE", "SINCE", "PENDING", "FAILED", "LAST ERROR", "URL"],
              [[e["id"], e["state"], short_time(e["since"]), e["pending"], e["failed"],
                e["disabled_reason"] if e["state"] == "disabled" else
                (e["last_error"] if e["state"] != "ok" else None), e["url"]]
               for e in report["endpoints"]], max_width=60)
    for problem in report["problems"]:
        if problem != sp["error"] and not (
                (sdb["fault"] or sdb["error"]) and problem.startswith(f"state database {sdb['path']} ")):
            click.echo(f"note: {problem}")
