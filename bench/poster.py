"""The posting process (mxhook.delivery.poster) against in-process posting: requests/s and CPU
µs per request, for one-event-per-request bodies.

    python3 bench/poster.py [--requests 20000] [--rounds 2] [--dialect msndr] [--connections 4]
                            [--no-sign]

  (a) in-process   webhook.deliver from 8 threads of the bench process (each its own guarded
                   session): the spooler's posting today.
  (b) poster       PostingProcess.post_many with jobs of 32 requests, called from 4 threads of the
                   bench process; the child posts with --connections threads.

Against bench/events.py's counting receiver (a process of its own, one thread, keep-alive), on
loopback. Each request is one `succeeded` event in --dialect's body, signed with one `whsec_`
secret (Standard Webhooks, as a signed endpoint is) unless --no-sign. CPU: the bench process
from getrusage (all its threads), the child and the receiver from /proc/<pid>/stat. The rounds
alternate a, b, a, b, ... on a shared machine; the medians are printed with the ratio b/a.

What matters for the spooler is (b)'s *parent* CPU per request: what stays on the spooler's GIL
when its posts go to the child. Prints figures; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

import events as events_bench  # noqa: E402  (its counting receiver and bodies)
from milter_throughput import process_cpu  # noqa: E402
from mxhook.delivery import signing, webhook  # noqa: E402
from mxhook.delivery.poster import PostingProcess  # noqa: E402
from mxhook.model.targets import Target  # noqa: E402

ALLOW = "127.0.0.1/32"
USER_AGENT = "mxhook-bench"
MAX_RESPONSE_BYTES = 4096
JOB = 32  # requests per post_many call
CALLERS = 4  # threads calling post_many
DELIVER_THREADS = 8


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_cpu(pid: int) -> float:
    return sum(process_cpu(pid))


def run_threads(count: int, work) -> float:
    """Run work(i) in `count` threads; the wall seconds."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def check(outcome: webhook.Outcome) -> None:
    if outcome.status != "succeeded":
        raise SystemExit(f"bench post: {outcome}")


def in_process(target, body, n, keys) -> float:
    """(a) webhook.deliver from DELIVER_THREADS threads; the wall seconds."""
    per_thread = n // DELIVER_THREADS

    def work(t):
        session = webhook.make_session(ALLOW)
        for i in range(per_thread):
            check(webhook.deliver(session, target, body.body, body.content_type, f"a-{t}-{i}-{time.time_ns()}",
                                  user_agent=USER_AGENT, max_response_bytes=MAX_RESPONSE_BYTES, keys=keys))

    return run_threads(DELIVER_THREADS, work)


def via_poster(poster, target, body, n, keys) -> float:
    """(b) post_many of JOB requests from CALLERS threads; the wall seconds."""
    calls = n // (CALLERS * JOB)

    def work(t):
        stamp = time.time_ns()
        for c in range(calls):
            requests = [(body.body, body.content_type, f"b-{stamp}-{t}-{c}-{i}") for i in range(JOB)]
            for outcome in poster.post_many(target, requests, keys=keys, user_agent=USER_AGENT,
                                            max_response_bytes=MAX_RESPONSE_BYTES):
                check(outcome)

    return run_threads(CALLERS, work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dialect", default="msndr", help="whose one-event body (bench/events.py)")
    parser.add_argument("--connections", type=int, default=4, help="the posting process's threads")
    parser.add_argument("--no-sign", action="store_true", help="no webhook-signature")
    args = parser.parse_args()

    receiver = events_bench.Receiver(args.dialect)  # forks: before any thread of ours
    body = events_bench.one_event_body(args.dialect)
    target = Target(f"http://127.0.0.1:{receiver.server_address[1]}/ev", allow_http=True,
                    kind="endpoint", id=1, name="bench")
    keys = None if args.no_sign else signing.KeySet((signing.generate_secret(),))
    # both measure the same number of requests: a whole number of (b)'s rounds of calls
    n = max(args.requests // (CALLERS * JOB), 1) * CALLERS * JOB
    print(f"{n} requests of {len(body.body)} bytes ({args.dialect}, {'unsigned' if keys is None else 'signed'}) "
          f"per measurement; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")

    poster = PostingProcess(allow_networks=ALLOW, connections=args.connections)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"a": [], "b": []}
    try:
        # warm up: connections, imports, the child's start
        in_process(target, body, DELIVER_THREADS * 20, keys)
        via_poster(poster, target, body, CALLERS * JOB * 2, keys)
        child = poster.pid
        for _ in range(args.rounds):
            for name in ("a", "b"):
                parent0, child0, rx0 = self_cpu(), other_cpu(child), other_cpu(receiver.proc.pid)
                wall = (in_process if name == "a" else
                        lambda *a: via_poster(poster, *a))(target, body, n, keys)
                parent = (self_cpu() - parent0) / n * 1e6
                child_us = (other_cpu(child) - child0) / n * 1e6
                rx_us = (other_cpu(receiver.proc.pid) - rx0) / n * 1e6
                rows[name].append((n / wall, parent, child_us, rx_us))
                print(f"  ({name}) {n / wall:8,.0f} requests/s   CPU µs/request: bench process {parent:5.1f}"
                      f"{f'   posting process {child_us:5.1f}' if name == 'b' else ''}   receiver {rx_us:4.1f}"
                      f"   load {os.getloadavg()[0]:.1f}", flush=True)
        if poster.pid != child:
            raise SystemExit("the posting process was restarted during the bench")
    finally:
        poster.close()
        receiver.shutdown()

    med = {name: [statistics.median(col) for col in zip(*values)] for name, values in rows.items()}
    a, b = med["a"], med["b"]
    print(f"\nmedians of {args.rounds} round(s):")
    print(f"  (a) in-process deliver, {DELIVER_THREADS} threads:        {a[0]:8,.0f} requests/s, "
          f"{a[1]:5.1f} µs CPU/request (bench process)")
    print(f"  (b) posting process, jobs of {JOB} from {CALLERS} threads: {b[0]:8,.0f} requests/s, "
          f"{b[1]:5.1f} µs parent + {b[2]:5.1f} µs child = {b[1] + b[2]:5.1f} µs CPU/request "
          f"({args.connections} connections)")
    print(f"  ratio b/a: requests/s {b[0] / a[0]:.2f}, parent CPU/request {b[1] / a[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
