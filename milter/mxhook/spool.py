"""The durable handoff between the writers (milter, log follower, CLI) and the spooler.

Mailman's switchboard and Postfix's own queue are the model: a writer answers only once its
record is durably in the spool (for the milter: only then may Postfix say 250), and a file in
`new/` is always complete. The spooler ingests `new/` into state.db and unlinks a file after the
COMMIT that ingested it; the record id is the primary key there, so ingesting the same file
twice after a crash is harmless. What it cannot ingest goes to `bad/` with a `.reason` file
beside it: a file with no good record as it is (`move_bad`); from a file that also holds good
records, each bad record alone, or, where the framing breaks, the rest of the file as one part
(`decode_parts`, `write_bad`: `bad/<name>.<offset>.rec`, written durably before the file is
unlinked).

File format (version 1); a file holds one record or several one after the other:

    MXHOOK-SPOOL 1\\n
    <one line of JSON: the record's metadata, including "id", "kind" and "payload_size">\\n
    <payload_size bytes of payload (the raw message for kind "inbound"; empty otherwise)>

Three ways in, each as durable as its records need:

- `SegmentWriter` (the milter: inbound records and its events). Records are appended to one
  open segment `tmp/<id>.seg`, and an append is durable once a *group* fdatasync covers it
  (one flush covers every append made while the previous flush ran): a message costs a write
  and a share of one flush, not a file, an fsync and a directory fsync of its own. The writer
  holds an exclusive flock on the open segment; a sealer renames it into `new/<id>.rec` (while
  still holding the lock) after `seal_after` seconds. A segment whose lock can be taken belongs
  to a writer that died: `recover_segments` cuts a torn tail (a record that was never
  acknowledged) and moves the rest into `new/`. A failed write or flush cuts the segment back
  to its last durable length before any writer answers (`SegmentWriter._withdraw`): a record
  answered 4xx is never handed over. Should that cut fail, the segment is renamed to
  `tmp/<id>.cut-<N>.seg` (N: its durable length; the directory fsynced), and recovery keeps no
  more than its first N bytes: the refused records stay out after the milter is restarted too.
  Only if the rename fails as well is the segment left to the live writer's lock (logged
  CRITICAL).
- `write_many` (the log follower: a chunk's events): one file, tmp -> fsync -> rename into
  `new/` -> fsync of `new/`, under a fresh name.
- `write` (one record: the CLI's events, durably; the milter's denials with `durable=False`, as
  a lost denial costs only a log line).

Order. File names start with their creation time (`new_id`), and the spooler takes `new/` in
name order, but only below `ingest_bound`: the oldest segment still open in `tmp/`. A record
the milter appended before Postfix went on (a `queued` event) is in a segment created before
anything the log follower wrote about that message later, so the follower's file waits until
that segment is sealed and is ingested after it.

One way out: `Reader` (the spooler). `take` hands out a batch of decoded, checked records from
`new/`, in name order below `ingest_bound`; `finish` unlinks its files once the caller has
committed them (never before: the COMMIT is what makes a record safe to lose here), and
`give_back` returns them to the line; `quarantine` moves a file to `bad/`.

Only the file system is used here (no database), so the milter's hot path needs none.
"""
from __future__ import annotations

import fcntl
import heapq
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from mxhook.model.events import Event, EventError

log = logging.getLogger(__name__)

MAGIC = b"MXHOOK-SPOOL 1\n"
_JSON = json.JSONDecoder()
KINDS = ("inbound", "denied", "event")
SUBDIRS = ("tmp", "new", "bad")
SEGMENT_HOLD = 5.0  # seconds an open segment holds back newer files (a live one is sealed in 0.2)
FUTURE_SLACK = 60.0  # names this far ahead of the clock are not held (not made by new_id now)


class SpoolError(Exception):
    """A spool file that cannot be read as a record; the message says why."""


@dataclass
class Record:
    id: str
    kind: str
    meta: dict
    payload: bytes = b""
    # meta as its model/records.py type, once store/ingest.py check_record read it
    typed: object = field(default=None, compare=False, repr=False)


def new_id() -> str:
    """Sortable unique id: 16 hex digits of nanoseconds since the epoch, then 12 random hex."""
    return f"{time.time_ns():016x}{secrets.token_hex(6)}"


def ensure_dirs(spool_dir: str, mode: int = 0o750) -> None:
    for sub in SUBDIRS:
        os.makedirs(os.path.join(spool_dir, sub), mode=mode, exist_ok=True)


def _fsync_dir_now(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupSync:
    """Group commit for directory fsyncs: threads that rename into one directory at once share
    one fsync.

    A writer's rename is durable once an fsync of the directory that *started after* the rename
    has finished. So a caller needs sync number `started + 1` (the one in progress, if any,
    began too early); whoever finds none running starts it, the others wait for it. Under load
    one fsync covers every rename that happened while the previous one ran.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._running: set[str] = set()
        self._errors: dict[str, tuple[int, OSError]] = {}

    def sync(self, path: str) -> None:
        with self._cond:
            need = self._started.get(path, 0) + 1
            while self._done.get(path, 0) < need:
                if path in self._running:
                    self._cond.wait()
                    continue
                number = self._started[path] = self._started.get(path, 0) + 1
                self._running.add(path)
                self._cond.release()
                error = None
                try:
                    _fsync_dir_now(path)
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running.discard(path)
                    self._done[path] = number
                    if error is not None:
                        self._errors[path] = (number, error)
                    self._cond.notify_all()
            failed = self._errors.get(path)
            if failed is not None and failed[0] >= need:
                raise failed[1]


_group_sync = _GroupSync()


def _fsync_dir(path: str) -> None:
    _group_sync.sync(path)


def encode(record: Record) -> bytes:
    meta = dict(record.meta)
    meta.update(id=record.id, kind=record.kind, payload_size=len(record.payload))
    line = json.dumps(meta, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return MAGIC + line + b"\n" + record.payload


def _frame_at(data: bytes, offset: int) -> tuple[dict, str, int, int]:
    """The framing of the record at `offset`: its metadata (a JSON object), the metadata line
    as written, and where its payload starts and ends. SpoolError when the framing is broken:
    then the record's end, and so anything after it, cannot be located."""
    if not data.startswith(MAGIC, offset):
        raise SpoolError("not an mxhook spool file (bad magic line)" if offset == 0
                         else f"bad magic line at byte {offset}")
    start = offset + len(MAGIC)
    end = data.find(b"\n", start)
    if end < 0:
        raise SpoolError("truncated: no end to the metadata line")
    try:
        text = data[start:end].decode("utf-8")
        try:  # raw_decode on text: no encoding sniffing, no whitespace scan (~1.5 µs a record)
            meta, stop = _JSON.raw_decode(text)
        except ValueError:
            stop = -1
        if stop != len(text):  # odd spacing or an error: json.loads accepts or explains
            meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise SpoolError(f"metadata is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise SpoolError("metadata is not a JSON object")
    if "payload_size" not in meta:
        raise SpoolError("metadata lacks 'payload_size'")
    size = meta["payload_size"]
    if not isinstance(size, int) or size < 0:
        raise SpoolError(f"bad payload_size {size!r}")
    if end + 1 + size > len(data):
        raise SpoolError(f"payload is {len(data) - end - 1} bytes, metadata says {size}")
    return meta, text, end + 1, end + 1 + size


def _record_of(meta: dict, payload: bytes) -> Record:
    """The record of a well-framed metadata object (which it takes apart), or SpoolError."""
    for key in ("id", "kind"):
        if key not in meta:
            raise SpoolError(f"metadata lacks {key!r}")
    if meta["kind"] not in KINDS:
        raise SpoolError(f"unknown record kind {meta['kind']!r}")
    rid, kind = meta.pop("id"), meta.pop("kind")
    meta.pop("payload_size")
    return Record(id=rid, kind=kind, meta=meta, payload=payload)


def _decode_at(data: bytes, offset: int, meta_lines: dict[str, str] | None = None) -> tuple[Record, int]:
    """The record starting at `offset` and the offset after it (and, into `meta_lines`, its
    metadata line as written, by record id)."""
    meta, text, start, end = _frame_at(data, offset)
    record = _record_of(meta, data[start:end])
    if meta_lines is not None:
        meta_lines[record.id] = text
    return record, end


def decode(data: bytes) -> Record:
    """A file holding exactly one record."""
    record, end = _decode_at(data, 0)
    if end != len(data):
        raise SpoolError(f"payload is {len(data) - (end - len(record.payload))} bytes, "
                         f"metadata says {len(record.payload)}")
    return record


def decode_many(data: bytes, meta_lines: dict[str, str] | None = None) -> list[Record]:
    """Every record of a file (one, or several: a segment, a `write_many` batch), or
    SpoolError for the first problem. `meta_lines` collects each record's metadata line as
    written (JSON text, by record id), so it can be stored without encoding it again."""
    records, offset = [], 0
    while offset < len(data) or not records:
        record, offset = _decode_at(data, offset, meta_lines)
        records.append(record)
    return records


@dataclass
class BadPart:
    """Bytes of a spool file that cannot be ingested: one record, or, where the framing broke,
    everything from `offset` to the end of the file."""
    offset: int
    data: bytes
    reason: str
    record_id: str | None = None

    @property
    def where(self) -> str:
        return f"byte {self.offset}" + (f" (record {self.record_id})" if self.record_id else "")


def decode_parts(data: bytes, meta_lines: dict[str, str] | None = None,
                 check: Callable[[Record], object] | None = None) -> tuple[list[Record], list[BadPart]]:
    """The records of a file that can be ingested, and the parts that cannot, each with its
    reason (what the spooler reads: one bad record must not take the good ones of a segment
    to bad/ with it). `check` (the spooler's store.ingest.check_record) refuses a record by raising
    anything; `meta_lines` as for decode_many, good records only.

    A bad record whose framing is intact (magic line, a JSON object with an int payload_size,
    that much payload, then the end of the file or the next magic line) is a part on its own
    and decoding goes on after it. Where the framing breaks, nothing after can be located:
    the rest of the file is one part. A record not followed by a magic line is where it breaks
    (its payload_size may be the mistake: its payload is not to be trusted). An empty file is
    one (empty) part."""
    fast = _decode_bare(data, check)
    if fast is not None:
        if meta_lines is not None:
            meta_lines.update(zip([r.id for r in fast[0]], fast[1]))
        return fast[0], []
    records: list[Record] = []
    bad: list[BadPart] = []
    offset = 0
    while True:
        try:
            meta, text, start, end = _frame_at(data, offset)
            if end < len(data) and not data.startswith(MAGIC, end):
                raise SpoolError(f"no magic line at byte {end}, where the record at byte {offset} "
                                 "ends (wrong payload_size?)")
        except SpoolError as exc:
            bad.append(BadPart(offset, data[offset:], f"{type(exc).__name__}: {exc}"))
            return records, bad
        rid = meta.get("id")
        try:
            record = _record_of(meta, data[start:end])
            if check is not None:
                check(record)
        except Exception as exc:  # whatever `check` raises refuses this record only
            bad.append(BadPart(offset, data[offset:end], f"{type(exc).__name__}: {exc}",
                               rid if isinstance(rid, str) else None))
        else:
            records.append(record)
            if meta_lines is not None:
                meta_lines[record.id] = text
        offset = end
        if offset == len(data):
            return records, bad


_MAGIC_LINE = MAGIC[:-1].decode("ascii")


def _decode_bare(data: bytes, check: Callable[[Record], object] | None
                 ) -> tuple[list[Record], list[str]] | None:
    """decode_parts for a file whose records all have no payload and all pass (what the log
    follower and the CLI write; a milter segment's events), done per file: one decode and one
    split of the whole file, not a search, a slice and a decode per record. The records and
    their metadata lines; None for anything else (a payload, a record that is bad or written
    otherwise than encode writes it), which decode_parts then reads record by record."""
    if data.count(b"\n") != 2 * data.count(MAGIC):  # payloads (of lines): not worth a look
        return None
    try:
        pieces = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    # MAGIC, line, MAGIC, line, ..., "" (the last line's newline ends the file)
    lines = pieces[1::2]
    if (len(pieces) < 3 or len(pieces) % 2 == 0 or pieces[-1]
            or pieces[0:-1:2].count(_MAGIC_LINE) != len(lines)):
        return None
    raw_decode = _JSON.raw_decode
    records = []
    try:
        for text in lines:
            meta, stop = raw_decode(text)
            if (stop != len(text) or type(meta) is not dict or type(meta.get("payload_size")) is not int
                    or meta["payload_size"] or meta.get("kind") not in KINDS or "id" not in meta):
                return None
            rid, kind = meta.pop("id"), meta.pop("kind")
            del meta["payload_size"]
            record = Record(rid, kind, meta)
            if check is not None:
                check(record)
            records.append(record)
    except Exception:  # decode_parts says what is wrong with which record
        return None
    return records, lines


def read_all(path: str) -> list[Record]:
    with open(path, "rb") as fh:
        return decode_many(fh.read())


def handed_over(spool_dir: str) -> list[Record]:
    """Every record durably in the spool and not yet ingested: the whole records of open
    segments in tmp/ and files in new/ (for `mxhook status`-like counts and tests). tmp/ is
    read first and records are counted once by id, so a segment sealed into new/ meanwhile is
    neither missed nor counted twice."""
    in_segments: list[Record] = []
    tmp_dir = os.path.join(spool_dir, "tmp")
    for name in sorted(os.listdir(tmp_dir)):
        if name.endswith(".seg"):
            try:
                with open(os.path.join(tmp_dir, name), "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            complete = _complete_prefix(data)
            in_segments.extend(decode_many(data[:complete]) if complete else [])
    found: dict[str, Record] = {}
    for path in pending(spool_dir):
        try:
            for record in read_all(path):
                found.setdefault(record.id, record)
        except (OSError, SpoolError):
            continue
    for record in in_segments:
        found.setdefault(record.id, record)
    return list(found.values())


def waiting(spool_dir: str) -> dict:
    """What waits in new/ for the spooler, cheaply (for /metrics): files, the oldest file's
    modification time, and records by kind, read from the metadata lines only (payloads are
    skipped, not read); a file that vanishes meanwhile (ingested) or is unreadable counts as a
    file, its records under "unreadable"."""
    kinds = dict.fromkeys(KINDS, 0)
    files, oldest = 0, None
    try:
        it = os.scandir(os.path.join(spool_dir, "new"))
    except FileNotFoundError:
        return {"files": 0, "oldest_mtime": None, "records": kinds}
    with it:
        for entry in it:
            if not entry.name.endswith(".rec"):
                continue
            files += 1
            try:
                mtime = entry.stat().st_mtime
                oldest = mtime if oldest is None else min(oldest, mtime)
                with open(entry.path, "rb") as fh:
                    while True:
                        magic = fh.readline()
                        if not magic:
                            break
                        meta = json.loads(fh.readline()) if magic == MAGIC else None
                        if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
                            raise SpoolError("not a record")
                        kinds[meta["kind"]] += 1
                        fh.seek(int(meta.get("payload_size") or 0), os.SEEK_CUR)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, SpoolError):
                kinds["unreadable"] = kinds.get("unreadable", 0) + 1
    return {"files": files, "oldest_mtime": oldest, "records": kinds}


def _complete_prefix(data: bytes) -> int:
    """Length of the longest prefix made of whole records (a torn tail is cut there)."""
    offset = 0
    while offset < len(data):
        try:
            _, offset_after = _decode_at(data, offset)
        except SpoolError:
            break
        offset = offset_after
    return offset


def _place(spool_dir: str, name: str, data: bytes, *, sync: bool, into: str = "new") -> str:
    """tmp/<name> (fsynced when `sync`) renamed into new/ (or `into`), replacing a file of that
    name there; removes its tmp file on failure."""
    tmp_path = os.path.join(spool_dir, "tmp", name)
    new_path = os.path.join(spool_dir, into, name)
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        # Left by a writer that crashed before its rename (never acknowledged). Only a writer
        # with deterministic names (the log follower re-reading its lines, write_bad) meets it:
        # same contents.
        os.unlink(tmp_path)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, new_path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    return new_path


def event_record(event: Event) -> Record:
    """The spool record of an event: kind `event`, id = event id, meta = Event.to_meta()."""
    if not event.id:
        raise EventError("event has no id")
    return Record(id=event.id, kind="event", meta=event.to_meta())


def write(spool_dir: str, record: Record, *, durable: bool = True) -> str:
    """Hand a record over; returns the path in `new/`. Raises OSError on any failure, after
    removing what it half-wrote, so the caller can answer 4xx.

    `durable=False` skips the fsyncs, for records whose loss costs only a log line (denials).
    """
    path = _place(spool_dir, record.id + ".rec", encode(record), sync=durable)
    if durable:
        _fsync_dir(os.path.join(spool_dir, "new"))
    return path


def write_many(spool_dir: str, records: list[Record]) -> str | None:
    """Hand over several records durably as one file (tmp -> fsync -> rename -> directory
    fsync); returns its path in `new/` (None for no records). The spooler takes the file's
    records in together; a burst of events costs one file instead of one file each (creating
    and later deleting a file is most of the cost of handing over an event).

    The file gets a fresh name: a writer that hands the same records over again after a crash
    (the log follower re-reading lines, with deterministic ids) must not replace a file the
    spooler may be reading; the second copies are dropped at ingest by their ids."""
    if not records:
        return None
    path = _place(spool_dir, new_id() + ".rec", b"".join(map(encode, records)), sync=True)
    _fsync_dir(os.path.join(spool_dir, "new"))
    return path


class _Segment:
    def __init__(self, spool_dir: str):
        while True:
            self.name = new_id()
            self.tmp_path = os.path.join(spool_dir, "tmp", self.name + ".seg")
            self.new_path = os.path.join(spool_dir, "new", self.name + ".rec")
            self.fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)  # "a live writer has this one": see recover_segments
                # recover_segments may have locked and removed the empty file between our open
                # and our lock: then our records would go to an unlinked inode. Start over.
                try:
                    if os.stat(self.tmp_path).st_ino == os.fstat(self.fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
            except BaseException:
                os.close(self.fd)
                raise
            os.close(self.fd)
        try:
            # The file's name in tmp/ must survive a power cut too, not only its data.
            _fsync_dir(os.path.join(spool_dir, "tmp"))
        except BaseException:
            # Nothing is in it yet: remove it and let go of descriptor and lock, or every
            # message refused during a disk fault would keep one open (EMFILE after ~1,000).
            try:
                os.unlink(self.tmp_path)
            except OSError:
                pass
            os.close(self.fd)
            raise
        self.created = time.monotonic()
        self.size = 0
        self.durable_size = 0  # bytes known on disk: every acknowledged record ends within
        self.appended = 0  # appends written
        self.synced = 0  # appends known durable
        self.syncing = False
        self.active = 0  # writers between write and the end of their sync
        self.broken: OSError | None = None  # a failed write or flush: nothing more goes here
        self.withdrawn = False  # cut back to durable_size after `broken` (see _withdraw)
        self.withdraw_error: OSError | None = None


class SegmentWriter:
    """Durable appends of records to a shared segment with group commit (thread-safe).

    `append` returns once the record is on disk (fdatasync) and raises OSError otherwise (the
    milter then answers 4xx). A background thread seals a segment `seal_after` seconds after it
    was opened (or at `max_bytes`) by renaming it into new/.
    """

    def __init__(self, spool_dir: str, *, seal_after: float = 0.2, max_bytes: int = 16 << 20):
        self.spool_dir = spool_dir
        self.seal_after = seal_after
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._current: _Segment | None = None
        self._sealer: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()

    def append(self, record: Record) -> None:
        self.append_many([record])

    def append_many(self, records: list[Record]) -> None:
        """Append records (one message's events) in one write; durable when this returns.

        OSError when they are not: then they are also withdrawn from the segment (it is cut
        back to its last durable length, see `_withdraw`), so an answer of 4xx is never
        followed by a post of the same attempt."""
        data = b"".join(map(encode, records))
        if not data:
            return
        with self._cond:
            if self._closed:
                raise OSError("segment writer is closed")
            seg = self._current
            if seg is None or seg.broken or seg.size >= self.max_bytes:
                if seg is not None:
                    self._detach(seg)
                seg = self._current = _Segment(self.spool_dir)
                if self._sealer is None:
                    self._sealer = threading.Thread(target=self._seal_loop, name="spool-sealer", daemon=True)
                    self._sealer.start()
            seg.active += 1
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(seg.fd, view):]
                except OSError as exc:
                    # A partial record may sit at the end now: this segment takes no more records.
                    seg.broken = exc
                    self._withdraw(seg)
                    raise
                seg.size += len(data)
                seg.appended += 1
                mine = seg.appended
                while seg.synced < mine:
                    if seg.broken:
                        self._withdraw(seg)  # lets a flush already running finish first
                        if seg.synced >= mine:
                            break  # that flush covered this record: it is durable and kept
                        raise seg.broken
                    if seg.syncing:
                        self._cond.wait()
                        continue
                    seg.syncing = True
                    target, target_size = seg.appended, seg.size
                    self._cond.release()
                    error = None
                    try:
                        os.fdatasync(seg.fd)
                    except OSError as exc:
                        error = exc
                    finally:
                        self._cond.acquire()
                        seg.syncing = False
                        if error is None:
                            seg.synced = max(seg.synced, target)
                            seg.durable_size = max(seg.durable_size, target_size)
                        else:
                            seg.broken = error
                        self._cond.notify_all()
            finally:
                seg.active -= 1
                self._cond.notify_all()

    def _withdraw(self, seg: _Segment) -> None:
        """(lock held, `seg.broken` set) Cut `seg` back to its last durable length, once, before
        any writer answers for a record past it: those records are refused (4xx), so neither
        recovery nor the sealer may ever hand them over. Waits for a flush in flight (it may
        make more records durable: they are kept and acknowledged).

        The cut is visible at once to every reader (recovery, after a crash of this process at
        any later point); its fsync makes it survive a power cut. Should the truncate or its
        fsync fail, the segment is renamed to say its durable length (`_mark_cut`), which
        recovery honours after a restart of the milter too. Only if that fails as well (a file
        system gone read-only) does the segment stay locked by this process, so no recovery
        takes it while the milter runs (after a restart it would: logged CRITICAL)."""
        while seg.syncing:
            self._cond.wait()
        if seg.withdrawn or seg.withdraw_error is not None:
            return
        try:
            os.ftruncate(seg.fd, seg.durable_size)
            seg.size = seg.durable_size
            seg.withdrawn = True
            os.fsync(seg.fd)
        except OSError as exc:
            seg.withdraw_error = exc
            try:
                self._mark_cut(seg)
            except OSError as mark_exc:
                if not seg.withdrawn:
                    log.critical("spool segment %s: cannot withdraw records refused after %s: %s; "
                                 "nor mark its durable length: %s; keeping it locked (a restart of "
                                 "the milter would hand them over)", seg.tmp_path, seg.broken, exc,
                                 mark_exc)
                else:
                    log.error("spool segment %s: cut back to %d bytes after %s, but its fsync "
                              "failed: %s", seg.tmp_path, seg.durable_size, seg.broken, exc)
                return
            seg.withdrawn = True
            log.error("spool segment %s: cannot cut it back to %d bytes after %s: %s; renamed so "
                      "that recovery keeps only those", seg.tmp_path, seg.durable_size, seg.broken, exc)

    @staticmethod
    def _mark_cut(seg: _Segment) -> None:
        """(lock held) Rename `seg` in tmp/ to carry its durable length (`<id>.cut-<N>.seg`),
        durably: recovery then drops everything after N bytes, whoever runs it and when."""
        cut_path = _cut_path(seg.tmp_path, seg.name, seg.durable_size)
        os.rename(seg.tmp_path, cut_path)
        seg.tmp_path = cut_path
        try:
            _fsync_dir_now(os.path.dirname(cut_path))
        except OSError as exc:  # recovery sees the new name; only a power cut could undo it
            log.error("spool segment %s: renamed, but the fsync of tmp/ failed: %s", cut_path, exc)

    def _detach(self, seg: _Segment) -> None:
        """(lock held) No more appends to `seg`; the sealer thread moves it on."""
        if self._current is seg:
            self._current = None
        threading.Thread(target=self._seal, args=(seg,), daemon=True).start()

    def _seal(self, seg: _Segment) -> None:
        with self._cond:
            while seg.active:
                self._cond.wait()
        if seg.broken and not seg.withdrawn:
            return  # refused records could not be cut off: keep the lock (see _withdraw)
        try:
            if seg.size and not seg.broken:
                os.rename(seg.tmp_path, seg.new_path)  # still locked: recovery keeps off
                _fsync_dir(os.path.join(self.spool_dir, "new"))
            elif not seg.size:
                os.unlink(seg.tmp_path)
            # a broken segment stays in tmp/ for recover_segments (after the lock is released)
        except OSError:
            pass  # left in tmp/: recover_segments moves it once our lock is gone
        finally:
            os.close(seg.fd)

    def _seal_loop(self) -> None:
        # Sleeps on its own event, not on self._cond: appends notify that one for every record,
        # and waking this thread each time costs every callback thread a GIL hand-over.
        while not self._closing.wait(self.seal_after / 4):
            with self._cond:
                seg = self._current
                if seg is not None and time.monotonic() - seg.created >= self.seal_after:
                    self._detach(seg)

    def flush(self) -> None:
        """Seal the open segment now and wait until it is in new/ (tests, shutdown)."""
        with self._cond:
            seg = self._current
            self._current = None
        if seg is not None:
            self._seal(seg)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
        self._closing.set()


CUT_MARK = ".cut-"  # tmp/<id>.cut-<N>.seg: only the first N bytes of that segment are good


def _cut_path(tmp_path: str, name: str, size: int) -> str:
    return os.path.join(os.path.dirname(tmp_path), f"{name}{CUT_MARK}{size}.seg")


def _segment_name(file_name: str) -> tuple[str, int | None]:
    """(id, durable length or None) of a segment's file name in tmp/: `<id>.seg`, or
    `<id>.cut-<N>.seg` for one whose refused tail could not be cut off."""
    stem = file_name[:-4]
    seg_id, mark, size = stem.partition(CUT_MARK)
    if mark and size.isdigit():
        return seg_id, int(size)
    return stem, None


def recover_segments(spool_dir: str) -> int:
    """Move segments of writers that died from tmp/ into new/, cutting a torn tail (the part
    of a record that was being written: never acknowledged) and, for a segment named
    `<id>.cut-<N>.seg`, everything after its first N bytes (records answered 4xx). Returns how
    many were moved."""
    tmp_dir = os.path.join(spool_dir, "tmp")
    moved = 0
    for name in os.listdir(tmp_dir):
        if not name.endswith(".seg"):
            continue
        path = os.path.join(tmp_dir, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # sealed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            if not os.path.exists(path):
                continue  # sealed between our open and our lock
            seg_id, durable = _segment_name(name)
            with open(path, "rb") as fh:
                data = fh.read() if durable is None else fh.read(durable)
            keep = _complete_prefix(data)
            if keep == 0:
                os.unlink(path)
                continue
            if keep < os.fstat(fd).st_size:
                os.truncate(fd, keep)
            os.fsync(fd)
            os.rename(path, os.path.join(spool_dir, "new", seg_id + ".rec"))
            _fsync_dir(os.path.join(spool_dir, "new"))
            moved += 1
        finally:
            os.close(fd)
    return moved


def ingest_bound(spool_dir: str, now_ns: int | None = None) -> tuple[str, str]:
    """(below, beyond): a name in new/ may be ingested now when `name < below` or `name >=
    beyond`. List tmp/ *before* scanning new/ with these.

    `below` is the oldest open segment's id (only one younger than SEGMENT_HOLD: a live writer
    seals within 0.2 s; an older one is a dead or stalled writer's, which must not stall the
    spool) or else the time now: a file newer than this listing may follow a segment created
    after it. `beyond` lets through names far ahead of the clock (a stepped clock, a file put
    there by hand), which would otherwise wait forever."""
    now = time.time_ns() if now_ns is None else now_ns
    below = f"{now:016x}"
    oldest_held = f"{now - int(SEGMENT_HOLD * 1e9):016x}"
    try:
        names = os.listdir(os.path.join(spool_dir, "tmp"))
    except FileNotFoundError:
        names = []
    for name in names:
        if name.endswith(".seg") and oldest_held <= name < below:
            below = name[:-4]
    return below, f"{now + int(FUTURE_SLACK * 1e9):016x}"


def pending(spool_dir: str, limit: int | None = None) -> list[str]:
    """Paths in `new/`, oldest first (ids sort by time)."""
    new_dir = os.path.join(spool_dir, "new")
    try:
        names = sorted(n for n in os.listdir(new_dir) if n.endswith(".rec"))
    except FileNotFoundError:
        return []
    if limit is not None:
        names = names[:limit]
    return [os.path.join(new_dir, n) for n in names]


def read(path: str) -> Record:
    with open(path, "rb") as fh:
        return decode(fh.read())


def move_bad(spool_dir: str, path: str, reason: str) -> str:
    """Quarantine an unreadable file with its reason; returns the new path."""
    target = os.path.join(spool_dir, "bad", os.path.basename(path))
    os.rename(path, target)
    with open(target + ".reason", "w", encoding="utf-8") as fh:
        fh.write(reason.rstrip() + "\n")
    return target


def write_bad(spool_dir: str, path: str, parts: list[BadPart]) -> list[str]:
    """Quarantine parts of the file `path` (which stays where it is) durably: each as
    bad/<name>.<offset>.rec with its reason in a `.reason` file beside it (tmp -> fsync ->
    rename, then one fsync of bad/). The names follow from the file and the offset, so writing
    the same parts again (the spooler died before it unlinked the file) replaces them. Returns
    the paths in bad/; OSError when any part could not be written."""
    stem = os.path.basename(path).removesuffix(".rec")
    targets = []
    for part in parts:
        name = f"{stem}.{part.offset}.rec"
        reason = (part.reason.rstrip() + "\n").encode("utf-8", "backslashreplace")
        _place(spool_dir, name + ".reason", reason, sync=True, into="bad")
        targets.append(_place(spool_dir, name, part.data, sync=True, into="bad"))
    _fsync_dir(os.path.join(spool_dir, "bad"))
    return targets


def clean_tmp(spool_dir: str, older_than: float = 3600.0) -> int:
    """Recover segments of dead writers (recover_segments), then remove leftovers of writers
    that died mid-write of a single-record file (never renamed, so never acknowledged)."""
    recover_segments(spool_dir)
    tmp_dir = os.path.join(spool_dir, "tmp")
    removed = 0
    now = time.time()
    for name in os.listdir(tmp_dir):
        if name.endswith(".seg"):
            continue  # a live writer's segment (dead ones were recovered just now)
        path = os.path.join(tmp_dir, name)
        try:
            if now - os.stat(path).st_mtime > older_than:
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


# Reading: the spooler's side of the handoff -------------------------------------------------

SCAN_WINDOW = 50_000  # names of new/ kept from one directory scan (see Reader._next_paths)
READ_CHUNK = 1 << 16
BATCH_BYTES = 4 << 20  # a batch also ends after this much was read (bounds memory, not speed)
# ... or after this many records: the spooler's dispatch gets its turn between ingest batches
# of about an event batch's size, so ingest does not run far ahead of it and the events it
# batches are still in StateStore's memory (not parsed again from state.db). An endpoint takes
# one batch per step (at most 1,000 events by default): with 2,000 per read batch, ingest ran
# ahead once the milter's events came in segments, and the flow bench fell from ~16,000 to
# ~9,600 events/s.
BATCH_RECORDS = 1000
UNLINK_THREADS = 8  # see Reader._unlink
UNLINK_CHUNK = 32
MTIME_TICK_NS = 20_000_000  # a directory change this recent may hide another in the same tick
RECOVER_SEGMENTS_EVERY = 2.0  # a milter that died leaves acknowledged mail in tmp/*.seg
CLEAN_TMP_EVERY = 3600.0


@dataclass
class Batch:
    """What `Reader.take` hands out: the good records of up to `files` files from new/, in name
    order, and what `finish` / `give_back` need to dispose of those files."""
    records: list = field(default_factory=list)  # Record, in file order
    files: list = field(default_factory=list)  # the file of each record
    raw_meta: dict = field(default_factory=dict)  # event record id -> its metadata line as written
    quarantined: int = 0  # files of this batch moved to bad/ whole
    taken: list = field(default_factory=list)  # every path taken (given back unless finished)
    cut_short: bool = False  # stopped at BATCH_BYTES/BATCH_RECORDS: more files are ready


class Reader:
    """The spooler's verbs over new/, in the spirit of Mailman's switchboard: `take` a batch of
    decoded, checked records; `finish` the files whose records were committed (they are
    unlinked); `give_back` the others (first in line next time); `quarantine` a file that
    cannot be ingested. `changed` says whether a wait should end; `tidy` recovers segments of
    dead writers and clears stale temporary files.

    The files themselves are handled on one I/O thread: scanning new/, reading and decoding a
    batch, quarantining bad files; a small pool unlinks finished ones. While the caller writes
    one batch into state.db (SQLite releases the GIL meanwhile), the I/O thread reads and
    decodes the next one, so the file system's per-file costs and the JSON decoding overlap
    with the database work. Names handed out and not yet unlinked (or given back) are claimed,
    and a scan skips them, so no file is read twice.

    `check` refuses a record by raising (the spooler's `store.ingest.check_record`): such a
    record goes to bad/ instead of into a batch. `durable`: called (on an unlink thread)
    before the files of a `finish` are unlinked, to make the commit that took them in
    durable (the spooler's StateStore.make_durable); if it raises OSError the files stay, and
    are read and ingested again (harmlessly: the records are known by id)."""

    def __init__(self, spool_dir: str, *, batch_files: int,
                 check: Callable[[Record], object] | None = None,
                 durable: Callable[[], None] | None = None):
        self.spool_dir = spool_dir
        self.batch_files = batch_files
        self.check = check
        self.durable = durable
        self.new_dir = os.path.join(spool_dir, "new")
        self.held_back = False  # the last scan left files for after an open segment (I/O thread)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="mxhook-spool-io")
        self._unlinker = ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="mxhook-unlink")
        self._claimed: set[str] = set()
        self._claimed_lock = threading.Lock()
        self._prefetch: Future | None = None
        self._released: Future | None = None  # the last `finish` on the I/O thread
        self._window: deque[str] = deque()  # oldest names of new/ from the last scan (I/O thread)
        self._scan_mark: int | None = None  # new/'s mtime at the last scan (None: look again)
        self._last_recover = 0.0
        self._last_clean = 0.0

    # the verbs ------------------------------------------------------------------------------
    def take(self) -> Batch:
        """The next batch (no files taken: nothing is ready). The one after it is read ahead
        on the I/O thread while the caller ingests this one."""
        fut = self._prefetch
        if fut is None:
            if self._nothing_ready():
                return Batch()
            fut = self._io.submit(self._load_batch)
        self._prefetch = None
        batch = fut.result()
        if batch.records or batch.quarantined:
            self._prefetch = self._io.submit(self._load_batch)
        return batch

    def finish(self, batch: Batch, ingested: list[str] | None = None) -> None:
        """After the COMMIT of `ingested` (the batch's files whose records are all in: default
        every one): have them unlinked; the batch's other files are given back, first in line,
        and the batch read ahead behind them goes back in line after them (taken as it is, it
        would be ingested before them: a bounce report before the `queued` event it needs)."""
        done = list(dict.fromkeys(batch.files)) if ingested is None else ingested
        kept = set(done)
        left = [p for p in batch.taken if p not in kept]
        ahead = None
        if left and self._prefetch is not None:
            ahead, self._prefetch = self._prefetch, None
        self._released = self._io.submit(self._release, done, left, ahead)

    def give_back(self, batch: Batch) -> None:
        """None of the batch was ingested: its files are first in line next time."""
        self.finish(batch, [])

    def quarantine(self, path: str, reason: str) -> None:
        """Move a file that cannot be ingested to bad/ with its reason (logged)."""
        try:
            target = move_bad(self.spool_dir, path, reason)
            log.error("spool file %s moved to %s: %s", os.path.basename(path), target, reason)
        except OSError as exc:
            log.error("spool file %s is bad (%s) and could not be moved to bad/: %s", path, reason, exc)

    def _nothing_ready(self) -> bool:
        """No file can be ready: the I/O thread is idle, nothing is left of its last scan or
        given back, none held back behind an open segment, and new/ did not change since that
        scan. Spares the step a round trip to the I/O thread, ~1 ms while post workers hold
        the GIL (the spooler takes once per step, most of them with new/ empty)."""
        released = self._released
        return ((released is None or released.done()) and not self._window
                and not self.held_back and not self.changed())

    def changed(self) -> bool:
        """Files to take since the last scan of new/: a batch read ahead holds some (or is
        still being read), or new/ changed after the scan."""
        fut = self._prefetch
        if fut is not None:
            if not fut.done() or fut.exception() is not None or fut.result().taken:
                return True
            self._prefetch = None  # read ahead before the latest arrivals: look at new/ itself
        mark = self._scan_mark
        if mark is None:
            return True
        try:
            return os.stat(self.new_dir).st_mtime_ns != mark
        except OSError:
            return True

    def tidy(self) -> None:
        """Every RECOVER_SEGMENTS_EVERY seconds, move segments of milters that died into new/;
        every CLEAN_TMP_EVERY seconds (and at the first call), clear stale files in tmp/."""
        now = time.monotonic()
        if now - self._last_recover >= RECOVER_SEGMENTS_EVERY:
            self._last_recover = now
            try:
                moved = recover_segments(self.spool_dir)
                if moved:
                    log.warning("recovered %d spool segment(s) left by a milter that stopped", moved)
            except OSError as exc:
                log.warning("cannot recover segments in %s/tmp: %s", self.spool_dir, exc)
        if now - self._last_clean >= CLEAN_TMP_EVERY or not self._last_clean:
            self._last_clean = now
            try:
                removed = clean_tmp(self.spool_dir)
                if removed:
                    log.info("removed %d stale file(s) from %s/tmp", removed, self.spool_dir)
            except OSError as exc:
                log.warning("cannot clean %s/tmp: %s", self.spool_dir, exc)

    def close(self) -> None:
        """A batch read ahead is dropped (its files stay in new/); unlinks under way finish."""
        self._io.shutdown(wait=True)  # first: releases it runs hand unlinks to the pool
        self._unlinker.shutdown(wait=True)

    # the I/O thread ---------------------------------------------------------------------------
    def _next_paths(self) -> list[str]:
        """(I/O thread) The next (up to) `batch_files` paths in new/, oldest first.

        Listing and sorting the whole directory for every batch (`pending`) costs O(files) per
        batch, which is quadratic over a backlog: with 200,000 files waiting it took longer
        than ingesting them. So one scan keeps the oldest SCAN_WINDOW names (heapq: memory
        bounded by the window, not by the backlog), and batches are taken from that window
        until it is used up; files that arrive meanwhile are picked up by the next scan. Names
        sort by time, so this is the order `pending` gives. Names from `ingest_bound` on wait
        for the next scan: the milter's open segment may hold what they follow."""
        if not self._window:
            self._scan_mark = _changed_at(self.new_dir)  # before the scan: a later arrival moves it
            with self._claimed_lock:
                claimed = set(self._claimed)  # unlinks finishing meanwhile: still skipped
            below, beyond = ingest_bound(self.spool_dir)  # tmp/ first, then new/
            self.held_back = False

            def ready(entries):
                for entry in entries:
                    name = entry.name
                    if name.endswith(".rec") and name not in claimed:
                        if name < below or name >= beyond:
                            yield name
                        else:
                            self.held_back = True
            # new/ gone (the spooler made it at start): OSError, for the caller to report
            with os.scandir(self.new_dir) as it:
                self._window.extend(heapq.nsmallest(max(SCAN_WINDOW, self.batch_files), ready(it)))
        take = min(self.batch_files, len(self._window))
        names = [self._window.popleft() for _ in range(take)]
        with self._claimed_lock:
            self._claimed.update(names)
        return [os.path.join(self.new_dir, n) for n in names]

    def _unclaim_unread(self, paths: list[str]) -> None:
        """(I/O thread) Names taken by _next_paths but not read: first in line next time."""
        names = [os.path.basename(p) for p in paths]
        self._window.extendleft(reversed(names))
        with self._claimed_lock:
            self._claimed.difference_update(names)

    def _load_batch(self) -> Batch:
        """(I/O thread) Read and decode the next batch."""
        paths = self._next_paths()
        batch = Batch(taken=paths)
        size = 0
        for index, path in enumerate(paths):
            if size >= BATCH_BYTES or len(batch.records) >= BATCH_RECORDS:
                # files of many records (segments, event chunks): the rest next time
                self._unclaim_unread(paths[index:])
                batch.taken, batch.cut_short = paths[:index], True
                return batch
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._decode(path, exc, batch)
                continue
            try:  # os.read: a third of the system calls of open().read()
                chunks = []
                while True:
                    chunk = os.read(fd, READ_CHUNK)
                    chunks.append(chunk)
                    if len(chunk) < READ_CHUNK:  # a short read of a regular file is its end
                        break
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            except OSError as exc:
                data = exc
            finally:
                os.close(fd)
            if not isinstance(data, OSError):
                size += len(data)
            self._decode(path, data, batch)
        return batch

    def _decode(self, path: str, data: bytes | OSError, into: Batch) -> None:
        """(I/O thread) Decode and check one read file (`decode_parts`, `check`) into `into`.
        A file with no good record goes to bad/ as it is; otherwise each bad part is written to
        bad/ now, durably, so the file can be unlinked once its good records are committed."""
        if isinstance(data, (PermissionError, IsADirectoryError)):
            self.quarantine(path, f"{type(data).__name__}: {data}")
            into.quarantined += 1
            return
        if isinstance(data, OSError):  # e.g. EMFILE, EIO: maybe passing; try again later
            log.warning("cannot read spool file %s now, will retry: %s", path, data)
            return
        lines: dict[str, str] = {}
        try:  # one record, or several
            in_file, bad = decode_parts(data, lines, check=self.check)
        except Exception as exc:  # whatever a hostile or broken file raises: bad/, not a stall
            in_file, bad = [], [BadPart(0, data, f"{type(exc).__name__}: {exc}")]
        if not in_file:  # nothing good in it: the file goes to bad/ as it is
            self.quarantine(path, bad[0].reason if len(bad) == 1
                            else "\n".join(f"at {part.where}: {part.reason}" for part in bad))
            into.quarantined += 1
            return
        if bad and not self._quarantine_parts(path, bad):
            return  # the file stays in new/, its good records with it, and is tried again
        for record in in_file:
            if record.kind == "event":  # the store keeps an event's metadata as written
                into.raw_meta[record.id] = lines[record.id]
        into.records.extend(in_file)
        into.files.extend([path] * len(in_file))

    def _quarantine_parts(self, path: str, parts: list[BadPart]) -> bool:
        """(I/O thread) The bad parts of a file that also holds good records, into bad/ (one
        log line each); False, logged, when they cannot be written."""
        name = os.path.basename(path)
        try:
            targets = write_bad(self.spool_dir, path, parts)
        except OSError as exc:
            log.error("spool file %s has %d bad part(s) that cannot be written to bad/ (the file "
                      "stays in new/, will retry): %s", name, len(parts), exc)
            return False
        for part, target in zip(parts, targets):
            log.error("spool file %s: bad part at %s copied to %s: %s", name, part.where, target, part.reason)
        return True

    def _release(self, done: list[str], left: list[str], ahead: Future | None) -> None:
        """(I/O thread) Put the files not ingested (`left`), and those of the batch read ahead
        (`ahead`: done, since it ran before this on the one I/O thread), back at the front of
        the line in name order; have the ingested ones unlinked by the unlink pool (their names
        stay claimed until they are gone). Files given back end no wait (`changed`); the
        unlinks do, as new/'s mtime cannot tell them from an arrival (one look too many)."""
        again = list(left)
        if ahead is not None and ahead.exception() is None:
            again += ahead.result().taken
        if again:
            self._unclaim_unread(sorted(again, key=os.path.basename))
            try:  # only later arrivals end the wait (one in this very tick: after poll_interval)
                self._scan_mark = os.stat(self.new_dir).st_mtime_ns
            except OSError:
                self._scan_mark = None
        if done and self.durable is not None:
            self._unlinker.submit(self._unlink_when_durable, done)
        else:
            self._unlink_all(done)

    def _unlink_all(self, done: list[str]) -> None:
        for i in range(0, len(done), UNLINK_CHUNK):
            try:
                self._unlinker.submit(self._unlink, done[i:i + UNLINK_CHUNK])
            except RuntimeError:  # closing (from an unlink thread): here, then
                self._unlink(done[i:i + UNLINK_CHUNK])

    def _unlink_when_durable(self, done: list[str]) -> None:
        """(unlink pool) Until `durable` returns, the files are their records' only sure copy."""
        try:
            self.durable()
        except OSError as exc:
            log.error("cannot make the ingest of %d spool file(s) durable (%s): they stay in new/"
                      " and are ingested again", len(done), exc)
            try:  # the window and the scan mark are the I/O thread's
                self._io.submit(self._read_again, done)
            except RuntimeError:  # closing: read at the next start
                pass
            return
        self._unlink_all(done)

    def _read_again(self, paths: list[str]) -> None:
        """(I/O thread) Files already ingested whose commit could not be made durable: first in
        line, and no wait before they are taken."""
        self._unclaim_unread(paths)
        self._scan_mark = None

    def _unlink(self, paths: list[str]) -> None:
        """(unlink pool) Freeing a file's blocks can take a while (~150 µs on an ext4 mounted
        with `discard`, against ~10 µs for the rest of a file's handling), so several threads
        do it side by side."""
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("ingested %s but cannot remove it (will be re-ingested harmlessly): %s", path, exc)
        with self._claimed_lock:
            self._claimed.difference_update(os.path.basename(p) for p in paths)


def _changed_at(directory: str) -> int | None:
    """The directory's mtime (ns), or None when it changed within MTIME_TICK_NS (another change
    in the same clock tick would leave the mtime as it is) or cannot be read."""
    try:
        mtime = os.stat(directory).st_mtime_ns
    except OSError:
        return None
    return None if time.time_ns() - mtime < MTIME_TICK_NS else mtime
