"""Logging for the daemons: syslog (facility mail, like other milters), the journal, or stderr.

Lines about one message start with its Postfix queue id, `4F9D52E3A1: ...`, as Postfix's own
lines do (`NOQUEUE: ...` before Postfix gave it one), so that `grep 4F9D52E3A1` follows a
message through Postfix, the milter, the log follower and the spooler (`for_message`). Logging
to the journal (`log = journal`, python3-systemd), such a line also has the field
`QUEUE_ID=4F9D52E3A1`: `journalctl QUEUE_ID=4F9D52E3A1`.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
NOQUEUE = "NOQUEUE"  # Postfix's word for a message without a queue id (yet)
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_FACILITY_MAIL = 2  # the journal's SYSLOG_FACILITY of mail (as syslog files it)


class MessageLog(logging.LoggerAdapter):
    """A logger's lines about one message: `QID: ` first, and QUEUE_ID for the journal."""

    def __init__(self, logger: logging.Logger, queue_id: str | None):
        super().__init__(logger, {"QUEUE_ID": queue_id} if queue_id else {})
        self.prefix = (queue_id or NOQUEUE).replace("%", "%%") + ": "

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return self.prefix + str(msg), kwargs


def for_message(logger: logging.Logger, queue_id: str | None) -> MessageLog:
    """`logger` for lines about the message with this Postfix queue id (None or "": NOQUEUE)."""
    return MessageLog(logger, queue_id)


def label(text: str, queue_ids: list[str], limit: int = 10) -> str:
    """How log lines name something about messages (a delivery, an event batch): `QID: text`
    for one message, `text queue_ids=A,B,...` for several (the first `limit`; `...`: more)."""
    if len(queue_ids) == 1:
        return f"{queue_ids[0]}: {text}"
    if not queue_ids:
        return text
    more = ",..." if len(queue_ids) > limit else ""
    return f"{text} queue_ids={','.join(queue_ids[:limit])}{more}"


def _journal_handler(name: str) -> logging.Handler | None:
    """python3-systemd's JournalHandler (every record's upper-case extra, such as QUEUE_ID,
    becomes a field), or None without the module or a journal to write to."""
    if not os.path.exists(JOURNAL_SOCKET):
        return None
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler = JournalHandler(SYSLOG_IDENTIFIER=name, SYSLOG_FACILITY=SYSLOG_FACILITY_MAIL)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


class _Formatter(logging.Formatter):
    """The stderr format, with the time stamp's text made once per second: the milter writes a
    line per message, and strftime was a fifth of that line's cost."""

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:  # a benign race between threads: both compute the same text
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def setup(name: str, destination: str = "syslog", level: str = "info") -> logging.Logger:
    """Configure the root logger once for a daemon called `name`.

    `destination` is `syslog` (falls back to stderr when /dev/log is absent, e.g. in
    containers and tests), `journal` (falls back to syslog without python3-systemd or a
    running journald, saying so) or `stderr`.
    """
    # No format here uses the caller's file/line, thread or process name: skip finding them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    journal = _journal_handler(name) if destination == "journal" else None
    if destination == "journal" and journal is None:
        destination = "syslog"
        fallback = ("log = journal, but python3-systemd is not installed or journald does not "
                    "run: logging to syslog")
    else:
        fallback = ""
    if journal is not None:
        handler: logging.Handler = journal
    elif destination == "syslog" and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if level in LEVELS else "INFO")
    logger = logging.getLogger(name)
    if fallback:
        logger.warning(fallback)
    return logger
