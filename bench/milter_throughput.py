"""What mxhook costs Postfix: throughput and added latency, against bare Postfix and a null milter.

One private Postfix instance (127.0.0.1, relaying to smtp-sink) with three smtpd listeners:

  (a) bare     no milter
  (b) null     bench/null_milter.py: pymilter, same negotiated events as mxhook, accepts at EOM
  (c) mxhook   mxhook-milter with 100 rules (99 that do not match, evaluated first, and a
               catch-all last), every message matched and spooled with fsync (the spooler is not
               running; the spooled records are counted to prove each message was spooled)
  (d) discard  the same mxhook-milter, recipient of a `--discard` rule (webhook only): spooled,
               then handed to Postfix's discard(8) transport (or, with --discard-via milter, a
               milter DISCARD, which smtpd counts as an error: after ten per session every
               command waits smtpd_error_sleep_time)

The same smtp-source load (default 10 sessions, 2000 messages of ~5 KB) is sent to each in turn,
alternating a, b, c for several rounds; the time until smtp-source finishes is what the milter
affects (smtpd acceptance), so throughput = messages / that time, median over the rounds.
Latency: a sequential smtplib sender times each whole transaction (connect .. 250 after DATA)
for N messages per configuration, also interleaved; the added latency is the difference of the
percentiles against (a) and (b).

    python3 bench/milter_throughput.py [--quick] [--rounds 3] [--messages 2000] [--json out.json]

Also the CPU the milter process itself used per message (b and c, from /proc/<pid>/stat):
throughput ratios swing by about 10 % from round to round on a shared VM, the milter's own CPU
much less, so c - b there is the steadier measure of mxhook's own work.

Prints ratios; it does not pass or fail (targets from issue 2: c/b >= 0.95, c/a >= 0.80).
"""
from __future__ import annotations

import argparse
import json
import grp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from tests.support.daemons import Daemon, MilterProcess, MxhookConfig  # noqa: E402
from tests.support.postfix import PrivatePostfix, make_message  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
DOMAIN = "ours.example"
SENDER = "bench@sender.example"
RCPT = f"bench@{DOMAIN}"
DISCARD_RCPT = f"webhook-only@{DOMAIN}"
CONFIGS = ("a", "b", "c", "d")
LABELS = {"a": "bare Postfix", "b": "null pymilter", "c": "mxhook, 100 rules, fsync spool",
          "d": "mxhook, --discard rule"}
LISTENER = {"a": "main", "b": "null", "c": "mxhook", "d": "discard"}
SYSLOG = {"a": "postfix/smtpd", "b": "postfix/null/smtpd", "c": "postfix/mxhook/smtpd",
          "d": "postfix/discard/smtpd"}
RCPTS = {"a": RCPT, "b": RCPT, "c": RCPT, "d": DISCARD_RCPT}
SPOOLED = ("c", "d")  # configurations whose every message must be spooled


def make_rules(rules_db: str, count: int) -> None:
    from mxhook.store.rulesdb import RulesStore
    from mxhook.model.rules import Rule, parse_condition
    from mxhook.model.targets import Destination

    def hook(path: str) -> Destination:
        return Destination(f"http://127.0.0.1:9/hook/{path}", allow_http=True)

    with RulesStore(rules_db) as store:
        store.add_domain(DOMAIN)
        for i in range(1, count):
            store.add_rule(Rule(
                name=f"ticket-{i:03d}", destination=hook(str(i)), priority=i,
                conditions=(parse_condition(f"Subject~^ticket-{i}\\b"),
                            parse_condition(r"To~@ours\.example$")),
            ))
        store.add_rule(Rule(name="catch-all", destination=hook("all"), priority=count,
                            conditions=(parse_condition(r"To~^bench@ours\.example$"),)))
        store.add_rule(Rule(name="webhook-only", destination=hook("discard"),
                            priority=count + 1, discard=True,
                            conditions=(parse_condition(r"To~^webhook-only@ours\.example$"),)))


class NullMilter(Daemon):
    name = "null-milter"

    def __init__(self, workdir: str, socket_path: str):
        super().__init__([sys.executable, os.path.join(HERE, "null_milter.py"), "unix:" + socket_path],
                         workdir)
        self.socket_path = socket_path

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                st = os.stat(self.socket_path)  # mode and group set: Postfix can connect
                if st.st_mode & 0o777 == 0o660 and st.st_gid == grp.getgrnam("postfix").gr_gid:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"null milter socket not ready:\n{self.stderr_text()}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="mxbench-")
        os.chmod(self.workdir, 0o755)
        null_dir = os.path.join(self.workdir, "null")
        os.makedirs(null_dir)
        os.chmod(null_dir, 0o755)
        self.null_sock = os.path.join(null_dir, "null.sock")
        self.pf = PrivatePostfix(
            relay_domains=[DOMAIN], milters="",
            listeners={"null": {"smtpd_milters": "unix:" + self.null_sock},
                       "mxhook": {"smtpd_milters": "unix:mxhook/milter.sock"},
                       "discard": {"smtpd_milters": "unix:mxhook/milter.sock"}},
            base_dir=os.path.join(self.workdir, "postfix"),
        )
        self.null = None
        self.mxhook = None
        self.cfg = None

    def start(self) -> None:
        self.pf.start()
        self.null = NullMilter(self.workdir, self.null_sock).start()
        self.cfg = MxhookConfig(os.path.join(self.workdir, "mxhook"), queue_dir=self.pf.queue_dir,
                                overrides={"milter": {"log_level": self.args.milter_log_level,
                                                      "rules_reload_interval": "1.0",
                                                      "discard_via": self.args.discard_via}})
        make_rules(self.cfg.rules_db, self.args.rules)
        self.mxhook = MilterProcess(self.cfg).start()

    def stop(self) -> None:
        if self.null is not None:  # libmilter would take up to 5 s to notice SIGTERM
            self.null.kill(signal.SIGKILL)
        for part in (self.mxhook, self.null, self.pf):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:
                    print(f"warning: stopping {part}: {exc}", file=sys.stderr)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"kept {self.workdir}")

    # -- one measurement -----------------------------------------------------------------------
    def _settle(self) -> None:
        self.pf.wait_queue_empty(timeout=300)
        time.sleep(0.5)  # the milter seals its open spool segment into new/ within 0.2 s
        for name in self.cfg.spool_files("new"):
            os.unlink(os.path.join(self.cfg.spool_dir, "new", name))

    def _accepted_since(self, config: str, offset: int) -> int:
        text = self.pf.log_text()[offset:]
        pat = re.compile(rf"^.* {re.escape(SYSLOG[config])}\[\d+\]: disconnect from .* data=1 ", re.M)
        return len(pat.findall(text))

    def throughput(self, config: str, messages: int) -> dict:
        self._settle()
        offset = len(self.pf.log_text())
        port = self.pf.ports[LISTENER[config]]
        argv = [SMTP_SOURCE, "-s", str(self.args.sessions), "-m", str(messages), "-l", str(self.args.size),
                "-f", SENDER, "-t", RCPTS[config], "-S", "bench message", "-M", "client.bench.example",
                f"127.0.0.1:{port}"]
        milter = {"a": None, "b": self.null, "c": self.mxhook, "d": self.mxhook}[config]
        cpu0 = process_cpu(milter.proc.pid) if milter else None
        busy0 = machine_busy()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - t0
        busy = machine_busy() - busy0
        if proc.returncode != 0 or proc.stderr.strip():
            raise RuntimeError(f"smtp-source on ({config}) failed: {proc.returncode} {proc.stderr[-2000:]}")
        # smtpd logs the disconnect line just after the last reply: give it a moment
        deadline = time.monotonic() + 10
        accepted = self._accepted_since(config, offset)
        while accepted < messages and time.monotonic() < deadline:
            time.sleep(0.05)
            accepted = self._accepted_since(config, offset)
        spooled = len(self.cfg.spooled_records()) if config in SPOOLED else None
        while spooled is not None and spooled < messages and time.monotonic() < deadline:
            time.sleep(0.05)  # the last open spool segment is sealed into new/ within 0.2 s
            spooled = len(self.cfg.spooled_records())
        if accepted != messages or (spooled is not None and spooled != messages):
            raise RuntimeError(
                f"({config}): {messages} sent, {accepted} accepted, spooled {spooled}\n"
                f"{self.pf.log_text()[offset:][-3000:]}\n{self.mxhook.stderr_text()[-3000:]}")
        run = {"elapsed": elapsed, "rate": messages / elapsed, "accepted": accepted, "spooled": spooled,
               "machine_cpu_ms": busy * 1000 / messages}
        if cpu0 is not None:
            cpu1 = process_cpu(milter.proc.pid)
            run["milter_user_ms"] = (cpu1[0] - cpu0[0]) * 1000 / messages
            run["milter_sys_ms"] = (cpu1[1] - cpu0[1]) * 1000 / messages
        return run

    def latency(self, config: str, count: int) -> list[float]:
        self._settle()
        port = self.pf.ports[LISTENER[config]]
        msg = make_message(from_=f"Bench <{SENDER}>", to=RCPTS[config], subject="latency probe",
                           size=self.args.size)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            res = self.pf.send(SENDER, [RCPTS[config]], msg, port=port, helo="client.bench.example")
            times.append(time.perf_counter() - t0)
            if not res.accepted:
                raise RuntimeError(f"latency probe on ({config}) not accepted: {res}")
        return times


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads (exited ones too)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every process and the kernel), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 500 messages, 50 latency probes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=5000, help="payload bytes per message")
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--latency-messages", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=200, help="messages per config before measuring")
    ap.add_argument("--milter-log-level", default="info", help="mxhook-milter log_level (info = one line per message, as in production)")
    ap.add_argument("--discard-via", default="transport", choices=("transport", "milter"),
                    help="mxhook-milter discard_via for (d) (milter: the old milter DISCARD)")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.messages, args.latency_messages, args.warmup = 1, 500, 50, 50
    if os.geteuid() != 0:
        print("bench needs root (private Postfix instance)", file=sys.stderr)
        return 2

    bench = Bench(args)
    results = {c: {"runs": [], "latency": []} for c in CONFIGS}
    try:
        bench.start()
        print(f"mxhook milter throughput bench: {args.sessions} sessions x {args.messages} messages "
              f"x {args.size} B, {args.rounds} round(s), {args.rules} rules; "
              f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
              "load average %.2f %.2f %.2f (other load makes the figures noisy)" % os.getloadavg())
        for c in CONFIGS:  # warm-up: spawn smtpd/cleanup processes, milter threads, caches
            bench.throughput(c, args.warmup)
        for r in range(args.rounds):
            for c in CONFIGS:
                run = bench.throughput(c, args.messages)
                results[c]["runs"].append(run)
                extra = f", {run['spooled']} spooled" if run["spooled"] is not None else ""
                if "milter_user_ms" in run:
                    extra += f"; milter CPU {run['milter_user_ms']:.2f} user + {run['milter_sys_ms']:.2f} sys ms/msg"
                print(f"  round {r + 1} ({c}) {LABELS[c]:32s} {run['rate']:8.1f} msg/s "
                      f"({run['elapsed']:.2f} s, {run['accepted']} accepted{extra}; "
                      f"machine {run['machine_cpu_ms']:.2f} ms CPU/msg)", flush=True)
            per_round = max(1, args.latency_messages // args.rounds)
            for c in CONFIGS:
                results[c]["latency"].extend(bench.latency(c, per_round))
    finally:
        bench.stop()

    rate = {c: statistics.median(run["rate"] for run in results[c]["runs"]) for c in CONFIGS}
    lat = {c: results[c]["latency"] for c in CONFIGS}
    print()
    print(f"throughput (median of {args.rounds}, time until smtp-source finished):")
    for c in CONFIGS:
        print(f"  ({c}) {LABELS[c]:32s} {rate[c]:8.1f} msg/s")
    print(f"  c/a = {rate['c'] / rate['a']:.3f}   (target >= 0.80)")
    print(f"  c/b = {rate['c'] / rate['b']:.3f}   (target >= 0.95)")
    print(f"  b/a = {rate['b'] / rate['a']:.3f}   (the pymilter protocol floor)")
    print(f"  d/c = {rate['d'] / rate['c']:.3f}   (webhook-only --discard against a delivering rule)")
    print()
    # Steadier than the throughput ratios on a shared machine: the milter process's own CPU.
    cpu = {c: (statistics.median(r["milter_user_ms"] for r in results[c]["runs"]),
               statistics.median(r["milter_sys_ms"] for r in results[c]["runs"])) for c in ("b", "c", "d")}
    # When the machine is busy during every run (CPU/msg x rate close to the number of CPUs),
    # throughput is CPU per message in disguise: any added CPU lowers it in proportion.
    machine = {c: statistics.median(r["machine_cpu_ms"] for r in results[c]["runs"]) for c in CONFIGS}
    print("whole-machine CPU per message (median; busy CPUs = CPU/msg x rate):")
    for c in CONFIGS:
        print(f"  ({c}) {LABELS[c]:32s} {machine[c]:.2f} ms   busy CPUs {machine[c] * rate[c] / 1000:.2f} of {os.cpu_count()}")
    print(f"  ratio b/c of CPU per message: {machine['b'] / machine['c']:.3f}")
    print()
    print("milter process CPU per message (median, user + kernel, every thread):")
    for c in ("b", "c", "d"):
        print(f"  ({c}) {LABELS[c]:32s} {cpu[c][0]:.3f} + {cpu[c][1]:.3f} ms")
    print(f"  mxhook's own work beyond the protocol: {sum(cpu['c']) - sum(cpu['b']):+.3f} ms CPU per message")
    print()
    n = len(lat["a"])
    print(f"latency per message (sequential, {n} transactions each, connect .. 250 after DATA):")
    for c in CONFIGS:
        print(f"  ({c}) {LABELS[c]:32s} p50 {pct(lat[c], 50) * 1000:7.2f} ms   p99 {pct(lat[c], 99) * 1000:7.2f} ms")
    for c, base in (("b", "a"), ("c", "a"), ("c", "b"), ("d", "c")):
        print(f"  added by ({c}) over ({base}): p50 {(pct(lat[c], 50) - pct(lat[base], 50)) * 1000:+7.2f} ms"
              f"   p99 {(pct(lat[c], 99) - pct(lat[base], 99)) * 1000:+7.2f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rate": rate, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
