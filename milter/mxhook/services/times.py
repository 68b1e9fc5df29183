"""Times and durations as an admin gives them: ISO dates and date-times, or ages and
durations such as 30m, 2h, 7d."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def format_time(dt: datetime) -> str:
    """The time format of spool records and state.db: ISO 8601 UTC with a Z."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, now: datetime | None = None) -> str:
    """'2026-11-22', '2026-11-22T12:00', '...+02:00' (UTC when no offset), or relative '30m',
    '2h', '7d', '1w' (ago) -> '2026-11-22T12:00:00.000000Z'. ValueError otherwise."""
    t = text.strip()
    m = _RELATIVE.match(t.lower())
    if m:
        now = now or datetime.now(timezone.utc)
        return format_time(now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}))
    try:
        dt = datetime.fromisoformat(t[:-1] + "+00:00" if t[-1:] in ("Z", "z") else t)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or date-time (UTC unless an offset is "
            "given), e.g. 2026-11-22 or 2026-11-22T08:00+01:00, or an age like 30m, 2h, 7d"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return format_time(dt)


def parse_duration(text) -> float:
    """'24h', '30m', '90s', '2d', '1w' or plain seconds -> seconds. ValueError otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    t = str(text).strip().lower()
    if t.isdigit():
        return float(t)
    m = _RELATIVE.match(t)
    if not m:
        raise ValueError(f"{text!r} is not a duration: use e.g. 0, 90s, 30m, 24h, 2d")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}).total_seconds()
