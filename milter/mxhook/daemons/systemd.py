"""What a daemon tells its service manager (sd_notify(3)), and how it takes `systemctl reload`.

Readiness. The units are `Type=notify`: systemd counts a daemon started when it sends READY=1,
which each sends once it truly serves (the milter: its socket exists, with its mode and group,
so the milter unit's `Before=postfix.service` makes Postfix start once the socket is there; web
and track: listening; spooler and log follower: state opened, the loop about to run). STATUS= is the
line `systemctl status` shows; STOPPING=1 says a stop began. Sent with python3-systemd
(`systemd.daemon.notify`, a Depends of the package; `pip install 'mxhook[systemd]'`). Without
NOTIFY_SOCKET (tests, a run in a terminal, a Type=simple unit) nothing is sent. Without the
module (a pip install without the extra) nothing is sent either: the daemon runs all the same,
and when NOTIFY_SOCKET says a Type=notify unit waits for it, an error says why it will time out.

Reload. `Reload` reads the config file again when `SignalThread` sees the unit's reload signal
(SIGHUP; the milter's is SIGUSR1, libmilter takes SIGHUP as a stop): the keys a daemon can
change while it runs (`hot`; every daemon's own `log` and `log_level`) are applied and logged,
those it reads only at start are logged as waiting for a restart, and a file that does not
parse or check keeps the running configuration (an error line, never an exit).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterable

from mxhook import config
from mxhook.daemons import logsetup

try:
    from systemd import daemon as _sd
except ImportError:  # pip install without the [systemd] extra
    _sd = None

log = logging.getLogger(__name__)

_missing_said = False
_ready_status = "running"  # the last READY=1's STATUS, told again after a reload


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") to the service manager; False when nothing was
    sent (no NOTIFY_SOCKET, no python3-systemd, or the send failed: never fatal)."""
    global _missing_said
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if _sd is None:
        if not _missing_said:
            _missing_said = True
            log.error("NOTIFY_SOCKET is set (a Type=notify unit) but the Python module systemd "
                      "is missing: the service manager never hears this daemon is ready. "
                      "Install python3-systemd (pip: mxhook[systemd]) or use Type=simple")
        return False
    try:
        return bool(_sd.notify("\n".join(fields)))
    except OSError as exc:
        log.warning("cannot notify the service manager (%s): %s", ", ".join(fields), exc)
        return False


def ready(status: str) -> bool:
    global _ready_status
    _ready_status = status
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(text: str = "stopping") -> bool:
    return notify("STOPPING=1", f"STATUS={text}")


class SignalThread:
    """Runs `action` (set once the daemon is up; None: the signal is logged and ignored) on a
    thread of its own each time `signum` arrives.

    Entered first thing in main(): the signal is blocked in the calling thread, and so in every
    thread started after, so only this thread's sigwait takes it. (The milter's main thread is
    in libmilter's C loop, where no Python signal handler runs.) Leaving stops the thread and
    gives the calling thread its signal mask back."""

    def __init__(self, signum: int, name: str = "mxhook-reload"):
        self.signum = signum
        self.name = name
        self.action: Callable[[], None] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._mask: set = set()

    def __enter__(self) -> SignalThread:
        # The thread starts with every signal blocked: it takes `signum` only, by sigwait.
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        self._thread = threading.Thread(target=self._wait, name=self.name, daemon=True)
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask | {self.signum})
        return self

    def _wait(self) -> None:
        while True:
            signal.sigwait({self.signum})
            if self._closed:
                return
            action = self.action
            if action is None:
                log.info("signal %s during start-up: ignored", signal.Signals(self.signum).name)
                continue
            try:
                action()
            except Exception:
                log.exception("reload failed; the running configuration stays")

    def __exit__(self, *exc) -> None:
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            signal.pthread_kill(self._thread.ident, self.signum)  # wakes its sigwait
            self._thread.join(5)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)


def reads(settings: Iterable[type], section: str) -> frozenset[tuple[str, str]]:
    """The (section, key)s the FromConfig classes `settings` read, with `section`'s log and
    log_level."""
    keys = {(section, "log"), (section, "log_level")}
    for cls in settings:
        keys.update((f.metadata.get("section", cls.SECTION), f.name)
                    for f in dataclasses.fields(cls) if f.init)
    return frozenset(keys)


@dataclasses.dataclass
class Reload:
    """One `systemctl reload` of `daemon` (its SignalThread's action).

    `cfg` is what runs. The file (`path`, as --config gave it) is read again and checked
    through `settings` (the daemon's FromConfig classes); of the keys they read (and
    `also_reads`), those in `hot` go to `apply` as a Config that differs from the running one
    in those keys only, and the section's log and log_level are applied here."""

    daemon: str  # "mxhook-spooler": log lines and the restart hint
    section: str  # whose log and log_level this daemon uses
    cfg: config.Config
    settings: tuple[type, ...]
    hot: frozenset[tuple[str, str]]
    apply: Callable[[config.Config], None] = lambda cfg: None
    path: str | None = None
    also_reads: tuple[tuple[str, str], ...] = ()
    monotonic_ns: Callable[[], int] = time.monotonic_ns  # CLOCK_MONOTONIC, as MONOTONIC_USEC wants

    def __call__(self) -> None:
        notify("RELOADING=1", "STATUS=reloading the configuration",
               f"MONOTONIC_USEC={self.monotonic_ns() // 1000}")
        try:
            self.reload()
        finally:
            notify("READY=1", f"STATUS={_ready_status}")

    def reload(self) -> list[tuple[str, str]]:
        """Read, compare, apply; the keys applied."""
        try:
            new = config.load(self.path)
            for cls in self.settings:
                cls.from_config(new)
        except config.ConfigError as exc:
            log.error("reload: the running configuration stays: %s", str(exc).replace("\n", "; "))
            return []
        source = new.source or "built-in defaults"
        keys = reads(self.settings, self.section) | set(self.also_reads)
        changed = sorted(k for k in keys if new.get(*k) != self.cfg.get(*k))
        hot = self.hot | {(self.section, "log"), (self.section, "log_level")}
        applied = [k for k in changed if k in hot]
        waiting = [k for k in changed if k not in hot]
        if not changed:
            log.info("reload: %s: nothing %s reads changed", source, self.daemon)
        if applied:
            merged = config.Config(raw={s: dict(v) for s, v in self.cfg.raw.items()}, source=new.source)
            for section, key in applied:
                merged.raw[section][key] = new.get(section, key)
            if {(self.section, "log"), (self.section, "log_level")} & set(applied):
                logsetup.setup(self.daemon, merged.get(self.section, "log"),
                               merged.get(self.section, "log_level"))
            self.apply(merged)
            self.cfg = merged
            log.info("reload: %s: applied %s", source, ", ".join(
                f"[{s}] {k} = {new.get(s, k)!r}" for s, k in applied))
        if waiting:
            log.warning("reload: %s: %s changed; read only at start: `systemctl restart %s` "
                        "applies it", source, ", ".join(f"[{s}] {k}" for s, k in waiting),
                        self.daemon)
        return applied
