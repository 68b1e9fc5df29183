"""Event webhooks: events per second from the spool to a loopback receiver, and the spooler's
memory with a large backlog (issue 3 targets: >= 20,000 events/s with batches of 1,000; RSS
<= 150 MB with 1,000,000 events pending).

    python3 bench/events.py [--events 200000] [--backlog 1000000] [--skip-backlog] [--json out.json]
    python3 bench/events.py --dialect NAME [--events N]     the flow phase for one endpoint dialect
    python3 bench/events.py --dialect all [--events N] [--per-request-events M] [--rounds R]
        native, then every event dialect, one after the other in one run: events/s of each and
        its ratio to native, and the pure render rate of each (bench/dialects.py) beside it

The events are what an outbound relay produces: per message a `queued` event (milter: Message-ID,
Subject, a custom header) and a `succeeded` event from the log (relay, DSN, reply, delay), so
every batch is also enriched from the queued events. One endpoint takes every category, with
max_events = 1000 and interval = 1 s. The spooler is the real `mxhook-spooler` process with the
default [spooler] settings (only the retry schedule is scaled down for the backlog phase); its
memory is read from /proc/<pid>/status (VmHWM = peak resident set size).

Phases (one run):
  baseline  spool.write_many of event records (files as the milter and the log follower write
            them: see write_events), records/s: the rate events can be handed in
            at; and bare POSTs of a rendered 1,000-event body to the same receiver, events/s: the
            ceiling the HTTP side allows.
  flow      --events records written to the spool first, then the spooler started: time from
            its READY=1 (sd_notify, on a socket of the bench's) until the receiver has every
            event (ingest + fan-out + batching + enrichment + rendering + POST), events/s and
            the spooler's VmHWM; beside it the time and rate from the process start, whose
            start-up (~0.3-0.6 s: interpreter, imports, state.db) a running daemon pays once.
  backlog   the receiver answers 503 (down) while --backlog events are spooled in chunks of
            100,000 and ingested (they pile up in state.db); then it recovers and the backlog
            drains. VmHWM over the whole phase, and the drain rate.

With --dialect the endpoint posts that dialect's bodies (Mailgun's signed with a signing key);
the receiver counts the events in each body (native `count`, SendGrid's array, one for a
one-per-request dialect) and only the events of the dialect's types are posted (the spooler
fans out by them), so events/s is posted events per second. A one-per-request dialect makes one
HTTP request per event: its flow is bounded by requests/s (the spooler's `workers` posts at a
time, the receiver's answer time), measured beside it as bare requests/s with as many clients:
an ideal client's (raw keep-alive sockets, one send and one receive a request: what the
receiver can take) and webhook.deliver's alone; the flow is printed as a ratio to the first.
The receiver is a process of its own (one thread, keep-alive, minimal parsing), so it takes
CPU from the same 2 cores but not the bench's or the spooler's GIL.

Prints figures and ratios; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook import config  # noqa: E402
from mxhook.store import rulesdb
from mxhook.model import events
from mxhook.model.targets import Destination
from mxhook import spool
from mxhook.model.endpoints import Endpoint  # noqa: E402
from mxhook.payloads.dialects import catalogue  # noqa: E402
from milter_throughput import process_cpu  # noqa: E402

MAILGUN_KEY = "key-bench"  # the signing key of a mailgun endpoint

COUNT_RE = re.compile(rb'"count":(\d+)')


# ---------------------------------------------------------------------------------------------
# A counting receiver (the tests' Receiver keeps every body; a backlog of 1M would not fit). It
# runs in a process of its own, one thread, keep-alive, parsing no more than it must: a
# receiver in the bench's process (http.server, a thread per connection) took ~300 µs of CPU a
# request and shared the GIL with the bench, and capped one-per-request dialects itself.

_EVENTS, _POSTS, _LAST, _NATIVE, _STATUS, _BATCHES = range(6)  # the shared figures
REPLIES = {200: b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}',
           503: b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\ndown"}


def count_events(dialect: str, body: bytes) -> tuple[int, bool]:
    """The events in one body of `dialect`, and whether it was a native body."""
    native = COUNT_RE.search(body, 0, 400)
    if dialect == catalogue.NATIVE:
        return (int(native.group(1)) if native else 0), True
    if native and b'"batch_id"' in body[:400]:
        return int(native.group(1)), True
    if catalogue.DIALECTS[dialect].events_per_request == 1:
        return 1, False
    return body.count(b'"sg_event_id"'), False  # SendGrid's Event Webhook: an array of events


def _serve(listener: socket.socket, dialect: str, shared) -> None:
    """(receiver process) Answer every request on every connection; count a body's events once
    per webhook-id (a request without one every time) when the answer is 200."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    listener.setblocking(False)
    pending: dict[socket.socket, bytes] = {}
    seen: set[bytes] = set()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            try:
                data = sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                pending.pop(sock, None)
                sock.close()
                continue
            buf = pending[sock] + data
            out = []
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17:head.find(b"\r\n", at + 2) if head.find(b"\r\n", at + 2) > 0 else None]) \
                    if at >= 0 else 0
                if len(buf) < end + 4 + length:
                    break
                body = buf[end + 4:end + 4 + length]
                buf = buf[end + 4 + length:]
                status = int(shared[_STATUS])
                shared[_POSTS] += 1
                at = head.find(b"\r\nwebhook-id:")
                key_ = head[at + 13:head.find(b"\r\n", at + 2) if head.find(b"\r\n", at + 2) > 0 else None].strip() \
                    if at >= 0 else None
                if status == 200 and (key_ is None or key_ not in seen):
                    if key_ is not None:
                        seen.add(key_)
                    shared[_BATCHES] += 1
                    n, native = count_events(dialect, body)
                    if native and dialect != catalogue.NATIVE:
                        shared[_NATIVE] += 1
                    shared[_EVENTS] += n
                    shared[_LAST] = time.time()
                out.append(REPLIES[status])
            pending[sock] = buf
            if out:
                try:
                    sock.sendall(b"".join(out))
                except OSError:
                    pass


class Receiver:
    """The counting receiver's process and its figures (read from shared memory): `events`,
    `posts`, `batches` (distinct webhook-ids answered 200), `last` (when the last counted body
    arrived), `native_bodies` (native bodies posted to a dialect endpoint), and `status` (set
    it: what every request is answered)."""

    def __init__(self, dialect: str = catalogue.NATIVE):
        import multiprocessing

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.server_address = self.listener.getsockname()
        self.shared = multiprocessing.RawArray("d", 6)
        self.shared[_STATUS] = 200
        self.proc = multiprocessing.get_context("fork").Process(
            target=_serve, args=(self.listener, dialect, self.shared), daemon=True)
        self.proc.start()

    events = property(lambda self: int(self.shared[_EVENTS]))
    posts = property(lambda self: int(self.shared[_POSTS]))
    batches = property(lambda self: int(self.shared[_BATCHES]))
    last = property(lambda self: self.shared[_LAST])
    native_bodies = property(lambda self: int(self.shared[_NATIVE]))
    status = property(lambda self: int(self.shared[_STATUS]),
                      lambda self, value: self.shared.__setitem__(_STATUS, value))

    def shutdown(self) -> None:
        self.proc.terminate()
        self.proc.join()
        self.listener.close()


def start_receiver(dialect: str = catalogue.NATIVE) -> tuple[Receiver, Receiver]:
    receiver = Receiver(dialect)
    return receiver, receiver


# ---------------------------------------------------------------------------------------------
# Events

def make_events(n: int, start: int = 0) -> list[events.Event]:
    """n events: per message a queued and a succeeded event."""
    out = []
    t0 = time.time_ns() // 1000
    for i in range(start, start + n):
        msg = i // 2
        qid = f"4Xb{msg:09X}"
        at = t0 + i
        rcpt = f"user{msg % 50000}@customer{msg % 97}.example"
        if i % 2 == 0:
            ev = events.Event(
                type="queued", at=events.iso_from_us(at), id=events.event_id(at, "bench", i),
                source="milter", queue_id=qid, recipient=rcpt, sender="app@ours.example",
                header_from="App <app@ours.example>", message_id=f"<{msg}.bench@ours.example>",
                subject=f"Your order {msg} has shipped", client_addr="10.0.0.5",
                auth_user="app", custom_headers={"X-Campaign": f"c-{msg % 10}"})
        else:
            ev = events.Event(
                type="succeeded", at=events.iso_from_us(at), id=events.event_id(at, "bench", i),
                source="log", queue_id=qid, recipient=rcpt, dsn="2.0.0",
                relay=f"mx{msg % 3}.customer{msg % 97}.example[192.0.2.{msg % 250}]:25",
                remote_host=f"mx{msg % 3}.customer{msg % 97}.example",
                reply="250 2.0.0 OK 1732280000 a640c23a62f3a-a9a3f.513 - gsmtp", delay=1.23)
        out.append(ev)
    return out


# Records per spool file, as the producers hand them over under load: the milter appends each
# message's `queued` events to its open segment, sealed every 0.2 s (at the ~500 outbound
# messages/s bench/milter_throughput.py measures through it, ~100 records), the log follower one
# file per chunk of 1,000 log lines (~250 delivery events). --queued-per-file 1 is the layout
# before the milter's events went into its segment (one file per message).
QUEUED_PER_FILE = 100
DELIVERED_PER_FILE = 250


def write_events(spool_dir: str, n: int, start: int = 0, chunk: int = 20000) -> float:
    """Spool n event records in files laid out as the producers write them (spool.write_many:
    one file of several records, fsynced); returns seconds spent."""
    spent = 0.0
    for s in range(start, start + n, chunk):
        made = make_events(min(chunk, start + n - s), s)
        queued = [spool.event_record(e) for e in made if e.type == "queued"]
        delivered = [spool.event_record(e) for e in made if e.type != "queued"]
        t = time.perf_counter()
        for records, per_file in ((queued, QUEUED_PER_FILE), (delivered, DELIVERED_PER_FILE)):
            for i in range(0, len(records), per_file):
                spool.write_many(spool_dir, records[i:i + per_file])
        spent += time.perf_counter() - t
    return spent


# ---------------------------------------------------------------------------------------------
# Setup and measurement helpers

def setup(base: str, url: str, *, retry_time_scale: str = "1.0", dialect: str = catalogue.NATIVE) -> str:
    paths = {"rules_db": f"{base}/rules.db", "state_db": f"{base}/state.db", "spool_dir": f"{base}/spool"}
    spool.ensure_dirs(paths["spool_dir"])
    conf = f"{base}/mxhook.conf"
    with open(conf, "w") as fh:
        fh.write(config.render({"paths": paths, "http": {"allow_networks": "127.0.0.1/32"},
                                "spooler": {"log": "stderr", "log_level": "warning",
                                            "retry_time_scale": retry_time_scale}}))
    with rulesdb.RulesStore(paths["rules_db"]) as store:
        key = MAILGUN_KEY if catalogue.DIALECTS[dialect].signing_key else None
        store.add_endpoint(Endpoint(Destination(url, allow_http=True, retry_interval=10, dialect=dialect,
                                                signing_key=key),
                                    interval=1, max_events=1000))
    return conf


def start_spooler(conf: str, base: str, notify: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))
    if notify:
        env["NOTIFY_SOCKET"] = notify
    return subprocess.Popen([sys.executable, "-m", "mxhook.daemons.spooler", "--config", conf], env=env,
                            stderr=open(f"{base}/spooler.stderr", "ab"))


class ReadyWatch:
    """When the spooler said READY=1 (sd_notify, as to systemd: daemons/systemd.py), on a
    datagram socket of the bench's own: its start-up (interpreter, imports, state.db opened
    and migrated) ends there, and the flow rate is counted from then on as well."""

    def __init__(self, path: str):
        self.path = path
        self.at: float | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while self.at is None:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"READY=1" in data.split(b"\n"):
                self.at = time.time()

    def close(self) -> None:
        self.sock.close()


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children (the spooler's posting
    process: delivery/poster.py)."""
    user, system = process_cpu(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            u, s = process_cpu(child)
        except OSError:
            continue
        user, system = user + u, system + s
    return user, system


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_events(counter: Receiver, n: int, proc: subprocess.Popen, base: str, timeout: float,
                spool_dir: str | None = None) -> float | None:
    """Wait until the receiver has n events; returns when the spool was first seen empty (if
    `spool_dir` is given)."""
    deadline = time.time() + timeout
    emptied = None
    while counter.events < n:
        if spool_dir and emptied is None and spool_empty(spool_dir):
            emptied = time.time()
        if proc.poll() is not None:
            raise SystemExit(f"spooler exited: {open(f'{base}/spooler.stderr').read()[-2000:]}")
        if time.time() > deadline:
            raise SystemExit(f"timeout: receiver has {counter.events} of {n} events")
        time.sleep(0.02)
    if spool_dir and emptied is None:  # emptied within the last poll: ingest was the limit
        emptied = time.time()
    return emptied


def spool_empty(spool_dir: str) -> bool:
    with os.scandir(os.path.join(spool_dir, "new")) as it:
        return next(it, None) is None


# ---------------------------------------------------------------------------------------------
# Phases

def baseline(tmp: str, url: str, n_spool: int = 20000, posts: int = 40) -> dict:
    import requests

    from mxhook.payloads.registry import render_events

    base = os.path.join(tmp, "baseline")
    spool.ensure_dirs(f"{base}/spool")
    spent = write_events(f"{base}/spool", n_spool)
    body = render_events(1, [e.to_dict() for e in make_events(1000)], batch_id="evb_b",
                         endpoint_id=1).body
    session = requests.Session()
    session.post(url, data=body, headers={"Content-Type": "application/json", "webhook-id": "warm"})
    t = time.perf_counter()
    for i in range(posts):
        session.post(url, data=body, headers={"Content-Type": "application/json",
                                              "webhook-id": f"evb_base_{i}"}).close()
    post_s = time.perf_counter() - t
    shutil.rmtree(base)
    return {"spool_write_per_s": n_spool / spent, "bare_post_events_per_s": posts * 1000 / post_s,
            "body_bytes_per_1000": len(body)}


def posted(dialect: str, n: int) -> int:
    """How many of the first n bench events an endpoint of `dialect` is posted (its types)."""
    types = catalogue.DIALECTS[dialect].event_types
    return sum(1 for i in range(n) if types is None or ("queued" if i % 2 == 0 else "succeeded") in types)


def flow(tmp: str, n: int, dialect: str = catalogue.NATIVE) -> dict:
    server, counter = start_receiver(dialect)
    base = os.path.join(tmp, f"flow-{dialect}")
    conf = setup(base, f"http://127.0.0.1:{server.server_address[1]}/ev", dialect=dialect)
    write_events(f"{base}/spool", n)
    os.sync()  # nothing of the writing left in the page cache for the spooler's commits to wait on
    expected = posted(dialect, n)
    ready = ReadyWatch(f"{base}/notify")
    proc = start_spooler(conf, base, ready.path)
    started = time.time()
    try:
        emptied = wait_events(counter, expected, proc, base, timeout=max(120.0, n / 200),
                              spool_dir=f"{base}/spool")
        elapsed = counter.last - started
        if ready.at is None:
            raise SystemExit("the spooler never said READY=1 (is python3-systemd installed?)")
        running = counter.last - ready.at
        mem = proc_status(proc.pid)
        user, system = tree_cpu(proc.pid)
    finally:
        stop(proc)
        server.shutdown()
        ready.close()
    shutil.rmtree(base)
    return {"dialect": dialect, "events": n, "posted": expected, "seconds": elapsed,
            "startup_s": elapsed - running, "events_per_s": expected / running,
            "events_per_s_from_start": expected / elapsed, "ingested_per_s": n / running, "posts": counter.posts,
            "native_bodies": counter.native_bodies,
            "vmhwm_mb": mem["VmHWM"], "cpu_user_us": user * 1e6 / expected,
            "cpu_sys_us": system * 1e6 / expected,
            "spool_emptied_per_s": n / (emptied - started) if emptied else None}


def backlog(tmp: str, n: int, chunk: int = 100_000) -> dict:
    server, counter = start_receiver()
    counter.status = 503
    base = os.path.join(tmp, "backlog")
    conf = setup(base, f"http://127.0.0.1:{server.server_address[1]}/ev", retry_time_scale="0.01")
    proc = start_spooler(conf, base)
    rss_samples = []
    try:
        written = 0
        t_ingest = time.time()
        while written < n:
            size = min(chunk, n - written)
            write_events(f"{base}/spool", size, written)
            os.sync()  # as in flow(): real writers fsync each file
            written += size
            while not spool_empty(f"{base}/spool"):
                if proc.poll() is not None:
                    raise SystemExit(open(f"{base}/spooler.stderr").read()[-2000:])
                time.sleep(0.2)
            rss_samples.append(proc_status(proc.pid)["VmRSS"])
            print(f"  backlog: {written:,} events spooled and ingested, spooler RSS "
                  f"{rss_samples[-1]} MB", flush=True)
        ingest_s = time.time() - t_ingest
        before = proc_status(proc.pid)
        db_mb = sum(os.path.getsize(f"{base}/{f}") for f in os.listdir(base) if f.startswith("state.db")) / 2**20
        counter.status = 200
        t = time.time()
        wait_events(counter, n, proc, base, timeout=max(300.0, n / 500))
        drain_s = counter.last - t
        after = proc_status(proc.pid)
    finally:
        stop(proc)
        server.shutdown()
    shutil.rmtree(base)
    return {"events": n, "rss_with_backlog_mb": before["VmRSS"], "vmhwm_mb": after["VmHWM"],
            "rss_after_drain_mb": after["VmRSS"], "state_db_mb": round(db_mb),
            "drain_events_per_s": n / drain_s, "spool+ingest_s": ingest_s,
            "posts_while_down": counter.posts - counter.batches}


# ---------------------------------------------------------------------------------------------
# Dialects

def one_event_body(dialect: str):
    """The body of one `succeeded` bench event in `dialect` (a Rendered)."""
    from mxhook.payloads.dialects import EventContext
    from mxhook.payloads.registry import render_events

    event = make_events(2)[1].to_dict()
    if dialect == catalogue.NATIVE:
        return render_events(1, [event], batch_id="evb_b", endpoint_id=1)
    module = __import__(f"mxhook.payloads.dialects.{dialect}", fromlist=["event_request"])
    ctx = EventContext(request_id="evb_b", now=time.time(), nonce="n" * 50, endpoint_id=1,
                       signing_key=MAILGUN_KEY)
    return module.event_request([event], ctx)


def _post_many(url: str, body: bytes, ctype: str, clients: int, n: int, mode: str, out) -> None:
    """(another process) `clients` threads post `body` n times in all over keep-alive
    connections; puts requests/s. `ideal`: each request one send of head and body and one
    receive of the answer on a raw socket (the least a Python client can do: what the receiver
    can take); `deliver`: mxhook's own post path (webhook.deliver with its guarded session)."""
    from urllib.parse import urlsplit

    from mxhook.delivery import webhook
    from mxhook.model.targets import Target

    parts = urlsplit(url)
    target = Target(url, allow_http=True, kind="endpoint", id=1, name="bare")

    def ideal(count):
        sock = socket.create_connection((parts.hostname, parts.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n").encode()
        for i in range(count):
            sock.sendall(b"%swebhook-id: bare-%d-%d\r\n\r\n%s" % (head, threading.get_ident(), i, body))
            if not sock.recv(65536).startswith(b"HTTP/1.1 200"):
                raise SystemExit("the receiver did not answer 200")
        sock.close()

    def deliver(count):
        session = webhook.make_session("127.0.0.1/32")
        for i in range(count):
            outcome = webhook.deliver(session, target, body, ctype, f"bare-{threading.get_ident()}-{i}",
                                      user_agent="mxhook-bench", max_response_bytes=4096)
            if outcome.status != "succeeded":
                raise SystemExit(f"bare deliver: {outcome}")

    threads = [threading.Thread(target=ideal if mode == "ideal" else deliver, args=(n // clients,))
               for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put(clients * (n // clients) / (time.perf_counter() - t))


def bare_requests_per_s(body, clients: int, n: int = 8000) -> dict[str, float]:
    """Requests/s that `clients` keep-alive clients (threads of another process, as the
    spooler's workers are) get from the bench receiver, posting `body` (a Rendered): `ideal`
    (what the receiver can take: the ceiling of a one-per-request dialect) and `deliver`
    (mxhook's post path alone, no spool or state.db)."""
    import multiprocessing

    rates = {}
    for mode in ("ideal", "deliver"):
        server, _ = start_receiver()
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_post_many, args=(f"http://127.0.0.1:{server.server_address[1]}/ev",
                                                     body.body, body.content_type, clients, n, mode, out))
        child.start()
        rates[mode] = out.get(timeout=300)
        child.join()
        server.shutdown()
    return rates


def render_rates(n: int) -> dict[str, float]:
    """bench/dialects.py's pure render rate of each renderer (events/s), on its own events."""
    import dialects as render_bench

    measured = render_bench.measure(render_bench.make_events(n), batch=1000, rounds=3)
    return {name: rate for name, (rate, _) in measured.items()}


def run_dialects(tmp: str, names: list[str], n: int, per_request_n: int, results: dict,
                 rounds: int = 1) -> None:
    """The flow phase for each of `names` (native first when it is there), one after another,
    `rounds` times (round after round, so the machine's slow spells fall on every dialect),
    and a table of each dialect's median round: posted events/s (with the rounds' lowest and
    highest), the ratio to native, the bare requests/s ceiling of the one-per-request ones,
    and the pure render rate."""
    workers = int(config.DEFAULTS["spooler"]["workers"])  # the bench's spooler runs the defaults
    rows = results.setdefault("dialects", {})
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for name in [name for _ in range(rounds) for name in names]:
        one = catalogue.DIALECTS[name].events_per_request == 1
        f = flow(tmp, per_request_n if one else n, name)
        if one:
            bare = bare_requests_per_s(one_event_body(name), workers)
            f["bare_requests_per_s"], f["bare_deliver_per_s"] = bare["ideal"], bare["deliver"]
        runs[name].append(f)
        ranked = sorted(runs[name], key=lambda r: r["events_per_s"])
        rows[name] = dict(ranked[(len(ranked) - 1) // 2], rounds=[r["events_per_s"] for r in runs[name]])
        extra = (f", bare requests/s {f['bare_requests_per_s']:,.0f} (ideal client), "
                 f"{f['bare_deliver_per_s']:,.0f} (webhook.deliver); flow / ideal "
                 f"{f['events_per_s'] / f['bare_requests_per_s']:.2f}") if one else ""
        warn = f"  ({f['native_bodies']} NATIVE bodies: this spooler does not post dialects)" \
            if f["native_bodies"] else ""
        print(f"  {name}: {f['posted']:,} of {f['events']:,} events posted in "
              f"{f['seconds'] - f['startup_s']:.2f} s after READY = {f['events_per_s']:,.0f} events/s "
              f"({f['seconds']:.2f} s and {f['events_per_s_from_start']:,.0f}/s from the start, "
              f"{f['startup_s']:.2f} s start-up), {f['posts']:,} POSTs, spooler+poster CPU "
              f"{f['cpu_user_us'] + f['cpu_sys_us']:.0f} µs/event{extra}{warn}", flush=True)
    results["render"] = render = render_rates(20_000)
    native = rows.get(catalogue.NATIVE, {}).get("events_per_s")
    print(f"\n{'dialect':10} {'events/s':>9} {'/ native':>8} {'through/s':>9} {'POSTs':>7} {'µs CPU/ev':>9} "
          f"{'bare req/s':>10} {'/ bare':>6} {'deliver/s':>9} {'render ev/s':>11}")
    for name, f in rows.items():
        ratio = f"{f['events_per_s'] / native:8.2f}" if native else f"{'-':>8}"
        if "bare_requests_per_s" in f:
            bare = (f"{f['bare_requests_per_s']:10,.0f} {f['events_per_s'] / f['bare_requests_per_s']:6.2f} "
                    f"{f['bare_deliver_per_s']:9,.0f}")
        else:
            bare = f"{'-':>10} {'-':>6} {'-':>9}"
        flag = "" if f["events_per_s"] >= (20_000 if name == catalogue.NATIVE else 10_000) else "  below target"
        spread = (f"  (rounds {min(f['rounds']):,.0f}-{max(f['rounds']):,.0f})"
                  if len(f["rounds"]) > 1 else "")
        print(f"{name:10} {f['events_per_s']:9,.0f} {ratio} {f['ingested_per_s']:9,.0f} {f['posts']:7,} "
              f"{f['cpu_user_us'] + f['cpu_sys_us']:9.0f} {bare} {render.get(name, 0):11,.0f}{flag}{spread}")
    print("events/s: events posted per second after READY; through/s: events the spooler took in per "
          "second meanwhile (a dialect without a name for `queued` posts half of them); µs CPU/ev: "
          "the spooler's and its posting process's, per posted event")
    print("bare req/s: an ideal client (one send, one receive a request, raw keep-alive sockets) with "
          f"{workers} threads; / bare: events/s ÷ that; deliver/s: webhook.deliver alone, same threads")
    print("targets: native >= 20,000 events/s, no dialect below 10,000")


def main() -> int:
    global QUEUED_PER_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--skip-backlog", action="store_true")
    ap.add_argument("--dir", metavar="DIR", help="where spool and databases go (default: the "
                    "system temp dir; /dev/shm takes the disk out of the figures)")
    ap.add_argument("--queued-per-file", type=int, default=QUEUED_PER_FILE,
                    help=f"queued events per spool file (default {QUEUED_PER_FILE}, a sealed milter segment)")
    ap.add_argument("--dialect", metavar="NAME", help="only the flow phase, for an endpoint of this "
                    f"dialect; `all`: native and every event dialect ({', '.join(catalogue.names(catalogue.EVENTS))})")
    ap.add_argument("--per-request-events", type=int, default=20_000, metavar="N",
                    help="events spooled for a one-per-request dialect with --dialect (default 20,000)")
    ap.add_argument("--rounds", type=int, default=1, metavar="R",
                    help="with --dialect: flow each dialect R times, round after round; the table "
                         "gives each one's median round and the range (default 1)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if args.dialect and args.dialect != "all":
        catalogue.lookup(args.dialect, catalogue.EVENTS)
    QUEUED_PER_FILE = args.queued_per_file
    tmp = tempfile.mkdtemp(prefix="mxhook-bench-events-", dir=args.dir)
    results = {"python": platform.python_version(), "cpus": os.cpu_count(), "dir": tmp,
               "queued_per_file": QUEUED_PER_FILE,
               "loadavg_start": os.getloadavg()}
    print(f"{platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"files under {tmp}", flush=True)
    try:
        if args.dialect:
            names = list(catalogue.names(catalogue.EVENTS)) if args.dialect == "all" else [args.dialect]
            run_dialects(tmp, names, args.events, args.per_request_events, results, max(1, args.rounds))
        else:
            server, _ = start_receiver()
            results["baseline"] = b = baseline(tmp, f"http://127.0.0.1:{server.server_address[1]}/ev")
            server.shutdown()
            print(f"baseline: spool.write {b['spool_write_per_s']:,.0f} records/s; bare POST of 1,000-event "
                  f"bodies ({b['body_bytes_per_1000'] / 1024:.0f} KiB) {b['bare_post_events_per_s']:,.0f} events/s",
                  flush=True)
            results["flow"] = f = flow(tmp, args.events)
            print(f"flow:     {f['events']:,} events spool -> receiver in {f['seconds']:.1f} s = "
                  f"{f['events_per_s']:,.0f} events/s ({f['posts']} POSTs); spooler VmHWM {f['vmhwm_mb']} MB",
                  flush=True)
            print(f"          spooler CPU per event (start-up included): {f['cpu_user_us']:.0f} µs user + "
                  f"{f['cpu_sys_us']:.0f} µs system", flush=True)
            if f["spool_emptied_per_s"]:
                print(f"          (the spool was ingested at {f['spool_emptied_per_s']:,.0f} events/s)", flush=True)
            print(f"          = {f['events_per_s'] / b['spool_write_per_s']:.2f} x the spool write rate, "
                  f"{f['events_per_s'] / b['bare_post_events_per_s']:.2f} x the bare POST rate; "
                  f"target >= 20,000 events/s", flush=True)
            if not args.skip_backlog:
                results["backlog"] = k = backlog(tmp, args.backlog)
                print(f"backlog:  {k['events']:,} events pending in state.db ({k['state_db_mb']} MB): spooler RSS "
                      f"{k['rss_with_backlog_mb']} MB, peak (VmHWM) {k['vmhwm_mb']} MB; target <= 150 MB", flush=True)
                print(f"          drained at {k['drain_events_per_s']:,.0f} events/s after the receiver recovered "
                      f"({k['posts_while_down']} POSTs answered 503 meanwhile)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load at the end {os.getloadavg()[0]:.2f} (other work on the machine slows every figure)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
