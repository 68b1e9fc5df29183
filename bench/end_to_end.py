"""SMTP in -> webhook received: the whole inbound path through a real private Postfix.

One private Postfix on 127.0.0.1 (relaying to smtp-sink) with mxhook-milter, mxhook-spooler and
a loopback receiver (tests/support: the harness the e2e tests use), one delivering rule that
every message matches. Senders: `--sessions` persistent smtplib sessions in threads, sharing
`--messages` messages of ~`--size` bytes, each with its own Message-ID.

Phases (one run):
  warm-up   --warmup messages end to end (smtpd/cleanup processes, milter threads, keep-alive
            connections), not counted.
  smtp      the spooler stopped: the same load, so the rate is Postfix + milter + spool writes
            alone (the milter accepts and spools every message; nothing is posted). The spooled
            files are removed afterwards. This is the baseline.
  e2e       the spooler running: the same load again. Per message: accept time (the client got
            250 after DATA) and webhook time (the receiver had read the POST; matched by the
            payload's message_id).

Prints for the e2e phase: the SMTP-phase rate (messages / first connect .. last 250), the
end-to-end rate (messages / first connect .. last webhook received), their ratio (target
>= 0.95), the accept->webhook latency p50/p99/max (target p99 <= 1 s), and the baseline's SMTP
rate with e2e/baseline. It does not pass or fail.

    python3 bench/end_to_end.py [--messages 1000] [--sessions 10] [--size 5000] [--json out.json]
    python3 bench/end_to_end.py --spooler poll_interval=0.1 --spooler workers=16   # experiments
    python3 bench/end_to_end.py --profile /tmp/spooler.txt   # sample the spooler's threads

Every [milter] and [spooler] setting is the shipped default unless given with --milter/--spooler
(the e2e tests' faster polling is not used). Runs against the tree it is in (old and new package
layouts): it uses only tests/support and the `mxhook` command line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import smtplib
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook import config as configmod  # noqa: E402
from tests.support.daemons import MxhookStack, SpoolerProcess  # noqa: E402
from tests.support.postfix import make_message  # noqa: E402
from milter_throughput import pct, process_cpu  # noqa: E402

DOMAIN = "ours.example"
SENDER = "bench@sender.example"
RCPT = f"e2e@{DOMAIN}"
PATH = "/hook"
MESSAGE_ID = re.compile(rb"<e2e-\d+-\d+@sender\.example>")


def spooler_module() -> str:
    """The spooler's module in this tree's package layout."""
    for name in ("mxhook.daemons.spooler", "mxhook.spooler"):
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) and importlib.util.find_spec(name):
            return name
    raise SystemExit("no mxhook spooler module found")


class ProfiledSpooler(SpoolerProcess):
    """mxhook-spooler with bench/sampler.py sampling every thread while the file `gate`
    exists (the e2e phases), counts written to `out` when it stops (SIGTERM: the loop ends
    and main() returns)."""

    def __init__(self, cfg, out: str, gate: str):
        super().__init__(cfg)
        code = (f"import sys; sys.path.insert(0, {HERE!r}); import sampler; "
                f"sampler.start({out!r}, gate={gate!r}); from {spooler_module()} import main; "
                f"sys.exit(main(['--config', {cfg.path!r}]))")
        self.argv = [sys.executable, "-c", code]


def settings(section: str, pairs: list[str]) -> dict[str, str]:
    """The shipped defaults of a section, with `key=value` overrides."""
    values = dict(configmod.DEFAULTS[section])
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in values:
            raise SystemExit(f"--{section} {pair!r}: not key=value with a [{section}] key")
        values[key] = value
    return values


class Bench:
    def __init__(self, args):
        self.args = args
        spooler = settings("spooler", args.spooler)
        spooler.update(log="stderr")
        milter = settings("milter", args.milter)
        for key in ("socket", "socket_group", "postfix_config_dir"):
            milter.pop(key, None)  # the harness's own
        milter.update(log="stderr")
        self.stack = MxhookStack(domains=[DOMAIN], permit=[DOMAIN], spooler=False, keep=args.keep,
                                 config={"milter": milter, "spooler": spooler})
        self.run_no = 0

    def start(self) -> None:
        self.stack.start()
        self.stack.add_rule("e2e", PATH, "--when", r"To~^e2e@ours\.example$")
        self.gate = os.path.join(self.stack.workdir, "sampling")
        if self.args.profile:
            self.stack.spooler = ProfiledSpooler(self.stack.cfg, self.args.profile, self.gate)
        time.sleep(float(self.stack.cfg.values["milter"]["rules_reload_interval"]) * 2 + 0.2)

    def stop(self) -> None:
        self.stack.stop()
        if self.args.keep:
            print(f"kept {self.stack.workdir}")

    # -- load ----------------------------------------------------------------------------------
    def send(self, count: int) -> tuple[float, dict[str, float]]:
        """`count` messages over `sessions` persistent SMTP sessions; (start time, Message-ID ->
        time its 250 came)."""
        self.run_no += 1
        run = self.run_no
        sessions = min(self.args.sessions, count)
        port = self.stack.postfix.port
        body = make_message(from_=f"Bench <{SENDER}>", to=RCPT, subject="e2e bench",
                            size=self.args.size)
        head, _, rest = body.partition(b"Message-ID: ")
        rest = rest.split(b"\r\n", 1)[1]
        accepted: dict[str, float] = {}
        errors: list[str] = []
        lock = threading.Lock()
        gate = threading.Barrier(sessions + 1)

        def session(k: int) -> None:
            mine = range(k, count, sessions)
            gate.wait()
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
                smtp.ehlo("client.bench.example")
                for i in mine:
                    mid = f"<e2e-{run}-{i}@sender.example>"
                    data = head + b"Message-ID: " + mid.encode() + b"\r\n" + rest
                    smtp.sendmail(SENDER, [RCPT], data)  # raises unless 250
                    at = time.time()
                    with lock:
                        accepted[mid] = at
                smtp.quit()
            except Exception as exc:  # reported after the run
                with lock:
                    errors.append(f"session {k}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=session, args=(k,), daemon=True) for k in range(sessions)]
        for t in threads:
            t.start()
        gate.wait()
        t0 = time.time()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError("; ".join(errors[:5]))
        return t0, accepted

    def webhooks(self, accepted: dict[str, float], timeout: float) -> dict[str, float]:
        """Wait until every accepted message's webhook came; Message-ID -> time received."""
        rx = self.stack.receiver
        deadline = time.monotonic() + timeout
        got: dict[str, float] = {}
        seen = 0
        while True:
            requests = rx.requests
            for req in requests[seen:]:
                m = MESSAGE_ID.search(req.body)  # the payload's message_id (any payload shape)
                mid = m.group(0).decode() if m else None
                if mid in accepted and mid not in got:
                    got[mid] = req.at
            seen = len(requests)
            if len(got) >= len(accepted):
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(got)} of {len(accepted)} webhooks after {timeout} s\n"
                                   f"{self.stack.diagnostics()}")
            time.sleep(0.05)

    def settle(self) -> None:
        """Postfix's queue empty, the milter's open segment sealed, nothing left in the spool."""
        self.stack.postfix.wait_queue_empty(timeout=300)
        time.sleep(0.5)  # the milter seals its open segment into new/ within 0.2 s

    def start_spooler(self) -> None:
        """Start the spooler and wait until its loop runs (imports and state.db opening are
        not part of what is measured)."""
        spooler = self.stack.spooler
        mark = len(spooler.stderr_text())
        spooler.start()
        deadline = time.monotonic() + 30
        while "started: spool" not in spooler.stderr_text()[mark:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"spooler not started:\n{spooler.stderr_text()[mark:]}")
            spooler._check_alive()
            time.sleep(0.02)
        time.sleep(float(self.stack.cfg.values["spooler"]["poll_interval"]))  # first idle pass

    # -- phases --------------------------------------------------------------------------------
    def end_to_end(self, count: int) -> dict:
        self.settle()
        self.stack.receiver.clear()
        if not self.stack.spooler.running():
            self.start_spooler()
        pid = self.stack.spooler.pid
        cpu0 = process_cpu(pid)
        open(self.gate, "w").close()
        t0, accepted = self.send(count)
        received = self.webhooks(accepted, timeout=max(120.0, count / 5))
        os.unlink(self.gate)
        cpu = [b - a for a, b in zip(cpu0, process_cpu(pid))]
        smtp_end = max(accepted.values())
        last = max(received.values())
        latency = [received[m] - accepted[m] for m in accepted]
        return {"messages": count, "smtp_s": smtp_end - t0, "e2e_s": last - t0,
                "smtp_rate": count / (smtp_end - t0), "e2e_rate": count / (last - t0),
                "latency": latency, "spooler_cpu_ms": [x * 1000 / count for x in cpu],
                "stages": breakdown(self.stack.cfg.state_db, accepted, received)}

    def receiver_ceiling(self, posts: int = 500, threads: int = 8) -> float:
        """Bare POSTs of a captured webhook body to the same receiver from `threads` threads
        (as many as the spooler's default workers), per second: what the receiver allows."""
        import requests

        sample = self.stack.receiver.requests[-1]
        url = self.stack.endpoint(PATH)
        headers = {"Content-Type": sample.headers.get("content-type", "application/json")}

        def post(n: int) -> None:
            with requests.Session() as session:
                for _ in range(n):
                    session.post(url, data=sample.body, headers=headers).raise_for_status()

        workers = [threading.Thread(target=post, args=(posts // threads,)) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return (posts // threads) * threads / (time.perf_counter() - t0)

    def smtp_only(self, count: int) -> dict:
        self.stack.spooler.stop()
        self.settle()
        t0, accepted = self.send(count)
        smtp_end = max(accepted.values())
        self.settle()
        spooled = len(self.stack.cfg.spooled_records())
        new_dir = os.path.join(self.stack.cfg.spool_dir, "new")
        for name in self.stack.cfg.spool_files("new"):
            os.unlink(os.path.join(new_dir, name))
        if spooled != count:
            raise RuntimeError(f"smtp phase: {count} accepted, {spooled} spooled")
        return {"messages": count, "smtp_s": smtp_end - t0, "smtp_rate": count / (smtp_end - t0)}


def breakdown(state_db: str, accepted: dict[str, float], received: dict[str, float]) -> dict:
    """Where the accept->webhook time goes, per message, from state.db's own times: milter
    (end of message) -> ingested -> first attempt started -> webhook received; and how many
    ingest transactions the spooler made. {} when state.db reads differently."""
    import sqlite3
    from datetime import datetime

    def ts(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    try:
        conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT json_extract(m.meta, '$.message_id'), m.received, m.ingested,"
            " (SELECT min(a.at) FROM attempts a WHERE a.delivery_id = d.id)"
            " FROM messages m JOIN deliveries d ON d.message_id = m.id").fetchall()
        conn.close()
    except sqlite3.Error:
        return {}
    stages: dict[str, list[float]] = {"eom->ingested": [], "ingested->attempt": [],
                                      "attempt->webhook": [], "accept->ingested": []}
    ingests = set()
    for mid, milter_at, ingested, attempt in rows:
        if mid not in received or not (milter_at and ingested and attempt):
            continue
        ingests.add(ingested)
        stages["eom->ingested"].append(ts(ingested) - ts(milter_at))
        stages["accept->ingested"].append(ts(ingested) - accepted[mid])
        stages["ingested->attempt"].append(ts(attempt) - ts(ingested))
        stages["attempt->webhook"].append(received[mid] - ts(attempt))
    if not stages["eom->ingested"]:
        return {}
    out = {name: {"p50_ms": pct(v, 50) * 1000, "p99_ms": pct(v, 99) * 1000} for name, v in stages.items()}
    out["ingest_transactions"] = len(ingests)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=5000, help="payload bytes per message")
    ap.add_argument("--rounds", type=int, default=1, help="smtp and e2e phases, alternating")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--spooler", action="append", default=[], metavar="KEY=VALUE",
                    help="a [spooler] setting (repeatable)")
    ap.add_argument("--milter", action="append", default=[], metavar="KEY=VALUE",
                    help="a [milter] setting (repeatable)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the spooler-less smtp phase")
    ap.add_argument("--profile", help="sample the spooler's threads (bench/sampler.py) during the "
                    "e2e phases, counts to this file")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench needs root (private Postfix instance)", file=sys.stderr)
        return 2

    bench = Bench(args)
    e2e, base = [], []
    try:
        bench.start()
        print(f"mxhook end-to-end bench: {args.messages} messages x {args.size} B over "
              f"{args.sessions} SMTP sessions, {args.rounds} round(s), one delivering rule; "
              f"spooler {' '.join(args.spooler) or 'defaults'}; {os.cpu_count()} CPUs, "
              f"{platform.python_implementation()} {platform.python_version()}, "
              "load average %.2f %.2f %.2f" % os.getloadavg(), flush=True)
        if args.warmup:
            bench.end_to_end(args.warmup)
        for r in range(args.rounds):
            if not args.no_baseline:
                run = bench.smtp_only(args.messages)
                base.append(run)
                print(f"  round {r + 1} smtp only (no spooler)  {run['smtp_rate']:7.1f} msg/s "
                      f"({run['smtp_s']:.2f} s)", flush=True)
            run = bench.end_to_end(args.messages)
            e2e.append(run)
            print(f"  round {r + 1} end to end              smtp {run['smtp_rate']:7.1f} msg/s, "
                  f"e2e {run['e2e_rate']:7.1f} msg/s, ratio {run['e2e_rate'] / run['smtp_rate']:.3f}, "
                  f"latency p50 {pct(run['latency'], 50) * 1000:.0f} ms "
                  f"p99 {pct(run['latency'], 99) * 1000:.0f} ms; spooler CPU "
                  "{:.2f} user + {:.2f} sys ms/msg".format(*run["spooler_cpu_ms"]), flush=True)
            stages = run["stages"]
            if stages:
                print("    where the time goes (p50 / p99 ms): " + ", ".join(
                    f"{name} {v['p50_ms']:.0f} / {v['p99_ms']:.0f}" for name, v in stages.items()
                    if isinstance(v, dict)) + f"; {stages['ingest_transactions']} ingest "
                    "transactions", flush=True)
        ceiling = bench.receiver_ceiling()
    finally:
        bench.stop()

    smtp_rate = statistics.median(r["smtp_rate"] for r in e2e)
    e2e_rate = statistics.median(r["e2e_rate"] for r in e2e)
    latency = [x for r in e2e for x in r["latency"]]
    figures = {"smtp_rate": smtp_rate, "e2e_rate": e2e_rate, "ratio": e2e_rate / smtp_rate,
               "p50_ms": pct(latency, 50) * 1000, "p99_ms": pct(latency, 99) * 1000,
               "max_ms": max(latency) * 1000}
    print()
    print(f"end to end (median of {args.rounds}; {len(latency)} messages for the latency):")
    print(f"  SMTP-phase rate (first connect .. last 250)      {smtp_rate:8.1f} msg/s")
    print(f"  end-to-end rate (first connect .. last webhook)  {e2e_rate:8.1f} msg/s")
    print(f"  e2e / smtp = {figures['ratio']:.3f}   (target >= 0.95)")
    print(f"  accept -> webhook latency p50 {figures['p50_ms']:7.1f} ms   p99 {figures['p99_ms']:7.1f} ms"
          f"   max {figures['max_ms']:7.1f} ms   (target p99 <= 1000 ms)")
    figures["receiver_posts_per_s"] = ceiling
    print(f"  receiver ceiling: bare POSTs of a captured payload, 8 threads {ceiling:8.1f} posts/s")
    if base:
        figures["baseline_smtp_rate"] = statistics.median(r["smtp_rate"] for r in base)
        print(f"  baseline: SMTP phase without the spooler         {figures['baseline_smtp_rate']:8.1f} msg/s")
        print(f"  e2e / baseline = {e2e_rate / figures['baseline_smtp_rate']:.3f}   "
              f"smtp (spooler running) / baseline = {smtp_rate / figures['baseline_smtp_rate']:.3f}")
    if args.profile:
        print(f"  spooler samples: {args.profile}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "figures": figures,
                       "runs": [{k: v for k, v in r.items() if k != "latency"} for r in e2e],
                       "baseline": base}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
