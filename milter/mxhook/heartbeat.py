"""Heartbeat files: how `mxhook check` (and /metrics) tell a running mxhook-spooler or
mxhook-logfollow from one that died or hangs.

Each of the two loops owns `<state dir>/<daemon>.heartbeat` (the directory of state.db for the
spooler, of its position file for the log follower: /var/lib/mxhook when packaged). The file
holds the pid and start time, written when the loop starts; its modification time is touched
every INTERVAL seconds from the loop itself, so a loop that is stuck stops touching it. A clean
stop removes it. A reader calls a daemon alive when the file is younger than STALE_AFTER and
its pid exists: a loop pass may wait on state.db's lock for up to 30 s (busy_timeout), so the
bound is twice that.

File system only, and never fatal to the daemon: a heartbeat that cannot be written is logged
once.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

INTERVAL = 10.0  # seconds between touches
STALE_AFTER = 60.0  # seconds without a touch after which the daemon is not progressing
SPOOLER = "mxhook-spooler"
LOGFOLLOW = "mxhook-logfollow"

log = logging.getLogger(__name__)


def path_for(state_path: str, daemon: str) -> str:
    """The heartbeat file of `daemon`, beside its state file `state_path`."""
    return os.path.join(os.path.dirname(os.path.abspath(state_path)), f"{daemon}.heartbeat")


class Heartbeat:
    """The writer side, called from the daemon's loop (`beat` each pass: it writes at most
    every `interval` seconds) and at a clean stop (`stop`)."""

    def __init__(self, path: str, *, interval: float = INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic):
        self.path = path
        self.interval = interval
        self.monotonic = monotonic
        self._next = 0.0
        self._failed = False
        self._written = False
        self._started = time.time()

    def beat(self) -> None:
        now = self.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            if self._written:
                try:
                    os.utime(self.path)
                    self._failed = False
                    return
                except FileNotFoundError:  # removed under us: written again
                    pass
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "started": self._started}, fh)
            os.replace(tmp, self.path)
            self._written = True
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the heartbeat file %s (mxhook check will call this "
                            "daemon down): %s", self.path, exc)
            self._failed = True

    def stop(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def read(path: str, now: float | None = None) -> dict:
    """What the heartbeat file says: {state: "alive" | "stale" | "dead" | "missing" |
    "unreadable", age (seconds since the last touch), pid, started, error}."""
    now = time.time() if now is None else now
    out = {"state": "missing", "age": None, "pid": None, "started": None, "error": None}
    try:
        with open(path, encoding="utf-8") as fh:
            age = now - os.fstat(fh.fileno()).st_mtime
            doc = json.load(fh)
    except FileNotFoundError:
        return out
    except (OSError, ValueError) as exc:
        return dict(out, state="unreadable", error=str(exc))
    pid = doc.get("pid") if isinstance(doc, dict) else None
    out.update(age=round(max(age, 0.0), 3), pid=pid,
               started=doc.get("started") if isinstance(doc, dict) else None)
    if not isinstance(pid, int) or pid <= 0 or not _pid_exists(pid):
        out["state"] = "dead"
    elif age > STALE_AFTER:
        out["state"] = "stale"
    else:
        out["state"] = "alive"
    return out


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
