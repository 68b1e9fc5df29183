"""What /metrics exposes, as plain data (web/metrics.py turns it into Prometheus families):
read on each scrape from state.db (read-only), rules.db, the spool directory, the heartbeat
files and the log follower's position, so mxhook-web needs nothing from the daemons and a
scrape sees what `mxhook status` sees.

Counts of decisions and deliveries are of the last hour (gauges over a window): the logs they
come from are pruned (`[spooler] inbound_log_days`), so a total over them is no counter.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time

from mxhook import config as configmod
from mxhook import heartbeat, spool
from mxhook.model.records import to_datetime
from mxhook.services import status as statussvc
from mxhook.services.errors import translated
from mxhook.store import integrity, migrations, statedb
from mxhook.store import logs as state_logs
from mxhook.store import metrics as state_metrics
from mxhook.store import replay as state_replay

WINDOW = statussvc.STATUS_WINDOW  # seconds of "last hour"


def _age(now: float, stored: str | None) -> float | None:
    return round(max(now - to_datetime(stored).timestamp(), 0.0), 3) if stored else None


def _spool(spool_dir: str, now: float) -> dict:
    found = spool.waiting(spool_dir)
    try:
        with os.scandir(os.path.join(spool_dir, "bad")) as it:
            bad = sum(1 for e in it if e.name.endswith(".rec"))
    except OSError:
        bad = 0
    oldest = found["oldest_mtime"]
    return {"new_files": found["files"], "bad_files": bad, "records": found["records"],
            "oldest_age": round(max(now - oldest, 0.0), 3) if oldest is not None else 0.0}


def _logfollow(cfg: configmod.Config, now: float) -> dict:
    """How far the log follower's saved position is behind the log: bytes (a file source whose
    position is in the file at `path`; after a rotation, the whole new file), and seconds (the
    log written since the position was saved, while bytes are left); the position file's age."""
    state_file = cfg.get("logfollow", "state_file")
    out = {"position_age": None, "lag_bytes": None, "lag_seconds": None}
    try:
        with open(state_file, encoding="utf-8") as fh:
            saved_at = os.fstat(fh.fileno()).st_mtime
            position = json.load(fh)
    except (OSError, ValueError):
        return out
    out["position_age"] = round(max(now - saved_at, 0.0), 3)
    if not isinstance(position, dict) or position.get("source") != "file":
        return out
    try:
        st = os.stat(position.get("path") or cfg.get("logfollow", "path"))
    except OSError:
        return out
    same = position.get("inode") == st.st_ino and position.get("dev") in (None, st.st_dev)
    offset = position.get("offset") if same and isinstance(position.get("offset"), int) else 0
    lag = max(st.st_size - offset, 0)
    out["lag_bytes"] = lag
    out["lag_seconds"] = round(max(st.st_mtime - saved_at, 0.0), 3) if lag else 0.0
    return out


def _daemons(cfg: configmod.Config, now: float) -> dict:
    paths = {"spooler": heartbeat.path_for(cfg.state_db, heartbeat.SPOOLER),
             "logfollow": heartbeat.path_for(cfg.get("logfollow", "state_file"), heartbeat.LOGFOLLOW)}
    return {name: heartbeat.read(path, now) for name, path in paths.items()}


def _failures(store: statedb.StateStore, entries: list[dict], kind: str) -> None:
    """Each failing target's attempts since it started failing (`consecutive_failures`)."""
    for e in entries:
        since = e.get("failing_since")
        if not since:
            e["consecutive_failures"] = 0
        elif kind == "rule":
            e["consecutive_failures"] = state_metrics.rule_failures_since(store, e["id"], e["name"], since)
        else:
            e["consecutive_failures"] = state_metrics.endpoint_failures_since(store, e["id"], since)


@translated()
def collect(cfg: configmod.Config, now: float | None = None) -> dict:
    """{spool, decisions, inbound, events (last hour by status), rules, endpoints (status's
    entries with ages and consecutive_failures), logfollow, daemons, state_db_up, problems}."""
    now = time.time() if now is None else now
    problems: list[str] = []
    summary, health = None, {}
    decisions = {"accepted": 0, "denied": 0, "denied_unlogged": 0}
    state_up = integrity.read_fault(cfg.state_db) is None and os.path.exists(cfg.state_db)
    rules, endpoints = [], []
    store = None
    if os.path.exists(cfg.state_db):
        try:
            store = statedb.StateStore(cfg.state_db, readonly=True)
            summary = state_replay.status_summary(store, now, window=WINDOW)
            health = store.health()
            decisions["accepted"] = state_metrics.accepted_since(store, now - WINDOW)
            decisions["denied"] = summary["last_hour"]["inbound"]["denied"]
            decisions["denied_unlogged"] = state_logs.unlogged_denials(store, now - WINDOW)["since"]
        except (migrations.NotReadable, sqlite3.Error) as exc:
            state_up = False
            problems.append(f"state database {cfg.state_db}: {exc}")
    try:
        rules, endpoints = statussvc.targets(cfg, summary, health, problems)
        if store is not None and summary is not None:
            _failures(store, rules, "rule")
            _failures(store, endpoints, "endpoint")
    except sqlite3.Error as exc:
        state_up = False
        problems.append(f"state database {cfg.state_db}: {exc}")
    finally:
        if store is not None:
            store.close()
    for e in rules + endpoints:
        e["oldest_pending_age"] = _age(now, e.get("oldest_pending"))
        e["failing_seconds"] = _age(now, e.get("failing_since")) or 0.0
    last_hour = (summary or {}).get("last_hour") or {}
    inbound = dict.fromkeys(statedb.DELIVERY_STATUSES, 0)
    inbound.update({k: v for k, v in (last_hour.get("inbound") or {}).items() if k in inbound})
    events = dict.fromkeys(statedb.DELIVERY_STATUSES, 0)
    events.update(last_hour.get("events") or {})
    return {"spool": _spool(cfg.spool_dir, now), "decisions": decisions, "inbound": inbound,
            "events": events, "rules": rules, "endpoints": endpoints,
            "logfollow": _logfollow(cfg, now), "daemons": _daemons(cfg, now),
            "state_db_up": state_up, "problems": problems}
