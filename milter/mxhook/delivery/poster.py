"""A posting process: the HTTP posts (sign + send + read the answer) of runs of small requests,
in a second process, so that they use the machine's second core.

Why: for "one event per request" payload dialects the spooler is bound by its one interpreter
(~300 µs of CPU a posted event, under one GIL: bookkeeping, rendering, and the post itself).
The post (webhook.deliver: ~50 µs of CPU a request, more under load) costs the calling process
~8 µs a request when it is sent through here in runs of 32 (bench/poster.py); the rest runs in
the child, on the other core.

    poster = PostingProcess(allow_networks=settings.allow_networks, connections=4)
    outcomes = poster.post_many(target, [(body, content_type, webhook_id), ...],
                                keys=keyset, user_agent="mxhook/0.1", max_response_bytes=4096)
    ...
    poster.close()

How:
- the parent side (`PostingProcess`) is shared by the spooler's worker threads. A call sends
  one message holding all its requests (a *job*) to the child and blocks its thread (not the
  GIL) on an Event until the one reply with all their outcomes comes back. ONE reader thread
  reads the replies and completes the waiting calls (job id -> waiter); writes to the child
  are serialised by a lock.
- the child (`python -m mxhook.delivery.poster`, started lazily by subprocess.Popen: never a
  fork of the many-threaded spooler) reads jobs from its stdin and posts them with
  `webhook.deliver` -- the one HTTP client, with its SSRF guard, deadlines and signing -- from
  a pool of `connections` threads, each with its own guarded session (kept-alive connections
  per thread). A job's requests are spread over the pool (a job is queued once per thread it
  can use; each thread takes the job's next request until none is left), several jobs may be
  in the child at once, and a job's reply is written when its last request is done, outcomes
  in the order of the job's list.
- framing: a 12-byte header (pickle length, job id) and a pickle, both ways. Pickle is fine
  here: a pipe only our own two processes hold. The job id is outside the pickle so that a job
  the child cannot read is still answered.
- the child finds the same mxhook as the parent: PYTHONPATH gets the directory holding the
  parent's mxhook package first (a PYTHONPATH=milter checkout and an installed package alike),
  and `-P` keeps the current directory off sys.path.

Failures never raise out of `post_many`: every request of a call gets an Outcome. If the child
cannot be started, dies (crash, kill -9), stops reading its jobs (broken pipe) or gives no
answer within a safety bound (each request is bounded by its target's timeout in deliver(); the
bound allows for every request queued in the child before this job, plus SAFETY_MARGIN), the
calls waiting get `Outcome("deferred", error="posting process ...: <why>")` (retried later by
the spooler's schedule, as any deferred post) and the next call starts a new child.

Lifetime: the child ignores SIGINT and SIGTERM -- under systemd a stop signals the whole cgroup,
and the spooler drains its in-flight posts before it stops, through this child -- and ends when
its stdin reaches EOF: `close()` closes it, and so does the kernel when the parent dies, so the
child never outlives the parent. At EOF the child finishes the requests it is sending (each
bounded by its target's timeout), answers the requests it has not started as deferred "not
sent", writes the replies it can, and exits. `close()` waits a few seconds for that, then
kills the child; calls still waiting get deferred outcomes.

The child logs problems to its stderr, the daemon's (its journal), prefixed
`mxhook-spooler[poster]`. Secrets -- signing keys, Basic auth and Bearer tokens in the Target --
never appear in a log line, nor in the command line (they travel in the pickled jobs only).
"""
from __future__ import annotations

import signal

if __name__ == "__main__":
    # The child, as early as can be (before the imports below): a stop signalled to the whole
    # cgroup must not cut the spooler's draining posts short (see main()).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

import argparse
import logging
import math
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
import traceback

from mxhook.config import parse_networks
from mxhook.delivery import signing, webhook
from mxhook.model.targets import DEFAULT_TIMEOUT, Target

log = logging.getLogger("mxhook.delivery.poster")  # the same name in the child (run as __main__)

LOG_PREFIX = "mxhook-spooler[poster]"
SAFETY_MARGIN = 30.0  # seconds a job's answer may come after its requests' own time bounds
CLOSE_WAIT = 5.0  # seconds close() waits for the child to finish what it is sending
RESTART_PAUSE = 5.0  # seconds between starts of a child that fails as soon as it starts

_FRAME = struct.Struct("!IQ")  # pickle length, job id
_PICKLE = pickle.HIGHEST_PROTOCOL  # both ends run the same interpreter

Request = tuple[bytes, str, str]  # (body, content_type, webhook_id)


def _deferred(count: int, why: str) -> list[webhook.Outcome]:
    return [webhook.Outcome("deferred", error=f"posting process {why}") for _ in range(count)]


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


# ---------------------------------------------------------------------------------------------
# Parent side

class _Waiter:
    """A call waiting for its job's reply."""

    __slots__ = ("count", "timeout", "done", "outcomes")

    def __init__(self, count: int, timeout: float):
        self.count, self.timeout = count, timeout
        self.done = threading.Event()
        self.outcomes: list[webhook.Outcome] | None = None

    def finish(self, outcomes: list[webhook.Outcome]) -> None:
        if self.outcomes is None:
            self.outcomes = outcomes
            self.done.set()


class _Child:
    """One running child: its process, its reader thread and the jobs it owes an answer."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True, env=env)
        self.lock = threading.Lock()  # pending, dead
        self.write_lock = threading.Lock()  # one frame at a time on the child's stdin
        self.pending: dict[int, _Waiter] = {}
        self.dead: str | None = None  # why, once the child is of no more use
        self.answered = False  # it replied at least once (it did start)
        self.reader = threading.Thread(target=self._read, name=f"poster-reader:{self.proc.pid}",
                                       daemon=True)
        self.reader.start()

    # -- the reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        stream = self.proc.stdout
        why, kill = None, False
        try:
            while True:
                head = stream.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    break
                size, job_id = _FRAME.unpack(head)
                data = stream.read(size)
                if len(data) < size:
                    break
                with self.lock:
                    waiter = self.pending.pop(job_id, None)
                    self.answered = True
                if waiter is None:
                    continue  # a job the caller gave up on (safety bound)
                try:
                    outcomes = pickle.loads(data)
                except Exception as exc:  # noqa: BLE001 - a reply we cannot read is that job's failure
                    outcomes = _deferred(waiter.count, f"sent an unreadable reply ({type(exc).__name__})")
                if isinstance(outcomes, str):  # the child could not take the job: why
                    outcomes = _deferred(waiter.count, outcomes)
                elif not isinstance(outcomes, list) or len(outcomes) != waiter.count:
                    outcomes = _deferred(waiter.count, "sent a reply of the wrong length")
                waiter.finish(outcomes)
        except Exception as exc:  # noqa: BLE001 - no more answers can be read: the child is of no use
            why, kill = f"could not be read from ({exc.__class__.__name__}); killed", True
        self.fail(why, kill=kill)
        # reap it and close our ends of its pipes (a writer may still hold the stdin lock for
        # an instant: its write fails on the closed pipe, it cannot block)
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self.write_lock:
            _close(self.proc.stdin)
        _close(stream)

    # -- failing ---------------------------------------------------------------------------------
    def fail(self, why: str | None, kill: bool = False) -> None:
        """The child is of no more use: kill it if asked, and give every call still waiting
        deferred outcomes saying why (by default: how the process ended)."""
        if kill:
            try:
                self.proc.kill()
            except OSError:
                pass
        if why is None:
            try:
                self.proc.wait(timeout=2.0)  # EOF came: the exit status is at most moments away
            except subprocess.TimeoutExpired:
                pass
            why = _exit_text(self.proc.poll())
        with self.lock:
            if self.dead is None:
                self.dead = why
            why, waiting = self.dead, list(self.pending.values())
            self.pending.clear()
        for waiter in waiting:
            waiter.finish(_deferred(waiter.count, why))

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, job_id: int, frame: bytes, waiter: _Waiter, connections: int) -> float | None:
        """Register the job and send it; the seconds to wait for its reply at most (None: the
        child is dead and the waiter has its outcomes)."""
        with self.lock:
            if self.dead is not None:
                waiter.finish(_deferred(waiter.count, self.dead))
                return None
            self.pending[job_id] = waiter
            # Every request queued in the child before this job may take its whole time bound
            # first, `connections` at a time.
            queued = sum(w.count for w in self.pending.values())
            slowest = max(w.timeout for w in self.pending.values())
        bound = math.ceil(queued / connections) * (slowest + webhook.DEADLINE_GRACE) + SAFETY_MARGIN
        try:
            with self.write_lock:
                self.proc.stdin.write(frame)
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdin closed
            try:
                self.proc.wait(timeout=1.0)
                self.fail(f"{_exit_text(self.proc.returncode)} (writing a job: {exc.__class__.__name__})")
            except subprocess.TimeoutExpired:
                self.fail(f"does not read its jobs ({exc.__class__.__name__}); killed", kill=True)
            return None
        return bound

    def abandon(self, job_id: int, waiter: _Waiter, bound: float) -> None:
        """The reply did not come within the bound: the child is wedged. Kill it (the calls
        waiting on it get deferred outcomes) unless the reply came meanwhile."""
        with self.lock:
            if waiter.outcomes is not None or self.dead is not None:
                return
        log.error("posting process %d gave no answer within %.0f s; killing it", self.proc.pid, bound)
        self.fail(f"gave no answer within {bound:.0f} s; killed (the next post starts a new one)", kill=True)

    def stop(self, wait: float) -> None:
        """Close the child's stdin (it finishes what it is sending, answers the rest as not
        sent, and exits), wait up to `wait` seconds, then kill it."""
        deadline = time.monotonic() + wait
        with self.lock:  # no new jobs; what is still waiting after the kill was "closed"
            if self.dead is None:
                self.dead = "closed"
        # A writer blocked on a full pipe holds the lock; only killing the child frees it.
        if self.write_lock.acquire(timeout=wait):
            try:
                _close(self.proc.stdin)
            finally:
                self.write_lock.release()
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5.0)  # it reads the last replies, then fails what is left
        self.fail("closed")


def _close(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


class PostingProcess:
    """The parent side of the posting process (module docstring). Thread-safe."""

    def __init__(self, allow_networks=(), connections: int = 4):
        # parsed here: a bad allowlist is the config's error, not every post's
        networks = parse_networks(allow_networks if isinstance(allow_networks, str)
                                  else [str(n) for n in allow_networks])
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.connections = int(connections)
        self._argv = [sys.executable, "-P", "-m", "mxhook.delivery.poster",
                      "--connections", str(self.connections),
                      "--allow-networks", " ".join(str(n) for n in networks)]
        self._lock = threading.Lock()  # _child, _next_id, _closed
        self._child: _Child | None = None
        self._next_id = 0
        self._closed = False
        self._not_before = 0.0  # no restart before this (monotonic): a child failing at start
        self._last_failure = ""

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first post, after close or a failure)."""
        child = self._child
        return child.proc.pid if child is not None and child.dead is None else None

    def _env(self) -> dict[str, str]:
        import mxhook

        # the directory holding the mxhook package we run: the child imports the same one
        top = os.path.dirname(os.path.dirname(os.path.abspath(mxhook.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [top, env.get("PYTHONPATH")]))
        return env

    def _running_child(self) -> tuple[_Child | None, str]:
        """The child to send a job to, started if need be; or None and why not."""
        with self._lock:
            if self._closed:
                return None, "closed"
            child = self._child
            if child is not None and child.dead is None:
                return child, ""
            if child is not None:
                # a child that dies by itself before it ever answered will do so again:
                # do not start one per call (each costs ~0.1 s of CPU)
                quick = not child.answered and (child.proc.returncode or 0) > 0
                if quick:
                    self._not_before = time.monotonic() + RESTART_PAUSE
                    self._last_failure = f"{child.dead} at its start (see the log)"
                self._child = None
            if time.monotonic() < self._not_before:
                return None, self._last_failure
            try:
                self._child = _Child(self._argv, self._env())
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self._not_before = time.monotonic() + RESTART_PAUSE
                self._last_failure = f"could not be started: {exc}"
                return None, self._last_failure
            return self._child, ""

    def post_many(self, target: Target, requests: list[Request], *,
                  keys: signing.KeySet | None, user_agent: str, max_response_bytes: int) -> list[webhook.Outcome]:
        """POST each (body, content_type, webhook_id) to `target` (one request each), in the
        child process; one Outcome per request, in the order given. Blocks the calling thread
        (not the GIL) until all are answered. Never raises for network or HTTP trouble, nor for
        the child's: see the module docstring."""
        if not requests:
            return []
        child, why = self._running_child()
        if child is None:
            return _deferred(len(requests), why)
        with self._lock:
            self._next_id += 1
            job_id = self._next_id
        timeout = float(target.timeout or DEFAULT_TIMEOUT)
        waiter = _Waiter(len(requests), timeout)
        try:
            data = pickle.dumps((target, requests, keys, user_agent, max_response_bytes), _PICKLE)
        except Exception as exc:  # noqa: BLE001 - not a post's trouble, but must not kill the worker
            return _deferred(len(requests), f"cannot take the job: {type(exc).__name__}")
        bound = child.submit(job_id, _FRAME.pack(len(data), job_id) + data, waiter, self.connections)
        if bound is not None and not waiter.done.wait(bound):
            child.abandon(job_id, waiter, bound)
            waiter.done.wait()  # abandon() or the reader has finished it
        return waiter.outcomes

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """End the child: it finishes the requests it is sending (up to `wait` seconds, then it
        is killed); calls still waiting get deferred outcomes. Later calls get deferred
        outcomes ("posting process closed") at once."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.stop(wait)

    def __enter__(self) -> "PostingProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# The child


class _Job:
    """A job in the child: its requests, the next one to start, the outcomes so far."""

    __slots__ = ("id", "target", "requests", "keys", "user_agent", "max_bytes",
                 "outcomes", "next", "left", "lock")

    def __init__(self, job_id, target, requests, keys, user_agent, max_bytes):
        self.id, self.target, self.requests, self.keys = job_id, target, requests, keys
        self.user_agent, self.max_bytes = user_agent, max_bytes
        self.outcomes: list = [None] * len(requests)
        self.next = 0
        self.left = len(requests)
        self.lock = threading.Lock()


class _Server:
    """The child's work: jobs from `inp`, replies to `out`, `connections` posting threads."""

    def __init__(self, inp, out, allow_networks, connections: int):
        self.inp, self.out = inp, out
        self.allow_networks = allow_networks
        self.connections = connections
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.out_lock = threading.Lock()
        self.closing = False  # stdin reached EOF: start no more requests
        self.parent_gone = False  # a reply could not be written

    def run(self) -> int:
        threads = [threading.Thread(target=self._post, name=f"poster-{i}", daemon=True)
                   for i in range(self.connections)]
        for thread in threads:
            thread.start()
        try:
            self._read_jobs()
        except Exception:  # noqa: BLE001 - log where, never what (a message may quote a secret)
            log.error("reading jobs failed: %s", _where())
        self.closing = True
        for _ in threads:
            self.jobs.put(None)
        for thread in threads:
            thread.join()  # each request in flight is bounded by its target's timeout
        return 0

    def _read_jobs(self) -> None:
        while True:
            head = self.inp.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return  # EOF: the parent closed or died
            size, job_id = _FRAME.unpack(head)
            data = self.inp.read(size)
            if len(data) < size:
                return
            try:
                target, requests, keys, user_agent, max_bytes = pickle.loads(data)
            except Exception as exc:  # noqa: BLE001
                log.error("job %d cannot be read: %s", job_id, type(exc).__name__)
                self._reply(job_id, f"could not read the job ({type(exc).__name__})")
                continue
            job = _Job(job_id, target, requests, keys, user_agent, max_bytes)
            if not requests:
                self._reply(job_id, [])
                continue
            for _ in range(min(self.connections, len(requests))):
                self.jobs.put(job)  # once per thread that may work on it

    def _post(self) -> None:
        session = webhook.make_session(self.allow_networks)
        while True:
            job = self.jobs.get()
            if job is None:
                return
            while True:
                with job.lock:
                    index = job.next
                    if index >= len(job.requests):
                        break
                    job.next = index + 1
                outcome = self._outcome(session, job, index)
                with job.lock:
                    job.outcomes[index] = outcome
                    job.left -= 1
                    last = job.left == 0
                if last:
                    self._reply(job.id, job.outcomes)

    def _outcome(self, session, job: _Job, index: int) -> webhook.Outcome:
        if self.closing:
            return webhook.Outcome("deferred", error="posting process closing: not sent")
        body, content_type, webhook_id = job.requests[index]
        try:
            return webhook.deliver(session, job.target, body, content_type, webhook_id,
                                   user_agent=job.user_agent, max_response_bytes=job.max_bytes,
                                   keys=job.keys)
        except Exception as exc:  # noqa: BLE001 - deliver() should not raise; one post's bug stays one post's
            log.error("post %s raised %s: %s", webhook_id, type(exc).__name__, _where())
            return webhook.Outcome("deferred", error=f"posting process: internal error ({type(exc).__name__})")

    def _reply(self, job_id: int, outcomes: list) -> None:
        data = pickle.dumps(outcomes, _PICKLE)
        with self.out_lock:
            if self.parent_gone:
                return
            try:
                self.out.write(_FRAME.pack(len(data), job_id) + data)
                self.out.flush()
            except (OSError, ValueError):
                self.parent_gone = True  # it died or closed: nothing to tell anyone


def _where() -> str:
    """Where the exception being handled was raised (file:line of each frame), without its
    message or any value."""
    frames = traceback.extract_tb(sys.exc_info()[2])
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames[-4:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mxhook.delivery.poster",
                                     description="the spooler's posting process (started by it)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--allow-networks", default="")
    args = parser.parse_args(argv)
    # the spooler drains its in-flight posts on SIGTERM through us: keep going until stdin closes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format=f"{LOG_PREFIX} %(levelname)s: %(message)s")
    # Replies go to our own copy of the stdout pipe; fd 1 becomes stderr, so that a stray
    # print() cannot corrupt the framing.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb")
    server = _Server(inp, out, parse_networks(args.allow_networks), max(1, args.connections))
    code = server.run()
    try:
        out.close()
    except OSError:
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
