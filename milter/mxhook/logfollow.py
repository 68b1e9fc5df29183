"""`mxhook-logfollow`: follow Postfix's log and spool delivery events (the shell around
postfixlog.py).

    mxhook-logfollow [--config PATH] [--once]

Sources (`[logfollow] source`):

* `file` — a log file (`path`, e.g. /var/log/mail.log or Postfix's own `maillog_file`).
  Rotation (the path names a new inode: the old file is read to its end first, then the new
  one from its start) and truncation (copytruncate: size below our offset -> start again at 0)
  are followed by polling every `poll_interval` seconds. Only complete lines (ending in a
  newline) are consumed; a partial last line waits until it is complete.
* `journald` — `journalctl --output=json --follow` (with `--after-cursor` when resuming),
  filtered by `journal_match` (default: the mail facility).

Durability. Lines are handled in chunks of at most `batch_lines`: the chunk's events are
written to the spool as one file (`spool.write_many`: tmp -> fsync -> rename into new/ -> fsync
new/, in `write_durable`), and only then is the position after the chunk saved to
`state_file` (tmp -> fsync -> rename -> fsync dir). A crash (kill -9, power loss) between the
two re-reads the chunk on restart and writes the same events again *with the same ids* — ids
are derived from the line's position (file: inode and offset; journald: cursor) and text — so
the spooler's INSERT OR IGNORE makes the repeat harmless. Nothing is lost and nothing is
delivered twice.

Position state (JSON):
    {"version": 1, "source": "file", "path": ..., "dev": D, "inode": I, "offset": N}
    {"version": 1, "source": "journald", "cursor": "s=...;i=..."}

Lines that are not Postfix lines, and Postfix lines whose record shape we know but cannot
parse, are counted, never fatal; a summary is logged every `stats_interval` seconds and at exit.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from . import config, events, logging_setup, postfixlog, spool

log = logging.getLogger("mxhook.logfollow")

LOGFOLLOW_DEFAULTS = config.DEFAULTS["logfollow"]

SOURCES = ("file", "journald")
START_AT = ("end", "beginning")
STATE_VERSION = 1


@dataclass
class Settings:
    source: str
    path: str
    state_file: str
    spool_dir: str
    start_at: str = "end"
    poll_interval: float = 0.5
    batch_lines: int = 1000
    journalctl: str = "journalctl"
    journal_match: str = "SYSLOG_FACILITY=2"
    max_tracked_messages: int = 100_000
    ignore_null_sender: bool = True
    stats_interval: float = 300.0

    @classmethod
    def from_config(cls, cfg: config.Config) -> "Settings":
        s = "logfollow"

        def get(key: str) -> str:
            return cfg.get(s, key)

        def typed(key: str, convert):
            value = get(key)
            try:
                return convert(value)
            except ValueError as exc:
                raise config.ConfigError(f"{cfg.source or 'built-in defaults'}: [{s}] {key} = {value!r}: {exc}") from None

        def choice(key, choices):
            def check(v):
                if v not in choices:
                    raise ValueError(f"must be one of {', '.join(choices)}")
                return v
            return typed(key, check)

        def positive(convert):
            def check(v):
                x = convert(v)
                if x <= 0:
                    raise ValueError("must be positive")
                return x
            return check

        return cls(
            source=choice("source", SOURCES),
            path=get("path"),
            state_file=get("state_file"),
            spool_dir=cfg.spool_dir,
            start_at=choice("start_at", START_AT),
            poll_interval=typed("poll_interval", positive(float)),
            batch_lines=typed("batch_lines", positive(int)),
            journalctl=get("journalctl"),
            journal_match=get("journal_match"),
            max_tracked_messages=typed("max_tracked_messages", positive(int)),
            ignore_null_sender=typed("ignore_null_sender", config.parse_bool),
            stats_interval=typed("stats_interval", positive(float)),
        )


# ---------------------------------------------------------------------------------------------
# Position state

def load_state(path: str) -> dict | None:
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


def save_state(path: str, state: dict) -> None:
    """Atomically and durably replace the position file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    data = json.dumps({"version": STATE_VERSION, **state}, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------------------------
# Spooling a chunk's events

def write_durable(spool_dir: str, records: list[spool.Record]) -> None:
    """Events of a chunk, durably, before the caller may save its position (OSError: the
    position is not saved and the lines are read again; ids are deterministic)."""
    spool.write_many(spool_dir, records)


# ---------------------------------------------------------------------------------------------
# Sources: each yields chunks of (key, line) plus the state to save after the chunk

@dataclass
class Chunk:
    items: list  # [(key, line text, journald fields (at_us, host, tag, pid) or None)]
    state: dict  # position after the last item
    eof: bool  # nothing more to read right now


class FileSource:
    """A log file followed across rotation and truncation (see module doc)."""

    READ_SIZE = 1 << 20

    def __init__(self, path: str, state: dict | None, start_at: str = "end"):
        self.path = path
        self.fh = None
        self.dev = self.ino = None
        self.offset = 0  # of the first byte not yet consumed (start of the partial line)
        self.buf = b""  # bytes read after offset, not yet a complete line
        self.rotations = 0
        self.truncations = 0
        self._open_initial(state, start_at)

    # -- opening ---------------------------------------------------------------------------
    def _open(self, path: str, offset: int) -> bool:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if st.st_size < offset:
            log.warning("%s is shorter (%d) than the saved position (%d): truncated, reading from 0",
                        path, st.st_size, offset)
            offset = 0
            self.truncations += 1
        fh.seek(offset)
        if self.fh is not None:
            self.fh.close()
        self.fh, self.dev, self.ino, self.offset, self.buf = fh, st.st_dev, st.st_ino, offset, b""
        return True

    def _find_rotated(self, ino: int) -> str | None:
        """The file that now has the inode we were reading (mail.log.1, mail.log-20261122)."""
        directory = os.path.dirname(os.path.abspath(self.path)) or "."
        base = os.path.basename(self.path)
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        for name in sorted(names):
            if not name.startswith(base) or name == base:
                continue
            candidate = os.path.join(directory, name)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if st.st_ino == ino:
                return candidate
        return None

    def _open_initial(self, state: dict | None, start_at: str) -> None:
        if state and state.get("source") == "file" and state.get("path") == self.path:
            ino, offset = state.get("inode"), int(state.get("offset", 0))
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino == ino:
                self._open(self.path, offset)
                return
            # Rotated while we were down: finish the old file first if it is still there.
            old = self._find_rotated(ino) if ino is not None else None
            if old is not None:
                log.info("resuming in rotated file %s at offset %d", old, offset)
                self._open(old, offset)
                self.rotations += 1
                return
            log.warning("saved position is in a file that is gone (inode %s): reading %s from its start",
                        ino, self.path)
            self._open(self.path, 0)
            return
        if self._open(self.path, 0) and start_at == "end":
            self.fh.seek(0, os.SEEK_END)
            self.offset = self.fh.tell()
            log.info("no saved position: starting at the end of %s (offset %d)", self.path, self.offset)

    # -- reading ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"source": "file", "path": self.path, "dev": self.dev, "inode": self.ino,
                "offset": self.offset}

    def _check_switch(self) -> str | None:
        """At EOF: was our file truncated, or does the path name a new file (rotation)?
        Returns 'truncated' / 'drained' (the old file had more data: read it first) /
        'partial' (the old file ends in an unterminated line: take it) / 'rotated' (now reading
        the new file) / None (nothing changed)."""
        if self.fh is None:
            return "rotated" if self._open(self.path, 0) else None
        st_fd = os.fstat(self.fh.fileno())
        if st_fd.st_size < self.offset + len(self.buf):
            log.info("%s was truncated (size %d < position %d): reading from its start",
                     self.path, st_fd.st_size, self.offset + len(self.buf))
            self.truncations += 1
            self.fh.seek(0)
            self.offset, self.buf = 0, b""
            return "truncated"
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # between rename and create: keep reading the old file
        if st.st_ino == self.ino:
            return None
        # Rotated. The writer may have appended to the old file after our last read and before
        # it moved: drain it to its end before switching.
        data = self.fh.read()
        if data:
            self.buf += data
            return "drained"
        if self.buf:
            return "partial"
        log.info("%s was rotated: finished the old file at offset %d, following the new one",
                 self.path, self.offset)
        self.rotations += 1
        return "rotated" if self._open(self.path, 0) else None

    def read_chunk(self, max_lines: int) -> Chunk:
        items: list = []
        switches = 0
        while True:
            self._take_lines(items, max_lines)
            if len(items) >= max_lines:
                return Chunk(items, self.state(), eof=False)
            data = self.fh.read(self.READ_SIZE) if self.fh is not None else b""
            if data:
                self.buf += data
                continue
            if items:  # hand these over (and save the position) before any switch
                return Chunk(items, self.state(), eof=False)
            if switches >= 3:
                return Chunk(items, self.state(), eof=True)
            switches += 1
            what = self._check_switch()
            if what == "partial":
                # the old file's last line has no newline and never will: take it as a line
                items.append((f"f:{self.ino}:{self.offset}", self.buf.decode("utf-8", "surrogateescape"), None))
                self.offset += len(self.buf)
                self.buf = b""
                return Chunk(items, self.state(), eof=False)
            if what is None:
                return Chunk(items, self.state(), eof=True)

    def _take_lines(self, items: list, max_lines: int) -> None:
        buf = self.buf
        if len(items) >= max_lines or b"\n" not in buf:
            return
        start = 0
        prefix = f"f:{self.ino}:"
        offset = self.offset
        while len(items) < max_lines:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            items.append((prefix + str(offset + start), buf[start:nl].decode("utf-8", "surrogateescape"), None))
            start = nl + 1
        self.offset = offset + start
        self.buf = buf[start:]

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class JournalSource:
    """`journalctl --output=json` as a subprocess; the position is the journal cursor."""

    def __init__(self, journalctl: str, match: str, state: dict | None, start_at: str,
                 follow: bool = True):
        self.cursor = state.get("cursor") if state and state.get("source") == "journald" else None
        self.follow = follow
        cmd = [journalctl, "--output=json", "--no-pager", "--quiet"]
        if follow:
            cmd.append("--follow")
        if self.cursor:
            cmd += ["--after-cursor", self.cursor, "--no-tail"]
        elif start_at == "end":
            cmd += ["--lines=0"]
        else:
            cmd += ["--no-tail"]
        cmd += match.split()
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     bufsize=0)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.exited = False
        self.rotations = self.truncations = 0

    def state(self) -> dict:
        return {"source": "journald", "cursor": self.cursor}

    def read_chunk(self, max_lines: int) -> Chunk:
        items: list = []
        while len(items) < max_lines:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                raw, self.buf = self.buf[:nl], self.buf[nl + 1:]
                item = self._entry(raw)
                if item is not None:
                    items.append(item)
                continue
            if items:
                return Chunk(items, self.state(), eof=False)
            # Nothing buffered: wait briefly for journalctl (longer when not following, where
            # only its exit means the end).
            ready, _, _ = select.select([self.fd], [], [], 0.05 if self.follow else 5.0)
            if not ready:
                if self.follow:
                    return Chunk(items, self.state(), eof=True)
                continue
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                continue
            if not data:  # journalctl exited
                self.exited = True
                self.proc.wait()
                return Chunk(items, self.state(), eof=True)
            self.buf += data
        return Chunk(items, self.state(), eof=False)

    def _entry(self, raw: bytes):
        try:
            entry = json.loads(raw)
        except ValueError:
            return ("j:bad", raw.decode("utf-8", "replace"), None)
        cursor = entry.get("__CURSOR")
        if cursor:
            self.cursor = cursor
        msg = entry.get("MESSAGE")
        if isinstance(msg, list):  # non-UTF-8 messages come as byte arrays
            try:
                msg = bytes(msg).decode("utf-8", "surrogateescape")
            except (TypeError, ValueError):
                msg = None
        if not isinstance(msg, str):
            return (f"j:{cursor}", "", None)
        tag = entry.get("SYSLOG_IDENTIFIER") or ""
        pid = entry.get("SYSLOG_PID") or entry.get("_PID")
        try:
            at_us = int(entry.get("__REALTIME_TIMESTAMP"))
        except (TypeError, ValueError):
            at_us = None
        host = entry.get("_HOSTNAME") or ""
        return (f"j:{cursor}", msg, (at_us, host, tag, pid))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_item(line: str, hint) -> postfixlog.Parsed | None:
    if hint is None:
        return postfixlog.parse_line(line)
    at_us, host, tag, pid = hint
    if "/" not in tag:
        return None
    try:
        pid_i = int(pid) if pid is not None else None
    except (TypeError, ValueError):
        pid_i = None
    at = events.iso_from_us(at_us) if at_us is not None else None
    try:
        return postfixlog.parse_message(line, at=at, at_us=at_us, host=host, program=tag, pid=pid_i)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------
# The follower

class Follower:
    def __init__(self, settings: Settings, *, follow: bool = True):
        self.s = settings
        self.follow = follow
        spool.ensure_dirs(settings.spool_dir)
        state_dir = os.path.dirname(os.path.abspath(settings.state_file))
        os.makedirs(state_dir, exist_ok=True)
        state = load_state(settings.state_file)
        if settings.source == "file":
            self.source = FileSource(settings.path, state, settings.start_at)
        else:
            self.source = JournalSource(settings.journalctl, settings.journal_match, state,
                                        settings.start_at, follow=follow)
        self.correlator = postfixlog.Correlator(settings.max_tracked_messages,
                                                ignore_null_sender=settings.ignore_null_sender)
        self.stopping = False
        self.stats = {"lines": 0, "postfix": 0, "not_postfix": 0, "malformed": 0, "events": 0}
        self._last_stats = time.monotonic()
        self._last_saved: dict | None = None
        self._malformed_logged = 0

    def stop(self, *_args) -> None:
        self.stopping = True

    def handle_chunk(self, chunk: Chunk) -> int:
        """Parse, correlate, spool durably, then save the position. Returns events written."""
        records: list[spool.Record] = []
        stats = self.stats
        feed = self.correlator.feed
        for key, line, hint in chunk.items:
            stats["lines"] += 1
            p = parse_item(line, hint)
            if p is None:
                stats["not_postfix"] += 1
                continue
            stats["postfix"] += 1
            if p.kind == "malformed":
                stats["malformed"] += 1
                if self._malformed_logged < 20:
                    self._malformed_logged += 1
                    log.warning("could not parse Postfix line (format change?): %.300s", line)
                continue
            for ev in feed(p, key):
                records.append(events.to_record(ev))
        if records:
            write_durable(self.s.spool_dir, records)
        written = len(records)
        stats["events"] += written
        if chunk.state != self._last_saved:
            save_state(self.s.state_file, chunk.state)
            self._last_saved = dict(chunk.state)
        return written

    def log_stats(self, final: bool = False) -> None:
        s = self.stats
        log.info(
            "%slines %d (postfix %d, not postfix %d, unparsable postfix %d), events %d, "
            "tracked messages %d, rotations %d, truncations %d",
            "at exit: " if final else "", s["lines"], s["postfix"], s["not_postfix"],
            s["malformed"], s["events"], len(self.correlator),
            getattr(self.source, "rotations", 0), getattr(self.source, "truncations", 0),
        )
        self._last_stats = time.monotonic()

    def run(self) -> int:
        try:
            while not self.stopping:
                chunk = self.source.read_chunk(self.s.batch_lines)
                if chunk.items or chunk.state != self._last_saved:
                    self.handle_chunk(chunk)
                if time.monotonic() - self._last_stats >= self.s.stats_interval:
                    self.log_stats()
                if chunk.eof:
                    if not self.follow:
                        break
                    if getattr(self.source, "exited", False):
                        log.error("journalctl exited (status %s): %s", self.source.proc.poll(),
                                  " ".join(self.source.cmd))
                        return 1
                    self._sleep(self.s.poll_interval)
        finally:
            self.source.close()
        self.log_stats(final=True)
        return 0

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mxhook-logfollow",
        description="Follow Postfix's log and spool delivery events for mxhook.",
    )
    parser.add_argument("--config", help=f"config file (default {config.DEFAULT_PATH} or $MXHOOK_CONFIG)")
    parser.add_argument("--once", action="store_true",
                        help="read what is there now, spool its events, save the position and exit")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        settings = Settings.from_config(cfg)
    except config.ConfigError as exc:
        print(f"mxhook-logfollow: {exc}", file=sys.stderr)
        return 2
    logging_setup.setup("mxhook-logfollow", cfg.get("logfollow", "log"), cfg.get("logfollow", "log_level"))
    if settings.source == "journald" and shutil.which(settings.journalctl) is None:
        log.error("journalctl not found (%s)", settings.journalctl)
        return 2
    try:
        follower = Follower(settings, follow=not args.once)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, follower.stop)
    signal.signal(signal.SIGINT, follower.stop)
    log.info("following %s (%s), spooling events to %s",
             settings.path if settings.source == "file" else "the journal", settings.source,
             settings.spool_dir)
    try:
        return follower.run()
    except OSError as exc:
        # e.g. the spool is full: the position was not saved, so nothing is lost; exit and let
        # the service manager restart us.
        log.error("stopping: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
