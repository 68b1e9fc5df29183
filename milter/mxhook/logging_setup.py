"""Logging for the daemons: syslog (facility mail, like other milters) or stderr."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LEVELS = ("debug", "info", "warning", "error")


def setup(name: str, destination: str = "syslog", level: str = "info") -> logging.Logger:
    """Configure the root logger once for a daemon called `name`.

    `destination` is `syslog` (falls back to stderr when /dev/log is absent, e.g. in
    containers and tests) or `stderr`.
    """
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
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if level in LEVELS else "INFO")
    return logging.getLogger(name)
