"""Which log mxhook-logfollow reads (`[logfollow] source`; `auto` resolved by `choose_source`)
and its saved position, for the daemon and for `mxhook check` alike."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

STATE_VERSION = 1


def load_state(path: str) -> dict | None:
    """The saved position, or None (none yet, unreadable, or of an unknown format: logged)."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("position file %s unreadable (%s): starting as if new", path, exc)
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        log.warning("position file %s has an unknown format: starting as if new", path)
        return None
    return state


JOURNAL_SOCKET_DIR = "/run/systemd/journal"  # exists while journald runs; replaced in tests
POSTCONF = "postconf"


def journald_running() -> bool:
    return os.path.isdir(JOURNAL_SOCKET_DIR)


def postfix_parameter(name: str, config_dir: str = "") -> str:
    """A Postfix parameter's value (`postconf -h`), or "" when Postfix cannot be asked."""
    cmd = [POSTCONF, *(["-c", config_dir] if config_dir else []), "-h", name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def postfix_maillog_file(config_dir: str = "") -> str:
    """Postfix's maillog_file (Postfix >= 3.4 logging to a file of its own), or "" when it sets
    none or cannot be asked."""
    return own_log_file(postfix_parameter("maillog_file", config_dir))


def own_log_file(maillog_file: str) -> str:
    """maillog_file as a file to follow: /dev/stdout (a container's log) is none."""
    return "" if maillog_file.startswith("/dev/") else maillog_file


@dataclass(frozen=True)
class Chosen:
    source: str  # "file" or "journald"
    path: str  # the file (source file)
    why: str  # for the start-up line and `mxhook check`
    missing: bool = False  # source file whose path does not exist


def choose_source(source: str, path: str, state: dict | None, *, maillog_file=postfix_maillog_file,
                  exists=os.path.exists, journal=journald_running) -> Chosen:
    """What `[logfollow] source` means here. `auto`: a saved position's source while it is
    still there, else Postfix's maillog_file, else `path` when it exists, else the journal when
    journald runs, else `path` (missing: warned about)."""
    if source == "journald":
        return Chosen("journald", "", "[logfollow] source = journald")
    if source == "file":
        return Chosen("file", path, "[logfollow] source = file", missing=not exists(path))
    if state and state.get("source") == "journald":
        return Chosen("journald", "", "auto: the saved position is in the journal")
    if state and state.get("source") == "file" and state.get("path") and exists(state["path"]):
        return Chosen("file", state["path"], "auto: the saved position is in this file")
    own = maillog_file()
    if own:
        return Chosen("file", own, "auto: Postfix's maillog_file", missing=not exists(own))
    if exists(path):
        return Chosen("file", path, "auto: [logfollow] path exists")
    if journal():
        return Chosen("journald", "", f"auto: {path} does not exist and journald runs")
    return Chosen("file", path, f"auto: {path} does not exist and journald does not run", missing=True)


def describe(chosen: Chosen) -> str:
    where = "the journal" if chosen.source == "journald" else chosen.path
    text = f"{where} ({chosen.why})"
    if chosen.missing:
        text += (f"; {chosen.path} does not exist: no delivery events until it does (is a "
                 "syslog daemon such as rsyslog writing mail there? else set [logfollow] "
                 "source = journald or path)")
    return text
