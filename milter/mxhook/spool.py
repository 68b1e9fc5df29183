"""The durable handoff between the milter (and log follower) and the spooler.

Mailman's switchboard and Postfix's own queue are the model: a record is written to `tmp/`,
fsynced, renamed into `new/`, and the directory is fsynced; only then does the writer answer
(for the milter: only then may Postfix say 250). A file in `new/` is therefore always complete.
The spooler ingests `new/` into state.db and unlinks after commit; the record id is the primary
key there, so ingesting the same file twice after a crash is harmless. Files it cannot parse
move to `bad/` with a `.reason` file beside them.

File format (version 1):

    MXHOOK-SPOOL 1\\n
    <one line of JSON: the record's metadata, including "id", "kind" and "payload_size">\\n
    <payload_size bytes of payload (the raw message for kind "inbound"; empty otherwise)>

Only `os` is used here, so the milter's hot path needs no database.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass

MAGIC = b"MXHOOK-SPOOL 1\n"
KINDS = ("inbound", "denied", "event")
SUBDIRS = ("tmp", "new", "bad")


class SpoolError(Exception):
    """A spool file that cannot be read as a record; the message says why."""


@dataclass
class Record:
    id: str
    kind: str
    meta: dict
    payload: bytes = b""


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
    """Group commit for directory fsyncs: concurrent writers (milter threads) share one fsync.

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


def decode(data: bytes) -> Record:
    if not data.startswith(MAGIC):
        raise SpoolError("not an mxhook spool file (bad magic line)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise SpoolError("truncated: no end to the metadata line")
    try:
        meta = json.loads(data[len(MAGIC):end])
    except ValueError as exc:
        raise SpoolError(f"metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SpoolError("metadata is not a JSON object")
    for key in ("id", "kind", "payload_size"):
        if key not in meta:
            raise SpoolError(f"metadata lacks {key!r}")
    if meta["kind"] not in KINDS:
        raise SpoolError(f"unknown record kind {meta['kind']!r}")
    payload = data[end + 1:]
    if len(payload) != meta["payload_size"]:
        raise SpoolError(f"payload is {len(payload)} bytes, metadata says {meta['payload_size']}")
    rid, kind = meta.pop("id"), meta.pop("kind")
    meta.pop("payload_size")
    return Record(id=rid, kind=kind, meta=meta, payload=payload)


def _place(spool_dir: str, record: Record, *, sync: bool) -> str:
    """tmp/<id>.rec (fsynced when `sync`) renamed into new/; removes its tmp file on failure."""
    name = record.id + ".rec"
    tmp_path = os.path.join(spool_dir, "tmp", name)
    new_path = os.path.join(spool_dir, "new", name)
    data = encode(record)
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        # Left by a writer that crashed before its rename (never acknowledged). Only a writer
        # with deterministic ids (the log follower re-reading its lines) meets it: same record.
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


def write(spool_dir: str, record: Record, *, durable: bool = True) -> str:
    """Hand a record over; returns the path in `new/`. Raises OSError on any failure, after
    removing what it half-wrote, so the caller can answer 4xx.

    `durable=False` skips the fsyncs, for records whose loss costs only a log line (denials).
    """
    path = _place(spool_dir, record, sync=durable)
    if durable:
        _fsync_dir(os.path.join(spool_dir, "new"))
    return path


def write_many(spool_dir: str, records: list[Record]) -> list[str]:
    """Hand over several records durably with one directory fsync for all of them."""
    paths = [_place(spool_dir, r, sync=True) for r in records]
    if paths:
        _fsync_dir(os.path.join(spool_dir, "new"))
    return paths


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


def clean_tmp(spool_dir: str, older_than: float = 3600.0) -> int:
    """Remove leftovers of writers that died mid-write (never renamed, so never acknowledged)."""
    tmp_dir = os.path.join(spool_dir, "tmp")
    removed = 0
    now = time.time()
    for name in os.listdir(tmp_dir):
        path = os.path.join(tmp_dir, name)
        try:
            if now - os.stat(path).st_mtime > older_than:
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed
