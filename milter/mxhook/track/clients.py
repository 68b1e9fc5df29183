"""What a request says about its reader: the client its user agent names (python3-user-agents)
and the place of its address (a MaxMind-format database through python3-geoip2), and the files
mxhook-track watches (keys, GeoIP database, bot rules), read again when they change.

Neither lookup ever fails a request: an unknown user agent, an address the database lacks, or
no database at all give empty fields.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Callable, Generic, TypeVar

import user_agents

log = logging.getLogger("mxhook-track")

T = TypeVar("T")


class Watched(Generic[T]):
    """The value `load(path)` makes of a file, made again when the file changes (its inode,
    size or modification time), looked at no more than every `interval` seconds. A file that
    cannot be loaded leaves the last good value (`empty` before the first), logged once per
    change."""

    def __init__(self, path: str, load: Callable[[str], T], empty: T, *, interval: float = 1.0,
                 what: str = "file", clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._load = load
        self.value = empty
        self._interval = interval
        self._what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._checked = float("-inf")
        self.get()

    def get(self) -> T:
        if not self.path or self._clock() - self._checked < self._interval:
            return self.value
        with self._lock:
            now = self._clock()
            if now - self._checked < self._interval:
                return self.value
            self._checked = now
            try:
                st = os.stat(self.path)
                seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError as exc:
                seen = ("missing", str(exc))
            if seen == self._seen:
                return self.value
            self._seen = seen
            try:
                self.value = self._load(self.path)
                log.info("%s %s loaded", self._what, self.path)
            except (OSError, ValueError) as exc:
                log.error("%s %s: %s (keeping what was loaded before)", self._what, self.path, exc)
            return self.value


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


@functools.lru_cache(maxsize=4096)
def client_of(user_agent: str) -> tuple[str | None, str | None, str | None]:
    """(client, client_device, client_os) of a user agent: ('Chrome', 'desktop', 'Windows');
    None for what it does not say. Cached: the parser tries hundreds of regexes."""
    if not user_agent:
        return None, None, None
    parsed = user_agents.parse(user_agent)
    device = ("bot" if parsed.is_bot else "tablet" if parsed.is_tablet
              else "mobile" if parsed.is_mobile else "desktop" if parsed.is_pc else None)
    client, os_family = parsed.browser.family, parsed.os.family
    return (None if client == "Other" else client, device,
            None if os_family == "Other" else os_family)


class GeoIP:
    """A MaxMind-format database opened read-only; `place(ip)` -> (continent code, country ISO
    code, city name in English), None each where unknown."""

    def __init__(self, path: str):
        import geoip2.database

        self._reader = geoip2.database.Reader(path)
        self._city = "City" in self._reader.metadata().database_type

    def place(self, ip: str) -> tuple[str | None, str | None, str | None]:
        try:
            found = self._reader.city(ip) if self._city else self._reader.country(ip)
        except Exception:  # not found, not an address, a damaged file: no place, never an error
            return None, None, None
        city = found.city.name if self._city else None
        return found.continent.code, found.country.iso_code, city


def open_geoip(path: str) -> GeoIP | None:
    """The database at `path`; ValueError (logged by Watched) when it cannot be opened."""
    try:
        return GeoIP(path)
    except ImportError as exc:
        raise ValueError(f"python3-geoip2 is not installed ({exc})") from None
    except Exception as exc:  # maxminddb's InvalidDatabaseError, or anything a bad file causes
        raise ValueError(f"not a MaxMind database: {exc}") from None
