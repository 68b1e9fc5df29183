"""`mxhook-logfollow`: follow Postfix's log and spool delivery events (the I/O around the pure
parser and correlator of postfix/maillog.py).

    mxhook-logfollow [--config PATH] [--once]

Sources (`[logfollow] source`; `auto`, the default, picks one with `choose_source`: Postfix's
`maillog_file`, else `path` if it exists, else the journal if journald runs, else `path`):

* `file` — a log file (`path`, e.g. /var/log/mail.log or Postfix's own `maillog_file`),
  polled every `poll_interval` seconds. Only complete lines (ending in a newline) are
  consumed; a partial last line waits until it is complete. What was read is identified by
  its inode and by its first FP_BYTES bytes (a fingerprint saved with the position).
  Rotation while following: the path names a new inode; the old file is read to its end,
  then the new one from its start. Rotation while stopped (or a copytruncate noticed while
  following): the rotated file holding our position is found beside `path` (`<name>.1`,
  `<name>-<date>`, `<name>.<date>-<time>`, maybe `.gz` / `.bz2` / `.xz`) by inode (renamed)
  or by fingerprint (compressed: a new inode; or a copytruncate copy), finished from the saved
  offset, then the files rotated after it (oldest first, by modification time; looked for
  again after each file; each content once), then `path` from its start. A position in an
  empty file has no fingerprint: matched by inode alone. copytruncate is noticed when the
  file is shorter than our position or its first bytes changed; lines written between the
  copy and the truncate are in neither file.
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
    {"version": 1, "source": "file", "path": ..., "dev": D, "inode": I, "offset": N,
     "head_len": L, "head": sha256 of the first L (<= FP_BYTES) bytes}
    {"version": 1, "source": "journald", "cursor": "s=...;i=..."}

Lines that are not Postfix lines, and Postfix lines whose record shape we know but cannot
parse, are counted, never fatal; a summary is logged every `stats_interval` seconds and at exit.
With `log_level = debug`, each event spooled is logged too, `QID: succeeded to=<...> spooled as
event ID` (lines about a message start with its queue id: daemons/logsetup.py).
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

from mxhook import config
from mxhook.model import events
from mxhook.daemons import logsetup, systemd
from mxhook.postfix import maillog
from mxhook.postfix.logsource import (STATE_VERSION, choose_source, describe, load_state,
                                      postfix_maillog_file, postfix_parameter)
from mxhook import heartbeat, spool

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class LogfollowSettings(config.FromConfig):
    """The [logfollow] keys (and the spool directory), typed and checked by the config schema."""

    SECTION = "logfollow"
    source: str
    path: str
    state_file: str
    spool_dir: str = config.from_section("paths")
    start_at: str
    poll_interval: float
    batch_lines: int
    journalctl: str
    journal_match: str
    max_tracked_messages: int
    ignore_null_sender: bool
    stats_interval: float
    postfix_config_dir: str = config.from_section("milter")


# ---------------------------------------------------------------------------------------------
# Position state

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


FP_BYTES = 1024  # the first bytes of a log file (its first lines, with their times) identify it
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _fingerprint(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def _compressed(path: str) -> bool:
    return os.path.splitext(path)[1] in COMPRESSED


def _open_log(path: str):
    """A log file for reading bytes, decompressing a rotated `.gz` / `.bz2` / `.xz`."""
    opener = COMPRESSED.get(os.path.splitext(path)[1])
    return opener(path, "rb") if opener else open(path, "rb")


class FileSource:
    """A log file followed across rotation and truncation (see module doc)."""

    READ_SIZE = 1 << 20

    def __init__(self, path: str, state: dict | None, start_at: str = "end"):
        self.path = path
        self.fh = None
        self.dev = self.ino = None  # identity of what is read (a compressed copy: its original's)
        self.offset = 0  # of the first byte not yet consumed (start of the partial line)
        self.buf = b""  # bytes read after offset, not yet a complete line
        self.head = b""  # the first FP_BYTES of what is read: found again after a copy or gzip
        self.rotated: str | None = None  # the rotated file being finished (None: `path` itself)
        self.queue: list[str] = []  # rotated later than that one (at the last look), then `path`
        self.incomplete = False  # the rotated file being read is compressed and ends early
        self.rotations = 0
        self.truncations = 0
        self._open_initial(state, start_at)

    # -- opening ---------------------------------------------------------------------------
    def _open(self, path: str, offset: int, *, rotated: bool = False,
              identity: tuple[int, int] | None = None) -> bool:
        """Read `path` from `offset`: the followed file, or (`rotated`) a rotated one, maybe
        compressed, which is only read to its end. `identity` (dev, inode) names a file whose
        lines were read before under that identity (event ids are made from it)."""
        try:
            fh = _open_log(path) if rotated else open(path, "rb")
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fh.fileno())
            if not rotated and st.st_size < offset:
                log.warning("%s is shorter (%d) than the saved position (%d): truncated, reading from 0",
                            path, st.st_size, offset)
                offset = 0
                self.truncations += 1
            head = fh.read(FP_BYTES)
            fh.seek(offset)
        except DECOMPRESS_ERRORS as exc:
            fh.close()
            if not rotated:
                raise
            log.error("cannot read rotated file %s (%s): skipping it", path, exc)
            return False
        if self.fh is not None:
            self.fh.close()
        self.fh, self.offset, self.buf, self.head = fh, offset, b"", head
        self.dev, self.ino = identity or (st.st_dev, st.st_ino)
        self.rotated = path if rotated else None
        self.incomplete = False
        return True

    def _candidates(self) -> list[tuple[str, os.stat_result]]:
        """Rotated copies of `path` in its directory, oldest first (by modification time):
        `<name>.1`, `<name>-20261203`, `<name>.20261203-093000` (postfix logrotate), each maybe
        `.gz`, `.bz2` or `.xz`. A compressed file whose input is still there is left out: the
        compressor is writing it (gzip, bzip2 and xz remove their input only when done)."""
        directory = os.path.dirname(os.path.abspath(self.path)) or "."
        pattern = re.compile(re.escape(os.path.basename(self.path)) + r"[.-]\d[\w.-]*")
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        found = []
        for name in names:
            if not pattern.fullmatch(name):
                continue
            candidate = os.path.join(directory, name)
            try:
                found.append((candidate, os.stat(candidate)))
            except OSError:
                continue
        names = {path for path, _st in found}
        found = [(path, st) for path, st in found
                 if not (_compressed(path) and os.path.splitext(path)[0] in names)]
        return sorted(found, key=lambda c: (c[1].st_mtime_ns, c[0]))

    def _head_of(self, path: str, length: int) -> bytes:
        try:
            with _open_log(path) as fh:
                return fh.read(length)
        except DECOMPRESS_ERRORS:
            return b""

    def _find_rotated(self, dev: int | None, ino: int | None, head_len: int,
                      digest: str | None) -> str | None:
        """The rotated file holding what we were reading: by
        inode (renamed; its first `head_len` bytes must match too, as inodes are reused; a file
        that was empty has nothing to match), else by its first `head_len` bytes (compressed,
        or copied by copytruncate; never for an empty head, which every file starts with)."""
        candidates = self._candidates()

        def head_matches(path: str) -> bool:
            return bool(digest) and head_len > 0 and _fingerprint(self._head_of(path, head_len)) == digest

        for path, st in candidates:
            if (st.st_ino, st.st_dev) == (ino, dev) and (not digest or head_len == 0 or head_matches(path)):
                return path
        # the newest copy first, an uncompressed one before a compressed one (which may be
        # still being written: gzip removes its input only when done)
        for compressed in (False, True):
            for path, _st in reversed(candidates):
                if _compressed(path) == compressed and head_matches(path):
                    return path
        return None

    def _finish_rotated(self, dev, ino, head_len: int, digest: str | None, offset: int) -> bool:
        """Go on in the rotated file that holds what we read (from `offset`), then every file
        rotated after it, then `path` from its start. False when there is no such file."""
        path = self._find_rotated(dev, ino, head_len, digest)
        if path is None or not self._open(path, offset, rotated=True, identity=(dev, ino)):
            return False
        self.queue = self._rotated_after(os.fstat(self.fh.fileno()), self.head)
        self.rotations += 1
        return True

    def _rotated_after(self, st: os.stat_result, head: bytes) -> list[str]:
        """The rotated files newer than the one `st` (read; `head` its first bytes), oldest first,
        each content once: a file that starts as that one or as an earlier one of the list is
        a copy of it (compressed, or copied by copytruncate) and left out."""
        candidates = self._candidates()
        index = next((i for i, (_p, c) in enumerate(candidates)
                      if (c.st_dev, c.st_ino) == (st.st_dev, st.st_ino)), None)
        if index is None:  # it was compressed or removed since: go by its modification time
            later = [c for c in candidates if c[1].st_mtime_ns >= st.st_mtime_ns]
        else:
            later = candidates[index + 1:]
        seen = {_fingerprint(head)} if head else set()
        paths = []
        for path, _c in later:
            first = self._head_of(path, FP_BYTES)
            if first:
                digest = _fingerprint(first)
                if digest in seen:
                    continue
                seen.add(digest)
            paths.append(path)
        return paths

    def _open_initial(self, state: dict | None, start_at: str) -> None:
        if state and state.get("source") == "file" and state.get("path") == self.path:
            dev, ino, offset = state.get("dev"), state.get("inode"), int(state.get("offset", 0))
            head_len, digest = int(state.get("head_len") or 0), state.get("head")
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            same = (st is not None and st.st_ino == ino
                    and (not digest or _fingerprint(self._head_of(self.path, head_len)) == digest))
            if same and st.st_size >= offset:
                self._open(self.path, offset)
                return
            # Rotated (renamed, maybe compressed) or copied and truncated while we were down:
            # finish the old content first if a rotated file still holds it.
            if ino is not None and self._finish_rotated(dev, ino, head_len, digest, offset):
                log.info("resuming in rotated file %s at offset %d (then %d later rotated file(s), "
                         "then %s)", self.rotated, offset, len(self.queue), self.path)
                return
            if st is not None and st.st_ino == ino:
                log.warning("%s was truncated while we were down and no rotated copy of it holds "
                            "our position: reading it from its start (lines of the old content "
                            "after offset %d are lost)", self.path, offset)
                self.truncations += 1
            else:
                log.warning("saved position is in a file that is gone (inode %s): reading %s "
                            "from its start", ino, self.path)
            self._open(self.path, 0)
            return
        if self._open(self.path, 0) and start_at == "end":
            self.fh.seek(0, os.SEEK_END)
            self.offset = self.fh.tell()
            log.info("no saved position: starting at the end of %s (offset %d)", self.path, self.offset)

    # -- reading ---------------------------------------------------------------------------
    def state(self) -> dict:
        if self.fh is not None and self.rotated is None and len(self.head) < FP_BYTES:
            more = os.pread(self.fh.fileno(), FP_BYTES, 0)  # the file has grown since
            if more.startswith(self.head):
                self.head = more
        return {"source": "file", "path": self.path, "dev": self.dev, "inode": self.ino,
                "offset": self.offset, "head_len": len(self.head), "head": _fingerprint(self.head)}

    def _next_after_rotated(self) -> str | None:
        """At the end of a rotated file: on to the next rotated one, or to `path`."""
        log.info("finished rotated file %s at offset %d", self.rotated, self.offset)
        # `path` may have been rotated again meanwhile: look again
        self.queue = self._rotated_after(os.fstat(self.fh.fileno()), self.head)
        while self.queue:
            path = self.queue.pop(0)
            if self._open(path, 0, rotated=True):
                log.info("reading %s, rotated later", path)
                return "rotated"
        if self.fh is not None:
            self.fh.close()
            self.fh, self.rotated = None, None
        return "rotated" if self._open(self.path, 0) else None

    def _rewritten(self) -> bool:
        """(following `path`) Truncated by copytruncate: shorter than our position, or written
        again past it since our last look (its first bytes are not the ones we read)."""
        fd = self.fh.fileno()
        return (os.fstat(fd).st_size < self.offset + len(self.buf)
                or os.pread(fd, len(self.head), 0) != self.head)

    def _truncated(self) -> str:
        # the lines after our position were copied before the truncate: finish the copy
        if self._finish_rotated(self.dev, self.ino, len(self.head), _fingerprint(self.head), self.offset):
            log.info("%s was truncated (copytruncate): finishing its copy %s from offset %d",
                     self.path, self.rotated, self.offset)
            return "truncated"
        log.info("%s was truncated (position %d) and no rotated copy of it holds the rest: "
                 "reading from its start", self.path, self.offset + len(self.buf))
        self.truncations += 1
        self.fh.seek(0)
        self.offset, self.buf = 0, b""
        self.head = os.pread(self.fh.fileno(), FP_BYTES, 0)
        return "truncated"

    def _check_switch(self) -> str | None:
        """At EOF: was our file truncated, or does the path name a new file (rotation)?
        Returns 'truncated' / 'drained' (the old file had more data: read it first) /
        'partial' (the old file ends in an unterminated line: take it) / 'rotated' (now reading
        the new file) / None (nothing changed)."""
        if self.fh is None:
            return "rotated" if self._open(self.path, 0) else None
        if self.rotated is not None:  # a rotated file does not grow
            if self.buf and self.incomplete:
                log.warning("rotated file %s ends early: dropping its unterminated last line at "
                            "offset %d", self.rotated, self.offset)
                self.buf = b""
            if self.buf:
                return "partial"
            return self._next_after_rotated()
        if self._rewritten():
            return self._truncated()
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

    def _read(self) -> bytes:
        if self.fh is None or self.incomplete:
            return b""
        try:
            if self.rotated is not None:  # read1: what a damaged compressed file holds is kept
                return self.fh.read1(self.READ_SIZE)
            return self.fh.read(self.READ_SIZE)
        except DECOMPRESS_ERRORS as exc:
            if self.rotated is None:
                raise
            log.error("rotated file %s cannot be read past offset %d (%s): going on with the next",
                      self.rotated, self.offset + len(self.buf), exc)
            self.incomplete = True
            return b""

    def read_chunk(self, max_lines: int) -> Chunk:
        items: list = []
        switches = 0
        if self.fh is not None and self.rotated is None and self._rewritten():
            self._truncated()  # before reading the new content from the old position
        while True:
            self._take_lines(items, max_lines)
            if len(items) >= max_lines:
                return Chunk(items, self.state(), eof=False)
            data = self._read()
            if data:
                self.buf += data
                continue
            if items:  # hand these over (and save the position) before any switch
                return Chunk(items, self.state(), eof=False)
            if switches >= 3 + len(self.queue):
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
            if what == "rotated":
                # the new file's position is saved before any of its events: a re-read after a
                # crash finds it by this identity (and gives the same ids) even once it is
                # compressed under another inode
                return Chunk(items, self.state(), eof=False)

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


def parse_item(line: str, hint) -> maillog.Parsed | None:
    if hint is None:
        return maillog.parse_line(line)
    at_us, host, tag, pid = hint
    if "/" not in tag:
        return None
    try:
        pid_i = int(pid) if pid is not None else None
    except (TypeError, ValueError):
        pid_i = None
    at = events.iso_from_us(at_us) if at_us is not None else None
    try:
        return maillog.parse_message(line, at=at, at_us=at_us, host=host, program=tag, pid=pid_i)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------
# The follower

class Follower:
    def __init__(self, settings: LogfollowSettings, *, follow: bool = True):
        self.s = settings
        self.follow = follow
        spool.ensure_dirs(settings.spool_dir)
        state_dir = os.path.dirname(os.path.abspath(settings.state_file))
        os.makedirs(state_dir, exist_ok=True)
        state = load_state(settings.state_file)
        self.chosen = choose_source(settings.source, settings.path, state,
                                    maillog_file=lambda: postfix_maillog_file(settings.postfix_config_dir))
        if self.chosen.source == "file":
            self.source = FileSource(self.chosen.path, state, settings.start_at)
        else:
            self.source = JournalSource(settings.journalctl, settings.journal_match, state,
                                        settings.start_at, follow=follow)
        self.correlator = maillog.Correlator(
            settings.max_tracked_messages, ignore_null_sender=settings.ignore_null_sender,
            myhostname=postfix_parameter("myhostname", settings.postfix_config_dir))
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
        debug = log.isEnabledFor(logging.DEBUG)  # a line per event only when asked for
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
                    logsetup.for_message(log, p.queue_id).warning(
                        "could not parse Postfix line (format change?): %.300s", line)
                continue
            for ev in feed(p, key):
                records.append(spool.event_record(ev))
                if debug:
                    logsetup.for_message(log, ev.queue_id).debug(
                        "%s to=<%s> spooled as event %s", ev.type, ev.recipient or "", ev.id)
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
        alive = heartbeat.Heartbeat(heartbeat.path_for(self.s.state_file, heartbeat.LOGFOLLOW))
        systemd.ready(f"following {describe(self.chosen)}")
        try:
            while not self.stopping:
                alive.beat()  # for `mxhook check`: this loop is progressing
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
            systemd.stopping()
            self.source.close()
            alive.stop()
        self.log_stats(final=True)
        return 0

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


# The [logfollow] keys `systemctl reload` applies: the loop reads them from Follower.s as it
# goes. The others (the source, the position file, the correlator's) need a restart.
RELOADABLE = frozenset(("logfollow", k) for k in ("poll_interval", "batch_lines", "stats_interval"))


def main(argv: list[str] | None = None) -> int:
    with systemd.SignalThread(signal.SIGHUP) as reload:  # before any other thread starts
        return _run(argv, reload)


def _run(argv: list[str] | None, reload: systemd.SignalThread) -> int:
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
        settings = LogfollowSettings.from_config(cfg)
    except config.ConfigError as exc:
        print(f"mxhook-logfollow: {exc}", file=sys.stderr)
        return 2
    logsetup.setup("mxhook-logfollow", cfg.get("logfollow", "log"), cfg.get("logfollow", "log_level"))
    if settings.source == "journald" and shutil.which(settings.journalctl) is None:
        log.error("journalctl not found (%s)", settings.journalctl)
        return 2
    try:
        follower = Follower(settings, follow=not args.once)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, follower.stop)
    signal.signal(signal.SIGINT, follower.stop)

    def apply(merged: config.Config) -> None:
        follower.s = LogfollowSettings.from_config(merged)

    reload.action = systemd.Reload("mxhook-logfollow", "logfollow", cfg, (LogfollowSettings,),
                                   RELOADABLE, apply, path=args.config)
    (log.warning if follower.chosen.missing else log.info)(
        "following %s, spooling events to %s", describe(follower.chosen), settings.spool_dir)
    try:
        return follower.run()
    except OSError as exc:
        # e.g. the spool is full: the position was not saved, so nothing is lost; exit and let
        # the service manager restart us.
        log.error("stopping: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
