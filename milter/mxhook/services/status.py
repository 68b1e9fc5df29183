"""Status: the spool backlog (`spool.handed_over`), what is pending and since when, counts by
status in the last hour, and per rule and endpoint whether it is ok, retrying, failing or
disabled (and since when, with the last error). It reports; services.check passes or fails."""
from __future__ import annotations

import sqlite3
import time

from mxhook.model.records import iso, to_datetime
from mxhook import config as configmod
from mxhook import spool
from mxhook.services import stores
from mxhook.services.errors import translated
from mxhook.store import integrity, migrations
from mxhook.store import rulesdb
from mxhook.store import logs as state_logs
from mxhook.store import replay as state_replay
from mxhook.store import statedb

STATUS_WINDOW = 3600.0  # seconds of "last hour"


def _record_time(record: spool.Record) -> str | None:
    received = record.meta.get("received") if isinstance(record.meta, dict) else None
    try:
        return iso(received) if received is not None else iso(int(record.id[:16], 16) / 1e9)
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


@translated()
def collect(cfg: configmod.Config, now: float | None = None) -> dict:
    """Everything `mxhook status` shows, as data (its --json output)."""
    now = time.time() if now is None else now
    problems: list[str] = []
    report: dict = {"now": iso(now), "spool": _spool_backlog(cfg.spool_dir)}
    if report["spool"]["error"]:
        problems.append(report["spool"]["error"])
    summary, health = None, {}
    unlogged = {"since": 0, "total": 0, "first": None}
    # what the spooler found (it stops on a damaged state.db), and what reading it here says
    state_db = {"path": cfg.state_db, "fault": integrity.read_fault(cfg.state_db), "error": None}
    if state_db["fault"]:
        problems.append(f"state database {cfg.state_db} is damaged; mxhook-spooler stopped "
                        f"({state_db['fault']}): restore it from a backup (`mxhook check` checks it)")
    if stores.exists(cfg.state_db, "state database"):
        try:
            with statedb.StateStore(cfg.state_db, readonly=True) as st:
                summary = state_replay.status_summary(st, now, window=STATUS_WINDOW)
                health = st.health()
                unlogged = state_logs.unlogged_denials(st, now - STATUS_WINDOW)
        except migrations.NotReadable as exc:  # not damage: the message says what to do
            problems.append(str(exc))
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
    pending["oldest_age_seconds"] = (round(now - to_datetime(pending["oldest"]).timestamp(), 3)
                                     if pending["oldest"] else None)
    report["pending"] = pending
    report["last_hour"] = (summary or {}).get("last_hour") or {
        "since": iso(now - STATUS_WINDOW), "inbound": dict.fromkeys(statedb.LOG_STATUSES, 0),
        "events": dict.fromkeys(statedb.DELIVERY_STATUSES, 0)}
    # unknown-domain denials counted instead of logged ([spooler] log_unknown_domains = no)
    report["unlogged_denials"] = {"last_hour": unlogged["since"], "total": unlogged["total"],
                                  "first": unlogged["first"]}
    rules_out, endpoints_out = targets(cfg, summary, health, problems)
    report.update(rules=rules_out, endpoints=endpoints_out, problems=problems)
    return report


def targets(cfg: configmod.Config, summary: dict | None, health: dict,
            problems: list[str]) -> tuple[list[dict], list[dict]]:
    """Each rule's and endpoint's entry of the report (`_target_entry`), from rules.db and
    what state.db said (`summary`: store.replay.status_summary, `health`: StateStore.health);
    what cannot be read goes into `problems`."""
    rules_out, endpoints_out = [], []
    if stores.exists(cfg.rules_db, "rules database"):
        rules, times, eps = [], {}, []
        try:
            with rulesdb.RulesStore(cfg.rules_db, readonly=True) as store:
                rules, times, eps = store.list_rules(), store.rule_times(), store.list_endpoints()
        except migrations.NotReadable as exc:
            problems.append(str(exc))
        for r in rules:
            ref = statedb.rule_ref(r.id, r.name)
            entry = _target_entry("rule", r.enabled, health.get(("rule", ref)),
                                  (summary or {}).get("rules", {}).get(ref),
                                  (times.get(r.name) or {}).get("updated"))
            rules_out.append({"name": r.name, "id": r.id, "url": r.destination.url, **entry})
        for ep in eps:
            entry = _target_entry("endpoint", ep.enabled, health.get(("endpoint", str(ep.id))),
                                  (summary or {}).get("endpoints", {}).get(ep.id), ep.updated)
            endpoints_out.append({"id": ep.id, "url": ep.destination.url, **entry})
    else:
        problems.append(f"rules database {cfg.rules_db} does not exist yet")
    return rules_out, endpoints_out
