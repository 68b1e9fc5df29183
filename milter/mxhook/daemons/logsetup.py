"""Logging for the daemons: syslog (facility mail, like other milters) or stderr."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


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
    containers and tests) or `stderr`.
    """
    # No format here uses the caller's file/line, thread or process name: skip finding them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if destination == "syslog" and os.path.exists("/dev/log"):
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if level in LEVELS else "INFO")
    return logging.getLogger(name)
