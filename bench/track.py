"""mxhook-track's requests per second on loopback with every hit recorded durably, against a
baseline measured in the same run: the same server (waitress, the same app, verdicts, user
agent parsing and GeoIP lookup) answering without recording.

    python3 bench/track.py [--seconds 5] [--clients 2] [--connections 16] [--threads 32] [--dir DIR]

For each of the two modes (`null`: events made and thrown away; `durable`: appended to a spool
with the segment writer, fdatasync before each answer, concurrent hits sharing a flush) a server
process is started (`mxhook.daemons.track.build_app`, waitress with THREADS threads), then
CLIENTS load processes with CONNECTIONS keep-alive connections each send pixel and click
requests (half each; 2,000 messages' tokens, 12 user agents, addresses in and out of the test
GeoIP database) for SECONDS seconds. Printed: requests/s of each mode and route, the durable
mode's share of the baseline, and the events found in the spool against the 200/302 answers
counted (they must be equal: every answered hit is on disk). The spool goes under DIR (default:
a directory beside this file, on the disk the worktree is on: a tmpfs would make fdatasync free).
"""
from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))
sys.path.insert(0, ROOT)

from mxhook import config, spool  # noqa: E402
from mxhook.model import tracktokens  # noqa: E402

KEY = bytes(range(32))
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.5.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0",
    "Mozilla/5.0 (compatible; BingPreview/1.0b)",
    "Mimecast-Url-Protect/1.0",
    "curl/8.5.0",
]
ADDRESSES = ["192.0.2.9", "198.51.100.20", "203.0.113.5", "17.58.1.2", "2001:db8::7"]


def paths(n_messages: int = 2000) -> list[str]:
    sent = int(time.time()) - 3600
    out = []
    for i in range(n_messages):
        qid = f"BENCH{i:05X}"
        out.append("/o/" + tracktokens.make_token((KEY,), tracktokens.Track(
            tracktokens.OPEN, qid, f"r{i}@example.org", "shop.example", sent)))
        out.append("/c/" + tracktokens.make_token((KEY,), tracktokens.Track(
            tracktokens.CLICK, qid, f"r{i}@example.org", "shop.example", sent, i % 7,
            f"https://shop.example/item/{i}?utm_source=mail")))
    return out


# ---- the server (a process of its own, as mxhook-track is)

class NullWriter:
    def append(self, record) -> None:
        spool.encode(record)  # the record is made and encoded as for the spool, then dropped


def serve(mode: str, workdir: str, port: int, threads: int) -> None:
    import logging

    import waitress

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # a queue is the point here

    from mxhook.daemons.track import TrackSettings, build_app, serve_options
    from tests.track import mmdb

    key_file = os.path.join(workdir, "tracking.key")
    with open(key_file, "w") as fh:
        fh.write(base64.b64encode(KEY).decode() + "\n")
    geo = os.path.join(workdir, "geo.mmdb")
    mmdb.write(geo, "192.0.2.0/24", {"city": {"names": {"en": "Berlin"}},
                                     "continent": {"code": "EU"}, "country": {"iso_code": "DE"}})
    spool_dir = os.path.join(workdir, "spool")
    spool.ensure_dirs(spool_dir)
    cfg = config.from_dict({"paths": {"spool_dir": spool_dir}, "tracking": {
        "key_file": key_file, "listen": f"127.0.0.1:{port}", "threads": str(threads),
        "geoip_database": geo}})
    settings = TrackSettings.from_config(cfg)
    writer = spool.SegmentWriter(spool_dir) if mode == "durable" else NullWriter()
    app = build_app(settings, writer)
    waitress.serve(app, **serve_options(settings))


# ---- the load

def _load(port: int, connections: int, seconds: float, offset: int, queue) -> None:
    all_paths = paths()
    counts = {"o": 0, "c": 0, "bad": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = (offset * 997 + n * 131) % len(all_paths)
        mine = {"o": 0, "c": 0, "bad": 0}
        while time.monotonic() < deadline:
            path = all_paths[i % len(all_paths)]
            headers = {"User-Agent": AGENTS[i % len(AGENTS)],
                       "X-Forwarded-For": ADDRESSES[i % len(ADDRESSES)]}
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            mine[path[1] if resp.status in (200, 302) else "bad"] += 1
            i += 1
        conn.close()
        with lock:
            for k, v in mine.items():
                counts[k] += v

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(counts)


def run(mode: str, args, base_dir: str) -> dict:
    workdir = os.path.join(base_dir, mode)
    os.makedirs(workdir)
    from tests.support.postfix import free_port, wait_port

    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", mode,
                               "--dir", workdir, "--port", str(port), "--threads", str(args.threads)])
    try:
        if not wait_port(port, 30, server):
            raise SystemExit(f"the {mode} server did not start")
        queue = multiprocessing.Queue()
        start = time.monotonic()
        loaders = [multiprocessing.Process(target=_load, args=(port, args.connections, args.seconds,
                                                              n, queue)) for n in range(args.clients)]
        for p in loaders:
            p.start()
        totals = {"o": 0, "c": 0, "bad": 0}
        for _ in loaders:
            for k, v in queue.get().items():
                totals[k] += v
        for p in loaders:
            p.join()
        elapsed = time.monotonic() - start
    finally:
        server.terminate()
        server.wait(30)
    events = 0
    if mode == "durable":
        spool_dir = os.path.join(workdir, "spool")
        spool.recover_segments(spool_dir)  # the server was stopped: its open segment into new/
        events = sum(r.kind == "event" for r in spool.handed_over(spool_dir))
    return {**totals, "seconds": elapsed, "events": events}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=2, help="load processes")
    ap.add_argument("--connections", type=int, default=16, help="keep-alive connections per process")
    ap.add_argument("--threads", type=int, default=32, help="the server's waitress threads")
    ap.add_argument("--dir", help="where the spool goes (default: beside this file)")
    ap.add_argument("--serve", choices=("null", "durable"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.dir, args.port, args.threads)
        return 0
    base_dir = tempfile.mkdtemp(prefix="track-bench-", dir=args.dir or HERE)
    try:
        print(f"mxhook-track on loopback: {args.clients} load processes x {args.connections} "
              f"keep-alive connections, waitress {args.threads} threads, {args.seconds:g} s per "
              f"mode, spool in {base_dir} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
        results = {mode: run(mode, args, base_dir) for mode in ("null", "durable")}
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    base = results["null"]
    base_rate = (base["o"] + base["c"]) / base["seconds"]
    for mode, r in results.items():
        answered = r["o"] + r["c"]
        rate = answered / r["seconds"]
        label = "baseline: answered, not recorded" if mode == "null" else "recorded durably (fdatasync)"
        print(f"  {label:<34} {rate:8.0f} req/s  (pixel {r['o'] / r['seconds']:6.0f}/s, "
              f"click {r['c'] / r['seconds']:6.0f}/s, errors {r['bad']})"
              + ("" if mode == "null" else f"  {rate / base_rate:5.0%} of the baseline"))
    durable = results["durable"]
    answered = durable["o"] + durable["c"]
    print(f"  events in the spool: {durable['events']:,} for {answered:,} answered hits"
          + ("" if durable["events"] == answered else "  MISMATCH"))
    return 0 if durable["events"] == answered and not durable["bad"] else 1


if __name__ == "__main__":
    sys.exit(main())
